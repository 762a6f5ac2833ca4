// Power cuts at every I/O step of the publish protocol (issue #8 item 22),
// in both --sync modes: the run stops at step k, the file system is made to
// look like what survives a power cut at that moment (test::PowerCutEnv,
// both worst cases: unsynced directory changes undone, or kept with their
// unsynced data gone),
// and then (1) every delivery the index records done has its whole file, and
// (2) a rerun ends with exactly the uninterrupted run's files. Deleting any
// fsync of the protocol makes (1) fail at some step.
#include <gtest/gtest.h>

#include <map>

#include <fmt/format.h>

#include "engine/index/index.h"
#include "engine/pipeline/import.h"
#include "engine/sinks/local_sinks.h"
#include "tests/test_util.h"

namespace wxa::pipeline {
namespace {

constexpr int64_t kT = 1603875600000;

class PowerCut : public ::testing::TestWithParam<sinks::SyncMode> {
 protected:
  void SetUp() override {
    test::WriteFile(tmp_ / "src/directory.csv",
                    "userid,name,mobile,email\nalice,Alice,,alice@corp.com\nbob,Bob,,bob@corp.com\n"
                    "carol,Carol,,carol@corp.com\n");
    std::string lines;
    for (int i = 0; i < 6; ++i) {
      lines += fmt::format(
          R"({{"msgid":"m{}","action":"send","from":"alice","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"text","text":{{"content":"message {}"}}}})",
          i, i % 2 ? "bob" : "carol", kT + i * 60000, i);
      lines += "\n";
    }
    test::WriteFile(tmp_ / "src/a.jsonl", lines);
  }

  ImportOptions Options(const std::string& out, core::Env* env) {
    ImportOptions o;
    o.source_dir = tmp_ / "src";
    o.directory_csv = tmp_ / "src/directory.csv";
    o.target = "maildir:" + out;
    o.threads = 1;        // one worker and one publication thread: one order of steps, so the cut lands where it should
    o.batch_records = 2;  // several batches, several publishes
    o.barrier_batches = 1;  // a barrier per batch: cuts land between publishes (pacing is the crash test's)
    o.sync_mode = GetParam();
    o.max_open_folders = open_folders_;
    o.env = env;
    return o;
  }
  // 0: the default folder cache; 1: every mailbox's folder is closed and
  // opened again between the publish passes (links, then renames), so a
  // cut lands in that reopen too.
  size_t open_folders_ = 0;

  // Mail files of a tree: path relative to the tree -> bytes.
  std::map<std::string, std::string> Mail(const std::string& out) {
    std::map<std::string, std::string> m;
    for (const auto& f : test::ListFiles(out)) {
      if (f.rfind(".wxarchiver/", 0) == 0) continue;  // the index
      if (f.find("/cur/") == std::string::npos && f.find("/new/") == std::string::npos && !test::IsTempFile(f)) {
        continue;  // maildirfolder markers, the lock file
      }
      m[f] = test::ReadFile(out + "/" + f);
    }
    return m;
  }

  // On tmpfs: fsync costs nothing there, and durability is what
  // PowerCutEnv simulates anyway (a hundred runs, in seconds).
  test::TempDir tmp_{"/dev/shm"};
};

INSTANTIATE_TEST_SUITE_P(SyncModes, PowerCut, ::testing::Values(sinks::SyncMode::kBatch, sinks::SyncMode::kFile),
                         [](const auto& info) {
                           return std::string(info.param == sinks::SyncMode::kBatch ? "Batch" : "File");
                         });

TEST_P(PowerCut, AtEveryStepNothingDoneIsLost) {
 for (size_t open_folders : {0, 1}) {
  SCOPED_TRACE(fmt::format("max_open_folders {}", open_folders));
  open_folders_ = open_folders;
  // The reference, and how many steps a whole run takes.
  test::PowerCutEnv counting;
  const std::string ref_dir = tmp_ / fmt::format("ref{}", open_folders);
  auto ref = RunImport(Options(ref_dir, &counting));
  ASSERT_TRUE(ref.ok() && ref->fatal.ok());
  const auto reference = Mail(ref_dir);
  ASSERT_EQ(reference.size(), 12u);
  const long total = counting.steps();
  ASSERT_GT(total, 30);
  long done_somewhere = 0;
  for (long step = 0; step < 2 * total; ++step) {
    const long k = step / 2;
    const auto outcome = step % 2 == 0 ? test::PowerCutEnv::Outcome::kUndoEntries
                                       : test::PowerCutEnv::Outcome::kKeepEntries;
    const std::string out = tmp_ / fmt::format("cut{}-{}-{}", k, step % 2, open_folders);
    test::PowerCutEnv env;
    env.cut_at = k;
    auto r = RunImport(Options(out, &env));
    env.ApplyPowerCut(outcome);
    // (1) What the index says is done is on disk, whole.
    {
      auto idx = index::Index::Open(out + "/.wxarchiver");
      ASSERT_TRUE(idx.ok()) << k << ": " << idx.status().ToString();
      ASSERT_TRUE((*idx)->ForEachDelivery([&](const index::DeliveryKey& d, const index::DeliveryRecord& rec) {
        if (rec.state != index::DeliveryState::kDone) return;
        ++done_somewhere;
        sinks::Target t;
        t.kind = sinks::Target::Kind::kMaildir;
        t.dir = out;
        auto path = sinks::LocalItemPath(t, "WeChat Archiver", d.mailbox, d.item, d.msgtime_ms);
        ASSERT_TRUE(path.ok());
        const std::string rel = path->substr(out.size() + 1);
        auto want = reference.find(rel);
        ASSERT_NE(want, reference.end()) << rel;
        EXPECT_TRUE(core::PathExists(*path)) << "cut at step " << k << ": done but lost: " << rel;
        if (core::PathExists(*path)) {
          EXPECT_EQ(test::ReadFile(*path), want->second) << "cut at step " << k << ": done but not whole: " << rel;
        }
      }).ok());
    }
    // (2) A rerun finishes the work: exactly the reference, no leftovers.
    auto again = RunImport(Options(out, core::Env::Default()));
    ASSERT_TRUE(again.ok()) << k << ": " << again.status().ToString();
    ASSERT_TRUE(again->fatal.ok()) << k << ": " << again->fatal.ToString();
    EXPECT_EQ(Mail(out), reference) << "cut at step " << k << " of " << total << (step % 2 ? " (entries kept)" : "");
  }
  EXPECT_GT(done_somewhere, 0) << "some cuts must land after deliveries were recorded done";
  std::printf("power cuts (--sync %s, max_open_folders %zu): %ld steps, each cut checked\n",
              GetParam() == sinks::SyncMode::kBatch ? "batch" : "file", open_folders, total);
 }
}

// The run report under the same cuts (it goes through the env too). A cut
// run's index (real LMDB, durable at each commit) may have moved its
// cursors past records that were not imported; their entries then exist
// only in the cut run's side file, which the next run carries over. So
// after the cut and a rerun, every not-imported record must be in the
// report. Also when the cut run was itself carrying over the entries of an
// earlier killed run. Fails without the side file's fsync or its
// directory's, without the fsync of a carried-over copy before its rename,
// without the directory fsync between the report's rename and the side
// file's removal, and without the one after that removal (a finished run's
// side file would come back, and the rerun repeat its entries).
// (The report does not depend on --sync: one mode is enough, and it is
// --sync file, whose per-file fsyncs do not cover the report the way a
// syncfs of the same file system would.)
class PowerCutReport : public PowerCut {};
INSTANTIATE_TEST_SUITE_P(SyncModes, PowerCutReport, ::testing::Values(sinks::SyncMode::kFile),
                         [](const auto&) { return std::string("File"); });

TEST_P(PowerCutReport, EveryRecordNotImportedIsReportedAfterAnyCut) {
  std::string lines;
  for (int i = 0; i < 8; ++i) {
    if (i % 2 == 1) {  // nobody of the directory: unmapped, reported
      lines += fmt::format(
          R"({{"msgid":"u{}","action":"send","from":"zed","tolist":["yan"],"roomid":"","msgtime":{},"msgtype":"text","text":{{"content":"lost {}"}}}})",
          i, kT + i * 60000, i);
    } else {
      lines += fmt::format(
          R"({{"msgid":"m{}","action":"send","from":"alice","tolist":["bob"],"roomid":"","msgtime":{},"msgtype":"text","text":{{"content":"message {}"}}}})",
          i, kT + i * 60000, i);
    }
    lines += "\n";
  }
  test::WriteFile(tmp_ / "src/a.jsonl", lines);
  // The report in a directory of its own: no other fsync covers it.
  auto report_of = [](const std::string& out) { return out + "-report/report.json"; };
  auto with_report = [&](const std::string& out, core::Env* env) {
    ImportOptions o = Options(out, env);
    o.report_path = report_of(out);
    return o;
  };
  auto read_if_there = [](const std::string& path) {
    return core::PathExists(path) ? test::ReadFile(path) : std::string();
  };
  auto reported = [](const std::string& report, int i) {
    return report.find(fmt::format("\"msgid\":\"u{}\"", i)) != std::string::npos;
  };
  long checked = 0;
  // 0: the cut run starts fresh; 1: it starts after a run killed half way
  // (its side file left behind, whole: a kill loses no written data).
  for (int killed_before : {0, 1}) {
    SCOPED_TRACE(fmt::format("killed before: {}", killed_before));
    long kill_at = 0;
    auto prepare = [&](const std::string& out) {
      ASSERT_TRUE(core::Env::Default()->CreateDirs(out + "-report").ok());
      if (!killed_before) return;
      test::PowerCutEnv kill;
      kill.cut_at = kill_at;
      (void)RunImport(with_report(out, &kill));
      // Killed after its index moved past the first records not imported:
      // their entries are only in the side file now.
      const std::string side = read_if_there(report_of(out) + ".entries.tmp");
      ASSERT_TRUE(reported(side, 1) && reported(side, 3)) << side;
      ASSERT_FALSE(core::PathExists(report_of(out)));
    };
    if (killed_before) {
      test::PowerCutEnv counting;
      const std::string dir = tmp_ / "rcount";
      ASSERT_TRUE(core::Env::Default()->CreateDirs(dir + "-report").ok());
      ASSERT_TRUE(RunImport(with_report(dir, &counting)).ok());
      kill_at = counting.steps() * 3 / 4;
    }
    test::PowerCutEnv counting;
    const std::string ref_dir = tmp_ / fmt::format("rref{}", killed_before);
    prepare(ref_dir);
    auto ref = RunImport(with_report(ref_dir, &counting));
    ASSERT_TRUE(ref.ok() && ref->fatal.ok()) << (ref.ok() ? ref->fatal.ToString() : ref.status().ToString());
    for (int i = 1; i < 8; i += 2) ASSERT_TRUE(reported(test::ReadFile(report_of(ref_dir)), i)) << i;
    const long total = counting.steps();
    // Up to a cut after the last step: the finished run's report must
    // survive it (its side file is gone by then).
    for (long step = 0; step < 2 * (total + 1); ++step) {
      const long k = step / 2;
      const auto outcome = step % 2 == 0 ? test::PowerCutEnv::Outcome::kUndoEntries
                                         : test::PowerCutEnv::Outcome::kKeepEntries;
      const std::string out = tmp_ / fmt::format("rcut{}-{}-{}", k, step % 2, killed_before);
      prepare(out);
      test::PowerCutEnv env;
      env.cut_at = k;
      (void)RunImport(with_report(out, &env));
      env.ApplyPowerCut(outcome);
      // The cut run's report, if it got that far, then the rerun's.
      const std::string first = read_if_there(report_of(out));
      auto again = RunImport(with_report(out, core::Env::Default()));
      ASSERT_TRUE(again.ok()) << k << ": " << again.status().ToString();
      ASSERT_TRUE(again->fatal.ok()) << k << ": " << again->fatal.ToString();
      const std::string second = test::ReadFile(report_of(out));
      for (int i = 1; i < 8; i += 2) {
        EXPECT_TRUE(reported(first, i) || reported(second, i))
            << "cut at step " << k << " of " << total << (step % 2 ? " (entries kept)" : "") << ": u" << i
            << " is in no report";
      }
      EXPECT_FALSE(core::PathExists(report_of(out) + ".entries.tmp")) << k;
      if (!first.empty()) {
        // The cut run's report survived: the rerun repeats none of its
        // entries (after the last step its side file's removal is durable;
        // before it, the side file names the run the report names).
        EXPECT_EQ(second.find("from_interrupted_run"), std::string::npos)
            << "cut at step " << k << " of " << total << (step % 2 ? " (entries kept)" : "") << ": " << second;
      }
      ++checked;
    }
    std::printf("power cuts with a report (%s): %ld steps, each cut checked\n",
                killed_before ? "after a killed run" : "fresh", total);
  }
  EXPECT_GT(checked, 40);
}

}  // namespace
}  // namespace wxa::pipeline
