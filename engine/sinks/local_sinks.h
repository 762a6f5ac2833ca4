// Sink adapters for the local targets: Maildir++ trees and EML trees.
// A target is written "maildir:DIR" or "eml:DIR". One directory per mailbox,
// named by MailboxDirName(address), holding the archive folder.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

#include "formats/core/file.h"
#include "formats/core/item.h"

namespace wxa::sinks {

class LocalSink {
 public:
  virtual ~LocalSink() = default;
  virtual const char* kind() const = 0;  // "maildir" or "eml"
  const std::string& root() const { return root_; }

  // All methods are thread-safe. `mailbox` is the lowercase address.
  // Whether (item, mailbox) is already delivered.
  virtual Result<bool> Exists(const std::string& mailbox, const core::ItemKey& key,
                              int64_t msgtime_ms) = 0;
  // Writes durably except for the directory entry: see Sync().
  Status Deliver(const std::string& mailbox, const core::ItemKey& key, int64_t msgtime_ms,
                 std::string_view bytes);
  // Makes the deliveries to `mailbox` since the last Sync durable.
  virtual Status Sync(const std::string& mailbox) = 0;
  // Where an item is (or would be) stored.
  virtual std::string PathFor(const std::string& mailbox, const core::ItemKey& key,
                              int64_t msgtime_ms) const = 0;
  // Removes temp files a crashed run left in the mailbox's folder.
  virtual Result<size_t> CleanTemp(const std::string& mailbox) = 0;

 protected:
  explicit LocalSink(std::string root) : root_(std::move(root)) {}
  virtual Status Prepare(const std::string& mailbox) = 0;
  virtual Status Write(const std::string& mailbox, const core::ItemKey& key, int64_t msgtime_ms,
                       std::string_view bytes) = 0;

 private:
  std::string root_;
  std::mutex mu_;
  std::unordered_set<std::string> prepared_;  // GUARDED_BY(mu_)
};

// Parses "maildir:DIR" / "eml:DIR" and makes the sink. `env` must outlive it.
Result<std::unique_ptr<LocalSink>> MakeLocalSink(std::string_view target, std::string_view folder,
                                                 core::Env* env);

}  // namespace wxa::sinks
