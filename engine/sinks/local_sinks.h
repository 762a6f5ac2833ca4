// Sink adapters for the local targets: Maildir++ trees and EML trees.
// A target is written "maildir:DIR" or "eml:DIR". One directory per mailbox,
// named by MailboxDirName(address), holding the archive folder.
//
// Delivery is two-phase, so a whole batch shares its durability cost:
//   Stage()   writes an item to a temp file (no rename);
//   Publish() makes every staged file durable and visible:
//             kBatch: syncfs, rename all, syncfs (two file-system commits per batch);
//             kFile:  each temp file was fsynced when staged; rename all, fsync each directory
//                     (notmuch's way: one fsync per item).
//   Discard() removes staged temp files (the batch failed).
// Either way, when Publish returns OK every staged item is on disk, complete,
// under its final name, and survives a crash; when it fails, nothing staged
// may be counted as delivered.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "formats/core/file.h"
#include "formats/core/item.h"

namespace wxa::sinks {

enum class SyncMode { kBatch, kFile };
Result<SyncMode> ParseSyncMode(std::string_view s);  // "batch" | "file"

struct StagedDelivery {
  std::string mailbox;
  std::string tmp;
  std::string final_path;
  std::string dir;
};

class LocalSink {
 public:
  virtual ~LocalSink() = default;
  virtual const char* kind() const = 0;  // "maildir" or "eml"
  const std::string& root() const { return root_; }

  // All methods are thread-safe. `mailbox` is the lowercase address.
  // Whether (item, mailbox) is already delivered (complete: renames are atomic).
  Result<bool> Exists(const std::string& mailbox, const core::ItemKey& key, int64_t msgtime_ms);
  Status Stage(const std::string& mailbox, const core::ItemKey& key, int64_t msgtime_ms,
               std::string_view bytes, std::vector<StagedDelivery>* batch);
  Status Publish(std::vector<StagedDelivery>* batch);
  void Discard(std::vector<StagedDelivery>* batch);
  // Where an item is (or would be) stored.
  virtual std::string PathFor(const std::string& mailbox, const core::ItemKey& key,
                              int64_t msgtime_ms) const = 0;
  // Removes temp files a stopped run left in the mailbox's folder.
  virtual Result<size_t> CleanTemp(const std::string& mailbox) = 0;

 protected:
  LocalSink(core::Env* env, std::string root, SyncMode mode)
      : env_(env), root_(std::move(root)), mode_(mode) {}
  virtual Status Prepare(const std::string& mailbox) = 0;
  virtual Result<bool> FileExists(const std::string& mailbox, const core::ItemKey& key,
                                  int64_t msgtime_ms) = 0;
  // Whether the mailbox's archive folder is on disk.
  virtual bool FolderExists(const std::string& mailbox) = 0;
  virtual Result<StagedDelivery> StageFile(const std::string& mailbox, const core::ItemKey& key,
                                           int64_t msgtime_ms, std::string_view bytes,
                                           bool sync) = 0;
  core::Env* env_;

 private:
  std::string root_;
  SyncMode mode_;
  std::mutex mu_;
  std::unordered_set<std::string> prepared_;  // GUARDED_BY(mu_)
  // Mailboxes whose folder did not exist when this process first looked:
  // nothing in them predates this run, so Exists() needs no stat.
  std::unordered_map<std::string, bool> folder_existed_;  // GUARDED_BY(mu_)
};

// Parses "maildir:DIR" / "eml:DIR" and makes the sink. `env` must outlive it.
Result<std::unique_ptr<LocalSink>> MakeLocalSink(std::string_view target, std::string_view folder,
                                                 core::Env* env, SyncMode mode = SyncMode::kBatch);

}  // namespace wxa::sinks
