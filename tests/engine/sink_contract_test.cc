// The sink contract, driven by a fake sink that completes asynchronously,
// out of order, from its own thread, and answers each failure class on cue:
// the engine must retry what is transient (probing first when in doubt),
// stop only the mailbox that is bad, stop the run when the sink is, record
// every outcome in the index, keep the cursor before what must be retried,
// and on a rerun deliver the rest exactly once.
#include <gtest/gtest.h>

#include <cstdio>

#include <functional>
#include <future>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "engine/index/index.h"
#include "engine/pipeline/import.h"
#include "engine/sinks/sink.h"
#include "tests/test_util.h"

namespace wxa::pipeline {
namespace {

constexpr int64_t kT = 1603875600000;

core::ItemKey KeyOf(const std::string& msgid) { return core::ItemKey::For("wecom", "default", msgid); }

// What the fake target holds, kept across runs (a mail server outlives runs).
struct Store {
  std::mutex mu;
  std::map<std::string, std::vector<core::ItemKey>> items;  // mailbox -> stored, in order
  std::map<std::string, int> submissions;                    // mailbox -> deliveries that reached the "server"
  std::map<std::string, int> submit_calls;                   // mailbox -> Submit calls
  std::atomic<int> probes{0};
  int count(const std::string& mb, const core::ItemKey& k) {
    std::lock_guard<std::mutex> l(mu);
    auto& v = items[mb];
    return static_cast<int>(std::count(v.begin(), v.end(), k));
  }
  size_t size(const std::string& mb) {
    std::lock_guard<std::mutex> l(mu);
    return items[mb].size();
  }
};

struct Script {
  std::set<std::string> bad_mailboxes;                 // MailboxBad
  std::set<core::ItemKey> item_bad;                    // ItemBad
  std::map<core::ItemKey, int> transient;              // Transient (not sent) this many times first
  std::map<core::ItemKey, int> stored_but_unanswered;  // stored, then Transient(in_doubt) this many times
  int sink_bad_at = -1;                                // SinkBad on the N-th Submit (0-based)
  std::set<std::string> probe_fails;                   // Probe answers kFailed, mailbox_bad
  bool probe_transient = false;                        // Probe answers kFailed, not mailbox_bad
};

class FakeSink final : public sinks::Sink {
 public:
  FakeSink(Store* store, Script script, uint64_t seed)
      : store_(store), script_(std::move(script)), rng_(seed) {
    worker_ = std::thread([this] { Run(); });
  }
  ~FakeSink() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  const char* kind() const override { return "fake"; }
  sinks::Capabilities capabilities() const override {
    sinks::Capabilities c;
    c.remote = true;
    return c;
  }
  Status Open() override { return Status::Ok(); }
  void Submit(sinks::Delivery d, sinks::DoneFn done) override {
    {
      std::lock_guard<std::mutex> sl(store_->mu);
      ++store_->submit_calls[d.mailbox];
    }
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back({std::move(d), std::move(done), submits_++});
    cv_.notify_all();
  }
  Status Barrier() override { return Status::Ok(); }
  void Probe(const sinks::Delivery& d, sinks::ProbeFn done) override {
    ++store_->probes;
    sinks::ProbeResult r;
    if (script_.probe_fails.count(d.mailbox)) {
      r.kind = sinks::ProbeResult::Kind::kFailed;
      r.error = Status::IOError("cannot log in to check");
      r.mailbox_bad = true;
    } else if (script_.probe_transient) {
      r.kind = sinks::ProbeResult::Kind::kFailed;
      r.error = Status::IOError("connection reset while searching");
    } else if (store_->count(d.mailbox, d.key) > 0) {
      r.kind = sinks::ProbeResult::Kind::kPresent;
      r.remote_ref = "found:" + d.key.Hex().substr(0, 8);
    }
    done(d.id, std::move(r));
  }
  Status Close() override {
    std::unique_lock<std::mutex> l(mu_);
    idle_cv_.wait(l, [&] { return queue_.empty() && !busy_; });
    return Status::Ok();
  }

 private:
  struct Job {
    sinks::Delivery d;
    sinks::DoneFn done;
    int n;
  };
  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    while (true) {
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      // Out of order: any queued job may finish first.
      std::uniform_int_distribution<size_t> pick(0, queue_.size() - 1);
      size_t i = pick(rng_);
      Job job = std::move(queue_[i]);
      queue_.erase(queue_.begin() + static_cast<long>(i));
      busy_ = true;
      l.unlock();
      sinks::Completion c = Decide(job);
      job.done(job.d.id, std::move(c));
      l.lock();
      busy_ = false;
      idle_cv_.notify_all();
    }
  }
  sinks::Completion Decide(const Job& job) {
    const sinks::Delivery& d = job.d;
    {
      // As a real sink: once a mailbox's login failed, what was queued for
      // it fails the same way without going to the server again.
      std::lock_guard<std::mutex> l(mu_);
      if (known_bad_.count(d.mailbox)) {
        return sinks::Completion::MailboxBad(Status::InvalidArgument("NO [AUTHENTICATIONFAILED] " + d.mailbox));
      }
    }
    {
      std::lock_guard<std::mutex> l(store_->mu);
      ++store_->submissions[d.mailbox];
    }
    if (job.n == script_.sink_bad_at) return sinks::Completion::SinkBad(Status::IOError("server gone for good"));
    if (script_.bad_mailboxes.count(d.mailbox)) {
      std::lock_guard<std::mutex> l(mu_);
      known_bad_.insert(d.mailbox);
      return sinks::Completion::MailboxBad(Status::InvalidArgument("NO [AUTHENTICATIONFAILED] " + d.mailbox));
    }
    if (script_.item_bad.count(d.key)) return sinks::Completion::ItemBad(Status::InvalidArgument("NO [LIMIT] too big"));
    std::lock_guard<std::mutex> l(mu_);
    if (int& n = script_.transient[d.key]; n > 0) {
      --n;
      return sinks::Completion::Transient(Status::IOError("BYE throttled"), std::chrono::milliseconds(1), false);
    }
    {
      std::lock_guard<std::mutex> sl(store_->mu);
      store_->items[d.mailbox].push_back(d.key);
    }
    if (int& n = script_.stored_but_unanswered[d.key]; n > 0) {
      --n;  // the message arrived, the answer did not (connection reset)
      return sinks::Completion::Transient(Status::IOError("connection reset"), std::chrono::milliseconds(1), true);
    }
    EXPECT_TRUE(d.bytes && !d.bytes->empty());
    return sinks::Completion::Done(fmt::format("uid:{}", d.key.Hex().substr(0, 8)));
  }

  Store* store_;
  Script script_;
  std::mt19937_64 rng_;
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Job> queue_;
  bool stop_ = false, busy_ = false;
  int submits_ = 0;
  std::set<std::string> known_bad_;
  std::thread worker_;
};

// A target whose last barrier fails and which never answers what it was
// given (a broken connection that loses its callbacks): the contract's
// worst case for the engine.
class SilentFailingSink final : public sinks::Sink {
 public:
  // until_close: it holds deliveries until Close (as PST volumes do), and
  // Close fails; otherwise until a barrier, and the barrier fails.
  explicit SilentFailingSink(bool until_close) : until_close_(until_close) {}
  const char* kind() const override { return "silent"; }
  sinks::Capabilities capabilities() const override {
    sinks::Capabilities c;
    c.holds_until_barrier = !until_close_;
    c.holds_until_close = until_close_;
    return c;
  }
  Status Open() override { return Status::Ok(); }
  void Submit(sinks::Delivery, sinks::DoneFn done) override {
    std::lock_guard<std::mutex> l(mu_);
    held_.push_back(std::move(done));  // never called
  }
  Status Barrier() override { return until_close_ ? Status::Ok() : Status::IOError("the target went away"); }
  Status Close() override { return until_close_ ? Status::IOError("the target went away") : Status::Ok(); }

 private:
  bool until_close_;
  std::mutex mu_;
  std::vector<sinks::DoneFn> held_;
};

class SinkContractTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::WriteFile(tmp_ / "src/directory.csv",
                    "userid,name,mobile,email\nalice,Alice,,alice@corp.com\nbob,Bob,,bob@corp.com\n"
                    "carol,Carol,,carol@corp.com\n");
    WriteMessages([](int i) { return i % 3 == 0 ? "carol" : "bob"; });
  }

  // src/a.jsonl: messages m0..m59 from alice, message i to to(i).
  void WriteMessages(const std::function<const char*(int)>& to) {
    std::string lines;
    for (int i = 0; i < 60; ++i) {
      lines += fmt::format(
          R"({{"msgid":"m{}","action":"send","from":"alice","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"text","text":{{"content":"hi {}"}}}})",
          i, to(i), kT + i * 1000, i);
      lines += "\n";
    }
    test::WriteFile(tmp_ / "src/a.jsonl", lines);
  }

  ImportOptions Options(Script script, uint64_t seed = 1) {
    ImportOptions o;
    o.source_dir = tmp_ / "src";
    o.directory_csv = tmp_ / "src/directory.csv";
    o.target = "imap://fake.example:143";
    o.index_dir = tmp_ / "index";
    o.report_path = tmp_ / "report.json";
    o.threads = 2;
    o.batch_records = 4;
    o.retry_base_ms = 1;
    o.retry_max_ms = 5;
    o.make_sink = [this, script, seed](const sinks::Target&) -> Result<std::unique_ptr<sinks::Sink>> {
      auto s = std::make_unique<FakeSink>(&store_, script, seed);
      return std::unique_ptr<sinks::Sink>(std::move(s));
    };
    return o;
  }

  // (state -> count) of this sink's deliveries in the index.
  std::map<index::DeliveryState, int> IndexStates() {
    index::IndexOptions ro;
    ro.read_only = true;
    auto idx = index::Index::Open(tmp_ / "index", ro);
    EXPECT_TRUE(idx.ok());
    std::map<index::DeliveryState, int> out;
    EXPECT_TRUE((*idx)->ForEachDelivery([&](const index::DeliveryKey&, const index::DeliveryRecord& r) {
      ++out[r.state];
    }).ok());
    return out;
  }

  void ExpectEverythingOnce() {
    for (int i = 0; i < 60; ++i) {
      auto k = KeyOf(fmt::format("m{}", i));
      EXPECT_EQ(store_.count("alice@corp.com", k), 1) << i;
      EXPECT_EQ(store_.count(i % 3 == 0 ? "carol@corp.com" : "bob@corp.com", k), 1) << i;
    }
    EXPECT_EQ(store_.size("alice@corp.com"), 60u);
    EXPECT_EQ(store_.size("bob@corp.com") + store_.size("carol@corp.com"), 60u);
  }

  test::TempDir tmp_;
  Store store_;
};

// The only barrier is the last one, after the pipeline, and it fails; the
// deliveries are never answered. The run ends after the drain's grace with
// the target's error, its deliveries in doubt (intents), not waiting forever.
TEST_F(SinkContractTest, ATargetThatFailsAtTheEndAndNeverAnswersDoesNotHangTheRun) {
  for (bool until_close : {false, true}) {
    SCOPED_TRACE(until_close ? "fails at Close" : "fails at the last barrier");
    ::system(("rm -rf " + test::ShellQuote(tmp_ / "index")).c_str());
    auto o = Options(Script{});
    o.batch_records = 100;          // one batch
    o.barrier_batches = 100;        // no barrier during the run
    o.barrier_interval_ms = 600000;
    o.drain_grace_ms = 500;
    o.make_sink = [until_close](const sinks::Target&) -> Result<std::unique_ptr<sinks::Sink>> {
      return std::unique_ptr<sinks::Sink>(std::make_unique<SilentFailingSink>(until_close));
    };
    auto r = test::WithDeadline(std::chrono::seconds(120), "the run (waiting for answers that never come?)",
                                [&] { return RunImport(o); });
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->fatal.ok());
    EXPECT_NE(r->fatal.ToString().find("the target went away"), std::string::npos) << r->fatal.ToString();
    EXPECT_EQ(r->counts.deliveries, 0u);
    EXPECT_EQ(IndexStates()[index::DeliveryState::kIntent], 120) << "unanswered deliveries stay in doubt";
  }
}

TEST_F(SinkContractTest, OutOfOrderCompletionsAndRetriesDeliverEverythingOnce) {
  Script s;
  for (int i = 0; i < 60; i += 7) s.transient[KeyOf(fmt::format("m{}", i))] = 2;
  for (int i = 3; i < 60; i += 11) s.stored_but_unanswered[KeyOf(fmt::format("m{}", i))] = 1;
  auto r = RunImport(Options(s, 42));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->fatal.ok()) << r->fatal.ToString();
  EXPECT_EQ(r->counts.deliveries + r->counts.deliveries_present, 120u);
  EXPECT_EQ(r->counts.deliveries_failed, 0u);
  EXPECT_GE(r->counts.retries, 2u * 9 + 6);
  EXPECT_GE(store_.probes.load(), 6) << "an in-doubt delivery is probed before it is sent again";
  ExpectEverythingOnce();
  EXPECT_EQ(IndexStates()[index::DeliveryState::kDone], 120);
  // A rerun reads nothing new and sends nothing.
  std::map<std::string, int> before = store_.submissions;
  auto again = RunImport(Options(Script{}));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->counts.records, 0u);
  EXPECT_EQ(store_.submissions, before);
}

TEST_F(SinkContractTest, ABadMailboxStopsOnlyItselfAndARerunFinishesIt) {
  Script s;
  s.bad_mailboxes = {"carol@corp.com"};
  s.item_bad = {KeyOf("m4")};
  auto r = RunImport(Options(s, 7));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->fatal.ok()) << "a mailbox's failure is not the run's";
  EXPECT_EQ(r->mailboxes_failed.count("carol@corp.com"), 1u);
  EXPECT_NE(r->mailboxes_failed["carol@corp.com"].find("AUTHENTICATIONFAILED"), std::string::npos);
  EXPECT_EQ(r->counts.deliveries_failed, 20u + 2);  // carol's 20, and m4 for alice and bob (ItemBad)
  EXPECT_EQ(store_.size("carol@corp.com"), 0u);
  EXPECT_EQ(store_.size("alice@corp.com"), 59u);
  EXPECT_EQ(store_.size("bob@corp.com"), 39u);
  EXPECT_EQ(store_.submissions["carol@corp.com"], 1);
  // The tracker stops submitting to a failed mailbox: what it had in flight
  // when the failure came back is all (not carol's 20).
  EXPECT_LE(store_.submit_calls["carol@corp.com"], 8) << "after the first MailboxBad, nothing more is sent there";
  std::string report = test::ReadFile(tmp_ / "report.json");
  EXPECT_NE(report.find("carol@corp.com: invalid argument: NO [AUTHENTICATIONFAILED]"), std::string::npos);
  EXPECT_NE(report.find("NO [LIMIT] too big"), std::string::npos);
  EXPECT_NE(report.find(R"("mailboxes_failed":{"carol@corp.com")"), std::string::npos);
  auto states = IndexStates();
  EXPECT_EQ(states[index::DeliveryState::kFailed], 22);
  EXPECT_EQ(states[index::DeliveryState::kIntent], 0);

  // Carol's mailbox is fixed; m4 stays refused. The cursor stayed before the
  // first carol record, so the rerun reads from there; alice and bob are not
  // sent anything again but m4, which is tried again and refused again.
  std::map<std::string, int> before = store_.submissions;
  Script fixed;
  fixed.item_bad = {KeyOf("m4")};
  auto again = RunImport(Options(fixed, 8));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->fatal.ok());
  EXPECT_EQ(again->counts.deliveries, 20u);
  EXPECT_EQ(store_.submissions["alice@corp.com"], before["alice@corp.com"] + 1);
  EXPECT_EQ(store_.submissions["bob@corp.com"], before["bob@corp.com"] + 1);
  EXPECT_EQ(store_.size("carol@corp.com"), 20u);
  auto end = IndexStates();
  EXPECT_EQ(end[index::DeliveryState::kFailed], 2);
  EXPECT_EQ(end[index::DeliveryState::kDone], 118);
  index::IndexOptions ro;
  ro.read_only = true;
  auto idx = index::Index::Open(tmp_ / "index", ro);
  ASSERT_TRUE(idx.ok());
  auto rec = (*idx)->GetDelivery({1, "bob@corp.com", KeyOf("m4"), 0});
  ASSERT_TRUE(rec.ok() && rec->has_value());
  EXPECT_EQ((*rec)->attempts, 2u);
  EXPECT_NE((*rec)->last_error.find("NO [LIMIT]"), std::string::npos);
}

TEST_F(SinkContractTest, ASinkFailureStopsTheRunAndARerunCompletes) {
  Script s;
  s.sink_bad_at = 30;
  auto r = RunImport(Options(s, 3));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->fatal.ok());
  EXPECT_NE(r->fatal.ToString().find("server gone for good"), std::string::npos);
  EXPECT_LT(store_.size("alice@corp.com"), 60u);
  EXPECT_EQ(IndexStates()[index::DeliveryState::kIntent], 0) << "nothing was sent in doubt";
  auto again = RunImport(Options(Script{}, 4));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->fatal.ok());
  ExpectEverythingOnce();
}

// A failed run's counts: an item whose new delivery was given back because
// the run failed (never sent) is not "already present", even though its
// other mailboxes were done before.
TEST_F(SinkContractTest, AFailedRunCountsNoItemWithAReleasedDeliveryAsPresent) {
  // Every message from alice to bob, and bob's mailbox refuses everything:
  // alice's copies are done, bob's failed, so no item is complete.
  WriteMessages([](int) { return "bob"; });
  Script bad_bob;
  bad_bob.bad_mailboxes = {"bob@corp.com"};
  auto first = RunImport(Options(bad_bob, 5));
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->counts.deliveries, 60u);
  ASSERT_EQ(first->counts.deliveries_failed, 60u);
  // The rerun retries bob's 60, and the target fails for good at the first
  // delivery: what was not sent by then is given back.
  Script s;
  s.sink_bad_at = 0;
  auto second = RunImport(Options(s, 6));
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->fatal.ok());
  const auto& c = second->counts;
  EXPECT_GT(c.records, 0u);
  EXPECT_LT(c.imported, c.items) << "the run failed at the first delivery";
  EXPECT_EQ(c.already_present, 0u) << "every item read needed bob: imported, failed, in doubt or given back";
  // A run that completes delivers bob's copies, each once.
  auto third = RunImport(Options(Script{}, 7));
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(third->fatal.ok());
  for (int i = 0; i < 60; ++i) {
    auto k = KeyOf(fmt::format("m{}", i));
    EXPECT_EQ(store_.count("alice@corp.com", k), 1) << i;
    EXPECT_EQ(store_.count("bob@corp.com", k), 1) << i;
  }
}

// Transient failures that never stop: given up after max_attempts. What was
// never sent is failed (retried by the next run). What arrived without an
// answer is found by the probe and adopted, never sent twice; if even the
// probe cannot answer, it stays in doubt and the next run probes it first.
TEST_F(SinkContractTest, GivingUpFailsWhatWasNotSentAndKeepsWhatMayHaveArrivedInDoubt) {
  Script s;
  s.transient[KeyOf("m1")] = 1000;
  s.stored_but_unanswered[KeyOf("m2")] = 1000;
  auto o = Options(s, 5);
  o.max_attempts = 3;
  auto r = RunImport(o);
  ASSERT_TRUE(r.ok());
  auto states = IndexStates();
  EXPECT_EQ(states[index::DeliveryState::kFailed], 2);  // m1 to alice and bob
  EXPECT_EQ(states[index::DeliveryState::kIntent], 0);
  EXPECT_EQ(store_.count("bob@corp.com", KeyOf("m2")), 1) << "adopted after the probe, not resent";
  std::string report = test::ReadFile(tmp_ / "report.json");
  EXPECT_NE(report.find("gave up after 3 attempts"), std::string::npos);

  // m1 is read again (the cursor stayed before it): now it arrives, but
  // neither the answer nor a probe gets through.
  Script unanswered;
  unanswered.stored_but_unanswered[KeyOf("m1")] = 1000;
  unanswered.probe_transient = true;
  auto o2 = Options(unanswered, 6);
  o2.max_attempts = 2;
  auto second = RunImport(o2);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->counts.records, 59u) << "read from m1 on";
  EXPECT_EQ(IndexStates()[index::DeliveryState::kIntent], 2) << "m1 to alice and bob: in doubt";
  EXPECT_EQ(store_.count("bob@corp.com", KeyOf("m1")), 1);

  auto again = RunImport(Options(Script{}, 7));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->index.settled_done, 2u) << "m1 was found by the probe at start-up";
  EXPECT_EQ(store_.count("bob@corp.com", KeyOf("m1")), 1) << "never sent twice";
  ExpectEverythingOnce();
  EXPECT_EQ(IndexStates()[index::DeliveryState::kDone], 120);
}

// A delivery left in doubt in a run that goes on records no item: a later
// record reusing its msgid with other content is still a conflict (not
// taken as delivered by the in-doubt intent).
TEST_F(SinkContractTest, AMsgidReusedAfterAnInDoubtDeliveryIsAConflict) {
  test::WriteFile(tmp_ / "src/b.jsonl",
                  fmt::format(R"({{"msgid":"m1","action":"send","from":"alice","tolist":["bob"],"roomid":"","msgtime":{},"msgtype":"text","text":{{"content":"changed"}}}})"
                              "\n",
                              kT + 1000));
  Script s;
  s.stored_but_unanswered[KeyOf("m1")] = 1000;
  s.probe_transient = true;
  auto o = Options(s, 12);
  o.max_attempts = 2;
  auto r = RunImport(o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->counts.conflicts, 1u);
  EXPECT_EQ(r->counts.already_present, 0u);
  std::string report = test::ReadFile(tmp_ / "report.json");
  EXPECT_NE(report.find("this record (b.jsonl:1)"), std::string::npos) << report;
}

// A stopped run's in-doubt deliveries whose mailbox cannot be checked stay
// in doubt: never resent blindly, and that mailbox is stopped for the run.
TEST_F(SinkContractTest, InDoubtDeliveriesThatCannotBeProbedAreNotResent) {
  Script s;
  s.stored_but_unanswered[KeyOf("m0")] = 1000;  // to carol
  auto o = Options(s, 9);
  o.max_attempts = 1;
  o.rescan = false;
  Script probe_too;
  probe_too.stored_but_unanswered[KeyOf("m0")] = 1000;
  probe_too.probe_transient = true;
  o = Options(probe_too, 9);
  o.max_attempts = 1;
  ASSERT_TRUE(RunImport(o).ok());
  ASSERT_EQ(IndexStates()[index::DeliveryState::kIntent], 2);  // m0 to alice and carol
  Script cannot_check;
  cannot_check.probe_fails = {"carol@corp.com"};
  auto r = RunImport(Options(cannot_check, 10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->index.settled_done, 1u);     // alice's
  EXPECT_EQ(r->index.settled_unknown, 1u);  // carol's
  EXPECT_EQ(r->mailboxes_failed.count("carol@corp.com"), 1u);
  EXPECT_EQ(store_.count("carol@corp.com", KeyOf("m0")), 1);
  EXPECT_EQ(IndexStates()[index::DeliveryState::kIntent], 1);
  auto fine = RunImport(Options(Script{}, 11));
  ASSERT_TRUE(fine.ok());
  ExpectEverythingOnce();
}

}  // namespace
}  // namespace wxa::pipeline
