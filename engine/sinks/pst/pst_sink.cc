#include "engine/sinks/pst/pst_sink.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "engine/sinks/local_sinks.h"
#include "formats/core/hash.h"
#include "formats/maildir/maildir_writer.h"
#include "formats/mime/compose.h"
#include "formats/pst/pst_format.h"
#include "formats/pst/pst_reader.h"

namespace wxa::sinks {

std::shared_ptr<const pst::Message> PstMessageFor(const mime::ComposedItem& c, std::string_view rendered,
                                                  int64_t msgtime_ms) {
  auto m = std::make_shared<pst::Message>();
  m->subject = c.subject;
  // Outlook's bodies have CRLF line ends.
  m->body_plain.reserve(c.plain.size() + c.plain.size() / 32);
  for (char ch : c.plain) {
    if (ch == '\n') m->body_plain.push_back('\r');
    m->body_plain.push_back(ch);
  }
  m->body_html = c.html;
  // The rendered header block (up to and including the CRLF before the
  // blank line): every X-WeChat-* fact as the mail carries it.
  size_t end = rendered.find("\r\n\r\n");
  m->transport_headers = std::string(end == std::string_view::npos ? rendered : rendered.substr(0, end + 2));
  m->internet_message_id = "<" + c.message_id + ">";
  if (!c.in_reply_to.empty()) m->in_reply_to = "<" + c.in_reply_to + ">";
  for (const auto& r : c.references) {
    if (!m->references.empty()) m->references += ' ';
    m->references += "<" + r + ">";
  }
  m->sender_name = c.from.name.empty() ? c.from.address : c.from.name;
  m->sender_address = c.from.address;
  // The item's own time to the millisecond when the composed date is it.
  const int64_t t = msgtime_ms / 1000 == c.date_s ? msgtime_ms : c.date_s * 1000;
  m->sent_time_ms = t;
  m->received_time_ms = t;
  m->read = true;
  for (const auto& p : c.to) {
    m->recipients.push_back({p.name.empty() ? p.address : p.name, p.address, 1});
    if (!m->display_to.empty()) m->display_to += "; ";
    m->display_to += p.name.empty() ? p.address : p.name;
  }
  m->attachments.reserve(c.attachments.size());
  for (const auto& a : c.attachments) {
    pst::Attachment pa;
    pa.filename = a.file_name;
    pa.mime_type = a.content_type;
    pa.data.assign(a.data != nullptr ? a.data : "", a.size);
    pa.size = a.size;
    m->attachments.push_back(std::move(pa));
  }
  return m;
}

std::string PstVolumeBase(std::string_view address) {
  std::string d = maildir::MailboxDirName(address);
  // "-NNN.pst.partial" and a longer number must still fit in 255 bytes.
  constexpr size_t kMax = 200;
  if (d.size() <= kMax) return d;
  core::Sha256Digest h = core::Sha256(address);
  return d.substr(0, kMax - 17) + "~" + core::ToHex(h.data(), 8);
}

namespace {

constexpr std::string_view kPartial = ".partial";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The volume number of "<base>-NNN.pst", or 0.
uint32_t VolumeNumber(std::string_view name, std::string_view base) {
  if (name.size() <= base.size() + 5 || name.substr(0, base.size()) != base || name[base.size()] != '-' ||
      !EndsWith(name, ".pst")) {
    return 0;
  }
  std::string_view digits = name.substr(base.size() + 1, name.size() - base.size() - 5);
  if (digits.empty() || digits.size() > 9) return 0;
  uint32_t n = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return 0;
    n = n * 10 + static_cast<uint32_t>(ch - '0');
  }
  return n;
}

// Finished volumes of a mailbox directory, in number order.
Result<std::vector<std::string>> FinishedVolumes(core::Env* env, int dir_fd, const std::string& path,
                                                 const std::string& base) {
  WXA_ASSIGN_OR_RETURN(auto names, env->ListDirFd(dir_fd, path));
  std::vector<std::pair<uint32_t, std::string>> v;
  for (auto& n : names) {
    if (uint32_t no = VolumeNumber(n, base); no != 0) v.emplace_back(no, std::move(n));
  }
  std::sort(v.begin(), v.end());
  std::vector<std::string> out;
  for (auto& [no, n] : v) out.push_back(std::move(n));
  return out;
}

std::string StripAngles(std::string s) {
  if (s.size() >= 2 && s.front() == '<' && s.back() == '>') return s.substr(1, s.size() - 2);
  return s;
}

// Message-IDs of every message in the archive folder of a finished volume.
Status ReadVolumeIds(const std::string& path, const std::string& folder, std::vector<std::string>* out) {
  WXA_ASSIGN_OR_RETURN(auto r, pst::Reader::Open(path));
  WXA_ASSIGN_OR_RETURN(auto folders, r->Folders());
  bool found = false;
  for (const auto& f : folders) {
    if (f.path != folder) continue;
    found = true;
    WXA_ASSIGN_OR_RETURN(auto nids, r->MessageNids(f.nid));
    for (uint32_t nid : nids) {
      WXA_ASSIGN_OR_RETURN(auto props, r->ReadProperties(nid));
      auto it = props.find(0x1035);  // PidTagInternetMessageId
      if (it == props.end()) {
        out->push_back(fmt::format("(no Message-ID: {} node {})", path, nid));
      } else {
        out->push_back(StripAngles(pst::fmt::Utf16ToUtf8(it->second.bytes)));
      }
    }
  }
  if (!found) return Status::Corruption(fmt::format("{}: no folder '{}'", path, folder));
  return Status::Ok();
}

std::string CsvField(std::string_view v) {
  if (v.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(v);
  std::string o = "\"";
  for (char ch : v) {
    if (ch == '"') o += '"';
    o += ch;
  }
  return o + "\"";
}

class PstSink final : public Sink {
 public:
  PstSink(Target t, PstSinkOptions o)
      : env_(o.env != nullptr ? o.env : core::Env::Default()), target_(std::move(t)), o_(std::move(o)) {}

  ~PstSink() override {
    // Close() is the way out; volumes still open here are abandoned (their
    // completions were never delivered, so nothing claims them).
    for (auto& [mb, box] : boxes_) {
      if (box->writer) {
        box->writer.reset();
        (void)env_->UnlinkAt(box->dir_fd.get(), box->partial, box->dir_path + "/" + box->partial);
      }
    }
  }

  const char* kind() const override { return "pst"; }
  Capabilities capabilities() const override {
    Capabilities c;
    c.holds_until_close = true;
    c.wants_pst_message = true;
    return c;
  }

  Status Open() override {
    WXA_RETURN_IF_ERROR(env_->CreateDirs(target_.dir));
    root_fd_ = core::UniqueFd(::open(target_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd_.valid()) return Status::FromErrno("open", target_.dir, errno);
    WXA_ASSIGN_OR_RETURN(lock_fd_, TakeTargetLock(root_fd_.get(), target_.dir));
    // Volumes a stopped run was writing: never finished, so none of their
    // items was recorded done; this run writes them again.
    WXA_ASSIGN_OR_RETURN(auto names, env_->ListDirFd(root_fd_.get(), target_.dir));
    for (const auto& n : names) {
      struct stat st {};
      const std::string path = core::JoinPath(target_.dir, n);
      if (!env_->StatAt(root_fd_.get(), n, &st, path).ok() || !S_ISDIR(st.st_mode)) continue;
      auto dir = env_->OpenDirAt(root_fd_.get(), n, false, path);
      if (!dir.ok()) continue;  // a symlink or unreadable: not ours
      auto files = env_->ListDirFd(dir->get(), path);
      if (!files.ok()) continue;
      bool removed = false;
      for (const auto& f : *files) {
        if (!EndsWith(f, std::string(".pst") + std::string(kPartial))) continue;
        WXA_RETURN_IF_ERROR(env_->UnlinkAt(dir->get(), f, core::JoinPath(path, f)));
        removed = true;
      }
      if (removed) WXA_RETURN_IF_ERROR(env_->SyncDirFd(dir->get(), path));
    }
    (void)env_->UnlinkAt(root_fd_.get(), std::string(kPstMappingFile) + ".tmp",
                         core::JoinPath(target_.dir, std::string(kPstMappingFile) + ".tmp"));
    return Status::Ok();
  }

  void Submit(Delivery d, DoneFn done) override {
    if (!d.pst_message) {
      done(d.id, Completion::ItemBad(Status::InvalidArgument("pst: the delivery carries no PST message")));
      return;
    }
    std::shared_ptr<Box> box = GetBox(d.mailbox);
    std::vector<Held> finished;
    std::optional<Completion> now;
    bool appended = false;
    {
      std::lock_guard<std::mutex> bl(box->mu);
      if (!box->bad.ok()) {
        now = Completion::MailboxBad(box->bad);
      } else if (Status s = Prepare(*box); !s.ok()) {
        now = Failure(*box, s);
      } else {
        const uint64_t est = pst::EstimateMessageBytes(*d.pst_message);
        Status vs;
        if (box->writer && box->writer->messages() > 0 && box->writer->bytes_written() + box->writer->close_bytes_estimate() + est >
                                                               o_.volume_size) {
          vs = FinishVolume(*box, &finished);
        }
        if (vs.ok() && !box->writer) vs = StartVolume(*box);
        if (vs.ok()) vs = box->writer->Append(*d.pst_message);
        Account(*box);
        if (vs.ok()) {
          box->held.push_back({d.id, std::move(done), nullptr});
          ++held_total_;
          appended = true;
        } else {
          // The open volume is lost (a failed writer refuses further calls):
          // what it held fails with this item; a rerun writes them again.
          Completion c = Failure(*box, vs.WithContext(fmt::format("mailbox {}", d.mailbox)));
          AbandonVolume(*box, c, &finished);
          now = c;
        }
      }
    }
    d.pst_message.reset();  // nothing of the item stays here
    if (appended) NoteBuffered(box);
    if (now) done(d.id, *now);
    Deliver(finished);
    if (held_total_.load() > o_.max_pending || open_bytes_.load() > o_.max_open_volume_bytes) {
      (void)FinishAll(false);
    }
  }

  // Completions wait for a finished volume, never for a barrier.
  Status Barrier() override { return fatal(); }

  void Probe(const Delivery& d, ProbeFn done) override {
    std::shared_ptr<Box> box = GetBox(d.mailbox);
    ProbeResult r;
    {
      std::lock_guard<std::mutex> bl(box->mu);
      // After a failed sync (the sink's or this box's) the volumes are not
      // known to be on disk: what they hold stays in doubt for the next
      // run, never adopted from the page cache by this one.
      Status stopped = fatal();
      if (stopped.ok()) stopped = box->bad;
      Status s = stopped.ok() ? LoadIds(*box) : stopped;
      if (stopped.ok() && s.IsNotFound()) {
        r.kind = ProbeResult::Kind::kAbsent;
      } else if (!s.ok()) {
        r.kind = ProbeResult::Kind::kFailed;
        r.error = s;
        r.mailbox_bad = ClassifyLocalError(s) == Completion::Kind::kMailboxBad;
      } else if (auto it = box->ids.find(d.message_id); it != box->ids.end()) {
        r.kind = ProbeResult::Kind::kPresent;
        r.remote_ref = it->second;
      }
    }
    done(d.id, std::move(r));
  }

  void Inventory(const std::string& mailbox, InventoryFn done) override {
    std::shared_ptr<Box> box = GetBox(mailbox);
    std::vector<std::string> ids;
    Status s;
    {
      std::lock_guard<std::mutex> bl(box->mu);
      s = ForEachVolume(*box, [&](const std::string& path, const std::string&) {
        return ReadVolumeIds(path, o_.folder, &ids);
      });
    }
    if (s.IsNotFound()) {
      done(std::vector<std::string>{});
    } else if (!s.ok()) {
      done(s);
    } else {
      done(std::move(ids));
    }
  }

  Status Close() override {
    Status s = FinishAll(true);
    if (root_fd_.valid()) {
      Status m = WriteMapping();
      if (s.ok()) s = m;
    }
    lock_fd_.Reset();
    return s;
  }

 private:
  // 200,000 of these may wait (max_pending): the outcome, one per finished
  // volume, is shared rather than copied into each.
  struct Held {
    uint64_t id = 0;
    DoneFn done;
    std::shared_ptr<const Completion> c;  // set when it is delivered
  };
  struct Box {
    std::mutex mu;
    std::string address, dir_name, dir_path, base;
    core::UniqueFd dir_fd;
    bool ready = false;
    uint32_t next_no = 1;
    std::unique_ptr<pst::Writer> writer;
    std::string partial, final_name;
    std::vector<Held> held;  // completions of the open volume
    Status bad;              // kMailboxBad: the mailbox is stopped
    bool in_buffered = false;  // GUARDED_BY(PstSink::mu_): listed in buffered_
    bool has_buffer = false;   // the writer holds a write buffer (counted in buffers_live_)
    uint64_t open_bytes = 0;   // the writer's index and table memory (counted in open_bytes_)
    bool ids_loaded = false;
    std::unordered_map<std::string, std::string> ids;  // Message-ID -> volume (Probe)
  };

  Status fatal() const {
    std::lock_guard<std::mutex> l(mu_);
    return fatal_;
  }

  std::shared_ptr<Box> GetBox(const std::string& mailbox) {
    std::lock_guard<std::mutex> l(mu_);
    auto& b = boxes_[mailbox];
    if (!b) {
      b = std::make_shared<Box>();
      b->address = mailbox;
      b->dir_name = maildir::MailboxDirName(mailbox);
      b->dir_path = core::JoinPath(target_.dir, b->dir_name);
      b->base = PstVolumeBase(mailbox);
    }
    return b;
  }

  // A failure's completion; a mailbox failure stops the mailbox, a target
  // failure the run.
  Completion Failure(Box& box, const Status& s) {
    if (ClassifyLocalError(s) == Completion::Kind::kMailboxBad) {
      box.bad = s;
      return Completion::MailboxBad(s);
    }
    std::lock_guard<std::mutex> l(mu_);
    if (fatal_.ok()) fatal_ = s;
    return Completion::SinkBad(s);
  }

  // The mailbox directory, opened (created) without following symlinks,
  // its address file, and the next volume number. Caller holds box.mu.
  Status Prepare(Box& box) {
    if (box.ready) return Status::Ok();
    WXA_ASSIGN_OR_RETURN(box.dir_fd, env_->OpenDirAt(root_fd_.get(), box.dir_name, true, box.dir_path));
    struct stat st {};
    const std::string mpath = core::JoinPath(box.dir_path, kPstMailboxFile);
    Status ms = env_->StatAt(box.dir_fd.get(), std::string(kPstMailboxFile), &st, mpath);
    if (ms.IsNotFound()) {
      WXA_RETURN_IF_ERROR(core::WriteFileAtomic(env_, mpath + ".tmp", mpath, box.address + "\n",
                                                core::Durability::kFileAndDir));
    } else if (!ms.ok()) {
      return ms;
    }
    WXA_ASSIGN_OR_RETURN(auto vols, FinishedVolumes(env_, box.dir_fd.get(), box.dir_path, box.base));
    box.next_no = vols.empty() ? 1 : VolumeNumber(vols.back(), box.base) + 1;
    box.ready = true;
    return Status::Ok();
  }

  Status StartVolume(Box& box) {
    box.final_name = fmt::format("{}-{:03}.pst", box.base, box.next_no);
    box.partial = box.final_name + std::string(kPartial);
    pst::WriterOptions wo;
    wo.display_name = fmt::format("WeChat Archive {} ({:03})", box.address, box.next_no);
    wo.folder = o_.folder;
    wo.sync_on_close = true;
    wo.write_buffer = o_.write_buffer;
    const std::string path = core::JoinPath(box.dir_path, box.partial);
    // A leftover of ours (Open() removed stale ones; this is a failed start).
    (void)env_->UnlinkAt(box.dir_fd.get(), box.partial, path);
    WXA_ASSIGN_OR_RETURN(box.writer, pst::Writer::Create(path, wo));
    return Status::Ok();
  }

  // Finishes the open volume: close (fsync), rename, directory fsync; then,
  // and only then, its completions are kDone. Caller holds box.mu; the
  // completions go to *out, to be delivered without the lock.
  Status FinishVolume(Box& box, std::vector<Held>* out) {
    if (!box.writer) return Status::Ok();
    const std::string ppath = core::JoinPath(box.dir_path, box.partial);
    Status s = box.writer->Close();
    box.writer.reset();
    Account(box);
    bool renamed = false;
    if (s.ok()) {
      s = env_->RenameAt(box.dir_fd.get(), box.partial, box.dir_fd.get(), box.final_name, ppath);
      renamed = s.ok();
    }
    if (s.ok()) s = env_->SyncDirFd(box.dir_fd.get(), box.dir_path);
    auto c = VolumeOutcome(box, box.partial, box.final_name, s, renamed);
    if (s.ok() || renamed) ++box.next_no;  // an in-doubt volume keeps its name: never written over
    for (auto& h : box.held) {
      h.c = c;
      out->push_back(std::move(h));
    }
    held_total_ -= box.held.size();
    std::vector<Held>().swap(box.held);  // not clear(): thousands of boxes would keep their peak
    return s;
  }

  // What a volume's items get once its finish ended with `s`: kDone with
  // its file name, or the failure (its partial file removed: a rerun
  // writes them again). A volume already renamed to its final name when
  // the sync after failed may hold its items, durably or not: they are in
  // doubt (the next attempt probes the volumes first), never failed, which
  // would write them into a second volume. Caller holds box.mu.
  std::shared_ptr<const Completion> VolumeOutcome(Box& box, const std::string& partial,
                                                  const std::string& final_name, const Status& s, bool renamed) {
    if (s.ok()) {
      box.ids_loaded = false;  // Probe reads the volumes again
      return std::make_shared<const Completion>(Completion::Done(final_name));
    }
    if (renamed) {
      box.ids_loaded = false;
      const Status why = s.WithContext(fmt::format("syncing PST volume {}", core::JoinPath(box.dir_path, final_name)));
      (void)Failure(box, why);  // the box or the sink stops all the same
      return std::make_shared<const Completion>(Completion::Transient(why, std::chrono::milliseconds(0), true));
    }
    const std::string ppath = core::JoinPath(box.dir_path, partial);
    (void)env_->UnlinkAt(box.dir_fd.get(), partial, ppath);
    return std::make_shared<const Completion>(
        Failure(box, s.WithContext(fmt::format("finishing PST volume {}", ppath))));
  }

  void AbandonVolume(Box& box, const Completion& c, std::vector<Held>* out) {
    if (box.writer) {
      box.writer.reset();
      Account(box);
      (void)env_->UnlinkAt(box.dir_fd.get(), box.partial, core::JoinPath(box.dir_path, box.partial));
    }
    auto shared = std::make_shared<const Completion>(c);
    for (auto& h : box.held) {
      h.c = shared;
      out->push_back(std::move(h));
    }
    held_total_ -= box.held.size();
    std::vector<Held>().swap(box.held);
  }

  // The box has just been written to, so its volume holds a write buffer.
  // At most o_.max_buffered_volumes boxes are listed (every box with a
  // buffer is); past that, the one listed longest ago writes out and frees
  // its buffer. A box listed whose volume was finished meanwhile holds a
  // place without a buffer until its turn comes.
  void NoteBuffered(const std::shared_ptr<Box>& box) {
    std::vector<std::shared_ptr<Box>> release;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (box->in_buffered) return;
      box->in_buffered = true;
      buffered_.push_back(box);
      while (buffered_.size() > std::max<size_t>(1, o_.max_buffered_volumes)) {
        buffered_.front()->in_buffered = false;
        release.push_back(std::move(buffered_.front()));
        buffered_.pop_front();
      }
    }
    for (const auto& b : release) {
      std::lock_guard<std::mutex> bl(b->mu);
      // A failed write fails the volume's writer: its next Append or its
      // Close reports it, with that volume's items.
      if (b->writer) {
        (void)b->writer->ReleaseBuffer();
        if (o_.stats != nullptr && b->has_buffer) ++o_.stats->buffer_releases;
      }
      Account(*b);
    }
  }

  // Keeps buffers_live_ (volumes whose writer holds a write buffer) and
  // open_bytes_ (the open writers' index and table memory) in step with the
  // box's writer after anything that may change them. Caller holds box.mu.
  void Account(Box& box) {
    const uint64_t bytes = box.writer ? box.writer->index_memory_bytes() + box.writer->table_memory_bytes() : 0;
    if (bytes != box.open_bytes) {
      // Unsigned: a shrink wraps around and still adds the right change.
      const uint64_t total = open_bytes_ += bytes - box.open_bytes;
      box.open_bytes = bytes;
      if (o_.stats != nullptr) {
        uint64_t peak = o_.stats->open_volume_bytes_peak.load();
        while (total > peak && !o_.stats->open_volume_bytes_peak.compare_exchange_weak(peak, total)) {
        }
      }
    }
    const bool now = box.writer && box.writer->buffer_bytes() > 0;
    if (now == box.has_buffer) return;
    box.has_buffer = now;
    if (!now) {
      --buffers_live_;
      return;
    }
    const size_t live = ++buffers_live_;
    if (o_.stats == nullptr) return;
    size_t peak = o_.stats->buffers_peak.load();
    while (live > peak && !o_.stats->buffers_peak.compare_exchange_weak(peak, live)) {
    }
  }

  static void Deliver(std::vector<Held>& hs) {
    for (auto& h : hs) h.done(h.id, *h.c);
    hs.clear();
  }

  // Finishes every open volume (`all`: also when another thread is at it).
  Status FinishAll(bool all) {
    std::unique_lock<std::mutex> fl(finish_mu_, std::defer_lock);
    if (all) {
      fl.lock();
    } else if (!fl.try_lock()) {
      return Status::Ok();  // another thread is finishing them
    } else if (o_.stats != nullptr) {
      ++o_.stats->early_finishes;
    }
    std::vector<std::shared_ptr<Box>> boxes;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& [mb, b] : boxes_) boxes.push_back(b);
    }
    // Every open volume is taken out of its box (which goes on: its next
    // item starts the next number) and they are finished together: each
    // closed without a sync, one syncfs, the renames, a second syncfs, and
    // only then their completions. Two syncs in all instead of an fsync and
    // a directory fsync per volume: with 5,255 mailboxes on a slow disk the
    // one-by-one finish was most of a run's wall time.
    struct Closing {
      std::shared_ptr<Box> box;
      std::unique_ptr<pst::Writer> writer;
      std::string partial, final_name;
      std::vector<Held> held;
      Status s;
      bool renamed = false;
    };
    std::vector<Closing> closing;
    for (auto& b : boxes) {
      std::lock_guard<std::mutex> bl(b->mu);
      if (!b->writer) continue;
      Closing c{b, std::move(b->writer), b->partial, b->final_name, std::move(b->held), Status::Ok()};
      b->held = {};
      held_total_ -= c.held.size();
      ++b->next_no;  // a failed volume leaves a gap in the numbering, nothing else
      Account(*b);
      closing.push_back(std::move(c));
    }
    if (closing.empty()) return Status::Ok();
    for (auto& c : closing) {
      c.s = c.writer->Close(false);
      c.writer.reset();
    }
    const Status data_synced = env_->SyncFilesystemFd(root_fd_.get(), target_.dir);
    for (auto& c : closing) {
      if (c.s.ok()) c.s = data_synced;
      if (c.s.ok()) {
        c.s = env_->RenameAt(c.box->dir_fd.get(), c.partial, c.box->dir_fd.get(), c.final_name,
                             core::JoinPath(c.box->dir_path, c.partial));
        c.renamed = c.s.ok();
      }
    }
    const Status names_synced = env_->SyncFilesystemFd(root_fd_.get(), target_.dir);
    Status first;
    for (auto& c : closing) {
      if (c.s.ok()) c.s = names_synced;
      if (!c.s.ok() && first.ok()) first = c.s;
      std::shared_ptr<const Completion> outcome;
      {
        std::lock_guard<std::mutex> bl(c.box->mu);
        outcome = VolumeOutcome(*c.box, c.partial, c.final_name, c.s, c.renamed);
      }
      for (auto& h : c.held) h.c = outcome;
      Deliver(c.held);
    }
    return first;
  }

  // Calls fn(path, name) for each finished volume of the box, in order.
  // kNotFound when the mailbox has no directory. Caller holds box.mu.
  template <typename Fn>
  Status ForEachVolume(Box& box, Fn fn) {
    core::UniqueFd own;
    int fd = box.dir_fd.get();
    if (!box.dir_fd.valid()) {
      WXA_ASSIGN_OR_RETURN(own, env_->OpenDirAt(root_fd_.get(), box.dir_name, false, box.dir_path));
      fd = own.get();
    }
    WXA_ASSIGN_OR_RETURN(auto vols, FinishedVolumes(env_, fd, box.dir_path, box.base));
    for (const auto& v : vols) WXA_RETURN_IF_ERROR(fn(core::JoinPath(box.dir_path, v), v));
    return Status::Ok();
  }

  Status LoadIds(Box& box) {
    if (box.ids_loaded) return Status::Ok();
    box.ids.clear();
    WXA_RETURN_IF_ERROR(ForEachVolume(box, [&](const std::string& path, const std::string& name) {
      std::vector<std::string> ids;
      WXA_RETURN_IF_ERROR(ReadVolumeIds(path, o_.folder, &ids));
      for (auto& id : ids) box.ids.emplace(std::move(id), name);
      return Status::Ok();
    }));
    box.ids_loaded = true;
    return Status::Ok();
  }

  // DIR/mapping.csv for the PST Import service: one row per finished volume
  // of every mailbox directory (this run's and earlier ones'), written
  // atomically; left alone when unchanged.
  Status WriteMapping() {
    std::string csv =
        "Workload,FilePath,Name,Mailbox,IsArchive,TargetRootFolder,ContentCodePage,SPFileContainer,"
        "SPManifestContainer,SPSiteUrl\r\n";
    WXA_ASSIGN_OR_RETURN(auto names, env_->ListDirFd(root_fd_.get(), target_.dir));
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      const std::string path = core::JoinPath(target_.dir, n);
      struct stat st {};
      if (!env_->StatAt(root_fd_.get(), n, &st, path).ok() || !S_ISDIR(st.st_mode)) continue;
      auto dir = env_->OpenDirAt(root_fd_.get(), n, false, path);
      if (!dir.ok()) continue;
      auto addr = core::ReadWholeFile(core::JoinPath(path, kPstMailboxFile));
      if (!addr.ok()) continue;  // not a mailbox directory of ours
      std::string address = *addr;
      while (!address.empty() && (address.back() == '\n' || address.back() == '\r')) address.pop_back();
      WXA_ASSIGN_OR_RETURN(auto vols, FinishedVolumes(env_, dir->get(), path, PstVolumeBase(address)));
      for (const auto& v : vols) {
        csv += fmt::format("Exchange,{},{},{},FALSE,/,,,,\r\n", CsvField(n), CsvField(v), CsvField(address));
      }
    }
    const std::string path = core::JoinPath(target_.dir, kPstMappingFile);
    if (auto old = core::ReadWholeFile(path); old.ok() && *old == csv) return Status::Ok();
    return core::WriteFileAtomic(env_, path + ".tmp", path, csv, core::Durability::kFileAndDir);
  }

  core::Env* env_;
  Target target_;
  PstSinkOptions o_;
  core::UniqueFd root_fd_;
  core::UniqueFd lock_fd_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Box>> boxes_;  // GUARDED_BY(mu_)
  std::deque<std::shared_ptr<Box>> buffered_;          // GUARDED_BY(mu_), NoteBuffered
  Status fatal_;                                       // GUARDED_BY(mu_)
  std::mutex finish_mu_;                               // one FinishAll at a time
  std::atomic<size_t> held_total_{0};
  std::atomic<size_t> buffers_live_{0};  // Account
  std::atomic<uint64_t> open_bytes_{0};  // Account: the open writers' index and table memory
};

}  // namespace

Result<std::unique_ptr<Sink>> MakePstSink(const Target& target, PstSinkOptions options) {
  if (target.kind != Target::Kind::kPst) {
    return Status::InvalidArgument(fmt::format("'{}' is not a pst: target", target.spec));
  }
  if (options.volume_size < (1u << 20)) {
    return Status::InvalidArgument(fmt::format("--pst-volume-size {} is too small (at least 1 MB)",
                                               options.volume_size));
  }
  if (options.max_pending == 0) options.max_pending = 1;
  return std::unique_ptr<Sink>(new PstSink(target, std::move(options)));
}

}  // namespace wxa::sinks
