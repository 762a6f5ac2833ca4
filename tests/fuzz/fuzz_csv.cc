// Fuzz target: the user-facing CSVs.
//  - core::ParseCsv on the whole input;
//  - the user directory (wecom::Directory::Parse), the mapping CSV and the
//    known-mailbox list (mapping::Mapper::Parse).
// An input holding a form feed ('\f') is split there into up to three
// parts: directory, mapping CSV, mailbox list; without one, every reader
// gets the whole input. Checks, beyond "no crash":
//  - rows are numbered from 1, in order; the header is lowercase;
//  - every directory entry is found under its id;
//  - a mapped participant gets a normalized mailbox, never one the target
//    said it does not know; To never repeats anyone nor holds the sender;
//  - NormalizeMailbox is idempotent; NormalizeE164 gives "+<digits>".
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "engine/mapping/mapper.h"
#include "formats/core/csv.h"
#include "formats/core/item.h"
#include "formats/wecom/directory.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace core = wxa::core;
namespace mapping = wxa::mapping;
namespace wecom = wxa::wecom;

constexpr size_t kMaxFieldsChecked = 4;  // libphonenumber is slow: a few suffice

void CheckTable(const core::CsvTable& t) {
  size_t last_line = 0;
  for (const auto& h : t.header) {
    WXA_FUZZ_CHECK(std::none_of(h.begin(), h.end(), [](char c) { return c >= 'A' && c <= 'Z'; }), h);
  }
  for (const auto& row : t.rows) {
    // Non-decreasing, not increasing: a bare CR ends a row but only LF
    // counts lines (rows of a CR-only file all start on line 1).
    WXA_FUZZ_CHECK(row.line >= 1 && row.line >= last_line, "row lines in order");
    last_line = row.line;
  }
  int c = t.Column({"userid", "mobile", "sdkfileid"});
  WXA_FUZZ_CHECK(c >= -1 && c < static_cast<int>(t.header.size()), "Column in range");
}

void CheckNormalizers(const core::CsvTable& t) {
  size_t n = 0;
  for (const auto& row : t.rows) {
    for (const auto& f : row.fields) {
      if (++n > kMaxFieldsChecked) return;
      if (auto m = mapping::NormalizeMailbox(f)) {
        auto again = mapping::NormalizeMailbox(*m);
        WXA_FUZZ_CHECK(again && *again == *m, f + " -> " + *m + " -> " + again.value_or("(none)"));
      }
      if (auto e = mapping::NormalizeE164(f, "CN")) {
        // "+" and digits. Not idempotent, by libphonenumber: "0001823736620"
        // gives "+86001823736620", which gives "+8601823736620".
        WXA_FUZZ_CHECK(e->size() >= 2 && (*e)[0] == '+' &&
                           std::all_of(e->begin() + 1, e->end(), [](char c) { return c >= '0' && c <= '9'; }),
                       f + " -> " + *e);
      }
    }
  }
}

void CheckDirectory(const wecom::Directory& dir) {
  WXA_FUZZ_CHECK(dir.size() == dir.entries().size(), "");
  for (const auto& [id, e] : dir.entries()) {
    WXA_FUZZ_CHECK(id == e.userid, id);
    WXA_FUZZ_CHECK(dir.Find(id) == &e, id);
  }
}

void CheckMapper(const wecom::Directory& dir, mapping::Mapper& m) {
  std::vector<std::string> ids;
  for (const auto& [id, e] : dir.entries()) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  ids.push_back("not-in-directory");
  for (const auto& id : ids) {
    mapping::Resolution r = m.Resolve(id);
    if (r.mapped()) {
      auto norm = mapping::NormalizeMailbox(r.mailbox);
      WXA_FUZZ_CHECK(norm && *norm == r.mailbox, r.mailbox);
    } else {
      WXA_FUZZ_CHECK(!r.why_not.empty(), id);
    }
    core::Person p = m.PersonFor(id);
    WXA_FUZZ_CHECK(!p.address.empty(), id);
  }
  core::Item item;
  item.from = ids.front();
  item.to = ids;
  item.to.push_back(ids.front());
  core::Participants parts = m.ParticipantsFor(item);
  std::set<std::string> seen;
  for (const auto& t : parts.to) {
    WXA_FUZZ_CHECK(t.id != parts.from.id, t.id);
    WXA_FUZZ_CHECK(seen.insert(t.id).second, t.id);
  }
  // The target refuses the first candidate: nobody may map to it any more.
  std::vector<std::string> candidates = m.CandidateMailboxes();
  if (candidates.empty()) return;
  const std::string refused = candidates.front();
  m.SetUnknownToTarget({refused});
  for (const auto& id : ids) WXA_FUZZ_CHECK(m.Resolve(id).mailbox != refused, refused);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in = wxa::fuzz::AsView(data, size);

  auto table = core::ParseCsv(in, "fuzz.csv");
  if (table.ok()) {
    CheckTable(*table);
    CheckNormalizers(*table);
  } else {
    WXA_FUZZ_CHECK(!table.status().message().empty(), "");
  }

  std::vector<std::string_view> parts = wxa::fuzz::SplitInput(in, '\f', 3);
  if (in.find('\f') == std::string_view::npos) parts = {in, in, in};

  auto dir = wecom::Directory::Parse(parts[0], "directory.csv");
  if (!dir.ok()) return 0;
  CheckDirectory(*dir);

  // Both inputs; when the list is refused (no valid address), the mapping
  // CSV alone, so that it is exercised anyway. (From memory: the import
  // reads each file once and parses its bytes the same way.)
  mapping::Mapper::Inputs inputs;
  inputs.mapping_csv_name = "mapping.csv";
  inputs.mapping_csv = std::string(parts[1]);
  inputs.mailbox_list_name = "mailboxes.txt";
  inputs.mailbox_list = std::string(parts[2]);
  auto m = mapping::Mapper::Parse(&*dir, inputs, mapping::MapperOptions{});
  if (!m.ok()) {
    inputs.mailbox_list_name.clear();
    m = mapping::Mapper::Parse(&*dir, inputs, mapping::MapperOptions{});
  }
  if (m.ok()) CheckMapper(*dir, *m);
  return 0;
}
