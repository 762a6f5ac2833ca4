// Micro benchmarks of the per-item CPU path: parse a record, render an item.
// Each benchmark checks its output before timing (simdjson's rule) and
// reports items/s and bytes/s.
#include <benchmark/benchmark.h>

#include <string>

#include "formats/core/file.h"
#include "formats/mime/renderer.h"
#include "formats/wecom/parser.h"

namespace {

const char* kText =
    R"({"msgid":"CAQQluDa4QUY0On2rYSAgAMgzPrShAE=","action":"send","from":"zhangsan","tolist":["lisi"],"roomid":"","msgtime":1547087894783,"msgtype":"text","text":{"content":"你好，明天上午十点开会。See you then."}})";
const char* kFile =
    R"({"msgid":"18039699423706571225_1603875608","action":"send","from":"kens","tolist":["wmErxtDgAArDlFIhf76O6w4GxU81al8w"],"roomid":"","msgtime":1603875608214,"msgtype":"file","file":{"md5sum":"18e93fc2ea884df23b3d2d3b8667b9f0","filename":"资料.docx","fileext":"docx","filesize":18181,"sdkfileid":"E4ODRkZjIz"}})";

void BM_ParseText(benchmark::State& state) {
  wxa::wecom::RecordParser p({});
  wxa::wecom::RawRecord rec;
  rec.bytes.reserve(1024);
  rec.bytes = kText;
  auto check = p.Parse(rec, "f");
  if (!check.ok() || check->item.text.empty()) {
    state.SkipWithError("parse check failed");
    return;
  }
  for (auto _ : state) {
    auto r = p.Parse(rec, "f");
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(rec.bytes.size()));
}
BENCHMARK(BM_ParseText);

void BM_ParseFile(benchmark::State& state) {
  wxa::wecom::RecordParser p({});
  wxa::wecom::RawRecord rec;
  rec.bytes.reserve(1024);
  rec.bytes = kFile;
  for (auto _ : state) {
    auto r = p.Parse(rec, "f");
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ParseFile);

void BM_RenderText(benchmark::State& state) {
  wxa::mime::InitGMime();
  wxa::wecom::RecordParser p({});
  auto parsed = p.ParseLine(kText);
  const auto& item = parsed->item;
  wxa::mime::RenderInput in{&item, {"zhangsan", "张三", "zhangsan@corp.example.com"},
                            {{"lisi", "李四", "lisi@corp.example.com"}}};
  wxa::mime::Renderer r;
  auto check = r.Render(in);
  if (!check.ok() || check->find("Subject:") == std::string::npos) {
    state.SkipWithError("render check failed");
    return;
  }
  int64_t bytes = 0;
  for (auto _ : state) {
    auto out = r.Render(in);
    bytes += static_cast<int64_t>(out->size());
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_RenderText);

// An item with one attachment of range(0) bytes: base64 throughput.
void BM_RenderAttachment(benchmark::State& state) {
  wxa::mime::InitGMime();
  const std::string path = "/tmp/wxa-bench-attachment.bin";
  std::string data(static_cast<size_t>(state.range(0)), '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 2654435761u >> 24);
  if (!wxa::core::WriteFileAtomic(wxa::core::Env::Default(), path + ".tmp", path, data,
                                       wxa::core::Durability::kNone).ok()) {
    state.SkipWithError("cannot write the attachment file");
    return;
  }
  wxa::wecom::RecordParser p({});
  auto parsed = p.ParseLine(kFile);
  wxa::core::Item item = parsed->item;
  item.media[0].path = path;
  item.media[0].size = data.size();
  item.media[0].state = wxa::core::MediaState::kOk;
  wxa::mime::RenderInput in{&item, {"kens", "Ken", "kens@corp.example.com"}, {{"wm", "wm", "wm@wecom.invalid"}}};
  wxa::mime::Renderer r;
  auto check = r.Render(in);
  if (!check.ok() || check->size() < data.size() * 4 / 3) {
    state.SkipWithError("render check failed");
    return;
  }
  for (auto _ : state) {
    auto out = r.Render(in);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_RenderAttachment)->Arg(64 << 10)->Arg(4 << 20);

}  // namespace

BENCHMARK_MAIN();  // one main for every micro benchmark file
