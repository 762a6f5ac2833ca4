// Unicode PST writer ([MS-PST], wVer 23, no encryption) for archived chats.
//
// One Writer builds one .pst file: a new store shaped like Outlook's own empty
// store (root folder, "Top of Outlook data file", Deleted Items, Search Root,
// IPM_COMMON_VIEWS, the SPAM search folder, template tables and internal
// nodes) plus one mail folder, or a nested chain "A/B", under the IPM
// subtree; every appended message goes into the last folder of that chain.
//
// Streaming: Append() writes the message's blocks at once; only fixed-size
// index entries stay in memory. Close() writes the folder tables, the node and
// block B-trees, the allocation maps and the header; before Close() the file
// is not a valid PST. Memory bound (measured in tests/pst, see README):
//   24 B per block (BBT entry) + 24 B per node (NBT entry), i.e. about
//   100-130 B per small text message (a message is 1 node and 2-4 blocks),
//   + ~2 B per message for the contents table's row-index and row-matrix
//   block lists, + a constant ~4.1 MB write buffer and three 8 KB heap blocks.
// Attachments given by path are streamed from disk in 8 KB chunks.
//
// Deterministic: the same messages and options give the same bytes (no clock,
// no randomness; GUIDs derive from WriterOptions::store_uid).
// Not thread-safe; one Writer per file.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "formats/core/status.h"

namespace wxa::pst {

struct Recipient {
  std::string name, address;  // UTF-8
  int type = 1;               // 1 To, 2 Cc, 3 Bcc
};

struct Attachment {
  std::string filename, mime_type, content_id;  // UTF-8
  std::string data;  // the bytes, when held in memory
  std::string path;  // or a file to stream from (when data is empty and path is set)
  uint64_t size = 0;  // with path: expected size (0 = take the file's size)
};

struct Message {
  std::string message_class = "IPM.Note";
  std::string subject, body_plain, body_html, transport_headers, internet_message_id, in_reply_to,
      references, sender_name, sender_address, display_to, display_cc;  // UTF-8
  int64_t sent_time_ms = 0, received_time_ms = 0;  // Unix ms, UTC; 0 = absent
  bool read = true;
  std::vector<Recipient> recipients;
  std::vector<Attachment> attachments;
};

struct WriterOptions {
  std::string display_name;                 // store name (PidTagDisplayName); empty: "WeChat Archive"
  std::string folder = "WeChat Archiver";   // "A/B" makes B inside A
  std::array<uint8_t, 16> store_uid{};      // record key; all-zero: derived from the names
  bool sync_on_close = true;                // fsync in Close()
  // Bytes gathered before a write (the main constant term of the memory
  // bound; a sink with many volumes open at once uses less).
  size_t write_buffer = 4u << 20;
};

// A cheap upper estimate of the bytes Append(m) adds to the file, for volume
// caps (attachments by path count `size`, or the file's size when 0).
uint64_t EstimateMessageBytes(const Message& m);

class Writer {
 public:
  // Creates `path`, which must not exist.
  static Result<std::unique_ptr<Writer>> Create(const std::string& path, WriterOptions o);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Appends one message. The message is durable only after Close(). After a
  // failed Append the writer refuses further calls (the file is abandoned).
  Status Append(const Message& m);
  uint64_t bytes_written() const;  // file size so far (for volume caps)
  // An upper bound of the bytes Close() adds: the NBT and BBT pages, the folder's tables and
  // the store's template nodes, their allocation maps. bytes_written() + this bounds the volume.
  uint64_t close_bytes_estimate() const;
  uint64_t messages() const { return messages_; }
  // Bytes of heap the writer holds for its indexes (the memory bound's main term).
  uint64_t index_memory_bytes() const;
  // Bytes of heap the folder's contents table holds while the volume is open
  // (its heap blocks in memory, current row block, row index leaf).
  uint64_t table_memory_bytes() const;
  // Writes out and frees the write buffer (WriterOptions::write_buffer) and
  // the per-message scratch; the next Append allocates them again. The
  // volume's bytes are the same.
  Status ReleaseBuffer();
  size_t buffer_bytes() const;  // heap held by the write buffer now
  // Tables, B-trees, maps, header; fsync when sync_on_close. Call once.
  Status Close();
  // The same, syncing or not whatever sync_on_close says (a caller that
  // closes many volumes and makes them durable with one syncfs).
  Status Close(bool sync);

 private:
  struct Impl;
  explicit Writer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  uint64_t messages_ = 0;
};

}  // namespace wxa::pst
