// Property tests: items from the corpus generator (parsed, media loaded and
// mapped as an import does) and randomly built hostile items (control
// characters, CR/LF injection attempts, 1,000-character names, emoji,
// invalid UTF-8, empty fields, huge participant lists), each rendered, read
// back by GMime (and Python's `email`) and compared with the composed item
// field by field; no line may exceed 998 bytes.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/mime/gmime_reference.h"
#include "formats/mime/renderer.h"
#include "tests/mime/corpus_items.h"
#include "tests/mime/python_check.h"
#include "tests/test_util.h"

namespace wxa::mime {
namespace {

class MimeProperty : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { InitGMime(); }
};

// Renders, checks the wire format and GMime's reading; returns the problems.
std::string Check(Renderer& r, const RenderInput& in, std::string* bytes_out, size_t* longest_header) {
  auto bytes = r.Render(in);
  if (!bytes.ok()) return bytes.status().ToString();
  std::vector<std::string> problems;
  auto wire = reference::CheckWireFormat(*bytes);
  problems = wire.problems;
  *longest_header = std::max(*longest_header, wire.longest_header_line);
  auto parsed = reference::ParseWithGMime(*bytes);
  if (!parsed.ok()) {
    problems.push_back(parsed.status().ToString());
  } else {
    for (auto& d : reference::Compare(r.composed(), *parsed)) problems.push_back(std::move(d));
  }
  *bytes_out = std::move(*bytes);
  return fmt::format("{}", fmt::join(problems, "\n"));
}

TEST_F(MimeProperty, GeneratedCorpusReadsBackAsComposed) {
  test::TempDir dir;
  auto set = testing::ItemSet::Generated(dir / "corpus", 12, 2, 5, 0.02);
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  ASSERT_GT((*set)->items().size(), 300u);
  Renderer r;
  testing::PythonCheck python;
  size_t longest_header = 0, attachments = 0, groups = 0;
  for (auto& li : (*set)->items()) {
    std::string bytes;
    std::string problems = Check(r, li.input, &bytes, &longest_header);
    ASSERT_EQ(problems, "") << li.name << " (" << li.item.pos.file << ")";
    attachments += r.composed().attachments.size();
    groups += li.item.is_group();
    python.Add(r.composed(), bytes);
  }
  EXPECT_GT(attachments, 50u);
  EXPECT_GT(groups, 20u);
  // Generated names and addresses are short: every header line folds at 78.
  EXPECT_LE(longest_header, 78u);
  bool ok = false;
  std::string out = python.Run(&ok);
  EXPECT_TRUE(ok) << out;
}

// ---- hostile items ---------------------------------------------------------

class Hostile {
 public:
  explicit Hostile(uint64_t seed) : rng_(seed) {}

  size_t Below(size_t n) { return n == 0 ? 0 : rng_() % n; }
  bool Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  std::string Text(size_t max_pieces = 12) {
    static const std::vector<std::string> kPieces = {
        "", "a", "Zhang", " ", "  ", "\r\n", "\n", "\r", "\t", "\x01", "\x7f", "\xc2\x85", "\xe2\x80\xa8",
        "张三", "李四", "😀", "👨‍👩‍👧", "\xff\xfe", "\xc3", "\xed\xa0\x80", "=?utf-8?b?5byg5LiJ?=", "=?", "?=",
        "\"", "\\", ",", ";", ":", "<", ">", "@", "(", ")", "\r\nBcc: victim@evil.example", "\nX-Evil: 1",
        "--=_wxa_", "%", "'", "*", "_", "=", "é", "Ünïcödé", ".", "..", "/", "report.pdf", "~", "#", "\x00"};
    std::string s;
    if (Chance(0.03)) return std::string(1000, "xy中,"[Below(4)]);
    if (Chance(0.02)) {
      for (int i = 0; i < 400; ++i) s += "中";
      return s;
    }
    size_t n = Below(max_pieces + 1);
    for (size_t i = 0; i < n; ++i) s += kPieces[Below(kPieces.size())];
    if (Chance(0.05)) s += std::string(Below(200), 'w');
    return s;
  }

  std::string Address() {
    switch (Below(6)) {
      case 0: return "";
      case 1: return Text(3);
      case 2: return "user" + std::to_string(Below(1000)) + "@corp.example.com";
      case 3: return "a\r\nBcc: x@evil.example";
      case 4: return std::string(70, 'l') + "@example.com";
      default: return "first.last+tag@sub.example.org";
    }
  }

  Person Someone() { return {Chance(0.1) ? "" : Text(4), Chance(0.1) ? "" : Text(), Address()}; }

  std::string Bytes(size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng_());
    return s;
  }

  core::Item Item(int index) {
    core::Item it;
    it.msgid = Chance(0.8) ? fmt::format("msg-{}", index) : Text(4) + std::to_string(index);
    it.key = core::ItemKey::For("wecom", "hostile", it.msgid);
    it.action = Chance(0.9) ? "send" : Text(2);
    it.msgtype = Chance(0.7) ? "text" : Text(3);
    it.from = Text(3);
    size_t people = Chance(0.05) ? 500 + Below(2500) : Below(6);
    for (size_t i = 0; i < people; ++i) it.to.push_back(Chance(0.1) ? it.from : Text(3));
    if (Chance(0.3)) it.roomid = Text(3);
    it.msgtime_ms = static_cast<int64_t>(rng_() % 253402300800000ULL);
    if (Chance(0.1)) it.msgtime_ms = Chance(0.5) ? 0 : 253402300799999;
    it.kind = static_cast<core::ItemKind>(Below(6));
    it.label = Text(4);
    it.text = Text(30);
    if (Chance(0.05)) it.text = std::string(5000, 'L');  // one long line
    for (size_t i = Below(4); i > 0; --i) it.facts.push_back({Text(3), Text(6)});
    for (size_t i = Below(3); i > 0; --i) {
      it.entries.push_back({Text(2), Chance(0.5) ? std::optional<int64_t>(Below(2000000000)) : std::nullopt, Text(8)});
    }
    if (it.kind == core::ItemKind::kCall || Chance(0.05)) {
      it.call = core::CallInfo{Text(3), Chance(0.7) ? std::optional<int64_t>(Below(100000)) : std::nullopt,
                               std::optional<int64_t>(Below(2000000000)), std::nullopt};
    }
    if (it.kind == core::ItemKind::kRecall) {
      it.recalled_msgid = Chance(0.5) ? "orig_1603875600" : Text(3);
      if (Chance(0.7)) it.recalled_key = core::ItemKey::For("wecom", "hostile", it.recalled_msgid);
    }
    for (size_t i = Below(4); i > 0; --i) {
      core::MediaRef m;
      m.role = Chance(0.8) ? "file" : Text(2);
      m.filename = Chance(0.2) ? "" : (Chance(0.5) ? Text(5) + ".pdf" : Text(8));
      m.extension = Chance(0.5) ? "pdf" : (Chance(0.5) ? "" : Text(2));
      if (Chance(0.2)) m.filename = "same name.pdf";  // duplicates are numbered
      m.bytes = Bytes(Chance(0.1) ? 0 : Below(3000));
      if (Chance(0.2)) m.bytes = "%PDF-1.4" + m.bytes;
      m.size = m.bytes.size();
      m.state = Chance(0.8) ? core::MediaState::kOk : (Chance(0.5) ? core::MediaState::kCorrupt : core::MediaState::kMissing);
      if (m.state != core::MediaState::kOk) m.problem = Text(4);
      if (m.state == core::MediaState::kMissing) m.bytes.clear();
      it.media.push_back(std::move(m));
    }
    for (size_t i = Below(3); i > 0; --i) it.notes.push_back(Text(5));
    it.attach_raw = Chance(0.3);
    if (it.attach_raw) it.raw = Chance(0.5) ? "{\"msgid\":\"" + it.msgid + "\"}" : Bytes(Below(500));
    return it;
  }

 private:
  std::mt19937_64 rng_;
};

// WXA_MIME_HOSTILE_ITEMS and WXA_MIME_HOSTILE_SEED run a longer campaign.
TEST_F(MimeProperty, HostileItemsReadBackAsComposed) {
  const char* n_env = std::getenv("WXA_MIME_HOSTILE_ITEMS");
  const char* seed_env = std::getenv("WXA_MIME_HOSTILE_SEED");
  const int kItems = n_env != nullptr ? std::atoi(n_env) : 600;
  const uint64_t kSeed = seed_env != nullptr ? std::strtoull(seed_env, nullptr, 10) : 1000;
  Renderer r;
  testing::PythonCheck python;
  size_t longest_header = 0;
  for (int i = 0; i < kItems; ++i) {
    Hostile h(kSeed + i);  // one seed per item: a failure names its seed
    core::Item it = h.Item(i);
    RenderInput in{&it, h.Someone(), {}};
    size_t people = it.to.size();
    for (size_t k = 0; k < people; ++k) in.to.push_back(h.Someone());
    std::string bytes;
    std::string problems = Check(r, in, &bytes, &longest_header);
    if (!problems.empty()) {
      const std::string dump = fmt::format("{}/wxa-mime-hostile-{}.eml", ::testing::TempDir(), kSeed + i);
      test::WriteFile(dump, bytes);
      FAIL() << "seed " << kSeed + i << " (message in " << dump << "):\n" << problems;
    }
    // Python too, except for the huge lists (slow there, and GMime checked them).
    if (people < 100) python.Add(r.composed(), bytes);
  }
  bool ok = false;
  std::string out = python.Run(&ok);
  EXPECT_TRUE(ok) << out;
}

}  // namespace
}  // namespace wxa::mime
