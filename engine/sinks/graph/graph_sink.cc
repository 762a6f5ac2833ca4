#include "engine/sinks/graph/graph_sink.h"

namespace wxa::sinks {

// Placeholder until the Graph sink lands (issue #11).
Result<std::unique_ptr<Sink>> MakeGraphSink(const Target&, GraphOptions) {
  return Status::Unsupported("graph targets are not available yet");
}

}  // namespace wxa::sinks
