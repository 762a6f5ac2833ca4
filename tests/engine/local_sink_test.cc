// The Maildir/EML sink on its own, driven the way the pipeline drives it:
// Submit, Barrier (which hands the batch to the publisher thread), Close.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "engine/sinks/local_sinks.h"
#include "engine/sinks/sink.h"
#include "tests/engine/sink_test_util.h"
#include "formats/maildir/maildir_writer.h"
#include "tests/test_util.h"

namespace wxa::sinks {
namespace {

constexpr int64_t kT = 1603875600000;

using sinktest::MakeDelivery;
using sinktest::Outcomes;

// Regular files of the tree, its lock file and Maildir++ folder markers aside.
size_t MessageFiles(const std::string& root) {
  size_t n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && name.rfind(".wxarchiver", 0) != 0 && name != "maildirfolder") ++n;
  }
  return n;
}

// A Maildir (or EML) sink into <dir>/out, opened; null after a failure,
// which the EXPECTs report.
std::unique_ptr<Sink> OpenedSink(const test::TempDir& dir, LocalSinkOptions o = {},
                                 const char* layout = "maildir") {
  auto target = ParseTarget(fmt::format("{}:{}", layout, dir / "out"));
  EXPECT_TRUE(target.ok()) << target.status().ToString();
  if (!target.ok()) return nullptr;
  auto sink = MakeLocalSink(*target, o);
  EXPECT_TRUE(sink.ok()) << sink.status().ToString();
  if (!sink.ok()) return nullptr;
  Status opened = (*sink)->Open();
  EXPECT_TRUE(opened.ok()) << opened.ToString();
  return opened.ok() ? std::move(*sink) : nullptr;
}

// Barrier() only hands a batch over; Close() must not return before every
// batch handed over is published and completed (its caller then releases
// the tree's lock and records the outcomes).
TEST(LocalSink, CloseWaitsForEveryBatchHandedOver) {
  for (const char* layout : {"maildir", "eml"}) {
    SCOPED_TRACE(layout);
    test::TempDir dir;
    auto sink = OpenedSink(dir, {}, layout);
    ASSERT_NE(sink, nullptr);
    Outcomes out;
    const std::vector<std::string> mailboxes = {"a@x.com", "b@x.com", "c@x.com"};
    uint64_t id = 0;
    for (int batch = 0; batch < 4; ++batch) {
      for (int item = batch * 100; item < (batch + 1) * 100; ++item) {
        for (const auto& mb : mailboxes) sink->Submit(MakeDelivery(id++, mb, item), out.Fn());
      }
      ASSERT_TRUE(sink->Barrier().ok());
    }
    ASSERT_TRUE(sink->Close().ok());
    ASSERT_EQ(out.size(), id) << "Close returned before the publisher completed everything";
    std::set<uint64_t> ids;
    for (const auto& [i, c] : out.got) {
      EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
      ids.insert(i);
    }
    EXPECT_EQ(ids.size(), id);
    EXPECT_EQ(MessageFiles(dir / "out"), id) << "every delivery is a file in its folder, nothing left in tmp/";
    sink.reset();
  }
}

// A publication that fails (here the file-system sync) is the sink's
// failure: its deliveries complete SinkBad, and the next Barrier and Close
// say so, although the publisher thread, not the caller, met the error.
TEST(LocalSink, AFailedPublicationIsReportedByBarrierAndClose) {
  test::TempDir dir;
  test::FaultEnv env;
  env.fail_sync = true;
  LocalSinkOptions o;
  o.env = &env;
  auto sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  Outcomes out;
  for (int item = 0; item < 10; ++item) sink->Submit(MakeDelivery(item, "a@x.com", item), out.Fn());
  (void)sink->Barrier();  // handed over; the error comes later
  EXPECT_FALSE(sink->Close().ok()) << "Close hid the publisher's failure";
  ASSERT_EQ(out.size(), 10u);
  for (const auto& [i, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kSinkBad);
  EXPECT_FALSE(sink->Barrier().ok());
}

size_t TempFilesIn(const std::string& root) {
  size_t n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    if (e.is_regular_file() && test::IsTempFile(std::filesystem::relative(e.path(), root).string())) ++n;
  }
  return n;
}

// The sink destroyed without Close (the run is being torn down after an
// error): the batch being published is finished, a batch handed over but
// not taken and deliveries staged since the last Barrier are dropped, and
// their temp files removed. No temp file is left.
TEST(LocalSink, DestroyedWithoutCloseLeavesNoTempFiles) {
  test::TempDir dir;
  test::GatedSyncEnv env;
  LocalSinkOptions o;
  o.env = &env;
  auto sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  Outcomes out;
  uint64_t id = 0;
  for (int item = 0; item < 10; ++item) sink->Submit(MakeDelivery(id++, "a@x.com", item), out.Fn());
  ASSERT_TRUE(sink->Barrier().ok());
  env.WaitEntered();  // the publisher holds the first batch, in its sync
  for (int item = 10; item < 20; ++item) sink->Submit(MakeDelivery(id++, "a@x.com", item), out.Fn());
  ASSERT_TRUE(sink->Barrier().ok());  // handed over, not taken
  for (int item = 20; item < 30; ++item) sink->Submit(MakeDelivery(id++, "b@x.com", item), out.Fn());
  EXPECT_EQ(TempFilesIn(dir / "out"), 30u);

  std::thread destroy([&] { sink.reset(); });
  // Let the destructor take the queue first (if it has not by then, the
  // second batch is published instead: tmp/ ends empty either way).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  env.Open();
  destroy.join();

  EXPECT_EQ(TempFilesIn(dir / "out"), 0u) << "temp files of dropped deliveries were left behind";
  const size_t published = MessageFiles(dir / "out");
  EXPECT_TRUE(published == 10u || published == 20u) << published;
  EXPECT_EQ(out.size(), published) << "the batch in progress completes; dropped ones do not";
  for (const auto& [i, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
}

// Counts how often each directory is opened, successfully (MailFolder::Open).
class CountingOpenEnv : public core::Env {
 public:
  Result<core::UniqueFd> OpenDirAt(int root_fd, const std::string& rel, bool create,
                                   const std::string& path) override {
    auto fd = core::Env::OpenDirAt(root_fd, rel, create, path);
    if (fd.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      ++opens_[rel];
    }
    return fd;
  }
  int Opens(const std::string& rel) {
    std::lock_guard<std::mutex> l(mu_);
    return opens_[rel];
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> opens_;
};

// More mailboxes than open folders: the folder cache evicts the least
// recently used one. A record's mailboxes are used together (staged, then
// linked and published), so two mailboxes used in turn stay open although
// every pair is new: each is opened once while staging.
TEST(LocalSink, TheFolderCacheKeepsTheMostRecentlyUsed) {
  test::TempDir dir;
  CountingOpenEnv env;
  LocalSinkOptions o;
  o.env = &env;
  o.max_open_folders = 3;
  auto sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  Outcomes out;
  uint64_t id = 0;
  int item = 0;
  constexpr int kPairs = 30;
  for (int i = 0; i < kPairs; ++i) {
    for (int round = 0; round < 3; ++round) {
      sink->Submit(MakeDelivery(id++, fmt::format("a{}@x.com", i), item++), out.Fn());
      sink->Submit(MakeDelivery(id++, fmt::format("b{}@x.com", i), item++), out.Fn());
    }
  }
  int reopened = 0;
  for (int i = 0; i < kPairs; ++i) {
    for (const char* side : {"a", "b"}) {
      reopened += env.Opens(maildir::MailboxDirName(fmt::format("{}{}@x.com", side, i))) - 1;
    }
  }
  EXPECT_EQ(reopened, 0) << "folders in use were evicted";
  ASSERT_TRUE(sink->Close().ok());
  EXPECT_EQ(out.size(), id);
  EXPECT_EQ(MessageFiles(dir / "out"), id);
}

// The folder cache takes the descriptors the run does not need: 5,255
// mailboxes fit in the 20,000 a machine here allows (half of them, as before,
// held 3,333 folders and reopened folders for a third of the deliveries).
TEST(LocalSink, FolderCacheSizeLeavesAReserve) {
  EXPECT_EQ(FolderCacheSize(20000), 6250u);
  EXPECT_EQ(FolderCacheSize(1024), 256u);     // a reserve of 256
  EXPECT_EQ(FolderCacheSize(100), 64u);       // never fewer than 64
  EXPECT_EQ(FolderCacheSize(1u << 20), 16384u);
  for (uint64_t n : {1024u, 4096u, 20000u, 65536u}) {
    EXPECT_LE(FolderCacheSize(n) * 3 + std::max<uint64_t>(256, n / 16), n) << n;
  }
}

size_t OpenDescriptors() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// Each item goes to two mailboxes: staged in one, hard-linked into the other
// at the barrier. Until then the sink holds no more descriptors than its
// folder cache allows, however many mailboxes the batch links into (it held
// every link source's folder open, and a 2-thread import into 5,254
// mailboxes stopped with EMFILE).
TEST(LocalSink, StagedLinksHoldNoFolderOpen) {
  test::TempDir dir;
  LocalSinkOptions o;
  o.max_open_folders = 4;
  auto sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  const size_t before = OpenDescriptors();
  Outcomes out;
  uint64_t id = 0;
  constexpr int kItems = 300;
  for (int i = 0; i < kItems; ++i) {
    sink->Submit(MakeDelivery(id++, fmt::format("a{}@x.com", i), i), out.Fn());
    sink->Submit(MakeDelivery(id++, fmt::format("b{}@x.com", i), i), out.Fn());
  }
  const size_t staged = OpenDescriptors();
  EXPECT_LE(staged, before + 4 * 3 + 8) << "descriptors held for " << kItems << " staged links";
  ASSERT_TRUE(sink->Close().ok());
  ASSERT_EQ(out.size(), id);
  for (const auto& [i, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
  EXPECT_EQ(MessageFiles(dir / "out"), id);
  struct stat st{};
  const std::string linked = dir / fmt::format("out/b7@x.com/.WeChat Archiver/cur");
  size_t links = 0;
  for (const auto& e : std::filesystem::directory_iterator(linked)) {
    ASSERT_EQ(::stat(e.path().c_str(), &st), 0);
    links += st.st_nlink == 2;
  }
  EXPECT_EQ(links, 1u) << "b7's item is a hard link to a7's";
}

// Publication on two threads: many mailboxes, each item in 3 of them (hard links), a tiny
// folder cache (evictions while both publish threads hold folders), several
// barriers, both layouts and sync modes; optionally links refused (copy fallback reads the source folder
// while the other thread may be publishing it).
class RefuseAllLinksEnv : public core::Env {
 public:
  Status LinkAt(int, const std::string&, int, const std::string&, const std::string& path) override {
    return Status::FromErrno("link", path, EXDEV);
  }
};

TEST(LocalSink, ParallelPublicationWithManyMailboxesAndEvictions) {
  for (const char* layout : {"maildir", "eml"}) {
    for (SyncMode mode : {SyncMode::kBatch, SyncMode::kFile}) {
      for (size_t cache : {1, 2, 64}) {
        for (bool refuse : {false, true}) {
          SCOPED_TRACE(fmt::format("{} mode {} cache {} refuse {}", layout, int(mode), cache, refuse));
          test::TempDir dir;
          RefuseAllLinksEnv renv;
          LocalSinkOptions o;
          o.max_open_folders = cache;
          o.sync_mode = mode;
          if (refuse) o.env = &renv;
          auto sink = OpenedSink(dir, o, layout);
          ASSERT_NE(sink, nullptr);
          Outcomes out;
          uint64_t id = 0;
          constexpr int kMailboxes = 23;
          for (int item = 0; item < 120; ++item) {
            for (int k = 0; k < 3; ++k) {
              sink->Submit(MakeDelivery(id++, fmt::format("m{}@x.com", (item * 7 + k * 5) % kMailboxes), item), out.Fn());
            }
            if (item % 40 == 39) ASSERT_TRUE(sink->Barrier().ok());
          }
          ASSERT_TRUE(sink->Close().ok());
          ASSERT_EQ(out.size(), id);
          std::set<uint64_t> ids;
          for (const auto& [i, c] : out.got) {
            ids.insert(i);
            EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
          }
          EXPECT_EQ(ids.size(), id) << "a completion duplicated";
          EXPECT_EQ(MessageFiles(dir / "out"), id);
        }
      }
    }
  }
}

// A fatal error (every fsync fails: EIO) in --sync file while both threads
// publish: every delivery completes exactly once, none Done.
TEST(LocalSink, FatalErrorDuringParallelPublication) {
  for (SyncMode mode : {SyncMode::kBatch, SyncMode::kFile}) {
    test::TempDir dir;
    test::FaultEnv env;
    LocalSinkOptions o;
    o.max_open_folders = 2;
    o.sync_mode = mode;
    o.env = &env;
    auto sink = OpenedSink(dir, o);
    ASSERT_NE(sink, nullptr);
    Outcomes out;
    uint64_t id = 0;
    for (int item = 0; item < 60; ++item) {
      for (int k = 0; k < 3; ++k) sink->Submit(MakeDelivery(id++, fmt::format("m{}@x.com", (item + k * 4) % 13), item), out.Fn());
    }
    env.fail_sync = true;
    (void)sink->Barrier();
    Status s = sink->Close();
    EXPECT_FALSE(s.ok());
    ASSERT_EQ(out.size(), id);
    std::set<uint64_t> ids;
    for (const auto& [i, c] : out.got) {
      ids.insert(i);
      EXPECT_NE(c.kind, Completion::Kind::kDone);
    }
    EXPECT_EQ(ids.size(), id);
  }
}

// A fatal error met only by the second publication thread still fails the
// whole batch. Mailbox "a" sorts first, so the publisher (which starts
// taking mailboxes as soon as it has started its helper) usually takes it,
// and its rename waits until "b"'s has failed with EIO on the other thread.
// Either way round the batch must end with no delivery done.
class FailRenameOfBEnv : public core::Env {
 public:
  Status RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                  const std::string& path) override {
    if (path.find("/b@x.com/") != std::string::npos) {
      std::lock_guard<std::mutex> l(mu_);
      failed_ = true;
      cv_.notify_all();
      return Status::FromErrno("rename", path, EIO);
    }
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait_for(l, std::chrono::seconds(5), [&] { return failed_; });
    }
    return core::Env::RenameAt(from_dir, from, to_dir, to, path);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool failed_ = false;
};

TEST(LocalSink, FatalErrorOfTheHelperThreadFailsTheBatch) {
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE(round);
    test::TempDir dir;
    FailRenameOfBEnv env;
    LocalSinkOptions o;
    o.link_copies = false;  // renames only: each mailbox its own file
    o.env = &env;
    auto sink = OpenedSink(dir, o);
    ASSERT_NE(sink, nullptr);
    Outcomes out;
    sink->Submit(MakeDelivery(0, "a@x.com", 1), out.Fn());
    sink->Submit(MakeDelivery(1, "b@x.com", 2), out.Fn());
    (void)sink->Barrier();
    EXPECT_FALSE(sink->Close().ok());
    ASSERT_EQ(out.size(), 2u);
    for (const auto& [i, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kSinkBad) << i;
  }
}

// The staging directory (kStagingDirName): a stopped run's temp files in it
// are garbage (the run holds the tree's lock), removed when the sink opens;
// anything else there is left alone.
TEST(LocalSink, StagingDirectoryOfAStoppedRunIsCleaned) {
  for (const char* layout : {"maildir", "eml"}) {
    SCOPED_TRACE(layout);
    test::TempDir dir;
    const std::string staging = dir / ("out/" + std::string(kStagingDirName));
    const std::string base = maildir::BaseName(core::ItemKey::For("wecom", "default", "old"), kT);
    const std::string ours = std::string(layout) == "maildir" ? base + ".4242_7" : "." + base + ".4242_7.tmp";
    test::WriteFile(staging + "/" + ours, "partial");
    test::WriteFile(staging + "/notes.txt", "not ours");
    // A directory under a temp name is not ours either (and must not stop the run).
    const std::string dir_named_ours = ours + "x";
    std::filesystem::create_directories(staging + "/" + dir_named_ours);
    auto sink = OpenedSink(dir, {}, layout);
    ASSERT_NE(sink, nullptr);
    EXPECT_FALSE(std::filesystem::exists(staging + "/" + ours)) << "a stopped run's temp file was kept";
    EXPECT_TRUE(std::filesystem::exists(staging + "/notes.txt")) << "a file that is not ours was removed";
    EXPECT_TRUE(std::filesystem::is_directory(staging + "/" + dir_named_ours));
    Outcomes out;
    for (int item = 0; item < 5; ++item) sink->Submit(MakeDelivery(item, "a@x.com", item), out.Fn());
    ASSERT_TRUE(sink->Close().ok());
    ASSERT_EQ(out.size(), 5u);
    for (const auto& [i, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
    EXPECT_EQ(TempFilesIn(dir / "out"), 1u) << "notes.txt only";
  }
}

// A symlink, FIFO or file planted as the staging directory: the sink does
// not open (nothing is written or removed through it), and says why.
TEST(LocalSink, StagingDirectoryThatIsNotADirectoryIsRefused) {
  for (const char* kind : {"symlink", "fifo", "file"}) {
    SCOPED_TRACE(kind);
    test::TempDir dir;
    const std::string staging = dir / ("out/" + std::string(kStagingDirName));
    const std::string elsewhere = dir / "elsewhere";
    const std::string planted = maildir::BaseName(core::ItemKey::For("wecom", "default", "x"), kT) + ".1_1";
    test::WriteFile(elsewhere + "/" + planted, "someone else's");
    std::filesystem::create_directories(dir / "out");
    if (std::string(kind) == "symlink") {
      std::filesystem::create_directory_symlink(elsewhere, staging);
    } else if (std::string(kind) == "fifo") {
      ASSERT_EQ(::mkfifo(staging.c_str(), 0600), 0);
    } else {
      test::WriteFile(staging, "x");
    }
    auto target = ParseTarget("maildir:" + (dir / "out"));
    ASSERT_TRUE(target.ok());
    auto sink = MakeLocalSink(*target, {});
    ASSERT_TRUE(sink.ok());
    Status opened = (*sink)->Open();
    ASSERT_FALSE(opened.ok()) << "opened with a " << kind << " as its staging directory";
    EXPECT_NE(opened.ToString().find(kStagingDirName), std::string::npos) << opened.ToString();
    EXPECT_TRUE(std::filesystem::exists(elsewhere + "/" + planted)) << "removed a file through the symlink";
  }
}

// The directory a descriptor is open on.
std::string DirOf(int fd) {
  std::error_code ec;
  return std::filesystem::read_symlink(fmt::format("/proc/self/fd/{}", fd), ec).string();
}

// Records renames and links refused across mounts (EXDEV) and the fsyncs of
// files and directories; renames and links from the staging directory into
// paths containing `refuse_into` are refused with EXDEV, as across mounts.
class MountEnv : public core::Env {
 public:
  std::string refuse_into;
  std::atomic<int> refused{0};  // by refuse_into
  std::atomic<int> exdev{0};    // by the kernel
  std::mutex mu;
  std::vector<std::string> synced_files, synced_dirs;

  Status RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                  const std::string& path) override {
    if (Refuse(from_dir, path)) return Status::FromErrno("rename", path, EXDEV);
    return Count(core::Env::RenameAt(from_dir, from, to_dir, to, path));
  }
  Status LinkAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                const std::string& path) override {
    if (Refuse(from_dir, path)) return Status::FromErrno("link", path, EXDEV);
    return Count(core::Env::LinkAt(from_dir, from, to_dir, to, path));
  }
  Status Sync(int fd, const std::string& path) override {
    std::lock_guard<std::mutex> l(mu);
    synced_files.push_back(path);
    return core::Env::Sync(fd, path);
  }
  Status SyncDirFd(int fd, const std::string& path) override {
    std::lock_guard<std::mutex> l(mu);
    synced_dirs.push_back(path);
    return core::Env::SyncDirFd(fd, path);
  }
  size_t FilesSyncedIn(const std::string& part) {
    std::lock_guard<std::mutex> l(mu);
    return std::count_if(synced_files.begin(), synced_files.end(),
                         [&](const std::string& p) { return p.find(part) != std::string::npos; });
  }
  bool DirSynced(const std::string& path) {
    std::lock_guard<std::mutex> l(mu);
    return std::find(synced_dirs.begin(), synced_dirs.end(), path) != synced_dirs.end();
  }

 private:
  bool Refuse(int from_dir, const std::string& path) {
    if (refuse_into.empty() || path.find(refuse_into) == std::string::npos) return false;
    const std::string from = DirOf(from_dir);
    if (from.size() < kStagingDirName.size() || from.substr(from.size() - kStagingDirName.size()) != kStagingDirName) {
      return false;
    }
    ++refused;
    return true;
  }
  Status Count(Status s) {
    if (s.os_errno() == EXDEV) ++exdev;
    return s;
  }
};

// A small tmpfs mounted on `dir` for the scope (another file system inside
// a tree); `mounted` is false where that needs a root this test lacks.
struct TmpfsMount {
  explicit TmpfsMount(std::string d) : dir(std::move(d)) {
    mounted = ::geteuid() == 0 && ::mount("wxa-test", dir.c_str(), "tmpfs", 0, "size=16m") == 0;
  }
  ~TmpfsMount() {
    if (mounted) ::umount2(dir.c_str(), MNT_DETACH);
  }
  std::string dir;
  bool mounted = false;
};

// Every file of a folder's cur/, by name -> (bytes, link count).
std::map<std::string, std::pair<std::string, nlink_t>> CurFiles(const std::string& cur) {
  std::map<std::string, std::pair<std::string, nlink_t>> m;
  for (const auto& f : test::ListFiles(cur)) {
    struct stat st {};
    EXPECT_EQ(::stat((cur + "/" + f).c_str(), &st), 0) << f;
    m[f] = {test::ReadFile(cur + "/" + f), st.st_nlink};
  }
  return m;
}

// A mailbox directory that is a mount point of another file system (a
// tmpfs here; root only): a rename or link from the staging directory cannot
// reach it, which the sink knows when it opens the folder (no EXDEV met). Its
// items are staged in its own tmp/, each fsynced (the batch's syncfs covers
// the tree's file system only), and its cur/ is fsynced.
TEST(LocalSink, FolderOnAnotherMountIsStagedInItsOwnTmp) {
  test::TempDir dir;
  const std::string mbox = dir / "out/b@x.com";
  std::filesystem::create_directories(mbox);
  TmpfsMount mount(mbox);
  if (!mount.mounted) GTEST_SKIP() << "needs root to mount a tmpfs";
  MountEnv env;
  LocalSinkOptions o;
  o.env = &env;
  auto sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  Outcomes out;
  uint64_t id = 0;
  for (int item = 0; item < 10; ++item) {
    for (const char* mb : {"a@x.com", "b@x.com"}) sink->Submit(MakeDelivery(id++, mb, item), out.Fn());
  }
  ASSERT_TRUE(sink->Close().ok());
  ASSERT_EQ(out.size(), id);
  for (const auto& [i, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
  EXPECT_EQ(env.exdev.load(), 0) << "the other mount was found by trial, not when the folder was opened";
  const auto a = CurFiles(dir / "out/a@x.com/.WeChat Archiver/cur");
  const auto b = CurFiles(mbox + "/.WeChat Archiver/cur");
  EXPECT_EQ(a.size(), 10u);
  EXPECT_EQ(b, a) << "the same files, each with one link";
  EXPECT_EQ(env.FilesSyncedIn("b@x.com/.WeChat Archiver/tmp/"), 10u) << "its staged files were not each fsynced";
  EXPECT_TRUE(env.DirSynced(mbox + "/.WeChat Archiver/cur")) << "its cur/ was not fsynced";
  EXPECT_EQ(TempFilesIn(dir / "out"), 0u);
  sink.reset();

  // A second run adopts every file (a stopped run's, say, whose bytes may
  // never have reached the disk): b's are fsynced, as the syncfs does not
  // cover them.
  MountEnv again;
  o.env = &again;
  sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  Outcomes out2;
  id = 0;
  for (int item = 0; item < 10; ++item) {
    for (const char* mb : {"a@x.com", "b@x.com"}) sink->Submit(MakeDelivery(id++, mb, item), out2.Fn());
  }
  ASSERT_TRUE(sink->Close().ok());
  ASSERT_EQ(out2.size(), id);
  for (const auto& [i, c] : out2.got) {
    EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
    EXPECT_TRUE(c.already_there);
  }
  EXPECT_EQ(again.FilesSyncedIn("b@x.com/.WeChat Archiver/cur/"), 10u) << "adopted files on the other mount not fsynced";
  EXPECT_EQ(again.FilesSyncedIn("a@x.com/"), 0u) << "the syncfs covers a's";
  sink.reset();
}

// A mount on a folder's cur/ itself (root only): neither the staging
// directory nor the folder's own tmp/ can rename into it. That mailbox's
// deliveries fail, saying why; the other mailboxes' go on (EXDEV is the
// mailbox's failure, not the whole tree's).
TEST(LocalSink, MountOnAFoldersCurFailsThatMailboxOnly) {
  test::TempDir dir;
  const std::string folder = dir / "out/b@x.com/.WeChat Archiver";
  for (const char* sub : {"/cur", "/new", "/tmp"}) std::filesystem::create_directories(folder + sub);
  TmpfsMount mount(folder + "/cur");
  if (!mount.mounted) GTEST_SKIP() << "needs root to mount a tmpfs";
  for (SyncMode mode : {SyncMode::kBatch, SyncMode::kFile}) {
    SCOPED_TRACE(mode == SyncMode::kBatch ? "batch" : "file");
    LocalSinkOptions o;
    o.sync_mode = mode;
    auto sink = OpenedSink(dir, o);
    ASSERT_NE(sink, nullptr);
    Outcomes out;
    uint64_t id = 0;
    for (int item = 0; item < 6; ++item) {
      for (const char* mb : {"a@x.com", "b@x.com"}) sink->Submit(MakeDelivery(id++, mb, item), out.Fn());
      if (item == 2) ASSERT_TRUE(sink->Barrier().ok());
    }
    EXPECT_TRUE(sink->Close().ok()) << "one mailbox's mount failed the whole tree";
    ASSERT_EQ(out.size(), id);
    for (const auto& [i, c] : out.got) {
      if (i % 2 == 0) {
        EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
      } else {
        EXPECT_EQ(c.kind, Completion::Kind::kMailboxBad);
      }
    }
    const auto bad = std::find_if(out.got.begin(), out.got.end(), [](const auto& p) { return p.first % 2 == 1; });
    ASSERT_NE(bad, out.got.end());
    EXPECT_NE(bad->second.error.ToString().find("different mounts"), std::string::npos) << bad->second.error.ToString();
    EXPECT_EQ(TempFilesIn(dir / "out"), 0u);
    sink.reset();
    std::filesystem::remove_all(dir / "out/a@x.com");
  }
}

// The same found only when a rename or link from the staging directory is
// refused (EXDEV: say a mount made after the folder was opened): the item is
// copied into the folder's own tmp/, fsynced and renamed, its cur/ fsynced;
// later items for that folder are staged there from the start.
TEST(LocalSink, RenameRefusedAcrossMountsFallsBackToACopy) {
  for (int run = 0; run < 4; ++run) {
    const SyncMode mode = run % 2 == 0 ? SyncMode::kBatch : SyncMode::kFile;
    // What meets the refusal first: a rename (items for b alone) or a link
    // (items for a, then b); either marks the folder.
    const bool links_first = run >= 2;
    SCOPED_TRACE(fmt::format("{}, {} first", mode == SyncMode::kBatch ? "batch" : "file", links_first ? "link" : "rename"));
    test::TempDir dir;
    MountEnv env;
    env.refuse_into = "b@x.com";
    LocalSinkOptions o;
    o.env = &env;
    o.sync_mode = mode;
    o.max_open_folders = 1;  // a and b evict each other: b's mark must outlive its Folder
    auto sink = OpenedSink(dir, o);
    ASSERT_NE(sink, nullptr);
    Outcomes out;
    uint64_t id = 0;
    // Batch 1: items 0-4, for b alone (renamed) or for a then b (b's a link).
    for (int item = 0; item < 5; ++item) {
      if (links_first) sink->Submit(MakeDelivery(id++, "a@x.com", item), out.Fn());
      sink->Submit(MakeDelivery(id++, "b@x.com", item), out.Fn());
    }
    ASSERT_TRUE(sink->Barrier().ok());
    // Batch 2, after batch 1 is published: b's items, linked or not, are
    // staged in its own tmp/.
    const uint64_t first = id;
    for (int n = 0; n < 500 && out.size() < first; ++n) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(out.size(), first);
    EXPECT_EQ(env.refused.load(), 5);
    for (int item = 5; item < 15; ++item) {
      if (item < 10) sink->Submit(MakeDelivery(id++, "a@x.com", item), out.Fn());
      sink->Submit(MakeDelivery(id++, "b@x.com", item), out.Fn());
    }
    ASSERT_TRUE(sink->Close().ok());
    ASSERT_EQ(out.size(), id);
    for (const auto& [i, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kDone) << c.error.ToString();
    EXPECT_EQ(env.refused.load(), 5) << "later items for the folder were still staged in the staging directory";
    const auto b = CurFiles(dir / "out/b@x.com/.WeChat Archiver/cur");
    ASSERT_EQ(b.size(), 15u);
    for (int item = 0; item < 15; ++item) {
      const Delivery d = MakeDelivery(0, "b@x.com", item);
      auto it = b.find(maildir::BaseName(d.key, d.msgtime_ms) + ":2,S");
      ASSERT_NE(it, b.end()) << item;
      EXPECT_EQ(it->second.first, *d.bytes) << item;
    }
    EXPECT_EQ(env.FilesSyncedIn("b@x.com/.WeChat Archiver/tmp/"), 15u) << "copies and b's own items not each fsynced";
    EXPECT_TRUE(env.DirSynced(dir / "out/b@x.com/.WeChat Archiver/cur")) << "b's cur/ was not fsynced";
    EXPECT_EQ(TempFilesIn(dir / "out"), 0u);
    for (const auto& f : test::ListFiles(dir / "out")) EXPECT_FALSE(test::IsTempFile(f)) << f;
    sink.reset();
  }
}

// The first publisher thread is refused (its caller publishes inline); a
// second caller's Barrier gets a publisher thread while the first is still
// publishing. The thread must wait for the inline caller, not spin holding
// the queue's lock (found by review: the inline caller never got it back).
class RefuseFirstThreadEnv : public test::GatedSyncEnv {
 public:
  std::atomic<int> calls{0};
  Result<std::thread> NewThread(std::function<void()> fn) override {
    if (calls.fetch_add(1) == 0) return Status::FromErrno("start", "a thread", EAGAIN);
    return core::Env::NewThread(std::move(fn));
  }
};

// Starting the second of two publication helpers throws (std::bad_alloc
// from std::thread): the helper already running stops and is joined, the
// batch fails as the target's error, each delivery answered once, and no
// temp file is left. Without the catch, the running helper's std::thread
// would be destroyed unjoined: std::terminate.
class ThrowOnSecondHelperEnv : public core::Env {
 public:
  std::atomic<int> calls{0};
  Result<std::thread> NewThread(std::function<void()> fn) override {
    if (++calls == 3) throw std::bad_alloc();  // 1: the publisher, 2: a helper, 3: the next helper
    return core::Env::NewThread(std::move(fn));
  }
};

TEST(LocalSink, AnExceptionStartingAHelperFailsTheBatchAndJoinsTheOthers) {
  test::TempDir dir;
  ThrowOnSecondHelperEnv env;
  LocalSinkOptions o;
  o.env = &env;
  o.publish_threads = 3;  // two helpers beside the publisher
  o.link_copies = false;
  auto sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  Outcomes out;
  int id = 0;
  for (const char* mb : {"a@x.com", "b@x.com", "c@x.com", "d@x.com"}) sink->Submit(MakeDelivery(id, mb, id), out.Fn()), ++id;
  (void)sink->Barrier();
  Status closed = sink->Close();
  EXPECT_FALSE(closed.ok());
  EXPECT_NE(closed.ToString().find("bad_alloc"), std::string::npos) << closed.ToString();
  EXPECT_EQ(env.calls.load(), 3) << "the throwing start was not reached";
  ASSERT_EQ(out.size(), 4u);
  std::set<uint64_t> ids;
  for (const auto& [i, c] : out.got) {
    ids.insert(i);
    EXPECT_EQ(c.kind, Completion::Kind::kSinkBad) << i;
  }
  EXPECT_EQ(ids.size(), 4u) << "a delivery answered twice";
  for (const auto& f : test::ListFiles(dir / "out")) EXPECT_FALSE(test::IsTempFile(f)) << f;
}

TEST(LocalSink, PublisherStartedWhileACallerPublishesInline) {
  test::TempDir dir;
  RefuseFirstThreadEnv env;
  LocalSinkOptions o;
  o.env = &env;
  o.publish_threads = 1;
  auto sink = OpenedSink(dir, o);
  ASSERT_NE(sink, nullptr);
  Outcomes out;
  for (int item = 0; item < 5; ++item) sink->Submit(MakeDelivery(item, "a@x.com", item), out.Fn());
  std::promise<Status> a_done;
  auto a_fut = a_done.get_future();
  std::thread a([&] { a_done.set_value(sink->Barrier()); });  // refused: publishes inline
  ASSERT_TRUE(env.WaitEntered());  // A is inside Publish (its sync), pub_mu_ released
  for (int item = 5; item < 10; ++item) sink->Submit(MakeDelivery(item, "a@x.com", item), out.Fn());
  auto b_fut = std::async(std::launch::async, [&] { return sink->Barrier(); });  // gets a publisher thread
  if (b_fut.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "second Barrier stuck";
    std::fflush(nullptr);
    std::_Exit(1);
  }
  env.Open();
  if (a_fut.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "deadlock: the inline publisher never got the queue's lock back";
    std::fflush(nullptr);
    std::_Exit(1);
  }
  a.join();
  EXPECT_TRUE(sink->Close().ok());
  EXPECT_EQ(out.size(), 10u);
}

}  // namespace
}  // namespace wxa::sinks
