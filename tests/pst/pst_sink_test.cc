// The pst:DIR target end to end (issue #10 parts 2 and 3): the real CLI
// imports a generated corpus into PST volumes; readpst and pffexport
// (check_sink.py) read every volume back and must find each item of a
// Maildir run of the same corpus exactly once, with its subject, sender and
// attachment bytes; mapping.csv lists the finished volumes; `verify` agrees
// and notices a deleted volume; a volume cap splits mailboxes; a rerun adds
// nothing; SIGKILLs at chosen moments of progress (a volume being written,
// volumes just finished) followed by reruns still give every item exactly
// once and leave no .partial; the held-completions cap (max_pending) rolls
// volumes early without losing anything.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/pipeline/import.h"
#include "engine/pipeline/verify.h"
#include "engine/sinks/make_sink.h"
#include "engine/sinks/pst/pst_sink.h"
#include "formats/pst/pst_reader.h"
#include "tests/test_util.h"
#include "tools/gen/corpus_gen.h"

namespace wxa {
namespace {

namespace fs = std::filesystem;

// tmpfs when there is one: the fsyncs of the sink cost nothing there, and
// the readers write thousands of small files.
std::string Scratch() {
  return access("/dev/shm", W_OK) == 0 ? std::string("/dev/shm") : fs::temp_directory_path().string();
}

// Corpus 0: media-rich, a few hundred items (one or two engine batches).
// Corpus 1: text-heavy, 960 records (several batches, so the index
// records done items while later volumes are still being written: what the
// kill test needs to catch a completion sent before its volume is final).
const std::string& CorpusDir(int which = 0) {
  static test::TempDir tmp(Scratch());  // removed at exit (tmpfs is memory)
  static std::string* dirs[2] = {nullptr, nullptr};
  static std::mutex mu;
  std::lock_guard<std::mutex> l(mu);
  if (dirs[which] == nullptr) {
    auto* d = new std::string(tmp / ("corpus" + std::to_string(which)));
    gen::GenOptions g;
    g.out = *d;
    g.users = 12;
    g.days = 2;
    g.seed = 11;
    g.messages_per_user_day = which == 0 ? 12 : 40;
    g.media_scale = which == 0 ? 0.2 : 0.05;
    g.broken_records = false;
    g.huge_files = false;
    auto r = gen::GenerateCorpus(g);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    dirs[which] = d;
  }
  return *dirs[which];
}

std::vector<std::string> ImportArgs(const std::string& target, std::vector<std::string> extra = {},
                                    int which = 0) {
  std::vector<std::string> a = test::CliImportArgs(WXA_CLI, CorpusDir(which), target);
  for (auto& e : extra) a.push_back(std::move(e));
  return a;
}

int RunCli(const std::vector<std::string>& args) { return test::WaitExitCode(test::Spawn(args)); }

// Volumes under a pst:DIR tree: finished ones and .partial ones.
struct Census {
  std::vector<std::string> finished, partial;  // "mailbox dir/file"
};
Census Look(const std::string& dir) {
  Census c;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const std::string rel = fs::relative(it->path(), dir, ec).string();
    if (name.size() > 4 && name.ends_with(".pst")) c.finished.push_back(rel);
    if (name.ends_with(".pst.partial")) c.partial.push_back(rel);
  }
  std::sort(c.finished.begin(), c.finished.end());
  return c;
}

class PstSinkTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(CorpusDir().empty()); }

  // The Maildir run of the same corpus, made once per process.
  static const std::string& Reference(int which = 0) {
    static test::TempDir tmp(Scratch());
    static std::string* refs[2] = {nullptr, nullptr};
    if (refs[which] == nullptr) {
      auto* r = new std::string(tmp / ("ref" + std::to_string(which)));
      EXPECT_EQ(RunCli(ImportArgs("maildir:" + *r, {}, which)), 0);
      refs[which] = r;
    }
    return *refs[which];
  }

  // check_sink.py: readpst + pffexport on every volume against the reference.
  void CheckWithReaders(const std::string& pst_dir, int which = 0) {
    test::TempDir work(Scratch());
    std::string out;
    int rc = test::Run("python3 " + test::ShellQuote(WXA_PST_SINK_CHECKER) + " " + test::ShellQuote(Reference(which)) +
                           " " + test::ShellQuote(pst_dir) + " " + test::ShellQuote(work / "w") + " 2>&1",
                       &out);
    EXPECT_EQ(rc, 0) << out;
    std::printf("check_sink.py: %s", out.c_str());
  }

  int Verify(const std::string& pst_dir) {
    return RunCli({WXA_CLI, "verify", "--to", "pst:" + pst_dir, "--index", pst_dir + "/.wxarchiver"});
  }

  // Message count per mailbox directory, read with our reader.
  static std::map<std::string, size_t> CountByMailbox(const std::string& dir) {
    std::map<std::string, size_t> n;
    for (const auto& v : Look(dir).finished) {
      auto r = pst::Reader::Open(dir + "/" + v);
      EXPECT_TRUE(r.ok()) << v;
      if (!r.ok()) continue;
      auto folders = (*r)->Folders();
      EXPECT_TRUE(folders.ok());
      for (const auto& f : *folders) {
        if (f.path == "WeChat Archiver") n[v.substr(0, v.find('/'))] += f.content_count;
      }
    }
    return n;
  }

  // Under the default volume cap: one volume per mailbox, each passing
  // our reader's Verify.
  static void ExpectOneVerifiedVolumePerMailbox(const std::string& dir, const Census& c) {
    for (const auto& v : c.finished) {
      EXPECT_TRUE(v.ends_with("-001.pst")) << v << ": one volume per mailbox under the default cap";
      auto r = pst::Reader::Open(dir + "/" + v);
      ASSERT_TRUE(r.ok()) << v;
      Status vs = (*r)->Verify();
      EXPECT_TRUE(vs.ok()) << v << ": " << vs.ToString();
    }
  }

  // Opens a pst: sink at `dir` with `po`, submits `rounds` messages to each
  // of `boxes` mailboxes (user00@example.com, ...) in turn from one thread,
  // closes it and expects every delivery done.
  static void SubmitRoundRobin(const std::string& dir, const sinks::PstSinkOptions& po, int boxes, int rounds,
                               size_t body_bytes) {
    auto target = sinks::ParseTarget("pst:" + dir);
    ASSERT_TRUE(target.ok());
    auto sink = sinks::MakePstSink(*target, po);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->Open().ok());
    size_t done = 0;
    for (int round = 0; round < rounds; ++round) {
      for (int b = 0; b < boxes; ++b) {
        sinks::Delivery d;
        d.id = static_cast<uint64_t>(round * boxes + b + 1);
        d.mailbox = fmt::format("user{:02}@example.com", b);
        auto m = std::make_shared<pst::Message>();
        m->subject = fmt::format("round {} box {} with a subject long enough to take heap room", round, b);
        m->internet_message_id = fmt::format("<r{}.b{}@x>", round, b);
        m->sender_address = "a@example.com";
        m->sender_name = "Alice Example";
        m->body_plain = std::string(body_bytes, static_cast<char>('a' + b % 26));
        d.pst_message = m;
        (*sink)->Submit(std::move(d), [&done](uint64_t, sinks::Completion c) {
          EXPECT_EQ(c.kind, sinks::Completion::Kind::kDone) << c.error.ToString();
          ++done;
        });
      }
    }
    ASSERT_TRUE((*sink)->Close().ok());
    EXPECT_EQ(done, static_cast<size_t>(boxes) * rounds);
  }

  // An in-process import of corpus 0 into pst:DIR (make_sink left to the caller).
  static pipeline::ImportOptions ImportInto(const std::string& dir) {
    pipeline::ImportOptions o;
    const std::string c = CorpusDir();
    o.source_dir = c;
    o.directory_csv = c + "/directory.csv";
    o.mapping_csv = c + "/mapping.csv";
    o.mailboxes_file = c + "/mailboxes.txt";
    o.target = "pst:" + dir;
    o.threads = 2;
    return o;
  }

  static std::map<std::string, size_t> ReferenceCounts(int which = 0) {
    std::map<std::string, size_t> n;
    for (const auto& f : test::ListFiles(Reference(which))) {
      if (f.find("/.WeChat Archiver/cur/") != std::string::npos) ++n[f.substr(0, f.find('/'))];
    }
    return n;
  }

  test::TempDir tmp_{Scratch()};
};

TEST_F(PstSinkTest, ImportMatchesMaildirReadersVerifyAndRerun) {
  const std::string dir = tmp_ / "pst";
  ASSERT_EQ(RunCli(ImportArgs("pst:" + dir)), 0);
  Census c = Look(dir);
  EXPECT_TRUE(c.partial.empty());
  EXPECT_EQ(CountByMailbox(dir), ReferenceCounts());
  ExpectOneVerifiedVolumePerMailbox(dir, c);
  CheckWithReaders(dir);
  EXPECT_EQ(Verify(dir), 0);

  // A rerun adds nothing and rewrites nothing.
  std::map<std::string, std::string> before;
  for (const auto& v : c.finished) before[v] = test::ReadFile(dir + "/" + v);
  const std::string mapping = test::ReadFile(dir + "/mapping.csv");
  ASSERT_EQ(RunCli(ImportArgs("pst:" + dir)), 0);
  EXPECT_EQ(Look(dir).finished, c.finished);
  for (const auto& [v, bytes] : before) EXPECT_TRUE(test::ReadFile(dir + "/" + v) == bytes) << v;
  EXPECT_EQ(test::ReadFile(dir + "/mapping.csv"), mapping);

  // A lost volume is noticed.
  ASSERT_FALSE(c.finished.empty());
  fs::remove(dir + "/" + c.finished.front());
  EXPECT_NE(Verify(dir), 0);
}

TEST_F(PstSinkTest, VolumeCapSplitsMailboxesWithNothingLostOrRepeated) {
  const std::string dir = tmp_ / "pst";
  ASSERT_EQ(RunCli(ImportArgs("pst:" + dir, {"--pst-volume-size", "1MiB"})), 0);
  Census c = Look(dir);
  std::map<std::string, int> per_mailbox;
  for (const auto& v : c.finished) {
    ++per_mailbox[v.substr(0, v.find('/'))];
    // The cap counts what Close() will add (B-trees, tables): no volume exceeds it.
    EXPECT_LE(fs::file_size(dir + "/" + v), 1u << 20) << v;
  }
  int split = 0;
  for (const auto& [mb, n] : per_mailbox) split += n > 1;
  EXPECT_GE(split, 2) << "the cap must split some mailboxes";
  EXPECT_EQ(CountByMailbox(dir), ReferenceCounts());
  CheckWithReaders(dir);
  EXPECT_EQ(Verify(dir), 0);
}

// SIGKILL at moments chosen by progress, rerun after each: a volume being
// written (its .partial exists), right after this run finished volumes,
// while later ones are written. The last run completes.
TEST_F(PstSinkTest, KillAtProgressPointsThenRerunGivesEachItemOnce) {
  const std::string dir = tmp_ / "pst";
  const auto args = ImportArgs("pst:" + dir, {"--pst-volume-size", "1MiB"}, 1);
  struct Point {
    const char* what;
    size_t new_volumes;  // finished by this run before the kill
    bool partial;        // ... and a .partial present
  };
  const Point points[] = {{"a first volume being written", 0, true},
                          {"one volume finished", 1, false},
                          {"a volume being written after three finished", 3, true},
                          {"six volumes finished", 6, false},
                          {"a volume being written after ten finished", 10, true}};
  int landed = 0;
  for (const auto& p : points) {
    const size_t start = Look(dir).finished.size();
    pid_t pid = test::Spawn(args);
    bool killed = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        break;
      }
      Census c = Look(dir);
      if (c.finished.size() >= start + p.new_volumes && (!p.partial || !c.partial.empty())) {
        ::kill(pid, SIGKILL);
        killed = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
    if (pid != -1) {
      int rc = test::WaitExitCode(pid);
      if (killed) {
        EXPECT_EQ(rc, 128 + SIGKILL) << p.what;
      }
      landed += killed && rc == 128 + SIGKILL;
    }
    std::printf("kill at '%s': %s; %zu volumes now\n", p.what, killed ? "killed" : "run ended first",
                Look(dir).finished.size());
  }
  EXPECT_GE(landed, 4) << "the kills must land inside runs";
  ASSERT_EQ(RunCli(args), 0);
  Census c = Look(dir);
  EXPECT_TRUE(c.partial.empty());
  EXPECT_EQ(CountByMailbox(dir), ReferenceCounts(1));
  CheckWithReaders(dir, 1);
  EXPECT_EQ(Verify(dir), 0);
}

// The held-completions cap: with max_pending 100 every open volume is
// finished whenever 100 items wait, so the engine's backlog of unanswered
// batches stays small; nothing is lost or repeated.
TEST_F(PstSinkTest, HeldCompletionsCapRollsVolumesEarly) {
  const std::string dir = tmp_ / "pst";
  pipeline::ImportOptions o = ImportInto(dir);
  sinks::SinkOptions so;
  so.pst.max_pending = 100;
  o.make_sink = [so](const sinks::Target& t) { return sinks::MakeSink(t, so); };
  auto r = pipeline::RunImport(o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->fatal.ok()) << r->fatal.ToString();
  Census census = Look(dir);
  EXPECT_TRUE(census.partial.empty());
  EXPECT_GT(census.finished.size(), ReferenceCounts().size() + 5) << "volumes must have been rolled early";
  EXPECT_EQ(CountByMailbox(dir), ReferenceCounts());
  CheckWithReaders(dir);
  EXPECT_EQ(Verify(dir), 0);
}

// A whole import with --pst-buffered-volumes 2 (fewer write buffers than
// open volumes: mailbox switches write out and free other volumes' buffers)
// gives the same volumes: one per mailbox, every item once, readable by
// readpst/pffexport and our reader. The CLI reports nothing of the buffers:
// that the bound holds is BufferedVolumesStayWithinTheBound's check.
TEST_F(PstSinkTest, FewWriteBuffersForManyVolumes) {
  const std::string dir = tmp_ / "pst";
  ASSERT_EQ(RunCli(ImportArgs("pst:" + dir, {"--pst-buffered-volumes", "2"})), 0);
  Census census = Look(dir);
  EXPECT_TRUE(census.partial.empty());
  ASSERT_GT(ReferenceCounts().size(), 2u) << "needs more mailboxes than buffers";
  EXPECT_EQ(CountByMailbox(dir), ReferenceCounts());
  ExpectOneVerifiedVolumePerMailbox(dir, census);
  CheckWithReaders(dir);
  EXPECT_EQ(Verify(dir), 0);
}

// The bound itself: with 2 buffers allowed and one thread submitting
// round-robin to 12 mailboxes, at most 3 volumes hold a buffer at once (the
// one just appended to may take one before another gives its up); every
// volume still holds all its messages. With room for all 12, the same
// counter sees 12 (so it counts what is there, not what the bound says).
TEST_F(PstSinkTest, BufferedVolumesStayWithinTheBound) {
  auto run = [&](const std::string& dir, size_t bound, sinks::PstSinkStats* stats) {
    sinks::PstSinkOptions po;
    po.max_buffered_volumes = bound;
    po.stats = stats;
    SubmitRoundRobin(dir, po, 12, 5, 4000);
    Census census = Look(dir);
    EXPECT_EQ(census.finished.size(), 12u);
    ExpectOneVerifiedVolumePerMailbox(dir, census);
    for (const auto& [box, n] : CountByMailbox(dir)) EXPECT_EQ(n, 5u) << box;
  };
  sinks::PstSinkStats few;
  run(tmp_ / "few", 2, &few);
  EXPECT_LE(few.buffers_peak.load(), 3u);
  EXPECT_GE(few.buffers_peak.load(), 2u);
  EXPECT_GE(few.buffer_releases.load(), 50u) << "each switch to another mailbox gives up a buffer";
  sinks::PstSinkStats all;
  run(tmp_ / "all", 100, &all);
  EXPECT_EQ(all.buffers_peak.load(), 12u);
  EXPECT_EQ(all.buffer_releases.load(), 0u);
}

// Open volumes hold their contents tables and block lists until finished;
// past max_open_volume_bytes every open volume is finished early, so that
// memory stays near the budget however many mailboxes there are (here 40
// mailboxes of 12 messages under a 96 KB budget: about 2.4 KB per fresh
// volume, so early finishes every few rounds). Every message still lands
// once, in volumes our reader verifies. With a budget the run never reaches,
// the same counter passes the small budget (it counts what is there) and
// nothing finishes early.
TEST_F(PstSinkTest, OpenVolumeMemoryStaysWithinTheBudget) {
  constexpr int kBoxes = 40, kRounds = 12;
  auto run = [&](const std::string& dir, uint64_t budget, sinks::PstSinkStats* stats) {
    sinks::PstSinkOptions po;
    po.max_open_volume_bytes = budget;
    po.stats = stats;
    SubmitRoundRobin(dir, po, kBoxes, kRounds, 500);
    Census census = Look(dir);
    EXPECT_TRUE(census.partial.empty());
    for (const auto& v : census.finished) {
      auto r = pst::Reader::Open(dir + "/" + v);
      ASSERT_TRUE(r.ok()) << v;
      Status vs = (*r)->Verify();
      EXPECT_TRUE(vs.ok()) << v << ": " << vs.ToString();
    }
    auto counts = CountByMailbox(dir);
    EXPECT_EQ(counts.size(), size_t{kBoxes});
    for (const auto& [box, n] : counts) EXPECT_EQ(n, size_t{kRounds}) << box;
  };
  constexpr uint64_t kBudget = 96 << 10;
  sinks::PstSinkStats small;
  run(tmp_ / "small", kBudget, &small);
  EXPECT_GE(small.early_finishes.load(), 2u);
  // One append past the budget triggers the finish: a message's growth
  // (a few KB here) is all it can exceed it by.
  EXPECT_LE(small.open_volume_bytes_peak.load(), kBudget + (16 << 10));
  EXPECT_GT(Look(tmp_ / "small").finished.size(), size_t{kBoxes} * 2) << "early finishes start new volumes";
  sinks::PstSinkStats large;
  run(tmp_ / "large", 1ull << 30, &large);
  EXPECT_EQ(large.early_finishes.load(), 0u);
  EXPECT_GT(large.open_volume_bytes_peak.load(), kBudget + (16 << 10));
  EXPECT_EQ(Look(tmp_ / "large").finished.size(), size_t{kBoxes});
}

// Finishing all open volumes together (Close() here; also past
// max_pending): no volume is renamed before a sync that follows its close,
// and no completion is delivered before a sync that follows every rename.
TEST_F(PstSinkTest, VolumesFinishedTogetherAreSyncedBeforeRenameAndDone) {
  struct OrderEnv : core::Env {
    std::mutex mu;
    std::vector<std::string> log;
    void Note(std::string what) {
      std::lock_guard<std::mutex> l(mu);
      log.push_back(std::move(what));
    }
    Status SyncFilesystemFd(int fd, const std::string& path) override {
      Note("sync");
      return core::Env::SyncFilesystemFd(fd, path);
    }
    Status RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                    const std::string& path) override {
      if (to.ends_with(".pst")) Note("rename " + to);
      return core::Env::RenameAt(from_dir, from, to_dir, to, path);
    }
  } env;
  const std::string dir = tmp_ / "pst";
  auto target = sinks::ParseTarget("pst:" + dir);
  ASSERT_TRUE(target.ok());
  sinks::PstSinkOptions po;
  po.env = &env;
  auto sink = sinks::MakePstSink(*target, po);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE((*sink)->Open().ok());
  for (int i = 0; i < 6; ++i) {
    sinks::Delivery d;
    d.id = static_cast<uint64_t>(i + 1);
    d.mailbox = fmt::format("user{}@example.com", i % 3);
    auto m = std::make_shared<pst::Message>();
    m->subject = fmt::format("message {}", i);
    m->internet_message_id = fmt::format("<m{}@x>", i);
    m->sender_address = "a@example.com";
    d.pst_message = m;
    (*sink)->Submit(std::move(d), [&env](uint64_t id, sinks::Completion c) {
      EXPECT_EQ(c.kind, sinks::Completion::Kind::kDone) << c.error.ToString();
      env.Note(fmt::format("done {}", id));
    });
  }
  {
    std::lock_guard<std::mutex> l(env.mu);
    env.log.clear();  // Open()'s own syncs
  }
  ASSERT_TRUE((*sink)->Close().ok());
  const std::vector<std::string>& log = env.log;
  std::string all;
  for (const auto& e : log) all += e + "; ";
  size_t renames = 0, dones = 0, syncs_before_renames = 0;
  bool synced_since_rename = false;
  for (const auto& e : log) {
    if (e == "sync") {
      if (renames == 0) ++syncs_before_renames;
      synced_since_rename = true;
    } else if (e.starts_with("rename ")) {
      EXPECT_GE(syncs_before_renames, 1u) << "renamed before its data was synced: " << all;
      ++renames;
      synced_since_rename = false;
    } else if (e.starts_with("done ")) {
      EXPECT_EQ(renames, 3u) << all;
      EXPECT_TRUE(synced_since_rename) << "done before the renames were synced: " << all;
      ++dones;
    }
  }
  EXPECT_EQ(renames, 3u) << all;
  EXPECT_EQ(dones, 6u) << all;
  EXPECT_LE(std::count(log.begin(), log.end(), "sync"), 3) << "one sync for all volumes, not one each: " << all;
  EXPECT_EQ(CountByMailbox(dir), (std::map<std::string, size_t>{
                                     {"user0@example.com", 2}, {"user1@example.com", 2}, {"user2@example.com", 2}}));
}

// The sync after the volumes' renames fails (EIO): the volumes are under
// their final names and may hold their items, durably or not. Those items
// are in doubt (the next run probes the volumes), never failed: a failed
// delivery is written again, into a second volume the PST import service
// would import as well.
TEST_F(PstSinkTest, VolumesRenamedBeforeAFailedSyncAreProbedNotWrittenTwice) {
  struct SyncFailsAfterRenameEnv : core::Env {
    std::atomic<bool> renamed{false}, failed{false};
    Status RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                    const std::string& path) override {
      Status s = core::Env::RenameAt(from_dir, from, to_dir, to, path);
      if (s.ok() && to.ends_with(".pst")) renamed = true;
      return s;
    }
    Status Fail(const std::string& path) {
      failed = true;
      return Status::FromErrno("syncfs", path, EIO);
    }
    Status SyncFilesystemFd(int fd, const std::string& path) override {
      if (renamed && !failed) return Fail(path);
      return core::Env::SyncFilesystemFd(fd, path);
    }
    Status SyncDirFd(int fd, const std::string& path) override {
      if (renamed && !failed) return Fail(path);
      return core::Env::SyncDirFd(fd, path);
    }
  };
  // Volumes finished together at the end (the second syncfs fails), and
  // volumes rolled one at a time at a 1 MiB cap (a directory fsync fails).
  for (const uint64_t volume_size : {uint64_t{0}, uint64_t{1} << 20}) {
    SCOPED_TRACE(volume_size == 0 ? "finished together" : "rolled at 1 MiB");
    SyncFailsAfterRenameEnv env;
    const std::string dir = tmp_ / fmt::format("pst{}", volume_size);
    pipeline::ImportOptions o = ImportInto(dir);
    o.retry_base_ms = 1;
    o.retry_max_ms = 5;
    o.make_sink = [&env, volume_size](const sinks::Target& t) {
      sinks::PstSinkOptions po;
      po.env = &env;
      if (volume_size != 0) po.volume_size = volume_size;
      return sinks::MakePstSink(t, po);
    };
    auto r = pipeline::RunImport(o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(env.failed);
    EXPECT_FALSE(r->fatal.ok());
    // Left for the next run's probe (the run stops on the failed sync; when
    // rolled, items submitted after it are failed unwritten, and volumes
    // finished before it are done).
    EXPECT_GT(r->index.deliveries_in_doubt, 0u);
    if (volume_size == 0) {
      EXPECT_EQ(r->counts.deliveries_failed, 0u) << "in doubt, not failed";
      EXPECT_EQ(r->counts.deliveries, 0u);
    }
    ASSERT_FALSE(Look(dir).finished.empty());
    // The rerun probes the volumes, finds every item, writes none again.
    ASSERT_EQ(RunCli(ImportArgs("pst:" + dir)), 0);
    EXPECT_EQ(CountByMailbox(dir), ReferenceCounts());
    EXPECT_TRUE(Look(dir).partial.empty());
  }
}

// Open(): one run at a time; leftover .partial files are removed; numbering
// goes on after the finished volumes; Probe finds finished items only.
TEST_F(PstSinkTest, OpenCleansPartialsProbeAndLock) {
  const std::string dir = tmp_ / "pst";
  auto target = sinks::ParseTarget("pst:" + dir);
  ASSERT_TRUE(target.ok());
  sinks::PstSinkOptions po;
  auto sink = sinks::MakePstSink(*target, po);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE((*sink)->Open().ok());
  auto second = sinks::MakePstSink(*target, po);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE((*second)->Open().ok()) << "a second run must not write into the same tree";

  auto submit = [&](sinks::Sink& s, const std::string& mb, const std::string& id, std::vector<std::string>* refs) {
    sinks::Delivery d;
    d.id = refs->size() + 1;
    d.mailbox = mb;
    auto m = std::make_shared<pst::Message>();
    m->subject = "s " + id;
    m->internet_message_id = "<" + id + ">";
    m->sender_address = "a@example.com";
    d.pst_message = m;
    s.Submit(std::move(d), [refs](uint64_t, sinks::Completion c) {
      EXPECT_EQ(c.kind, sinks::Completion::Kind::kDone);
      refs->push_back(c.remote_ref);
    });
  };
  std::vector<std::string> refs;
  submit(**sink, "bob@example.com", "one@x", &refs);
  submit(**sink, "bob@example.com", "two@x", &refs);
  EXPECT_TRUE(refs.empty()) << "completions wait for the finished volume";
  ASSERT_TRUE((*sink)->Close().ok());
  ASSERT_EQ(refs.size(), 2u);
  EXPECT_EQ(refs[0], "bob@example.com-001.pst");

  // A stopped run's leftover.
  test::WriteFile(dir + "/bob@example.com/bob@example.com-002.pst.partial", "junk");
  auto again = sinks::MakePstSink(*target, po);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE((*again)->Open().ok());
  EXPECT_FALSE(fs::exists(dir + "/bob@example.com/bob@example.com-002.pst.partial"));
  auto probe = [&](const std::string& id) {
    sinks::Delivery d;
    d.mailbox = "bob@example.com";
    d.message_id = id;
    sinks::ProbeResult out;
    (*again)->Probe(d, [&](uint64_t, sinks::ProbeResult r) { out = std::move(r); });
    return out;
  };
  EXPECT_EQ(probe("one@x").kind, sinks::ProbeResult::Kind::kPresent);
  EXPECT_EQ(probe("one@x").remote_ref, "bob@example.com-001.pst");
  EXPECT_EQ(probe("three@x").kind, sinks::ProbeResult::Kind::kAbsent);
  std::vector<std::string> refs2;
  submit(**again, "bob@example.com", "three@x", &refs2);
  ASSERT_TRUE((*again)->Close().ok());
  ASSERT_EQ(refs2.size(), 1u);
  EXPECT_EQ(refs2[0], "bob@example.com-002.pst");
  std::vector<std::string> ids;
  auto inv = sinks::MakePstSink(*target, po);
  ASSERT_TRUE((*inv)->Open().ok());
  (*inv)->Inventory("bob@example.com", [&](Result<std::vector<std::string>> r) {
    if (r.ok()) {
      ids = *r;
    } else {
      ADD_FAILURE() << r.status().ToString();
    }
  });
  EXPECT_EQ(ids, (std::vector<std::string>{"one@x", "two@x", "three@x"}));
  EXPECT_EQ(test::ReadFile(dir + "/mapping.csv"),
            "Workload,FilePath,Name,Mailbox,IsArchive,TargetRootFolder,ContentCodePage,SPFileContainer,"
            "SPManifestContainer,SPSiteUrl\r\n"
            "Exchange,bob@example.com,bob@example.com-001.pst,bob@example.com,FALSE,/,,,,\r\n"
            "Exchange,bob@example.com,bob@example.com-002.pst,bob@example.com,FALSE,/,,,,\r\n");
  (void)(*inv)->Close();

  // Untrusted names: no separators, long names shortened.
  const std::string evil = std::string(300, 'x') + "/../@example.com";
  EXPECT_EQ(sinks::PstVolumeBase(evil).find('/'), std::string::npos);
  EXPECT_LE(sinks::PstVolumeBase(evil).size(), 200u);
}

}  // namespace
}  // namespace wxa
