// The graph: target against the local Graph look-alike (issue #11): a
// generated corpus into several mailboxes, each item exactly once as a
// received (non-draft) message with its date and X-WeChat-* headers and the
// very bytes the Maildir target writes; injected 503/504s, slow replies,
// dropped connections (before and after the item was stored) and expiring
// tokens; budgets scaled down so a run pushes past them with no failure and
// no violation counted by the server; unknown mailboxes; the request cap;
// secrets kept out of every output; kill -9 by progress; `verify`.
#include <gtest/gtest.h>

#include <curl/curl.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <future>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "engine/index/index.h"
#include "engine/pipeline/import.h"
#include "engine/pipeline/verify.h"
#include "engine/sinks/graph/graph_sink.h"
#include "engine/sinks/make_sink.h"
#include "engine/sinks/sink.h"
#include "formats/core/hash.h"
#include "formats/mime/gmime_reference.h"
#include "formats/mime/renderer.h"
#include "formats/pst/pst_writer.h"
#include "tests/graph/fake_graph_server.h"
#include "tests/test_util.h"
#include "tools/gen/corpus_gen.h"

namespace wxa {
namespace {

using test::FakeGraphServer;
using test::FakeGraphServerOptions;

constexpr const char* kFolder = "WeChat Archiver";
constexpr const char* kClientId = "0f1e2d3c-wxa-archiver";
constexpr const char* kSecret = "Sx~8Q.graph-secret-value-Zq81";
constexpr const char* kTenant = "11111111-2222-3333-4444-555555555555";

const test::Corpus& SharedCorpus() { return test::SharedCorpus(10, 8, 11); }

std::string Iso(int64_t secs) {
  std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// mailbox -> (Message-ID with angles -> (bytes, unix seconds)).
using Reference = std::map<std::string, std::map<std::string, std::pair<std::string, int64_t>>>;

class GraphSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    corpus_ = &SharedCorpus();
    ASSERT_GE(corpus_->mailboxes.size(), 8u);
  }

  FakeGraphServerOptions ServerOptions(size_t skip_mailboxes = 0) {
    FakeGraphServerOptions o;
    o.apps = {{kClientId, kSecret, ""}};
    for (size_t i = skip_mailboxes; i < corpus_->mailboxes.size(); ++i) o.mailboxes.push_back({corpus_->mailboxes[i], "", ""});
    o.tenant = kTenant;
    o.limits.concurrency_retry_after_s = 1;
    return o;
  }

  void Start(FakeGraphServerOptions o) { ASSERT_TRUE(server_.Start(std::move(o)).ok()); }

  sinks::GraphOptions GraphOpts() {
    sinks::GraphOptions g;
    g.tenant = kTenant;
    g.client_id = kClientId;
    g.client_secret = kSecret;
    g.login_url = server_.base_url();
    g.graph_url = server_.base_url();
    g.connections = 32;
    g.backoff_base_ms = 50;
    g.backoff_max_ms = 1000;
    g.request_timeout_ms = 5000;
    return g;
  }

  pipeline::ImportOptions Options() {
    pipeline::ImportOptions o;
    o.source_dir = corpus_->dir;
    o.directory_csv = corpus_->dir + "/directory.csv";
    o.mapping_csv = corpus_->dir + "/mapping.csv";
    o.mailboxes_file = corpus_->dir + "/mailboxes.txt";
    o.target = "graph:";
    o.index_dir = tmp_ / "index";
    o.report_path = tmp_ / "report.json";
    o.threads = 2;
    o.retry_base_ms = 20;
    o.retry_max_ms = 500;
    o.max_attempts = 12;
    sinks::SinkOptions so;
    so.graph = graph_;
    sink_options_ = so;
    o.make_sink = [so](const sinks::Target& t) { return sinks::MakeSink(t, so); };
    return o;
  }

  pipeline::ImportSummary Import(const pipeline::ImportOptions& o) {
    auto r = pipeline::RunImport(o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return {};
    EXPECT_TRUE(r->fatal.ok()) << r->fatal.ToString();
    return std::move(*r);
  }

  // The same corpus into a Maildir tree, once per process.
  const Reference& Ref() {
    static Reference* ref = nullptr;
    if (ref != nullptr) return *ref;
    ref = new Reference();
    static test::TempDir* dir = new test::TempDir();
    pipeline::ImportOptions o;
    o.source_dir = corpus_->dir;
    o.directory_csv = corpus_->dir + "/directory.csv";
    o.mapping_csv = corpus_->dir + "/mapping.csv";
    o.mailboxes_file = corpus_->dir + "/mailboxes.txt";
    o.target = "maildir:" + (*dir / "ref");
    o.threads = 2;
    auto r = pipeline::RunImport(o);
    EXPECT_TRUE(r.ok());
    for (const auto& mb : corpus_->mailboxes) {
      const std::string cur = *dir / ("ref/" + mb + "/.WeChat Archiver/cur");
      if (!std::filesystem::exists(cur)) continue;
      for (const auto& f : test::ListFiles(cur)) {
        std::string bytes = test::ReadFile(cur + "/" + f);
        auto id = sinks::MessageIdOfHeader(bytes);
        EXPECT_TRUE(id.has_value()) << f;
        (*ref)[mb]["<" + id.value_or("") + ">"] = {bytes, std::stoll(f.substr(0, f.find('.')))};
      }
    }
    return *ref;
  }

  // Every mailbox's archive folder holds exactly the reference's messages,
  // once each: received mail (not drafts), the same bytes, the item's date,
  // the X-WeChat-* headers.
  size_t ExpectExactlyOnce(const std::set<std::string>& skip_mailboxes = {},
                           const std::set<std::string>& allowed_missing = {}) {
    const Reference& ref = Ref();
    size_t total = 0;
    for (const auto& mb : corpus_->mailboxes) {
      if (skip_mailboxes.count(mb)) continue;
      std::map<std::string, int> seen;
      auto want = ref.find(mb);
      for (const auto& m : server_.Messages(mb)) {
        EXPECT_EQ(m.folder_name, kFolder) << mb;
        ++seen[m.internet_message_id];
        EXPECT_FALSE(m.is_draft) << m.internet_message_id;
        EXPECT_EQ(m.source, test::FakeGraphMessage::Source::kImportMime);
        if (want == ref.end()) {
          ADD_FAILURE() << mb << ": unexpected " << m.internet_message_id;
          continue;
        }
        auto it = want->second.find(m.internet_message_id);
        if (it == want->second.end()) {
          ADD_FAILURE() << mb << ": unexpected " << m.internet_message_id;
          continue;
        }
        EXPECT_EQ(m.raw_mime, it->second.first) << mb << " " << m.internet_message_id;
        EXPECT_EQ(m.received_date_time, Iso(it->second.second)) << m.internet_message_id;
        EXPECT_EQ(m.sent_date_time, Iso(it->second.second)) << m.internet_message_id;
        bool wechat = false;
        for (const auto& h : m.headers) wechat |= h.name == "X-WeChat-MsgId";
        EXPECT_TRUE(wechat) << m.internet_message_id;
      }
      for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << mb << ": " << id << " duplicated";
      if (want != ref.end()) {
        for (const auto& [id, v] : want->second) {
          if (seen.count(id) == 0 && allowed_missing.count(id) == 0) ADD_FAILURE() << mb << ": missing " << id;
        }
      }
      total += seen.size();
    }
    return total;
  }

  size_t RefTotal() {
    size_t n = 0;
    for (const auto& [mb, m] : Ref()) n += m.size();
    return n;
  }

  pipeline::VerifyReport Verify() {
    pipeline::VerifyOptions vo;
    vo.index_dir = tmp_ / "index";
    vo.target = "graph:";
    auto so = sink_options_;
    vo.make_sink = [so](const sinks::Target& t) { return sinks::MakeSink(t, so); };
    auto r = pipeline::RunVerify(vo);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : pipeline::VerifyReport{};
  }

  std::string CliBase(const std::string& graph_url = "") {
    const std::string c = corpus_->dir;
    test::WriteFile(tmp_ / "secret", std::string(kSecret) + "\n");
    return fmt::format(
        "{} import --source {} --directory {} --mapping {} --mailboxes {} --to graph: --index {} --report {} "
        "--graph-tenant {} --graph-client-id {} --graph-secret-file {} --graph-login-url {} --graph-url {}",
        WXA_CLI, c, c + "/directory.csv", c + "/mapping.csv", c + "/mailboxes.txt", test::ShellQuote(tmp_ / "index"),
        test::ShellQuote(tmp_ / "report.json"), kTenant, kClientId, test::ShellQuote(tmp_ / "secret"),
        server_.base_url(), graph_url.empty() ? server_.base_url() : graph_url);
  }

  std::string CliVerify() {
    return fmt::format(
        "{} verify --to graph: --index {} --graph-tenant {} --graph-client-id {} --graph-secret-file {} "
        "--graph-login-url {} --graph-url {}",
        WXA_CLI, test::ShellQuote(tmp_ / "index"), kTenant, kClientId, test::ShellQuote(tmp_ / "secret"),
        server_.base_url(), server_.base_url());
  }

  // Deletes one message through the API (as a user would in Outlook).
  void DeleteOnServer(const std::string& mailbox, const std::string& id) {
    CURL* c = curl_easy_init();
    std::string body, token;
    auto write = +[](char* p, size_t s, size_t n, void* ud) {
      static_cast<std::string*>(ud)->append(p, s * n);
      return s * n;
    };
    std::string form = fmt::format(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
        kClientId, sinks::graph::PercentEncode(kSecret));
    std::string url = fmt::format("{}/{}/oauth2/v2.0/token", server_.base_url(), kTenant);
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, form.c_str());
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    ASSERT_EQ(curl_easy_perform(c), CURLE_OK);
    size_t at = body.find("\"access_token\":\"");
    ASSERT_NE(at, std::string::npos) << body;
    at += 16;
    token = body.substr(at, body.find('"', at) - at);
    curl_easy_reset(c);
    body.clear();
    url = fmt::format("{}/v1.0/users/{}/messages/{}", server_.base_url(), mailbox, id);
    curl_slist* h = curl_slist_append(nullptr, ("Authorization: Bearer " + token).c_str());
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    ASSERT_EQ(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    EXPECT_EQ(status, 204) << body;
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
  }

  const test::Corpus* corpus_ = nullptr;
  test::TempDir tmp_;
  FakeGraphServer server_;
  sinks::GraphOptions graph_;
  sinks::SinkOptions sink_options_;
};

TEST_F(GraphSinkTest, EachItemOnceAsReceivedMailWithDatesAndHeaders) {
  Start(ServerOptions());
  graph_ = GraphOpts();
  auto first = Import(Options());
  EXPECT_GT(first.counts.deliveries, 150u);
  EXPECT_EQ(first.counts.deliveries_failed, 0u);
  EXPECT_EQ(ExpectExactlyOnce(), RefTotal());
  EXPECT_EQ(first.counts.deliveries, RefTotal());
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
  // Remote references are Graph item ids.
  {
    index::IndexOptions ro;
    ro.read_only = true;
    auto idx = index::Index::Open(tmp_ / "index", ro);
    ASSERT_TRUE(idx.ok());
    size_t with_id = 0;
    ASSERT_TRUE((*idx)->ForEachDelivery([&](const index::DeliveryKey& k, const index::DeliveryRecord& r) {
      auto m = server_.FindMessage(k.mailbox, "<" + mime::MessageIdFor(k.item) + ">");
      with_id += m.has_value() && m->id == r.remote_ref;
    }).ok());
    EXPECT_EQ(with_id, first.counts.deliveries);
  }
  // A rerun sends nothing; --rescan reads everything and sends nothing.
  uint64_t messages = 0;
  for (const auto& mb : corpus_->mailboxes) messages += server_.Stats(mb).messages;
  auto o = Options();
  auto again = Import(o);
  EXPECT_EQ(again.counts.deliveries, 0u);
  o.rescan = true;
  auto rescan = Import(o);
  EXPECT_EQ(rescan.counts.deliveries, 0u);
  uint64_t after = 0;
  for (const auto& mb : corpus_->mailboxes) after += server_.Stats(mb).messages;
  EXPECT_EQ(after, messages);
  auto v = Verify();
  EXPECT_TRUE(v.clean());
  EXPECT_EQ(v.mailboxes.size(), Ref().size());
}

// Faults on the wire; each run ends with every item exactly once, and no
// limit broken.
struct FaultCase {
  const char* name;
  std::function<void(test::FakeGraphFaults&)> set;
};

// gtest shows a parameter with PrintTo (found by ADL); without it, the
// raw bytes (pointers included) end up in the ctest names.
void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.name; }

class GraphFaults : public GraphSinkTest, public ::testing::WithParamInterface<FaultCase> {};

std::vector<FaultCase> FaultCases() {
  return {
      {"ServiceUnavailableWithRetryAfter",
       [](test::FakeGraphFaults& f) {
         f.error.every_nth = 7;
         f.error_status = 503;
         f.error_retry_after_s = 1;
       }},
      {"GatewayTimeoutsWithoutRetryAfter",
       [](test::FakeGraphFaults& f) {
         f.error.every_nth = 6;
         f.error_status = 504;
         f.error_retry_after = false;
       }},
      {"InjectedThrottling",
       [](test::FakeGraphFaults& f) {
         f.error.every_nth = 11;
         f.error_status = 429;
         f.error_retry_after_s = 1;
       }},
      {"SlowReplies",
       [](test::FakeGraphFaults& f) {
         f.delay.every_nth = 3;
         f.delay_by = std::chrono::milliseconds(150);
       }},
      {"DroppedBeforeProcessing", [](test::FakeGraphFaults& f) { f.drop_before.every_nth = 9; }},
      {"DroppedAfterTheItemWasStored",
       [](test::FakeGraphFaults& f) {
         f.drop_after.every_nth = 5;
         f.path_filter = "importMime";
       }},
      {"ServiceUnavailableAfterTheItemWasStored",
       [](test::FakeGraphFaults& f) {
         // A front end's 503 after the backend stored the item: probed, not sent again.
         f.error_after.every_nth = 5;
         f.error_after_status = 503;
         f.path_filter = "importMime";
       }},
      {"TokensExpire", [](test::FakeGraphFaults& f) { f.expire_tokens_every_n = 25; }},
      {"Everything",
       [](test::FakeGraphFaults& f) {
         f.seed = 3;
         f.error.probability = 0.05;
         f.error_retry_after_s = 1;
         f.delay.probability = 0.1;
         f.delay_by = std::chrono::milliseconds(100);
         f.drop_before.probability = 0.03;
         f.drop_after.probability = 0.05;
         f.expire_tokens_every_n = 40;
       }},
  };
}

INSTANTIATE_TEST_SUITE_P(Server, GraphFaults, ::testing::ValuesIn(FaultCases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_P(GraphFaults, NothingLostNothingDuplicated) {
  auto so = ServerOptions();
  GetParam().set(so.faults);
  Start(so);
  graph_ = GraphOpts();
  auto r = pipeline::RunImport(Options());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->fatal.ok()) << r->fatal.ToString();
  uint64_t fired = 0;
  for (const auto& mb : corpus_->mailboxes) {
    auto s = server_.Stats(mb);
    fired += s.injected_errors + s.injected_delays + s.dropped_before + s.dropped_after;
  }
  if (std::string(GetParam().name) != "TokensExpire") EXPECT_GT(fired, 0u) << "the fault never fired";
  EXPECT_EQ(r->counts.deliveries_failed, 0u);
  // Whatever this run could not settle, a rerun does (faults still on).
  auto again = pipeline::RunImport(Options());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->fatal.ok()) << again->fatal.ToString();
  EXPECT_EQ(ExpectExactlyOnce(), RefTotal());
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
  if (std::string(GetParam().name) == "TokensExpire") EXPECT_GT(server_.TokensIssued(), 2u);
  server_.SetFaults({});
  EXPECT_TRUE(Verify().clean());
}

// The credentials stop working mid-run (a client secret revoked): the
// sink fails for good with requests still running, which the server goes
// on to store. Those are in doubt (probed by the next run), never failed
// outright: a failed delivery is sent again without a probe, a duplicate
// (18 of them in one run before the fix; it caught the fault in 5 of 6 runs:
// the requests running at the refusal depend on timing).
TEST_F(GraphSinkTest, RequestsRunningWhenTheCredentialsFailAreProbedNotResent) {
  auto so = ServerOptions();
  so.faults.delay.every_nth = 1;
  so.faults.delay_by = std::chrono::milliseconds(1500);
  so.faults.path_filter = "importMime";
  Start(so);
  graph_ = GraphOpts();
  std::atomic<bool> done{false};
  std::thread revoke([&] {
    auto stored = [&] {
      uint64_t n = 0;
      for (const auto& mb : corpus_->mailboxes) n += server_.Stats(mb).messages;
      return n;
    };
    while (!done && stored() < 20) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    // Requests already waiting out their delay are stored when it ends;
    // from now on the token endpoint refuses the client, and every token
    // issued is dead.
    test::FakeGraphFaults f;
    f.error.every_nth = 1;
    f.error_status = 400;
    f.error_retry_after = false;
    f.path_filter = "oauth2";
    server_.SetFaults(f);
    server_.ExpireAllTokens();
  });
  auto r = pipeline::RunImport(Options());
  done = true;
  revoke.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->fatal.ok()) << "the run must not end done with its credentials refused";
  EXPECT_LT(r->counts.deliveries, RefTotal());
  server_.SetFaults({});
  auto again = pipeline::RunImport(Options());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->fatal.ok()) << again->fatal.ToString();
  EXPECT_EQ(ExpectExactlyOnce(), RefTotal());
}

// Budgets scaled down (requests per window, bytes per window, 4 in flight
// with slow replies): the run goes past each several times, nothing fails,
// the server never refuses a request and counts no violation.
TEST_F(GraphSinkTest, PushingPastTheBudgetsBreaksNoLimit) {
  // The upload budget: a quarter of the busiest mailbox's bytes, but at
  // least the largest item (one item must always fit in a window).
  uint64_t largest = 0, busiest = 0;
  for (const auto& [mb, msgs] : Ref()) {
    uint64_t sum = 0;
    for (const auto& [id, v] : msgs) {
      largest = std::max<uint64_t>(largest, sinks::graph::Base64Size(v.first.size()));
      sum += sinks::graph::Base64Size(v.first.size());
    }
    busiest = std::max(busiest, sum);
  }
  const uint64_t upload_budget = std::max(largest + 1, busiest / 4);
  auto so = ServerOptions();
  so.limits.request_budget = 12;
  so.limits.request_window = std::chrono::milliseconds(1000);
  so.limits.upload_budget_bytes = upload_budget;
  so.limits.upload_window = std::chrono::milliseconds(1000);
  so.faults.delay.every_nth = 2;
  so.faults.delay_by = std::chrono::milliseconds(40);
  Start(so);
  graph_ = GraphOpts();
  graph_.request_budget = 12;
  graph_.request_window = std::chrono::milliseconds(1000);
  graph_.upload_budget_bytes = upload_budget;
  graph_.upload_window = std::chrono::milliseconds(1000);
  graph_.window_margin = std::chrono::milliseconds(60);
  auto t0 = std::chrono::steady_clock::now();
  auto r = Import(Options());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.counts.deliveries_failed, 0u);
  EXPECT_EQ(ExpectExactlyOnce(), RefTotal());
  uint64_t most = 0, throttled = 0, bytes = 0;
  int peak = 0;
  for (const auto& mb : corpus_->mailboxes) {
    auto s = server_.Stats(mb);
    most = std::max(most, s.requests);
    throttled += s.throttled;
    bytes = std::max(bytes, s.upload_bytes);
    peak = std::max(peak, s.peak_concurrency);
  }
  EXPECT_GT(most, 3 * 12u) << "the run must go past the request budget several times";
  EXPECT_GT(bytes, upload_budget) << "and past the upload budget";
  EXPECT_EQ(throttled, 0u) << server_.StatsJson();
  EXPECT_LE(peak, 4);
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
  std::printf("budgets: busiest mailbox %lu requests, %lu bytes in %.1f s (budget 12 req/s, %lu B/s)\n",
              static_cast<unsigned long>(most), static_cast<unsigned long>(bytes), secs,
              static_cast<unsigned long>(upload_budget));
}

// Mailboxes the tenant does not have: with the target's check, they are
// never mapped; without it, each is its own failure, reported, and the
// others are complete.
TEST_F(GraphSinkTest, UnknownMailboxesAreReportedAndTheRestProceeds) {
  Start(ServerOptions(2));
  graph_ = GraphOpts();
  const std::set<std::string> missing = {corpus_->mailboxes[0], corpus_->mailboxes[1]};
  {
    auto o = Options();
    o.mailboxes_file.clear();
    auto r = Import(o);
    EXPECT_EQ(r.counts.deliveries_failed, 0u) << "nothing is sent to a mailbox the target does not know";
    EXPECT_EQ(r.deliveries_by_mailbox.count(corpus_->mailboxes[0]), 0u);
    std::string report = test::ReadFile(tmp_ / "report.json");
    EXPECT_NE(report.find("not a known mailbox of the target"), std::string::npos);
  }
  // Without the check (a tenant that refuses user lookups would be like this).
  server_.Reset();
  std::filesystem::remove_all(tmp_ / "index");
  graph_.check_mailboxes = false;
  auto r = Import(Options());
  EXPECT_GT(r.counts.deliveries_failed, 0u);
  for (const auto& [mb, why] : r.mailboxes_failed) {
    EXPECT_TRUE(missing.count(mb)) << mb << ": " << why;
    EXPECT_NE(why.find("unknown mailbox"), std::string::npos) << why;
  }
  EXPECT_EQ(r.mailboxes_failed.size(), 2u);
  std::string report = test::ReadFile(tmp_ / "report.json");
  EXPECT_NE(report.find("unknown mailbox"), std::string::npos);
  ExpectExactlyOnce(missing);
  for (const auto& mb : corpus_->mailboxes) {
    if (!missing.count(mb)) EXPECT_EQ(r.mailboxes_failed.count(mb), 0u);
  }
}

// Items whose base64 would exceed the request cap are reported with a clear
// reason; the rest arrives.
TEST_F(GraphSinkTest, ItemsOverTheRequestCapAreReported) {
  Start(ServerOptions());
  graph_ = GraphOpts();
  graph_.max_request_bytes = 6000;  // scaled down from 4 MiB
  auto r = Import(Options());
  EXPECT_GT(r.counts.deliveries_failed, 0u);
  EXPECT_GT(r.counts.deliveries, 0u);
  std::string report = test::ReadFile(tmp_ / "report.json");
  EXPECT_NE(report.find("request cap"), std::string::npos);
  for (const auto& mb : corpus_->mailboxes) {
    for (const auto& m : server_.Messages(mb)) EXPECT_LE(sinks::graph::Base64Size(m.raw_mime.size()), 6000u);
  }
  EXPECT_EQ(server_.TotalViolations(), 0u);
}

// ---- --graph-mode extprops ----

// Limits scaled down together (client and server) so the generated media
// exercise all three ways an attachment goes: inline in the create, its own
// POST, and an upload session in chunks.
constexpr uint64_t kSmallCap = 48 << 10;
constexpr uint64_t kSmallSessionMin = 24 << 10;

class GraphExtPropsTest : public GraphSinkTest {
 protected:
  FakeGraphServerOptions SmallServer() {
    auto so = ServerOptions();
    so.limits.max_request_body_bytes = kSmallCap;
    so.limits.min_upload_session_bytes = kSmallSessionMin;
    return so;
  }
  sinks::GraphOptions SmallGraph() {
    auto g = GraphOpts();
    g.mode = sinks::GraphOptions::Mode::kExtProps;
    g.max_request_bytes = kSmallCap;
    g.min_upload_session_bytes = kSmallSessionMin;
    g.upload_chunk_bytes = 10 << 10;
    return g;
  }

  struct Want {
    std::string subject;
    std::string header_block;
    int64_t date = 0;
    std::multiset<std::pair<std::string, std::string>> attachments;  // name, bytes
  };
  // mailbox -> Message-ID -> what the item must carry, from the Maildir
  // reference read back by GMime.
  const std::map<std::string, std::map<std::string, Want>>& Wanted() {
    static auto* wanted = new std::map<std::string, std::map<std::string, Want>>();
    if (!wanted->empty()) return *wanted;
    mime::InitGMime();
    for (const auto& [mb, msgs] : Ref()) {
      for (const auto& [id, v] : msgs) {
        auto parsed = mime::reference::ParseWithGMime(v.first);
        EXPECT_TRUE(parsed.ok()) << id;
        if (!parsed.ok()) continue;
        Want w;
        w.subject = parsed->subject;
        w.header_block = v.first.substr(0, v.first.find("\r\n\r\n") + 2);
        w.date = v.second;
        for (const auto& a : parsed->attachments) w.attachments.emplace(a.file_name, a.bytes);
        (*wanted)[mb][id] = std::move(w);
      }
    }
    return *wanted;
  }

  struct Seen {
    size_t items = 0, attachments = 0, via_session = 0, inline_or_posted = 0;
  };
  // Every mailbox holds each item once: JSON-created received mail (not a
  // draft, read), the item's date as delivery and submit time, its full
  // header block (every X-WeChat-* header) in PR_TRANSPORT_MESSAGE_HEADERS,
  // every attachment byte for byte, and no leftover parts marker mismatch.
  Seen ExpectExactlyOnceJson() {
    Seen out;
    const auto& wanted = Wanted();
    for (const auto& mb : corpus_->mailboxes) {
      std::map<std::string, int> seen;
      auto want = wanted.find(mb);
      for (const auto& m : server_.Messages(mb)) {
        EXPECT_EQ(m.folder_name, kFolder) << mb;
        ++seen[m.internet_message_id];
        EXPECT_EQ(m.source, test::FakeGraphMessage::Source::kJson);
        EXPECT_FALSE(m.is_draft) << m.internet_message_id;
        EXPECT_TRUE(m.is_read) << m.internet_message_id;
        if (want == wanted.end() || want->second.count(m.internet_message_id) == 0) {
          ADD_FAILURE() << mb << ": unexpected " << m.internet_message_id;
          continue;
        }
        const Want& w = want->second.at(m.internet_message_id);
        EXPECT_EQ(m.subject, w.subject) << m.internet_message_id;
        EXPECT_EQ(m.received_date_time, Iso(w.date)) << m.internet_message_id;
        EXPECT_EQ(m.sent_date_time, Iso(w.date)) << m.internet_message_id;
        std::string transport, parts;
        for (const auto& p : m.extended_properties) {
          if (p.name == "String 0x007D") transport = p.value;
          if (p.name == sinks::graph::PartsProperty()) parts = p.value;
        }
        EXPECT_EQ(transport, w.header_block) << m.internet_message_id;
        EXPECT_NE(transport.find("\r\nX-WeChat-MsgId: "), std::string::npos) << m.internet_message_id;
        std::multiset<std::pair<std::string, std::string>> got;
        for (const auto& a : m.attachments) {
          got.emplace(a.name, a.bytes);
          out.via_session += a.via_upload_session;
        }
        EXPECT_TRUE(got == w.attachments) << m.internet_message_id << ": " << got.size() << " attachments, want "
                                          << w.attachments.size();
        if (!parts.empty()) EXPECT_EQ(parts, std::to_string(w.attachments.size())) << m.internet_message_id;
        out.attachments += m.attachments.size();
      }
      for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << mb << ": " << id << " duplicated";
      if (want != wanted.end()) {
        for (const auto& [id, v] : want->second) {
          if (seen.count(id) == 0) ADD_FAILURE() << mb << ": missing " << id;
        }
      }
      out.items += seen.size();
    }
    out.inline_or_posted = out.attachments - out.via_session;
    return out;
  }
};

TEST_F(GraphExtPropsTest, EachItemOnceAsReceivedMailWithItsAttachments) {
  Start(SmallServer());
  graph_ = SmallGraph();
  auto first = Import(Options());
  EXPECT_EQ(first.counts.deliveries_failed, 0u);
  EXPECT_EQ(first.counts.deliveries, RefTotal());
  Seen s = ExpectExactlyOnceJson();
  EXPECT_EQ(s.items, RefTotal());
  // All three paths were taken: inline/POSTed and upload sessions, and
  // some items needed requests after their create (the marker).
  EXPECT_GT(s.via_session, 0u) << "no attachment went through an upload session";
  EXPECT_GT(s.inline_or_posted, 0u);
  size_t marked = 0;
  for (const auto& mb : corpus_->mailboxes) {
    for (const auto& m : server_.Messages(mb)) {
      for (const auto& p : m.extended_properties) marked += p.name == sinks::graph::PartsProperty();
    }
  }
  EXPECT_GT(marked, 0u);
  std::printf("%zu items, %zu attachments (%zu through upload sessions), %zu items with requests after the create\n",
              s.items, s.attachments, s.via_session, marked);
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
  // A rerun sends nothing; verify finds everything.
  auto again = Import(Options());
  EXPECT_EQ(again.counts.deliveries, 0u);
  EXPECT_TRUE(Verify().clean());
}

// Faults on every step of a multi-request item: a lost answer after an
// attachment was stored leaves a partial item that the probe finds by its
// marker, removes (permanentDelete) and sends again; chunks resume where the
// session stands.
class GraphExtPropsFaults : public GraphExtPropsTest, public ::testing::WithParamInterface<FaultCase> {};

std::vector<FaultCase> ExtPropsFaultCases() {
  return {
      // The three Attachment* cases: on this corpus (one attachment per
      // item) the POSTs under /attachments are upload-session creations;
      // attachments POSTed whole meet the same faults in
      // AnAttachmentStoredThenNotAnsweredOkIsNotSentAgain.
      {"AttachmentAnswersLost",
       [](test::FakeGraphFaults& f) {
         f.drop_after.every_nth = 2;
         f.path_filter = "/attachments";
         f.method_filter = "POST";
       }},
      {"ChunkAnswersLost",
       [](test::FakeGraphFaults& f) {
         f.drop_after.every_nth = 3;
         f.method_filter = "PUT";
       }},
      {"ChunksRefused",
       [](test::FakeGraphFaults& f) {
         f.error.every_nth = 4;
         f.error_status = 503;
         f.error_retry_after_s = 1;
         f.method_filter = "PUT";
       }},
      {"LastChunkDoneThenGatewayTimeout",
       [](test::FakeGraphFaults& f) {
         // The chunk is stored, then answered 504: the last one must be
         // settled by the probe, never uploaded again in a new session.
         f.error_after.every_nth = 2;
         f.error_after_status = 504;
         f.method_filter = "PUT";
       }},
      {"AttachmentDoneThenGatewayTimeout",
       [](test::FakeGraphFaults& f) {
         f.error_after.every_nth = 2;
         f.error_after_status = 504;
         f.path_filter = "/attachments";
         f.method_filter = "POST";
       }},
      {"AttachmentDoneThenServiceUnavailable",
       [](test::FakeGraphFaults& f) {
         f.error_after.every_nth = 3;
         f.error_after_status = 503;
         f.path_filter = "/attachments";
         f.method_filter = "POST";
       }},
      {"LastChunkDoneThenServiceUnavailable",
       [](test::FakeGraphFaults& f) {
         f.error_after.every_nth = 2;
         f.error_after_status = 503;
         f.method_filter = "PUT";
       }},
      {"CreateDoneThenServiceUnavailable",
       [](test::FakeGraphFaults& f) {
         f.error_after.every_nth = 3;
         f.error_after_status = 503;
         f.path_filter = "/messages";
         f.method_filter = "POST";
       }},
      {"CreateAnswersLost",
       [](test::FakeGraphFaults& f) {
         f.drop_after.every_nth = 5;
         f.path_filter = "/messages";
         f.method_filter = "POST";
       }},
      {"Everything",
       [](test::FakeGraphFaults& f) {
         f.seed = 5;
         f.error.probability = 0.04;
         f.error_retry_after_s = 1;
         f.drop_before.probability = 0.03;
         f.drop_after.probability = 0.05;
         f.expire_tokens_every_n = 40;
       }},
  };
}

INSTANTIATE_TEST_SUITE_P(Server, GraphExtPropsFaults, ::testing::ValuesIn(ExtPropsFaultCases()),
                         [](const auto& info) { return std::string(info.param.name); });

// An attachment POSTed whole after the create and stored, then answered 503
// or 504 (a front end that gave up on a backend which finished) or not
// answered at all: in doubt, probed, never sent again. The shared corpus has
// no item whose small attachments overflow its create (one image per item),
// so the fault cases above never hit such a POST (only upload-session
// creations); this item is made here: one mixed record with three
// 20,000-byte images; the create holds one, the other two are POSTed after
// it, and every second such POST meets the fault. Sent again, the item
// would carry an image twice.
TEST_F(GraphExtPropsTest, AnAttachmentStoredThenNotAnsweredOkIsNotSentAgain) {
 for (int fault : {503, 504, 0}) {
  SCOPED_TRACE(fault == 0 ? std::string("answer lost") : std::to_string(fault));
  server_.Stop();
  test::TempDir tmp;
  const std::string src = tmp / "src";
  test::WriteFile(src + "/directory.csv",
                  "userid,name,mobile,email\nalice,Alice,,alice@corp.example.com\nbob,Bob,,bob@corp.example.com\n");
  std::string items;
  std::map<std::string, std::string> images;  // md5 -> bytes
  for (int i = 0; i < 3; ++i) {
    std::string bytes(20000, static_cast<char>('a' + i));
    bytes.replace(0, 8, "\x89PNG\r\n\x1a\n");
    const std::string md5 = core::ToHex(core::Md5(bytes));
    test::WriteFile(src + "/media/" + md5, bytes);
    images[md5] = bytes;
    items += fmt::format(
        R"(,{{"type":"image","content":"{{\"md5sum\":\"{}\",\"filesize\":{},\"sdkfileid\":\"img{}\"}}"}})", md5,
        bytes.size(), i);
  }
  test::WriteFile(
      src + "/a.jsonl",
      fmt::format(
          R"({{"msgid":"mix1","action":"send","from":"alice","tolist":["bob"],"roomid":"","msgtime":1700000000000,"msgtype":"mixed","mixed":{{"item":[{{"type":"text","content":"{{\"content\":\"three images\"}}"}}{}]}}}})"
          "\n",
          items));
  FakeGraphServerOptions so;
  so.apps = {{kClientId, kSecret, ""}};
  so.mailboxes = {{"alice@corp.example.com", "", ""}, {"bob@corp.example.com", "", ""}};
  so.tenant = kTenant;
  so.limits.concurrency_retry_after_s = 1;
  so.limits.max_request_body_bytes = kSmallCap;
  so.limits.min_upload_session_bytes = kSmallSessionMin;
  if (fault != 0) {
    so.faults.error_after.every_nth = 2;
    so.faults.error_after_status = fault;
  } else {
    so.faults.drop_after.every_nth = 2;
  }
  so.faults.path_filter = "/attachments";
  so.faults.path_exclude = "createUploadSession";
  so.faults.method_filter = "POST";
  Start(so);
  graph_ = SmallGraph();
  auto o = Options();
  o.source_dir = src;
  o.directory_csv = src + "/directory.csv";
  o.index_dir = tmp / "index";
  o.report_path = tmp / "report.json";
  o.mapping_csv.clear();
  o.mailboxes_file.clear();
  auto r = Import(o);
  EXPECT_EQ(r.counts.deliveries, 2u);
  EXPECT_EQ(r.counts.deliveries_failed, 0u);
  uint64_t fired = 0;
  for (const char* mb : {"alice@corp.example.com", "bob@corp.example.com"}) {
    SCOPED_TRACE(mb);
    fired += server_.Stats(mb).injected_errors + server_.Stats(mb).dropped_after;
    const auto messages = server_.Messages(mb);
    ASSERT_EQ(messages.size(), 1u);
    std::multiset<std::string> got, want;
    for (const auto& a : messages[0].attachments) got.insert(a.bytes);
    for (const auto& [md5, bytes] : images) want.insert(bytes);
    EXPECT_EQ(got.size(), 3u);
    EXPECT_TRUE(got == want) << got.size() << " attachments";
  }
  EXPECT_GT(fired, 0u) << "the fault never fired";
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
 }
}

TEST_P(GraphExtPropsFaults, NothingLostNothingDuplicatedNothingPartial) {
  auto so = SmallServer();
  GetParam().set(so.faults);
  Start(so);
  graph_ = SmallGraph();
  auto r = pipeline::RunImport(Options());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->fatal.ok()) << r->fatal.ToString();
  EXPECT_EQ(r->counts.deliveries_failed, 0u);
  uint64_t fired = 0, removed = 0;
  for (const auto& mb : corpus_->mailboxes) {
    auto st = server_.Stats(mb);
    fired += st.injected_errors + st.dropped_before + st.dropped_after;
    removed += st.permanent_deletes;
  }
  EXPECT_GT(fired, 0u) << "the fault never fired";
  // (Partial items found and removed: the kill -9 test asserts them.)
  (void)removed;
  auto again = pipeline::RunImport(Options());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->fatal.ok()) << again->fatal.ToString();
  EXPECT_EQ(ExpectExactlyOnceJson().items, RefTotal());
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
  server_.SetFaults({});
  EXPECT_TRUE(Verify().clean());
}

// A mailbox refuses writes (403) after an item was created, at one of its
// attachment steps: the partial item is on the server, so the delivery is
// in doubt (the next run's probe finds the partial item by its marker and
// removes it), never failed: a failed delivery is sent again without a
// probe, leaving the partial copy beside the complete one.
TEST_F(GraphExtPropsTest, AMailboxRefusingAnAttachmentStepLeavesNoPartialCopy) {
  auto so = SmallServer();
  so.faults.error.every_nth = 3;
  so.faults.error_status = 403;
  so.faults.error_retry_after = false;
  so.faults.path_filter = "/attachments";
  so.faults.method_filter = "POST";
  Start(so);
  graph_ = SmallGraph();
  auto r = pipeline::RunImport(Options());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  uint64_t fired = 0;
  for (const auto& mb : corpus_->mailboxes) fired += server_.Stats(mb).injected_errors;
  ASSERT_GT(fired, 0u) << "the fault never fired";
  EXPECT_FALSE(r->mailboxes_failed.empty());
  server_.SetFaults({});
  auto again = pipeline::RunImport(Options());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->fatal.ok()) << again->fatal.ToString();
  EXPECT_EQ(ExpectExactlyOnceJson().items, RefTotal());
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
  EXPECT_TRUE(Verify().clean());
}

// The probe counts every page of a marked item's attachment list (a paged
// collection): a complete item is found present, never removed.
TEST_F(GraphExtPropsTest, ProbeCountsEveryPageOfAttachments) {
  auto so = SmallServer();
  so.limits.attachment_page_size = 1;
  Start(so);
  graph_ = SmallGraph();
  auto sink = sinks::MakeGraphSink(sinks::Target{sinks::Target::Kind::kGraph, "graph:", "", "", 0}, graph_);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE((*sink)->Open().ok());
  auto m = std::make_shared<pst::Message>();
  m->subject = "three attachments";
  m->body_plain = "x";
  m->internet_message_id = "<paged@test>";
  m->sender_address = corpus_->mailboxes[0];
  m->sent_time_ms = m->received_time_ms = 1'700'000'000'000;
  for (int i = 0; i < 3; ++i) {
    pst::Attachment a;
    a.filename = "a" + std::to_string(i);
    a.data.assign(20 << 10, char('a' + i));  // 27 KB of base64 each: one fits the 48 KB create
    m->attachments.push_back(std::move(a));
  }
  sinks::Delivery d;
  d.id = 1;
  d.mailbox = corpus_->mailboxes[0];
  d.message_id = "paged@test";
  d.bytes = std::make_shared<const std::string>("unused");
  d.pst_message = m;
  std::promise<sinks::Completion> done;
  (*sink)->Submit(d, [&](uint64_t, sinks::Completion c) { done.set_value(std::move(c)); });
  sinks::Completion c = done.get_future().get();
  ASSERT_EQ(c.kind, sinks::Completion::Kind::kDone) << c.error.ToString();
  auto stored = server_.FindMessage(d.mailbox, "<paged@test>");
  ASSERT_TRUE(stored.has_value());
  ASSERT_EQ(stored->attachments.size(), 3u);
  std::promise<sinks::ProbeResult> probed;
  (*sink)->Probe(d, [&](uint64_t, sinks::ProbeResult r) { probed.set_value(std::move(r)); });
  sinks::ProbeResult r = probed.get_future().get();
  EXPECT_EQ(r.kind, sinks::ProbeResult::Kind::kPresent) << r.error.ToString();
  EXPECT_EQ(r.remote_ref, stored->id);
  EXPECT_EQ(server_.Stats(d.mailbox).permanent_deletes, 0u);
  EXPECT_TRUE(server_.FindMessage(d.mailbox, "<paged@test>").has_value());
  EXPECT_TRUE((*sink)->Close().ok());
}

// What cannot go through Graph at all is reported, with the reason; the
// plan is exact about which attachment goes which way.
TEST(GraphExtPropsPlan, WhichWayEachAttachmentGoes) {
  sinks::GraphOptions o;
  o.max_request_bytes = 64 << 10;
  o.min_upload_session_bytes = 40 << 10;
  pst::Message m;
  m.subject = "s";
  m.body_plain = "hello";
  m.internet_message_id = "<a@b>";
  m.sent_time_ms = m.received_time_ms = 1'600'000'000'123;
  auto att = [](const std::string& name, size_t n) {
    pst::Attachment a;
    a.filename = name;
    a.mime_type = "application/octet-stream";
    a.data.assign(n, 'x');
    return a;
  };
  m.attachments = {att("small", 1000), att("mid", 30 << 10), att("big", 100 << 10), att("mid2", 30 << 10)};
  auto p = sinks::graph::PlanExtProps(m, o);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  // small and mid inline (about 42 KB of base64), mid2 no longer fits: its own POST; big: a session.
  EXPECT_EQ(p->later, (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(p->session, (std::vector<bool>{true, false}));
  EXPECT_LE(p->create_body.size(), o.max_request_bytes);
  EXPECT_NE(p->create_body.find(std::string(sinks::graph::PartsProperty())), std::string::npos);
  EXPECT_NE(p->create_body.find("\"SystemTime 0x0E06\",\"value\":\"2020-09-13T12:26:40Z\""), std::string::npos);
  EXPECT_NE(p->create_body.find("\"Integer 0x0E07\",\"value\":\"1\""), std::string::npos);
  // Everything inline: no marker.
  m.attachments = {att("small", 1000)};
  p = sinks::graph::PlanExtProps(m, o);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->later.empty());
  EXPECT_EQ(p->create_body.find(std::string(sinks::graph::PartsProperty())), std::string::npos);
  // Over the cap in base64 but under the session minimum: no way in.
  o.min_upload_session_bytes = 50 << 10;
  m.attachments = {att("gap", 48 << 10)};
  p = sinks::graph::PlanExtProps(m, o);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().ToString().find("upload session"), std::string::npos);
  // A text alone over the cap.
  m.attachments.clear();
  m.body_plain.assign(70 << 10, 'y');
  p = sinks::graph::PlanExtProps(m, o);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().ToString().find("request cap"), std::string::npos);
}

TEST_F(GraphSinkTest, SecretsNeverShowAndPlainHttpOnlyToLoopback) {
  Start(ServerOptions());
  std::string out;
  int rc = test::Run("WXA_GRAPH_TRACE=1 " + CliBase() + " 2>&1", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("importMime -> 201"), std::string::npos) << "the trace ran";
  const std::string report = test::ReadFile(tmp_ / "report.json");
  for (const std::string& text : {out, report}) {
    EXPECT_EQ(text.find(kSecret), std::string::npos);
    EXPECT_EQ(text.find(sinks::graph::PercentEncode(kSecret)), std::string::npos);
    EXPECT_EQ(text.find("fake."), std::string::npos) << "an access token";
    EXPECT_EQ(text.find("Bearer"), std::string::npos);
  }
  // verify: exit 0, then non-zero once a message is gone.
  out.clear();
  EXPECT_EQ(test::Run(CliVerify() + " 2>&1", &out), 0) << out;
  const std::string victim = corpus_->mailboxes[2];
  auto msgs = server_.Messages(victim);
  ASSERT_FALSE(msgs.empty());
  DeleteOnServer(victim, msgs[0].id);
  out.clear();
  EXPECT_NE(test::Run(CliVerify() + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find(msgs[0].internet_message_id.substr(1, 20)), std::string::npos) << out;
  EXPECT_EQ(out.find(kSecret), std::string::npos);
  // A wrong secret: refused before any work, clearly, without the secret.
  test::WriteFile(tmp_ / "wrong", "not-the-Secret-123\n");
  std::string cmd = CliBase();
  cmd.replace(cmd.find(test::ShellQuote(tmp_ / "secret")), test::ShellQuote(tmp_ / "secret").size(),
              test::ShellQuote(tmp_ / "wrong"));
  out.clear();
  rc = test::Run(cmd + " --rescan 2>&1", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("invalid_client"), std::string::npos) << out;
  EXPECT_EQ(out.find("not-the-Secret-123"), std::string::npos) << out;
  // Plain http to a host that is not loopback: refused at start.
  std::string bad = CliBase("http://graph.example.com");
  out.clear();
  rc = test::Run(bad + " --rescan 2>&1", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("loopback"), std::string::npos) << out;
}

// extprops: the upload URLs' authtoken (a credential for the upload host)
// never shows in the trace or the report, nor does anything else secret.
TEST_F(GraphExtPropsTest, UploadUrlTokensNeverShow) {
  auto so = SmallServer();
  so.limits.max_request_body_bytes = 16384;
  so.limits.min_upload_session_bytes = 4096;
  Start(so);
  std::string out;
  int rc = test::Run("WXA_GRAPH_TRACE=1 " + CliBase() +
                         " --graph-mode extprops --graph-request-cap 16384 --graph-upload-session-min 4096 2>&1",
                     &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("graph: PUT "), std::string::npos) << "chunks were uploaded and traced";
  EXPECT_NE(out.find("AttachmentSessions("), std::string::npos) << "the upload URL's path is traced";
  const std::string report = test::ReadFile(tmp_ / "report.json");
  for (const std::string& text : {out, report}) {
    EXPECT_EQ(text.find("authtoken"), std::string::npos);
    EXPECT_EQ(text.find(kSecret), std::string::npos);
    EXPECT_EQ(text.find("fake."), std::string::npos) << "an access token";
    EXPECT_EQ(text.find("Bearer"), std::string::npos);
  }
}

// kill -9 at moments chosen by progress (the server has stored N more
// items), rerun each time, then a run to the end. Returns the number of
// items the server stored in all (a DELETE does not lower it).
uint64_t KillCampaign(FakeGraphServer& server, const test::Corpus& corpus, const std::vector<std::string>& args,
                      bool by_upload_sessions = false) {
  auto stored = [&] {
    uint64_t n = 0;
    for (const auto& mb : corpus.mailboxes) n += server.Stats(mb).messages;
    return n;
  };
  // Progress: items stored, or upload sessions opened (kills then land
  // between an item's create and its last chunk).
  auto progress = [&] {
    if (!by_upload_sessions) return stored();
    uint64_t n = 0;
    for (const auto& mb : corpus.mailboxes) n += server.Stats(mb).upload_sessions;
    return n;
  };
  std::mt19937_64 rng(static_cast<uint64_t>(std::getenv("WXA_CRASH_SEED") ? std::atol(std::getenv("WXA_CRASH_SEED")) : 4242));
  int kills = 0, runs = 0;
  const int want = 8;
  while (kills < want && runs < want * 3) {
    ++runs;
    const uint64_t before = progress();
    std::uniform_int_distribution<uint64_t> step(1, by_upload_sessions ? 2 : 12);
    const uint64_t kill_at = before + step(rng);
    pid_t pid = test::Spawn(args);
    bool exited = false;
    int st = 0;
    while (true) {
      if (waitpid(pid, &st, WNOHANG) == pid) {
        exited = true;
        break;
      }
      if (progress() >= kill_at) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (exited) {
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "run " << runs;
      break;
    }
    ::kill(pid, SIGKILL);
    EXPECT_EQ(test::WaitExitCode(pid), 128 + SIGKILL);
    ++kills;
    // The server finishes what the killed process had in flight (slow
    // replies included) before the next run starts: a new process cannot
    // know its predecessor's requests, so they would count against its
    // concurrency limit (a 429, handled, but counted as a violation).
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
  }
  EXPECT_GE(kills, want) << "kills must land inside runs (" << runs << " runs)";
  EXPECT_EQ(test::WaitExitCode(test::Spawn(args)), 0);
  std::printf("graph crash campaign: %d kills in %d runs, %lu items stored\n", kills, runs,
              static_cast<unsigned long>(stored()));
  return stored();
}

std::vector<std::string> GraphCliArgs(const test::Corpus& corpus, const std::string& index, const std::string& secret,
                                      const std::string& base) {
  std::vector<std::string> args = test::CliImportArgs(WXA_CLI, corpus.dir, "graph:");
  args.insert(args.end(), {"--index", index, "--graph-tenant", kTenant, "--graph-client-id", kClientId,
                           "--graph-secret-file", secret, "--graph-login-url", base, "--graph-url", base,
                           "--connections", "8"});
  return args;
}

TEST_F(GraphSinkTest, KillNineAnywhereLosesAndDuplicatesNothing) {
  auto so = ServerOptions();
  so.faults.delay.every_nth = 2;  // slower, so kills land mid-run
  so.faults.delay_by = std::chrono::milliseconds(20);
  so.faults.path_filter = "importMime";
  Start(so);
  test::WriteFile(tmp_ / "secret", std::string(kSecret) + "\n");
  auto args = GraphCliArgs(*corpus_, tmp_ / "index", tmp_ / "secret", server_.base_url());
  const uint64_t n = KillCampaign(server_, *corpus_, args);
  EXPECT_EQ(ExpectExactlyOnce(), RefTotal());
  ASSERT_EQ(test::WaitExitCode(test::Spawn(args)), 0);
  uint64_t after = 0;
  for (const auto& mb : corpus_->mailboxes) after += server_.Stats(mb).messages;
  EXPECT_EQ(after, n) << "a rerun of a finished upload sends nothing";
  EXPECT_EQ(server_.TotalViolations(), 0u);
}

// The same with --graph-mode extprops and scaled-down caps, so kills land
// between an item's create and its last attachment or chunk: every partial
// item is found by a later run's probe and replaced.
TEST_F(GraphExtPropsTest, KillNineAnywhereLeavesNothingPartial) {
  // Smaller still: most items with media take several requests.
  constexpr uint64_t kCap = 16384, kSessionMin = 4096;
  auto so = SmallServer();
  so.limits.max_request_body_bytes = kCap;
  so.limits.min_upload_session_bytes = kSessionMin;
  // Chunks are slow: a kill right after a session opens lands mid-upload.
  so.faults.delay.every_nth = 1;
  so.faults.delay_by = std::chrono::milliseconds(100);
  so.faults.method_filter = "PUT";
  Start(so);
  test::WriteFile(tmp_ / "secret", std::string(kSecret) + "\n");
  auto args = GraphCliArgs(*corpus_, tmp_ / "index", tmp_ / "secret", server_.base_url());
  args.insert(args.end(), {"--graph-mode", "extprops", "--graph-request-cap", std::to_string(kCap),
                           "--graph-upload-session-min", std::to_string(kSessionMin)});
  KillCampaign(server_, *corpus_, args, /*by_upload_sessions=*/true);
  uint64_t removed = 0;
  for (const auto& mb : corpus_->mailboxes) removed += server_.Stats(mb).permanent_deletes;
  size_t marked = 0;
  for (const auto& mb : corpus_->mailboxes) {
    for (const auto& m : server_.Messages(mb)) {
      for (const auto& p : m.extended_properties) marked += p.name == sinks::graph::PartsProperty();
    }
  }
  std::printf("items with requests after the create: %zu; partial items removed by probes: %lu\n", marked,
              static_cast<unsigned long>(removed));
  EXPECT_GT(removed, 0u) << "no kill left a partial item";
  EXPECT_EQ(ExpectExactlyOnceJson().items, RefTotal());
  EXPECT_EQ(server_.TotalViolations(), 0u) << server_.StatsJson();
}

// --graph-certificate: a JWT client assertion signed with the app's key
// (RS256, x5t), verified by the server against the registered certificate.
TEST_F(GraphSinkTest, CertificateCredentials) {
  std::string out;
  ASSERT_EQ(test::Run(fmt::format("openssl req -x509 -newkey rsa:2048 -nodes -keyout {} -out {} -subj /CN=wxa-test "
                                  "-days 2 2>&1",
                                  test::ShellQuote(tmp_ / "key.pem"), test::ShellQuote(tmp_ / "cert.pem")),
                      &out),
            0)
      << out;
  test::WriteFile(tmp_ / "client.pem", test::ReadFile(tmp_ / "key.pem") + test::ReadFile(tmp_ / "cert.pem"));
  auto so = ServerOptions();
  so.apps = {{kClientId, "", test::ReadFile(tmp_ / "cert.pem")}};
  Start(so);
  graph_ = GraphOpts();
  graph_.client_secret.clear();
  graph_.certificate_file = tmp_ / "client.pem";
  auto r = Import(Options());
  EXPECT_EQ(r.counts.deliveries, RefTotal());
  EXPECT_EQ(ExpectExactlyOnce(), RefTotal());
  EXPECT_EQ(server_.TokensIssued(), 1u);
  // A key the app does not know: refused at start.
  test::WriteFile(tmp_ / "other.pem", "");
  ASSERT_EQ(test::Run(fmt::format("openssl req -x509 -newkey rsa:2048 -nodes -keyout {} -out {} -subj /CN=other "
                                  "-days 2 2>&1 && cat {} {} > {}",
                                  test::ShellQuote(tmp_ / "k2.pem"), test::ShellQuote(tmp_ / "c2.pem"),
                                  test::ShellQuote(tmp_ / "k2.pem"), test::ShellQuote(tmp_ / "c2.pem"),
                                  test::ShellQuote(tmp_ / "other.pem")),
                      &out),
            0);
  graph_.certificate_file = tmp_ / "other.pem";
  std::filesystem::remove_all(tmp_ / "index");
  auto bad = pipeline::RunImport(Options());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("invalid_client"), std::string::npos) << bad.status().ToString();
  // Read as any file the user names: a device or a directory is refused
  // before a read (/dev/zero would never end), a file without a key is named.
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"/dev/zero", "character device"},
      {tmp_.path(), "directory"},
      {tmp_ / "cert.pem", "no unencrypted RSA private key"},
      {tmp_ / "missing.pem", "does not exist"}};
  for (const auto& [path, why] : refused) {
    graph_.certificate_file = path;
    std::filesystem::remove_all(tmp_ / "index");
    auto r = pipeline::RunImport(Options());
    ASSERT_FALSE(r.ok()) << path;
    EXPECT_NE(r.status().ToString().find("--graph-certificate"), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().ToString().find(why), std::string::npos) << r.status().ToString();
  }
}

TEST(GraphHelpers, QuotingEncodingAndUrls) {
  EXPECT_EQ(sinks::graph::ODataQuote("a'b"), "'a''b'");
  EXPECT_EQ(sinks::graph::PercentEncode("<a+b@c d>'&#%"), "%3Ca%2Bb%40c%20d%3E%27%26%23%25");
  EXPECT_TRUE(sinks::graph::CheckEndpointUrl("x", "https://graph.microsoft.com").ok());
  EXPECT_TRUE(sinks::graph::CheckEndpointUrl("x", "http://127.0.0.1:8080").ok());
  EXPECT_TRUE(sinks::graph::CheckEndpointUrl("x", "http://[::1]:80").ok());
  EXPECT_TRUE(sinks::graph::CheckEndpointUrl("x", "http://localhost").ok());
  EXPECT_FALSE(sinks::graph::CheckEndpointUrl("x", "http://graph.microsoft.com").ok());
  EXPECT_FALSE(sinks::graph::CheckEndpointUrl("x", "http://127.0.0.1@evil.com").ok());
  EXPECT_FALSE(sinks::graph::CheckEndpointUrl("x", "ftp://127.0.0.1").ok());
  EXPECT_EQ(sinks::graph::Base64("hello"), "aGVsbG8=");
  EXPECT_EQ(sinks::graph::Base64(""), "");
  EXPECT_EQ(sinks::graph::Base64Size(5), 8u);
  auto b = sinks::graph::ParseBudget("10000/600");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->first, 10000u);
  EXPECT_EQ(b->second.count(), 600000);
  EXPECT_EQ(sinks::graph::ParseBudget("500/2.5")->second.count(), 2500);
  EXPECT_FALSE(sinks::graph::ParseBudget("500").ok());
  EXPECT_FALSE(sinks::graph::ParseBudget("x/3").ok());
  EXPECT_FALSE(sinks::graph::ParseBudget("5/0").ok());
}

}  // namespace
}  // namespace wxa
