// Maildir++ delivery (as Dovecot and notmuch read it):
//   <root>/<mailbox>/                  the mailbox (INBOX: cur/ new/ tmp/)
//   <root>/<mailbox>/.WeChat Archiver/ the folder, with cur/ new/ tmp/ and maildirfolder
// Folder names are stored in IMAP modified UTF-7, hierarchy levels joined by '.'.
// A message is written to tmp/, fsynced, and renamed into cur/ with the \Seen
// flag; its name derives from the item key, so a rerun finds it instead of
// writing a copy.
#pragma once

#include <string>
#include <string_view>
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
// components and components containing '.' (the Maildir++ separator).
Result<std::string> FolderDirName(std::string_view folder);
// A directory name for a mailbox address: lowercase, [a-z0-9@._+-] kept,
// anything else %XX-escaped; never "", "." or "..".
std::string MailboxDirName(std::string_view address);
// "<unix seconds>.<32 hex>.wxa" : sorts by date, unique per item.
std::string BaseName(const core::ItemKey& key, int64_t msgtime_ms);

// A message written to its temp name, waiting to be renamed into place.
struct StagedFile {
  std::string tmp;         // the temp file holding the bytes
  std::string final_path;  // where the rename puts it
  std::string dir;         // the directory the rename changes
};

class MaildirWriter {
 public:
  // `env` is not owned and must outlive the writer.
  MaildirWriter(core::Env* env, std::string root, std::string folder_dir);

  // Creates the mailbox and folder directories (idempotent).
  Status PrepareMailbox(const std::string& mailbox_dir);
  // Whether the item is already delivered to the mailbox (in cur/ or new/).
  Result<bool> Exists(const std::string& mailbox_dir, const core::ItemKey& key,
                      int64_t msgtime_ms);
  // tmp/ -> fsync -> rename into cur/. The rename is durable only after
  // SyncFolder(mailbox_dir) (batched by the caller: one directory fsync per batch).
  Status Deliver(const std::string& mailbox_dir, const core::ItemKey& key, int64_t msgtime_ms,
                 std::string_view bytes);
  Status SyncFolder(const std::string& mailbox_dir);
  // Writes the bytes to a temp file in tmp/ (fsynced when `sync`), without
  // renaming: the caller renames a whole batch after one file-system sync.
  Result<StagedFile> Stage(const std::string& mailbox_dir, const core::ItemKey& key,
                           int64_t msgtime_ms, std::string_view bytes, bool sync);
  // Path of a delivered item (for tests and tools).
  std::string PathFor(const std::string& mailbox_dir, const core::ItemKey& key,
                      int64_t msgtime_ms) const;
  // Removes temp files left in tmp/ by a crashed run. Returns how many.
  Result<size_t> CleanTemp(const std::string& mailbox_dir);

 private:
  std::string FolderPath(const std::string& mailbox_dir) const;
  core::Env* env_;
  std::string root_;
  std::string folder_dir_;
};

}  // namespace wxa::maildir
