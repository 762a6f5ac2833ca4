// One place that turns a parsed target into its sink, for the CLI (import
// and verify) and tools.
#pragma once

#include <memory>

#include "engine/sinks/graph/graph_sink.h"
#include "engine/sinks/imap/imap_sink.h"
#include "engine/sinks/local_sinks.h"
#include "engine/sinks/pst/pst_sink.h"
#include "engine/sinks/sink.h"

namespace wxa::sinks {

struct SinkOptions {
  LocalSinkOptions local;  // maildir:, eml:, null:
  ImapOptions imap;        // imap://, imaps://
  PstSinkOptions pst;      // pst:
  GraphOptions graph;      // graph:
};

Result<std::unique_ptr<Sink>> MakeSink(const Target& target, const SinkOptions& options);

}  // namespace wxa::sinks
