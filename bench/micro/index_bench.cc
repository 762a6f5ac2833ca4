// LMDB index micro benchmarks: lookups of the skip path, group-committed
// writes, and index bytes per item. Each checks its results before timing.
#include <benchmark/benchmark.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include "engine/index/index.h"

namespace {

using wxa::index::DeliveryKey;
using wxa::index::Index;
using wxa::index::WriteBatch;

std::string FreshDir(const char* name) {
  const char* base = std::getenv("TMPDIR");
  std::string dir = fmt::format("{}/wxa-bench-{}-{}", base ? base : "/tmp", name, ::getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

wxa::core::ItemKey Key(int64_t i) { return wxa::core::ItemKey::For("wecom", "bench", fmt::format("m{}", i)); }

// Fills an index with n items, each delivered to two of 200 mailboxes, as an
// import does (claim, then done + item record), in batches of 256 items.
bool Populate(Index& idx, int64_t n) {
  for (int64_t base = 0; base < n; base += 256) {
    WriteBatch claim, done;
    for (int64_t i = base; i < std::min(n, base + 256); ++i) {
      for (int m = 0; m < 2; ++m) {
        DeliveryKey k{1, fmt::format("user{}@corp.example.com", (i + m * 7) % 200), Key(i), 1700000000000 + i};
        claim.claims.push_back(k);
        done.done.push_back({k, {}, {}});
      }
      wxa::index::ItemRecord r;
      r.msgtime_ms = 1700000000000 + i;
      r.size = 1500;
      r.content_hash = std::string(16, 'h');
      r.file_id = 1;
      r.offset = static_cast<uint64_t>(i) * 300;
      r.line = static_cast<uint64_t>(i);
      done.items.emplace_back(Key(i), r);
    }
    if (!idx.Write(std::move(claim)).ok() || !idx.Write(std::move(done)).ok()) return false;
  }
  return true;
}

// Skip path: is each of 256 (item, mailbox) deliveries done?
void BM_IndexLookupBatch(benchmark::State& state) {
  const int64_t n = state.range(0);
  std::string dir = FreshDir("lookup");
  auto idx = Index::Open(dir);
  if (!idx.ok() || !Populate(**idx, n)) {
    state.SkipWithError("populate failed");
    return;
  }
  std::vector<DeliveryKey> keys;
  for (int64_t i = 0; i < 256; ++i) {
    int64_t item = (i * 7919) % n;
    keys.push_back({1, fmt::format("user{}@corp.example.com", item % 200), Key(item), 0});
  }
  std::vector<std::optional<wxa::index::DeliveryState>> out;
  if (!(*idx)->GetDeliveries(keys, &out).ok() || !out[0] || *out[0] != wxa::index::DeliveryState::kDone) {
    state.SkipWithError("lookup check failed");
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize((*idx)->GetDeliveries(keys, &out));
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(keys.size()));
  idx->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_IndexLookupBatch)->Arg(100000)->Unit(benchmark::kMicrosecond);

// Claim + done + item record for range(0) items per commit: what one batch of
// the pipeline costs the writer (two durable commits).
void BM_IndexGroupCommit(benchmark::State& state) {
  const int64_t per_batch = state.range(0);
  std::string dir = FreshDir("commit");
  auto idx = Index::Open(dir);
  if (!idx.ok()) {
    state.SkipWithError("open failed");
    return;
  }
  int64_t next = 0;
  for (auto _ : state) {
    WriteBatch claim, done;
    for (int64_t i = 0; i < per_batch; ++i, ++next) {
      DeliveryKey k{1, fmt::format("user{}@corp.example.com", next % 200), Key(next), next};
      claim.claims.push_back(k);
      done.done.push_back({k, {}, {}});
      wxa::index::ItemRecord r;
      r.size = 1500;
      done.items.emplace_back(Key(next), r);
    }
    auto c = (*idx)->Write(std::move(claim));
    auto d = (*idx)->Write(std::move(done));
    if (!c.ok() || !d.ok() || c->claims.at(0) != wxa::index::ClaimResult::kClaimed) {
      state.SkipWithError("write failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * per_batch);
  idx->reset();
  std::filesystem::remove_all(dir);
}
// Commits wait on fsync: rates are per wall-clock second, not CPU second.
BENCHMARK(BM_IndexGroupCommit)->Arg(1)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);

// The index writer's CPU per record as an import drives it, on an index that
// already holds range(0) items: each step commits one batch's claims (2,048
// records, 2.4 mailboxes each, keys in hash order as the pipeline's are) with
// the previous batch's done records and item records (a lazy write sharing
// the claims' commit). Process CPU time: the work is on the writer thread.
// TMPDIR on tmpfs keeps the fsyncs out of it.
// range(1) = 1: the claims say the plan read no record of them
// (absent_when_read, as the pipeline sends them since f91d8f2): the writer
// skips their search of `items`.
void BM_IndexWriterCpu(benchmark::State& state) {
  const int64_t base = state.range(0);
  const bool absent = state.range(1) != 0;
  constexpr int64_t kBatch = 2048;
  std::string dir = FreshDir("writer");
  auto idx = Index::Open(dir);
  if (!idx.ok() || !Populate(**idx, base)) {
    state.SkipWithError("populate failed");
    return;
  }
  auto keys_of = [](int64_t i) {
    std::vector<DeliveryKey> ks;
    const int n = 2 + static_cast<int>(i % 5 == 0) * 2;  // 2.4 on average
    for (int m = 0; m < n; ++m) {
      ks.push_back({1, fmt::format("user{}@corp.example.com", (i * 31 + m * 7) % 5000), Key(i), 1700000000000 + i});
    }
    return ks;
  };
  int64_t next = base, prev_start = -1, records = 0;
  for (auto _ : state) {
    state.PauseTiming();  // building the batches is the pipeline's work, not the writer's
    WriteBatch claims, done;
    for (int64_t i = next; i < next + kBatch; ++i) {
      for (auto& k : keys_of(i)) {
        k.absent_when_read = absent;
        claims.claims.push_back(std::move(k));
      }
    }
    if (prev_start >= 0) {
      for (int64_t i = prev_start; i < prev_start + kBatch; ++i) {
        for (auto& k : keys_of(i)) done.done.push_back({std::move(k), {}, {}});
        wxa::index::ItemRecord r;
        r.msgtime_ms = 1700000000000 + i;
        r.size = 1500;
        r.content_hash = std::string(16, 'h');
        r.file_id = 1;
        r.line = static_cast<uint64_t>(i);
        done.items.emplace_back(Key(i), r);
      }
      done.lazy = true;
    }
    state.ResumeTiming();
    const size_t n_claims = claims.claims.size();
    auto d = (*idx)->Submit(std::move(done));
    auto c = (*idx)->Write(std::move(claims));
    auto dr = d.get();
    if (!c.ok() || !dr.ok() || c->claims.size() != n_claims ||
        std::count(c->claims.begin(), c->claims.end(), wxa::index::ClaimResult::kClaimed) !=
            static_cast<std::ptrdiff_t>(n_claims)) {
      state.SkipWithError("write failed");
      break;
    }
    prev_start = next;
    next += kBatch;
    records += kBatch;
  }
  state.SetItemsProcessed(records);
  idx->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_IndexWriterCpu)
    ->Args({100000, 0})
    ->Args({100000, 1})
    ->Args({1000000, 0})
    ->Args({1000000, 1})
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);

// The plan stage's reads for one batch (2,048 records not yet in an index of
// range(0) items, 2.4 mailboxes each): range(1) = 0, GetItems + GetDeliveries
// (before 9f4e789); 1, GetItemsWithDeliveries. Both are checked to answer
// alike, and that nothing is found, before timing.
void BM_IndexPlanRead(benchmark::State& state) {
  const int64_t base = state.range(0);
  const bool combined = state.range(1) != 0;
  constexpr int64_t kBatch = 2048;
  std::string dir = FreshDir("planread");
  auto idx = Index::Open(dir);
  if (!idx.ok() || !Populate(**idx, base)) {
    state.SkipWithError("populate failed");
    return;
  }
  std::vector<wxa::core::ItemKey> items;
  std::vector<std::vector<std::string>> mailboxes(kBatch);
  std::vector<const std::vector<std::string>*> mailbox_ptrs;
  std::vector<DeliveryKey> keys;
  for (int64_t i = 0; i < kBatch; ++i) {
    const int64_t item = base + i;  // new items, as in a fresh import
    items.push_back(Key(item));
    const int n = 2 + static_cast<int>(i % 5 == 0) * 2;
    for (int m = 0; m < n; ++m) {
      mailboxes[i].push_back(fmt::format("user{}@corp.example.com", (item + m * 7) % 200));
      keys.push_back({1, mailboxes[i].back(), Key(item), 0});
    }
    mailbox_ptrs.push_back(&mailboxes[i]);
  }
  std::vector<std::optional<wxa::index::ItemRecord>> records, records2;
  std::vector<std::optional<wxa::index::DeliveryState>> states, states2;
  if (!(*idx)->GetItemsWithDeliveries(1, items, mailbox_ptrs, &records, &states).ok() ||
      !(*idx)->GetItems(items, &records2).ok() || !(*idx)->GetDeliveries(keys, &states2).ok() ||
      states != states2 || states.size() != keys.size() ||
      std::count(states.begin(), states.end(), std::nullopt) != static_cast<std::ptrdiff_t>(keys.size()) ||
      std::count(records.begin(), records.end(), std::nullopt) != kBatch) {
    state.SkipWithError("plan read check failed");
    return;
  }
  for (auto _ : state) {
    if (combined) {
      benchmark::DoNotOptimize((*idx)->GetItemsWithDeliveries(1, items, mailbox_ptrs, &records, &states));
    } else {
      benchmark::DoNotOptimize((*idx)->GetDeliveries(keys, &states));
      benchmark::DoNotOptimize((*idx)->GetItems(items, &records));
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  idx->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_IndexPlanRead)
    ->Args({100000, 0})
    ->Args({100000, 1})
    ->Args({1000000, 0})
    ->Args({1000000, 1})
    ->Unit(benchmark::kMicrosecond);

// Not a timing: index bytes per item (one item record + two deliveries).
void BM_IndexBytesPerItem(benchmark::State& state) {
  const int64_t n = state.range(0);
  double per_item = 0;
  for (auto _ : state) {
    std::string dir = FreshDir("size");
    {
      auto idx = Index::Open(dir);
      if (!idx.ok() || !Populate(**idx, n)) {
        state.SkipWithError("populate failed");
        return;
      }
      auto st = (*idx)->Stats();
      per_item = static_cast<double>(st->used_bytes) / static_cast<double>(n);
    }
    std::filesystem::remove_all(dir);
  }
  state.counters["index_bytes_per_item"] = per_item;
}
BENCHMARK(BM_IndexBytesPerItem)->Arg(200000)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
