// Maildir++ and EML trees, as Dovecot, notmuch and file managers read them:
//   Maildir: <root>/<mailbox>/                   the mailbox (INBOX: cur/ new/ tmp/)
//            <root>/<mailbox>/.WeChat Archiver/  the folder: cur/ new/ tmp/ maildirfolder
//            items in cur/<secs>.<32 hex>.wxa:2,S (\Seen)
//   EML:     <root>/<mailbox>/WeChat Archiver/<secs>.<32 hex>.wxa.eml
// Folder names are IMAP modified UTF-7 in Maildir++ (levels joined by '.').
// File names derive from the item key, so a rerun finds an item instead of
// writing a copy. Every directory is opened beneath the root without
// following any symlink (core::Env::OpenDirAt) and every file operation is
// relative to those descriptors: a symlink planted in the tree is refused,
// never followed. Each delivered file's mtime is the message time, which is
// what Dovecot shows as INTERNALDATE.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "formats/core/file.h"
#include "formats/core/item.h"

namespace wxa::maildir {

// RFC 3501 section 5.1.3 modified UTF-7 of a UTF-8 folder name component.
std::string EncodeModifiedUtf7(std::string_view utf8);
// The levels of a folder name written with '/' ("Archive/WeChat"); an error
// for an empty name or an empty level.
Result<std::vector<std::string_view>> FolderLevels(std::string_view folder);
// ".WeChat Archiver" for "WeChat Archiver"; "A/B" -> ".A.B". Rejects empty
// components, components containing '.' (the Maildir++ separator), and names
// too long for a directory entry.
Result<std::string> FolderDirName(std::string_view folder);
// A directory name for a mailbox address: lowercase, [a-z0-9@._+-] kept,
// anything else %XX-escaped; never "", "." or "..". Names over 255 bytes
// (a directory entry's limit) become a stable prefix + "~" + 16 hex digits of
// the address's SHA-256.
std::string MailboxDirName(std::string_view address);
inline constexpr size_t kMaxNameBytes = 255;
// "<unix seconds>.<32 hex>.wxa" : sorts by date, unique per item.
std::string BaseName(const core::ItemKey& key, int64_t msgtime_ms);
// The item key inside a file name made from BaseName (whatever follows it:
// Maildir flags, ",S=<size>", ".eml"), or nullopt.
std::optional<core::ItemKey> KeyFromFileName(std::string_view name);

enum class Layout : uint8_t { kMaildir, kEml };

// Which mount a directory is on: a rename or link between two directories
// can work only within one (across mounts it fails, EXDEV). The mount id
// where the kernel has it (5.8): two mounts of one file system share st_dev.
struct MountId {
  bool has_mnt_id = false;
  uint64_t mnt_id = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  bool operator==(const MountId& o) const {
    if (has_mnt_id && o.has_mnt_id && mnt_id != o.mnt_id) return false;
    return dev_major == o.dev_major && dev_minor == o.dev_minor;
  }
};
Result<MountId> MountOf(int dir_fd, const std::string& path);

// A directory where items are written before they are published into a
// folder by rename or hard link: a folder's own tmp/ (the EML folder itself,
// with '.'-leading temp names), or one directory a whole tree's folders share
// (LocalTreeSink). Temp names are unique per process (pid and a counter), so
// one area serves any number of folders and threads. Not thread-safe for
// Clean(); Stage, Read and Discard are. `env` must outlive it.
class StagingArea {
 public:
  // Opens `rel` beneath dir_fd without following symlinks, creating it when
  // `create`. `path` is its full path, for messages.
  static Result<StagingArea> Open(core::Env* env, Layout layout, int dir_fd, const std::string& rel,
                                  const std::string& path, bool create);
  StagingArea() = default;
  StagingArea(StagingArea&&) = default;
  StagingArea& operator=(StagingArea&&) = default;

  // Writes `bytes` to a new temp file (a Maildir reader skips tmp/, an EML
  // reader '.'-leading names; the tree's staging directory is outside every
  // folder), dated `msgtime_ms`, fsynced when `sync`. Returns its name. On
  // failure nothing is left behind.
  Result<std::string> Stage(const core::ItemKey& key, int64_t msgtime_ms, std::string_view bytes, bool sync) const;
  // A staged file's bytes (to copy it where a link or rename is refused).
  Result<std::string> Read(const std::string& name) const;
  // Removes a staged file that will not be published.
  void Discard(const std::string& name) const;
  // Removes the temp files a stopped run left (only names this writer makes).
  Result<size_t> Clean();

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

 private:
  core::Env* env_ = nullptr;
  Layout layout_ = Layout::kMaildir;
  std::string path_;
  core::UniqueFd fd_;
};

// One mailbox's archive folder, with descriptors on its directories. Not
// thread-safe (one user at a time); `env` must outlive it. Holds at most four
// descriptors.
class MailFolder {
 public:
  // Opens <mailbox_dir>/<folder> beneath root_fd, creating what is missing
  // when `create` (Maildir: the mailbox's own cur/new/tmp too, and the
  // maildirfolder marker). `root_path` is for messages only.
  static Result<MailFolder> Open(core::Env* env, Layout layout, int root_fd,
                                 const std::string& root_path, const std::string& mailbox_dir,
                                 const std::string& folder, bool create);
  MailFolder() = default;
  MailFolder(MailFolder&&) = default;
  MailFolder& operator=(MailFolder&&) = default;

  // The folder's own temp directory (Maildir: tmp/; EML: the folder).
  const StagingArea& staging() const { return tmp_; }
  // Stages in the folder's own temp directory (staging().Stage).
  Result<std::string> Stage(const core::ItemKey& key, int64_t msgtime_ms, std::string_view bytes,
                            bool sync) {
    return tmp_.Stage(key, msgtime_ms, bytes, sync);
  }
  // Publishes the item as a hard link, under its final name, to the staged
  // file `name` of `area` (one inode for every mailbox of an item: no second
  // write, no second fsync, no temp name and rename). The source's bytes must
  // be durable first (fsynced, or a file-system sync); the new name is
  // durable after SyncFinalDir() (or a file-system sync). Fails (EXDEV across
  // file systems, EMLINK, EPERM/ENOTSUP where links are not allowed;
  // kAlreadyExists if the name is taken) without leaving anything.
  Status LinkFrom(const StagingArea& area, const std::string& name, const core::ItemKey& key, int64_t msgtime_ms);
  // Renames the staged file `name` of `area` to the item's final name.
  // Durable after SyncFinalDir() (or a file-system sync). EXDEV when `area`
  // is on another mount.
  Status PublishFrom(const StagingArea& area, const std::string& name, const core::ItemKey& key,
                     int64_t msgtime_ms);
  // Renames a file staged in the folder's own temp directory into place.
  Status Publish(const std::string& tmp_name, const core::ItemKey& key, int64_t msgtime_ms) {
    return PublishFrom(tmp_, tmp_name, key, msgtime_ms);
  }
  // fsync of an item already in place (adopted after a crash: its bytes may
  // never have reached the disk).
  Status SyncItem(const core::ItemKey& key, int64_t msgtime_ms);
  Status SyncFinalDir();
  // Whether the item is there: Maildir in cur/ or new/ with any flags (a
  // client may have changed them), EML by its name. The first miss scans the
  // folder once; the scan is kept for this object's life.
  Result<bool> Contains(const core::ItemKey& key, int64_t msgtime_ms);
  // Every message file of the folder (Maildir: cur/ and new/), with the
  // first `head_bytes` of each: fn(path, head). Symlinks and other
  // non-regular entries are skipped.
  Status ForEachMessage(size_t head_bytes,
                        const std::function<void(const std::string&, std::string_view)>& fn);
  // Removes temp files a stopped run left in the folder's own temp
  // directory. Returns how many.
  Result<size_t> CleanTemp() { return tmp_.Clean(); }
  // Full path of where the item is (or would be) stored.
  std::string FinalPath(const core::ItemKey& key, int64_t msgtime_ms) const;
  std::string FinalName(const core::ItemKey& key, int64_t msgtime_ms) const;
  const std::string& path() const { return path_; }
  int final_dir_fd() const { return final_.get(); }

 private:
  Status Scan();
  core::Env* env_ = nullptr;
  Layout layout_ = Layout::kMaildir;
  std::string path_;       // the folder's full path
  StagingArea tmp_;       // Maildir: tmp/; EML: the folder
  core::UniqueFd final_;   // Maildir: cur/; EML: the folder
  core::UniqueFd new_;     // Maildir: new/
  std::optional<std::unordered_set<std::string>> scanned_;  // item key hex found by Scan()
};

}  // namespace wxa::maildir
