// Helpers of the sink-level tests (local_sink_test.cc, oom_test.cc): the
// outcomes a sink gives, and a small delivery to give it.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "engine/sinks/sink.h"

namespace wxa::sinks::sinktest {

// Every completion, in the order given; thread-safe.
struct Outcomes {
  std::mutex mu;
  std::vector<std::pair<uint64_t, Completion>> got;
  DoneFn Fn() {
    return [this](uint64_t id, Completion c) {
      std::lock_guard<std::mutex> l(mu);
      got.emplace_back(id, std::move(c));
    };
  }
  size_t size() {
    std::lock_guard<std::mutex> l(mu);
    return got.size();
  }
};

// Delivery `id` of item `item` (msgid m<item>) to `mailbox`: a 2 KB message.
inline Delivery MakeDelivery(uint64_t id, const std::string& mailbox, int item) {
  constexpr int64_t kT = 1603875600000;
  Delivery d;
  d.id = id;
  d.mailbox = mailbox;
  d.key = core::ItemKey::For("wecom", "default", fmt::format("m{}", item));
  d.msgtime_ms = kT + item * 1000;
  d.message_id = fmt::format("m{}@wxa", item);
  d.bytes = std::make_shared<const std::string>(
      fmt::format("Message-ID: <m{}@wxa>\r\nSubject: item {}\r\n\r\n{}\r\n", item, item, std::string(2000, 'x')));
  return d;
}

}  // namespace wxa::sinks::sinktest
