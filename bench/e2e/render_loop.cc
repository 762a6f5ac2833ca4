// The render-only loops of bench/e2e/core_bench.sh, over the items of a
// corpus directory (what an import reads: records parsed, media read, people
// mapped, all in memory before timing):
//   direct: compose + the direct serializer into one reused buffer (the
//           product's renderer, Renderer::RenderAppend);
//   gmime:  compose, then GMime's object model builds and writes each message
//           one at a time (the renderer before issue #9; the reference).
// Both are checked first: GMime parses the first CHECK outputs of each back
// into the composed item, field by field (bench/mime's rule: fail loudly).
// Then ROUNDS interleaved rounds of each, over all items and over the text
// items only; prints one JSON object with the median round of each.
//
// Usage: wxa_render_loop CORPUS_DIR [ROUNDS=3] [CHECK=300]
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/mime/gmime_reference.h"
#include "formats/mime/renderer.h"
#include "tests/mime/corpus_items.h"

namespace wxa::mime {
namespace {

double Now(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Round {
  double wall_s = 0, cpu_s = 0;
  uint64_t bytes = 0;
};

template <typename F>
Round Time(const std::vector<const RenderInput*>& items, F&& render) {
  Round r;
  const double w0 = Now(CLOCK_MONOTONIC), c0 = Now(CLOCK_PROCESS_CPUTIME_ID);
  for (const RenderInput* in : items) r.bytes += render(*in);
  r.cpu_s = Now(CLOCK_PROCESS_CPUTIME_ID) - c0;
  r.wall_s = Now(CLOCK_MONOTONIC) - w0;
  return r;
}

Round Median(std::vector<Round> v) {
  std::sort(v.begin(), v.end(), [](const Round& a, const Round& b) { return a.cpu_s < b.cpu_s; });
  return v[v.size() / 2];
}

// "" when GMime reads `bytes` back as `c`.
std::string Verify(const ComposedItem& c, const std::string& bytes, bool ours) {
  auto wire = reference::CheckWireFormat(bytes);
  if (!wire.problems.empty()) return fmt::format("{}", fmt::join(wire.problems, "; "));
  auto parsed = reference::ParseWithGMime(bytes);
  if (!parsed.ok()) return parsed.status().ToString();
  reference::CompareOptions o;
  o.dual_file_names = ours;
  o.exact_line_ends = ours;
  auto d = reference::Compare(c, *parsed, o);
  return d.empty() ? std::string() : fmt::format("{}", fmt::join(d, "; "));
}

std::string Json(const char* name, const Round& r, size_t items, uint64_t media_bytes) {
  return fmt::format(R"("{}": {{"items": {}, "cpu_s": {:.4f}, "wall_s": {:.4f}, "out_bytes": {}, "media_bytes": {}}})",
                     name, items, r.cpu_s, r.wall_s, r.bytes, media_bytes);
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: wxa_render_loop CORPUS_DIR [ROUNDS=3] [CHECK=300]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  const size_t check = argc > 3 ? static_cast<size_t>(std::atoll(argv[3])) : 300;
  InitGMime();
  // Media over 10 MiB stay unread, as the import's size limit leaves them.
  auto set = testing::ItemSet::Load(dir, dir + "/directory.csv", dir + "/mapping.csv", dir + "/mailboxes.txt", "gen",
                                    10 << 20);
  if (!set.ok()) {
    std::fprintf(stderr, "render_loop: %s\n", set.status().ToString().c_str());
    return 1;
  }
  std::vector<const RenderInput*> all, text;
  uint64_t media_all = 0;
  for (auto& li : (*set)->items()) {
    all.push_back(&li.input);
    for (const auto& m : li.item.media) media_all += m.has_bytes() ? m.bytes.size() : 0;
    if (li.item.msgtype == "text" && li.item.media.empty() && !li.item.attach_raw) text.push_back(&li.input);
  }

  Renderer renderer;
  std::string buf;
  ComposedItem c;
  for (size_t i = 0; i < all.size() && i < check; ++i) {
    auto ours = renderer.Render(*all[i]);
    std::string e = ours.ok() ? Verify(renderer.composed(), *ours, true) : ours.status().ToString();
    if (e.empty()) {
      ComposeInto(*all[i], &c);
      auto ref = reference::RenderWithGMime(c);
      e = ref.ok() ? Verify(c, *ref, false) : ref.status().ToString();
    }
    if (!e.empty()) {
      std::fprintf(stderr, "render_loop: item %zu (%s): %s\n", i, all[i]->item->msgid.c_str(), e.c_str());
      return 1;
    }
  }

  auto direct = [&](const RenderInput& in) -> uint64_t {
    buf.clear();
    if (!renderer.RenderAppend(in, &buf).ok()) std::abort();
    return buf.size();
  };
  auto gmime = [&](const RenderInput& in) -> uint64_t {
    ComposeInto(in, &c);
    auto out = reference::RenderWithGMime(c);
    if (!out.ok()) std::abort();
    return out->size();
  };
  std::vector<Round> d_all, g_all, d_text, g_text;
  for (int r = 0; r < rounds; ++r) {
    d_all.push_back(Time(all, direct));
    g_all.push_back(Time(all, gmime));
    d_text.push_back(Time(text, direct));
    g_text.push_back(Time(text, gmime));
  }
  fmt::print("{{{}, {}, {}, {}}}\n", Json("direct_all", Median(d_all), all.size(), media_all),
             Json("gmime_all", Median(g_all), all.size(), media_all), Json("direct_text", Median(d_text), text.size(), 0),
             Json("gmime_text", Median(g_text), text.size(), 0));
  return 0;
}

}  // namespace
}  // namespace wxa::mime

int main(int argc, char** argv) { return wxa::mime::Main(argc, argv); }
