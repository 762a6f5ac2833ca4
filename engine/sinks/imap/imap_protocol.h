// The IMAP4rev1 pieces the upload client needs (RFC 3501, with LITERAL+
// RFC 7888, MULTIAPPEND RFC 3502, UIDPLUS RFC 4315, APPENDLIMIT RFC 7889),
// as pure functions: formatting commands and parsing responses. No I/O here,
// so every rule is unit-tested against the RFC's grammar.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace wxa::sinks::imap {

// One server response, with any literals it carried spliced into `line`.
struct Response {
  enum class Kind : uint8_t { kUntagged, kTagged, kContinuation };
  Kind kind = Kind::kUntagged;
  std::string tag;     // kTagged
  std::string status;  // OK / NO / BAD / BYE / PREAUTH, or the untagged keyword
                       // ("CAPABILITY", "LIST", "SEARCH", "EXISTS" ...), upper case
  std::string code;    // the response code inside [...], without brackets
  std::string text;    // human text after the code
  std::string line;    // the whole response (literal data inline)
  uint64_t number = 0; // "* 5 EXISTS": 5
};

// Parses one response line (without its CRLF). Literals announced at line
// ends must already be spliced in by the reader.
Response ParseResponse(std::string_view line);

// If a line ends with a literal announcement "{n}" (or "{n+}"), its size.
std::optional<uint64_t> TrailingLiteral(std::string_view line);

// CAPABILITY atoms, upper case, from "* CAPABILITY ..." or a [CAPABILITY ...] code.
std::set<std::string> ParseCapabilities(std::string_view atoms);

struct AppendUid {
  uint32_t uidvalidity = 0;
  std::vector<uint32_t> uids;  // in message order (a uid-set expanded)
};
// "APPENDUID 38505 3955" or "APPENDUID 38505 3955:3957,3960" (MULTIAPPEND).
std::optional<AppendUid> ParseAppendUid(std::string_view code);
// "UIDVALIDITY 3857529045"
std::optional<uint32_t> ParseUidValidity(std::string_view code);
// The numbers of "* SEARCH 2 84 882".
std::vector<uint32_t> ParseSearch(std::string_view line);

struct ListEntry {
  std::vector<std::string> flags;  // \Noselect, \HasChildren, ...
  std::string delimiter;           // "" when NIL
  std::string name;                // decoded from quoted string, literal or atom
};
std::optional<ListEntry> ParseList(std::string_view line);

// An astring argument: the atom itself when it is safe, else a quoted
// string; nullopt when only a literal can carry it (CR, LF, NUL, 8-bit).
std::optional<std::string> Quote(std::string_view s);

// RFC 3501 date-time for INTERNALDATE: "05-Jan-2020 14:03:09 +0000" (UTC).
std::string InternalDate(int64_t msgtime_ms);

// How long a server asks the client to wait: Exchange's "Suggested Backoff
// Time: 299961 milliseconds", or nullopt.
std::optional<std::chrono::milliseconds> SuggestedBackoff(std::string_view text);

// Whether a tagged NO/BAD (or a BYE) means "try again later" rather than
// "this will never work": [UNAVAILABLE], [THROTTLED], [INUSE], [LIMIT] with
// a backoff hint, Exchange's throttling text.
bool IsTemporary(const Response& r);

std::string Base64(std::string_view data);
std::optional<std::string> Base64Decode(std::string_view b64);
// SASL PLAIN initial response: base64(authzid NUL authcid NUL password).
std::string SaslPlain(std::string_view authzid, std::string_view authcid, std::string_view password);
// SASL XOAUTH2 initial response: base64("user=" u "\x01auth=Bearer " t "\x01\x01").
std::string SaslXoauth2(std::string_view user, std::string_view token);

// A mailbox (folder) name for the wire: each level in modified UTF-7, joined
// with the server's hierarchy delimiter.
std::string MailboxName(const std::vector<std::string>& levels, std::string_view delimiter);

}  // namespace wxa::sinks::imap
