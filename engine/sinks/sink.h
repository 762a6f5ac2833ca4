// The sink contract every target implements (ARCHITECTURE section 8), in the
// spirit of isync's driver interface: one asynchronous interface for local
// trees, mail servers, PST volumes and Microsoft Graph.
//
//   Submit(delivery, done)   hands over one (item, mailbox) delivery; `done` is
//                            called exactly once, later or before Submit
//                            returns, from any thread, with the outcome:
//     kDone        durable in the mailbox: the engine records it done with
//                  `remote_ref` (a file name, IMAP "UIDVALIDITY:UID", a
//                  Graph id, a PST volume);
//     kItemBad     this item can never go to this mailbox: reported, the run
//                  continues;
//     kMailboxBad  this mailbox cannot be written (auth, missing folder,
//                  permissions, a symlink in the tree): the engine stops
//                  submitting to it, reports, continues with the others;
//     kSinkBad     the target cannot go on (disk full, I/O error, server
//                  gone for good): the run stops cleanly;
//     kTransient   try again after `retry_after` (throttling, a dropped
//                  connection before the message was sent); with `in_doubt`
//                  the message may have arrived: Probe() before resending.
//   Barrier()     makes what was submitted so far durable as one batch and
//                  completes it (local trees: one file-system commit per batch;
//                  remote targets: flushes partial batches). A sink may hold
//                  completions until a Barrier or Close.
//   Probe(...)    settles an in-doubt delivery after a crash: is the item in
//                  the mailbox? (local: the file; IMAP: UID SEARCH HEADER
//                  Message-ID; Graph: $filter on internetMessageId).
//   CheckMailboxes(...)  which candidate mailboxes the target knows, where it
//                  can tell (IMAP login, Graph user lookup).
//   Close()       completes everything outstanding, then releases the target.
//
// All memory passed in belongs to the caller unless stated otherwise; the
// rendered bytes are shared (std::shared_ptr) and released by the sink as
// soon as it no longer needs them.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/item.h"
#include "formats/core/status.h"

namespace wxa::pst {
struct Message;
}

namespace wxa::sinks {

// A target as given on the command line, parsed once:
//   maildir:DIR  eml:DIR  pst:DIR  imap://HOST[:PORT]  imaps://HOST[:PORT]  graph:  null:
struct Target {
  enum class Kind : uint8_t { kMaildir, kEml, kPst, kImap, kImaps, kGraph, kNull };
  Kind kind = Kind::kMaildir;
  std::string spec;  // as given
  std::string dir;   // local kinds: the directory
  std::string host;  // imap(s)
  uint16_t port = 0; // imap(s): 143 / 993 unless given

  bool local() const { return kind == Kind::kMaildir || kind == Kind::kEml || kind == Kind::kPst; }
  bool remote() const { return kind == Kind::kImap || kind == Kind::kImaps || kind == Kind::kGraph; }
  // The identity of the target in the index: local directories resolved to
  // absolute paths, hosts lowercased with their port.
  std::string Canonical() const;
};
const char* TargetKindName(Target::Kind k);
Result<Target> ParseTarget(std::string_view spec);

// What a sink can do, so the engine need not know its kind.
struct Capabilities {
  bool remote = false;               // network round trips: --index required, retries possible
  bool holds_until_barrier = false;  // completions wait for Barrier()
  bool holds_until_close = false;    // completions may wait for Close() (PST volumes)
  bool checks_mailboxes = false;     // CheckMailboxes() says something
  bool wants_pst_message = false;    // Delivery::pst_message is built for it (PST volumes)
};

// One (item, mailbox) delivery.
struct Delivery {
  uint64_t id = 0;                       // the engine's token, echoed in callbacks
  std::string mailbox;                   // lowercase address
  core::ItemKey key;
  int64_t msgtime_ms = 0;                // INTERNALDATE, file names, mtimes
  std::string message_id;                // without angle brackets (probes search it)
  std::shared_ptr<const std::string> bytes;  // the rendered message, CRLF line ends
  // Capabilities::wants_pst_message only: the same item as PST properties,
  // built once per item from the composed message (shared across mailboxes;
  // absent on retries, which such sinks never ask for).
  std::shared_ptr<const pst::Message> pst_message;
};

struct Completion {
  enum class Kind : uint8_t { kDone, kItemBad, kMailboxBad, kSinkBad, kTransient };
  Kind kind = Kind::kDone;
  std::string remote_ref;                       // kDone
  Status error;                                 // anything but kDone: what happened
  std::chrono::milliseconds retry_after{0};     // kTransient
  bool in_doubt = false;                        // kTransient: it may have arrived
  bool already_there = false;                   // kDone: found in place, not written now

  static Completion Done(std::string ref, bool already_there = false) {
    Completion c;
    c.remote_ref = std::move(ref);
    c.already_there = already_there;
    return c;
  }
  static Completion Failure(Kind k, Status s) {
    Completion c;
    c.kind = k;
    c.error = std::move(s);
    return c;
  }
  static Completion ItemBad(Status s) { return Failure(Kind::kItemBad, std::move(s)); }
  static Completion MailboxBad(Status s) { return Failure(Kind::kMailboxBad, std::move(s)); }
  static Completion SinkBad(Status s) { return Failure(Kind::kSinkBad, std::move(s)); }
  static Completion Transient(Status s, std::chrono::milliseconds after, bool in_doubt) {
    Completion c = Failure(Kind::kTransient, std::move(s));
    c.retry_after = after;
    c.in_doubt = in_doubt;
    return c;
  }
};
const char* CompletionKindName(Completion::Kind k);

using DoneFn = std::function<void(uint64_t id, Completion c)>;

// What Probe() found.
struct ProbeResult {
  enum class Kind : uint8_t { kPresent, kAbsent, kFailed } kind = Kind::kAbsent;
  std::string remote_ref;  // kPresent
  Status error;            // kFailed (the delivery stays in doubt)
  bool mailbox_bad = false;  // kFailed because the mailbox cannot be opened
};
using ProbeFn = std::function<void(uint64_t id, ProbeResult r)>;

// Inventory() result: the Message-IDs (without angle brackets) of every
// message in the mailbox's archive folder, one entry per message (so a
// duplicate shows twice).
using InventoryFn = std::function<void(Result<std::vector<std::string>>)>;

// CheckMailboxes() verdicts.
enum class MailboxVerdict : uint8_t { kKnown, kUnknown, kUnknowable };
using CheckFn = std::function<void(std::vector<std::pair<std::string, MailboxVerdict>>)>;

class Sink {
 public:
  virtual ~Sink() = default;
  virtual const char* kind() const = 0;
  virtual Capabilities capabilities() const = 0;

  // Before anything else: prepare the target (create the root, take its lock,
  // connect). An error means the run cannot start.
  virtual Status Open() = 0;
  // Which of `candidates` the target knows. Default: it cannot tell.
  virtual void CheckMailboxes(const std::vector<std::string>& candidates, CheckFn done);
  // See the top of this file. Thread-safe.
  virtual void Submit(Delivery d, DoneFn done) = 0;
  // Thread-safe. A failure here is the sink's (kSinkBad for what it held).
  virtual Status Barrier() = 0;
  // Thread-safe. Default: kAbsent (a target that keeps nothing).
  virtual void Probe(const Delivery& d, ProbeFn done);
  // What the folder holds, for `wxarchiver verify`. Default: kUnsupported.
  virtual void Inventory(const std::string& mailbox, InventoryFn done);
  // Completes everything outstanding (or fails it with kTransient when the
  // run is stopping), then releases the target.
  virtual Status Close() = 0;
};

// The Message-ID (without angle brackets) in a message's header, or nullopt.
// Accepts LF or CRLF line ends and a folded value.
std::optional<std::string> MessageIdOfHeader(std::string_view message);

// The failure class of an OS error met while writing a mailbox's files:
// what is the mailbox's own (permissions, names, symlinks, a missing
// directory, a mount inside it: EXDEV) versus what stops every mailbox (no
// space, I/O errors, a read-only file system).
Completion::Kind ClassifyLocalError(const Status& s);

}  // namespace wxa::sinks
