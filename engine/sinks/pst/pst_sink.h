// The PST target: `pst:DIR` writes DIR/<mailbox>/<mailbox>-NNN.pst volumes
// for the Microsoft 365 PST Import service (issue #10), plus DIR/mapping.csv.
//
// Layout of DIR:
//   .wxarchiver-target.lock         one run at a time (flock)
//   <mailbox dir>/.mailbox          the mailbox address (mapping.csv's Mailbox column)
//   <mailbox dir>/<base>-001.pst    finished volumes (numbering goes on across runs)
//   <mailbox dir>/<base>-002.pst.partial   the volume being written
//   mapping.csv                     every finished volume, rewritten atomically at Close()
// <mailbox dir> is maildir::MailboxDirName(address) (lowercase, escaped, long
// names shortened with a hash); <base> is the same, cut to 200 bytes.
//
// Durability and the index: Submit() appends the item (Delivery::pst_message,
// built once per item by the import; the sink never parses MIME) to the
// mailbox's open volume and holds its completion. A volume is finished when
// the next item would take it past `volume_size`, when more than
// `max_pending` completions are held across all volumes (every open volume
// is finished then: the engine records batches in source order and keeps
// each batch until all its deliveries are answered, so this bounds its
// memory), and at Close(). One volume (past `volume_size`):
// pst::Writer::Close (tables, B-trees, fsync), rename of `.partial` to
// `.pst`, fsync of the directory. All open volumes (the other two cases):
// each closed without a sync, one syncfs of the target's file system, the
// renames, a second syncfs. Only then kDone with remote_ref = the volume's
// file name. A crash loses the open
// `.partial` files, which the next Open() deletes: their items were never
// recorded done and are written again (Probe says absent for them).
//
// Memory: the sink keeps no item bytes (the message is released once
// appended); per open volume (one per mailbox written to) the writer's
// index (~92 B per small message, see formats/pst/README.md) plus a
// `write_buffer` (256 KB; only `max_buffered_volumes` keep one) and up to
// about 28 KB of table blocks; per held completion ~56 B here, and the engine's record of the batch (a few hundred bytes per
// record) until the completion arrives. Probe() and Inventory() read
// finished volumes with pst::Reader.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <atomic>

#include "engine/sinks/sink.h"
#include "formats/core/file.h"
#include "formats/pst/pst_writer.h"

namespace wxa::mime {
struct ComposedItem;
}

namespace wxa::sinks {

// What a PST sink measured of itself, for tests and benchmarks (the
// caller owns it; it must outlive the sink).
struct PstSinkStats {
  std::atomic<size_t> buffers_peak{0};      // volumes holding a write buffer at once, at most
  std::atomic<uint64_t> buffer_releases{0};  // buffers given up past max_buffered_volumes
  // Heap the open volumes' writers held for their indexes and contents
  // tables at once (as accounted against max_open_volume_bytes), at most.
  std::atomic<uint64_t> open_volume_bytes_peak{0};
  std::atomic<uint64_t> early_finishes{0};  // every open volume finished before its size
};

struct PstSinkOptions {
  std::string folder = "WeChat Archiver";  // levels separated by '/'
  uint64_t volume_size = 20ull << 30;      // --pst-volume-size (Microsoft recommends <= 20 GB)
  // Completions held (items appended to volumes not finished yet) before
  // every open volume is finished early. Bounds the engine's memory for
  // answers it waits for (a few hundred bytes per held item).
  size_t max_pending = 200000;
  // Heap the open volumes' writers may hold for their block and node lists
  // and their contents tables (pst::Writer::index_memory_bytes +
  // table_memory_bytes) before every open volume is finished early. A run
  // has a volume open per mailbox it writes to, each holding about a heap
  // block and a row block (up to about 28 KB) plus about 92 bytes per message: with
  // tens of thousands of mailboxes this, not max_pending, bounds the sink.
  uint64_t max_open_volume_bytes = 128ull << 20;
  // Write buffer per open volume (pst::WriterOptions::write_buffer): a run
  // has one volume open per mailbox it writes to.
  size_t write_buffer = 256u << 10;
  // Volumes that keep a write buffer (and their per-message scratch) at
  // once: past this many, the volume that got one longest ago writes its
  // buffer out and frees both (allocated again at its next item). Measured: 200,000 records
  // into 5,311 mailboxes peaked at 1.87 GB RSS with a buffer per volume; into
  // 5,255 mailboxes, 682 MB with 256 buffers and 648 MB with 64, same wall time.
  size_t max_buffered_volumes = 64;
  core::Env* env = nullptr;  // null = Env::Default(); must outlive the sink
  PstSinkStats* stats = nullptr;  // optional
};

Result<std::unique_ptr<Sink>> MakePstSink(const Target& target, PstSinkOptions options);

// The composed item as a PST message: subject, sender, recipients, bodies,
// threading ids, sent/received = the item's time, read, the rendered header
// block as transport headers (so X-WeChat-* facts survive) and every
// attachment's bytes (copied: the composed item points into the input item).
// `rendered` is the RFC 5322 rendering of the same item.
std::shared_ptr<const pst::Message> PstMessageFor(const mime::ComposedItem& c, std::string_view rendered,
                                                  int64_t msgtime_ms);

// The file name stem of a mailbox's volumes ("<base>-NNN.pst").
std::string PstVolumeBase(std::string_view address);
inline constexpr std::string_view kPstMappingFile = "mapping.csv";
inline constexpr std::string_view kPstMailboxFile = ".mailbox";

}  // namespace wxa::sinks
