#include "tests/graph/fake_graph_service.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include <simdjson.h>

#include "formats/core/hash.h"
#include "formats/core/json_writer.h"
#include "tests/graph/graph_codec.h"

namespace wxa::test {

const char* ViolationName(FakeGraphViolation v) {
  switch (v) {
    case FakeGraphViolation::kConcurrency: return "concurrency";
    case FakeGraphViolation::kRequestBudget: return "request_budget";
    case FakeGraphViolation::kUploadBudget: return "upload_budget";
    case FakeGraphViolation::kBodyTooLarge: return "body_too_large";
    case FakeGraphViolation::kIgnoredRetryAfter: return "ignored_retry_after";
    case FakeGraphViolation::kBadUploadRange: return "bad_upload_range";
  }
  return "?";
}

uint64_t FakeGraphMailboxStats::total_violations() const {
  uint64_t n = 0;
  for (uint64_t v : violations) n += v;
  return n;
}

namespace graph_internal {
namespace {

namespace codec = graph_codec;
using codec::IEquals;
using core::JsonWriter;
using std::chrono::milliseconds;

constexpr std::string_view kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
constexpr std::string_view kGraphResource = "https://graph.microsoft.com";
constexpr std::string_view kGraphAppId = "00000003-0000-0000-c000-000000000000";

// Well-known folders: (well-known name, display name). Graph accepts the
// well-known name wherever a folder id goes (mailfolder resource docs).
constexpr std::pair<const char*, const char*> kWellKnown[] = {
    {"inbox", "Inbox"},
    {"drafts", "Drafts"},
    {"sentitems", "Sent Items"},
    {"deleteditems", "Deleted Items"},
    {"junkemail", "Junk Email"},
    {"outbox", "Outbox"},
    {"archive", "Archive"},
    {"conversationhistory", "Conversation History"},
};

simdjson::dom::parser& JsonParser() {
  // One parser per thread, reused (STYLE rule 5).
  thread_local simdjson::dom::parser parser;
  return parser;
}

// Graph matches JSON property names case-insensitively ("AttachmentItem" in
// the docs, "attachmentItem" from the SDKs); so do we.
bool Field(simdjson::dom::element obj, std::string_view key, simdjson::dom::element* out) {
  simdjson::dom::object o;
  if (obj.get(o) != simdjson::SUCCESS) return false;
  for (auto kv : o) {
    if (IEquals(kv.key, key)) {
      *out = kv.value;
      return true;
    }
  }
  return false;
}

std::optional<std::string> FieldString(simdjson::dom::element obj, std::string_view key) {
  simdjson::dom::element e;
  std::string_view s;
  if (!Field(obj, key, &e) || e.get(s) != simdjson::SUCCESS) return std::nullopt;
  return std::string(s);
}

std::optional<bool> FieldBool(simdjson::dom::element obj, std::string_view key) {
  simdjson::dom::element e;
  bool b;
  if (!Field(obj, key, &e) || e.get(b) != simdjson::SUCCESS) return std::nullopt;
  return b;
}

std::optional<uint64_t> FieldUint(simdjson::dom::element obj, std::string_view key) {
  simdjson::dom::element e;
  if (!Field(obj, key, &e)) return std::nullopt;
  uint64_t u;
  if (e.get(u) == simdjson::SUCCESS) return u;
  int64_t i;
  if (e.get(i) == simdjson::SUCCESS && i >= 0) return uint64_t(i);
  return std::nullopt;
}

// {"emailAddress":{"name":..,"address":..}} -> address (name ignored).
std::string RecipientAddress(simdjson::dom::element recipient) {
  simdjson::dom::element ea;
  if (!Field(recipient, "emailAddress", &ea)) return "";
  return FieldString(ea, "address").value_or("");
}

std::vector<std::string> RecipientList(simdjson::dom::element obj, std::string_view key) {
  std::vector<std::string> out;
  simdjson::dom::element e;
  simdjson::dom::array arr;
  if (!Field(obj, key, &e) || e.get(arr) != simdjson::SUCCESS) return out;
  for (auto r : arr) out.push_back(RecipientAddress(r));
  return out;
}

void WriteRecipient(JsonWriter& w, std::string_view address) {
  w.BeginObject().Key("emailAddress").BeginObject();
  w.Field("name", address).Field("address", address);
  w.EndObject().EndObject();
}

// "Integer 0x0E07" -> (type "integer", tag 0x0E07). Named properties
// ("String {guid} Name X") return nullopt: they are stored as given.
std::optional<std::pair<std::string, uint32_t>> PropTag(std::string_view id) {
  id = codec::TrimView(id);
  size_t sp = id.find(' ');
  if (sp == std::string_view::npos) return std::nullopt;
  std::string_view type = id.substr(0, sp);
  std::string_view tag = codec::TrimView(id.substr(sp + 1));
  if (!codec::IStartsWith(tag, "0x") || tag.size() < 3 || tag.size() > 10) return std::nullopt;
  uint32_t v = 0;
  for (char c : tag.substr(2)) {
    int d = (c >= '0' && c <= '9') ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                     : -1;
    if (d < 0) return std::nullopt;
    v = v * 16 + uint32_t(d);
  }
  return std::make_pair(codec::Lower(type), v);
}

bool ParseInt64(std::string_view s, int64_t* out) {
  s = codec::TrimView(s);
  if (s.empty()) return false;
  bool neg = s[0] == '-';
  if (neg || s[0] == '+') s.remove_prefix(1);
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = neg ? -v : v;
  return true;
}

bool LooksLikeGraphId(std::string_view id) {
  if (id.empty()) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '=')) return false;
  }
  return true;
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

std::string RequestId(uint64_t n) {
  // GUID-shaped, deterministic per request.
  std::string h = core::ToHex(core::Sha256("request-" + std::to_string(n)));
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" +
         h.substr(20, 12);
}

bool IsWriteMethod(std::string_view m) { return m == "POST" || m == "PUT" || m == "PATCH"; }

std::string BodyPreview(std::string_view content) {
  std::string out;
  for (char c : content) {
    if (out.size() >= 255) break;
    out.push_back(c == '\r' || c == '\n' ? ' ' : c);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// HttpRequest / HttpResponse

std::string_view HttpRequest::Header(std::string_view lower_name) const {
  for (const auto& [k, v] : headers) {
    if (k == lower_name) return v;
  }
  return {};
}

void HttpResponse::Set(std::string name, std::string value) {
  for (auto& [k, v] : headers) {
    if (IEquals(k, name)) {
      v = std::move(value);
      return;
    }
  }
  headers.emplace_back(std::move(name), std::move(value));
}

// ---------------------------------------------------------------------------
// Handler context

struct GraphService::Request {
  Request(const HttpRequest& h, const Plan& p) : http(h), plan(p) {}
  const HttpRequest& http;
  const Plan& plan;
  Mailbox* mb = nullptr;
  std::string version;              // "v1.0" or "beta"
  std::vector<std::string> rest;    // segments after users/{u}
  std::string decoded_mime;         // pre-decoded text/plain body, when valid base64
  bool mime_ok = false;
  const std::map<std::string, std::string>& query() const { return plan.target.query; }
  std::string Query(const std::string& k) const {
    auto it = plan.target.query.find(k);
    return it == plan.target.query.end() ? std::string() : it->second;
  }
  bool HasQuery(const std::string& k) const { return plan.target.query.count(k) > 0; }
};

// ---------------------------------------------------------------------------
// Setup, clock, knobs

Status GraphService::Init(FakeGraphServerOptions options) {
  std::lock_guard<std::mutex> lock(mu_);
  options_ = std::move(options);
  for (const auto& app : options_.apps) {
    if (app.client_id.empty()) return Status::InvalidArgument("fake graph: an app without client_id");
    if (!apps_.emplace(codec::Lower(app.client_id), app).second) {
      return Status::InvalidArgument("fake graph: duplicate app " + app.client_id);
    }
    // A bad key is a test bug: refuse to start rather than fail every assertion.
    if (!app.public_key_pem.empty() && !codec::IsReadableRsaPublicKey(app.public_key_pem)) {
      return Status::InvalidArgument("fake graph: unreadable RSA public key for " + app.client_id);
    }
  }
  for (const auto& spec : options_.mailboxes) {
    if (spec.upn.empty()) return Status::InvalidArgument("fake graph: a mailbox without upn");
    if (mailboxes_.count(codec::Lower(spec.upn))) {
      return Status::InvalidArgument("fake graph: duplicate mailbox " + spec.upn);
    }
    BuildMailbox(spec);
  }
  rng_.seed(options_.faults.seed);
  return Status::Ok();
}

void GraphService::set_base_url(std::string url) {
  std::lock_guard<std::mutex> lock(mu_);
  base_url_ = std::move(url);
}

GraphService::Clock::time_point GraphService::Now() const {
  return Clock::now() + milliseconds(clock_offset_ms_.load());
}

int64_t GraphService::WallNow() const {
  using namespace std::chrono;
  return duration_cast<seconds>(system_clock::now().time_since_epoch()).count() +
         clock_offset_ms_.load() / 1000;
}

void GraphService::SetLimits(const FakeGraphLimits& limits) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.limits = limits;
}

void GraphService::SetFaults(const FakeGraphFaults& faults) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.faults = faults;
  fault_seq_ = 0;
  rng_.seed(faults.seed);
}

void GraphService::ExpireAllTokens() {
  std::lock_guard<std::mutex> lock(mu_);
  auto now = Now();
  for (auto& [k, t] : tokens_) t.expires = std::min(t.expires, now);
}

void GraphService::AdvanceClock(milliseconds by) { clock_offset_ms_ += by.count(); }

void GraphService::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FakeGraphMailbox> specs;
  for (auto& [k, mb] : mailboxes_) specs.push_back(mb.spec);
  mailboxes_.clear();
  mailbox_by_id_.clear();
  for (const auto& s : specs) BuildMailbox(s);
  tokens_.clear();
  sessions_.clear();
  app_in_flight_.clear();
  token_requests_ = tokens_issued_ = graph_requests_ = fault_seq_ = 0;
  rng_.seed(options_.faults.seed);
}

void GraphService::BuildMailbox(const FakeGraphMailbox& spec_in) {
  FakeGraphMailbox spec = spec_in;
  std::string key = codec::Lower(spec.upn);
  if (spec.id.empty()) {
    // Deterministic GUID from the UPN, so ids repeat across runs.
    std::string h = core::ToHex(core::Sha256("mailbox:" + key));
    spec.id = h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" +
              h.substr(20, 12);
  }
  if (spec.display_name.empty()) spec.display_name = spec.upn.substr(0, spec.upn.find('@'));
  Mailbox& mb = mailboxes_[key];
  mb = Mailbox();
  mb.spec = spec;
  mailbox_by_id_[codec::Lower(spec.id)] = key;
  Folder root{NewId("AQMkAD", key + "/root"), "", "Top of Information Store", "msgfolderroot"};
  mb.folders.push_back(root);
  for (const auto& [wk, name] : kWellKnown) {
    mb.folders.push_back({NewId("AQMkAD", key + "/" + wk), root.id, name, wk});
  }
}

std::string GraphService::NewId(std::string_view prefix, std::string_view salt) {
  // base64url with '=' padding, like Graph's REST ids; deterministic per
  // (salt, counter) so runs repeat.
  ++id_counter_;
  auto d = core::Sha256(std::string(salt) + "#" + std::to_string(id_counter_));
  return std::string(prefix) + codec::Base64UrlEncode(std::string_view(reinterpret_cast<const char*>(d.data()), 22), true);
}

// ---------------------------------------------------------------------------
// Responses

HttpResponse GraphService::Json(int status, std::string body) const {
  HttpResponse r;
  r.status = status;
  r.Set("Content-Type", "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8");
  r.body = std::move(body);
  return r;
}

HttpResponse GraphService::GraphError(int status, std::string_view code, std::string_view message) const {
  // {"error":{"code","message","innerError":{...}}} (Graph errors page).
  std::string body;
  JsonWriter w(&body);
  w.BeginObject().Key("error").BeginObject();
  w.Field("code", code).Field("message", message);
  w.Key("innerError").BeginObject().Field("date", codec::FormatIso8601(WallNow())).EndObject();
  w.EndObject().EndObject();
  HttpResponse r = Json(status, std::move(body));
  r.Set("Content-Type", "application/json");
  return r;
}

HttpResponse GraphService::AadError(int status, std::string_view error, int code,
                                    std::string_view description) const {
  // Token endpoint error shape (v2-oauth2-client-creds-grant-flow, "Error response").
  std::string body;
  JsonWriter w(&body);
  std::string ts = codec::FormatIso8601(WallNow());
  w.BeginObject();
  w.Field("error", error);
  w.Field("error_description", "AADSTS" + std::to_string(code) + ": " + std::string(description));
  w.Key("error_codes").BeginArray().Int(code).EndArray();
  w.Field("timestamp", ts);
  w.Field("trace_id", RequestId(uint64_t(code)));
  w.Field("correlation_id", RequestId(uint64_t(code) + 1));
  w.EndObject();
  HttpResponse r;
  r.status = status;
  r.Set("Content-Type", "application/json; charset=utf-8");
  r.body = std::move(body);
  return r;
}

HttpResponse GraphService::InternalError(std::string_view what) const {
  return GraphError(500, "generalException", std::string("fake graph internal error: ") + std::string(what));
}

// ---------------------------------------------------------------------------
// Begin: classify, authenticate, admit, choose faults

ParsedTarget GraphService::ParseTarget(std::string_view target) const {
  ParsedTarget t;
  size_t q = target.find('?');
  t.raw_path = std::string(target.substr(0, q));
  std::string_view path = t.raw_path;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    size_t slash = path.find('/');
    auto seg = codec::PercentDecode(path.substr(0, slash), false);
    if (!seg) {
      t.ok = false;
      return t;
    }
    t.segments.push_back(std::move(*seg));
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
  }
  if (q != std::string_view::npos) {
    auto query = codec::ParseQuery(target.substr(q + 1));
    if (!query) {
      t.ok = false;
      return t;
    }
    for (auto& [k, v] : *query) {
      static const char* kSystem[] = {"filter", "select", "top", "skip", "count", "expand", "orderby", "search"};
      std::string key = k;
      for (const char* s : kSystem) {
        if (IEquals(key, s)) key = std::string("$") + s;  // v1.0 allows the $ to be omitted
      }
      if (key.size() > 1 && key[0] == '$') key = "$" + codec::Lower(key.substr(1));
      t.query.emplace(std::move(key), v);
    }
  }
  return t;
}

RouteKind GraphService::Classify(const ParsedTarget& t) const {
  const auto& s = t.segments;
  if (!s.empty() && s[0] == "_fake") return RouteKind::kFake;
  if (s.size() == 4 && s[1] == "oauth2" && s[2] == "v2.0" && s[3] == "token") return RouteKind::kToken;
  if (s.size() >= 2 && s[0] == "api" && s[1] == "v2.0") return RouteKind::kUpload;
  if (!s.empty()) return RouteKind::kGraph;
  return RouteKind::kNone;
}

std::optional<HttpResponse> GraphService::Authenticate(const HttpRequest& req, std::string* app_id) {
  std::string_view auth = codec::TrimView(req.Header("authorization"));
  auto unauthorized = [&](std::string_view message) {
    HttpResponse r = GraphError(401, "InvalidAuthenticationToken", message);
    r.Set("WWW-Authenticate",
          "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", "
          "client_id=\"00000003-0000-0000-c000-000000000000\"");
    return r;
  };
  if (auth.empty()) return unauthorized("Access token is empty.");
  if (!codec::IStartsWith(auth, "Bearer ")) return unauthorized("Access token validation failure.");
  std::string token(codec::TrimView(auth.substr(7)));
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return unauthorized("Access token validation failure. Invalid audience.");
  if (Now() >= it->second.expires) return unauthorized("Access token has expired or is not yet valid.");
  *app_id = it->second.app_id;
  return std::nullopt;
}

GraphService::Mailbox* GraphService::FindMailbox(std::string_view id_or_upn) {
  return const_cast<Mailbox*>(static_cast<const GraphService*>(this)->FindMailbox(id_or_upn));
}

const GraphService::Mailbox* GraphService::FindMailbox(std::string_view id_or_upn) const {
  std::string key = codec::Lower(id_or_upn);
  auto it = mailboxes_.find(key);
  if (it != mailboxes_.end()) return &it->second;
  auto id = mailbox_by_id_.find(key);
  if (id != mailbox_by_id_.end()) return &mailboxes_.at(id->second);
  return nullptr;
}

void GraphService::CountViolation(Mailbox& mb, FakeGraphViolation v) { ++mb.stats.violations[size_t(v)]; }

uint64_t GraphService::WindowSum(Window& w, Clock::time_point now, milliseconds len) {
  if (options_.limits.window_kind == FakeGraphWindow::kFixed) {
    if (w.started && now >= w.fixed_start + len) {
      // Jump to the window containing `now`.
      auto periods = (now - w.fixed_start) / len;
      w.fixed_start += len * periods;
      w.sum = 0;
    }
    return w.sum;
  }
  while (!w.events.empty() && w.events.front().first + len <= now) {
    w.sum -= w.events.front().second;
    w.events.pop_front();
  }
  return w.sum;
}

milliseconds GraphService::WindowWait(Window& w, Clock::time_point now, milliseconds len, uint64_t limit,
                                      uint64_t amount) {
  using std::chrono::duration_cast;
  if (options_.limits.window_kind == FakeGraphWindow::kFixed) {
    return duration_cast<milliseconds>(w.fixed_start + len - now);
  }
  // The earliest time enough old usage has left the window for `amount` to fit.
  uint64_t sum = w.sum;
  for (const auto& [t, n] : w.events) {
    sum -= n;
    if (sum + amount <= limit) return duration_cast<milliseconds>(t + len - now);
  }
  return len;
}

void GraphService::WindowAdd(Window& w, Clock::time_point now, uint64_t amount) {
  if (amount == 0) return;
  if (options_.limits.window_kind == FakeGraphWindow::kFixed) {
    if (!w.started) {
      w.started = true;
      w.fixed_start = now;
    }
    w.sum += amount;
    return;
  }
  w.events.emplace_back(now, amount);
  w.sum += amount;
}

HttpResponse GraphService::Throttle(Mailbox& mb, Usage& u, std::string_view limit_name, int retry_after_s) {
  ++mb.stats.throttled;
  retry_after_s = std::max(retry_after_s, 0);
  auto now = Now();
  if (now + std::chrono::seconds(retry_after_s) > u.throttled_until) {
    u.throttled_at = now;
    u.throttled_until = now + std::chrono::seconds(retry_after_s);
  }
  // Body as reported by third parties ("Application is over its
  // MailboxConcurrency limit." / "... IncomingBytes limit.").
  HttpResponse r = GraphError(429, "ApplicationThrottled",
                              "Application is over its " + std::string(limit_name) + " limit.");
  r.Set("Retry-After", std::to_string(retry_after_s));
  return r;
}

void GraphService::Admit(const HttpRequest& req, Mailbox& mb, Plan* plan) {
  const FakeGraphLimits& lim = options_.limits;
  auto now = Now();
  Usage& u = mb.usage[plan->app_id];
  uint64_t body = req.body.size();

  // 413 comes from the front door: Outlook never sees the request, so it does
  // not use the mailbox's budgets (it is still a client bug: a violation).
  if (body > lim.max_request_body_bytes) {
    CountViolation(mb, FakeGraphViolation::kBodyTooLarge);
    plan->response = GraphError(413, "RequestEntityTooLarge", "The maximum request length supported is 4MB.");
    plan->response->Set("Connection", "close");
    return;
  }

  // Requests that arrive within the grace after a 429 were already on the
  // wire (other workers of the same client); later ones ignored Retry-After.
  if (now < u.throttled_until && now >= u.throttled_at + lim.retry_after_grace) {
    CountViolation(mb, FakeGraphViolation::kIgnoredRetryAfter);
  }

  // Usage is counted even when the request is then throttled: "Microsoft
  // Graph continues to log resource usage while a client is being throttled"
  // (throttling guidance).
  ++mb.stats.requests;
  uint64_t requests_before = WindowSum(u.requests, now, lim.request_window);
  WindowAdd(u.requests, now, 1);
  uint64_t upload = IsWriteMethod(req.method) ? body : 0;
  uint64_t uploads_before = WindowSum(u.uploads, now, lim.upload_window);
  WindowAdd(u.uploads, now, upload);
  mb.stats.upload_bytes += upload;

  int in_flight = lim.concurrency_scope == FakeGraphConcurrencyScope::kPerApp ? app_in_flight_[plan->app_id]
                                                                             : u.in_flight;
  mb.stats.peak_concurrency = std::max(mb.stats.peak_concurrency, in_flight + 1);

  std::optional<HttpResponse> refuse;
  if (in_flight + 1 > lim.max_concurrent) {
    CountViolation(mb, FakeGraphViolation::kConcurrency);
    if (lim.enforce) refuse = Throttle(mb, u, "MailboxConcurrency", lim.concurrency_retry_after_s);
  }
  if (!refuse && requests_before + 1 > lim.request_budget) {
    CountViolation(mb, FakeGraphViolation::kRequestBudget);
    auto wait = WindowWait(u.requests, now, lim.request_window, lim.request_budget, 1);
    // Assumed wording: only the concurrency and IncomingBytes texts are on record.
    if (lim.enforce) refuse = Throttle(mb, u, "RequestRate", int((wait.count() + 999) / 1000));
  }
  if (!refuse && upload > 0 && uploads_before + upload > lim.upload_budget_bytes) {
    CountViolation(mb, FakeGraphViolation::kUploadBudget);
    auto wait = WindowWait(u.uploads, now, lim.upload_window, lim.upload_budget_bytes, upload);
    if (lim.enforce) refuse = Throttle(mb, u, "IncomingBytes", int((wait.count() + 999) / 1000));
  }
  if (refuse) {
    plan->response = std::move(refuse);
    return;
  }
  plan->admitted = true;
  ++u.in_flight;
  ++app_in_flight_[plan->app_id];
}

bool GraphService::RuleFires(const FakeGraphFaultRule& rule, uint64_t seq) {
  bool fire = rule.every_nth > 0 && seq % rule.every_nth == 0;
  if (rule.probability > 0) {
    // Always draw, so one rule's outcome does not shift another's sequence.
    double x = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
    fire = fire || x < rule.probability;
  }
  return fire;
}

void GraphService::ChooseFaults(const HttpRequest& req, const ParsedTarget& t, Plan* plan, bool in_batch) {
  const FakeGraphFaults& f = options_.faults;
  if (!f.path_filter.empty() && t.raw_path.find(f.path_filter) == std::string::npos) return;
  if (!f.method_filter.empty() && !IEquals(f.method_filter, req.method)) return;
  if (!f.path_exclude.empty() && t.raw_path.find(f.path_exclude) != std::string::npos) return;
  uint64_t seq = ++fault_seq_;
  bool error = RuleFires(f.error, seq);
  bool delay = RuleFires(f.delay, seq);
  bool drop_before = RuleFires(f.drop_before, seq);
  bool drop_after = RuleFires(f.drop_after, seq);
  bool error_after = RuleFires(f.error_after, seq);
  Mailbox* mb = plan->mailbox_key.empty() ? nullptr : &mailboxes_.at(plan->mailbox_key);
  if (in_batch) {
    // Inside a $batch only error answers make sense; drops and delays apply
    // to the outer request.
    if (error) {
      plan->fault_status = f.error_status;
      if (mb) ++mb->stats.injected_errors;
    }
    return;
  }
  if (delay && f.delay_by.count() > 0) {
    plan->delay = f.delay_by;
    if (mb) ++mb->stats.injected_delays;
  }
  // One failure per request; the earliest in the request's life wins.
  if (drop_before) {
    plan->drop = Plan::Drop::kBefore;
    if (mb) ++mb->stats.dropped_before;
  } else if (error) {
    plan->fault_status = f.error_status;
    if (mb) ++mb->stats.injected_errors;
  } else if (drop_after) {
    plan->drop = Plan::Drop::kAfter;
    if (mb) ++mb->stats.dropped_after;
  } else if (error_after) {
    plan->fault_status_after = f.error_after_status;
    if (mb) ++mb->stats.injected_errors;
  }
}

std::optional<HttpResponse> GraphService::CheckHeader(const HttpRequest& head, uint64_t content_length) {
  std::lock_guard<std::mutex> lock(mu_);
  if (content_length <= options_.limits.max_request_body_bytes) return std::nullopt;
  ParsedTarget t = ParseTarget(head.target);
  RouteKind kind = Classify(t);
  // A $batch body is read anyway: the 413 is charged to the mailboxes its
  // requests name, which only the body tells.
  if (kind == RouteKind::kGraph && t.segments.size() == 2 && t.segments[1] == "$batch") return std::nullopt;
  Mailbox* mb = nullptr;
  if (kind == RouteKind::kGraph && t.segments.size() >= 3 && IEquals(t.segments[1], "users")) {
    mb = FindMailbox(t.segments[2]);
  } else if (kind == RouteKind::kUpload) {
    for (auto& [id, s] : sessions_) {
      if (t.raw_path.find(id) != std::string::npos) mb = &mailboxes_.at(s.mailbox_key);
    }
  }
  if (mb) CountViolation(*mb, FakeGraphViolation::kBodyTooLarge);
  HttpResponse r = GraphError(413, "RequestEntityTooLarge", "The maximum request length supported is 4MB.");
  r.Set("Connection", "close");
  return r;
}

Plan GraphService::Begin(const HttpRequest& req, bool in_batch) {
  Plan plan;
  std::lock_guard<std::mutex> lock(mu_);
  plan.target = ParseTarget(req.target);
  if (!plan.target.ok) {
    plan.response = GraphError(400, "BadRequest", "Malformed percent-encoding in the request URL.");
    return plan;
  }
  plan.kind = Classify(plan.target);
  const auto& seg = plan.target.segments;
  switch (plan.kind) {
    case RouteKind::kNone:
    case RouteKind::kBatch:  // never from Classify; found under kGraph below
      plan.response = GraphError(404, "NotFound", "No resource at this path.");
      return plan;
    case RouteKind::kFake:
      return plan;
    case RouteKind::kToken:
      ChooseFaults(req, plan.target, &plan, in_batch);
      return plan;
    case RouteKind::kUpload: {
      // .../AttachmentSessions('<id>'), matched on the decoded path so a
      // client that encodes the quotes still reaches its session.
      auto decoded = codec::PercentDecode(plan.target.raw_path, false).value_or("");
      size_t at = decoded.find("AttachmentSessions('");
      size_t end = at == std::string::npos ? at : decoded.find("')", at + 20);
      std::string id = end == std::string::npos ? "" : decoded.substr(at + 20, end - at - 20);
      auto it = sessions_.find(id);
      if (it == sessions_.end()) {
        plan.response = GraphError(404, "ErrorItemNotFound", "The upload session was not found or has ended.");
        return plan;
      }
      if (plan.target.query.count("authtoken") == 0 || plan.target.query.at("authtoken") != it->second.auth_token) {
        plan.response = GraphError(401, "InvalidAuthenticationToken", "The upload URL's authtoken is not valid.");
        return plan;
      }
      if (options_.reject_authorization_on_upload && !req.Header("authorization").empty()) {
        // attachment-createuploadsession: "Do not specify an Authorization
        // request header"; the URL is pre-authenticated for outlook.office.com.
        plan.response = GraphError(401, "InvalidAuthenticationToken",
                                   "Do not send an Authorization header to a pre-authenticated upload URL.");
        return plan;
      }
      plan.upload_session = id;
      plan.app_id = it->second.app_id;
      plan.mailbox_key = it->second.mailbox_key;
      CountGraphRequest();
      Admit(req, mailboxes_.at(plan.mailbox_key), &plan);
      break;
    }
    case RouteKind::kGraph: {
      if (auto unauthorized = Authenticate(req, &plan.app_id)) {
        plan.response = std::move(unauthorized);
        return plan;
      }
      if (seg[0] != "v1.0" && seg[0] != "beta") {
        plan.response = GraphError(400, "BadRequest", "Invalid version: " + seg[0]);
        return plan;
      }
      if (seg.size() == 2 && seg[1] == "$batch") {
        // The batch itself is not an Outlook request: each individual
        // request is evaluated against the limits (json-batching).
        plan.kind = RouteKind::kBatch;
        if (in_batch) {
          plan.response = GraphError(400, "BadRequest", "A batch cannot contain a batch.");
        } else if (req.body.size() > options_.limits.max_request_body_bytes) {
          CountBatchBodyTooLarge(req);
          plan.response = GraphError(413, "RequestEntityTooLarge", "The maximum request length supported is 4MB.");
          plan.response->Set("Connection", "close");
        } else if (req.method != "POST") {
          plan.response = GraphError(405, "BadRequest", "$batch takes POST.");
        } else {
          ChooseFaults(req, plan.target, &plan, false);
        }
        return plan;
      }
      CountGraphRequest();
      if (seg.size() >= 2 && IEquals(seg[1], "me")) {
        plan.response = GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.");
        return plan;
      }
      if (seg.size() < 3 || !IEquals(seg[1], "users")) {
        plan.response = GraphError(400, "BadRequest",
                                   "Resource not found for the segment '" + (seg.size() > 1 ? seg[1] : seg[0]) + "'.");
        return plan;
      }
      Mailbox* mb = FindMailbox(seg[2]);
      if (mb == nullptr) {
        if (seg.size() == 3) {
          // users/{id} is the directory (Identity and access service).
          plan.response = GraphError(404, "Request_ResourceNotFound",
                                     "Resource '" + seg[2] +
                                         "' does not exist or one of its queried reference-property objects are not present.");
        } else {
          plan.response = GraphError(404, "ErrorInvalidUser", "The requested user '" + seg[2] + "' is invalid.");
        }
        return plan;
      }
      plan.mailbox_key = codec::Lower(mb->spec.upn);
      // The user object is a directory read, not an Outlook resource: it is
      // outside the mailbox limits (throttling-limits, "Outlook service resources").
      if (seg.size() > 3) Admit(req, *mb, &plan);
      break;
    }
  }
  if (!plan.response) ChooseFaults(req, plan.target, &plan, in_batch);
  return plan;
}

void GraphService::CountGraphRequest() {
  // mu_ held. The Nth authenticated request is served; every token dies after it.
  ++graph_requests_;
  uint64_t every = options_.faults.expire_tokens_every_n;
  if (every > 0 && graph_requests_ % every == 0) {
    auto now = Now();
    for (auto& [k, t] : tokens_) t.expires = std::min(t.expires, now);
  }
}

void GraphService::Finish(Plan* plan) {
  if (!plan->admitted) return;
  std::lock_guard<std::mutex> lock(mu_);
  plan->admitted = false;
  auto it = mailboxes_.find(plan->mailbox_key);
  if (it != mailboxes_.end()) {
    Usage& u = it->second.usage[plan->app_id];
    u.in_flight = std::max(0, u.in_flight - 1);
  }
  int& n = app_in_flight_[plan->app_id];
  n = std::max(0, n - 1);
}

// ---------------------------------------------------------------------------
// Execute

HttpResponse GraphService::Execute(const HttpRequest& req, const Plan& plan) {
  if (plan.response) return *plan.response;
  HttpResponse r;
  if (plan.fault_status != 0) {
    std::lock_guard<std::mutex> lock(mu_);
    const FakeGraphFaults& f = options_.faults;
    if (plan.fault_status == 429) {
      Mailbox* mb = plan.mailbox_key.empty() ? nullptr : &mailboxes_.at(plan.mailbox_key);
      if (mb) return Throttle(*mb, mb->usage[plan.app_id], "MailboxConcurrency", f.error_retry_after_s);
      r = GraphError(429, "TooManyRequests", "Please retry again later.");
    } else {
      r = GraphError(plan.fault_status, plan.fault_status == 504 ? "GatewayTimeout" : "ServiceUnavailable",
                     "Injected fault: the service is temporarily unavailable.");
    }
    if (f.error_retry_after) r.Set("Retry-After", std::to_string(f.error_retry_after_s));
    return r;
  }
  switch (plan.kind) {
    case RouteKind::kFake: return HandleFake(req, plan);
    case RouteKind::kToken: return HandleToken(req, plan);
    case RouteKind::kUpload: r = HandleUpload(req, plan); break;
    case RouteKind::kGraph: r = HandleGraph(req, plan); break;
    case RouteKind::kBatch: return HandleBatch(req, plan);
    case RouteKind::kNone: return GraphError(404, "NotFound", "No resource at this path.");
  }
  if (plan.fault_status_after != 0) {
    // Done, and the answer lost behind a failing gateway.
    return GraphError(plan.fault_status_after, plan.fault_status_after == 504 ? "GatewayTimeout" : "InternalServerError",
                      "Injected fault after processing.");
  }
  return r;
}

// ---- /_fake/* : test control, never counted or faulted ----
HttpResponse GraphService::HandleFake(const HttpRequest& req, const Plan& plan) {
  const auto& s = plan.target.segments;
  std::string what = s.size() > 1 ? s[1] : "";
  if (req.method == "GET" && what == "stats") return Json(200, StatsJson());
  if (req.method == "GET" && what == "messages") {
    auto it = plan.target.query.find("mailbox");
    if (it == plan.target.query.end()) return GraphError(400, "BadRequest", "mailbox= is required");
    std::string body;
    JsonWriter w(&body);
    w.BeginArray();
    for (const auto& m : Messages(it->second)) {
      w.BeginObject();
      w.Field("id", m.id).Field("folderId", m.folder_id).Field("folderName", m.folder_name);
      w.Field("source", m.source == FakeGraphMessage::Source::kImportMime ? "importMime"
                        : m.source == FakeGraphMessage::Source::kJson   ? "json"
                                                                         : "mimeDraft");
      w.Field("internetMessageId", m.internet_message_id).Field("subject", m.subject);
      w.Field("isDraft", m.is_draft).Field("isRead", m.is_read);
      w.Field("receivedDateTime", m.received_date_time).Field("sentDateTime", m.sent_date_time);
      w.Field("rawMimeBytes", uint64_t(m.raw_mime.size()));
      w.Field("rawMimeSha256", m.raw_mime.empty() ? "" : core::ToHex(core::Sha256(m.raw_mime)));
      w.Key("attachments").BeginArray();
      for (const auto& a : m.attachments) {
        w.BeginObject().Field("name", a.name).Field("size", uint64_t(a.bytes.size()));
        w.Field("sha256", core::ToHex(core::Sha256(a.bytes))).Field("viaUploadSession", a.via_upload_session);
        w.EndObject();
      }
      w.EndArray().EndObject();
    }
    w.EndArray();
    return Json(200, std::move(body));
  }
  if (req.method == "POST" && what == "reset") {
    Reset();
    HttpResponse r;
    r.status = 204;
    return r;
  }
  if (req.method == "POST" && what == "expire-tokens") {
    ExpireAllTokens();
    HttpResponse r;
    r.status = 204;
    return r;
  }
  return GraphError(404, "NotFound", "Unknown /_fake endpoint.");
}

// ---- token endpoint: /{tenant}/oauth2/v2.0/token ----
HttpResponse GraphService::HandleToken(const HttpRequest& req, const Plan& plan) {
  std::lock_guard<std::mutex> lock(mu_);
  ++token_requests_;
  if (req.method != "POST") return AadError(405, "invalid_request", 900561, "The endpoint only accepts POST requests.");
  const std::string& tenant = plan.target.segments[0];
  bool tenant_ok = IEquals(tenant, options_.tenant);
  for (const auto& alias : options_.tenant_aliases) tenant_ok = tenant_ok || IEquals(tenant, alias);
  if (!tenant_ok) return AadError(400, "invalid_request", 90002, "Tenant '" + tenant + "' not found.");
  if (codec::MediaType(req.Header("content-type")) != "application/x-www-form-urlencoded") {
    return AadError(400, "invalid_request", 900144,
                    "The request body must contain the following parameter: 'grant_type'.");
  }
  auto form = codec::ParseQuery(req.body);
  if (!form) return AadError(400, "invalid_request", 900144, "The request body is not valid form data.");
  auto param = [&](const char* k) {
    auto it = form->find(k);
    return it == form->end() ? std::string() : it->second;
  };
  auto missing = [&](const char* k) {
    return AadError(400, "invalid_request", 900144,
                    std::string("The request body must contain the following parameter: '") + k + "'.");
  };
  std::string grant = param("grant_type");
  if (grant.empty()) return missing("grant_type");
  if (grant != "client_credentials") {
    return AadError(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '" + grant + "'.");
  }
  // Client secret may come as HTTP Basic instead (documented as supported).
  std::string client_id = param("client_id");
  std::string secret = param("client_secret");
  std::string_view auth = codec::TrimView(req.Header("authorization"));
  if (codec::IStartsWith(auth, "Basic ")) {
    auto userpass = codec::Base64Decode(codec::TrimView(auth.substr(6))).value_or("");
    size_t colon = userpass.find(':');
    if (colon != std::string::npos) {
      client_id = codec::PercentDecode(userpass.substr(0, colon), true).value_or("");
      secret = codec::PercentDecode(userpass.substr(colon + 1), true).value_or("");
    }
  }
  if (client_id.empty()) return missing("client_id");
  std::string scope = param("scope");
  if (scope.empty()) return missing("scope");
  if (scope.size() < 9 || scope.substr(scope.size() - 9) != "/.default" || scope.find(' ') != std::string::npos) {
    return AadError(400, "invalid_scope", 1002012,
                    "The provided value for scope " + scope +
                        " is not valid. Client credential flows must have a scope value with /.default suffixed "
                        "to the resource identifier (application ID URI).");
  }
  std::string resource = scope.substr(0, scope.size() - 9);
  if (!IEquals(resource, kGraphResource) && !IEquals(resource, kGraphAppId) &&
      !IEquals(resource, std::string(kGraphResource) + "/")) {
    return AadError(400, "invalid_resource", 500011,
                    "The resource principal named " + resource + " was not found in the tenant.");
  }
  auto app_it = apps_.find(codec::Lower(client_id));
  if (app_it == apps_.end()) {
    return AadError(400, "unauthorized_client", 700016,
                    "Application with identifier '" + client_id + "' was not found in the directory '" + tenant + "'.");
  }
  const FakeGraphApp& app = app_it->second;
  std::string assertion = param("client_assertion");
  std::string assertion_type = param("client_assertion_type");
  if (!assertion.empty() && !secret.empty()) {
    return AadError(400, "invalid_request", 90014, "Only one client credential (secret or assertion) may be presented.");
  }
  if (!assertion.empty() || !assertion_type.empty()) {
    if (assertion_type != kJwtBearer) {
      return AadError(400, "invalid_request", 50027,
                      "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.");
    }
    if (assertion.empty()) return missing("client_assertion");
    if (app.public_key_pem.empty()) {
      return AadError(401, "invalid_client", 700027, "Client assertion failed signature validation. No key is registered.");
    }
    codec::JwtClaims claims;
    switch (codec::VerifyJwt(assertion, app.public_key_pem, &claims)) {
      case codec::JwtError::kOk: break;
      case codec::JwtError::kMalformed:
        return AadError(400, "invalid_client", 50027, "JWT token is invalid or malformed.");
      case codec::JwtError::kAlgorithm:
        return AadError(401, "invalid_client", 5002738, "Invalid JWT token. '" + claims.alg + "' is not a supported signature algorithm.");
      case codec::JwtError::kKey:
      case codec::JwtError::kSignature:
        return AadError(401, "invalid_client", 700027, "Client assertion failed signature validation.");
    }
    // aud: the token endpoint itself (certificate-credentials). Accept the
    // real login host and this server's own URL for the same tenant.
    std::string path = "/" + tenant + "/oauth2/v2.0/token";
    bool aud_ok = false;
    for (const auto& a : claims.aud) {
      aud_ok = aud_ok || a == "https://login.microsoftonline.com" + path || a == base_url_ + path;
    }
    if (!aud_ok) {
      return AadError(401, "invalid_client", 50013,
                      "Assertion audience claim does not match the required value: https://login.microsoftonline.com" + path);
    }
    if (claims.iss != client_id || claims.sub != client_id) {
      return AadError(401, "invalid_client", 700021,
                      "Client assertion application identifier doesn't match 'client_id' parameter.");
    }
    int64_t now = WallNow();
    int skew = options_.assertion_skew_s;
    if (!claims.exp || *claims.exp + skew <= now || (claims.nbf && *claims.nbf - skew > now)) {
      return AadError(401, "invalid_client", 700024, "Client assertion is not within its valid time range.");
    }
  } else if (!secret.empty()) {
    if (app.client_secret.empty() || secret != app.client_secret) {
      return AadError(401, "invalid_client", 7000215,
                      "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                      "secret value, not the client secret ID, for a secret added to app '" + client_id + "'.");
    }
  } else {
    return AadError(401, "invalid_client", 7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
  }
  // Opaque bearer token; real ones are JWTs, but clients must not parse them.
  ++tokens_issued_;
  std::string token = "fake." + core::ToHex(core::Sha256(client_id + "/" + std::to_string(secret_rng_())));
  tokens_[token] = Token{codec::Lower(client_id), Now() + std::chrono::seconds(options_.token_lifetime_s)};
  std::string body;
  JsonWriter w(&body);
  w.BeginObject().Field("token_type", "Bearer").Field("expires_in", options_.token_lifetime_s);
  w.Field("ext_expires_in", options_.token_lifetime_s).Field("access_token", token).EndObject();
  HttpResponse r;
  r.Set("Content-Type", "application/json; charset=utf-8");
  r.Set("Cache-Control", "no-store, no-cache");
  r.body = std::move(body);
  return r;
}

// ---- upload URL: PUT chunks / DELETE cancels ----
HttpResponse GraphService::HandleUpload(const HttpRequest& req, const Plan& plan) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(plan.upload_session);
  if (it == sessions_.end()) return GraphError(404, "ErrorItemNotFound", "The upload session was not found or has ended.");
  UploadSession& s = it->second;
  Mailbox& mb = mailboxes_.at(s.mailbox_key);
  if (req.method == "DELETE") {
    sessions_.erase(it);
    HttpResponse r;
    r.status = 204;
    return r;
  }
  if (req.method != "PUT") return GraphError(405, "ErrorInvalidRequest", "Upload URLs take PUT or DELETE.");
  auto next_ranges = [&](int status) {
    std::string body;
    JsonWriter w(&body);
    w.BeginObject().Field("expirationDateTime", codec::FormatIso8601(s.expires_epoch));
    w.Key("nextExpectedRanges").BeginArray().String(std::to_string(s.data.size())).EndArray().EndObject();
    return Json(status, std::move(body));
  };
  // Content-Range: bytes {start}-{end}/{total} (outlook-large-attachments, step 2).
  std::string_view range = codec::TrimView(req.Header("content-range"));
  uint64_t a = 0, b = 0, total = 0;
  bool parsed = false;
  if (codec::IStartsWith(range, "bytes ")) {
    std::string r(range.substr(6));
    unsigned long long aa, bb, tt;
    char tail;
    if (std::sscanf(r.c_str(), "%llu-%llu/%llu%c", &aa, &bb, &tt, &tail) == 3 && aa <= bb && bb < tt) {
      a = aa, b = bb, total = tt;
      parsed = true;
    }
  }
  if (!parsed || total != s.size || b - a + 1 != req.body.size()) {
    CountViolation(mb, FakeGraphViolation::kBadUploadRange);
    return GraphError(400, "ErrorInvalidRequest",
                      "Content-Range must be 'bytes start-end/total' matching the body length and the session size.");
  }
  if (a != s.data.size()) {
    // A gap is a client bug; a re-sent chunk (after a lost reply) is not.
    // Either way the answer tells where to resume. Assumed status: the docs
    // only say "You must upload bytes in a file in order".
    if (a > s.data.size()) {
      CountViolation(mb, FakeGraphViolation::kBadUploadRange);
    } else {
      ++mb.stats.upload_range_rejections;
    }
    return next_ranges(416);
  }
  s.data.append(req.body);
  if (s.data.size() < s.size) return next_ranges(200);

  Message* msg = FindMessageById(mb, s.message_id);
  if (msg == nullptr) {
    sessions_.erase(it);
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.");
  }
  FakeGraphAttachment att;
  att.id = NewId("AAMkAD", s.message_id + "/att");
  att.name = s.name;
  att.content_type = s.content_type.empty() ? "application/octet-stream" : s.content_type;
  att.content_id = s.content_id;
  att.is_inline = s.is_inline;
  att.via_upload_session = true;
  att.bytes = std::move(s.data);
  msg->size_bytes += att.bytes.size();
  std::string location = base_url_ + "/api/v2.0/Users('" + mb.spec.id + "@" + options_.tenant + "')/Messages('" +
                         msg->m.id + "')/Attachments('" + att.id + "')";
  msg->m.attachments.push_back(std::move(att));
  sessions_.erase(it);
  HttpResponse r;
  r.status = 201;
  r.Set("Location", location);
  return r;
}

// ---- $batch (json-batching) ----
void GraphService::CountBatchBodyTooLarge(const HttpRequest& req) {
  // mu_ held. One violation per mailbox named by the batch's requests.
  simdjson::dom::element doc, reqs;
  simdjson::dom::array arr;
  if (JsonParser().parse(req.body).get(doc) != simdjson::SUCCESS || !Field(doc, "requests", &reqs) ||
      reqs.get(arr) != simdjson::SUCCESS) {
    return;
  }
  std::vector<Mailbox*> seen;
  for (auto item : arr) {
    std::string url = FieldString(item, "url").value_or("");
    ParsedTarget t = ParseTarget("/v/" + url.substr(url.find_first_not_of('/') == std::string::npos ? 0 : url.find_first_not_of('/')));
    if (t.segments.size() < 3 || !IEquals(t.segments[1], "users")) continue;
    Mailbox* mb = FindMailbox(t.segments[2]);
    if (mb && std::find(seen.begin(), seen.end(), mb) == seen.end()) {
      seen.push_back(mb);
      CountViolation(*mb, FakeGraphViolation::kBodyTooLarge);
    }
  }
}

HttpResponse GraphService::HandleBatch(const HttpRequest& req, const Plan& plan) {
  constexpr size_t kMaxRequests = 20;  // "limited to 20 individual requests"
  constexpr size_t kParallel = 4;      // Outlook runs up to 4 of them at once
  const std::string& version = plan.target.segments[0];
  if (codec::MediaType(req.Header("content-type")) != "application/json") {
    return GraphError(400, "BadRequest", "A $batch body must be application/json.");
  }
  struct Item {
    std::string id;
    HttpRequest http;
    std::vector<std::string> depends;
    std::optional<HttpResponse> early;  // refused before running
    HttpResponse response;
    bool done = false;
  };
  std::vector<Item> items;
  {
    // Copy everything out of the DOM first: the individual requests reuse
    // this thread's parser.
    simdjson::dom::element doc, reqs;
    simdjson::dom::array arr;
    if (JsonParser().parse(req.body).get(doc) != simdjson::SUCCESS || !Field(doc, "requests", &reqs) ||
        reqs.get(arr) != simdjson::SUCCESS) {
      return GraphError(400, "BadRequest", "Invalid batch payload: 'requests' is required.");
    }
    if (arr.size() == 0 || arr.size() > kMaxRequests) {
      return GraphError(400, "BadRequest", "Number of requests exceeds the limit of 20.");
    }
    for (auto e : arr) {
      Item it;
      it.id = FieldString(e, "id").value_or("");
      std::string method = FieldString(e, "method").value_or("");
      std::string url = FieldString(e, "url").value_or("");
      if (it.id.empty() || method.empty() || url.empty()) {
        return GraphError(400, "BadRequest", "Each batch request needs id, method and url.");
      }
      for (const auto& other : items) {
        if (IEquals(other.id, it.id)) return GraphError(400, "BadRequest", "Batch request ids must be unique.");
      }
      for (char& c : method) c = char(std::toupper(static_cast<unsigned char>(c)));
      it.http.method = method;
      if (codec::IStartsWith(url, "http:") || codec::IStartsWith(url, "https:")) {
        it.early = GraphError(400, "BadRequest", "Batch request URLs must be relative, e.g. /users/{id}.");
      }
      size_t start = url.find_first_not_of('/');
      it.http.target = "/" + version + "/" + (start == std::string::npos ? "" : url.substr(start));
      // The individual requests run with the batch's credentials.
      it.http.headers.emplace_back("authorization", std::string(req.Header("authorization")));
      simdjson::dom::element h;
      simdjson::dom::object ho;
      if (Field(e, "headers", &h) && h.get(ho) == simdjson::SUCCESS) {
        for (auto kv : ho) {
          std::string_view v;
          if (kv.value.get(v) == simdjson::SUCCESS) it.http.headers.emplace_back(codec::Lower(kv.key), std::string(v));
        }
      }
      simdjson::dom::element body;
      if (Field(e, "body", &body)) {
        std::string_view text;
        if (body.get(text) == simdjson::SUCCESS) {
          // "a base64 URL-encoded value" for non-JSON bodies; the SDKs send
          // standard base64, so both alphabets are read.
          auto decoded = codec::Base64Decode(text);
          if (!decoded) decoded = codec::Base64UrlDecode(text);
          if (!decoded) {
            it.early = GraphError(400, "BadRequest", "A string body in a batch must be base64.");
          } else {
            it.http.body = std::move(*decoded);
          }
        } else {
          it.http.body = simdjson::to_string(body);
        }
        if (it.http.Header("content-type").empty()) {
          it.early = GraphError(400, "BadRequest", "A batch request with a body needs a Content-Type header.");
        }
      }
      simdjson::dom::element deps;
      simdjson::dom::array deps_arr;
      if (Field(e, "dependsOn", &deps) && deps.get(deps_arr) == simdjson::SUCCESS) {
        for (auto d : deps_arr) {
          std::string_view v;
          if (d.get(v) == simdjson::SUCCESS) it.depends.emplace_back(v);
        }
      }
      items.push_back(std::move(it));
    }
  }

  auto run_wave = [&](const std::vector<size_t>& wave) {
    // Admit the whole wave first, so its requests hold their slots together,
    // as parallel execution in Outlook would.
    std::vector<Plan> plans(wave.size());
    for (size_t k = 0; k < wave.size(); ++k) {
      Item& it = items[wave[k]];
      if (it.early) continue;
      plans[k] = Begin(it.http, /*in_batch=*/true);
    }
    for (size_t k = 0; k < wave.size(); ++k) {
      Item& it = items[wave[k]];
      it.response = it.early ? *it.early : Execute(it.http, plans[k]);
      Finish(&plans[k]);
      it.done = true;
    }
  };
  bool sequential = false;
  for (const auto& it : items) sequential = sequential || !it.depends.empty();
  if (sequential) {
    // "Batch should be either fully sequential or fully parallel": with any
    // dependsOn, the requests run one at a time in array order.
    for (size_t i = 0; i < items.size(); ++i) {
      bool failed_dep = false;
      for (const auto& d : items[i].depends) {
        for (const auto& other : items) {
          if (IEquals(other.id, d) && (!other.done || other.response.status / 100 != 2)) failed_dep = true;
        }
      }
      if (failed_dep) {
        items[i].response = GraphError(424, "FailedDependency", "A request this one depends on failed.");
        items[i].done = true;
        continue;
      }
      run_wave({i});
    }
  } else {
    for (size_t i = 0; i < items.size(); i += kParallel) {
      std::vector<size_t> wave;
      for (size_t k = i; k < std::min(items.size(), i + kParallel); ++k) wave.push_back(k);
      run_wave(wave);
    }
  }

  std::string out = "{\"responses\":[";
  for (size_t i = 0; i < items.size(); ++i) {
    const HttpResponse& r = items[i].response;
    if (i) out += ",";
    out += "{\"id\":";
    core::AppendJsonString(&out, items[i].id);
    out += ",\"status\":" + std::to_string(r.status) + ",\"headers\":{";
    std::string content_type;
    bool first = true;
    for (const auto& [k, v] : r.headers) {
      if (IEquals(k, "content-type")) content_type = v;
      if (IEquals(k, "connection")) continue;
      if (!first) out += ",";
      first = false;
      core::AppendJsonString(&out, k);
      out += ":";
      core::AppendJsonString(&out, v);
    }
    out += "}";
    if (!r.body.empty()) {
      out += ",\"body\":";
      if (content_type.find("json") != std::string::npos) {
        out += r.body;
      } else {
        core::AppendJsonString(&out, codec::Base64Encode(r.body));  // non-JSON bodies come back base64
      }
    }
    out += "}";
  }
  out += "]}";
  return Json(200, std::move(out));
}

// ---- Graph: /{version}/users/{u}[/...] ----
HttpResponse GraphService::HandleGraph(const HttpRequest& req, const Plan& plan) {
  const auto& seg = plan.target.segments;
  Request r(req, plan);
  r.version = seg[0];
  r.rest.assign(seg.begin() + 3, seg.end());
  // Decode a text/plain (base64 MIME) body before taking the lock: it is the
  // one expensive step.
  if (req.method == "POST" && codec::MediaType(req.Header("content-type")) == "text/plain") {
    auto d = codec::Base64Decode(req.body);
    r.mime_ok = d.has_value() && !d->empty();
    if (d) r.decoded_mime = std::move(*d);
  }
  std::lock_guard<std::mutex> lock(mu_);
  r.mb = &mailboxes_.at(plan.mailbox_key);
  if (r.rest.empty()) {
    if (req.method != "GET") return GraphError(405, "Request_BadRequest", "Method not allowed on users.");
    const auto& spec = r.mb->spec;
    std::string body;
    JsonWriter w(&body);
    w.BeginObject().Field("@odata.context", base_url_ + "/" + r.version + "/$metadata#users/$entity");
    w.Field("id", spec.id).Field("displayName", spec.display_name).Field("mail", spec.upn);
    w.Field("userPrincipalName", spec.upn).EndObject();
    return Json(200, std::move(body));
  }
  return HandleMail(r);
}

HttpResponse GraphService::HandleMail(Request& r) {
  const auto& rest = r.rest;
  const std::string& m = r.http.method;
  Mailbox& mb = *r.mb;
  auto not_found_segment = [&](const std::string& s) {
    return GraphError(400, "BadRequest", "Resource not found for the segment '" + s + "'.");
  };
  auto folder_or_error = [&](const std::string& id, const Folder** out) -> std::optional<HttpResponse> {
    *out = ResolveFolder(mb, id);
    if (*out) return std::nullopt;
    if (!LooksLikeGraphId(id)) return GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.");
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.");
  };

  // Message sub-routes: messages/{id}[/...] or mailFolders/{f}/messages/{id}[/...]
  size_t msg_at = std::string::npos;
  const Folder* scope_folder = nullptr;
  if (IEquals(rest[0], "messages")) {
    if (rest.size() >= 2 && rest[1] != "$count") msg_at = 1;
  } else if (IEquals(rest[0], "mailFolders") && rest.size() >= 4 && IEquals(rest[2], "messages") &&
             rest[3] != "$count") {
    if (auto err = folder_or_error(rest[1], &scope_folder)) return *err;
    msg_at = 3;
  }
  if (msg_at != std::string::npos) {
    Message* msg = FindMessageById(mb, rest[msg_at]);
    if (msg == nullptr || (scope_folder && msg->m.folder_id != scope_folder->id)) {
      if (!LooksLikeGraphId(rest[msg_at])) return GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.");
      return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.");
    }
    std::vector<std::string> tail(rest.begin() + msg_at + 1, rest.end());
    if (tail.empty()) {
      if (m == "GET") return GetMessage(r, *msg);
      if (m == "DELETE") {
        RemoveMessage(mb, msg->seq);
        HttpResponse resp;
        resp.status = 204;
        return resp;
      }
      // PATCH is not modelled: NOTES report Exchange Online rejects later
      // writes to the message flags, and the sink has no other use for it.
      return GraphError(501, "NotImplementedInFake", "The fake Graph server does not implement " + m + " on messages.");
    }
    if (tail.size() == 1 && IEquals(tail[0], "permanentDelete")) {
      // message-permanentdelete: POST, no body, 204 (v1.0 and beta).
      if (m != "POST") return GraphError(405, "ErrorInvalidRequest", "permanentDelete takes POST.");
      if (!r.http.body.empty()) return GraphError(400, "BadRequest", "permanentDelete takes no request body.");
      RemoveMessage(mb, msg->seq);
      ++mb.stats.permanent_deletes;
      HttpResponse resp;
      resp.status = 204;
      return resp;
    }
    if (tail.size() == 1 && tail[0] == "$value" && m == "GET") {
      if (msg->m.raw_mime.empty()) {
        return GraphError(501, "NotImplementedInFake", "MIME of JSON-created items is not synthesized by the fake.");
      }
      HttpResponse resp;
      resp.Set("Content-Type", "text/plain");
      resp.body = msg->m.raw_mime;
      return resp;
    }
    if (IEquals(tail[0], "attachments")) {
      if (tail.size() == 1 && m == "POST") return AddAttachment(r, *msg);
      if (tail.size() == 1 && m == "GET") {
        const auto& all = msg->m.attachments;
        const size_t page = options_.limits.attachment_page_size > 0 ? size_t(options_.limits.attachment_page_size)
                                                                     : all.size() + 1;
        size_t skip = 0;
        if (r.HasQuery("$skip")) skip = std::strtoull(r.Query("$skip").c_str(), nullptr, 10);
        const size_t end = std::min(all.size(), skip + page);
        std::string body;
        JsonWriter w(&body);
        w.BeginObject().Key("value").BeginArray();
        for (size_t i = std::min(skip, all.size()); i < end; ++i) {
          const auto& a = all[i];
          w.BeginObject().Field("@odata.type", "#microsoft.graph.fileAttachment").Field("id", a.id);
          w.Field("name", a.name).Field("contentType", a.content_type).Field("size", uint64_t(a.bytes.size()));
          w.Field("isInline", a.is_inline).EndObject();
        }
        w.EndArray();
        if (end < all.size()) w.Field("@odata.nextLink", NextLink(r, int64_t(page), end));
        w.EndObject();
        return Json(200, std::move(body));
      }
      if (tail.size() == 2 && IEquals(tail[1], "createUploadSession") && m == "POST") {
        return CreateUploadSession(r, *msg);
      }
    }
    return not_found_segment(tail.back());
  }

  if (IEquals(rest[0], "messages")) {
    if (rest.size() == 1 && m == "GET") return ListMessages(r, nullptr, false);
    if (rest.size() == 2 && rest[1] == "$count" && m == "GET") return ListMessages(r, nullptr, true);
    if (rest.size() == 1 && m == "POST") {
      // POST /users/{id}/messages saves into Drafts (user-post-messages).
      const Folder* drafts = ResolveFolder(mb, "drafts");
      if (codec::MediaType(r.http.Header("content-type")) == "text/plain") return CreateMimeMessage(r, drafts->id, false);
      return CreateJsonMessage(r, drafts->id);
    }
    return not_found_segment(rest.back());
  }
  if (!IEquals(rest[0], "mailFolders")) return not_found_segment(rest[0]);

  if (rest.size() == 1) {
    if (m == "GET") return ListFolders(r, mb.folders[0].id);
    if (m == "POST") return CreateFolder(r, mb.folders[0].id);
    return GraphError(405, "ErrorInvalidRequest", "Method not allowed.");
  }
  const Folder* folder = nullptr;
  if (auto err = folder_or_error(rest[1], &folder)) return *err;
  std::string folder_id = folder->id;  // folders may grow below; keep a copy
  if (rest.size() == 2 && m == "GET") {
    std::string body;
    WriteFolderJson(&body, mb, *folder);
    return Json(200, std::move(body));
  }
  if (rest.size() == 3 && IEquals(rest[2], "childFolders")) {
    if (m == "GET") return ListFolders(r, folder_id);
    if (m == "POST") return CreateFolder(r, folder_id);
  }
  if (rest.size() == 3 && IEquals(rest[2], "messages")) {
    if (m == "GET") return ListMessages(r, &folder_id, false);
    if (m == "POST") {
      if (codec::MediaType(r.http.Header("content-type")) == "text/plain") return CreateMimeMessage(r, folder_id, false);
      return CreateJsonMessage(r, folder_id);
    }
  }
  if (rest.size() == 4 && IEquals(rest[2], "messages") && rest[3] == "$count" && m == "GET") {
    return ListMessages(r, &folder_id, true);
  }
  if (rest.size() == 3 && IEquals(rest[2], "importMime") && m == "POST") {
    // mailfolder-importmime exists only under /beta.
    if (r.version != "beta") return not_found_segment(rest[2]);
    return CreateMimeMessage(r, folder_id, true);
  }
  return not_found_segment(rest.back());
}

// ---- folders ----
const GraphService::Folder* GraphService::ResolveFolder(const Mailbox& mb, std::string_view id_or_name) const {
  for (const auto& f : mb.folders) {
    if (f.id == id_or_name) return &f;
  }
  for (const auto& f : mb.folders) {
    if (!f.well_known.empty() && IEquals(f.well_known, id_or_name)) return &f;
  }
  return nullptr;
}

uint64_t GraphService::FolderItemCount(const Mailbox& mb, const std::string& folder_id) const {
  auto it = mb.folder_counts.find(folder_id);
  return it == mb.folder_counts.end() ? 0 : it->second.first;
}

std::string GraphService::FolderName(const Mailbox& mb, const std::string& folder_id) const {
  for (const auto& f : mb.folders) {
    if (f.id == folder_id) return f.display_name;
  }
  return "";
}

void GraphService::WriteFolderJson(std::string* out, const Mailbox& mb, const Folder& f) const {
  JsonWriter w(out);
  uint64_t children = 0;
  for (const auto& c : mb.folders) children += c.parent_id == f.id;
  auto counts = mb.folder_counts.find(f.id);
  uint64_t total = counts == mb.folder_counts.end() ? 0 : counts->second.first;
  uint64_t unread = counts == mb.folder_counts.end() ? 0 : counts->second.second;
  w.BeginObject().Field("id", f.id).Field("displayName", f.display_name).Field("parentFolderId", f.parent_id);
  w.Field("childFolderCount", children).Field("unreadItemCount", unread).Field("totalItemCount", total);
  w.Field("isHidden", false).EndObject();
}

// The same URL with $top/$skip for the next page; clients must follow it
// verbatim (paging docs), so it is absolute and fully encoded.
std::string GraphService::NextLink(const Request& r, int64_t top, size_t skip) const {
  auto q = r.query();
  q["$top"] = std::to_string(top);
  q["$skip"] = std::to_string(skip);
  std::string link = base_url_ + r.plan.target.raw_path + "?";
  bool first = true;
  for (const auto& [k, v] : q) {
    link += (first ? "" : "&") + codec::PercentEncode(k) + "=" + codec::PercentEncode(v);
    first = false;
  }
  return link;
}

HttpResponse GraphService::ListFolders(Request& r, const std::string& parent_id) {
  Mailbox& mb = *r.mb;
  std::optional<codec::EqFilter> filter;
  if (r.HasQuery("$filter")) {
    filter = codec::ParseEqFilter(r.Query("$filter"));
    if (!filter || !IEquals(filter->property, "displayName")) {
      return GraphError(400, "BadRequest", "Invalid filter clause: the fake supports displayName eq '...'.");
    }
  }
  std::vector<const Folder*> match;
  for (const auto& f : mb.folders) {
    if (f.parent_id != parent_id) continue;
    // Exchange folder names compare case-insensitively.
    if (filter && !IEquals(f.display_name, filter->value)) continue;
    match.push_back(&f);
  }
  int64_t top = options_.limits.default_page_size, skip = 0;
  if (r.HasQuery("$top") && (!ParseInt64(r.Query("$top"), &top) || top < 1 || top > options_.limits.max_page_size)) {
    return GraphError(400, "BadRequest", "Invalid $top value.");
  }
  if (r.HasQuery("$skip") && (!ParseInt64(r.Query("$skip"), &skip) || skip < 0)) {
    return GraphError(400, "BadRequest", "Invalid $skip value.");
  }
  std::string body = "{\"@odata.context\":";
  core::AppendJsonString(&body, base_url_ + "/" + r.version + "/$metadata#users('" + mb.spec.id + "')/mailFolders");
  if (r.Query("$count") == "true") body += ",\"@odata.count\":" + std::to_string(match.size());
  body += ",\"value\":[";
  size_t end = std::min(match.size(), size_t(skip + top));
  for (size_t i = size_t(skip); i < end; ++i) {
    if (i != size_t(skip)) body += ",";
    WriteFolderJson(&body, mb, *match[i]);
  }
  body += "]";
  if (end < match.size()) {
    body += ",\"@odata.nextLink\":";
    core::AppendJsonString(&body, NextLink(r, top, end));
  }
  body += "}";
  return Json(200, std::move(body));
}

HttpResponse GraphService::CreateFolder(Request& r, const std::string& parent_id) {
  Mailbox& mb = *r.mb;
  simdjson::dom::element doc;
  if (JsonParser().parse(r.http.body).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return GraphError(400, "BadRequest", "Unable to read JSON request payload.");
  }
  auto name = FieldString(doc, "displayName");
  if (!name || codec::TrimView(*name).empty()) {
    return GraphError(400, "ErrorInvalidRequest", "The folder displayName is required.");
  }
  for (const auto& f : mb.folders) {
    if (f.parent_id == parent_id && IEquals(f.display_name, *name)) {
      return GraphError(options_.folder_exists_status, "ErrorFolderExists", "A folder with the specified name already exists.");
    }
  }
  mb.folders.push_back({NewId("AAMkAD", mb.spec.upn + "/folder"), parent_id, *name, ""});
  std::string body;
  WriteFolderJson(&body, mb, mb.folders.back());
  body.insert(1, "\"@odata.context\":\"" + base_url_ + "/" + r.version + "/$metadata#users('" + mb.spec.id +
                     "')/mailFolders/$entity\",");
  return Json(201, std::move(body));
}

// ---- messages ----
GraphService::Message* GraphService::FindMessageById(Mailbox& mb, std::string_view id) {
  auto it = mb.by_id.find(std::string(id));
  return it == mb.by_id.end() ? nullptr : &mb.messages.at(it->second);
}

GraphService::Message& GraphService::StoreMessage(Mailbox& mb, Message msg) {
  msg.seq = mb.next_seq++;
  msg.change_key = "CQAAAB" + Hex(msg.seq);
  msg.m.folder_name = FolderName(mb, msg.m.folder_id);
  uint64_t seq = msg.seq;
  mb.by_id[msg.m.id] = seq;
  mb.by_imid.emplace(msg.m.internet_message_id, seq);
  auto& counts = mb.folder_counts[msg.m.folder_id];
  ++counts.first;
  counts.second += !msg.m.is_read;
  ++mb.stats.messages;
  mb.stats.drafts += msg.m.is_draft;
  return mb.messages.emplace(seq, std::move(msg)).first->second;
}

void GraphService::RemoveMessage(Mailbox& mb, uint64_t seq) {
  auto it = mb.messages.find(seq);
  if (it == mb.messages.end()) return;
  const FakeGraphMessage& m = it->second.m;
  mb.by_id.erase(m.id);
  auto range = mb.by_imid.equal_range(m.internet_message_id);
  for (auto i = range.first; i != range.second; ++i) {
    if (i->second == seq) {
      mb.by_imid.erase(i);
      break;
    }
  }
  auto& counts = mb.folder_counts[m.folder_id];
  --counts.first;
  counts.second -= !m.is_read;
  mb.messages.erase(it);
}

void GraphService::WriteMessageJson(std::string* out, const Mailbox& mb, const Message& msg,
                                    const std::vector<std::string>& select,
                                    const std::optional<std::string>& expand_filter) const {
  const FakeGraphMessage& m = msg.m;
  auto want = [&](std::string_view p) {
    if (select.empty()) {
      // Default shape: everything but the opt-in properties.
      return !IEquals(p, "internetMessageHeaders") && !IEquals(p, "uniqueBody");
    }
    for (const auto& s : select) {
      if (IEquals(s, p)) return true;
    }
    return false;
  };
  JsonWriter w(out);
  w.BeginObject();
  w.Field("@odata.etag", "W/\"" + msg.change_key + "\"");
  w.Field("id", m.id);
  if (want("createdDateTime")) w.Field("createdDateTime", m.created_date_time);
  if (want("lastModifiedDateTime")) w.Field("lastModifiedDateTime", m.created_date_time);
  if (want("changeKey")) w.Field("changeKey", msg.change_key);
  if (want("categories")) w.Key("categories").BeginArray().EndArray();
  if (want("receivedDateTime")) w.Field("receivedDateTime", m.received_date_time);
  if (want("sentDateTime")) w.Field("sentDateTime", m.sent_date_time);
  if (want("hasAttachments")) w.Field("hasAttachments", !m.attachments.empty() || msg.mime_has_attachments);
  if (want("internetMessageId")) w.Field("internetMessageId", m.internet_message_id);
  if (want("subject")) w.Field("subject", m.subject);
  if (want("bodyPreview")) w.Field("bodyPreview", BodyPreview(m.body_content));
  if (want("importance")) w.Field("importance", "normal");
  if (want("parentFolderId")) w.Field("parentFolderId", m.folder_id);
  if (want("conversationId")) w.Field("conversationId", "AAQkAD" + codec::Base64UrlEncode(m.internet_message_id.substr(0, 12), true));
  if (want("isRead")) w.Field("isRead", m.is_read);
  if (want("isDraft")) w.Field("isDraft", m.is_draft);
  if (want("body")) {
    w.Key("body").BeginObject().Field("contentType", m.body_content_type.empty() ? "text" : m.body_content_type);
    w.Field("content", m.body_content).EndObject();
  }
  if (want("from")) {
    w.Key("from");
    if (m.from_address.empty()) w.Null(); else WriteRecipient(w, m.from_address);
  }
  if (want("sender")) {
    w.Key("sender");
    if (m.from_address.empty()) w.Null(); else WriteRecipient(w, m.from_address);
  }
  if (want("toRecipients")) {
    w.Key("toRecipients").BeginArray();
    for (const auto& a : m.to_addresses) WriteRecipient(w, a);
    w.EndArray();
  }
  if (want("ccRecipients")) w.Key("ccRecipients").BeginArray().EndArray();
  if (want("bccRecipients")) w.Key("bccRecipients").BeginArray().EndArray();
  if (want("replyTo")) w.Key("replyTo").BeginArray().EndArray();
  if (!select.empty() && want("internetMessageHeaders")) {
    w.Key("internetMessageHeaders").BeginArray();
    for (const auto& h : m.headers) w.BeginObject().Field("name", h.name).Field("value", h.value).EndObject();
    w.EndArray();
  }
  if (expand_filter) {
    std::optional<codec::EqFilter> f;
    if (!expand_filter->empty()) f = codec::ParseEqFilter(*expand_filter);
    w.Key("singleValueExtendedProperties").BeginArray();
    for (const auto& p : m.extended_properties) {
      if (f && !IEquals(p.name, f->value)) continue;
      w.BeginObject().Field("id", p.name).Field("value", p.value).EndObject();
    }
    w.EndArray();
  }
  w.EndObject();
  (void)mb;
}

HttpResponse GraphService::GetMessage(Request& r, const Message& msg) {
  std::vector<std::string> select;
  if (r.HasQuery("$select")) {
    std::string s = r.Query("$select");
    size_t pos = 0;
    while (pos <= s.size()) {
      size_t comma = s.find(',', pos);
      std::string one(codec::TrimView(std::string_view(s).substr(pos, comma - pos)));
      if (!one.empty()) select.push_back(one);
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
  std::optional<std::string> expand;
  if (r.HasQuery("$expand")) expand = codec::ExpandedExtendedPropertyFilter(r.Query("$expand"));
  std::string body;
  WriteMessageJson(&body, *r.mb, msg, select, expand);
  body.insert(1, "\"@odata.context\":\"" + base_url_ + "/" + r.version + "/$metadata#users('" + r.mb->spec.id +
                     "')/messages/$entity\",");
  return Json(200, std::move(body));
}

HttpResponse GraphService::ListMessages(Request& r, const std::string* folder_id, bool count_only) {
  Mailbox& mb = *r.mb;
  // Filters: internetMessageId eq '...', or a single-value extended property.
  std::optional<codec::EqFilter> eq;
  std::optional<codec::ExtendedPropertyFilter> ext;
  if (r.HasQuery("$filter")) {
    std::string f = r.Query("$filter");
    eq = codec::ParseEqFilter(f);
    if (eq && !IEquals(eq->property, "internetMessageId") && !IEquals(eq->property, "subject")) eq.reset();
    if (!eq) ext = codec::ParseExtendedPropertyFilter(f);
    if (!eq && !ext) {
      return GraphError(400, "BadRequest",
                        "Invalid filter clause: the fake supports internetMessageId eq '...', subject eq '...' and "
                        "singleValueExtendedProperties/Any(ep: ep/id eq '...' and ep/value eq '...').");
    }
  }
  // Candidates: the internetMessageId index when that is the filter, else
  // everything; newest first, like a folder view sorted by receivedDateTime desc.
  std::vector<const Message*> candidates;
  if (eq && IEquals(eq->property, "internetMessageId")) {
    auto range = mb.by_imid.equal_range(eq->value);
    for (auto i = range.first; i != range.second; ++i) candidates.push_back(&mb.messages.at(i->second));
    std::sort(candidates.begin(), candidates.end(), [](const Message* a, const Message* b) { return a->seq > b->seq; });
  } else {
    for (auto it = mb.messages.rbegin(); it != mb.messages.rend(); ++it) candidates.push_back(&it->second);
  }
  std::vector<const Message*> match;
  for (const Message* cand : candidates) {
    const FakeGraphMessage& m = cand->m;
    if (folder_id && m.folder_id != *folder_id) continue;
    if (eq) {
      const std::string& v = IEquals(eq->property, "subject") ? m.subject : m.internet_message_id;
      if (v != eq->value) continue;
    }
    if (ext) {
      bool hit = false;
      for (const auto& p : m.extended_properties) {
        hit = hit || (IEquals(p.name, ext->id) && p.value == ext->value);
      }
      if (!hit) continue;
    }
    match.push_back(cand);
  }
  if (count_only) {
    HttpResponse resp;
    resp.Set("Content-Type", "text/plain; charset=utf-8");
    resp.body = std::to_string(match.size());
    return resp;
  }
  int64_t top = options_.limits.default_page_size, skip = 0;
  if (r.HasQuery("$top") && (!ParseInt64(r.Query("$top"), &top) || top < 0 || top > options_.limits.max_page_size)) {
    return GraphError(400, "BadRequest", "Invalid $top value.");
  }
  if (r.HasQuery("$skip") && (!ParseInt64(r.Query("$skip"), &skip) || skip < 0)) {
    return GraphError(400, "BadRequest", "Invalid $skip value.");
  }
  std::vector<std::string> select;
  if (r.HasQuery("$select")) {
    std::string s = r.Query("$select");
    size_t pos = 0;
    while (true) {
      size_t comma = s.find(',', pos);
      std::string one(codec::TrimView(std::string_view(s).substr(pos, comma - pos)));
      if (!one.empty()) select.push_back(one);
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
  std::optional<std::string> expand;
  if (r.HasQuery("$expand")) expand = codec::ExpandedExtendedPropertyFilter(r.Query("$expand"));
  std::string body = "{";
  body += "\"@odata.context\":";
  core::AppendJsonString(&body, base_url_ + "/" + r.version + "/$metadata#users('" + mb.spec.id + "')/messages");
  if (r.Query("$count") == "true") body += ",\"@odata.count\":" + std::to_string(match.size());
  body += ",\"value\":[";
  size_t end = std::min(match.size(), size_t(skip + top));
  for (size_t i = size_t(skip); i < end; ++i) {
    if (i != size_t(skip)) body += ",";
    WriteMessageJson(&body, mb, *match[i], select, expand);
  }
  body += "]";
  if (end < match.size()) {
    body += ",\"@odata.nextLink\":";
    core::AppendJsonString(&body, NextLink(r, top, end));
  }
  body += "}";
  return Json(200, std::move(body));
}

HttpResponse GraphService::CreateJsonMessage(Request& r, const std::string& folder_id) {
  Mailbox& mb = *r.mb;
  if (codec::MediaType(r.http.Header("content-type")) != "application/json") {
    return GraphError(415, "UnsupportedMediaType", "Use application/json for a message object or text/plain for MIME.");
  }
  simdjson::dom::element doc;
  if (JsonParser().parse(r.http.body).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return GraphError(400, "BadRequest", "Unable to read JSON request payload.");
  }
  Message msg;
  FakeGraphMessage& m = msg.m;
  m.source = FakeGraphMessage::Source::kJson;
  m.folder_id = folder_id;
  m.subject = FieldString(doc, "subject").value_or("");
  simdjson::dom::element e;
  if (Field(doc, "body", &e)) {
    m.body_content_type = codec::Lower(FieldString(e, "contentType").value_or("text"));
    m.body_content = FieldString(e, "content").value_or("");
  }
  if (Field(doc, "from", &e)) m.from_address = RecipientAddress(e);
  m.to_addresses = RecipientList(doc, "toRecipients");
  m.internet_message_id = FieldString(doc, "internetMessageId").value_or("");

  simdjson::dom::array arr;
  if (Field(doc, "internetMessageHeaders", &e) && e.get(arr) == simdjson::SUCCESS) {
    for (auto h : arr) {
      std::string name = FieldString(h, "name").value_or("");
      // Only custom headers may be set (third-party reports of
      // InvalidInternetMessageHeader for In-Reply-To and friends).
      if (!codec::IStartsWith(name, "x-")) {
        return GraphError(400, "InvalidInternetMessageHeader",
                          "The internet message header name '" + name + "' should start with 'x-' or 'X-'.");
      }
      m.headers.push_back({name, FieldString(h, "value").value_or("")});
    }
  }

  int64_t now = WallNow();
  std::optional<int64_t> flags, delivery, submit;
  if (Field(doc, "singleValueExtendedProperties", &e) && e.get(arr) == simdjson::SUCCESS) {
    for (auto p : arr) {
      std::string id = FieldString(p, "id").value_or("");
      std::string value = FieldString(p, "value").value_or("");
      if (id.empty()) return GraphError(400, "ErrorInvalidExtendedProperty", "An extended property needs an id.");
      auto tag = PropTag(id);
      if (tag && tag->second == 0x0E07) {
        int64_t v;
        if (tag->first != "integer" || !ParseInt64(value, &v)) {
          return GraphError(400, "ErrorInvalidExtendedPropertyValue", "PR_MESSAGE_FLAGS takes an Integer value.");
        }
        flags = v;
      } else if (tag && (tag->second == 0x0E06 || tag->second == 0x0039)) {
        auto t = codec::ParseIso8601(value);
        if (tag->first != "systemtime" || !t) {
          return GraphError(400, "ErrorInvalidExtendedPropertyValue", "A SystemTime value must be an ISO 8601 date.");
        }
        (tag->second == 0x0E06 ? delivery : submit) = *t;
      }
      m.extended_properties.push_back({id, value});
    }
  }
  // PidTagMessageFlags: a created item is unsent (a draft) unless the flags
  // are set at creation without mfUnsent (0x8) (MS-OXCMSG 2.2.1.6; NOTES).
  m.is_draft = flags ? (*flags & 0x8) != 0 : true;
  m.is_read = flags ? (*flags & 0x1) != 0 : true;
  if (auto read = FieldBool(doc, "isRead")) m.is_read = *read;
  // receivedDateTime / sentDateTime in the JSON are ignored on create (NOTES).
  m.received_date_time = codec::FormatIso8601(delivery.value_or(now));
  m.sent_date_time = codec::FormatIso8601(submit.value_or(now));
  m.created_date_time = codec::FormatIso8601(now);

  uint64_t size = r.http.body.size();
  if (Field(doc, "attachments", &e) && e.get(arr) == simdjson::SUCCESS) {
    for (auto a : arr) {
      std::string type = FieldString(a, "@odata.type").value_or("");
      if (!IEquals(type, "#microsoft.graph.fileAttachment") && !IEquals(type, "microsoft.graph.fileAttachment")) {
        return GraphError(501, "NotImplementedInFake", "The fake accepts only #microsoft.graph.fileAttachment.");
      }
      auto bytes = codec::Base64Decode(FieldString(a, "contentBytes").value_or(""));
      if (!bytes) return GraphError(400, "ErrorInvalidRequest", "contentBytes is not valid base64.");
      FakeGraphAttachment att;
      att.name = FieldString(a, "name").value_or("");
      att.content_type = FieldString(a, "contentType").value_or("application/octet-stream");
      att.content_id = FieldString(a, "contentId").value_or("");
      att.is_inline = FieldBool(a, "isInline").value_or(false);
      att.bytes = std::move(*bytes);
      size += att.bytes.size();
      m.attachments.push_back(std::move(att));
    }
  }
  if (size > options_.limits.max_message_bytes) {
    return GraphError(400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.");
  }
  for (auto& att : m.attachments) att.id = NewId("AAMkAD", mb.spec.upn + "/att");
  m.id = NewId("AAMkAD", mb.spec.upn + "/msg");
  if (m.internet_message_id.empty()) m.internet_message_id = "<" + Hex(id_counter_) + "@fake.graph.local>";
  if (options_.keep_raw) m.raw_json = r.http.body;
  msg.size_bytes = size;
  const Message& stored = StoreMessage(mb, std::move(msg));

  std::string body;
  std::vector<std::string> no_select;
  WriteMessageJson(&body, mb, stored, no_select, std::nullopt);
  body.insert(1, "\"@odata.context\":\"" + base_url_ + "/" + r.version + "/$metadata#users('" + mb.spec.id +
                     "')/messages/$entity\",");
  return Json(201, std::move(body));
}

HttpResponse GraphService::CreateMimeMessage(Request& r, const std::string& folder_id, bool import) {
  Mailbox& mb = *r.mb;
  if (codec::MediaType(r.http.Header("content-type")) != "text/plain") {
    // importMime: "Content-Type: text/plain. Required." (mailfolder-importmime).
    return GraphError(415, "UnsupportedMediaType", "The request body must be base64 MIME sent as text/plain.");
  }
  if (!r.mime_ok) {
    // user-post-messages documents this exact error for malformed MIME.
    return GraphError(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.");
  }
  const std::string& mime = r.decoded_mime;
  size_t body_at = 0;
  auto headers = codec::ParseMimeHeaders(mime, &body_at);
  if (headers.empty()) return GraphError(400, "ErrorMimeContentInvalid", "The MIME content has no header block.");
  if (mime.size() > options_.limits.max_message_bytes) {
    return GraphError(400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.");
  }
  Message msg;
  FakeGraphMessage& m = msg.m;
  m.source = import ? FakeGraphMessage::Source::kImportMime : FakeGraphMessage::Source::kMimeDraft;
  m.folder_id = folder_id;
  for (const auto& h : headers) m.headers.push_back({h.name, h.value});
  if (auto* h = codec::FindHeader(headers, "Message-ID")) m.internet_message_id = h->value;
  if (auto* h = codec::FindHeader(headers, "Subject")) m.subject = codec::DecodeEncodedWords(h->value);
  if (auto* h = codec::FindHeader(headers, "From")) m.from_address = codec::ParseMailbox(h->value).address;
  if (auto* h = codec::FindHeader(headers, "To")) {
    for (const auto& a : codec::ParseMailboxList(h->value)) m.to_addresses.push_back(a.address);
  }
  std::optional<int64_t> date;
  if (auto* h = codec::FindHeader(headers, "Date")) date = codec::ParseRfc5322Date(h->value);
  int64_t now = WallNow();
  m.created_date_time = codec::FormatIso8601(now);
  if (import) {
    // importMime: "appears in the destination folder as if it was delivered",
    // not a draft, not stamped as sent: both times come from the Date header.
    m.is_draft = false;
    m.is_read = false;
    m.received_date_time = codec::FormatIso8601(date.value_or(now));
    m.sent_date_time = codec::FormatIso8601(date.value_or(now));
  } else {
    // v1.0 MIME create "always creates a draft" (user-post-messages; NOTES);
    // the documented example keeps Date as sentDateTime and stamps received now.
    m.is_draft = true;
    m.is_read = true;
    m.received_date_time = codec::FormatIso8601(now);
    m.sent_date_time = codec::FormatIso8601(date.value_or(now));
  }
  auto* ct = codec::FindHeader(headers, "Content-Type");
  std::string media = ct ? codec::MediaType(ct->value) : "text/plain";
  // Attachments inside MIME are not parsed; multipart/mixed is the usual sign.
  msg.mime_has_attachments = media == "multipart/mixed";
  if (media == "text/plain" || media == "text/html") {
    m.body_content_type = media == "text/html" ? "html" : "text";
    m.body_content = mime.substr(std::min(body_at, mime.size()));
  }
  m.id = NewId("AAMkAD", mb.spec.upn + "/msg");
  if (m.internet_message_id.empty()) m.internet_message_id = "<" + Hex(id_counter_) + "@fake.graph.local>";
  if (options_.keep_raw) m.raw_mime = mime;
  msg.size_bytes = mime.size();
  const Message& stored = StoreMessage(mb, std::move(msg));

  std::string body;
  std::vector<std::string> no_select;
  WriteMessageJson(&body, mb, stored, no_select, std::nullopt);
  body.insert(1, "\"@odata.context\":\"" + base_url_ + "/" + r.version + "/$metadata#users('" + mb.spec.id +
                     "')/messages/$entity\",");
  return Json(201, std::move(body));
}

HttpResponse GraphService::AddAttachment(Request& r, Message& msg) {
  if (msg.m.source != FakeGraphMessage::Source::kJson && !options_.allow_attachments_on_mime_items) {
    return GraphError(400, "ErrorInvalidOperation", "Attachments cannot be added to an item created from MIME.");
  }
  simdjson::dom::element doc;
  if (JsonParser().parse(r.http.body).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return GraphError(400, "BadRequest", "Unable to read JSON request payload.");
  }
  std::string type = FieldString(doc, "@odata.type").value_or("");
  if (!IEquals(type, "#microsoft.graph.fileAttachment")) {
    return GraphError(501, "NotImplementedInFake", "The fake accepts only #microsoft.graph.fileAttachment.");
  }
  auto bytes = codec::Base64Decode(FieldString(doc, "contentBytes").value_or(""));
  if (!bytes) return GraphError(400, "ErrorInvalidRequest", "contentBytes is not valid base64.");
  if (msg.size_bytes + bytes->size() > options_.limits.max_message_bytes) {
    return GraphError(400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.");
  }
  FakeGraphAttachment att;
  att.id = NewId("AAMkAD", msg.m.id + "/att");
  att.name = FieldString(doc, "name").value_or("");
  att.content_type = FieldString(doc, "contentType").value_or("application/octet-stream");
  att.content_id = FieldString(doc, "contentId").value_or("");
  att.is_inline = FieldBool(doc, "isInline").value_or(false);
  att.bytes = std::move(*bytes);
  msg.size_bytes += att.bytes.size();
  std::string body;
  JsonWriter w(&body);
  w.BeginObject().Field("@odata.type", "#microsoft.graph.fileAttachment").Field("id", att.id);
  w.Field("name", att.name).Field("contentType", att.content_type).Field("size", uint64_t(att.bytes.size()));
  w.Field("isInline", att.is_inline).EndObject();
  msg.m.attachments.push_back(std::move(att));
  return Json(201, std::move(body));
}

HttpResponse GraphService::CreateUploadSession(Request& r, Message& msg) {
  const FakeGraphLimits& lim = options_.limits;
  if (msg.m.source != FakeGraphMessage::Source::kJson && !options_.allow_attachments_on_mime_items) {
    return GraphError(400, "ErrorInvalidOperation", "Attachments cannot be added to an item created from MIME.");
  }
  simdjson::dom::element doc, item;
  if (JsonParser().parse(r.http.body).get(doc) != simdjson::SUCCESS || !Field(doc, "AttachmentItem", &item)) {
    return GraphError(400, "BadRequest", "The request body must contain AttachmentItem.");
  }
  std::string type = FieldString(item, "attachmentType").value_or("");
  auto size = FieldUint(item, "size");
  std::string name = FieldString(item, "name").value_or("");
  if (!IEquals(type, "file") || !size || name.empty()) {
    return GraphError(400, "ErrorInvalidRequest", "AttachmentItem needs attachmentType 'file', a name and a size.");
  }
  if (*size < lim.min_upload_session_bytes) {
    // Documented by name in outlook-large-attachments ("Errors").
    return GraphError(400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                      "Attachment size must be at least 3 MB to use an upload session; POST it to attachments.");
  }
  if (*size > lim.max_attachment_bytes || msg.size_bytes + *size > lim.max_message_bytes) {
    return GraphError(400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.");
  }
  UploadSession s;
  s.mailbox_key = r.plan.mailbox_key;
  s.app_id = r.plan.app_id;
  s.message_id = msg.m.id;
  s.name = name;
  s.content_type = FieldString(item, "contentType").value_or("");
  s.content_id = FieldString(item, "contentId").value_or("");
  s.is_inline = FieldBool(item, "isInline").value_or(false);
  s.size = *size;
  s.auth_token = core::ToHex(core::Sha256("upload/" + std::to_string(secret_rng_())));
  s.expires_epoch = WallNow() + 15 * 60;  // not enforced
  std::string id = NewId("AAMkAD", msg.m.id + "/session");
  std::string url = base_url_ + "/api/v2.0/Users('" + r.mb->spec.id + "@" + options_.tenant + "')/Messages('" +
                    msg.m.id + "')/AttachmentSessions('" + id + "')?authtoken=" + s.auth_token;
  std::string body;
  JsonWriter w(&body);
  w.BeginObject().Field("@odata.context", base_url_ + "/" + r.version + "/$metadata#microsoft.graph.uploadSession");
  w.Field("uploadUrl", url).Field("expirationDateTime", codec::FormatIso8601(s.expires_epoch));
  w.Key("nextExpectedRanges").BeginArray().String("0-").EndArray().EndObject();
  sessions_[id] = std::move(s);
  ++r.mb->stats.upload_sessions;
  return Json(201, std::move(body));
}

// ---------------------------------------------------------------------------
// Inspection

FakeGraphMessage GraphService::Snapshot(const Message& msg) const { return msg.m; }

std::vector<FakeGraphFolder> GraphService::Folders(std::string_view mailbox) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FakeGraphFolder> out;
  const Mailbox* mb = FindMailbox(mailbox);
  if (!mb) return out;
  for (const auto& f : mb->folders) {
    out.push_back({f.id, f.parent_id, f.display_name, f.well_known, FolderItemCount(*mb, f.id)});
  }
  return out;
}

std::vector<FakeGraphMessage> GraphService::Messages(std::string_view mailbox) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FakeGraphMessage> out;
  const Mailbox* mb = FindMailbox(mailbox);
  if (!mb) return out;
  for (const auto& [seq, m] : mb->messages) out.push_back(Snapshot(m));
  return out;
}

std::optional<FakeGraphMessage> GraphService::FindMessage(std::string_view mailbox, std::string_view imid) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Mailbox* mb = FindMailbox(mailbox);
  if (!mb) return std::nullopt;
  auto it = mb->by_imid.find(std::string(imid));
  if (it == mb->by_imid.end()) return std::nullopt;
  return Snapshot(mb->messages.at(it->second));
}

FakeGraphMailboxStats GraphService::Stats(std::string_view mailbox) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Mailbox* mb = FindMailbox(mailbox);
  return mb ? mb->stats : FakeGraphMailboxStats{};
}

uint64_t GraphService::TotalViolations() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& [k, mb] : mailboxes_) n += mb.stats.total_violations();
  return n;
}

uint64_t GraphService::TokenRequests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return token_requests_;
}

uint64_t GraphService::TokensIssued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_issued_;
}

std::string GraphService::StatsJson() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  JsonWriter w(&out);
  uint64_t total = 0;
  for (const auto& [k, mb] : mailboxes_) total += mb.stats.total_violations();
  w.BeginObject();
  w.Field("base_url", base_url_);
  w.Field("token_requests", token_requests_).Field("tokens_issued", tokens_issued_);
  w.Field("total_violations", total);
  w.Key("mailboxes").BeginObject();
  for (const auto& [k, mb] : mailboxes_) {
    const auto& s = mb.stats;
    w.Key(mb.spec.upn).BeginObject();
    w.Field("id", mb.spec.id);
    w.Field("requests", s.requests).Field("throttled", s.throttled).Field("upload_bytes", s.upload_bytes);
    w.Field("peak_concurrency", s.peak_concurrency);
    w.Field("messages", uint64_t(mb.messages.size()));
    uint64_t drafts = 0, attachments = 0;
    for (const auto& [seq, m] : mb.messages) {
      drafts += m.m.is_draft;
      attachments += m.m.attachments.size();
    }
    w.Field("drafts", drafts).Field("attachments", attachments);
    w.Field("folders", uint64_t(mb.folders.size()));
    w.Field("upload_range_rejections", s.upload_range_rejections);
    w.Field("permanent_deletes", s.permanent_deletes).Field("upload_sessions", s.upload_sessions);
    w.Key("faults").BeginObject();
    w.Field("errors", s.injected_errors).Field("delays", s.injected_delays);
    w.Field("dropped_before", s.dropped_before).Field("dropped_after", s.dropped_after).EndObject();
    w.Key("violations").BeginObject();
    for (size_t i = 0; i < kFakeGraphViolationKinds; ++i) {
      w.Field(ViolationName(FakeGraphViolation(i)), s.violations[i]);
    }
    w.EndObject().Field("total_violations", s.total_violations()).EndObject();
  }
  w.EndObject().EndObject();
  return out;
}

}  // namespace graph_internal
}  // namespace wxa::test
