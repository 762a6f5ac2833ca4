// Fuzz target: one decrypted WeCom record (a JSON line) -> Item.
// The input is split into lines the way RecordReader splits a file (CR
// before LF dropped, blank lines skipped, bytes with capacity >= size +
// kRecordPadding), each parsed with Parse; the first line once more without
// padding; and, when it holds a line break or CR, the whole input with
// ParseLine. Checks the
// properties every caller relies on, beyond "no crash":
//  - an item has a msgid, and its key is ItemKey::For(source, corp, msgid);
//  - parsing is deterministic (same line, same record hash and key);
//  - a line too long for RecordReader is refused without being parsed.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "formats/core/item.h"
#include "formats/wecom/parser.h"
#include "formats/wecom/record_reader.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using wxa::wecom::Parsed;
using wxa::wecom::RawRecord;

constexpr std::string_view kCorp = "fuzzcorp";

wxa::wecom::RecordParser& Parser() {
  static wxa::wecom::RecordParser parser(wxa::wecom::ParseOptions{std::string(kCorp)});
  return parser;
}

void CheckParsed(const wxa::Result<Parsed>& r) {
  if (!r.ok()) {
    WXA_FUZZ_CHECK(!r.status().message().empty(), "a refused record says why");
    return;
  }
  if (r->kind == Parsed::Kind::kSwitch) {
    WXA_FUZZ_CHECK(!r->sw.msgid.empty(), "");
    return;
  }
  const wxa::core::Item& item = r->item;
  WXA_FUZZ_CHECK(!item.msgid.empty(), "");
  WXA_FUZZ_CHECK(item.key == wxa::core::ItemKey::For(item.source_kind, kCorp, item.msgid), item.msgid);
  WXA_FUZZ_CHECK(item.record_hash.size() == 16, item.msgid);
  WXA_FUZZ_CHECK(item.msgtime_ms >= 0 && item.msgtime_ms <= 253402300799999, item.msgid);
  WXA_FUZZ_CHECK(!item.attach_raw || !item.raw.empty(), item.msgid);
  if (item.kind == wxa::core::ItemKind::kRecall && !item.recalled_msgid.empty()) {
    WXA_FUZZ_CHECK(item.recalled_key.has_value(), item.msgid);
  }
  for (const auto& m : item.media) {
    WXA_FUZZ_CHECK(m.state == wxa::core::MediaState::kUnresolved, item.msgid);
  }
}

// A line as RecordReader hands it over.
RawRecord MakeRecord(std::string_view line, uint64_t offset, uint64_t line_no, bool last) {
  RawRecord rec;
  rec.offset = offset;
  rec.line = line_no;
  rec.unterminated = last;
  rec.next_offset = offset + line.size() + (last ? 0 : 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  rec.bytes.reserve(line.size() + wxa::wecom::kRecordPadding);
  rec.bytes.assign(line);
  return rec;
}

bool Blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto& parser = Parser();
  const std::string_view in = wxa::fuzz::AsView(data, size);

  // ParseLine differs from the per-line Parse below only for an input with
  // several lines or a CR: skip it otherwise (speed is coverage here).
  if (in.find_first_of("\r\n") != std::string_view::npos) CheckParsed(parser.ParseLine(in));

  uint64_t offset = 0, line_no = 0;
  bool first_line = true;
  std::string_view rest = in;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    const bool last = nl == std::string_view::npos;
    std::string_view line = rest.substr(0, last ? rest.size() : nl);
    ++line_no;
    if (!Blank(line)) {
      RawRecord rec = MakeRecord(line, offset, line_no, last);
      auto first = parser.Parse(rec, "fuzz.jsonl");
      CheckParsed(first);
      if (first_line) {
        first_line = false;
        // The first line again, without the padding (the parser copies
        // then): the same item.
        RawRecord tight;
        tight.bytes = std::string(rec.bytes.data(), rec.bytes.size());
        tight.bytes.shrink_to_fit();
        auto again = parser.Parse(tight, "fuzz.jsonl");
        WXA_FUZZ_CHECK(first.ok() == again.ok(), line);
        if (first.ok() && first->kind == Parsed::Kind::kItem) {
          WXA_FUZZ_CHECK(again->kind == Parsed::Kind::kItem, line);
          WXA_FUZZ_CHECK(first->item.key == again->item.key, line);
          WXA_FUZZ_CHECK(first->item.record_hash == again->item.record_hash, line);
          WXA_FUZZ_CHECK(first->item.pos.line == line_no && first->item.pos.offset == offset, line);
        }
      }
    }
    offset += line.size() + (last ? 0 : 1);
    rest.remove_prefix(last ? rest.size() : nl + 1);
  }

  // RecordReader's too-long marker: refused without parsing the prefix.
  RawRecord too_long = MakeRecord(in.substr(0, 4096), 0, 1, false);
  too_long.too_long = true;
  WXA_FUZZ_CHECK(!parser.Parse(too_long, "fuzz.jsonl").ok(), "too_long accepted");
  return 0;
}
