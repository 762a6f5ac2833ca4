// The PST target: `pst:DIR` writes DIR/<mailbox>/<mailbox>-NNN.pst volumes
// for the Microsoft 365 PST Import service (issue #10), plus DIR/mapping.csv.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/sinks/sink.h"

namespace wxa::sinks {

struct PstSinkOptions {
  std::string folder = "WeChat Archiver";  // levels separated by '/'
  uint64_t volume_size = 20ull << 30;      // --pst-volume-size (Microsoft recommends <= 20 GB)
};

Result<std::unique_ptr<Sink>> MakePstSink(const Target& target, PstSinkOptions options);

}  // namespace wxa::sinks
