#include "formats/mime/serializer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>

namespace wxa::mime {

namespace {

constexpr size_t kFoldAt = 78;           // RFC 5322 2.1.1: lines SHOULD be at most 78 characters
constexpr size_t kMaxEncodedWord = 75;   // RFC 2047 section 2
constexpr size_t kEncodedWordOverhead = 12;  // "=?UTF-8?B?" + "?="
constexpr size_t kMaxPlainWord = 76;     // longer words go in encoded words, which can be split
constexpr size_t kMaxQpLine = 76;        // RFC 2045 6.7 (5)
constexpr size_t kMax7bitLine = 998;     // RFC 5322 2.1.1
constexpr size_t kMaxParamSegment = 60;  // characters of an RFC 2231 continuation's value
constexpr std::string_view kCrlf = "\r\n";
constexpr std::string_view kHex = "0123456789ABCDEF";

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Bytes of the UTF-8 character at s[i] (1 for a stray byte: never splits
// anything, whatever the input).
size_t CharLen(std::string_view s, size_t i) {
  size_t n = 1;
  while (i + n < s.size() && IsContinuation(static_cast<unsigned char>(s[i + n])) && n < 4) ++n;
  return n;
}

bool IsAtext(unsigned char c) {
  static constexpr std::string_view kSpecials = "!#$%&'*+-/=?^_`{|}~";
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         kSpecials.find(static_cast<char>(c)) != std::string_view::npos;
}

bool HasEncodedWordStart(std::string_view s) { return s.find("=?") != std::string_view::npos; }

// ---- header lines -----------------------------------------------------------

// Writes one header field as tokens separated by one space, folding (CRLF
// SP in place of the space) before a token that would pass column 78.
class HeaderWriter {
 public:
  HeaderWriter(std::string* out, std::string_view name) : out_(out) {
    out_->append(name).push_back(':');
    col_ = name.size() + 1;
  }
  // The separator before a token of n characters: a space, or a fold. Never
  // a fold before the first token: some readers (Python's email) keep the
  // folded white space at the start of the value.
  void Space(size_t n) {
    if (col_ + 1 + n > kFoldAt && col_ > 1 && !at_start_) {
      out_->append("\r\n ");
      col_ = 1;
    } else {
      out_->push_back(' ');
      ++col_;
    }
    at_start_ = false;
  }
  void Put(std::string_view s) {
    out_->append(s);
    col_ += s.size();
  }
  void Put(char c) {
    out_->push_back(c);
    ++col_;
  }
  void Token(std::string_view a, std::string_view b = {}, std::string_view c = {}, std::string_view d = {}) {
    Space(a.size() + b.size() + c.size() + d.size());
    Put(a);
    Put(b);
    Put(c);
    Put(d);
  }
  // Characters a token can have after a space on this line; on a fresh
  // continuation line when it cannot have any.
  size_t Room() const { return col_ + 1 < kFoldAt ? kFoldAt - col_ - 1 : 0; }
  static constexpr size_t kFreshRoom = kFoldAt - 1;
  // Nothing written after the colon yet: the next token cannot fold.
  bool AtStart() const { return at_start_; }
  void End() { out_->append(kCrlf); }
  std::string* out() { return out_; }

 private:
  std::string* out_;
  size_t col_ = 0;
  bool at_start_ = true;
};

// ---- RFC 2047 encoded words --------------------------------------------------

// Q-encoding keeps only what is safe in every context, phrases included
// (RFC 2047 section 5(3)); space is "_".
bool QLiteral(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '!' ||
         c == '*' || c == '+' || c == '-' || c == '/';
}
size_t QLen(unsigned char c) { return c == ' ' || QLiteral(c) ? 1 : 3; }

size_t QLen(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += QLen(c);
  return n;
}

size_t BLen(size_t bytes) { return (bytes + 2) / 3 * 4; }

void PutB(std::string_view bytes, HeaderWriter& w) {
  static constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  char buf[4];
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t{p[i]} << 16) | (uint32_t{p[i + 1]} << 8) | p[i + 2];
    buf[0] = kB64[v >> 18];
    buf[1] = kB64[(v >> 12) & 63];
    buf[2] = kB64[(v >> 6) & 63];
    buf[3] = kB64[v & 63];
    w.Put(std::string_view(buf, 4));
  }
  if (i < n) {
    uint32_t v = uint32_t{p[i]} << 16;
    if (i + 1 < n) v |= uint32_t{p[i + 1]} << 8;
    buf[0] = kB64[v >> 18];
    buf[1] = kB64[(v >> 12) & 63];
    buf[2] = i + 1 < n ? kB64[(v >> 6) & 63] : '=';
    buf[3] = '=';
    w.Put(std::string_view(buf, 4));
  }
}

void PutQ(std::string_view bytes, HeaderWriter& w) {
  for (unsigned char c : bytes) {
    if (c == ' ') {
      w.Put('_');
    } else if (QLiteral(c)) {
      w.Put(static_cast<char>(c));
    } else {
      const char e[3] = {'=', kHex[c >> 4], kHex[c & 15]};
      w.Put(std::string_view(e, 3));
    }
  }
}

// The longest whole-character prefix of text[i..] whose encoded form fits
// `budget` characters; with `aligned`, only prefixes of a multiple of 3
// bytes (or reaching the end) count. 0 when none does.
size_t FitPrefix(std::string_view text, size_t i, size_t budget, bool b, bool aligned) {
  size_t take = 0, qlen = 0, best = 0;
  while (i + take < text.size()) {
    const size_t len = CharLen(text, i + take);
    const size_t need = b ? BLen(take + len) : qlen + QLen(text.substr(i + take, len));
    if (need > budget) break;
    qlen = need;
    take += len;
    if (!aligned || take % 3 == 0 || i + take == text.size()) best = take;
  }
  return best;
}

// Writes `text` as encoded words (each at most 75 characters, whole UTF-8
// characters only, sized to the room left on the line), the first preceded
// by `prefix` and the last followed by `suffix` with no space between.
// B or Q, whichever is shorter for the whole text. A B word other than the
// last holds a multiple of 3 bytes (no '=' padding): GMime decodes adjacent
// B words as one base64 stream, and padding inside it loses the bytes after
// it. Where no such split fits, that word goes in Q (which ends GMime's run).
//
// `fill_line`: size the first word to the room left on the line (text,
// parameters); without it every word is as long as it can be and starts a
// new line when it does not fit (display names: Python's email inserts a
// space between adjacent encoded words in a phrase, so the fewer the better).
void WriteEncoded(HeaderWriter& w, std::string_view text, std::string_view prefix = {},
                  std::string_view suffix = {}, bool fill_line = true) {
  if (text.empty()) return;  // callers never pass one; an empty word would be "=?UTF-8?B??="
  const bool use_b = BLen(text.size()) < QLen(text);
  size_t i = 0;
  bool first = true;
  do {
    const size_t pre = first ? prefix.size() : 0;
    // Payload that fits after the prefix and before a possible suffix.
    auto budget_for = [&](size_t room) -> size_t {
      size_t cap = room > pre + suffix.size() ? room - pre - suffix.size() : 0;
      cap = std::min(cap, kMaxEncodedWord);
      return cap > kEncodedWordOverhead ? cap - kEncodedWordOverhead : 0;
    };
    // The first token stays on the header's line (no fold before it).
    const size_t fresh = budget_for(w.AtStart() ? w.Room() : HeaderWriter::kFreshRoom);
    const size_t here = fill_line ? budget_for(w.Room()) : fresh;
    bool b = use_b;
    size_t take = b ? FitPrefix(text, i, here, true, true) : FitPrefix(text, i, here, false, false);
    if (take == 0) take = b ? FitPrefix(text, i, fresh, true, true) : FitPrefix(text, i, fresh, false, false);
    if (take == 0 && b) {
      b = false;
      take = FitPrefix(text, i, here, false, false);
      if (take == 0) take = FitPrefix(text, i, fresh, false, false);
    }
    if (take == 0) take = CharLen(text, i);  // wider than any line: cannot happen (12 <= budget)
    std::string_view chunk = text.substr(i, take);
    i += take;
    const bool last = i >= text.size();
    const size_t payload = b ? BLen(chunk.size()) : QLen(chunk);
    w.Space(pre + kEncodedWordOverhead + payload + (last ? suffix.size() : 0));
    if (first) w.Put(prefix);
    w.Put(b ? "=?UTF-8?B?" : "=?UTF-8?Q?");
    if (b) {
      PutB(chunk, w);
    } else {
      PutQ(chunk, w);
    }
    w.Put("?=");
    if (last) w.Put(suffix);
    first = false;
  } while (i < text.size());
}

// A word of unstructured text that cannot be written as it is.
bool TextWordNeedsEncoding(std::string_view word) {
  if (word.size() > kMaxPlainWord) return true;
  for (unsigned char c : word) {
    if (c < 0x21 || c > 0x7E) return true;
  }
  return HasEncodedWordStart(word);
}

bool IsAtomWord(std::string_view word) {
  if (word.empty() || word.size() > kMaxPlainWord || HasEncodedWordStart(word)) return false;
  for (unsigned char c : word) {
    if (!IsAtext(c)) return false;
  }
  return true;
}

// Writes space-separated words: plain ones as they are, runs of words that
// need encoding as encoded words. Runs take the spaces between their words
// (white space between two encoded words disappears when decoded), and an
// empty word (a doubled space) right after an encoded one joins its run.
// A plain first word that would pass column 78 is encoded too (encoded
// words can be split to fit; the first token cannot fold).
template <typename NeedsEncoding>
void WriteWords(HeaderWriter& w, std::string_view value, NeedsEncoding needs_encoding) {
  size_t pos = 0, run_start = 0, run_end = 0;
  bool in_run = false;
  while (true) {
    size_t sp = value.find(' ', pos);
    if (sp == std::string_view::npos) sp = value.size();
    std::string_view word = value.substr(pos, sp - pos);
    const bool enc = word.empty() ? in_run
                                  : needs_encoding(word) || (pos == 0 && word.size() > w.Room());
    if (enc) {
      if (!in_run) run_start = pos;
      in_run = true;
      run_end = sp;
    } else {
      if (in_run) WriteEncoded(w, value.substr(run_start, run_end - run_start));
      in_run = false;
      w.Token(word);
    }
    if (sp == value.size()) break;
    pos = sp + 1;
  }
  if (in_run) WriteEncoded(w, value.substr(run_start, run_end - run_start));
}

void WriteUnstructured(HeaderWriter& w, std::string_view value) { WriteWords(w, value, TextWordNeedsEncoding); }

bool IsPrintableAscii(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c > 0x7E) return false;
  }
  return true;
}

// A display name (RFC 5322 phrase): atoms when it is made of them, a quoted
// string when it is other printable ASCII, either only when it fits on one
// line; else encoded words, the whole name in one run. So a fold falls only
// between two encoded words: GMime keeps a folded line break inside a
// display name made of atoms.
void WritePhrase(HeaderWriter& w, std::string_view name) {
  if (IsPrintableAscii(name) && !HasEncodedWordStart(name)) {
    bool atoms = true;
    size_t quoted = 2;
    size_t pos = 0;
    while (true) {
      size_t sp = name.find(' ', pos);
      if (sp == std::string_view::npos) sp = name.size();
      atoms = atoms && IsAtomWord(name.substr(pos, sp - pos));
      if (sp == name.size()) break;
      pos = sp + 1;
    }
    for (char c : name) quoted += (c == '"' || c == '\\') ? 2 : 1;
    if (atoms && name.size() < HeaderWriter::kFreshRoom) {
      w.Token(name);
      return;
    }
    if (!atoms && quoted < HeaderWriter::kFreshRoom) {
      w.Space(quoted);
      w.Put('"');
      for (char c : name) {
        if (c == '"' || c == '\\') w.Put('\\');
        w.Put(c);
      }
      w.Put('"');
      return;
    }
  }
  WriteEncoded(w, name, {}, {}, /*fill_line=*/false);
}

void WriteMailbox(HeaderWriter& w, const Mailbox& m, bool last) {
  std::string_view sep = last ? "" : ",";
  if (m.name.empty()) {
    w.Token(m.address, sep);
    return;
  }
  WritePhrase(w, m.name);
  w.Token("<", m.address, ">", sep);
}

// ---- parameters ---------------------------------------------------------------

// RFC 2045 token characters: a value made of them needs no quotes.
bool IsTokenChar(unsigned char c) {
  static constexpr std::string_view kTspecials = "()<>@,;:\\\"/[]?=";
  return c > 0x20 && c < 0x7F && kTspecials.find(static_cast<char>(c)) == std::string_view::npos;
}

// RFC 2231 attribute-char: token characters other than '*', '\'' and '%'.
bool IsAttributeChar(unsigned char c) { return IsTokenChar(c) && c != '*' && c != '\'' && c != '%'; }

size_t PercentLen(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += IsAttributeChar(c) ? 1 : 3;
  return n;
}

void PutPercent(std::string_view s, HeaderWriter& w) {
  for (unsigned char c : s) {
    if (IsAttributeChar(c)) {
      w.Put(static_cast<char>(c));
    } else {
      const char e[3] = {'%', kHex[c >> 4], kHex[c & 15]};
      w.Put(std::string_view(e, 3));
    }
  }
}

// RFC 2231: attr*=UTF-8''<percent-encoded>, or continuations attr*0*=,
// attr*1*=, ... of at most 60 characters each, split between characters.
void WriteParam2231(HeaderWriter& w, std::string_view attr, std::string_view value, std::string_view sep) {
  constexpr std::string_view kCharset = "UTF-8''";
  const size_t total = PercentLen(value);
  if (attr.size() + 2 + kCharset.size() + total + sep.size() <= kMaxPlainWord) {
    w.Space(attr.size() + 2 + kCharset.size() + total + sep.size());
    w.Put(attr);
    w.Put("*=");
    w.Put(kCharset);
    PutPercent(value, w);
    w.Put(sep);
    return;
  }
  size_t i = 0;
  for (int n = 0; i < value.size(); ++n) {
    size_t take = 0, len = 0;
    while (i + take < value.size()) {
      size_t cl = CharLen(value, i + take);
      size_t cl_len = PercentLen(value.substr(i + take, cl));
      if (len + cl_len > kMaxParamSegment && take > 0) break;
      take += cl;
      len += cl_len;
    }
    std::string_view chunk = value.substr(i, take);
    i += take;
    const bool last = i >= value.size();
    std::string index = "*" + std::to_string(n) + "*=";
    std::string_view charset = n == 0 ? kCharset : std::string_view();
    std::string_view tail = last ? sep : std::string_view(";");
    w.Space(attr.size() + index.size() + charset.size() + len + tail.size());
    w.Put(attr);
    w.Put(index);
    w.Put(charset);
    PutPercent(chunk, w);
    w.Put(tail);
  }
}

// A file name parameter. ASCII names: a token or a quoted string. Others
// (and names a reader would decode as an encoded word): an RFC 2047 word in
// a quoted string (what Outlook reads), then the RFC 2231 form.
void WriteFileNameParam(HeaderWriter& w, std::string_view attr, std::string_view value, bool last) {
  std::string_view sep = last ? "" : ";";
  if (value.empty()) {
    w.Token(attr, "=\"\"", sep);
    return;
  }
  if (IsPrintableAscii(value) && !HasEncodedWordStart(value)) {
    // A token only of attribute-chars: Python's email reads no file name
    // from an unquoted value with an apostrophe (RFC 2231's delimiter).
    bool token = true;
    size_t quoted = 2;
    for (unsigned char c : value) {
      token = token && IsAttributeChar(c);
      quoted += (c == '"' || c == '\\') ? 2 : 1;
    }
    if (token) {
      w.Token(attr, "=", value, sep);
      return;
    }
    // At most 180 bytes (sanitized names): one token, within 998 columns.
    w.Space(attr.size() + 1 + quoted + sep.size());
    w.Put(attr);
    w.Put("=\"");
    for (char c : value) {
      if (c == '"' || c == '\\') w.Put('\\');
      w.Put(c);
    }
    w.Put('"');
    w.Put(sep);
    return;
  }
  std::string prefix(attr);
  prefix += "=\"";
  WriteEncoded(w, value, prefix, "\";");
  WriteParam2231(w, attr, value, sep);
}

// ---- bodies ----------------------------------------------------------------------

struct QpTable {
  // 0: literal; 1: =XX; 2: space or tab (literal unless it ends a line).
  std::array<uint8_t, 256> kind{};
  constexpr QpTable() {
    for (int c = 0; c < 256; ++c) kind[c] = (c >= 33 && c <= 126 && c != '=') ? 0 : 1;
    kind[' '] = 2;
    kind['\t'] = 2;
  }
};
constexpr QpTable kQp;

void WriteBoundaryLine(std::string_view key_hex, std::string_view which, bool close, std::string* out) {
  out->append("--=_wxa_").append(key_hex).append(which);
  if (close) out->append("--");
  out->append(kCrlf);
}

void WriteMultipartType(std::string_view subtype, std::string_view key_hex, std::string_view which,
                        std::string* out) {
  out->append("Content-Type: multipart/").append(subtype).append(";\r\n\tboundary=\"=_wxa_");
  out->append(key_hex).append(which).append("\"\r\n");
}

void WriteTextPart(std::string_view subtype, std::string_view text, Base64Impl base64, std::string* out) {
  out->append("Content-Type: text/").append(subtype).append("; charset=utf-8\r\n");
  if (Fits7bit(text)) {
    out->append("Content-Transfer-Encoding: 7bit\r\n\r\n");
    size_t start = 0;
    for (size_t nl; (nl = text.find('\n', start)) != std::string_view::npos; start = nl + 1) {
      out->append(text.substr(start, nl - start)).append(kCrlf);
    }
    out->append(text.substr(start));
    return;
  }
  // Quoted-printable keeps mostly-ASCII text readable; text that is mostly
  // not ASCII (CJK: 3 bytes a character, each "=XX" in quoted-printable)
  // is smaller in base64: about n + 2e bytes against 1.37 n, so base64 when
  // more than about a fifth of the bytes need encoding.
  size_t encoded = 0;
  for (unsigned char c : text) encoded += c != '\n' && kQp.kind[c] == 1;
  if (encoded * 5 <= text.size()) {
    out->append("Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    AppendQuotedPrintable(text, out);
    return;
  }
  // Base64 of the canonical form: CRLF line ends (RFC 2045 6.8).
  thread_local std::string canonical;
  canonical.clear();
  canonical.reserve(text.size() + text.size() / 16 + 2);
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string_view::npos; start = nl + 1) {
    canonical.append(text.substr(start, nl - start)).append(kCrlf);
  }
  canonical.append(text.substr(start));
  out->append("Content-Transfer-Encoding: base64\r\n\r\n");
  AppendBase64Mime(canonical, out, base64);
}

void WriteAttachment(const ComposedAttachment& a, Base64Impl base64, std::string* out) {
  {
    HeaderWriter w(out, "Content-Type");
    w.Token(a.content_type, ";");
    WriteFileNameParam(w, "name", a.file_name, true);
    w.End();
  }
  {
    HeaderWriter w(out, "Content-Disposition");
    w.Token("attachment;");
    WriteFileNameParam(w, "filename", a.file_name, true);
    w.End();
  }
  out->append("Content-Transfer-Encoding: base64\r\n\r\n");
  AppendBase64Mime(a.bytes(), out, base64);
}

}  // namespace

std::string FormatRfc5322Date(int64_t t) {
  static constexpr const char* kDays[] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  t = std::clamp<int64_t>(t, 0, 253402300799);
  const int64_t days = t / 86400;
  const int64_t secs = t % 86400;
  // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible
  // Low-Level Date Algorithms"): eras of 400 years starting on March 1.
  const int64_t z = days + 719468;
  const int64_t era = z / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  const int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  char buf[40];
  int n = std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000", kDays[days % 7],
                        static_cast<int>(d), kMonths[m - 1], static_cast<int>(y),
                        static_cast<int>(secs / 3600), static_cast<int>(secs / 60 % 60),
                        static_cast<int>(secs % 60));
  return std::string(buf, static_cast<size_t>(n));
}

bool Fits7bit(std::string_view text) {
  size_t line = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      line = 0;
      continue;
    }
    if ((c < 0x20 && c != '\t') || c > 0x7E) return false;
    if (line == 0 && c == '-' && i + 1 < text.size() && text[i + 1] == '-') return false;
    if (++line > kMax7bitLine) return false;
  }
  return true;
}

void AppendQuotedPrintable(std::string_view text, std::string* out) {
  // Worst case: 3 characters a byte plus a soft break ("=\r\n") every 25.
  const size_t at = out->size();
  out->resize(at + text.size() * 3 + text.size() / 8 + 8);
  char* o = out->data() + at;
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t col = 0;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = p[i];
    if (c == '\n') {
      *o++ = '\r';
      *o++ = '\n';
      col = 0;
      continue;
    }
    uint8_t kind = kQp.kind[c];
    const bool ends_line = i + 1 == n || p[i + 1] == '\n';
    if (kind == 2) kind = ends_line ? 1 : 0;  // trailing white space would be stripped
    const size_t len = kind == 0 ? 1 : 3;
    // Room for a soft break's '=' unless this is the line's last character.
    if (col + len > kMaxQpLine - 1 && !(ends_line && col + len <= kMaxQpLine)) {
      *o++ = '=';
      *o++ = '\r';
      *o++ = '\n';
      col = 0;
    }
    if (kind == 0) {
      *o++ = static_cast<char>(c);
    } else {
      *o++ = '=';
      *o++ = kHex[c >> 4];
      *o++ = kHex[c & 15];
    }
    col += len;
  }
  out->resize(static_cast<size_t>(o - out->data()));
}

void AppendUnstructuredHeader(std::string_view name, std::string_view value, std::string* out) {
  HeaderWriter w(out, name);
  WriteUnstructured(w, value);
  w.End();
}

std::string PercentEncode2231(std::string_view value) {
  std::string out;
  out.reserve(PercentLen(value));
  for (unsigned char c : value) {
    if (IsAttributeChar(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

size_t SerializedSizeBound(const ComposedItem& item) {
  // Headers: an encoded word costs at most 3 characters a byte (Q) and
  // 12 + 2 (fold) per word; 4 bytes a byte is a safe bound for everything.
  size_t n = 1024 + 4 * item.subject.size() + 4 * (item.from.name.size() + item.from.address.size());
  for (const auto& m : item.to) n += 4 * (m.name.size() + m.address.size()) + 8;
  for (const auto& r : item.references) n += r.size() + 8;
  n += item.in_reply_to.size() + item.message_id.size();
  for (const auto& f : item.fields) n += f.name.size() + 4 * f.value.size() + 8;
  // Bodies: quoted-printable's bound (above), plus part headers.
  n += item.plain.size() * 3 + item.plain.size() / 8 + item.html.size() * 3 + item.html.size() / 8 + 512;
  for (const auto& a : item.attachments) {
    n += 512 + 16 * a.file_name.size() + Base64MimeSize(a.size);
  }
  return n;
}

void SerializeMessage(const ComposedItem& item, std::string* out, Base64Impl base64) {
  out->append("Date: ").append(FormatRfc5322Date(item.date_s)).append(kCrlf);
  {
    HeaderWriter w(out, "From");
    WriteMailbox(w, item.from, true);
    w.End();
  }
  AppendUnstructuredHeader("Subject", item.subject, out);
  {
    HeaderWriter w(out, "To");
    if (item.to.empty()) w.Token("undisclosed-recipients:;");
    for (size_t i = 0; i < item.to.size(); ++i) WriteMailbox(w, item.to[i], i + 1 == item.to.size());
    w.End();
  }
  out->append("Message-ID: <").append(item.message_id).append(">\r\n");
  if (!item.in_reply_to.empty()) out->append("In-Reply-To: <").append(item.in_reply_to).append(">\r\n");
  if (!item.references.empty()) {
    HeaderWriter w(out, "References");
    for (const auto& r : item.references) w.Token("<", r, ">");
    w.End();
  }
  for (const auto& f : item.fields) AppendUnstructuredHeader(f.name, f.value, out);
  out->append("MIME-Version: 1.0\r\n");

  const std::string_view key = item.key_hex;
  const bool mixed = !item.attachments.empty();
  if (mixed) {
    WriteMultipartType("mixed", key, "_mix", out);
    out->append(kCrlf);
    WriteBoundaryLine(key, "_mix", false, out);
  }
  WriteMultipartType("alternative", key, "_alt", out);
  out->append(kCrlf);
  WriteBoundaryLine(key, "_alt", false, out);
  WriteTextPart("plain", item.plain, base64, out);
  out->append(kCrlf);
  WriteBoundaryLine(key, "_alt", false, out);
  WriteTextPart("html", item.html, base64, out);
  out->append(kCrlf);
  WriteBoundaryLine(key, "_alt", true, out);
  if (mixed) {
    for (const auto& a : item.attachments) {
      out->append(kCrlf);
      WriteBoundaryLine(key, "_mix", false, out);
      WriteAttachment(a, base64, out);
    }
    out->append(kCrlf);
    WriteBoundaryLine(key, "_mix", true, out);
  }
}

}  // namespace wxa::mime
