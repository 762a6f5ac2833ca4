// A local, Graph-compatible HTTP server for tests and benches: the Microsoft
// identity platform token endpoint plus the Outlook mail endpoints the graph
// sink uses, enforcing the documented Outlook limits and injecting faults.
// README.md (next to this file) lists every behaviour with its source.
//
// Threading: Start() runs its own io_context threads; every public method is
// thread-safe and may be called while clients are talking to the server.
// Inspection calls return copies (snapshots), owned by the caller.
//
// This header stays free of Boost so client tests can include it cheaply.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/status.h"

namespace wxa::test {

// An app registration (the "app" half of the app x mailbox throttling key).
struct FakeGraphApp {
  std::string client_id;
  std::string client_secret;   // empty: secret authentication is refused
  std::string public_key_pem;  // PEM public key or certificate; empty: assertions refused
};

// A mailbox-enabled user. Mail endpoints accept the id or the UPN.
struct FakeGraphMailbox {
  std::string upn;           // matched case-insensitively, like Entra does
  std::string id;            // GUID; derived from the UPN when empty
  std::string display_name;  // derived from the UPN when empty
};

// Who shares the 4-request concurrency limit. The published page
// (throttling-limits, "Outlook service limits") has said both over time; the
// brief and NOTES plan for per mailbox.
enum class FakeGraphConcurrencyScope { kPerAppAndMailbox, kPerApp };

// How the request and upload budgets are measured over their windows.
// kSliding (default) is the strict reading: at most `budget` in ANY window of
// that length. kFixed resets the count every window, starting at the first use.
enum class FakeGraphWindow { kSliding, kFixed };

// Documented Outlook limits per app x mailbox (throttling-limits). Every knob
// can be scaled down so tests hit a limit in milliseconds.
struct FakeGraphLimits {
  // false: breaches are still counted as violations but the request is served.
  bool enforce = true;
  int max_concurrent = 4;
  FakeGraphConcurrencyScope concurrency_scope = FakeGraphConcurrencyScope::kPerAppAndMailbox;
  int concurrency_retry_after_s = 1;  // Retry-After on a concurrency 429
  uint64_t request_budget = 10000;
  std::chrono::milliseconds request_window{std::chrono::minutes(10)};
  // "150 megabytes (MB) upload (PATCH, POST, PUT)": read as 150,000,000 bytes,
  // the stricter of MB and MiB.
  uint64_t upload_budget_bytes = 150'000'000;
  std::chrono::milliseconds upload_window{std::chrono::minutes(5)};
  FakeGraphWindow window_kind = FakeGraphWindow::kSliding;
  // The ~4 MB request cap (413). 4 MiB: ASP.NET's default maxRequestLength
  // (4096 KB) is where that figure comes from.
  uint64_t max_request_body_bytes = 4u << 20;
  // createUploadSession: "between 3 MB and 150 MB" (attachment-createuploadsession).
  uint64_t min_upload_session_bytes = 3u << 20;
  uint64_t max_attachment_bytes = 150u << 20;
  // Exchange Online's default message size limit (35 MB) for one item,
  // attachments included.
  uint64_t max_message_bytes = 35u << 20;
  int default_page_size = 10;  // "default page size (10 items)" (user-list-mailfolders)
  // Attachment lists are a paged collection (attachmentBaseCollectionResponse);
  // 0: one page, else this many per page with @odata.nextLink ($top/$skip).
  int attachment_page_size = 0;
  int max_page_size = 1000;
  // A request to a mailbox that arrives after the last 429 plus this grace
  // (requests already on the wire are let off) but before its Retry-After
  // elapsed counts as a kIgnoredRetryAfter violation.
  std::chrono::milliseconds retry_after_grace{250};
};

// Selects requests for one fault: the Nth, 2Nth, ... matching request, and/or
// each matching request with `probability` (seeded, so runs repeat).
struct FakeGraphFaultRule {
  uint64_t every_nth = 0;  // 0: off
  double probability = 0;  // 0: off
};

struct FakeGraphFaults {
  uint64_t seed = 1;
  // Faults apply only to requests whose path contains `path_filter` and whose
  // method equals `method_filter` (empty: any). The token endpoint and upload
  // URLs are eligible too; /_fake/* never is.
  std::string path_filter;
  std::string method_filter;
  // ... and whose path does not contain `path_exclude` (empty: none).
  std::string path_exclude;
  // An error answer instead of processing (the item is NOT stored).
  FakeGraphFaultRule error;
  int error_status = 503;        // 503, 504, 500, 429 ...
  bool error_retry_after = true;  // send Retry-After with it
  int error_retry_after_s = 1;
  // A slow reply: the request holds its concurrency slot while it waits.
  FakeGraphFaultRule delay;
  std::chrono::milliseconds delay_by{0};
  // The connection is closed without a response, before processing (nothing
  // stored) or after processing (the item IS stored, the client never sees
  // the 201: the exactly-once case).
  FakeGraphFaultRule drop_before;
  FakeGraphFaultRule drop_after;
  // The request IS processed (the item or attachment stored), then answered
  // with `error_after_status` instead: a gateway that gave up on a backend
  // that finished the work.
  FakeGraphFaultRule error_after;
  int error_after_status = 504;
  // Every N Graph requests all issued tokens expire (401 on next use).
  uint64_t expire_tokens_every_n = 0;
};

struct FakeGraphServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;   // 0: an ephemeral port; see FakeGraphServer::port()
  int io_threads = 4;  // handlers are short; waits (delays) are timers, not threads
  std::string tenant = "11111111-2222-3333-4444-555555555555";
  std::vector<std::string> tenant_aliases = {"contoso.onmicrosoft.com"};
  std::vector<FakeGraphApp> apps;
  std::vector<FakeGraphMailbox> mailboxes;
  int token_lifetime_s = 3599;  // expires_in of issued tokens
  // Status for ErrorFolderExists: third parties report 400, sometimes 409.
  int folder_exists_status = 400;
  // NOTES: an upload session only works on a JSON-created item, not a MIME
  // one (third-party evidence). false refuses attachments on importMime items.
  bool allow_attachments_on_mime_items = false;
  // The upload URL is pre-authenticated; the docs say not to send an
  // Authorization header with the PUTs. true answers such a PUT with 401.
  bool reject_authorization_on_upload = true;
  // Clock skew tolerated on client assertion exp/nbf.
  int assertion_skew_s = 0;
  // Keep raw MIME / JSON of created items (benches may turn it off).
  bool keep_raw = true;
  FakeGraphLimits limits;
  FakeGraphFaults faults;
};

// ---- inspection snapshots ----
struct FakeGraphHeader {
  std::string name;
  std::string value;
};

struct FakeGraphAttachment {
  std::string id;
  std::string name;
  std::string content_type;
  std::string content_id;
  bool is_inline = false;
  bool via_upload_session = false;
  std::string bytes;
};

struct FakeGraphMessage {
  enum class Source { kImportMime, kJson, kMimeDraft };
  std::string id;
  std::string folder_id;
  std::string folder_name;
  Source source = Source::kJson;
  std::string internet_message_id;
  std::string subject;
  std::string from_address;
  std::vector<std::string> to_addresses;
  bool is_draft = true;
  bool is_read = false;
  // ISO 8601 UTC ("2024-01-02T03:04:05Z").
  std::string created_date_time;
  std::string received_date_time;
  std::string sent_date_time;
  std::string body_content_type;  // "text" / "html" (JSON items)
  std::string body_content;
  std::string raw_mime;  // decoded MIME (kImportMime, kMimeDraft) when keep_raw
  std::string raw_json;  // request body (kJson) when keep_raw
  // MIME header block (MIME items) or internetMessageHeaders (JSON items).
  std::vector<FakeGraphHeader> headers;
  // singleValueExtendedProperties as sent: {id, value}.
  std::vector<FakeGraphHeader> extended_properties;
  std::vector<FakeGraphAttachment> attachments;
};

struct FakeGraphFolder {
  std::string id;
  std::string parent_id;  // "" for the root (msgfolderroot)
  std::string display_name;
  std::string well_known_name;  // "inbox", "drafts", ... or ""
  uint64_t total_item_count = 0;
};

enum class FakeGraphViolation {
  kConcurrency,        // more than max_concurrent requests in flight (429)
  kRequestBudget,      // over request_budget in a window (429)
  kUploadBudget,       // over upload_budget_bytes in a window (429)
  kBodyTooLarge,       // request body over max_request_body_bytes (413)
  kIgnoredRetryAfter,  // a request before the advised Retry-After elapsed
  kBadUploadRange,     // an upload PUT with a gap, wrong total or wrong length
};
constexpr size_t kFakeGraphViolationKinds = 6;
const char* ViolationName(FakeGraphViolation v);

struct FakeGraphMailboxStats {
  uint64_t requests = 0;          // mail requests counted against the budget
  uint64_t throttled = 0;         // 429 answers (limits and injected)
  uint64_t upload_bytes = 0;      // PATCH/POST/PUT body bytes counted
  int peak_concurrency = 0;       // most requests seen in flight at once, incl. a refused one
  uint64_t messages = 0;  // items created (a DELETE does not lower it)
  uint64_t drafts = 0;    // of which drafts
  uint64_t upload_range_rejections = 0;  // 416 for re-sent (overlapping) chunks
  uint64_t permanent_deletes = 0;        // messages removed with permanentDelete
  uint64_t upload_sessions = 0;          // createUploadSession answered 201
  uint64_t injected_errors = 0;
  uint64_t injected_delays = 0;
  uint64_t dropped_before = 0;
  uint64_t dropped_after = 0;
  std::array<uint64_t, kFakeGraphViolationKinds> violations{};
  uint64_t violation_count(FakeGraphViolation v) const { return violations[size_t(v)]; }
  uint64_t total_violations() const;
};

class FakeGraphServer {
 public:
  FakeGraphServer();
  ~FakeGraphServer();  // Stop()s
  FakeGraphServer(const FakeGraphServer&) = delete;
  FakeGraphServer& operator=(const FakeGraphServer&) = delete;

  // Binds, listens and starts the io threads. InvalidArgument for bad options
  // (unreadable public key, duplicate mailbox), IOError when it cannot bind.
  Status Start(FakeGraphServerOptions options);
  // Closes the listener and every connection; stored data stays inspectable.
  void Stop();
  bool running() const;
  uint16_t port() const;
  // "http://127.0.0.1:PORT": both the login base and the Graph base URL.
  std::string base_url() const;

  // ---- runtime knobs ----
  void SetLimits(const FakeGraphLimits& limits);
  void SetFaults(const FakeGraphFaults& faults);
  // Every token issued so far answers 401 InvalidAuthenticationToken from now on.
  void ExpireAllTokens();
  // Moves the server's clock forward (token expiry, budget windows, assertion
  // exp checks) without sleeping.
  void AdvanceClock(std::chrono::milliseconds by);
  // Drops all folders (back to the well-known set), messages, sessions, tokens
  // and counters; options, limits and faults stay.
  void Reset();

  // ---- inspection (mailbox = UPN or id) ----
  std::vector<FakeGraphFolder> Folders(std::string_view mailbox) const;
  std::vector<FakeGraphMessage> Messages(std::string_view mailbox) const;
  std::optional<FakeGraphMessage> FindMessage(std::string_view mailbox,
                                              std::string_view internet_message_id) const;
  FakeGraphMailboxStats Stats(std::string_view mailbox) const;
  uint64_t TotalViolations() const;  // all mailboxes
  uint64_t TokenRequests() const;    // every POST to the token endpoint
  uint64_t TokensIssued() const;
  // The same JSON as GET /_fake/stats.
  std::string StatsJson() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace wxa::test
