#include "engine/sinks/local_sinks.h"

#include <set>

#include <fmt/format.h>

#include "formats/eml/eml_writer.h"
#include "formats/maildir/maildir_writer.h"

namespace wxa::sinks {

Result<SyncMode> ParseSyncMode(std::string_view s) {
  if (s == "batch") return SyncMode::kBatch;
  if (s == "file") return SyncMode::kFile;
  return Status::InvalidArgument(fmt::format("unknown sync mode '{}' (batch or file)", s));
}

Result<bool> LocalSink::Exists(const std::string& mailbox, const core::ItemKey& key,
                               int64_t msgtime_ms) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = folder_existed_.find(mailbox);
    if (it == folder_existed_.end()) it = folder_existed_.emplace(mailbox, FolderExists(mailbox)).first;
    // Files this run writes are claimed in the index first, so only a folder
    // that was there before the run can hold the item already.
    if (!it->second) return false;
  }
  return FileExists(mailbox, key, msgtime_ms);
}

Status LocalSink::Stage(const std::string& mailbox, const core::ItemKey& key, int64_t msgtime_ms,
                        std::string_view bytes, std::vector<StagedDelivery>* batch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (prepared_.count(mailbox) == 0) {
      WXA_RETURN_IF_ERROR(Prepare(mailbox));
      // Temp files of a stopped run were never renamed: garbage. Safe here:
      // nothing of this run has been staged in this mailbox yet.
      auto cleaned = CleanTemp(mailbox);
      if (!cleaned.ok()) return cleaned.status();
      prepared_.insert(mailbox);
    }
  }
  WXA_ASSIGN_OR_RETURN(StagedDelivery d,
                       StageFile(mailbox, key, msgtime_ms, bytes, mode_ == SyncMode::kFile));
  d.mailbox = mailbox;
  batch->push_back(std::move(d));
  return Status::Ok();
}

Status LocalSink::Publish(std::vector<StagedDelivery>* batch) {
  if (batch->empty()) return Status::Ok();
  Status s;
  if (mode_ == SyncMode::kBatch) {
    // The data of every staged file, durable in one file-system commit.
    s = env_->SyncFilesystem(root_);
  }
  size_t renamed = 0;
  for (; s.ok() && renamed < batch->size(); ++renamed) {
    s = env_->Rename((*batch)[renamed].tmp, (*batch)[renamed].final_path);
  }
  if (s.ok()) {
    if (mode_ == SyncMode::kBatch) {
      s = env_->SyncFilesystem(root_);  // the renames, durable
    } else {
      std::set<std::string> dirs;
      for (const auto& d : *batch) dirs.insert(d.dir);
      for (const auto& dir : dirs) {
        if (!(s = env_->SyncDir(dir)).ok()) break;
      }
    }
  }
  if (!s.ok()) {
    // What was renamed is complete and will be found by Exists() on a rerun;
    // what was not is removed. Nothing of this batch counts as delivered.
    for (size_t i = renamed; i < batch->size(); ++i) (void)env_->Remove((*batch)[i].tmp);
    return s;
  }
  return Status::Ok();
}

void LocalSink::Discard(std::vector<StagedDelivery>* batch) {
  for (const auto& d : *batch) (void)env_->Remove(d.tmp);
  batch->clear();
}

namespace {

template <typename Writer>
class WriterSink final : public LocalSink {
 public:
  WriterSink(const char* kind, core::Env* env, std::string root, std::string folder, SyncMode mode)
      : LocalSink(env, root, mode), kind_(kind), w_(env, std::move(root), std::move(folder)) {}
  const char* kind() const override { return kind_; }
  std::string PathFor(const std::string& mailbox, const core::ItemKey& key, int64_t t) const override {
    return w_.PathFor(maildir::MailboxDirName(mailbox), key, t);
  }
  Result<size_t> CleanTemp(const std::string& mailbox) override {
    return w_.CleanTemp(maildir::MailboxDirName(mailbox));
  }

 protected:
  Status Prepare(const std::string& mailbox) override {
    return w_.PrepareMailbox(maildir::MailboxDirName(mailbox));
  }
  Result<bool> FileExists(const std::string& mailbox, const core::ItemKey& key, int64_t t) override {
    return w_.Exists(maildir::MailboxDirName(mailbox), key, t);
  }
  bool FolderExists(const std::string& mailbox) override {
    std::string probe = w_.PathFor(maildir::MailboxDirName(mailbox), core::ItemKey{}, 0);
    return core::IsDirectory(probe.substr(0, probe.rfind('/')));
  }
  Result<StagedDelivery> StageFile(const std::string& mailbox, const core::ItemKey& key, int64_t t,
                                   std::string_view bytes, bool sync) override {
    WXA_ASSIGN_OR_RETURN(maildir::StagedFile f,
                         w_.Stage(maildir::MailboxDirName(mailbox), key, t, bytes, sync));
    return StagedDelivery{mailbox, std::move(f.tmp), std::move(f.final_path), std::move(f.dir)};
  }

 private:
  const char* kind_;
  Writer w_;
};

}  // namespace

Result<std::unique_ptr<LocalSink>> MakeLocalSink(std::string_view target, std::string_view folder,
                                                 core::Env* env, SyncMode mode) {
  size_t colon = target.find(':');
  if (colon == std::string_view::npos || colon + 1 >= target.size()) {
    return Status::InvalidArgument(
        fmt::format("target '{}' must be maildir:DIR or eml:DIR", target));
  }
  std::string kind(target.substr(0, colon));
  std::string dir(target.substr(colon + 1));
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (kind == "maildir") {
    WXA_ASSIGN_OR_RETURN(std::string folder_dir, maildir::FolderDirName(folder));
    WXA_RETURN_IF_ERROR(env->CreateDirs(dir));
    return std::unique_ptr<LocalSink>(
        new WriterSink<maildir::MaildirWriter>("maildir", env, dir, folder_dir, mode));
  }
  if (kind == "eml") {
    WXA_ASSIGN_OR_RETURN(std::string folder_path, eml::FolderPath(folder));
    WXA_RETURN_IF_ERROR(env->CreateDirs(dir));
    return std::unique_ptr<LocalSink>(new WriterSink<eml::EmlWriter>("eml", env, dir, folder_path, mode));
  }
  return Status::InvalidArgument(fmt::format(
      "target kind '{}' is not supported (supported: maildir:DIR, eml:DIR)", kind));
}

}  // namespace wxa::sinks
