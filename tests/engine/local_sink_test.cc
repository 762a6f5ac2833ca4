// The Maildir/EML sink on its own, driven the way the pipeline drives it:
// Submit, Barrier (which hands the batch to the publisher thread), Close.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
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
#include "formats/maildir/maildir_writer.h"
#include "tests/test_util.h"

namespace wxa::sinks {
namespace {

constexpr int64_t kT = 1603875600000;

struct Outcomes {
  std::mutex mu;
  std::vector<std::pair<uint64_t, Completion>> got;
  DoneFn Fn() {
    return [this](uint64_t id, Completion c) {
      std::lock_guard<std::mutex> l(mu);
      got.emplace_back(id, std::move(c));
    };
  }
  size_t size() {
    std::lock_guard<std::mutex> l(mu);
    return got.size();
  }
};

Delivery MakeDelivery(uint64_t id, const std::string& mailbox, int item) {
  Delivery d;
  d.id = id;
  d.mailbox = mailbox;
  d.key = core::ItemKey::For("wecom", "default", fmt::format("m{}", item));
  d.msgtime_ms = kT + item * 1000;
  d.message_id = fmt::format("m{}@wxa", item);
  d.bytes = std::make_shared<const std::string>(
      fmt::format("Message-ID: <m{}@wxa>\r\nSubject: item {}\r\n\r\n{}\r\n", item, item, std::string(2000, 'x')));
  return d;
}

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

}  // namespace
}  // namespace wxa::sinks
