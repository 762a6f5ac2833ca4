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

  // Writes `bytes` to a new temp file (never taken for an item by readers),
  // dated `msgtime_ms`, fsynced when `sync`. Returns its name (relative to the
  // temp directory). On failure nothing is left behind.
  Result<std::string> Stage(const core::ItemKey& key, int64_t msgtime_ms, std::string_view bytes,
                            bool sync);
  // Publishes the item as a hard link, under its final name, to `src`'s
  // staged file `src_tmp_name` (one inode for every mailbox of an item: no
  // second write, no second fsync, no temp name and rename). The source's
  // bytes must be durable first (fsynced, or a file-system sync); the new
  // name is durable after SyncFinalDir() (or a file-system sync). Fails
  // (EXDEV across file systems, EMLINK, EPERM/ENOTSUP where links are not
  // allowed; kAlreadyExists if the name is taken) without leaving anything.
  Status PublishLink(const MailFolder& src, const std::string& src_tmp_name, const core::ItemKey& key,
                     int64_t msgtime_ms);
  // A staged file's bytes (to copy it where a link is refused).
  Result<std::string> ReadStaged(const std::string& tmp_name) const;
  // Renames a staged file to its final name. Durable after SyncFinalDir()
  // (or a file-system sync).
  Status Publish(const std::string& tmp_name, const core::ItemKey& key, int64_t msgtime_ms);
  // fsync of an item already in place (adopted after a crash: its bytes may
  // never have reached the disk).
  Status SyncItem(const core::ItemKey& key, int64_t msgtime_ms);
  // Removes a staged file that will not be published.
  void Discard(const std::string& tmp_name);
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
  // Removes temp files a stopped run left. Returns how many.
  Result<size_t> CleanTemp();
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
  core::UniqueFd tmp_;     // Maildir: tmp/; EML: the folder
  core::UniqueFd final_;   // Maildir: cur/; EML: the folder
  core::UniqueFd new_;     // Maildir: new/
  std::optional<std::unordered_set<std::string>> scanned_;  // item key hex found by Scan()
};

}  // namespace wxa::maildir
