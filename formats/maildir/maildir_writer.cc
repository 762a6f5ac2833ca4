#include "formats/maildir/maildir_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>

#include <fmt/format.h>

#include "formats/core/hash.h"
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
    std::string encoded = EncodeModifiedUtf7(level);
    if (encoded.size() + 1 > kMaxNameBytes) {
      return Status::InvalidArgument(
          fmt::format("folder name '{}': level '{}' is too long for a directory name", folder, level));
    }
    out += "." + encoded;
  }
  if (out.size() > kMaxNameBytes) {
    return Status::InvalidArgument(
        fmt::format("folder name '{}' is too long for a Maildir++ directory name", folder));
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
  if (out.size() > kMaxNameBytes) {
    // A stable short form: a readable prefix (never cut inside a %XX escape)
    // and a hash of the whole address, so distinct addresses stay distinct.
    size_t keep = 200;
    for (size_t i = keep > 2 ? keep - 2 : 0; i < keep; ++i) {
      if (out[i] == '%') keep = i;
    }
    out = fmt::format("{}~{}", out.substr(0, keep), core::ToHex(core::Sha256(address)).substr(0, 16));
  }
  return out;
}

std::string BaseName(const core::ItemKey& key, int64_t msgtime_ms) {
  int64_t secs = msgtime_ms >= 0 ? msgtime_ms / 1000 : 0;
  return fmt::format("{}.{}.wxa", secs, key.Hex());
}

std::optional<core::ItemKey> KeyFromFileName(std::string_view name) {
  size_t dot = name.find('.');
  if (dot == 0 || dot == std::string_view::npos || !core::AllDigits(name.substr(0, dot))) {
    return std::nullopt;
  }
  std::string_view hex = name.substr(dot + 1, 32);
  if (hex.size() != 32 || name.substr(dot + 33, 4) != ".wxa") return std::nullopt;
  core::ItemKey k;
  for (size_t i = 0; i < 16; ++i) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    k.bytes[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return k;
}

namespace {

constexpr std::string_view kSeenInfo = ":2,S";
constexpr std::string_view kEmlSuffix = ".eml";

// A temp name no other writer uses: pid and a process-wide counter.
std::string TempName(Layout layout, const core::ItemKey& key, int64_t msgtime_ms) {
  static std::atomic<uint64_t> counter{0};
  // glibc no longer caches getpid(): one system call per item otherwise.
  // This process does not fork (children it starts exec at once).
  static const pid_t pid = ::getpid();
  const std::string base = BaseName(key, msgtime_ms);
  const uint64_t n = counter.fetch_add(1);
  // EML temp files share the folder with items: '.'-leading, ".tmp" ending,
  // so no reader takes them for mail.
  return layout == Layout::kMaildir ? fmt::format("{}.{}_{}", base, pid, n)
                                    : fmt::format(".{}.{}_{}.tmp", base, pid, n);
}

bool IsOurTemp(Layout layout, std::string_view n) {
  if (layout == Layout::kMaildir) return n.find(".wxa.") != std::string_view::npos;
  return n.size() > 5 && n[0] == '.' && n.substr(n.size() - 4) == ".tmp" &&
         n.find(".wxa.") != std::string_view::npos;
}

}  // namespace

Result<MailFolder> MailFolder::Open(core::Env* env, Layout layout, int root_fd,
                                    const std::string& root_path, const std::string& mailbox_dir,
                                    const std::string& folder, bool create) {
  MailFolder f;
  f.env_ = env;
  f.layout_ = layout;
  const std::string mbox_path = core::JoinPath(root_path, mailbox_dir);
  f.path_ = core::JoinPath(mbox_path, folder);
  WXA_ASSIGN_OR_RETURN(core::UniqueFd mbox, env->OpenDirAt(root_fd, mailbox_dir, create, mbox_path));
  WXA_ASSIGN_OR_RETURN(core::UniqueFd dir, env->OpenDirAt(mbox.get(), folder, create, f.path_));
  if (layout == Layout::kEml) {
    WXA_ASSIGN_OR_RETURN(f.tmp_, StagingArea::Open(env, layout, mbox.get(), folder, f.path_, false));
    f.final_ = std::move(dir);
    return f;
  }
  if (create) {
    // The mailbox itself is a Maildir too (its INBOX), as Dovecot expects.
    for (const char* sub : {"cur", "new", "tmp"}) {
      WXA_ASSIGN_OR_RETURN(core::UniqueFd d, env->OpenDirAt(mbox.get(), sub, true, core::JoinPath(mbox_path, sub)));
    }
  }
  WXA_ASSIGN_OR_RETURN(f.tmp_, StagingArea::Open(env, layout, dir.get(), "tmp", f.path_ + "/tmp", create));
  WXA_ASSIGN_OR_RETURN(f.final_, env->OpenDirAt(dir.get(), "cur", create, f.path_ + "/cur"));
  WXA_ASSIGN_OR_RETURN(f.new_, env->OpenDirAt(dir.get(), "new", create, f.path_ + "/new"));
  if (create) {
    // Maildir++ marks subfolders with an empty "maildirfolder" file.
    auto marker = env->CreateAt(dir.get(), "maildirfolder", f.path_ + "/maildirfolder");
    if (!marker.ok() && marker.status().code() != Status::Code::kAlreadyExists) return marker.status();
  }
  return f;
}

std::string MailFolder::FinalName(const core::ItemKey& key, int64_t msgtime_ms) const {
  std::string base = BaseName(key, msgtime_ms);
  return layout_ == Layout::kMaildir ? base + std::string(kSeenInfo) : base + std::string(kEmlSuffix);
}

std::string MailFolder::FinalPath(const core::ItemKey& key, int64_t msgtime_ms) const {
  return core::JoinPath(layout_ == Layout::kMaildir ? path_ + "/cur" : path_, FinalName(key, msgtime_ms));
}

Status MailFolder::LinkFrom(const StagingArea& area, const std::string& name, const core::ItemKey& key,
                            int64_t msgtime_ms) {
  return env_->LinkAt(area.fd(), name, final_.get(), FinalName(key, msgtime_ms), FinalPath(key, msgtime_ms));
}

Status MailFolder::PublishFrom(const StagingArea& area, const std::string& name, const core::ItemKey& key,
                               int64_t msgtime_ms) {
  return env_->RenameAt(area.fd(), name, final_.get(), FinalName(key, msgtime_ms), FinalPath(key, msgtime_ms));
}

Status MailFolder::SyncItem(const core::ItemKey& key, int64_t msgtime_ms) {
  const std::string path = FinalPath(key, msgtime_ms);
  core::UniqueFd fd(::openat(final_.get(), FinalName(key, msgtime_ms).c_str(),
                             O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) {
    // Maildir: a client may have renamed it (flags) or moved it to new/.
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno("open", path, errno);
  }
  return env_->Sync(fd.get(), path);
}

Status MailFolder::SyncFinalDir() {
  return env_->SyncDirFd(final_.get(), layout_ == Layout::kMaildir ? path_ + "/cur" : path_);
}

Status MailFolder::Scan() {
  scanned_.emplace();
  for (int d = 0; d < 2; ++d) {
    int fd = d == 0 ? final_.get() : new_.get();
    if (fd < 0) continue;
    WXA_ASSIGN_OR_RETURN(auto names, env_->ListDirFd(fd, path_));
    for (const auto& n : names) {
      if (auto k = KeyFromFileName(n)) scanned_->insert(k->Hex());
    }
  }
  return Status::Ok();
}

Result<bool> MailFolder::Contains(const core::ItemKey& key, int64_t msgtime_ms) {
  struct stat st {};
  const std::string name = FinalName(key, msgtime_ms);
  Status s = env_->StatAt(final_.get(), name, &st, FinalPath(key, msgtime_ms));
  if (s.ok()) {
    if (!S_ISREG(st.st_mode)) {
      return Status::InvalidArgument(
          fmt::format("{} is not a regular file (a symlink?); not touched", FinalPath(key, msgtime_ms)));
    }
    return true;
  }
  if (!s.IsNotFound()) return s;
  if (layout_ == Layout::kEml) return false;
  // Maildir: delivered by another tool into new/, or flags changed by a client.
  s = env_->StatAt(new_.get(), BaseName(key, msgtime_ms), &st, path_ + "/new");
  if (s.ok()) return true;
  if (!s.IsNotFound()) return s;
  if (!scanned_) WXA_RETURN_IF_ERROR(Scan());
  return scanned_->count(key.Hex()) != 0;
}

Status MailFolder::ForEachMessage(size_t head_bytes,
                                  const std::function<void(const std::string&, std::string_view)>& fn) {
  std::string head;
  for (int d = 0; d < 2; ++d) {
    int dir = d == 0 ? final_.get() : new_.get();
    if (dir < 0) continue;
    const std::string dir_path = layout_ == Layout::kEml ? path_ : path_ + (d == 0 ? "/cur" : "/new");
    WXA_ASSIGN_OR_RETURN(auto names, env_->ListDirFd(dir, dir_path));
    for (const auto& n : names) {
      if (layout_ == Layout::kEml && (n.empty() || n[0] == '.')) continue;  // temp files
      core::UniqueFd fd(::openat(dir, n.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
      if (!fd.valid()) continue;
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      head.resize(head_bytes);
      ssize_t got = ::pread(fd.get(), head.data(), head_bytes, 0);
      head.resize(got > 0 ? static_cast<size_t>(got) : 0);
      fn(core::JoinPath(dir_path, n), head);
    }
  }
  return Status::Ok();
}

Result<StagingArea> StagingArea::Open(core::Env* env, Layout layout, int dir_fd, const std::string& rel,
                                      const std::string& path, bool create) {
  StagingArea a;
  a.env_ = env;
  a.layout_ = layout;
  a.path_ = path;
  WXA_ASSIGN_OR_RETURN(a.fd_, env->OpenDirAt(dir_fd, rel, create, path));
  return a;
}

Result<std::string> StagingArea::Stage(const core::ItemKey& key, int64_t msgtime_ms, std::string_view bytes,
                                       bool sync) const {
  const std::string name = TempName(layout_, key, msgtime_ms);
  const std::string tmp_path = core::JoinPath(path_, name);
  auto fd = env_->CreateAt(fd_.get(), name, tmp_path);
  if (!fd.ok() && fd.status().code() == Status::Code::kAlreadyExists) {
    // Left by a crashed run that had our pid: never renamed, so garbage.
    WXA_RETURN_IF_ERROR(env_->UnlinkAt(fd_.get(), name, tmp_path));
    fd = env_->CreateAt(fd_.get(), name, tmp_path);
  }
  if (!fd.ok()) return fd.status();
  Status s = env_->WriteAll(fd->get(), bytes, tmp_path);
  // INTERNALDATE, as Dovecot reads it from a Maildir file, is its mtime.
  if (s.ok()) s = env_->SetTimes(fd->get(), msgtime_ms > 0 ? msgtime_ms / 1000 : 0, tmp_path);
  if (s.ok() && sync) s = env_->Sync(fd->get(), tmp_path);
  fd->Reset();
  if (!s.ok()) {
    (void)env_->UnlinkAt(fd_.get(), name, tmp_path);
    return s;
  }
  return name;
}

Result<std::string> StagingArea::Read(const std::string& name) const {
  const std::string path = core::JoinPath(path_, name);
  core::UniqueFd fd(::openat(fd_.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open", path, errno);
  std::string out;
  WXA_RETURN_IF_ERROR(core::ReadFd(env_, fd.get(), path, uint64_t{1} << 32, &out));
  return out;
}

void StagingArea::Discard(const std::string& name) const {
  (void)env_->UnlinkAt(fd_.get(), name, core::JoinPath(path_, name));
}

Result<size_t> StagingArea::Clean() {
  WXA_ASSIGN_OR_RETURN(auto names, env_->ListDirFd(fd_.get(), path_));
  size_t n = 0;
  for (const auto& name : names) {
    if (!IsOurTemp(layout_, name)) continue;
    // Only files: a directory or FIFO under such a name is not ours, and
    // failing on it would stop every mailbox staged here.
    struct stat st {};
    Status s = env_->StatAt(fd_.get(), name, &st, core::JoinPath(path_, name));
    if (s.IsNotFound() || (s.ok() && !S_ISREG(st.st_mode))) continue;
    WXA_RETURN_IF_ERROR(s);
    WXA_RETURN_IF_ERROR(env_->UnlinkAt(fd_.get(), name, core::JoinPath(path_, name)));
    ++n;
  }
  return n;
}

Result<MountId> MountOf(int dir_fd, const std::string& path) {
  struct statx st {};
  if (::statx(dir_fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &st) != 0) return Status::FromErrno("statx", path, errno);
  MountId m;
  m.has_mnt_id = (st.stx_mask & STATX_MNT_ID) != 0;
  m.mnt_id = st.stx_mnt_id;
  m.dev_major = st.stx_dev_major;
  m.dev_minor = st.stx_dev_minor;
  return m;
}

}  // namespace wxa::maildir
