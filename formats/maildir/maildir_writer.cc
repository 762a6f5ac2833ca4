#include "formats/maildir/maildir_writer.h"

#include <dirent.h>
#include <unistd.h>

#include <atomic>

#include <fmt/format.h>

#include "formats/core/text.h"

namespace wxa::maildir {

std::string EncodeModifiedUtf7(std::string_view utf8) {
  static constexpr char kB64[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
  std::string out;
  std::u16string pending;  // UTF-16 units waiting for base64
  auto flush = [&] {
    if (pending.empty()) return;
    out.push_back('&');
    uint32_t bits = 0;
    int nbits = 0;
    for (char16_t u : pending) {
      for (int shift = 8; shift >= 0; shift -= 8) {
        bits = (bits << 8) | ((u >> shift) & 0xFF);
        nbits += 8;
        while (nbits >= 6) {
          nbits -= 6;
          out.push_back(kB64[(bits >> nbits) & 0x3F]);
        }
      }
    }
    if (nbits > 0) out.push_back(kB64[(bits << (6 - nbits)) & 0x3F]);
    out.push_back('-');
    pending.clear();
  };
  std::string valid;
  if (!core::IsValidUtf8(utf8)) {
    core::RepairUtf8(utf8, &valid);
    utf8 = valid;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(utf8.data());
  for (size_t i = 0; i < utf8.size();) {
    uint32_t cp;
    size_t len;
    if (p[i] < 0x80) {
      cp = p[i];
      len = 1;
    } else if (p[i] < 0xE0) {
      cp = ((p[i] & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu);
      len = 2;
    } else if (p[i] < 0xF0) {
      cp = ((p[i] & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu);
      len = 3;
    } else {
      cp = ((p[i] & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) |
           (p[i + 3] & 0x3Fu);
      len = 4;
    }
    i += len;
    if (cp >= 0x20 && cp <= 0x7E) {
      flush();
      if (cp == '&') {
        out.append("&-");
      } else {
        out.push_back(static_cast<char>(cp));
      }
    } else if (cp >= 0x10000) {
      cp -= 0x10000;
      pending.push_back(static_cast<char16_t>(0xD800 + (cp >> 10)));
      pending.push_back(static_cast<char16_t>(0xDC00 + (cp & 0x3FF)));
    } else {
      pending.push_back(static_cast<char16_t>(cp));
    }
  }
  flush();
  return out;
}

Result<std::vector<std::string_view>> FolderLevels(std::string_view folder) {
  std::vector<std::string_view> levels;
  size_t start = 0;
  while (true) {
    size_t slash = folder.find('/', start);
    std::string_view level = folder.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (core::Trim(level).empty()) {
      return Status::InvalidArgument(fmt::format("folder name '{}' has an empty level", folder));
    }
    levels.push_back(level);
    if (slash == std::string_view::npos) return levels;
    start = slash + 1;
  }
}

Result<std::string> FolderDirName(std::string_view folder) {
  WXA_ASSIGN_OR_RETURN(auto levels, FolderLevels(folder));
  std::string out;
  for (std::string_view level : levels) {
    if (level.find('.') != std::string_view::npos) {
      return Status::InvalidArgument(fmt::format(
          "folder name '{}': '.' separates levels in Maildir++; use '/' for levels", folder));
    }
    for (char c : level) {
      if (static_cast<unsigned char>(c) < 0x20) {
        return Status::InvalidArgument("folder name has control characters");
      }
    }
    out += "." + EncodeModifiedUtf7(level);
  }
  return out;
}

std::string MailboxDirName(std::string_view address) {
  std::string out;
  for (char ch : address) {
    auto c = static_cast<unsigned char>(ch);
    char lc = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : ch;
    bool keep = (lc >= 'a' && lc <= 'z') || (lc >= '0' && lc <= '9') || lc == '@' || lc == '.' ||
                lc == '_' || lc == '+' || lc == '-';
    if (keep) {
      out.push_back(lc);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  if (out.empty()) return "%00";
  // No hidden names, no "." or "..": escape a leading dot.
  if (out[0] == '.') out = "%2E" + out.substr(1);
  return out;
}

std::string BaseName(const core::ItemKey& key, int64_t msgtime_ms) {
  int64_t secs = msgtime_ms >= 0 ? msgtime_ms / 1000 : 0;
  return fmt::format("{}.{}.wxa", secs, key.Hex());
}

MaildirWriter::MaildirWriter(core::Env* env, std::string root, std::string folder_dir)
    : env_(env), root_(std::move(root)), folder_dir_(std::move(folder_dir)) {}

std::string MaildirWriter::FolderPath(const std::string& mailbox_dir) const {
  return core::JoinPath(core::JoinPath(root_, mailbox_dir), folder_dir_);
}

Status MaildirWriter::PrepareMailbox(const std::string& mailbox_dir) {
  const std::string mbox = core::JoinPath(root_, mailbox_dir);
  const std::string folder = FolderPath(mailbox_dir);
  for (const std::string& base : {mbox, folder}) {
    for (const char* sub : {"cur", "new", "tmp"}) {
      WXA_RETURN_IF_ERROR(env_->CreateDirs(core::JoinPath(base, sub)));
    }
  }
  // Maildir++ marks subfolders with an empty "maildirfolder" file.
  const std::string marker = core::JoinPath(folder, "maildirfolder");
  if (!core::PathExists(marker)) {
    auto fd = env_->CreateExclusive(marker);
    if (!fd.ok() && fd.status().code() != Status::Code::kAlreadyExists) return fd.status();
  }
  return Status::Ok();
}

std::string MaildirWriter::PathFor(const std::string& mailbox_dir, const core::ItemKey& key,
                                   int64_t msgtime_ms) const {
  return core::JoinPath(FolderPath(mailbox_dir), "cur/" + BaseName(key, msgtime_ms) + ":2,S");
}

Result<bool> MaildirWriter::Exists(const std::string& mailbox_dir, const core::ItemKey& key,
                                   int64_t msgtime_ms) {
  Status s = env_->Stat(PathFor(mailbox_dir, key, msgtime_ms), nullptr);
  if (s.ok()) return true;
  if (!s.IsNotFound()) return s;
  // A client may have moved it to new/ semantics or changed its flags; look for
  // the base name in new/ as delivered by other tools.
  s = env_->Stat(core::JoinPath(FolderPath(mailbox_dir), "new/" + BaseName(key, msgtime_ms)), nullptr);
  if (s.ok()) return true;
  if (!s.IsNotFound()) return s;
  return false;
}

Result<StagedFile> MaildirWriter::Stage(const std::string& mailbox_dir, const core::ItemKey& key,
                                        int64_t msgtime_ms, std::string_view bytes, bool sync) {
  static std::atomic<uint64_t> counter{0};
  const std::string folder = FolderPath(mailbox_dir);
  StagedFile f;
  f.tmp = core::JoinPath(folder, fmt::format("tmp/{}.{}_{}", BaseName(key, msgtime_ms), ::getpid(),
                                             counter.fetch_add(1)));
  f.final_path = PathFor(mailbox_dir, key, msgtime_ms);
  f.dir = core::JoinPath(folder, "cur");
  WXA_RETURN_IF_ERROR(core::WriteTempFile(env_, f.tmp, bytes, sync));
  return f;
}

Status MaildirWriter::Deliver(const std::string& mailbox_dir, const core::ItemKey& key,
                              int64_t msgtime_ms, std::string_view bytes) {
  WXA_ASSIGN_OR_RETURN(StagedFile f, Stage(mailbox_dir, key, msgtime_ms, bytes, /*sync=*/true));
  Status s = env_->Rename(f.tmp, f.final_path);
  if (!s.ok()) (void)env_->Remove(f.tmp);
  return s;
}

Status MaildirWriter::SyncFolder(const std::string& mailbox_dir) {
  return env_->SyncDir(core::JoinPath(FolderPath(mailbox_dir), "cur"));
}

Result<size_t> MaildirWriter::CleanTemp(const std::string& mailbox_dir) {
  const std::string tmp = core::JoinPath(FolderPath(mailbox_dir), "tmp");
  DIR* d = ::opendir(tmp.c_str());
  if (d == nullptr) return size_t{0};
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 4 && n.find(".wxa.") != std::string::npos) names.push_back(n);
  }
  ::closedir(d);
  for (const auto& n : names) WXA_RETURN_IF_ERROR(env_->Remove(core::JoinPath(tmp, n)));
  return names.size();
}

}  // namespace wxa::maildir
