// PST writer benchmarks. The messages are made once, before timing, the way
// an import makes them (generated corpus -> parse -> map -> render ->
// sinks::PstMessageFor); the timed loop is pst::Writer: Create, Append every
// message, Close (no fsync, so the figure is the writer's, not the disk's).
// Before timing, the written volume is read back by our reader: it must
// verify and hold every message, with its Message-ID, in order.
//
//   build/bench/pst/wxa_pst_bench
//   WXA_PST_BENCH_USERS / _DAYS / _SCALE     the generated corpus (media scale)
//   WXA_PST_BENCH_DIR                        where volumes go (default /dev/shm)
//
// BM_PlainWrite writes as many bytes as the last PST volume had, sequentially,
// in 256 KiB writes: the ratio of the two MB/s is the writer's overhead.
#include <benchmark/benchmark.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "engine/sinks/pst/pst_sink.h"
#include "formats/mime/renderer.h"
#include "formats/pst/pst_reader.h"
#include "formats/pst/pst_writer.h"
#include "tests/mime/corpus_items.h"

namespace wxa {
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

std::string ScratchDir() {
  if (const char* d = std::getenv("WXA_PST_BENCH_DIR")) return d;
  return access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::filesystem::temp_directory_path().string();
}

class Messages {
 public:
  static Messages& Get() {
    static Messages m;
    return m;
  }
  const std::string& error() const { return error_; }
  // Text items (no media) or every item.
  const std::vector<std::shared_ptr<const pst::Message>>& text() const { return text_; }
  const std::vector<std::shared_ptr<const pst::Message>>& all() const { return all_; }
  const std::string& volume() const { return volume_; }
  ~Messages() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

 private:
  Messages() {
    dir_ = fmt::format("{}/wxa-pst-bench-{}", ScratchDir(), getpid());
    volume_ = dir_ + "/bench.pst";
    const char* scale = std::getenv("WXA_PST_BENCH_SCALE");
    auto set = mime::testing::ItemSet::Generated(dir_ + "/corpus", EnvInt("WXA_PST_BENCH_USERS", 20),
                                                 EnvInt("WXA_PST_BENCH_DAYS", 3), 1,
                                                 scale != nullptr ? std::atof(scale) : 0.05);
    if (!set.ok()) {
      error_ = set.status().ToString();
      return;
    }
    mime::Renderer r;
    for (auto& li : (*set)->items()) {
      auto out = r.Render(li.input);
      if (!out.ok()) {
        error_ = li.name + ": " + out.status().ToString();
        return;
      }
      auto m = sinks::PstMessageFor(r.composed(), *out, li.item.msgtime_ms);
      all_.push_back(m);
      if (li.item.media.empty() && !li.item.attach_raw) text_.push_back(m);
    }
  }
  std::string dir_, volume_, error_;
  std::vector<std::shared_ptr<const pst::Message>> text_, all_;
};

Status WriteVolume(const std::string& path, const std::vector<std::shared_ptr<const pst::Message>>& msgs) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  pst::WriterOptions o;
  o.sync_on_close = false;
  auto w = pst::Writer::Create(path, o);
  if (!w.ok()) return w.status();
  for (const auto& m : msgs) {
    if (Status s = (*w)->Append(*m); !s.ok()) return s;
  }
  return (*w)->Close();
}

// "" when the volume verifies and holds `msgs` in order (by Message-ID).
std::string Check(const std::string& path, const std::vector<std::shared_ptr<const pst::Message>>& msgs) {
  if (Status s = WriteVolume(path, msgs); !s.ok()) return s.ToString();
  auto r = pst::Reader::Open(path);
  if (!r.ok()) return r.status().ToString();
  if (Status v = (*r)->Verify(); !v.ok()) return v.ToString();
  auto folders = (*r)->Folders();
  if (!folders.ok()) return folders.status().ToString();
  for (const auto& f : *folders) {
    if (f.path != "WeChat Archiver") continue;
    auto nids = (*r)->MessageNids(f.nid);
    if (!nids.ok()) return nids.status().ToString();
    if (nids->size() != msgs.size()) return fmt::format("{} messages read back, {} written", nids->size(), msgs.size());
    for (size_t i = 0; i < msgs.size(); ++i) {
      auto rec = (*r)->ReadMessage((*nids)[i]);
      if (!rec.ok()) return rec.status().ToString();
      if (rec->message.internet_message_id != msgs[i]->internet_message_id) {
        return fmt::format("message {}: Message-ID {} read back, {} written", i, rec->message.internet_message_id,
                           msgs[i]->internet_message_id);
      }
    }
    return {};
  }
  return "no folder 'WeChat Archiver' in the volume";
}

uint64_t g_last_volume_bytes = 0;

template <bool kTextOnly>
void BM_PstWrite(benchmark::State& state) {
  Messages& m = Messages::Get();
  if (!m.error().empty()) return state.SkipWithError(m.error().c_str());
  const auto& msgs = kTextOnly ? m.text() : m.all();
  if (auto e = Check(m.volume(), msgs); !e.empty()) return state.SkipWithError(e.c_str());
  int64_t n = 0, bytes = 0;
  for (auto _ : state) {
    if (Status s = WriteVolume(m.volume(), msgs); !s.ok()) return state.SkipWithError(s.ToString().c_str());
    g_last_volume_bytes = std::filesystem::file_size(m.volume());
    bytes += static_cast<int64_t>(g_last_volume_bytes);
    n += static_cast<int64_t>(msgs.size());
  }
  state.SetItemsProcessed(n);
  state.SetBytesProcessed(bytes);
  state.counters["messages"] = static_cast<double>(msgs.size());
  state.counters["volume_MB"] = static_cast<double>(g_last_volume_bytes) / 1e6;
}
BENCHMARK_TEMPLATE(BM_PstWrite, true)->Name("BM_PstWriteText")->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_PstWrite, false)->Name("BM_PstWriteAll")->Unit(benchmark::kMillisecond);

// The reference: the last volume's size, written plainly in 256 KiB writes.
void BM_PlainWrite(benchmark::State& state) {
  Messages& m = Messages::Get();
  if (g_last_volume_bytes == 0) return state.SkipWithError("run after BM_PstWriteAll");
  const std::string path = m.volume() + ".plain";
  std::string chunk(256 << 10, 'p');
  int64_t bytes = 0;
  for (auto _ : state) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return state.SkipWithError("open failed");
    for (uint64_t done = 0; done < g_last_volume_bytes; done += chunk.size()) {
      size_t n = std::min<uint64_t>(chunk.size(), g_last_volume_bytes - done);
      if (::write(fd, chunk.data(), n) != static_cast<ssize_t>(n)) {
        ::close(fd);
        return state.SkipWithError("write failed");
      }
    }
    ::close(fd);
    bytes += static_cast<int64_t>(g_last_volume_bytes);
  }
  ::unlink(path.c_str());
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_PlainWrite)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace wxa

BENCHMARK_MAIN();
