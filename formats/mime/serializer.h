// Composed item -> RFC 5322 / MIME bytes, written directly (no object
// model): the product's renderer. Output is deterministic and CRLF:
//   headers   Date, From, Subject, To, Message-ID, In-Reply-To, References,
//             the item's X- fields, MIME-Version, Content-Type; folded at 78
//             columns; non-ASCII and anything a reader would misparse as
//             syntax goes in RFC 2047 encoded words; display names are atoms,
//             a quoted string, or encoded words; an empty To is written as
//             the group "undisclosed-recipients:;"
//   body      multipart/alternative (text/plain, text/html; utf-8, 7bit when
//             the text allows it, else quoted-printable), inside
//             multipart/mixed when there are attachments; boundaries
//             "=_wxa_<item key>_alt" / "_mix" ("=_" never occurs in
//             quoted-printable or base64, and a 7bit text never has a line
//             starting with "--")
//   parts     base64 with CRLF every 76 columns; a non-ASCII (or
//             encoded-word-like) file name is given twice in each of
//             Content-Type name= and Content-Disposition filename=: RFC 2231
//             (name*=UTF-8''...) for standard readers and an RFC 2047 word
//             in a quoted string for Outlook and older clients
// No line exceeds 998 bytes whatever the values (long words are split into
// encoded words; file names are at most 180 bytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "formats/mime/base64.h"
#include "formats/mime/compose.h"

namespace wxa::mime {

// Appends the message to *out (not cleared: a caller can reuse one buffer).
void SerializeMessage(const ComposedItem& item, std::string* out, Base64Impl base64 = Base64Impl::kAuto);

// At least the number of bytes SerializeMessage appends (for reserve()).
// Exact for attachments, generous for text.
size_t SerializedSizeBound(const ComposedItem& item);

// ---- building blocks (exposed for tests) ------------------------------------

// "Wed, 28 Oct 2020 09:00:00 +0000" for Unix seconds in [0, 253402300799].
std::string FormatRfc5322Date(int64_t unix_seconds);

// True when `text` (LF line ends) can go as 7bit: printable ASCII, tabs and
// LF only, lines of at most 998 bytes, no line starting with "--".
bool Fits7bit(std::string_view text);
// Appends `text` as quoted-printable (RFC 2045 section 6.7): LF becomes a
// CRLF line break, lines at most 76 characters, trailing white space encoded.
void AppendQuotedPrintable(std::string_view text, std::string* out);

// Appends one header field ("Name: value" + CRLF) with an unstructured
// value (RFC 5322 section 3.2.5 / RFC 2047 section 5(1)).
void AppendUnstructuredHeader(std::string_view name, std::string_view value, std::string* out);

// RFC 2231 percent-encoding of a UTF-8 value (attribute-char kept).
std::string PercentEncode2231(std::string_view value);

}  // namespace wxa::mime
