// Every golden item (tests/data/golden) rendered by the direct serializer
// and read back by GMime and by Python's `email`: each must carry exactly
// the composed item, field by field. GMime's own writer, given the same
// composed items, must produce messages that read back the same (it is the
// benchmarks' baseline, so it has to build equivalent messages).
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/mime/gmime_reference.h"
#include "formats/mime/renderer.h"
#include "formats/mime/serializer.h"
#include "tests/mime/corpus_items.h"
#include "tests/mime/python_check.h"

namespace wxa::mime {
namespace {

class MimeGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    InitGMime();
    auto set = testing::ItemSet::Golden();
    ASSERT_TRUE(set.ok()) << set.status().ToString();
    set_ = set->release();
  }
  static void TearDownTestSuite() {
    delete set_;
    set_ = nullptr;
  }
  static testing::ItemSet* set_;
};
testing::ItemSet* MimeGolden::set_ = nullptr;

TEST_F(MimeGolden, EveryItemReadsBackAsComposedWithGMime) {
  ASSERT_EQ(set_->items().size(), 38u);
  Renderer r;
  size_t with_attachments = 0, non_ascii_names = 0;
  for (auto& li : set_->items()) {
    auto bytes = r.Render(li.input);
    ASSERT_TRUE(bytes.ok()) << li.name;
    const ComposedItem& c = r.composed();
    auto wire = reference::CheckWireFormat(*bytes);
    EXPECT_EQ(fmt::format("{}", fmt::join(wire.problems, "\n")), "") << li.name;
    EXPECT_LE(wire.longest_header_line, 78u) << li.name;
    auto parsed = reference::ParseWithGMime(*bytes);
    ASSERT_TRUE(parsed.ok()) << li.name;
    EXPECT_EQ(fmt::format("{}", fmt::join(reference::Compare(c, *parsed), "\n")), "") << li.name;
    with_attachments += !c.attachments.empty();
    for (const auto& a : c.attachments) {
      for (unsigned char ch : a.file_name) {
        if (ch >= 0x80) {
          ++non_ascii_names;
          break;
        }
      }
    }
  }
  // The fixture exercises what the comparison checks.
  EXPECT_GE(with_attachments, 8u);
  EXPECT_GE(non_ascii_names, 1u);
}

TEST_F(MimeGolden, EveryItemReadsBackAsComposedWithPython) {
  Renderer r;
  testing::PythonCheck check;
  for (auto& li : set_->items()) {
    auto bytes = r.Render(li.input);
    ASSERT_TRUE(bytes.ok());
    check.Add(r.composed(), *bytes);
  }
  bool ok = false;
  std::string out = check.Run(&ok);
  EXPECT_TRUE(ok) << out;
}

TEST_F(MimeGolden, GMimeReferenceBuildsEquivalentMessages) {
  for (auto& li : set_->items()) {
    ComposedItem c = Compose(li.input);
    auto bytes = reference::RenderWithGMime(c);
    ASSERT_TRUE(bytes.ok()) << li.name;
    auto parsed = reference::ParseWithGMime(*bytes);
    ASSERT_TRUE(parsed.ok()) << li.name;
    EXPECT_EQ(fmt::format("{}", fmt::join(reference::Compare(c, *parsed, {.dual_file_names = false, .exact_line_ends = false}), "\n")), "")
        << li.name;
  }
}

TEST_F(MimeGolden, ComposeIsPureAndReusable) {
  // One ComposedItem reused across items composes what a fresh one does.
  ComposedItem reused;
  for (int round = 0; round < 2; ++round) {
    for (auto& li : set_->items()) {
      ComposeInto(li.input, &reused);
      ComposedItem fresh = Compose(li.input);
      std::string a, b;
      SerializeMessage(reused, &a);
      SerializeMessage(fresh, &b);
      ASSERT_EQ(a, b) << li.name;
    }
  }
}

}  // namespace
}  // namespace wxa::mime
