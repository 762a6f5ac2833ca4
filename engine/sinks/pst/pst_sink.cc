#include "engine/sinks/pst/pst_sink.h"

namespace wxa::sinks {

// Placeholder until the PST sink lands (issue #10).
Result<std::unique_ptr<Sink>> MakePstSink(const Target&, PstSinkOptions) {
  return Status::Unsupported("pst targets are not available yet");
}

}  // namespace wxa::sinks
