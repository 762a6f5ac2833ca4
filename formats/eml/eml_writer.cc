#include "formats/eml/eml_writer.h"

#include <dirent.h>
#include <unistd.h>

#include <atomic>

#include <fmt/format.h>

#include "formats/core/text.h"
#include "formats/maildir/maildir_writer.h"

namespace wxa::eml {

Result<std::string> FolderPath(std::string_view folder) {
  WXA_ASSIGN_OR_RETURN(auto levels, maildir::FolderLevels(folder));
  std::string out;
  for (std::string_view level : levels) {
    std::string safe = core::SanitizeFileName(level, "");
    if (safe.empty()) {
      return Status::InvalidArgument(fmt::format("folder name '{}': level '{}' is not a usable name", folder, level));
    }
    if (!out.empty()) out.push_back('/');
    out += safe;
  }
  return out;
}

EmlWriter::EmlWriter(core::Env* env, std::string root, std::string folder_path)
    : env_(env), root_(std::move(root)), folder_path_(std::move(folder_path)) {}

std::string EmlWriter::Dir(const std::string& mailbox_dir) const {
  return core::JoinPath(core::JoinPath(root_, mailbox_dir), folder_path_);
}

Status EmlWriter::PrepareMailbox(const std::string& mailbox_dir) {
  return env_->CreateDirs(Dir(mailbox_dir));
}

std::string EmlWriter::PathFor(const std::string& mailbox_dir, const core::ItemKey& key,
                               int64_t msgtime_ms) const {
  return core::JoinPath(Dir(mailbox_dir), maildir::BaseName(key, msgtime_ms) + ".eml");
}

Result<bool> EmlWriter::Exists(const std::string& mailbox_dir, const core::ItemKey& key,
                               int64_t msgtime_ms) {
  Status s = env_->Stat(PathFor(mailbox_dir, key, msgtime_ms), nullptr);
  if (s.ok()) return true;
  if (s.IsNotFound()) return false;
  return s;
}

Result<maildir::StagedFile> EmlWriter::Stage(const std::string& mailbox_dir, const core::ItemKey& key,
                                             int64_t msgtime_ms, std::string_view bytes, bool sync) {
  static std::atomic<uint64_t> counter{0};
  maildir::StagedFile f;
  // Temp files start with '.' and end in ".tmp" so no reader takes them for items.
  f.tmp = core::JoinPath(Dir(mailbox_dir), fmt::format(".{}.{}_{}.tmp", maildir::BaseName(key, msgtime_ms),
                                                       ::getpid(), counter.fetch_add(1)));
  f.final_path = PathFor(mailbox_dir, key, msgtime_ms);
  f.dir = Dir(mailbox_dir);
  WXA_RETURN_IF_ERROR(core::WriteTempFile(env_, f.tmp, bytes, sync));
  return f;
}

Status EmlWriter::Deliver(const std::string& mailbox_dir, const core::ItemKey& key,
                          int64_t msgtime_ms, std::string_view bytes) {
  WXA_ASSIGN_OR_RETURN(maildir::StagedFile f, Stage(mailbox_dir, key, msgtime_ms, bytes, /*sync=*/true));
  Status s = env_->Rename(f.tmp, f.final_path);
  if (!s.ok()) (void)env_->Remove(f.tmp);
  return s;
}

Status EmlWriter::SyncFolder(const std::string& mailbox_dir) { return env_->SyncDir(Dir(mailbox_dir)); }

Result<size_t> EmlWriter::CleanTemp(const std::string& mailbox_dir) {
  const std::string dir = Dir(mailbox_dir);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return size_t{0};
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 5 && n[0] == '.' && n.compare(n.size() - 4, 4, ".tmp") == 0) names.push_back(n);
  }
  ::closedir(d);
  for (const auto& n : names) WXA_RETURN_IF_ERROR(env_->Remove(core::JoinPath(dir, n)));
  return names.size();
}

}  // namespace wxa::eml
