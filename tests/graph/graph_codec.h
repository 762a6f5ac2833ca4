// Pure parsing and encoding helpers for the fake Graph server: base64,
// URL/form decoding, OData query pieces, RFC 5322 headers and dates, ISO 8601,
// and RS256/PS256 JWT verification. No I/O, no Beast; every function is
// thread-safe and returns owned values (or views into its argument, where said).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/status.h"

namespace wxa::test::graph_codec {

// ---- base64 ----
// Standard alphabet with '=' padding.
std::string Base64Encode(std::string_view bytes);
// base64url alphabet ('-', '_'), with '=' padding kept (Graph ids look like that).
std::string Base64UrlEncode(std::string_view bytes, bool pad);
// Decodes standard base64; ASCII whitespace (CR, LF, space, tab) is skipped,
// padding is optional. nullopt on any other character or a dangling bit group.
std::optional<std::string> Base64Decode(std::string_view text);
// Decodes base64url (JWT segments: no padding, '-' and '_').
std::optional<std::string> Base64UrlDecode(std::string_view text);

// ---- URLs ----
// %XX decoding. `plus_is_space` mirrors form/ASP.NET query decoding, which is
// how Graph reads query strings: a raw '+' in $filter becomes a space.
// nullopt on a malformed escape.
std::optional<std::string> PercentDecode(std::string_view s, bool plus_is_space);
// Encodes everything but RFC 3986 unreserved characters.
std::string PercentEncode(std::string_view s);
// "a=1&b=2" -> {a:1, b:2}; keys and values percent-decoded with '+' = space.
// A repeated key keeps the first value. nullopt on a malformed escape.
std::optional<std::map<std::string, std::string>> ParseQuery(std::string_view query);

// ---- OData ----
// `prop eq 'value'` with OData quoting ('' inside the literal is one ').
// Whitespace around tokens is tolerated; nothing else may follow.
struct EqFilter {
  std::string property;
  std::string value;
};
std::optional<EqFilter> ParseEqFilter(std::string_view filter);
// singleValueExtendedProperties/Any(ep: ep/id eq '<id>' and ep/value eq '<v>')
struct ExtendedPropertyFilter {
  std::string id;
  std::string value;
};
std::optional<ExtendedPropertyFilter> ParseExtendedPropertyFilter(std::string_view filter);
// "id eq 'String 0x007D'" inside $expand=singleValueExtendedProperties($filter=...)
// is parsed with ParseEqFilter; this returns the inner filter text, or "" when
// the expand has no filter, or nullopt when singleValueExtendedProperties is
// not expanded.
std::optional<std::string> ExpandedExtendedPropertyFilter(std::string_view expand);

// ---- RFC 5322 ----
struct MimeHeader {
  std::string name;   // as written
  std::string value;  // unfolded, leading/trailing whitespace trimmed
};
// Parses the header block at the start of `mime` (CRLF or LF line ends,
// folded lines joined). *body_offset gets the offset of the body (after the
// empty line), or mime.size() when there is none.
std::vector<MimeHeader> ParseMimeHeaders(std::string_view mime, size_t* body_offset);
// First header named `name` (case-insensitive), or nullptr.
const MimeHeader* FindHeader(const std::vector<MimeHeader>& headers, std::string_view name);
// Decodes RFC 2047 encoded-words (B and Q) whose charset is UTF-8 or US-ASCII;
// words in other charsets are left as written. Whitespace between adjacent
// encoded-words is dropped, as the RFC says.
std::string DecodeEncodedWords(std::string_view value);
// RFC 5322 date-time (obsolete forms included: 2-digit years, named zones,
// missing seconds, comments) to seconds since the epoch (UTC).
std::optional<int64_t> ParseRfc5322Date(std::string_view value);
// "Name <addr>" / "<addr>" / "addr" / "\"Quoted, Name\" <addr>" -> address
// and display name of the first mailbox in the list.
struct Mailbox {
  std::string name;
  std::string address;
};
Mailbox ParseMailbox(std::string_view value);
// All mailboxes of an address list (commas outside quotes and <> split).
std::vector<Mailbox> ParseMailboxList(std::string_view value);

// ---- ISO 8601 ----
// "2024-01-02T03:04:05Z" for seconds since the epoch.
std::string FormatIso8601(int64_t epoch_seconds);
// Accepts "YYYY-MM-DDTHH:MM:SS" with optional fraction and zone (Z or ±HH:MM);
// no zone means UTC (what Graph assumes for extended SystemTime values).
std::optional<int64_t> ParseIso8601(std::string_view text);

// ---- JWT client assertions (RFC 7519 / 7518) ----
struct JwtClaims {
  std::string alg;
  std::vector<std::string> aud;
  std::string iss;
  std::string sub;
  std::string jti;
  std::optional<int64_t> exp;
  std::optional<int64_t> nbf;
};
enum class JwtError {
  kOk,
  kMalformed,     // not three base64url segments of JSON objects
  kAlgorithm,     // alg is not RS256/PS256
  kKey,           // the configured key cannot be read
  kSignature,     // signature does not verify with the configured key
};
// Splits, decodes and verifies the signature of `jwt` with `public_key_pem`
// (a PEM public key or certificate). Claims are filled whenever the token is
// well formed, so callers can report time and audience problems separately.
JwtError VerifyJwt(std::string_view jwt, std::string_view public_key_pem, JwtClaims* claims);
// True when `pem` holds an RSA public key or a certificate with one.
bool IsReadableRsaPublicKey(std::string_view pem);

// ---- small string helpers ----
bool IEquals(std::string_view a, std::string_view b);
bool IStartsWith(std::string_view s, std::string_view prefix);
std::string Lower(std::string_view s);
std::string_view TrimView(std::string_view s);
// Media type without parameters, lower-cased: "text/plain; charset=x" -> "text/plain".
std::string MediaType(std::string_view content_type);

}  // namespace wxa::test::graph_codec
