#include "formats/mime/renderer.h"

#include <gmime/gmime.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/core/text.h"
#include "formats/mime/gobject_ptr.h"

namespace wxa::mime {

namespace {

constexpr size_t kMaxSubjectBytes = 200;
constexpr size_t kMaxNamesInSubject = 3;

// The clean text of a value from the record: valid UTF-8 without controls.
// Single-line values (headers, names) get a space for each control or line
// break, so "a\r\nBcc: x" can neither inject a header nor glue words together.
std::string Clean(std::string_view s, bool keep_newlines) {
  std::string repaired;
  if (!core::IsValidUtf8(s)) {
    core::RepairUtf8(s, &repaired);
    s = repaired;
  }
  return keep_newlines ? core::StripControls(s, true) : core::OneLine(s);
}

std::string DisplayName(const Person& p) {
  std::string n = core::OneLine(Clean(p.name, false));
  return n.empty() ? core::OneLine(Clean(p.id, false)) : n;
}

std::string NameList(const std::vector<Person>& people, size_t max_names) {
  std::vector<std::string> names;
  for (size_t i = 0; i < people.size() && i < max_names; ++i) names.push_back(DisplayName(people[i]));
  std::string s = fmt::format("{}", fmt::join(names, ", "));
  if (people.size() > max_names) s += fmt::format(" +{}", people.size() - max_names);
  return s;
}

// Time of a recalled message from its id, when the id ends in "_<unix seconds>".
std::optional<int64_t> TimeFromMsgId(std::string_view msgid) {
  size_t us = msgid.rfind('_');
  if (us == std::string_view::npos) return std::nullopt;
  std::string_view tail = msgid.substr(us + 1);
  if (tail.size() != 10 || !core::AllDigits(tail)) return std::nullopt;
  return std::stoll(std::string(tail));
}

std::string RoomLabel(const core::Item& item) { return core::OneLine(Clean(item.roomid, false)); }

struct AttachmentInfo {
  std::string filename;      // sanitized
  std::string content_type;
  const core::MediaRef* ref = nullptr;
};

std::vector<AttachmentInfo> PlanAttachments(const core::Item& item) {
  std::vector<AttachmentInfo> out;
  for (const auto& m : item.media) {
    if (!m.has_bytes()) continue;
    AttachmentInfo a;
    a.ref = &m;
    std::string fallback = fmt::format("{}-{}", m.role.empty() ? "attachment" : m.role, out.size() + 1);
    if (!m.extension.empty()) fallback += "." + core::SanitizeFileName(m.extension, "bin");
    a.filename = core::SanitizeFileName(m.filename, fallback);
    std::string ext = m.extension;
    size_t dot = a.filename.rfind('.');
    if (ext.empty() && dot != std::string::npos) ext = core::AsciiLower(a.filename.substr(dot + 1));
    a.content_type = GuessContentType(ext, std::string_view(m.bytes).substr(0, 16));
    if (ext.empty()) {
      // A name without extension (call recordings): give it the sniffed type's,
      // so mail clients know how to open it.
      std::string_view sub = std::string_view(a.content_type).substr(a.content_type.find('/') + 1);
      if (sub == "amr" || sub == "jpeg" || sub == "png" || sub == "gif" || sub == "mp4" ||
          sub == "pdf" || sub == "zip" || sub == "wav" || sub == "silk") {
        a.filename += "." + std::string(sub == "jpeg" ? "jpg" : sub);
      }
    }
    // Two attachments with one name confuse every mail client: number them.
    const std::string base = a.filename;
    auto taken = [&](const std::string& n) {
      return std::any_of(out.begin(), out.end(), [&](const AttachmentInfo& x) { return x.filename == n; });
    };
    for (int n = 2; taken(a.filename); ++n) {
      size_t d = base.rfind('.');
      a.filename = d == std::string::npos || d == 0
                       ? fmt::format("{} ({})", base, n)
                       : fmt::format("{} ({}){}", base.substr(0, d), n, base.substr(d));
    }
    out.push_back(std::move(a));
  }
  return out;
}

std::string FormatSize(uint64_t n) {
  if (n < 1024) return fmt::format("{} bytes", n);
  if (n < 1024 * 1024) return fmt::format("{:.1f} KiB", n / 1024.0);
  return fmt::format("{:.1f} MiB", n / (1024.0 * 1024));
}

// ---- bodies ----------------------------------------------------------------

struct Body {
  std::string plain;
  std::string html;
};

Body BuildBody(const RenderInput& in, const std::vector<AttachmentInfo>& atts) {
  const core::Item& item = *in.item;
  std::string p;  // plain
  std::string h;  // html
  auto esc = [](std::string_view s) { return core::HtmlEscape(s); };
  const std::string from = DisplayName(in.from);
  const std::string date = core::FormatUtcMillis(item.msgtime_ms);

  // Who and when.
  std::string who;
  if (item.is_group()) {
    who = fmt::format("{} in group {}", from, RoomLabel(item));
  } else {
    who = fmt::format("{} -> {}", from, in.to.empty() ? std::string("(no recipients)") : NameList(in.to, 20));
  }
  p += fmt::format("{}\n{}\n\n", who, date);
  h += "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n";
  h += fmt::format("<p><b>{}</b><br>\n<small>{}</small></p>\n", esc(who), esc(date));

  // The message itself.
  if (item.kind == core::ItemKind::kRecall) {
    std::string rid = Clean(item.recalled_msgid, false);
    p += fmt::format("{} recalled a message.\n", from);
    h += fmt::format("<p>{} recalled a message.</p>\n", esc(from));
    if (!rid.empty()) {
      auto when = TimeFromMsgId(rid);
      std::string when_text = when ? core::FormatUtcMillis(*when * 1000) : "not given by the record";
      std::string mid = item.recalled_key ? MessageIdFor(*item.recalled_key) : "";
      p += fmt::format("Recalled message: {}\nIt was sent: {}\n", rid, when_text);
      if (!mid.empty()) p += fmt::format("Archived as: <mid:{}>\n", mid);
      h += fmt::format("<p>Recalled message: <code>{}</code><br>\nIt was sent: {}", esc(rid),
                       esc(when_text));
      if (!mid.empty()) {
        h += fmt::format("<br>\nArchived as: <a href=\"mid:{0}\">{0}</a>", esc(mid));
      }
      h += "</p>\n";
    }
  }
  if (!item.text.empty()) {
    std::string t = Clean(item.text, true);
    p += t + "\n";
    std::string ht = esc(t);
    std::string with_br;
    for (char c : ht) {
      if (c == '\n') with_br += "<br>\n"; else with_br.push_back(c);
    }
    h += "<p>" + with_br + "</p>\n";
  }
  if (item.call) {
    const auto& c = *item.call;
    std::string line = fmt::format("Call: {}", c.call_type);
    if (c.duration_s) line += fmt::format(", duration {}", core::FormatDuration(*c.duration_s));
    if (c.start_s) line += fmt::format(", started {}", core::FormatUtcMillis(*c.start_s * 1000));
    if (c.end_s) line += fmt::format(", ended {}", core::FormatUtcMillis(*c.end_s * 1000));
    std::vector<std::string> names{from};
    for (const auto& t : in.to) names.push_back(DisplayName(t));
    line += fmt::format("\nParticipants: {}", fmt::join(names, ", "));
    p += "\n" + line + "\n";
    std::string hl = esc(line);
    size_t nl = hl.find('\n');
    if (nl != std::string::npos) hl.replace(nl, 1, "<br>\n");
    h += "<p>" + hl + "</p>\n";
  }
  if (!item.entries.empty()) {
    p += "\n";
    h += "<ul>\n";
    for (const auto& e : item.entries) {
      std::string when = e.time_s ? core::FormatUtcMillis(*e.time_s * 1000) + " " : "";
      std::string t = core::OneLine(Clean(e.text, false));
      std::string type = core::OneLine(Clean(e.type, false));
      p += fmt::format("- {}[{}] {}\n", when, type, t);
      h += fmt::format("<li><small>{}[{}]</small> {}</li>\n", esc(when), esc(type), esc(t));
    }
    h += "</ul>\n";
  }
  if (!item.facts.empty()) {
    p += "\n";
    h += "<table>\n";
    for (const auto& f : item.facts) {
      std::string label = core::OneLine(Clean(f.label, false));
      std::string value = core::OneLine(Clean(f.value, false));
      p += fmt::format("{}: {}\n", label, value);
      h += fmt::format("<tr><td>{}</td><td>{}</td></tr>\n", esc(label), esc(value));
    }
    h += "</table>\n";
  }
  if (!atts.empty()) {
    p += "\nAttachments:\n";
    h += "<p>Attachments:</p>\n<ul>\n";
    for (const auto& a : atts) {
      std::string line = fmt::format("{} ({}, {})", a.filename, FormatSize(a.ref->size), a.content_type);
      p += "- " + line + "\n";
      h += "<li>" + esc(line) + "</li>\n";
    }
    h += "</ul>\n";
  }
  // Everything that is missing or was repaired, in plain words.
  std::vector<std::string> problems;
  for (const auto& m : item.media) {
    if (!m.problem.empty()) {
      std::string name = core::OneLine(Clean(m.filename, false));
      problems.push_back(fmt::format("{}{}: {}", m.role, name.empty() ? "" : " " + name, m.problem));
    }
  }
  for (const auto& n : item.notes) problems.push_back(n);
  if (item.kind == core::ItemKind::kUnknown) {
    problems.push_back(fmt::format(
        "wxarchiver does not know the message type '{}'; the original record is attached",
        core::OneLine(Clean(item.msgtype, false))));
  }
  if (!problems.empty()) {
    p += "\nNotes:\n";
    h += "<p>Notes:</p>\n<ul>\n";
    for (const auto& pr : problems) {
      std::string t = core::OneLine(Clean(pr, false));
      p += "- " + t + "\n";
      h += "<li>" + esc(t) + "</li>\n";
    }
    h += "</ul>\n";
  }
  // Source facts, for people reading the item without its headers.
  std::string src = fmt::format("WeChat/WeCom {} message, id {}", core::OneLine(Clean(item.msgtype, false)),
                                core::OneLine(Clean(item.msgid, false)));
  if (item.is_group()) src += ", group " + RoomLabel(item);
  p += "\n-- \n" + src + "\n";
  h += "<hr>\n<p><small>" + esc(src) + "</small></p>\n</body></html>\n";
  return {std::move(p), std::move(h)};
}

// ---- GMime assembly --------------------------------------------------------

GPtr<GMimeTextPart> MakeTextPart(const char* subtype, const std::string& text) {
  GPtr<GMimeTextPart> part(g_mime_text_part_new_with_subtype(subtype));
  g_mime_text_part_set_text(part.get(), text.c_str());  // sets charset=utf-8 for non-ASCII
  g_mime_text_part_set_charset(part.get(), "utf-8");
  GMimePart* mp = GMIME_PART(part.get());
  g_mime_part_set_content_encoding(
      mp, g_mime_part_get_best_content_encoding(mp, GMIME_ENCODING_CONSTRAINT_7BIT));
  return part;
}

GPtr<GMimePart> MakeFilePart(const AttachmentInfo& a) {
  std::string type = a.content_type;
  size_t slash = type.find('/');
  GPtr<GMimePart> part(g_mime_part_new_with_type(type.substr(0, slash).c_str(),
                                                 type.substr(slash + 1).c_str()));
  // The bytes the media store read and verified: exactly what is encoded.
  const std::string& bytes = a.ref->bytes;
  GPtr<GMimeStream> stream(g_mime_stream_mem_new_with_buffer(bytes.data(), bytes.size()));
  GPtr<GMimeDataWrapper> wrapper(
      g_mime_data_wrapper_new_with_stream(stream.get(), GMIME_CONTENT_ENCODING_DEFAULT));
  g_mime_part_set_content(part.get(), wrapper.get());
  g_mime_part_set_filename(part.get(), a.filename.c_str());  // also sets disposition
  g_mime_object_set_disposition(GMIME_OBJECT(part.get()), GMIME_DISPOSITION_ATTACHMENT);
  g_mime_object_set_content_disposition_parameter(GMIME_OBJECT(part.get()), "filename",
                                                  a.filename.c_str());
  g_mime_part_set_content_encoding(part.get(), GMIME_CONTENT_ENCODING_BASE64);
  return part;
}

std::string RawRecordName(const core::Item& item) {
  return fmt::format("wecom-record-{}.json", item.key.Hex().substr(0, 12));
}

GPtr<GMimePart> MakeRawRecordPart(const core::Item& item) {
  bool utf8 = core::IsValidUtf8(item.raw);
  GPtr<GMimePart> part(utf8 ? g_mime_part_new_with_type("application", "json")
                            : g_mime_part_new_with_type("application", "octet-stream"));
  GPtr<GMimeStream> stream(g_mime_stream_mem_new_with_buffer(item.raw.data(), item.raw.size()));
  GPtr<GMimeDataWrapper> wrapper(
      g_mime_data_wrapper_new_with_stream(stream.get(), GMIME_CONTENT_ENCODING_DEFAULT));
  g_mime_part_set_content(part.get(), wrapper.get());
  std::string name = RawRecordName(item);
  g_mime_part_set_filename(part.get(), name.c_str());
  g_mime_object_set_disposition(GMIME_OBJECT(part.get()), GMIME_DISPOSITION_ATTACHMENT);
  g_mime_object_set_content_disposition_parameter(GMIME_OBJECT(part.get()), "filename",
                                                  name.c_str());
  // Base64 keeps the exact bytes, including any invalid UTF-8 they had.
  g_mime_part_set_content_encoding(part.get(), GMIME_CONTENT_ENCODING_BASE64);
  return part;
}

// g_mime_multipart_new_with_subtype() draws a random boundary from
// /dev/urandom (an open, a read and a close per multipart) that ours then
// replaces; building the object with its content type and our boundary
// skips that.
GPtr<GMimeMultipart> NewMultipart(const char* subtype, const std::string& boundary) {
  GPtr<GMimeMultipart> mp(GMIME_MULTIPART(g_object_new(GMIME_TYPE_MULTIPART, nullptr)));
  GPtr<GMimeContentType> type(g_mime_content_type_new("multipart", subtype));
  g_mime_object_set_content_type(GMIME_OBJECT(mp.get()), type.get());
  g_mime_multipart_set_boundary(mp.get(), boundary.c_str());
  return mp;
}

std::string ConversationId(const core::Item& item) {
  std::string basis;
  if (item.is_group()) {
    basis = "room\x1f" + item.roomid;
  } else {
    std::vector<std::string> ids = item.Participants();
    std::sort(ids.begin(), ids.end());
    basis = fmt::format("pair\x1f{}", fmt::join(ids, "\x1f"));
  }
  core::ItemKey k = core::ItemKey::For(item.source_kind + "-conversation", "", basis);
  return fmt::format("conv-{}@wxarchiver", k.Hex());
}

void SetHeader(GMimeObject* obj, const char* name, std::string_view value) {
  std::string v = core::OneLine(Clean(value, false));
  if (v.empty()) return;
  g_mime_object_set_header(obj, name, v.c_str(), "utf-8");
}

Result<GPtr<GMimeMessage>> BuildMessage(const RenderInput& in) {
  const core::Item& item = *in.item;
  const std::string hex = item.key.Hex();
  GPtr<GMimeMessage> msg(g_mime_message_new(TRUE));
  GMimeObject* mo = GMIME_OBJECT(msg.get());

  // Addresses.
  auto add = [&](GMimeAddressType type, const Person& p) {
    std::string addr = p.address.empty() ? SyntheticAddress(p.id) : p.address;
    std::string name = DisplayName(p);
    g_mime_message_add_mailbox(msg.get(), type, name.c_str(), addr.c_str());
  };
  add(GMIME_ADDRESS_TYPE_FROM, in.from);
  if (in.to.empty() && item.is_group()) {
    Person room{item.roomid, "Group " + RoomLabel(item), ""};
    room.address = SyntheticAddress("room-" + item.roomid);
    add(GMIME_ADDRESS_TYPE_TO, room);
  }
  for (const auto& t : in.to) add(GMIME_ADDRESS_TYPE_TO, t);

  std::string subject = SubjectFor(in);
  g_mime_message_set_subject(msg.get(), subject.c_str(), "utf-8");
  GDateTime* dt = g_date_time_new_from_unix_utc(item.msgtime_ms / 1000);
  g_mime_message_set_date(msg.get(), dt);
  g_date_time_unref(dt);
  g_mime_message_set_message_id(msg.get(), MessageIdFor(item.key).c_str());

  // Threading: every item of a conversation references one conversation root,
  // so clients group them; a recall replies to the item it recalls.
  std::string refs = "<" + ConversationId(item) + ">";
  if (item.kind == core::ItemKind::kRecall && item.recalled_key) {
    std::string recalled = "<" + MessageIdFor(*item.recalled_key) + ">";
    refs += " " + recalled;
    g_mime_object_set_header(mo, "In-Reply-To", recalled.c_str(), nullptr);
  }
  g_mime_object_set_header(mo, "References", refs.c_str(), nullptr);

  SetHeader(mo, "X-WeChat-MsgId", item.msgid);
  SetHeader(mo, "X-WeChat-MsgType", item.msgtype);
  SetHeader(mo, "X-WeChat-Action", item.action);
  if (item.is_group()) SetHeader(mo, "X-WeChat-RoomId", item.roomid);
  SetHeader(mo, "X-WeChat-From", item.from);
  SetHeader(mo, "X-WeChat-To", fmt::format("{}", fmt::join(item.to, ", ")));
  if (item.kind == core::ItemKind::kRecall) SetHeader(mo, "X-WeChat-Recalled-MsgId", item.recalled_msgid);
  SetHeader(mo, "X-Archive-Item", hex);

  std::vector<AttachmentInfo> atts = PlanAttachments(item);
  Body body = BuildBody(in, atts);
  GPtr<GMimeMultipart> alt = NewMultipart("alternative", fmt::format("=_wxa_{}_alt", hex));
  g_mime_multipart_add(alt.get(), GMIME_OBJECT(MakeTextPart("plain", body.plain).get()));
  g_mime_multipart_add(alt.get(), GMIME_OBJECT(MakeTextPart("html", body.html).get()));

  if (atts.empty() && !item.attach_raw) {
    g_mime_message_set_mime_part(msg.get(), GMIME_OBJECT(alt.get()));
    return msg;
  }
  GPtr<GMimeMultipart> mixed = NewMultipart("mixed", fmt::format("=_wxa_{}_mix", hex));
  g_mime_multipart_add(mixed.get(), GMIME_OBJECT(alt.get()));
  for (const auto& a : atts) {
    g_mime_multipart_add(mixed.get(), GMIME_OBJECT(MakeFilePart(a).get()));
  }
  if (item.attach_raw && !item.raw.empty()) {
    g_mime_multipart_add(mixed.get(), GMIME_OBJECT(MakeRawRecordPart(item).get()));
  }
  g_mime_message_set_mime_part(msg.get(), GMIME_OBJECT(mixed.get()));
  return msg;
}

}  // namespace

std::string MessageIdFor(const core::ItemKey& key) { return key.Hex() + "@wxarchiver"; }

std::string SubjectFor(const RenderInput& in) {
  const core::Item& item = *in.item;
  const std::string from = DisplayName(in.from);
  std::string what;
  switch (item.kind) {
    case core::ItemKind::kCall: what = "WeChat call"; break;
    case core::ItemKind::kRecall: what = "WeChat recall"; break;
    default: what = "WeChat"; break;
  }
  std::string s;
  if (item.is_group()) {
    s = fmt::format("{} group {}: {}", what, RoomLabel(item), from);
  } else {
    s = fmt::format("{}: {} -> {}", what, from,
                    in.to.empty() ? std::string("(no recipients)") : NameList(in.to, kMaxNamesInSubject));
  }
  if (item.kind == core::ItemKind::kCall && item.call) {
    if (item.call->duration_s) s += fmt::format(" ({})", core::FormatDuration(*item.call->duration_s));
  }
  std::string label = core::OneLine(Clean(item.label, false));
  if (!label.empty() && item.kind != core::ItemKind::kRecall) s += fmt::format(" [{}]", label);
  return core::TruncateUtf8(s, kMaxSubjectBytes);
}

std::string GuessContentType(std::string_view extension, std::string_view head) {
  static const std::pair<const char*, const char*> kByExt[] = {
      {"jpg", "image/jpeg"}, {"jpeg", "image/jpeg"}, {"png", "image/png"}, {"gif", "image/gif"},
      {"webp", "image/webp"}, {"bmp", "image/bmp"}, {"heic", "image/heic"},
      {"amr", "audio/amr"}, {"mp3", "audio/mpeg"}, {"wav", "audio/wav"}, {"silk", "audio/silk"},
      {"m4a", "audio/mp4"}, {"mp4", "video/mp4"}, {"mov", "video/quicktime"},
      {"pdf", "application/pdf"}, {"zip", "application/zip"}, {"txt", "text/plain"},
      {"csv", "text/csv"}, {"json", "application/json"}, {"xml", "application/xml"},
      {"html", "text/html"}, {"htm", "text/html"},
      {"doc", "application/msword"}, {"xls", "application/vnd.ms-excel"},
      {"ppt", "application/vnd.ms-powerpoint"},
      {"docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
      {"xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
      {"pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"},
      {"rar", "application/vnd.rar"}, {"7z", "application/x-7z-compressed"},
      {"gz", "application/gzip"}, {"tar", "application/x-tar"},
  };
  std::string ext = core::AsciiLower(extension);
  for (const auto& [e, t] : kByExt) {
    if (ext == e) return t;
  }
  auto starts = [&](std::string_view magic) { return head.substr(0, magic.size()) == magic; };
  if (starts("\xFF\xD8\xFF")) return "image/jpeg";
  if (starts("\x89PNG")) return "image/png";
  if (starts("GIF8")) return "image/gif";
  if (starts("#!AMR")) return "audio/amr";
  if (starts("#!SILK") || starts("\x02#!SILK")) return "audio/silk";
  if (starts("ID3")) return "audio/mpeg";
  if (starts("RIFF") && head.size() >= 12 && head.substr(8, 4) == "WAVE") return "audio/wav";
  if (head.size() >= 8 && head.substr(4, 4) == "ftyp") return "video/mp4";
  if (starts("%PDF")) return "application/pdf";
  if (starts("PK\x03\x04")) return "application/zip";
  return "application/octet-stream";
}

std::vector<std::string> AttachmentFileNames(const core::Item& item) {
  std::vector<std::string> names;
  for (const auto& a : PlanAttachments(item)) names.push_back(a.filename);
  if (item.attach_raw && !item.raw.empty()) names.push_back(RawRecordName(item));
  return names;
}

uint64_t RenderedSizeLowerBound(const core::Item& item) {
  uint64_t total = 0;
  for (const auto& m : item.media) {
    if (!m.found()) continue;
    uint64_t b64 = (m.size + 2) / 3 * 4;
    total += b64 + (b64 / 76) * 2;  // CRLF after every 76 characters
  }
  return total;
}

struct Renderer::Impl {
  GMimeFormatOptions* options = nullptr;  // owned
};

Renderer::Renderer() : impl_(std::make_unique<Impl>()) {
  InitGMime();
  impl_->options = g_mime_format_options_new();
  g_mime_format_options_set_newline_format(impl_->options, GMIME_NEWLINE_FORMAT_DOS);
  g_mime_format_options_set_param_encoding_method(impl_->options,
                                                  GMIME_PARAM_ENCODING_METHOD_RFC2231);
}

Renderer::~Renderer() { g_mime_format_options_free(impl_->options); }

Result<std::string> Renderer::Render(const RenderInput& in) {
  WXA_ASSIGN_OR_RETURN(GPtr<GMimeMessage> msg, BuildMessage(in));
  GPtr<GMimeStream> out(g_mime_stream_mem_new());
  if (g_mime_object_write_to_stream(GMIME_OBJECT(msg.get()), impl_->options, out.get()) < 0) {
    return Status::IOError(fmt::format("GMime could not write item {}", in.item->msgid));
  }
  GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(out.get()));
  return std::string(reinterpret_cast<const char*>(bytes->data), bytes->len);
}

Result<uint64_t> Renderer::MeasureSize(const RenderInput& in) {
  WXA_ASSIGN_OR_RETURN(GPtr<GMimeMessage> msg, BuildMessage(in));
  GPtr<GMimeStream> out(g_mime_stream_null_new());
  ssize_t n = g_mime_object_write_to_stream(GMIME_OBJECT(msg.get()), impl_->options, out.get());
  if (n < 0) return Status::IOError(fmt::format("GMime could not write item {}", in.item->msgid));
  return static_cast<uint64_t>(GMIME_STREAM_NULL(out.get())->written);
}

}  // namespace wxa::mime
