// Fuzz target: record -> Item -> rendered message -> parsed back by GMime.
// The input is one record line (RecordParser::ParseLine). Its media get
// bytes (taken from the input) or a problem, in turn; its participants are
// resolved by a Mapper over a small directory whose names try to break
// headers. Then mime::Renderer::Render, and checks on the bytes:
//  - CRLF line ends only, no bare CR or LF, no NUL, no line over 998 bytes;
//  - the header block is well-formed: "name: value" lines of 7-bit text,
//    continuation lines starting with white space;
//  - GMime parses it back; Subject, From, Date and Message-ID are there
//    (and To when the item has a recipient: RFC 5322 does not require To);
//    Message-ID is MessageIdFor(item.key); From is exactly the sender's
//    address and To exactly the recipients' (the room's, or at most the
//    sender's, when there are none): a display name can never smuggle in
//    another address;
//  - MeasureSize equals the size Render produced.
// Only renderer.h's public API is used, so the target outlives a change of
// how the renderer builds its bytes.
#include <gmime/gmime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/mapping/mapper.h"
#include "formats/core/item.h"
#include "formats/core/text.h"
#include "formats/mime/renderer.h"
#include "formats/wecom/directory.h"
#include "formats/wecom/parser.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace core = wxa::core;
namespace mime = wxa::mime;
namespace wecom = wxa::wecom;

constexpr size_t kMaxLineBytes = 998;  // RFC 5322 section 2.1.1, without CRLF
constexpr size_t kMediaBytes = 200;

struct GObjectUnref {
  void operator()(gpointer p) const {
    if (p) g_object_unref(p);
  }
};
template <typename T>
using GPtr = std::unique_ptr<T, GObjectUnref>;

struct Env {
  wecom::Directory directory;
  std::unique_ptr<wxa::mapping::Mapper> mapper;
  std::unique_ptr<wecom::RecordParser> parser;
  std::unique_ptr<mime::Renderer> renderer;
};

Env& GetEnv() {
  static Env* env = [] {
    mime::InitGMime();
    auto* e = new Env;
    // Names meant to break headers: quotes, commas, angle brackets, CRLF,
    // encoded-word look-alikes, and a long one.
    e->directory.Add({"zhangsan", "张三", "+86 138 0013 8000", "zhangsan@corp.example.com"});
    e->directory.Add({"lisi", "Li \"Four\", Esq. <lisi@evil.example>", "", "lisi@corp.example.com"});
    e->directory.Add({"wangwu", "Wang\r\nBcc: victim@example.com", "", ""});
    e->directory.Add({"eve", "=?utf-8?q?=41?= (comment) ;:@", "", "eve@corp.example.com"});
    e->directory.Add({"long", std::string(1200, 'N'), "", "long@corp.example.com"});
    auto m = wxa::mapping::Mapper::Create(&e->directory, "", "", {});
    if (!m.ok()) wxa::fuzz::Fail(__FILE__, __LINE__, "Mapper::Create", m.status().message());
    e->mapper = std::make_unique<wxa::mapping::Mapper>(std::move(*m));
    e->parser = std::make_unique<wecom::RecordParser>(wecom::ParseOptions{"fuzzcorp"});
    e->renderer = std::make_unique<mime::Renderer>();
    return e;
  }();
  return *env;
}

// What the media store would have left on the refs: bytes, or a problem.
void FillMedia(core::Item& item, std::string_view in) {
  for (size_t i = 0; i < item.media.size(); ++i) {
    core::MediaRef& m = item.media[i];
    switch (i % 3) {
      case 0:
        m.state = core::MediaState::kOk;
        m.bytes.assign(in.substr(0, kMediaBytes));
        break;
      case 1:
        m.state = core::MediaState::kCorrupt;
        m.bytes.assign(in.substr(in.size() / 2, kMediaBytes));
        m.problem = "media corrupt (fuzz): record says other bytes; attached as read";
        break;
      default:
        m.state = core::MediaState::kMissing;
        m.problem = "media not found: media/fuzz";
        break;
    }
    m.size = m.bytes.size();
    if (m.state != core::MediaState::kMissing) m.path = "media/fuzz";
  }
}

bool IsFieldNameChar(char c) { return c >= 33 && c <= 126 && c != ':'; }

// CRLF only, no NUL, short lines; the top-level header block well-formed.
void CheckWireFormat(std::string_view msg) {
  size_t line_start = 0;
  for (size_t i = 0; i < msg.size(); ++i) {
    const char c = msg[i];
    WXA_FUZZ_CHECK(c != '\0', msg.substr(line_start, 200));
    if (c == '\r') {
      WXA_FUZZ_CHECK(i + 1 < msg.size() && msg[i + 1] == '\n', msg.substr(line_start, 200));
    } else if (c == '\n') {
      WXA_FUZZ_CHECK(i > 0 && msg[i - 1] == '\r', msg.substr(line_start, 200));
      WXA_FUZZ_CHECK(i - 1 - line_start <= kMaxLineBytes, msg.substr(line_start, 200));
      line_start = i + 1;
    }
  }
  WXA_FUZZ_CHECK(msg.size() - line_start <= kMaxLineBytes, msg.substr(line_start, 200));

  const size_t end = msg.find("\r\n\r\n");
  WXA_FUZZ_CHECK(end != std::string_view::npos, "no end of the header block");
  std::string_view headers = msg.substr(0, end + 2);
  bool first = true;
  while (!headers.empty()) {
    const size_t eol = headers.find("\r\n");
    std::string_view line = headers.substr(0, eol);
    headers.remove_prefix(eol + 2);
    WXA_FUZZ_CHECK(std::all_of(line.begin(), line.end(),
                               [](char c) { return static_cast<unsigned char>(c) < 0x80; }),
                   line);
    if (line.front() == ' ' || line.front() == '\t') {
      WXA_FUZZ_CHECK(!first, line);
      WXA_FUZZ_CHECK(line.find_first_not_of(" \t") != std::string_view::npos, line);
      continue;
    }
    const size_t colon = line.find(':');
    WXA_FUZZ_CHECK(colon != std::string_view::npos && colon > 0, line);
    std::string_view name = line.substr(0, colon);
    WXA_FUZZ_CHECK(std::all_of(name.begin(), name.end(), IsFieldNameChar), line);
    first = false;
  }
}

// The mailboxes of an address header, in order (groups flattened).
void CollectAddresses(InternetAddressList* list, std::vector<std::string>* out) {
  if (list == nullptr) return;
  const int n = internet_address_list_length(list);
  for (int i = 0; i < n; ++i) {
    InternetAddress* a = internet_address_list_get_address(list, i);
    if (INTERNET_ADDRESS_IS_MAILBOX(a)) {
      out->push_back(core::AsciiLower(internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a))));
    } else if (INTERNET_ADDRESS_IS_GROUP(a)) {
      CollectAddresses(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)), out);
    }
  }
}

std::string Join(const std::vector<std::string>& v) {
  std::string s = "[";
  for (const auto& x : v) s += (s.size() > 1 ? ", " : "") + x;
  return s + "]";
}

std::string AddressOf(const core::Person& p) {
  return core::AsciiLower(p.address.empty() ? core::SyntheticAddress(p.id) : p.address);
}

void CheckParsedBack(const std::string& bytes, const mime::RenderInput& in) {
  const core::Item& item = *in.item;
  GPtr<GMimeStream> stream(g_mime_stream_mem_new_with_buffer(bytes.data(), bytes.size()));
  GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
  GPtr<GMimeMessage> msg(g_mime_parser_construct_message(parser.get(), nullptr));
  WXA_FUZZ_CHECK(msg != nullptr, item.msgid);
  GMimeObject* obj = GMIME_OBJECT(msg.get());
  for (const char* h : {"Subject", "From", "Date", "Message-ID", "MIME-Version"}) {
    WXA_FUZZ_CHECK(g_mime_object_get_header(obj, h) != nullptr, h);
  }
  const char* id = g_mime_message_get_message_id(msg.get());
  WXA_FUZZ_CHECK(id != nullptr && std::string_view(id) == mime::MessageIdFor(item.key), item.msgid);

  std::vector<std::string> from, to;
  CollectAddresses(g_mime_message_get_from(msg.get()), &from);
  CollectAddresses(g_mime_message_get_to(msg.get()), &to);
  WXA_FUZZ_CHECK(from.size() == 1 && from[0] == AddressOf(in.from),
                 "From has " + Join(from) + ", expected " + AddressOf(in.from));
  std::vector<std::string> want;
  for (const auto& p : in.to) want.push_back(AddressOf(p));
  if (!want.empty()) {
    WXA_FUZZ_CHECK(to == want, "To has " + Join(to) + ", expected " + Join(want));
  } else if (item.is_group()) {
    WXA_FUZZ_CHECK(to.size() == 1, "To has " + Join(to) + ", expected the room");
  } else {
    // Nobody but the sender: To may be empty, a group, or the sender.
    WXA_FUZZ_CHECK(to.empty() || (to.size() == 1 && to[0] == AddressOf(in.from)),
                   "To has " + Join(to) + ", expected at most the sender");
  }
  if (!to.empty()) WXA_FUZZ_CHECK(g_mime_object_get_header(obj, "To") != nullptr, item.msgid);
  WXA_FUZZ_CHECK(g_mime_message_get_mime_part(msg.get()) != nullptr, item.msgid);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Env& env = GetEnv();
  const std::string_view in = wxa::fuzz::AsView(data, size);
  auto parsed = env.parser->ParseLine(in);
  if (!parsed.ok() || parsed->kind != wecom::Parsed::Kind::kItem) return 0;
  core::Item& item = parsed->item;
  FillMedia(item, in);

  core::Participants people = env.mapper->ParticipantsFor(item);
  mime::RenderInput input;
  input.item = &item;
  input.from = people.from;
  input.to = people.to;

  auto bytes = env.renderer->Render(input);
  WXA_FUZZ_CHECK(bytes.ok(), bytes.status().message());
  CheckWireFormat(*bytes);
  CheckParsedBack(*bytes, input);
  auto measured = env.renderer->MeasureSize(input);
  WXA_FUZZ_CHECK(measured.ok() && *measured == bytes->size(), item.msgid);
  return 0;
}
