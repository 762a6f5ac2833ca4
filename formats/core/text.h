// Text helpers shared by readers and renderers: trimming, UTF-8 checks and
// repair, control-character handling, safe names, and time formatting.
// All functions are pure; returned strings are owned by the caller.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace wxa::core {

std::string_view Trim(std::string_view s);
std::string AsciiLower(std::string_view s);

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF).
bool IsValidUtf8(std::string_view s);
// Replaces each ill-formed sequence with U+FFFD. Returns the number replaced.
size_t RepairUtf8(std::string_view in, std::string* out);

// Removes C0 controls (except \n and \t when keep_newlines), DEL and C1 controls;
// converts CR LF / CR to LF when keep_newlines. Input must be valid UTF-8.
std::string StripControls(std::string_view s, bool keep_newlines);

// A single-line version of `s` for headers and subjects: controls and line
// breaks become spaces, runs of spaces collapse, ends trimmed.
std::string OneLine(std::string_view s);

// Cuts valid UTF-8 to at most max_bytes without splitting a code point;
// appends "…" when something was cut (the ellipsis fits in max_bytes).
std::string TruncateUtf8(std::string_view s, size_t max_bytes);

// A file name safe to offer as an attachment name: no path separators, no
// controls, no leading dots or spaces, at most 180 bytes; `fallback` if empty.
std::string SanitizeFileName(std::string_view name, std::string_view fallback);

// &, <, >, " escaped.
std::string HtmlEscape(std::string_view s);

// "2019-01-10 02:38:14 UTC" for milliseconds since the epoch.
std::string FormatUtcMillis(int64_t ms);
// The same for seconds. Both say "... (out of range)" outside years 1-9999
// (record times are untrusted input: no overflow, whatever the value).
std::string FormatUtcSeconds(int64_t s);
// "1:02:03" or "0:10" for a duration in seconds.
std::string FormatDuration(int64_t seconds);

// True when s consists only of ASCII digits (and is not empty).
bool AllDigits(std::string_view s);

}  // namespace wxa::core
