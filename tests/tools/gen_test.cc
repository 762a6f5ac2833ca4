#include <gtest/gtest.h>

#include "engine/pipeline/import.h"
#include "tests/test_util.h"
#include "tools/gen/corpus_gen.h"

namespace wxa::gen {
namespace {

GenOptions Small(const std::string& out) {
  GenOptions o;
  o.out = out;
  o.users = 8;
  o.days = 2;
  o.seed = 42;
  o.media_scale = 0.01;
  o.messages_per_user_day = 10;
  return o;
}

TEST(Generator, DeterministicForASeed) {
  test::TempDir a, b;
  auto ra = GenerateCorpus(Small(a / "c"));
  auto rb = GenerateCorpus(Small(b / "c"));
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(ra->records, rb->records);
  auto files = test::ListFiles(a / "c");
  EXPECT_EQ(files, test::ListFiles(b / "c"));
  for (const auto& f : files) EXPECT_EQ(test::ReadFile(a / ("c/" + f)), test::ReadFile(b / ("c/" + f))) << f;
  // Refuses to overwrite a corpus.
  EXPECT_FALSE(GenerateCorpus(Small(a / "c")).ok());
}

TEST(Generator, CorpusHasEveryCaseAndImports) {
  test::TempDir t;
  auto r = GenerateCorpus(Small(t / "c"));
  ASSERT_TRUE(r.ok());
  for (const char* k : {"broken:malformed", "broken:invalid_utf8", "broken:missing_media",
                        "broken:corrupt_media", "broken:switch", "broken:unknown_type",
                        "broken:truncated_last_line", "text"}) {
    EXPECT_GT(r->by_type.count(k), 0u) << k;
  }
  pipeline::ImportOptions o;
  o.source_dir = t / "c";
  o.directory_csv = t / "c/directory.csv";
  o.mapping_csv = t / "c/mapping.csv";
  o.mailboxes_file = t / "c/mailboxes.txt";
  o.target = "maildir:" + t / "out";
  auto s = pipeline::RunImport(o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const auto& c = s->counts;
  EXPECT_EQ(c.records, r->records);
  EXPECT_EQ(c.malformed, 2u * 1 + 1);  // one per day + the truncated tail
  EXPECT_GE(c.oversize, 1u);           // the corpus always holds a file over 10 MiB
  EXPECT_GT(c.unmapped, 0u);
  EXPECT_EQ(c.missing_media, 2u);
  EXPECT_EQ(c.corrupt_media, 2u);
  EXPECT_EQ(c.switches, 2u);
  EXPECT_GT(c.imported, c.items * 8 / 10);
}

}  // namespace
}  // namespace wxa::gen
