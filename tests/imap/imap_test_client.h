// A small blocking IMAP client for tests: plain, STARTTLS or implicit TLS
// (verified against a CA file), literals of every kind, replies read up to
// their tagged line with literal bytes kept exact. It is the fixture's census
// reader and the tests' probe; it is deliberately NOT the engine's client
// (engine/sinks/imap/), so a bug there cannot hide a bug here.
//
// Not thread-safe: one thread uses one client. Every call has a deadline
// (timeout_ms, per read or write), so a stalled server fails a test instead
// of hanging it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/status.h"

namespace wxa::test {

// Everything the server said for one command.
struct ImapReply {
  // Untagged ("* ...") and continuation ("+ ...") responses, each complete
  // (literal bytes inline, exactly as received), without the final CRLF.
  std::vector<std::string> untagged;
  std::string tag;
  // The tagged line after "<tag> ", without CRLF: "OK [APPENDUID 7 1:3] ...".
  std::string status;

  bool ok() const { return status.rfind("OK", 0) == 0; }
  bool no() const { return status.rfind("NO", 0) == 0; }
  bool bad() const { return status.rfind("BAD", 0) == 0; }
  // The response code of the tagged line without brackets ("APPENDUID 7 1:3"), or "".
  std::string code() const;
  // Everything received, for failure messages.
  std::string Dump() const;
};

// One piece of a command: `text`, then (when set) a literal. The client
// writes "{n}" or "{n+}" and CRLF after the text, then the literal bytes.
struct ImapPart {
  std::string text;
  std::optional<std::string> literal;
};

enum class LiteralMode : uint8_t {
  kSync,     // "{n}": wait for the server's "+" before sending the bytes
  kNonSync,  // "{n+}" (RFC 7888 LITERAL+ / LITERAL-): send at once
};

struct ImapTlsOptions {
  std::string ca_file;             // PEM; the server certificate must chain to it
  std::string host = "127.0.0.1";  // the name or IP address the certificate must be valid for
};

class ImapTestClient {
 public:
  // Connects to 127.0.0.1:port and reads the greeting (skipping Dovecot's
  // "* OK Waiting for authentication process" notice). With `implicit_tls`
  // the TLS handshake comes first (IMAPS).
  static Result<std::unique_ptr<ImapTestClient>> Connect(
      uint16_t port, const ImapTlsOptions* implicit_tls = nullptr, int timeout_ms = 10000);
  ~ImapTestClient();
  ImapTestClient(const ImapTestClient&) = delete;
  ImapTestClient& operator=(const ImapTestClient&) = delete;

  // The greeting line without CRLF ("* OK [CAPABILITY ...] Dovecot (Debian) ready.").
  const std::string& greeting() const { return greeting_; }
  bool tls() const;
  // "TLSv1.3" etc. once TLS is up, else "".
  std::string tls_version() const;

  // STARTTLS, then the handshake and verification (chain and host).
  Status StartTls(const ImapTlsOptions& tls);

  // Sends "<fresh tag> <command>\r\n" and reads up to its tagged reply.
  Result<ImapReply> Command(std::string_view command);
  // A command with literals (see ImapPart). With kSync each literal waits
  // for "+"; a tagged reply instead (the server refused it) ends the command.
  Result<ImapReply> CommandParts(const std::vector<ImapPart>& parts, LiteralMode mode);

  Status Login(std::string_view user, std::string_view password);
  // SASL PLAIN with an initial response (SASL-IR): authzid may be "" (log in as authcid).
  Status AuthenticatePlain(std::string_view authzid, std::string_view authcid,
                           std::string_view password);
  // The capability list of the most recent CAPABILITY response or
  // [CAPABILITY ...] code seen (greeting included), verbatim.
  const std::string& last_capabilities() const { return last_capabilities_; }

  // APPEND of one message; `date` is an IMAP date-time ("01-Jan-2024 10:00:00 +0800") or "".
  Result<ImapReply> Append(std::string_view mailbox, std::string_view message,
                           std::string_view flags = "\\Seen", std::string_view date = "",
                           LiteralMode mode = LiteralMode::kNonSync);
  // MULTIAPPEND (RFC 3502) of several messages in one command.
  Result<ImapReply> MultiAppend(std::string_view mailbox, const std::vector<std::string>& messages,
                                std::string_view flags = "\\Seen",
                                LiteralMode mode = LiteralMode::kNonSync);

  // ---- raw access, for tests that script the wire themselves ----
  std::string NextTag();
  Status SendRaw(std::string_view bytes);
  // One complete response (literals included), without the final CRLF.
  Result<std::string> ReadResponse();
  // Responses up to the tagged line for `tag`.
  Result<ImapReply> ReadReply(std::string_view tag);
  // True when the server closed the connection (EOF seen or reset).
  bool closed() const { return closed_; }
  void set_timeout_ms(int ms);

 private:
  ImapTestClient() = default;
  Status DoHandshake(const ImapTlsOptions& tls);
  Status Fill();  // reads more bytes into in_
  Result<std::string> ReadLine();
  Status ReadExact(size_t n, std::string* out);
  void NoteCapabilities(const std::string& response);

  struct Tls;
  int fd_ = -1;
  int timeout_ms_ = 10000;
  std::unique_ptr<Tls> tls_;
  std::string in_;
  size_t in_pos_ = 0;
  bool closed_ = false;
  std::string greeting_;
  std::string last_capabilities_;
  uint64_t tag_counter_ = 0;
};

// "\"...\"" with backslash and quote escaped (an IMAP quoted string).
std::string ImapQuote(std::string_view s);
// Standard base64 (RFC 4648) without line breaks.
std::string Base64Encode(std::string_view data);
// Decodes base64, ignoring whitespace; nullopt on bad input.
std::optional<std::string> Base64Decode(std::string_view b64);
// Parses an IMAP date-time ("dd-Mon-yyyy hh:mm:ss +zzzz", day may be space
// padded) to Unix seconds.
std::optional<int64_t> ParseImapDateTime(std::string_view s);
// The same instant as an IMAP date-time in UTC ("05-Mar-2024 08:00:00 +0000").
std::string FormatImapDateTime(int64_t unix_seconds);
// The value of header `name` (case-insensitive) in an RFC 5322 message,
// unfolded and trimmed; "" when absent.
std::string HeaderValue(std::string_view message, std::string_view name);
// Splits "A B C" on spaces.
std::vector<std::string> SplitWords(std::string_view s);
// Whether capability `cap` is named by `pattern`, case-insensitively;
// a pattern without '=' also names every "PATTERN=value" ("APPENDLIMIT"
// names "APPENDLIMIT=1024", "AUTH" names AUTH=PLAIN and AUTH=LOGIN; the
// whole name before '=' must match, so "LITERAL" names neither LITERAL+
// nor LITERAL-).
bool CapabilityMatches(std::string_view cap, std::string_view pattern);

}  // namespace wxa::test
