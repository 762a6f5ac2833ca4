// EML tree: one RFC 5322 file per item,
//   <root>/<mailbox>/<folder>/<unix seconds>.<32 hex>.eml
// written atomically (temp file, fsync, rename). The name derives from the
// item key, so a rerun finds an item instead of writing a copy.
#pragma once

#include <string>
#include <string_view>

#include "formats/core/file.h"
#include "formats/core/item.h"
#include "formats/maildir/maildir_writer.h"

namespace wxa::eml {

// A directory path for a folder name: levels split on '/', each level made
// safe for a file system ('.'-leading and control characters replaced).
Result<std::string> FolderPath(std::string_view folder);

class EmlWriter {
 public:
  // `env` is not owned and must outlive the writer.
  EmlWriter(core::Env* env, std::string root, std::string folder_path);

  Status PrepareMailbox(const std::string& mailbox_dir);
  Result<bool> Exists(const std::string& mailbox_dir, const core::ItemKey& key, int64_t msgtime_ms);
  // Durable after SyncFolder(mailbox_dir).
  Status Deliver(const std::string& mailbox_dir, const core::ItemKey& key, int64_t msgtime_ms,
                 std::string_view bytes);
  Status SyncFolder(const std::string& mailbox_dir);
  // The temp file only (see MaildirWriter::Stage).
  Result<maildir::StagedFile> Stage(const std::string& mailbox_dir, const core::ItemKey& key,
                                    int64_t msgtime_ms, std::string_view bytes, bool sync);
  std::string PathFor(const std::string& mailbox_dir, const core::ItemKey& key,
                      int64_t msgtime_ms) const;
  Result<size_t> CleanTemp(const std::string& mailbox_dir);

 private:
  std::string Dir(const std::string& mailbox_dir) const;
  core::Env* env_;
  std::string root_;
  std::string folder_path_;
};

}  // namespace wxa::eml
