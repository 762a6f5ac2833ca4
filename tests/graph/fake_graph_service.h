// The fake Graph service without the network: requests in, responses out.
// fake_graph_server.cc feeds it from Boost.Beast; keeping Beast out of this
// file keeps the heavy translation unit small and the logic readable.
//
// A request goes through three calls, so the I/O layer can wait (slow-reply
// faults) and drop connections (drop faults) between them:
//   Plan p = Begin(req);      // auth, limits, admission, fault choice
//   resp = Execute(req, p);   // the handler (skipped when p.response is set)
//   Finish(&p);               // frees the concurrency slot, before the write
// Every method locks mu_ itself; none blocks on I/O.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tests/graph/fake_graph_server.h"

namespace wxa::test::graph_internal {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // origin-form as received: "/v1.0/users/x?$top=5"
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  // The first header named `lower_name`, or "".
  std::string_view Header(std::string_view lower_name) const;
};

struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  void Set(std::string name, std::string value);
};

// The path split into percent-decoded segments, and the decoded query.
struct ParsedTarget {
  std::string raw_path;
  std::vector<std::string> segments;
  std::map<std::string, std::string> query;  // "$filter", "$top", ... ($ added when omitted)
  bool ok = true;
};

enum class RouteKind { kNone, kFake, kToken, kUpload, kGraph, kBatch };

struct Plan {
  RouteKind kind = RouteKind::kNone;
  ParsedTarget target;
  // A final answer chosen up front (401, 404, 413, 429, ...): Execute is skipped.
  std::optional<HttpResponse> response;
  std::chrono::milliseconds delay{0};
  enum class Drop { kNone, kBefore, kAfter };
  Drop drop = Drop::kNone;
  int fault_status = 0;  // injected error, answered after the delay
  int fault_status_after = 0;  // injected error, answered after processing
  // Identity of the caller and target (graph and upload routes).
  std::string app_id;
  std::string mailbox_key;  // lower-cased UPN; "" when no mailbox
  std::string upload_session;
  bool admitted = false;  // holds a concurrency slot until Finish
};

class GraphService {
 public:
  using Clock = std::chrono::steady_clock;

  GraphService() = default;
  // Validates options (keys readable, mailboxes unique) and builds the mailboxes.
  Status Init(FakeGraphServerOptions options);
  void set_base_url(std::string url);
  const std::string& base_url() const { return base_url_; }

  // For "Expect: 100-continue": a final answer (413) when the announced body
  // is over the cap, so the client never sends it.
  std::optional<HttpResponse> CheckHeader(const HttpRequest& head, uint64_t content_length);
  // `in_batch`: an individual request of a $batch (no drops or delays; the
  // outer request carries those).
  Plan Begin(const HttpRequest& req, bool in_batch = false);
  HttpResponse Execute(const HttpRequest& req, const Plan& plan);
  void Finish(Plan* plan);
  // A 500 in Graph's error shape, for the I/O layer's exception edge.
  HttpResponse InternalError(std::string_view what) const;

  // ---- knobs and inspection, as in FakeGraphServer ----
  void SetLimits(const FakeGraphLimits& limits);
  void SetFaults(const FakeGraphFaults& faults);
  void ExpireAllTokens();
  void AdvanceClock(std::chrono::milliseconds by);
  void Reset();
  std::vector<FakeGraphFolder> Folders(std::string_view mailbox) const;
  std::vector<FakeGraphMessage> Messages(std::string_view mailbox) const;
  std::optional<FakeGraphMessage> FindMessage(std::string_view mailbox, std::string_view imid) const;
  FakeGraphMailboxStats Stats(std::string_view mailbox) const;
  uint64_t TotalViolations() const;
  uint64_t TokenRequests() const;
  uint64_t TokensIssued() const;
  std::string StatsJson() const;

 private:
  // A measured budget: sliding (every event kept until it leaves the window)
  // or fixed (a sum that resets each window).
  struct Window {
    std::deque<std::pair<Clock::time_point, uint64_t>> events;
    uint64_t sum = 0;
    Clock::time_point fixed_start{};
    bool started = false;
  };
  // Usage of one app on one mailbox: the unit Outlook throttles.
  struct Usage {
    int in_flight = 0;
    Window requests;
    Window uploads;
    Clock::time_point throttled_at{};     // when the last 429 was answered
    Clock::time_point throttled_until{};  // ... plus its Retry-After
  };
  struct Folder {
    std::string id;
    std::string parent_id;
    std::string display_name;
    std::string well_known;
  };
  struct Message {
    FakeGraphMessage m;
    uint64_t seq = 0;
    uint64_t size_bytes = 0;
    bool mime_has_attachments = false;
    std::string change_key;
  };
  struct Mailbox {
    FakeGraphMailbox spec;
    std::vector<Folder> folders;  // creation order; [0] is msgfolderroot
    std::map<uint64_t, Message> messages;  // by seq = creation order
    // Indexes, so resume lookups stay O(1) in mailboxes of a million items.
    std::unordered_map<std::string, uint64_t> by_id;
    std::unordered_multimap<std::string, uint64_t> by_imid;
    std::unordered_map<std::string, std::pair<uint64_t, uint64_t>> folder_counts;  // id -> (total, unread)
    std::map<std::string, Usage> usage;  // by app id
    FakeGraphMailboxStats stats;
    uint64_t next_seq = 1;
  };
  struct UploadSession {
    std::string mailbox_key;
    std::string app_id;
    std::string message_id;
    std::string name;
    std::string content_type;
    std::string content_id;
    bool is_inline = false;
    uint64_t size = 0;
    std::string data;
    std::string auth_token;
    int64_t expires_epoch = 0;
  };
  struct Token {
    std::string app_id;
    Clock::time_point expires;
  };
  struct Request;  // handler context, defined in the .cc

  // Clock (AdvanceClock moves both).
  Clock::time_point Now() const;
  int64_t WallNow() const;  // epoch seconds

  // Begin's steps.
  ParsedTarget ParseTarget(std::string_view target) const;
  RouteKind Classify(const ParsedTarget& t) const;
  std::optional<HttpResponse> Authenticate(const HttpRequest& req, std::string* app_id);
  Mailbox* FindMailbox(std::string_view id_or_upn);
  const Mailbox* FindMailbox(std::string_view id_or_upn) const;
  void Admit(const HttpRequest& req, Mailbox& mb, Plan* plan);
  void ChooseFaults(const HttpRequest& req, const ParsedTarget& t, Plan* plan, bool in_batch);
  void CountBatchBodyTooLarge(const HttpRequest& req);
  void CountGraphRequest();
  bool RuleFires(const FakeGraphFaultRule& rule, uint64_t seq);
  uint64_t WindowSum(Window& w, Clock::time_point now, std::chrono::milliseconds len);
  std::chrono::milliseconds WindowWait(Window& w, Clock::time_point now, std::chrono::milliseconds len,
                                       uint64_t limit, uint64_t amount);
  void WindowAdd(Window& w, Clock::time_point now, uint64_t amount);
  void CountViolation(Mailbox& mb, FakeGraphViolation v);
  HttpResponse Throttle(Mailbox& mb, Usage& u, std::string_view limit_name, int retry_after_s);

  // Execute's handlers (Request carries the parsed pieces).
  HttpResponse HandleFake(const HttpRequest& req, const Plan& plan);
  HttpResponse HandleToken(const HttpRequest& req, const Plan& plan);
  HttpResponse HandleUpload(const HttpRequest& req, const Plan& plan);
  HttpResponse HandleGraph(const HttpRequest& req, const Plan& plan);
  HttpResponse HandleBatch(const HttpRequest& req, const Plan& plan);
  HttpResponse HandleMail(Request& r);
  std::string NextLink(const Request& r, int64_t top, size_t skip) const;
  HttpResponse ListFolders(Request& r, const std::string& parent_id);
  HttpResponse CreateFolder(Request& r, const std::string& parent_id);
  HttpResponse ListMessages(Request& r, const std::string* folder_id, bool count_only);
  HttpResponse GetMessage(Request& r, const Message& msg);
  HttpResponse CreateJsonMessage(Request& r, const std::string& folder_id);
  HttpResponse CreateMimeMessage(Request& r, const std::string& folder_id, bool import);
  HttpResponse AddAttachment(Request& r, Message& msg);
  HttpResponse CreateUploadSession(Request& r, Message& msg);

  // Model helpers (mu_ held).
  void BuildMailbox(const FakeGraphMailbox& spec);
  const Folder* ResolveFolder(const Mailbox& mb, std::string_view id_or_name) const;
  Message* FindMessageById(Mailbox& mb, std::string_view id);
  // Gives `msg` its seq and change key, files it in the indexes and counters.
  Message& StoreMessage(Mailbox& mb, Message msg);
  void RemoveMessage(Mailbox& mb, uint64_t seq);
  std::string NewId(std::string_view prefix, std::string_view salt);
  std::string FolderName(const Mailbox& mb, const std::string& folder_id) const;
  uint64_t FolderItemCount(const Mailbox& mb, const std::string& folder_id) const;
  void WriteFolderJson(std::string* out, const Mailbox& mb, const Folder& f) const;
  void WriteMessageJson(std::string* out, const Mailbox& mb, const Message& msg,
                        const std::vector<std::string>& select, const std::optional<std::string>& expand_filter) const;
  FakeGraphMessage Snapshot(const Message& msg) const;

  // Responses.
  HttpResponse GraphError(int status, std::string_view code, std::string_view message) const;
  HttpResponse AadError(int status, std::string_view error, int code, std::string_view description) const;
  HttpResponse Json(int status, std::string body) const;

  mutable std::mutex mu_;
  FakeGraphServerOptions options_;  // limits/faults replaced by SetLimits/SetFaults
  std::string base_url_;
  std::map<std::string, Mailbox> mailboxes_;          // by lower-cased UPN
  std::map<std::string, std::string> mailbox_by_id_;  // lower-cased id -> UPN key
  std::map<std::string, FakeGraphApp> apps_;
  std::unordered_map<std::string, Token> tokens_;
  std::map<std::string, UploadSession> sessions_;
  std::map<std::string, int> app_in_flight_;  // for kPerApp concurrency
  uint64_t token_requests_ = 0;
  uint64_t tokens_issued_ = 0;
  uint64_t graph_requests_ = 0;  // for expire_tokens_every_n
  uint64_t fault_seq_ = 0;       // matching requests seen by the fault rules
  uint64_t id_counter_ = 0;
  std::mt19937_64 rng_{1};  // fault draws only, so a seed repeats a run
  std::mt19937_64 secret_rng_{std::random_device{}()};  // tokens, upload authtokens
  std::atomic<int64_t> clock_offset_ms_{0};
};

}  // namespace wxa::test::graph_internal
