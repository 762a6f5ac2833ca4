// The crash campaign: import a generated corpus while SIGKILLing the process
// at random moments, rerun after each kill, and check at the end that the
// output equals an uninterrupted run: every (item, mailbox) present exactly
// once with the same bytes, no temp files, and `status` agreeing.
//
// Small by default (part of the normal suite); the long mode is
//   WXA_CRASH_RECORDS=50000 WXA_CRASH_KILLS=15 build/tests/wxa_tests --gtest_filter='*Crash*'
// (one campaign per --sync mode; add /batch or /file to the filter for one).
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <simdjson.h>

#include "tests/test_util.h"
#include "tools/gen/corpus_gen.h"

namespace wxa {
namespace {

using Clock = std::chrono::steady_clock;

long EnvLong(const char* name, long dflt) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtol(v, nullptr, 10) : dflt;
}

// Parameter: the --sync mode (both publish paths must survive a kill).
class CrashCampaign : public ::testing::TestWithParam<const char*> {
 protected:
  std::vector<std::string> ImportArgs(const std::string& out, const std::string& report) {
    std::vector<std::string> a = test::CliImportArgs(WXA_CLI, tmp_ / "corpus", "maildir:" + out);
    // Batches of 100 records: a dozen cursor commits per run to be killed
    // between (at the default 2,048 the small corpus is one batch).
    a.insert(a.end(), {"--report", report, "--sync", GetParam(), "--batch-records", "100"});
    return a;
  }

  // "outcome file:offset" of a report's entries for records not imported
  // (or not messages): what no run may lose, killed or not.
  static void AddOutcomes(const std::string& report, std::set<std::string>* out) {
    simdjson::dom::parser p;
    simdjson::padded_string text(test::ReadFile(report));
    simdjson::dom::element root;
    ASSERT_EQ(p.parse(text).get(root), simdjson::SUCCESS) << report;
    for (simdjson::dom::element e : root["entries"].get_array()) {
      const std::string_view outcome = e["outcome"].get_string().value();
      if (outcome != "malformed" && outcome != "unmapped" && outcome != "oversize" && outcome != "switch" &&
          outcome != "conflict") {
        continue;
      }
      out->insert(fmt::format("{} {}:{}", outcome, std::string_view(e["file"].get_string().value()),
                              uint64_t(e["offset"])));
    }
  }

  // Delivered files in a Maildir tree (cur/ of every mailbox's folder).
  size_t MailCount(const std::string& out) {
    size_t n = 0;
    DIR* root = ::opendir(out.c_str());
    if (root == nullptr) return 0;
    while (dirent* mb = ::readdir(root)) {
      if (mb->d_name[0] == '.') continue;
      const std::string cur = out + "/" + mb->d_name + "/.WeChat Archiver/cur";
      if (DIR* d = ::opendir(cur.c_str())) {
        while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
        ::closedir(d);
      }
    }
    ::closedir(root);
    return n;
  }

  // Mail files under a target (not the index): relative path -> bytes.
  std::map<std::string, std::string> Mail(const std::string& out) {
    std::map<std::string, std::string> m;
    for (const auto& f : test::ListFiles(out)) {
      if (f.rfind(".wxarchiver/", 0) == 0) continue;
      m[f] = test::ReadFile(out + "/" + f);
    }
    return m;
  }

  test::TempDir tmp_;
};

TEST_P(CrashCampaign, KillNineAnywhereLosesAndDuplicatesNothing) {
  const long records = EnvLong("WXA_CRASH_RECORDS", 1200);
  const long kills = EnvLong("WXA_CRASH_KILLS", 10);
  std::mt19937_64 rng(static_cast<uint64_t>(EnvLong("WXA_CRASH_SEED", 20261124)));

  gen::GenOptions g;
  g.out = tmp_ / "corpus";
  g.users = static_cast<int>(std::max(10L, records / 200));
  g.days = 4;
  g.messages_per_user_day = static_cast<double>(records) / (g.users * g.days);
  g.seed = 11;
  g.media_scale = 0.01;
  g.huge_files = false;  // large media only slow the campaign down
  auto corpus = gen::GenerateCorpus(g);
  ASSERT_TRUE(corpus.ok()) << corpus.status().ToString();

  // The reference: one uninterrupted run.
  auto t0 = Clock::now();
  ASSERT_EQ(test::WaitExitCode(test::Spawn(ImportArgs(tmp_ / "ref", tmp_ / "ref.json"))), 0);
  const double full_s = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  ASSERT_EQ(test::WaitExitCode(test::Spawn(ImportArgs(tmp_ / "ref", tmp_ / "ref2.json"))), 0);
  const double startup_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto reference = Mail(tmp_ / "ref");
  ASSERT_GT(reference.size(), static_cast<size_t>(records));

  // The campaign, calibrated by progress, not wall time (a loaded machine
  // once let runs finish before their timer fired): each run is killed once
  // the tree holds a random number of further delivered files, spread over
  // the work still to do; one run in four is killed early instead (start-up,
  // settling, the first batch), after a random share of the start-up time.
  const size_t total = MailCount(tmp_ / "ref");
  std::set<std::string> reported;  // AddOutcomes of every report the campaign wrote
  long landed = 0, runs = 0;
  while (landed < kills && runs < kills * 4) {
    ++runs;
    const size_t before = MailCount(tmp_ / "out");
    const size_t left = total > before ? total - before : 0;
    const bool early = left < 2 || std::uniform_int_distribution<int>(0, 3)(rng) == 0;
    const size_t span = std::max<size_t>(1, 2 * left / static_cast<size_t>(kills - landed + 1));
    const size_t target = before + std::uniform_int_distribution<size_t>(1, std::min(span, std::max<size_t>(left, 2) - 1))(rng);
    const auto early_deadline = Clock::now() + std::chrono::duration<double>(
                                                   std::uniform_real_distribution<double>(0, startup_s)(rng));
    pid_t pid = test::Spawn(ImportArgs(tmp_ / "out", tmp_ / "out.json"));
    int status = 0;
    bool exited = false;
    while (true) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      if (early ? Clock::now() >= early_deadline : MailCount(tmp_ / "out") >= target) break;
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    if (exited) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "run " << runs << " failed";
      AddOutcomes(tmp_ / "out.json", &reported);
      continue;
    }
    ::kill(pid, SIGKILL);
    const int code = test::WaitExitCode(pid);
    if (code == 0) continue;  // it finished between the last look and the kill: not a kill
    ASSERT_EQ(code, 128 + SIGKILL);
    ++landed;
  }
  EXPECT_GE(landed, std::min(kills, 10L)) << "kills must land inside runs";
  // The last rerun finishes the work.
  ASSERT_EQ(test::WaitExitCode(test::Spawn(ImportArgs(tmp_ / "out", tmp_ / "out.json"))), 0);
  AddOutcomes(tmp_ / "out.json", &reported);

  // Every record the reference reported as not imported (or not a
  // message) is in some report of the campaign: a killed run's entries
  // are carried into the next run's report.
  std::set<std::string> want;
  AddOutcomes(tmp_ / "ref.json", &want);
  ASSERT_FALSE(want.empty());
  std::vector<std::string> unreported;
  for (const auto& k : want) {
    if (reported.count(k) == 0) unreported.push_back(k);
  }
  EXPECT_TRUE(unreported.empty()) << unreported.size() << " of " << want.size()
                                  << " outcomes never reported, e.g. " << unreported.front();

  // Every (item, mailbox) exactly once, with the reference's bytes.
  const auto got = Mail(tmp_ / "out");
  std::vector<std::string> missing, extra, differ;
  for (const auto& [f, bytes] : reference) {
    auto it = got.find(f);
    if (it == got.end()) missing.push_back(f);
    else if (it->second != bytes) differ.push_back(f);
  }
  for (const auto& [f, bytes] : got) {
    if (reference.count(f) == 0) extra.push_back(f);
  }
  EXPECT_TRUE(missing.empty()) << missing.size() << " missing, e.g. " << missing.front();
  EXPECT_TRUE(extra.empty()) << extra.size() << " extra (temp or duplicate), e.g. " << extra.front();
  EXPECT_TRUE(differ.empty()) << differ.size() << " differ, e.g. " << differ.front();
  size_t mail_items = 0;
  for (const auto& [f, bytes] : got) {
    EXPECT_FALSE(test::IsTempFile(f)) << "temp file left: " << f;
    mail_items += f.find("/cur/") != std::string::npos;
  }

  // status agrees with the disk.
  std::string out;
  ASSERT_EQ(test::Run(std::string(WXA_CLI) + " status --json --to maildir:" + test::ShellQuote(tmp_ / "out"), &out), 0) << out;
  simdjson::dom::parser p;
  simdjson::padded_string ps(out);
  simdjson::dom::element st;
  ASSERT_EQ(p.parse(ps).get(st), simdjson::SUCCESS) << out;
  EXPECT_EQ(uint64_t(st["in_doubt"]), 0u);
  EXPECT_EQ(uint64_t(st["deliveries"]["done"]), mail_items);
  EXPECT_EQ(uint64_t(st["deliveries"]["intent"]), 0u);
  EXPECT_EQ(uint64_t(st["counters"]["deliveries_done"]), mail_items);
  std::string ref_out;
  ASSERT_EQ(test::Run(std::string(WXA_CLI) + " status --json --to maildir:" + test::ShellQuote(tmp_ / "ref"), &ref_out), 0);
  simdjson::dom::parser p2;
  simdjson::padded_string ps2(ref_out);
  simdjson::dom::element ref_st;
  ASSERT_EQ(p2.parse(ps2).get(ref_st), simdjson::SUCCESS);
  EXPECT_EQ(uint64_t(st["items"]["done"]), uint64_t(ref_st["items"]["done"]));
  EXPECT_EQ(uint64_t(st["items"]["unmapped"]), uint64_t(ref_st["items"]["unmapped"]));
  RecordProperty("kills", static_cast<int>(landed));
  RecordProperty("runs", static_cast<int>(runs));
  std::printf("crash campaign (--sync %s): %ld records, %zu deliveries, %ld kills in %ld runs, reference run %.2f s\n",
              GetParam(), records, mail_items, landed, runs, full_s);
}

INSTANTIATE_TEST_SUITE_P(SyncModes, CrashCampaign, ::testing::Values("batch", "file"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace wxa
