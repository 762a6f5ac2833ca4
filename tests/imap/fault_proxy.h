// A loopback TCP proxy in front of an IMAP server's plain port that parses
// just enough IMAP (command lines, {n} / {n+} / ~{n} literals in both
// directions, tags, STARTTLS) to inject faults at exact protocol points.
// With no fault configured it forwards every byte unchanged.
//
// Deterministic by counting: a fault names the APPEND commands it hits by
// number (1-based, in the order the proxy sees them: over all connections,
// or over one user's connections when `user` is set). Faults that depend on
// what the server has already done wait for the connection to be quiet
// first (every earlier command answered), so "APPEND #3 is lost, #1 and #2
// are stored" holds whatever the client pipelines.
//
// What each fault does on the wire (README.md has the details):
//   kResetInLiteral   forwards `after_bytes` literal bytes of the APPEND,
//                     then RST to the client and FIN to the server (which
//                     drops the unfinished APPEND).
//   kStallReplies     from the tagged reply of that APPEND on, holds every
//                     server->client byte for `stall` (0 = until the
//                     connection closes); client->server keeps flowing.
//   kByeAfterOk       forwards the APPEND, forwards nothing more from the
//                     client, and when the server's tagged OK arrives sends
//                     "* BYE ..." instead of it and closes: the message IS
//                     stored, the client never sees the OK. (A NO/BAD reply
//                     passes through and the fault does not fire.)
//   kByeBeforeForward waits until the connection is quiet, then sends
//                     "* BYE ..." and closes without forwarding the APPEND.
//   kReject           answers the APPEND itself with "<tag> <response>"
//                     ("NO [LIMIT] ...", "NO [UNAVAILABLE] ...", "BAD Request
//                     is throttled. ...") in order with the other replies,
//                     swallowing its literals; the server never sees it.
//   kRejectConnection (counts connections, not APPENDs) greets with
//                     "* BYE ..." and closes without connecting upstream.
//
// Capabilities: `hide_capabilities` are removed from "* CAPABILITY" and
// every "[CAPABILITY ...]" code, `add_capabilities` appended. With
// `enforce_hidden` the proxy also behaves like a server without them:
// without LITERAL+ a {n+} literal is refused (allowed up to 4096 bytes when
// LITERAL- is still advertised); without MULTIAPPEND an APPEND with a second
// message fails with the server's tagged BAD and nothing stored; without
// UIDPLUS [APPENDUID]/[COPYUID] codes are removed from replies; without
// STARTTLS the command is answered BAD.
//
// TLS: after STARTTLS the connection is forwarded blindly (no faults, no
// rewriting). A client that upgrades whenever STARTTLS is offered must
// therefore see it hidden (hide_capabilities = {"STARTTLS"}) or talk to a
// fixture started with tls = false, for faults to apply.
//
// Threading: one I/O thread of its own. Every public method is thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "formats/core/status.h"

namespace wxa::test {

enum class FaultKind : uint8_t {
  kResetInLiteral,
  kStallReplies,
  kByeAfterOk,
  kByeBeforeForward,
  kReject,
  kRejectConnection,
};
const char* FaultKindName(FaultKind k);

struct FaultRule {
  FaultKind kind = FaultKind::kReject;
  // The first APPEND (connection, for kRejectConnection) it hits, 1-based.
  uint64_t nth = 1;
  // How many consecutive APPENDs (connections) from `nth` on; 0 = all of them.
  uint64_t times = 1;
  // Count only APPENDs on connections logged in as this user (LOGIN, or SASL
  // PLAIN's authzid, else authcid; "user*master" counts as user). "" = any.
  std::string user;
  uint64_t after_bytes = 0;            // kResetInLiteral: literal bytes forwarded first
  std::chrono::milliseconds stall{0};  // kStallReplies: 0 = forever
  // kReject: the reply after the tag. kBye*/kRejectConnection: the BYE text
  // after "* BYE ". Empty: a default naming the fault.
  std::string response;

  // Named constructors for the common cases.
  static FaultRule ResetInLiteral(uint64_t nth, uint64_t after_bytes);
  static FaultRule Stall(uint64_t nth, std::chrono::milliseconds d);  // 0 = forever
  static FaultRule ByeAfterOk(uint64_t nth);
  static FaultRule ByeBeforeForward(uint64_t nth);
  // "NO [LIMIT] Message too large (injected)".
  static FaultRule RejectLimit(uint64_t nth, uint64_t times = 1);
  // "NO [UNAVAILABLE] Server busy, try again later (injected)".
  static FaultRule Unavailable(uint64_t nth, uint64_t times = 1);
  // Exchange Online's words: "BAD Request is throttled. Suggested Backoff Time: <ms> milliseconds".
  static FaultRule ExchangeThrottle(uint64_t nth, uint64_t times = 1, int backoff_ms = 1500);
  static FaultRule RejectConnection(uint64_t nth, uint64_t times = 1);
};

struct FaultProxyOptions {
  uint16_t upstream_port = 0;  // on 127.0.0.1: the server's plain IMAP port
  std::vector<FaultRule> faults;
  std::vector<std::string> hide_capabilities;  // matched like CapabilityMatches()
  std::vector<std::string> add_capabilities;
  bool enforce_hidden = true;
  // Per direction and connection; reading pauses above it (backpressure).
  size_t max_buffered_bytes = 4u << 20;
  // Longest command or response line kept to inspect; a longer line is a
  // protocol error and closes the connection.
  size_t max_line_bytes = 1u << 20;
  std::string master_separator = "*";  // Dovecot's auth_master_user_separator
};

struct FaultProxyCounters {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;
  uint64_t append_commands = 0;  // APPEND commands seen from clients
  uint64_t append_messages = 0;  // literals inside them (one per message)
  uint64_t append_literal_bytes_forwarded = 0;
  uint64_t bytes_client_to_server = 0;
  uint64_t bytes_server_to_client = 0;
  uint64_t faults_fired = 0;  // all kinds
  uint64_t resets = 0;
  uint64_t stalls = 0;
  uint64_t byes_after_ok = 0;
  uint64_t byes_before_forward = 0;
  uint64_t rejects = 0;
  uint64_t connections_rejected = 0;
  uint64_t enforced = 0;  // commands refused because of a hidden capability
};

class FaultProxy {
 public:
  // Listens on 127.0.0.1 (a free port) and starts its thread.
  static Result<std::unique_ptr<FaultProxy>> Start(FaultProxyOptions options);
  // Closes every connection (RST) and joins the thread.
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  uint16_t port() const;

  // Replaces the rules; counting of APPENDs and connections goes on.
  void SetFaults(std::vector<FaultRule> faults);
  void AddFault(FaultRule rule);
  void SetHiddenCapabilities(std::vector<std::string> hide, std::vector<std::string> add = {});
  // Zeroes the counters and the APPEND / connection numbering (so `nth`
  // counts from the next APPEND). Connections already open keep going.
  void ResetCounters();
  FaultProxyCounters counters() const;
  // Waits until faults_fired >= n; false on timeout.
  bool WaitForFaults(uint64_t n, std::chrono::milliseconds timeout) const;
  // Resets every open connection now (a server crash, as the client sees it).
  void DropAllConnections();

  struct Impl;  // opaque; public only so the .cc's session class can name it

 private:
  FaultProxy();
  std::unique_ptr<Impl> impl_;
};

}  // namespace wxa::test
