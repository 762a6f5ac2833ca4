// Allocation failure in the Maildir/EML publication: its own test binary,
// because it replaces the global operator new (the next N allocations of a
// thread fail) for everything linked with it.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "engine/index/index.h"
#include "engine/sinks/local_sinks.h"
#include "engine/sinks/sink.h"
#include "tests/engine/sink_test_util.h"
#include "tests/test_util.h"

namespace {
thread_local int fail_allocations = 0;  // the next this many operator new calls of this thread throw
// Other threads than the ones marked exempt: skip this many operator new
// calls, then fail the next one (-1: off). For a thread the test does not
// start itself (the index writer).
std::atomic<int> others_skip{-1};
std::atomic<bool> others_all{false};  // every operator new of those threads fails
thread_local bool exempt = false;
}  // namespace

void* operator new(std::size_t n) {
  if (fail_allocations > 0) {
    --fail_allocations;
    throw std::bad_alloc();
  }
  if (!exempt && others_skip.load(std::memory_order_relaxed) >= 0 && others_skip.fetch_sub(1) == 0) {
    throw std::bad_alloc();
  }
  if (!exempt && others_all.load(std::memory_order_relaxed)) throw std::bad_alloc();
  if (void* p = std::malloc(n != 0 ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace wxa::sinks {
namespace {

using sinktest::MakeDelivery;
using sinktest::Outcomes;

// Threads refused or allowed; the first syncfs throws std::bad_alloc and
// leaves `then_fail` more allocations of its thread failing.
class OomEnv : public core::Env {
 public:
  OomEnv(bool threads, int then_fail, bool thread_start_throws)
      : threads_(threads), then_fail_(then_fail), thread_start_throws_(thread_start_throws) {}
  std::atomic<int> syncs{0};
  Result<std::thread> NewThread(std::function<void()> fn) override {
    if (thread_start_throws_) throw std::bad_alloc();  // std::thread's own allocation
    if (!threads_) return Status::FromErrno("start", "a thread", EAGAIN);
    return core::Env::NewThread(std::move(fn));
  }
  Status SyncFilesystemFd(int fd, const std::string& path) override {
    if (then_fail_ >= 0 && syncs++ == 0) {
      fail_allocations = then_fail_;
      throw std::bad_alloc();
    }
    return core::Env::SyncFilesystemFd(fd, path);
  }

 private:
  bool threads_;
  int then_fail_;
  bool thread_start_throws_;
};

std::unique_ptr<Sink> OpenedSink(const test::TempDir& dir, core::Env* env) {
  auto target = ParseTarget(fmt::format("maildir:{}", dir / "out"));
  EXPECT_TRUE(target.ok());
  LocalSinkOptions o;
  o.env = env;
  auto sink = MakeLocalSink(*target, o);
  EXPECT_TRUE(sink.ok());
  if (!sink.ok() || !(*sink)->Open().ok()) return nullptr;
  return std::move(*sink);
}

// The publication throws std::bad_alloc and memory is still short when the
// handler makes its error: the handler must not throw (out of the publisher
// thread: std::terminate; inline: publishing_ left set, Close waiting
// forever). Every delivery is answered SinkBad, once; Close says why.
TEST(OutOfMemory, APublicationHandlerThatCannotAllocateStillAnswersEverything) {
  for (bool threads : {false, true}) {
    SCOPED_TRACE(threads ? "publisher thread" : "inline");
    test::TempDir dir;
    OomEnv env(threads, /*then_fail=*/1, false);
    auto sink = OpenedSink(dir, &env);
    ASSERT_NE(sink, nullptr);
    Outcomes out;
    for (uint64_t id = 0; id < 4; ++id) {
      sink->Submit(MakeDelivery(id, id % 2 ? "a@x.com" : "b@x.com", static_cast<int>(id)), out.Fn());
    }
    test::WithDeadline(std::chrono::seconds(60), "Barrier", [&] { return sink->Barrier(); });
    Status closed = test::WithDeadline(std::chrono::seconds(60), "Close", [&] { return sink->Close(); });
    EXPECT_FALSE(closed.ok());
    EXPECT_NE(closed.ToString().find("out of memory"), std::string::npos) << closed.ToString();
    EXPECT_EQ(env.syncs.load(), 1) << "the failing sync was not reached";
    std::lock_guard<std::mutex> l(out.mu);
    std::set<uint64_t> ids;
    for (const auto& [id, c] : out.got) {
      ids.insert(id);
      EXPECT_EQ(c.kind, Completion::Kind::kSinkBad) << id;
    }
    EXPECT_EQ(out.got.size(), 4u);
    EXPECT_EQ(ids.size(), 4u) << "a delivery answered twice";
  }
}

// Starting the publisher thread throws (std::bad_alloc out of std::thread,
// which Env::NewThread does not turn into a status): the batch is published
// inline, as when the thread is refused, and delivered.
TEST(OutOfMemory, APublisherThreadThatCannotStartPublishesInline) {
  test::TempDir dir;
  OomEnv env(true, /*then_fail=*/-1, /*thread_start_throws=*/true);
  auto sink = OpenedSink(dir, &env);
  ASSERT_NE(sink, nullptr);
  Outcomes out;
  for (uint64_t id = 0; id < 4; ++id) sink->Submit(MakeDelivery(id, "a@x.com", static_cast<int>(id)), out.Fn());
  Status barrier = test::WithDeadline(std::chrono::seconds(60), "Barrier", [&]() -> Status {
    try {
      return sink->Barrier();
    } catch (const std::bad_alloc&) {
      return Status::Aborted("Barrier threw std::bad_alloc");
    }
  });
  EXPECT_TRUE(barrier.ok()) << barrier.ToString();
  Status closed = test::WithDeadline(std::chrono::seconds(60), "Close", [&] { return sink->Close(); });
  EXPECT_TRUE(closed.ok()) << closed.ToString();
  std::lock_guard<std::mutex> l(out.mu);
  ASSERT_EQ(out.got.size(), 4u);
  for (const auto& [id, c] : out.got) EXPECT_EQ(c.kind, Completion::Kind::kDone) << id;
}

}  // namespace
}  // namespace wxa::sinks

namespace wxa::index {
namespace {

core::ItemKey Key(int i) { return core::ItemKey::For("wecom", "c", fmt::format("msg{}", i)); }

// The index writer runs out of memory at each of its allocations in turn
// (the k-th operator new of a commit of claims, done records and item
// records). Before, the exception left the writer thread: std::terminate.
// Now that write, and every later one, answers "out of memory"; nothing
// hangs; and the index on disk is the last good commit or this one, with
// counters that match its records (an answer may say failed for a commit
// that was made: its records are then there, as after a crash).
TEST(OutOfMemory, TheIndexWriterAnswersEveryWriteAndKeepsTheIndexWhole) {
  exempt = true;  // this thread's own allocations never fail
  bool reached_the_end = false;
  int failed_writes = 0;
  for (int k = 0; k < 400 && !reached_the_end; ++k) {
    test::TempDir dir;
    {
      auto idx = Index::Open(dir.path());
      ASSERT_TRUE(idx.ok()) << idx.status().ToString();
      WriteBatch first;
      first.claims = {{1, "a@x.com", Key(1), 1000}, {1, "b@x.com", Key(1), 1000}};
      ASSERT_TRUE((*idx)->Write(first).ok());
      WriteBatch second;
      second.claims = {{1, "c@x.com", Key(2), 2000}, {1, "a@x.com", Key(3), 3000, true}};
      second.done = {{first.claims[0], "ref", {}}};
      second.failed = {{first.claims[1], {}, "NO [OVERQUOTA]"}};
      ItemRecord ir;
      ir.state = ItemState::kDone;
      second.items.emplace_back(Key(1), ir);
      others_skip = k;
      auto r = test::WithDeadline(std::chrono::seconds(60), "a write whose writer runs out of memory",
                                  [&] {
                                    exempt = true;  // WithDeadline's own thread
                                    return (*idx)->Write(second);
                                  });
      const bool consumed = others_skip.load() < 0;
      others_skip = -1;
      if (!consumed) {
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        reached_the_end = true;  // the commit needs fewer allocations than k
        continue;
      }
      if (!r.ok()) {  // (or the failed allocation was one the writer could do without)
        ++failed_writes;
        EXPECT_NE(r.status().message().find("out of memory"), std::string::npos) << r.status().ToString();
        // Every later write gets the same answer.
        WriteBatch later;
        later.claims = {{1, "d@x.com", Key(4), 4000}};
        auto again = test::WithDeadline(std::chrono::seconds(60), "a write after the writer stopped", [&] {
          exempt = true;
          return (*idx)->Write(later);
        });
        ASSERT_FALSE(again.ok());
        EXPECT_NE(again.status().message().find("out of memory"), std::string::npos);
      }
    }
    // Reopened: whole, and writable again.
    auto idx = Index::Open(dir.path());
    ASSERT_TRUE(idx.ok()) << idx.status().ToString();
    auto st = (*idx)->Stats();
    ASSERT_TRUE(st.ok());
    for (int i = 1; i <= 3; ++i) EXPECT_EQ(st->counters.deliveries[i], st->deliveries_by_state[i]) << k;
    for (int i = 1; i <= 4; ++i) EXPECT_EQ(st->counters.items[i], st->items_by_state[i]) << k;
    WriteBatch next;
    next.claims = {{1, "e@x.com", Key(5), 5000}};
    auto r = (*idx)->Write(next);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->claims[0], ClaimResult::kClaimed);
  }
  EXPECT_TRUE(reached_the_end);
  EXPECT_GT(failed_writes, 3);
}

// Memory that stays short: every allocation of the writer fails. Each write
// is still answered (not taken into a group, which would fail again and
// again), and the index closes.
TEST(OutOfMemory, AnIndexWriterThatCanNeverAllocateStillAnswersAndCloses) {
  exempt = true;
  test::TempDir dir;
  auto idx = Index::Open(dir.path());
  ASSERT_TRUE(idx.ok()) << idx.status().ToString();
  WriteBatch first;
  first.claims = {{1, "a@x.com", Key(1), 1000}};
  ASSERT_TRUE((*idx)->Write(first).ok());
  others_all = true;
  for (int i = 0; i < 3; ++i) {
    WriteBatch w;
    w.claims = {{1, "b@x.com", Key(2 + i), 2000}};
    auto r = test::WithDeadline(std::chrono::seconds(60), "a write while the writer cannot allocate", [&] {
      exempt = true;
      return (*idx)->Write(w);
    });
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("out of memory"), std::string::npos) << r.status().ToString();
  }
  test::WithDeadline(std::chrono::seconds(60), "closing the index", [&] {
    exempt = true;
    idx->reset();
    return 0;
  });
  others_all = false;
  auto reopened = Index::Open(dir.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  EXPECT_EQ((*reopened)->PendingDeliveries()->size(), 1u);
}

}  // namespace
}  // namespace wxa::index
