// Sink adapters for the local targets: Maildir++ trees ("maildir:DIR"), EML
// trees ("eml:DIR"), and the null target ("null:", counts and discards).
//
// Maildir and EML complete at Barrier(), so a whole batch shares its
// durability cost:
//   Submit()  writes the item to a temp file in the tree's staging directory
//             (no rename), or adopts the file a stopped run already put in place;
//   Barrier() makes every staged file durable and visible, then completes:
//             kBatch: syncfs, rename all, syncfs (two file-system commits per batch);
//             kFile:  each temp file was fsynced when written; rename all, fsync
//                     each directory (notmuch's way: one fsync per item).
// When kDone arrives the file is on disk, complete, under its final name, and
// survives a power cut. Nothing a run does follows a symlink in the tree
// (maildir::MailFolder); one run at a time writes into a tree (a lock file at
// its root).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "engine/sinks/sink.h"
#include "formats/core/file.h"

namespace wxa::sinks {

enum class SyncMode { kBatch, kFile };
Result<SyncMode> ParseSyncMode(std::string_view s);  // "batch" | "file"

struct LocalSinkOptions {
  std::string folder = "WeChat Archiver";
  SyncMode sync_mode = SyncMode::kBatch;
  // Folders whose descriptors stay open (3 each for Maildir, 2 for EML). 0: FolderCacheSize of
  // the open-file limit (which the CLI raises towards its hard limit). A cache smaller than
  // the mailboxes a run writes to reopens 5 directories per delivery (measured: 612,531
  // openat2 calls for 120,035 deliveries into 100 mailboxes with 64).
  size_t max_open_folders = 0;
  // An item's other mailboxes get hard links to its one file (copies where
  // links are impossible). Off: a separate copy per mailbox (--no-links).
  bool link_copies = true;
  // Threads that publish a batch's mailboxes (renames and links), at least 1.
  // 1 keeps one order of file-system steps (the power-cut test relies on it).
  size_t publish_threads = 2;
  core::Env* env = nullptr;      // null = Env::Default(); must outlive the sink
};

// Folders a local tree sink keeps open with `nofile` descriptors allowed:
// (nofile - reserve) / 3, the reserve a sixteenth of them and at least 256,
// between 64 and 16,384.
size_t FolderCacheSize(uint64_t nofile);

// The lock file each local tree holds while a run writes into it.
inline constexpr std::string_view kTargetLockName = ".wxarchiver-target.lock";
// The directory at a local tree's root where items are written before they
// are renamed (or hard-linked) into their folders: temp files of the run that
// holds the lock, and those a stopped run left until the next run opens the
// tree and removes them. Complete messages among them: a tool that indexes
// the whole tree (notmuch: new.ignore) should skip it.
inline constexpr std::string_view kStagingDirName = ".wxarchiver-staging";

// Creates (if need be) and flocks kTargetLockName in the tree `dir`, whose
// directory is open as root_fd (used for the openat; `dir` only names it in
// messages). The lock lasts as long as the returned descriptor is open.
// Aborted when another run holds it.
[[nodiscard]] Result<core::UniqueFd> TakeTargetLock(int root_fd, const std::string& dir);

// For kMaildir, kEml and kNull targets; other kinds are not local.
Result<std::unique_ptr<Sink>> MakeLocalSink(const Target& target, const LocalSinkOptions& options);

// Where a local sink stores (or would store) an item, for tests and tools.
Result<std::string> LocalItemPath(const Target& target, std::string_view folder,
                                  const std::string& mailbox, const core::ItemKey& key,
                                  int64_t msgtime_ms);

}  // namespace wxa::sinks
