// Renderer benchmarks. Every benchmark first checks its output (GMime reads
// the message back and must find the composed item, field by field; base64
// is compared with the scalar encoder) and fails loudly with SkipWithError
// when it is wrong (simdjson's rule). Reports items/s and bytes/s (bytes of
// output, or of attachment input where named so).
//
//   build/bench/mime/wxa_mime_bench                      everything
//   ... --benchmark_filter='Corpus'                      the core loop only
//   WXA_MIME_BENCH_USERS / _DAYS / _SCALE                the generated corpus
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/mime/base64.h"
#include "formats/mime/gmime_reference.h"
#include "formats/mime/renderer.h"
#include "formats/mime/serializer.h"
#include "tests/mime/corpus_items.h"

namespace wxa::mime {
namespace {

// ---- verification ------------------------------------------------------------

// "" when GMime reads `bytes` back as `c`; else the differences.
std::string Verify(const ComposedItem& c, const std::string& bytes, bool dual_names = true) {
  auto wire = reference::CheckWireFormat(bytes);
  if (!wire.problems.empty()) return fmt::format("{}", fmt::join(wire.problems, "; "));
  auto parsed = reference::ParseWithGMime(bytes);
  if (!parsed.ok()) return parsed.status().ToString();
  reference::CompareOptions o;
  o.dual_file_names = dual_names;
  o.exact_line_ends = dual_names;  // GMime's writer keeps LF inside base64 text
  auto d = reference::Compare(c, *parsed, o);
  return d.empty() ? std::string() : fmt::format("{}", fmt::join(d, "; "));
}

// ---- items by kind -------------------------------------------------------------

struct Sample {
  core::Item item;
  RenderInput input;
};

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  uint64_t x = 88172645463325252ULL;
  for (auto& c : s) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  return s;
}

// kind: "text", "group" (participants people), "file" (attachment bytes).
std::unique_ptr<Sample> MakeSample(const std::string& kind, size_t n) {
  auto s = std::make_unique<Sample>();
  core::Item& it = s->item;
  it.msgid = "bench-" + kind;
  it.key = core::ItemKey::For("wecom", "bench", it.msgid);
  it.action = "send";
  it.msgtype = kind == "file" ? "file" : "text";
  it.from = "zhangsan";
  it.msgtime_ms = 1603875600000;
  it.text = "你好，明天上午十点开会。See you then.";
  s->input.item = &it;
  s->input.from = {"zhangsan", "张三", "zhangsan@corp.example.com"};
  if (kind == "group") {
    it.roomid = "wrErxtDgAAgbA7uw";
    for (size_t i = 1; i <= n; ++i) {
      std::string id = fmt::format("user{:05}", i);
      it.to.push_back(id);
      s->input.to.push_back({id, i % 2 ? fmt::format("用户{}", i) : fmt::format("User {}", i),
                             id + "@corp.example.com"});
    }
  } else {
    it.to = {"lisi"};
    s->input.to = {{"lisi", "李四", "lisi@corp.example.com"}};
  }
  if (kind == "file") {
    it.kind = core::ItemKind::kFile;
    it.label = "file 资料 report.pdf";
    core::MediaRef m;
    m.role = "file";
    m.filename = "资料 report.pdf";
    m.extension = "pdf";
    m.bytes = "%PDF-1.4\n" + Pattern(n);
    m.size = m.bytes.size();
    m.state = core::MediaState::kOk;
    it.media.push_back(std::move(m));
    it.facts = {{"File name", "资料 report.pdf"}, {"Size", fmt::format("{} bytes", n)}};
  }
  return s;
}

// ---- compose / serialize / render per kind --------------------------------------

void BM_Compose(benchmark::State& state, std::string kind, size_t n) {
  auto s = MakeSample(kind, n);
  ComposedItem c;
  ComposeInto(s->input, &c);
  std::string bytes;
  SerializeMessage(c, &bytes);
  if (auto e = Verify(c, bytes); !e.empty()) return state.SkipWithError(e.c_str());
  for (auto _ : state) {
    ComposeInto(s->input, &c);
    benchmark::DoNotOptimize(c.plain.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_Compose, text, std::string("text"), 0);
BENCHMARK_CAPTURE(BM_Compose, group_1000, std::string("group"), 1000);
BENCHMARK_CAPTURE(BM_Compose, file_64KiB, std::string("file"), 64 << 10);

void BM_Serialize(benchmark::State& state, std::string kind, size_t n) {
  auto s = MakeSample(kind, n);
  ComposedItem c = Compose(s->input);
  std::string buf;
  SerializeMessage(c, &buf);
  if (auto e = Verify(c, buf); !e.empty()) return state.SkipWithError(e.c_str());
  int64_t bytes = 0;
  for (auto _ : state) {
    buf.clear();  // the reused per-thread buffer
    SerializeMessage(c, &buf);
    bytes += static_cast<int64_t>(buf.size());
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK_CAPTURE(BM_Serialize, text, std::string("text"), 0);
BENCHMARK_CAPTURE(BM_Serialize, group_1000, std::string("group"), 1000);
BENCHMARK_CAPTURE(BM_Serialize, file_64KiB, std::string("file"), 64 << 10);

// The product call (engine/pipeline): a fresh std::string per item.
void BM_Render(benchmark::State& state, std::string kind, size_t n) {
  auto s = MakeSample(kind, n);
  Renderer r;
  auto check = r.Render(s->input);
  if (!check.ok()) return state.SkipWithError(check.status().ToString().c_str());
  if (auto e = Verify(r.composed(), *check); !e.empty()) return state.SkipWithError(e.c_str());
  int64_t bytes = 0;
  for (auto _ : state) {
    auto out = r.Render(s->input);
    bytes += static_cast<int64_t>(out->size());
    benchmark::DoNotOptimize(out->data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK_CAPTURE(BM_Render, text, std::string("text"), 0);
BENCHMARK_CAPTURE(BM_Render, group_1000, std::string("group"), 1000);
BENCHMARK_CAPTURE(BM_Render, file_64KiB, std::string("file"), 64 << 10);

// The baseline: the same composed item built and written by GMime.
void BM_GMimeRender(benchmark::State& state, std::string kind, size_t n) {
  auto s = MakeSample(kind, n);
  ComposedItem c = Compose(s->input);
  auto check = reference::RenderWithGMime(c);
  if (!check.ok()) return state.SkipWithError(check.status().ToString().c_str());
  if (auto e = Verify(c, *check, false); !e.empty()) return state.SkipWithError(e.c_str());
  int64_t bytes = 0;
  for (auto _ : state) {
    ComposeInto(s->input, &c);
    auto out = reference::RenderWithGMime(c);
    bytes += static_cast<int64_t>(out->size());
    benchmark::DoNotOptimize(out->data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK_CAPTURE(BM_GMimeRender, text, std::string("text"), 0);
BENCHMARK_CAPTURE(BM_GMimeRender, group_1000, std::string("group"), 1000);
BENCHMARK_CAPTURE(BM_GMimeRender, file_64KiB, std::string("file"), 64 << 10);

// ---- attachments: bytes of attachment per second through the whole render ----

void BM_AttachmentRender(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  auto s = MakeSample("file", n);
  Renderer r;
  std::string buf;
  if (!r.RenderAppend(s->input, &buf).ok()) return state.SkipWithError("render failed");
  if (auto e = Verify(r.composed(), buf); !e.empty()) return state.SkipWithError(e.c_str());
  for (auto _ : state) {
    buf.clear();
    (void)r.RenderAppend(s->input, &buf);
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK(BM_AttachmentRender)->Arg(1 << 20)->Arg(4 << 20)->Unit(benchmark::kMillisecond);

void BM_AttachmentGMime(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  auto s = MakeSample("file", n);
  ComposedItem c = Compose(s->input);
  auto check = reference::RenderWithGMime(c);
  if (!check.ok()) return state.SkipWithError("GMime render failed");
  if (auto e = Verify(c, *check, false); !e.empty()) return state.SkipWithError(e.c_str());
  for (auto _ : state) {
    ComposeInto(s->input, &c);
    auto out = reference::RenderWithGMime(c);
    benchmark::DoNotOptimize(out->data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK(BM_AttachmentGMime)->Arg(1 << 20)->Arg(4 << 20)->Unit(benchmark::kMillisecond);

// ---- base64 ------------------------------------------------------------------------

void BM_Base64(benchmark::State& state, Base64Impl impl) {
  if (impl == Base64Impl::kAvx2 && !CpuHasAvx2()) return state.SkipWithError("no AVX2 on this CPU");
  const size_t n = static_cast<size_t>(state.range(0));
  const std::string in = Pattern(n);
  std::string out(Base64MimeSize(n), '\0'), ref(Base64MimeSize(n), '\0');
  Base64MimeEncode(reinterpret_cast<const unsigned char*>(in.data()), n, out.data(), impl);
  Base64MimeEncode(reinterpret_cast<const unsigned char*>(in.data()), n, ref.data(), Base64Impl::kScalar);
  if (out != ref) return state.SkipWithError("differs from the scalar encoder");
  for (auto _ : state) {
    Base64MimeEncode(reinterpret_cast<const unsigned char*>(in.data()), n, out.data(), impl);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK_CAPTURE(BM_Base64, scalar, Base64Impl::kScalar)->Arg(64 << 10)->Arg(4 << 20);
BENCHMARK_CAPTURE(BM_Base64, avx2, Base64Impl::kAvx2)->Arg(64 << 10)->Arg(4 << 20);

// ---- many participants: linear ------------------------------------------------------

void BM_GroupParticipants(benchmark::State& state) {
  auto s = MakeSample("group", static_cast<size_t>(state.range(0)));
  Renderer r;
  auto check = r.Render(s->input);
  if (!check.ok()) return state.SkipWithError("render failed");
  if (auto e = Verify(r.composed(), *check); !e.empty()) return state.SkipWithError(e.c_str());
  int64_t bytes = 0;
  for (auto _ : state) {
    auto out = r.Render(s->input);
    bytes += static_cast<int64_t>(out->size());
    benchmark::DoNotOptimize(out->data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
  state.counters["participants"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_GroupParticipants)->Arg(1000)->Arg(5000)->Arg(20000)->Unit(benchmark::kMillisecond);

// GMime's address list re-serializes on every added mailbox: quadratic.
void BM_GroupParticipantsGMime(benchmark::State& state) {
  auto s = MakeSample("group", static_cast<size_t>(state.range(0)));
  ComposedItem c = Compose(s->input);
  auto check = reference::RenderWithGMime(c);
  if (!check.ok()) return state.SkipWithError("GMime render failed");
  if (auto e = Verify(c, *check, false); !e.empty()) return state.SkipWithError(e.c_str());
  for (auto _ : state) {
    auto out = reference::RenderWithGMime(c);
    benchmark::DoNotOptimize(out->data());
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["participants"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_GroupParticipantsGMime)->Arg(1000)->Arg(2000)->Arg(5000)->Iterations(1)->Unit(benchmark::kMillisecond);

// ---- the core loop over a generated corpus ----------------------------------------

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

class Corpus {
 public:
  static Corpus& Get() {
    static Corpus c;
    return c;
  }
  testing::ItemSet* set() { return set_.get(); }
  const std::string& error() const { return error_; }
  ~Corpus() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

 private:
  Corpus() {
    const char* tmp = std::getenv("TMPDIR");
    dir_ = fmt::format("{}/wxa-mime-bench-{}", tmp != nullptr ? tmp : "/tmp", getpid());
    const char* scale = std::getenv("WXA_MIME_BENCH_SCALE");
    auto set = testing::ItemSet::Generated(dir_ + "/corpus", EnvInt("WXA_MIME_BENCH_USERS", 20),
                                           EnvInt("WXA_MIME_BENCH_DAYS", 3), 1,
                                           scale != nullptr ? std::atof(scale) : 0.05);
    if (!set.ok()) {
      error_ = set.status().ToString();
      return;
    }
    set_ = std::move(*set);
  }
  std::string dir_;
  std::string error_;
  std::unique_ptr<testing::ItemSet> set_;
};

// Checks every corpus item once: GMime reads back what was composed.
std::string VerifyCorpus(bool gmime_writer) {
  Renderer r;
  for (auto& li : Corpus::Get().set()->items()) {
    std::string e;
    if (gmime_writer) {
      ComposedItem c = Compose(li.input);
      auto out = reference::RenderWithGMime(c);
      e = out.ok() ? Verify(c, *out, false) : out.status().ToString();
    } else {
      auto out = r.Render(li.input);
      e = out.ok() ? Verify(r.composed(), *out) : out.status().ToString();
    }
    if (!e.empty()) return li.name + ": " + e;
  }
  return {};
}

// The core loop: every corpus item (or only its plain text items) through
// render(input) -> bytes of output, after VerifyCorpus checked the same
// writer (gmime_writer: GMime's, else ours). Reports items/s and bytes/s of
// output; the "items" counter (items per pass) when count_items.
enum class CorpusItems { kAll, kTextOnly };
template <typename RenderFn>
void RunCorpus(benchmark::State& state, bool gmime_writer, CorpusItems which, bool count_items, RenderFn render) {
  Corpus& corpus = Corpus::Get();
  if (corpus.set() == nullptr) return state.SkipWithError(corpus.error().c_str());
  if (auto e = VerifyCorpus(gmime_writer); !e.empty()) return state.SkipWithError(e.c_str());
  std::vector<const RenderInput*> inputs;
  for (auto& li : corpus.set()->items()) {
    const bool text = li.item.msgtype == "text" && li.item.media.empty() && !li.item.attach_raw;
    if (which == CorpusItems::kAll || text) inputs.push_back(&li.input);
  }
  int64_t n = 0, bytes = 0;
  for (auto _ : state) {
    for (const RenderInput* in : inputs) bytes += static_cast<int64_t>(render(*in));
    n += static_cast<int64_t>(inputs.size());
  }
  state.SetItemsProcessed(n);
  state.SetBytesProcessed(bytes);
  if (count_items) state.counters["items"] = static_cast<double>(inputs.size());
}

// The product call (engine/pipeline): a fresh std::string per item.
auto RenderEach(Renderer& r) {
  return [&r](const RenderInput& in) {
    auto out = r.Render(in);
    benchmark::DoNotOptimize(out->data());
    return out->size();
  };
}

// The reference: composed, then built and written by GMime's object model
// one at a time (what the renderer did before).
auto GMimeEach(ComposedItem& c) {
  return [&c](const RenderInput& in) {
    ComposeInto(in, &c);
    auto out = reference::RenderWithGMime(c);
    benchmark::DoNotOptimize(out->data());
    return out->size();
  };
}

void BM_CorpusRender(benchmark::State& state) {
  Renderer r;
  RunCorpus(state, false, CorpusItems::kAll, true, RenderEach(r));
}
BENCHMARK(BM_CorpusRender)->Unit(benchmark::kMillisecond);

// Compose + direct serializer into one reused buffer (RenderAppend).
void BM_CorpusRenderAppend(benchmark::State& state) {
  Renderer r;
  std::string buf;
  RunCorpus(state, false, CorpusItems::kAll, false, [&](const RenderInput& in) {
    buf.clear();
    (void)r.RenderAppend(in, &buf);
    benchmark::DoNotOptimize(buf.data());
    return buf.size();
  });
}
BENCHMARK(BM_CorpusRenderAppend)->Unit(benchmark::kMillisecond);

void BM_CorpusGMime(benchmark::State& state) {
  ComposedItem c;
  RunCorpus(state, true, CorpusItems::kAll, false, GMimeEach(c));
}
BENCHMARK(BM_CorpusGMime)->Unit(benchmark::kMillisecond);

// Text items of the corpus only (the 38,000 items/s reference).
void BM_CorpusTextRender(benchmark::State& state) {
  Renderer r;
  RunCorpus(state, false, CorpusItems::kTextOnly, true, RenderEach(r));
}
BENCHMARK(BM_CorpusTextRender)->Unit(benchmark::kMillisecond);

void BM_CorpusTextGMime(benchmark::State& state) {
  ComposedItem c;
  RunCorpus(state, true, CorpusItems::kTextOnly, true, GMimeEach(c));
}
BENCHMARK(BM_CorpusTextGMime)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace wxa::mime

int main(int argc, char** argv) {
  wxa::mime::InitGMime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
