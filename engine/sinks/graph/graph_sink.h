// The Microsoft Graph target: `graph:` (issue #11).
//
// libcurl multi on one I/O thread (connection reuse; HTTP/2 multiplexing over
// TLS where the server offers it). OAuth2 client credentials against
// {login_url}/{tenant}/oauth2/v2.0/token with a client secret or a
// certificate (RS256 JWT client assertion with x5t); the token is cached,
// refreshed before it expires and again after a 401.
//
// Two ways in (--graph-mode), both giving received mail, never drafts:
// - importmime (default): one `POST /beta/users/{id}/mailFolders/{id}/importMime`
//   per item (base64 MIME, text/plain), byte-exact headers. An item whose
//   base64 exceeds the request cap is kItemBad with the reason.
// - extprops: v1.0 JSON create in the folder with the MAPI properties that
//   make it received mail (PidTagMessageFlags 0x0E07 = read, no mfUnsent;
//   delivery 0x0E06 and submit 0x0039 times; transport headers 0x007D, so
//   every X-WeChat-* header is on the item; In-Reply-To 0x1042, References
//   0x1039). Attachments go inline while the request stays under the cap;
//   the rest follow the create: `POST .../attachments` under 3 MB,
//   `createUploadSession` and PUT chunks (multiples of 320 KiB, no
//   Authorization header) from 3 MB. Such an item carries a marker property
//   (PartsProperty(): how many attachments it must end with), so a probe
//   tells a complete item from one a crash or a failed step left half-made;
//   a partial one is removed (`permanentDelete`) and the item sent again.
//
// Per mailbox: user lookup (GET /v1.0/users/{mailbox}: 404 is that
// mailbox's failure, "unknown mailbox"), the archive folder found or created
// level by level (ErrorFolderExists from a concurrent create: list again),
// then one `POST /beta/users/{id}/mailFolders/{id}/importMime` per item
// (base64 MIME, text/plain; 201 gives the item id, the remote reference).
// importMime items are received mail, never drafts, with their MIME headers.
//
// Graph's Outlook limits per app x mailbox are enforced on the client side,
// so a well-behaved run is never throttled: at most `max_in_flight_per_mailbox`
// requests in flight, `request_budget` requests per `request_window`, and
// `upload_budget_bytes` of request bodies per `upload_window` (sliding
// windows, widened by `window_margin` so that network jitter cannot make the
// server see more in its own window). 429/503 pause the whole mailbox for
// Retry-After (or a capped exponential backoff with jitter) and come back as
// kTransient; a dropped connection or timeout after the body was fully sent,
// and 500/504, are kTransient in doubt (the engine probes before resending).
//
// Probe: `$filter=internetMessageId eq '<id>'` in the folder (with the
// parts marker expanded; a marked item counts only with all its
// attachments, else it is permanently deleted and the probe looks again).
// Inventory: every
// message's internetMessageId in the folder, following @odata.nextLink.
//
// Secrets (client secret, access tokens) never appear in errors or traces.
// WXA_GRAPH_TRACE=1 prints one line per request (method, URL, status) to
// stderr, without the Authorization header.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "engine/sinks/sink.h"

namespace wxa::pst {
struct Message;
}

namespace wxa::sinks {

struct GraphOptions {
  std::string folder = "WeChat Archiver";  // levels separated by '/'
  std::string tenant;                      // --graph-tenant
  std::string client_id;                   // --graph-client-id
  std::string client_secret;               // from --graph-secret-file
  std::string certificate_file;            // --graph-certificate (PEM: key + certificate)
  std::string login_url = "https://login.microsoftonline.com";  // --graph-login-url
  std::string graph_url = "https://graph.microsoft.com";        // --graph-url
  // OAuth2 scope; empty: "<graph_url>/.default" for an https Graph URL,
  // "https://graph.microsoft.com/.default" for a loopback test server.
  std::string scope;
  enum class Mode : uint8_t { kImportMime, kExtProps };
  Mode mode = Mode::kImportMime;           // --graph-mode importmime|extprops
  std::string ca_file;                     // --ca-file
  bool tls_insecure = false;               // --tls-insecure (tests only)
  size_t connections = 16;                 // --connections: requests in flight in total

  // Graph's Outlook limits per app x mailbox (throttling-limits); tests scale
  // them down together with the test server's.
  int max_in_flight_per_mailbox = 4;
  uint64_t request_budget = 10000;
  std::chrono::milliseconds request_window{std::chrono::minutes(10)};
  uint64_t upload_budget_bytes = 150'000'000;
  std::chrono::milliseconds upload_window{std::chrono::minutes(5)};
  // Added to both windows: the server counts arrivals, we count departures.
  // Zero: 1% of the window plus 50 ms.
  std::chrono::milliseconds window_margin{0};
  // The request cap: a base64 body over it is reported (kItemBad).
  uint64_t max_request_bytes = 4u << 20;
  // extprops: attachments from this size go through an upload session
  // ("between 3 MB and 150 MB", attachment-createuploadsession), in PUT
  // chunks of `upload_chunk_bytes` (a multiple of 320 KiB, under the cap).
  uint64_t min_upload_session_bytes = 3u << 20;
  uint64_t upload_chunk_bytes = 10 * 327680;

  uint32_t connect_timeout_ms = 15000;
  uint32_t request_timeout_ms = 120000;
  // Backoff for 429/503 without Retry-After, and for failed setup steps.
  uint32_t backoff_base_ms = 500;
  uint32_t backoff_max_ms = 60000;
  // Setup steps (user lookup, folder) and probes retried inside the sink
  // before their jobs fail (kTransient / ProbeResult::kFailed).
  uint32_t max_internal_attempts = 8;
  bool check_mailboxes = true;
};

Result<std::unique_ptr<Sink>> MakeGraphSink(const Target& target, GraphOptions options);

namespace graph {
// An OData string literal: quoted, with ' doubled.
std::string ODataQuote(std::string_view s);
// Percent-encodes everything but unreserved characters (RFC 3986).
std::string PercentEncode(std::string_view s);
// "scheme://host[:port]" URLs: https, or http to a loopback host only.
Status CheckEndpointUrl(std::string_view what, std::string_view url);
// Standard base64 without line breaks.
std::string Base64(std::string_view bytes);
void AppendBase64(std::string_view bytes, std::string* out);
// The id of the extended property an extprops item with attachments sent
// after its create carries: its attachment count when complete.
std::string_view PartsProperty();
// extprops: the create request's JSON for a message, and which attachments
// follow the create (indices into m.attachments, in order). An error when
// the item cannot go through Graph at all (the reason says why).
struct ExtPropsPlan {
  std::string create_body;
  std::vector<uint32_t> later;
  std::vector<bool> session;  // per `later` entry: through an upload session
};
Result<ExtPropsPlan> PlanExtProps(const pst::Message& m, const GraphOptions& o);
constexpr uint64_t Base64Size(uint64_t n) { return (n + 2) / 3 * 4; }
// "N/SECONDS" (a budget per window, e.g. "10000/600"), SECONDS may be fractional.
Result<std::pair<uint64_t, std::chrono::milliseconds>> ParseBudget(std::string_view text);
}  // namespace graph

}  // namespace wxa::sinks
