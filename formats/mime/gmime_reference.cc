#include "formats/mime/gmime_reference.h"

#include <gmime/gmime.h>

#include <algorithm>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/mime/gobject_ptr.h"

namespace wxa::mime::reference {

namespace {

struct DateTimeDeleter {
  void operator()(GDateTime* d) const { g_date_time_unref(d); }
};
struct ReferencesDeleter {
  void operator()(GMimeReferences* r) const { g_mime_references_free(r); }
};
struct FormatOptionsDeleter {
  void operator()(GMimeFormatOptions* o) const { g_mime_format_options_free(o); }
};
using FormatOptionsPtr = std::unique_ptr<GMimeFormatOptions, FormatOptionsDeleter>;

// Per thread and reused, as the renderer kept them (STYLE rule 5).
GMimeFormatOptions* FormatOptions() {
  thread_local FormatOptionsPtr options = [] {
    FormatOptionsPtr o(g_mime_format_options_new());
    g_mime_format_options_set_newline_format(o.get(), GMIME_NEWLINE_FORMAT_DOS);
    g_mime_format_options_set_param_encoding_method(o.get(), GMIME_PARAM_ENCODING_METHOD_RFC2231);
    return o;
  }();
  return options.get();
}

std::string Str(const char* s) { return s == nullptr ? std::string() : std::string(s); }

std::string LfToCrlf(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 16);
  for (char c : s) {
    if (c == '\n') out.push_back('\r');
    out.push_back(c);
  }
  return out;
}

std::string WithoutCr(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c != '\r') out.push_back(c);
  }
  return out;
}

bool IsAsciiName(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c > 0x7E) return false;
  }
  return s.find("=?") == std::string_view::npos;
}

// ---- building with GMime's object model -------------------------------------

GPtr<GMimeTextPart> MakeTextPart(const char* subtype, const std::string& text) {
  GPtr<GMimeTextPart> part(g_mime_text_part_new_with_subtype(subtype));
  g_mime_text_part_set_text(part.get(), text.c_str());
  g_mime_text_part_set_charset(part.get(), "utf-8");
  GMimePart* mp = GMIME_PART(part.get());
  g_mime_part_set_content_encoding(mp, g_mime_part_get_best_content_encoding(mp, GMIME_ENCODING_CONSTRAINT_7BIT));
  return part;
}

GPtr<GMimePart> MakeFilePart(const ComposedAttachment& a) {
  size_t slash = a.content_type.find('/');
  GPtr<GMimePart> part(g_mime_part_new_with_type(a.content_type.substr(0, slash).c_str(),
                                                 a.content_type.substr(slash + 1).c_str()));
  GPtr<GMimeStream> stream(g_mime_stream_mem_new_with_buffer(a.data, a.size));
  GPtr<GMimeDataWrapper> wrapper(g_mime_data_wrapper_new_with_stream(stream.get(), GMIME_CONTENT_ENCODING_DEFAULT));
  g_mime_part_set_content(part.get(), wrapper.get());
  g_mime_part_set_filename(part.get(), a.file_name.c_str());  // also sets the disposition
  g_mime_object_set_disposition(GMIME_OBJECT(part.get()), GMIME_DISPOSITION_ATTACHMENT);
  g_mime_object_set_content_disposition_parameter(GMIME_OBJECT(part.get()), "filename", a.file_name.c_str());
  g_mime_part_set_content_encoding(part.get(), GMIME_CONTENT_ENCODING_BASE64);
  return part;
}

// Without g_mime_multipart_new_with_subtype()'s random boundary (an open,
// read and close of /dev/urandom per multipart).
GPtr<GMimeMultipart> NewMultipart(const char* subtype, const std::string& boundary) {
  GPtr<GMimeMultipart> mp(GMIME_MULTIPART(g_object_new(GMIME_TYPE_MULTIPART, nullptr)));
  GPtr<GMimeContentType> type(g_mime_content_type_new("multipart", subtype));
  g_mime_object_set_content_type(GMIME_OBJECT(mp.get()), type.get());
  g_mime_multipart_set_boundary(mp.get(), boundary.c_str());
  return mp;
}

// ---- reading ------------------------------------------------------------------

std::string DecodedContent(GMimePart* part) {
  GMimeDataWrapper* content = g_mime_part_get_content(part);
  if (content == nullptr) return {};
  GPtr<GMimeStream> out(g_mime_stream_mem_new());
  g_mime_data_wrapper_write_to_stream(content, out.get());
  GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(out.get()));
  return std::string(reinterpret_cast<const char*>(bytes->data), bytes->len);
}

std::string MimeType(GMimeObject* obj) {
  GMimeContentType* ct = g_mime_object_get_content_type(obj);
  if (ct == nullptr) return {};
  GCharPtr type(g_mime_content_type_get_mime_type(ct));
  return Str(type.get());
}

// The unfolded raw value of a header of obj ("" when absent).
std::string RawHeader(GMimeObject* obj, const char* name) {
  GMimeHeaderList* list = g_mime_object_get_header_list(obj);
  GMimeHeader* h = g_mime_header_list_get_header(list, name);
  if (h == nullptr) return {};
  std::string out;
  for (const char* p = g_mime_header_get_raw_value(h); p != nullptr && *p != '\0'; ++p) {
    if (*p != '\r' && *p != '\n') out.push_back(*p);
  }
  return out;
}

// Splits "type; a=1; b=\"x;y\"" at the semicolons outside quoted strings;
// drops the first element (the type or disposition).
std::vector<std::string> SplitParams(std::string_view v) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (quoted && c == '\\' && i + 1 < v.size()) {
      cur.push_back(c);
      cur.push_back(v[++i]);
      continue;
    }
    if (c == '"') quoted = !quoted;
    if (c == ';' && !quoted) {
      out.push_back(cur);
      cur.clear();
      continue;
    }
    cur.push_back(c);
  }
  out.push_back(cur);
  if (!out.empty()) out.erase(out.begin());
  for (auto& p : out) {
    size_t b = p.find_first_not_of(" \t");
    p = b == std::string::npos ? std::string() : p.substr(b);
  }
  return out;
}

// The value GMime's parameter parser reads for `attr` from only the plain
// (attr=) or only the RFC 2231 (attr*=, attr*N=, attr*N*=) parameters.
std::string ParamForm(const std::vector<std::string>& params, const std::string& attr, bool rfc2231) {
  std::string joined;
  for (const auto& p : params) {
    size_t eq = p.find('=');
    if (eq == std::string::npos) continue;
    std::string name = p.substr(0, eq);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    bool star = name.size() > attr.size() && name.compare(0, attr.size(), attr) == 0 && name[attr.size()] == '*';
    if (rfc2231 ? star : name == attr) {
      if (!joined.empty()) joined += "; ";
      joined += p;
    }
  }
  if (joined.empty()) return {};
  GPtr<GMimeParamList> list(g_mime_param_list_parse(nullptr, joined.c_str()));
  if (!list) return {};
  GMimeParam* param = g_mime_param_list_get_parameter(list.get(), attr.c_str());
  return param == nullptr ? std::string() : Str(g_mime_param_get_value(param));
}

ParsedAttachment ReadAttachment(GMimeObject* obj) {
  ParsedAttachment a;
  a.content_type = MimeType(obj);
  GMimeContentDisposition* cd = g_mime_object_get_content_disposition(obj);
  if (cd != nullptr) a.disposition = Str(g_mime_content_disposition_get_disposition(cd));
  if (GMIME_IS_PART(obj)) {
    a.file_name = Str(g_mime_part_get_filename(GMIME_PART(obj)));
    a.bytes = DecodedContent(GMIME_PART(obj));
  }
  std::vector<std::string> ct = SplitParams(RawHeader(obj, "Content-Type"));
  std::vector<std::string> disp = SplitParams(RawHeader(obj, "Content-Disposition"));
  a.name_plain = ParamForm(ct, "name", false);
  a.name_2231 = ParamForm(ct, "name", true);
  a.filename_plain = ParamForm(disp, "filename", false);
  a.filename_2231 = ParamForm(disp, "filename", true);
  return a;
}

void ReadMailboxes(InternetAddressList* list, std::vector<ParsedMailbox>* out, std::vector<std::string>* groups) {
  if (list == nullptr) return;
  for (int i = 0; i < internet_address_list_length(list); ++i) {
    InternetAddress* a = internet_address_list_get_address(list, i);
    if (INTERNET_ADDRESS_IS_GROUP(a)) {
      if (groups != nullptr) groups->push_back(Str(internet_address_get_name(a)));
      ReadMailboxes(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)), out, groups);
    } else if (INTERNET_ADDRESS_IS_MAILBOX(a)) {
      out->push_back({Str(internet_address_get_name(a)),
                      Str(internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a)))});
    }
  }
}

std::vector<std::string> ParseReferences(const std::string& value) {
  std::vector<std::string> out;
  if (value.empty()) return out;
  std::unique_ptr<GMimeReferences, ReferencesDeleter> refs(g_mime_references_parse(nullptr, value.c_str()));
  if (!refs) return out;
  for (int i = 0; i < g_mime_references_length(refs.get()); ++i) {
    out.push_back(Str(g_mime_references_get_message_id(refs.get(), i)));
  }
  return out;
}

// "multipart/mixed(multipart/alternative(text/plain,text/html),image/png)"
std::string Describe(GMimeObject* obj) {
  std::string s = MimeType(obj);
  if (GMIME_IS_MULTIPART(obj)) {
    GMimeMultipart* mp = GMIME_MULTIPART(obj);
    s += "(";
    for (int i = 0; i < g_mime_multipart_get_count(mp); ++i) {
      if (i > 0) s += ",";
      s += Describe(g_mime_multipart_get_part(mp, i));
    }
    s += ")";
  }
  return s;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string Quote(std::string_view s) {
  constexpr size_t kMax = 160;
  std::string out = "'";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += fmt::format("...' ({} bytes)", s.size());
  else out += "'";
  return out;
}

// The first position where a and b differ, for messages about long values.
std::string FirstDifference(std::string_view a, std::string_view b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  size_t from = i > 20 ? i - 20 : 0;
  return fmt::format("differ at byte {} (sizes {} and {}): got {} want {}", i, a.size(), b.size(),
                     Quote(a.substr(from, 60)), Quote(b.substr(from, 60)));
}

}  // namespace

Result<std::string> RenderWithGMime(const ComposedItem& item) {
  GPtr<GMimeMessage> msg(g_mime_message_new(TRUE));
  GMimeObject* mo = GMIME_OBJECT(msg.get());
  g_mime_message_add_mailbox(msg.get(), GMIME_ADDRESS_TYPE_FROM, item.from.name.c_str(), item.from.address.c_str());
  if (item.to.empty()) {
    GPtr<InternetAddress> group(internet_address_group_new("undisclosed-recipients"));
    internet_address_list_add(g_mime_message_get_addresses(msg.get(), GMIME_ADDRESS_TYPE_TO), group.get());
  }
  for (const auto& t : item.to) {
    g_mime_message_add_mailbox(msg.get(), GMIME_ADDRESS_TYPE_TO, t.name.c_str(), t.address.c_str());
  }
  g_mime_message_set_subject(msg.get(), item.subject.c_str(), "utf-8");
  std::unique_ptr<GDateTime, DateTimeDeleter> dt(g_date_time_new_from_unix_utc(item.date_s));
  g_mime_message_set_date(msg.get(), dt.get());
  g_mime_message_set_message_id(msg.get(), item.message_id.c_str());
  if (!item.in_reply_to.empty()) {
    g_mime_object_set_header(mo, "In-Reply-To", ("<" + item.in_reply_to + ">").c_str(), nullptr);
  }
  std::string refs;
  for (const auto& r : item.references) refs += (refs.empty() ? "<" : " <") + r + ">";
  if (!refs.empty()) g_mime_object_set_header(mo, "References", refs.c_str(), nullptr);
  for (const auto& f : item.fields) {
    g_mime_object_set_header(mo, std::string(f.name).c_str(), f.value.c_str(), "utf-8");
  }
  GPtr<GMimeMultipart> alt = NewMultipart("alternative", "=_wxa_" + item.key_hex + "_alt");
  g_mime_multipart_add(alt.get(), GMIME_OBJECT(MakeTextPart("plain", item.plain).get()));
  g_mime_multipart_add(alt.get(), GMIME_OBJECT(MakeTextPart("html", item.html).get()));
  if (item.attachments.empty()) {
    g_mime_message_set_mime_part(msg.get(), GMIME_OBJECT(alt.get()));
  } else {
    GPtr<GMimeMultipart> mixed = NewMultipart("mixed", "=_wxa_" + item.key_hex + "_mix");
    g_mime_multipart_add(mixed.get(), GMIME_OBJECT(alt.get()));
    for (const auto& a : item.attachments) g_mime_multipart_add(mixed.get(), GMIME_OBJECT(MakeFilePart(a).get()));
    g_mime_message_set_mime_part(msg.get(), GMIME_OBJECT(mixed.get()));
  }
  GPtr<GMimeStream> out(g_mime_stream_mem_new());
  if (g_mime_object_write_to_stream(mo, FormatOptions(), out.get()) < 0) {
    return Status::IOError(fmt::format("GMime could not write item {}", item.message_id));
  }
  GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(out.get()));
  return std::string(reinterpret_cast<const char*>(bytes->data), bytes->len);
}

Result<ParsedMessage> ParseWithGMime(std::string_view message) {
  GPtr<GMimeStream> stream(g_mime_stream_mem_new_with_buffer(message.data(), message.size()));
  GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
  GPtr<GMimeMessage> msg(g_mime_parser_construct_message(parser.get(), nullptr));
  if (!msg) return Status::Corruption("GMime could not parse the message");
  GMimeObject* mo = GMIME_OBJECT(msg.get());
  ParsedMessage p;
  GMimeHeaderList* headers = g_mime_object_get_header_list(mo);
  for (int i = 0; i < g_mime_header_list_get_count(headers); ++i) {
    GMimeHeader* h = g_mime_header_list_get_header_at(headers, i);
    std::string name = Str(g_mime_header_get_name(h));
    p.header_names.push_back(name);
    if (name.size() > 2 && (name[0] == 'X' || name[0] == 'x') && name[1] == '-') {
      p.x_fields.emplace_back(name, Str(g_mime_header_get_value(h)));
    }
  }
  p.subject = Str(g_mime_message_get_subject(msg.get()));
  ReadMailboxes(g_mime_message_get_from(msg.get()), &p.from, nullptr);
  ReadMailboxes(g_mime_message_get_to(msg.get()), &p.to, &p.to_groups);
  if (GDateTime* d = g_mime_message_get_date(msg.get())) p.date_s = g_date_time_to_unix(d);
  p.message_id = Str(g_mime_message_get_message_id(msg.get()));
  std::vector<std::string> irt = ParseReferences(Str(g_mime_object_get_header(mo, "In-Reply-To")));
  if (!irt.empty()) p.in_reply_to = irt.front();
  p.references = ParseReferences(Str(g_mime_object_get_header(mo, "References")));

  GMimeObject* top = g_mime_message_get_mime_part(msg.get());
  if (top == nullptr) return p;
  p.structure = Describe(top);
  GMimeObject* alt = top;
  std::vector<GMimeObject*> rest;
  if (GMIME_IS_MULTIPART(top) && MimeType(top) == "multipart/mixed") {
    GMimeMultipart* mixed = GMIME_MULTIPART(top);
    alt = g_mime_multipart_get_count(mixed) > 0 ? g_mime_multipart_get_part(mixed, 0) : nullptr;
    for (int i = 1; i < g_mime_multipart_get_count(mixed); ++i) rest.push_back(g_mime_multipart_get_part(mixed, i));
  }
  if (alt != nullptr && GMIME_IS_MULTIPART(alt)) {
    GMimeMultipart* mp = GMIME_MULTIPART(alt);
    for (int i = 0; i < g_mime_multipart_get_count(mp); ++i) {
      GMimeObject* part = g_mime_multipart_get_part(mp, i);
      if (!GMIME_IS_PART(part)) continue;
      std::string type = MimeType(part);
      std::string charset = Str(g_mime_content_type_get_parameter(g_mime_object_get_content_type(part), "charset"));
      if (type == "text/plain" && p.plain_charset.empty()) {
        p.plain = DecodedContent(GMIME_PART(part));
        p.plain_charset = charset;
      } else if (type == "text/html" && p.html_charset.empty()) {
        p.html = DecodedContent(GMIME_PART(part));
        p.html_charset = charset;
      }
    }
  }
  for (GMimeObject* part : rest) p.attachments.push_back(ReadAttachment(part));
  return p;
}

std::vector<std::string> Compare(const ComposedItem& want, const ParsedMessage& got, const CompareOptions& options) {
  std::vector<std::string> d;
  auto eq = [&](const std::string& what, std::string_view g, std::string_view w) {
    if (g == w) return;
    if (g.size() + w.size() > 200) {
      d.push_back(fmt::format("{}: {}", what, FirstDifference(g, w)));
    } else {
      d.push_back(fmt::format("{}: got {} want {}", what, Quote(g), Quote(w)));
    }
  };
  // Exactly the headers composed, no more: nothing injected. (GMime keeps
  // Content-Type with the MIME part; the structure check covers it.)
  std::vector<std::string> names = {"date", "from", "subject", "to", "message-id", "references",
                                    "mime-version"};
  if (!want.in_reply_to.empty()) names.push_back("in-reply-to");
  if (want.references.empty()) names.erase(std::find(names.begin(), names.end(), "references"));
  for (const auto& f : want.fields) names.push_back(Lower(std::string(f.name)));
  std::vector<std::string> got_names;
  for (const auto& n : got.header_names) got_names.push_back(Lower(n));
  std::sort(names.begin(), names.end());
  std::sort(got_names.begin(), got_names.end());
  if (names != got_names) {
    d.push_back(fmt::format("header names: got [{}] want [{}]", fmt::join(got_names, ", "), fmt::join(names, ", ")));
  }
  eq("subject", got.subject, want.subject);
  if (got.from.size() != 1) {
    d.push_back(fmt::format("from: {} mailboxes", got.from.size()));
  } else {
    eq("from name", got.from[0].name, want.from.name);
    eq("from address", got.from[0].address, want.from.address);
  }
  if (want.to.empty()) {
    if (!got.to.empty() || got.to_groups != std::vector<std::string>{"undisclosed-recipients"}) {
      d.push_back(fmt::format("to: want the empty group undisclosed-recipients, got {} mailboxes and groups [{}]",
                              got.to.size(), fmt::join(got.to_groups, ", ")));
    }
  } else if (got.to.size() != want.to.size() || !got.to_groups.empty()) {
    d.push_back(fmt::format("to: got {} mailboxes ({} groups), want {}", got.to.size(), got.to_groups.size(),
                            want.to.size()));
  } else {
    for (size_t i = 0; i < want.to.size(); ++i) {
      eq(fmt::format("to[{}] name", i), got.to[i].name, want.to[i].name);
      eq(fmt::format("to[{}] address", i), got.to[i].address, want.to[i].address);
    }
  }
  if (got.date_s != want.date_s) d.push_back(fmt::format("date: got {} want {}", got.date_s, want.date_s));
  eq("message-id", got.message_id, want.message_id);
  eq("in-reply-to", got.in_reply_to, want.in_reply_to);
  if (got.references != want.references) {
    d.push_back(fmt::format("references: got [{}] want [{}]", fmt::join(got.references, " "),
                            fmt::join(want.references, " ")));
  }
  if (got.x_fields.size() != want.fields.size()) {
    d.push_back(fmt::format("x-fields: got {} want {}", got.x_fields.size(), want.fields.size()));
  } else {
    for (size_t i = 0; i < want.fields.size(); ++i) {
      eq(fmt::format("field {} name", i), got.x_fields[i].first, want.fields[i].name);
      eq(std::string(want.fields[i].name), got.x_fields[i].second, want.fields[i].value);
    }
  }
  std::string structure = "multipart/alternative(text/plain,text/html)";
  if (!want.attachments.empty()) {
    structure = "multipart/mixed(" + structure;
    for (const auto& a : want.attachments) structure += "," + a.content_type;
    structure += ")";
  }
  eq("structure", got.structure, structure);
  if (options.exact_line_ends) {
    eq("text/plain", got.plain, LfToCrlf(want.plain));
    eq("text/html", got.html, LfToCrlf(want.html));
  } else {
    eq("text/plain", WithoutCr(got.plain), want.plain);
    eq("text/html", WithoutCr(got.html), want.html);
  }
  eq("text/plain charset", Lower(got.plain_charset), "utf-8");
  eq("text/html charset", Lower(got.html_charset), "utf-8");
  if (got.attachments.size() != want.attachments.size()) {
    d.push_back(fmt::format("attachments: got {} want {}", got.attachments.size(), want.attachments.size()));
  } else {
    for (size_t i = 0; i < want.attachments.size(); ++i) {
      const auto& w = want.attachments[i];
      const auto& g = got.attachments[i];
      const std::string at = fmt::format("attachment {} ", i);
      eq(at + "type", g.content_type, w.content_type);
      eq(at + "disposition", g.disposition, "attachment");
      eq(at + "file name", g.file_name, w.file_name);
      if (g.bytes != w.bytes()) d.push_back(at + "bytes: " + FirstDifference(g.bytes, w.bytes()));
      if (IsAsciiName(w.file_name)) {
        eq(at + "name=", g.name_plain, w.file_name);
        eq(at + "filename=", g.filename_plain, w.file_name);
      } else {
        eq(at + "name*=", g.name_2231, w.file_name);
        eq(at + "filename*=", g.filename_2231, w.file_name);
        if (options.dual_file_names) {
          eq(at + "name= (RFC 2047)", g.name_plain, w.file_name);
          eq(at + "filename= (RFC 2047)", g.filename_plain, w.file_name);
        }
      }
    }
  }
  return d;
}

WireCheck CheckWireFormat(std::string_view m) {
  WireCheck c;
  bool in_header = true, separated = false;
  size_t start = 0;
  size_t line_no = 0;
  while (start < m.size()) {
    size_t crlf = m.find("\r\n", start);
    size_t end = crlf == std::string_view::npos ? m.size() : crlf;
    std::string_view line = m.substr(start, end - start);
    ++line_no;
    if (line.find_first_of("\r\n") != std::string_view::npos) {
      c.problems.push_back(fmt::format("line {}: bare CR or LF", line_no));
    }
    for (unsigned char ch : line) {
      if (ch > 0x7E || (ch < 0x20 && ch != '\t')) {
        c.problems.push_back(fmt::format("line {}: byte 0x{:02x}", line_no, ch));
        break;
      }
    }
    if (line.size() > 998) c.problems.push_back(fmt::format("line {}: {} bytes (over 998)", line_no, line.size()));
    c.longest_line = std::max(c.longest_line, line.size());
    if (in_header) {
      if (line.empty()) {
        in_header = false;
        separated = true;
      } else {
        c.longest_header_line = std::max(c.longest_header_line, line.size());
      }
    }
    if (crlf == std::string_view::npos) {
      c.problems.push_back("no CRLF at the end");
      break;
    }
    start = crlf + 2;
  }
  if (!separated) c.problems.push_back("no empty line after the header");
  return c;
}

}  // namespace wxa::mime::reference
