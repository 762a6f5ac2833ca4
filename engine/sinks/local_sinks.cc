#include "engine/sinks/local_sinks.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "formats/eml/eml_writer.h"
#include "formats/maildir/maildir_writer.h"

namespace wxa::sinks {

Result<SyncMode> ParseSyncMode(std::string_view s) {
  if (s == "batch") return SyncMode::kBatch;
  if (s == "file") return SyncMode::kFile;
  return Status::InvalidArgument(fmt::format("unknown sync mode '{}' (batch or file)", s));
}

Result<core::UniqueFd> TakeTargetLock(int root_fd, const std::string& dir) {
  const std::string lock = core::JoinPath(dir, kTargetLockName);
  core::UniqueFd fd(::openat(root_fd, std::string(kTargetLockName).c_str(),
                             O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd.valid()) return Status::FromErrno("open", lock, errno);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    return Status::Aborted(fmt::format(
        "another wxarchiver run is writing into {} (it holds {}); wait for it or stop it", dir, lock));
  }
  return fd;
}

namespace {

Result<std::string> FolderFor(maildir::Layout layout, std::string_view folder) {
  if (layout == maildir::Layout::kMaildir) return maildir::FolderDirName(folder);
  return eml::FolderPath(folder);
}

}  // namespace

// Folders to keep open with `nofile` descriptors allowed: each holds up to 3, and a reserve
// (a sixteenth, at least 256) is kept for the rest of the run, which needs few at once (one
// media file at a time per worker, the index, the report, the source files); a local tree
// sink holds no other descriptors across deliveries. With more mailboxes than this, staging
// and publishing reopen folders (5 opens each), mostly in vain (deliveries pick mailboxes
// about at random): at 5,255 mailboxes and 20,000 descriptors, half the budget (3,333
// folders) took 45.8 s and 40.7 CPU seconds to import, all of it (6,250) 39.4 s and 35.4.
size_t FolderCacheSize(uint64_t nofile) {
  const uint64_t reserve = std::max<uint64_t>(256, nofile / 16);
  return static_cast<size_t>(std::clamp<uint64_t>(nofile > reserve ? (nofile - reserve) / 3 : 0, 64, 16384));
}

namespace {

class LocalTreeSink final : public Sink {
  struct Folder;
  struct Staged;

 public:
  LocalTreeSink(Target t, maildir::Layout layout, std::string folder, LocalSinkOptions o)
      : env_(o.env != nullptr ? o.env : core::Env::Default()), target_(std::move(t)), layout_(layout),
        folder_(std::move(folder)), o_(std::move(o)) {
    if (o_.max_open_folders == 0) o_.max_open_folders = FolderCacheSize(core::OpenFileLimit());
    out_of_memory_ = Status::Aborted(fmt::format("publishing into {}: out of memory", target_.dir));
  }

  ~LocalTreeSink() override {
    // Temp files of deliveries never published are garbage; Close() is the
    // normal way out, this is the safety net. Batches handed over but not
    // yet taken by the publisher are dropped uncompleted (whoever would hear
    // of them may be gone); one it is publishing is finished first.
    std::deque<std::vector<Staged>> dropped;
    {
      std::lock_guard<std::mutex> l(pub_mu_);
      pub_stop_ = true;
      dropped.swap(to_publish_);
      pub_cv_.notify_all();
    }
    if (publisher_.joinable()) publisher_.join();
    std::lock_guard<std::mutex> l(mu_);
    dropped.push_back(std::move(pending_));
    for (const auto& batch : dropped) {
      for (const auto& p : batch) {
        if (!p.adopted && !p.tmp_path.empty()) (void)env_->Remove(p.tmp_path);
      }
    }
  }

  const char* kind() const override { return layout_ == maildir::Layout::kMaildir ? "maildir" : "eml"; }
  Capabilities capabilities() const override {
    Capabilities c;
    c.holds_until_barrier = true;
    return c;
  }

  Status Open() override {
    WXA_RETURN_IF_ERROR(env_->CreateDirs(target_.dir));
    root_fd_ = core::UniqueFd(::open(target_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd_.valid()) return Status::FromErrno("open", target_.dir, errno);
    // One run at a time per tree, whatever index each uses: two runs would
    // take each other's temp files for garbage.
    WXA_ASSIGN_OR_RETURN(lock_fd_, TakeTargetLock(root_fd_.get(), target_.dir));
    // Temp files of a stopped run were never published: garbage (we hold the lock).
    WXA_ASSIGN_OR_RETURN(staging_, maildir::StagingArea::Open(env_, layout_, root_fd_.get(),
                                                              std::string(kStagingDirName),
                                                              core::JoinPath(target_.dir, kStagingDirName), true));
    WXA_RETURN_IF_ERROR(staging_.Clean().status());
    WXA_ASSIGN_OR_RETURN(staging_mount_, maildir::MountOf(staging_.fd(), staging_.path()));
    return Status::Ok();
  }

  void Submit(Delivery d, DoneFn done) override {
    const std::string& mb = d.mailbox;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (auto it = bad_.find(mb); it != bad_.end()) {
        done(d.id, Completion::MailboxBad(it->second));
        return;
      }
    }
    auto folder = GetFolder(mb, true);
    if (!folder.ok()) {
      Fail(d, folder.status(), done);
      return;
    }
    Folder& f = **folder;
    Staged s;
    s.id = d.id;
    s.mailbox = mb;
    s.key = d.key;
    s.t = d.msgtime_ms;
    s.done = std::move(done);
    if (f.existed) {
      // A stopped run (or another tool) may have put it there already: adopt it.
      Result<bool> has(false);
      {
        std::lock_guard<std::mutex> fl(f.mu);
        has = f.folder.Contains(d.key, d.msgtime_ms);
      }
      if (!has.ok()) {
        Fail(d, has.status(), s.done);
        return;
      }
      if (*has) {
        s.adopted = true;
        std::lock_guard<std::mutex> l(mu_);
        pending_.push_back(std::move(s));
        return;
      }
    }
    const bool foreign = f.foreign.load(std::memory_order_relaxed);
    const std::string key_hex = d.key.Hex();
    if (!foreign) {
      // The item is already staged for another mailbox in this batch: it is
      // published at the barrier as a hard link to that file, straight under
      // its final name (no second copy, no temp name, no rename). Under mu_,
      // so the batch cannot be published meanwhile.
      std::lock_guard<std::mutex> l(mu_);
      if (auto it = link_sources_.find(key_hex); it != link_sources_.end()) {
        s.linked = true;
        s.link_tmp = it->second;
        pending_.push_back(std::move(s));
        return;
      }
    }
    // Staged in the tree's one staging directory; a folder on another mount
    // (a rename from there fails) in its own tmp/, fsynced: the batch's
    // syncfs covers only the tree's file system.
    const maildir::StagingArea& area = foreign ? f.folder.staging() : staging_;
    auto tmp = area.Stage(d.key, d.msgtime_ms, *d.bytes, foreign || o_.sync_mode == SyncMode::kFile);
    if (!tmp.ok()) {
      Fail(d, tmp.status(), s.done);
      return;
    }
    s.tmp_path = core::JoinPath(area.path(), *tmp);
    s.own_tmp = foreign;
    std::lock_guard<std::mutex> l(mu_);
    if (!foreign && o_.link_copies && !links_refused_.load(std::memory_order_relaxed)) {
      link_sources_.try_emplace(key_hex, std::move(*tmp));
    }
    pending_.push_back(std::move(s));
  }

  // Hands what was staged since the last barrier to the publisher thread
  // and returns: the pipeline's workers go on rendering and staging while it
  // syncs the file system and renames (a syncfs takes tens to hundreds of ms
  // on a disk). Completions come from that thread. Returns the first failure
  // of an earlier publication, if any.
  Status Barrier() override {
    std::vector<Staged> batch;
    {
      std::lock_guard<std::mutex> l(mu_);
      batch.swap(pending_);
      link_sources_.clear();  // their temp files are about to be renamed
    }
    std::unique_lock<std::mutex> l(pub_mu_);
    if (!batch.empty()) {
      to_publish_.push_back(std::move(batch));
      if (!publisher_.joinable()) {
        try {
          auto t = env_->NewThread([this] { PublishLoop(); });
          if (t.ok()) publisher_ = std::move(*t);
        } catch (...) {
          // std::bad_alloc from std::thread: as if refused (below). Thrown
          // out of here, it would leave the batch queued with no one to
          // publish it, and Close waiting for it.
        }
      }
      pub_cv_.notify_all();
      // No thread to be had (the process at its thread limit): published
      // here, on the caller's thread, completions included, as a sink
      // without a thread of its own would.
      if (!publisher_.joinable()) PublishQueued(l);
    }
    return pub_fatal_;
  }

  // Waits until every batch handed over is published and completed.
  Status WaitPublished() {
    std::unique_lock<std::mutex> l(pub_mu_);
    pub_cv_.wait(l, [&] { return to_publish_.empty() && !publishing_; });
    return pub_fatal_;
  }

  void PublishLoop() {
    std::unique_lock<std::mutex> l(pub_mu_);
    while (true) {
      // A caller publishing inline (its thread was refused) keeps the queue
      // until it is done: waiting for it, not spinning with pub_mu_ held.
      pub_cv_.wait(l, [&] { return (!to_publish_.empty() && !publishing_) || (pub_stop_ && to_publish_.empty()); });
      if (to_publish_.empty()) return;  // stopping, nothing left
      PublishQueued(l);
    }
  }

  // Publishes the queued batches in order until none is left; l holds
  // pub_mu_. One thread at a time: a caller that finds another publishing
  // leaves its batch to it.
  void PublishQueued(std::unique_lock<std::mutex>& l) {
    while (!publishing_ && !to_publish_.empty()) {
      std::vector<Staged> batch = std::move(to_publish_.front());
      to_publish_.pop_front();
      publishing_ = true;
      l.unlock();
      Status s;
      try {
        // Calls the completions holding only publish_mu_, which nothing
        // they reach takes.
        s = Publish(batch);
      } catch (...) {
        // Left as it was, publishing_ would stay set and every later
        // Barrier and WaitPublished would wait for it forever, and the
        // batch's deliveries for their outcomes. The target's error stops
        // the run; what was renamed is complete, and a rerun adopts it.
        s = ExceptionStatus();
        AbandonBatch(batch, s);
      }
      l.lock();
      if (!s.ok() && pub_fatal_.ok()) pub_fatal_ = s;
      publishing_ = false;
      pub_cv_.notify_all();
    }
  }

  // After an exception in Publish: every delivery not answered yet is
  // answered SinkBad (a completion that throws does not keep the others
  // from theirs), and temp files not renamed are removed (best effort: the
  // next run's start cleans the staging area anyway).
  void AbandonBatch(std::vector<Staged>& batch, const Status& s) noexcept {
    for (Staged& st : batch) {
      try {
        if (!st.published && !st.adopted && !st.tmp_path.empty()) (void)env_->Remove(st.tmp_path);
      } catch (...) {
      }
      if (!st.done) continue;
      DoneFn done = std::move(st.done);
      st.done = nullptr;
      try {
        done(st.id, Completion::SinkBad(s));
      } catch (...) {
      }
    }
  }

  // The status for the exception being handled. Never throws: when even
  // its message cannot be allocated (the exception was std::bad_alloc and
  // memory is still short), the one made at construction (a copy shares it).
  Status ExceptionStatus() const noexcept {
    try {
      return Status::Aborted(fmt::format("publishing into {}: {}", target_.dir, CurrentExceptionText()));
    } catch (...) {
      return out_of_memory_;
    }
  }

  static std::string CurrentExceptionText() {
    try {
      throw;
    } catch (const std::exception& e) {
      return e.what();
    } catch (...) {
      return "an exception that is not a std::exception";
    }
  }

  // One mailbox's part of a publication pass (links, or renames and
  // adoptions). A fatal error (the whole target: ENOSPC, EIO on the root)
  // goes to *fatal; a mailbox's own error marks its deliveries.
  void PublishMailbox(std::vector<Staged>& batch, bool links, const std::string& mb, const std::vector<size_t>& idx,
                      std::vector<std::optional<Completion>>* result, Status* fatal) {
    // Batch mode: a mailbox with nothing to do in this pass is not opened
    // (with more mailboxes than the folder cache holds, every open is a
    // reopen). --sync file opens each in the second pass: it fsyncs the
    // directory the links went into.
    if (o_.sync_mode == SyncMode::kBatch &&
        std::none_of(idx.begin(), idx.end(), [&](size_t i) { return batch[i].linked == links; })) {
      return;
    }
    auto folder = GetFolder(mb, false);
    Status s = folder.ok() ? Status::Ok() : folder.status();
    if (!links && !folder.ok()) {
      // The folder could not be opened again (evicted from the cache,
      // then EMFILE, EIO, gone): the links the first pass made in it
      // cannot be made durable (--sync file fsyncs the directory below),
      // so they do not count as delivered either; a rerun finds them or not.
      for (size_t i : idx) {
        if (batch[i].linked && (*result)[i] && (*result)[i]->kind == Completion::Kind::kDone) {
          (*result)[i].reset();
        }
      }
    }
    for (size_t i : idx) {
      Staged& e = batch[i];
      if ((*result)[i] || (!links && e.linked && folder.ok()) || (links && !e.linked)) {
        continue;
      }
      if (s.ok()) {
        bool present = e.adopted;
        // An adopted file on another mount: the batch's syncfs does not cover its bytes.
        const bool sync_adopted = o_.sync_mode == SyncMode::kFile || (*folder)->foreign.load();
        s = e.adopted ? (sync_adopted ? (*folder)->folder.SyncItem(e.key, e.t) : Status::Ok())
            : links   ? PublishLinked(**folder, e, &present)
                      : PublishStaged(**folder, e);
        if (s.ok()) {
          (*result)[i] = Completion::Done((*folder)->folder.FinalName(e.key, e.t), present);
          e.published = !e.adopted && !links;
          continue;
        }
      }
      if (ClassifyLocalError(s) == Completion::Kind::kSinkBad) {
        *fatal = s;
        return;
      }
      (*result)[i] = Completion::MailboxBad(s);
      MarkBad(mb, s);
    }
    // A folder on another mount: the batch's syncfs does not cover it (its
    // copies were fsynced, their names are after this; either pass).
    if (folder.ok() && ((!links && o_.sync_mode == SyncMode::kFile) || (*folder)->foreign.load())) {
      Status ds = (*folder)->folder.SyncFinalDir();
      if (!ds.ok()) *fatal = ds;
    }
  }

  // Makes a batch's staged files durable and visible, then completes it.
  Status Publish(std::vector<Staged>& batch) {
    std::lock_guard<std::mutex> pl(publish_mu_);
    if (batch.empty()) return Status::Ok();
    std::vector<std::optional<Completion>> result(batch.size());
    Status fatal;
    if (o_.sync_mode == SyncMode::kBatch) {
      // The data of every staged file, durable in one file-system commit.
      fatal = env_->SyncFilesystemFd(root_fd_.get(), target_.dir);
    }
    // Publish per mailbox: one folder open and (kFile) one directory fsync
    // each. Links first, while their sources still have their temp names.
    std::map<std::string, std::vector<size_t>> by_mailbox;
    for (size_t i = 0; i < batch.size(); ++i) by_mailbox[batch[i].mailbox].push_back(i);
    std::vector<std::pair<const std::string*, const std::vector<size_t>*>> mailboxes;
    mailboxes.reserve(by_mailbox.size());
    for (const auto& [mb, idx] : by_mailbox) mailboxes.emplace_back(&mb, &idx);
    for (int pass = 0; pass < 2 && fatal.ok(); ++pass) {
      // The mailboxes are independent (their own directories; each result
      // slot belongs to one), so o_.publish_threads take them in turn. The
      // pass ends when all are done: no source is renamed before every link
      // to its temp name is made.
      std::atomic<size_t> next{0};
      std::atomic<bool> stop{false};
      // An exception (std::bad_alloc) is this pass's fatal error: out of a
      // helper it would end the process, out of this thread it would leave
      // the helpers unjoined.
      auto work = [&](Status* thread_fatal) {
        try {
          for (size_t m; !stop.load(std::memory_order_relaxed) && (m = next.fetch_add(1)) < mailboxes.size();) {
            PublishMailbox(batch, pass == 0, *mailboxes[m].first, *mailboxes[m].second, &result, thread_fatal);
            if (!thread_fatal->ok()) stop.store(true);
          }
        } catch (...) {
          stop.store(true);
          *thread_fatal = ExceptionStatus();
        }
      };
      const size_t helpers = std::min(std::max<size_t>(1, o_.publish_threads), std::max<size_t>(1, mailboxes.size())) - 1;
      std::vector<Status> fatals(helpers + 1);
      Status spawn_fatal;
      std::vector<std::thread> threads;
      threads.reserve(helpers);
      try {
        for (size_t h = 1; h <= helpers; ++h) {
          auto t = env_->NewThread([&work, f = &fatals[h]] { work(f); });
          if (!t.ok()) break;  // no thread to be had (EAGAIN): this one takes the rest
          threads.push_back(std::move(*t));  // no allocation: reserved
        }
      } catch (...) {
        // Starting a helper threw: the helpers started stop and are joined.
        stop.store(true);
        spawn_fatal = ExceptionStatus();
      }
      work(&fatals[0]);
      for (auto& t : threads) t.join();
      for (const auto& f : fatals) {
        if (!f.ok() && fatal.ok()) fatal = f;
      }
      if (!spawn_fatal.ok() && fatal.ok()) fatal = spawn_fatal;
    }
    if (fatal.ok() && o_.sync_mode == SyncMode::kBatch) {
      fatal = env_->SyncFilesystemFd(root_fd_.get(), target_.dir);  // the renames, durable
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      Staged& e = batch[i];
      if (!e.published && !e.adopted && !e.tmp_path.empty()) (void)env_->Remove(e.tmp_path);
      // After a fatal error nothing of this batch counts as delivered: what
      // was renamed is complete and a rerun adopts it.
      if (!fatal.ok() && (!result[i] || result[i]->kind == Completion::Kind::kDone)) {
        result[i] = Completion::SinkBad(fatal);
      }
      DoneFn done = std::move(e.done);
      e.done = nullptr;  // answered (PublishQueued answers the others after an exception)
      done(e.id, std::move(*result[i]));
    }
    return fatal;
  }

  void Probe(const Delivery& d, ProbeFn done) override {
    ProbeResult r;
    auto folder = GetFolder(d.mailbox, false);
    if (!folder.ok()) {
      if (folder.status().IsNotFound()) {
        r.kind = ProbeResult::Kind::kAbsent;
      } else {
        r.kind = ProbeResult::Kind::kFailed;
        r.error = folder.status();
        r.mailbox_bad = ClassifyLocalError(folder.status()) == Completion::Kind::kMailboxBad;
      }
      done(d.id, std::move(r));
      return;
    }
    Folder& f = **folder;
    Result<bool> has(false);
    {
      std::lock_guard<std::mutex> fl(f.mu);
      has = f.folder.Contains(d.key, d.msgtime_ms);
    }
    if (!has.ok()) {
      r.kind = ProbeResult::Kind::kFailed;
      r.error = has.status();
      r.mailbox_bad = ClassifyLocalError(has.status()) == Completion::Kind::kMailboxBad;
    } else if (*has) {
      r.kind = ProbeResult::Kind::kPresent;
      r.remote_ref = f.folder.FinalName(d.key, d.msgtime_ms);
    }
    done(d.id, std::move(r));
  }

  void Inventory(const std::string& mailbox, InventoryFn done) override {
    auto folder = GetFolder(mailbox, false);
    if (!folder.ok()) {
      if (folder.status().IsNotFound()) {
        done(std::vector<std::string>{});
      } else {
        done(folder.status());
      }
      return;
    }
    std::vector<std::string> ids;
    Status s;
    {
      std::lock_guard<std::mutex> fl((*folder)->mu);
      s = (*folder)->folder.ForEachMessage(64 * 1024, [&](const std::string& path, std::string_view head) {
        auto id = MessageIdOfHeader(head);
        ids.push_back(id ? *id : "(no Message-ID: " + path + ")");
      });
    }
    if (!s.ok()) {
      done(s);
      return;
    }
    done(std::move(ids));
  }

  Status Close() override {
    Status s = Barrier();
    Status w = WaitPublished();
    if (s.ok()) s = w;
    std::lock_guard<std::mutex> l(mu_);
    cache_.clear();
    lru_.clear();
    lock_fd_.Reset();
    return s;
  }

 private:
  struct Folder {
    std::mutex mu;                // Contains() keeps a scan
    maildir::MailFolder folder;
    bool existed = false;         // there before this run first opened it
    // Not reachable from the staging directory by rename or link (another
    // mount, found when opened; or EXDEV met, e.g. another project quota
    // id): items are staged in its own tmp/, fsynced, and its cur/ fsynced.
    std::atomic<bool> foreign{false};
  };
  struct Staged {
    uint64_t id = 0;
    std::string mailbox;
    core::ItemKey key;
    int64_t t = 0;
    std::string tmp_path;  // the staged temp file (empty when adopted or linked)
    bool own_tmp = false;  // staged in its folder's own tmp/ (a folder on another mount)
    bool adopted = false;  // already in place: only made durable
    DoneFn done;
    bool published = false;  // renamed into place (its temp name is gone)
    // Published as a hard link to the file staged for another mailbox of the
    // same item (then tmp_path is empty): its name in the staging directory.
    bool linked = false;
    std::string link_tmp;

    // Its temp name (in staging_, or own_tmp). One string, not two: with slow
    // publication, many batches of staged deliveries wait at once.
    std::string tmp_name() const { return tmp_path.substr(tmp_path.rfind('/') + 1); }
  };

  // A linked delivery: a hard link to the source's staged file under the
  // final name. Where links are refused (a folder on another mount, EMLINK,
  // a file system without them), a copy (PublishCopy); later items are
  // written as copies from the start when the file system refuses links
  // altogether. *present: the name was already taken (another run's file:
  // adopted).
  Status PublishLinked(Folder& f, const Staged& e, bool* present) {
    Status s = f.folder.LinkFrom(staging_, e.link_tmp, e.key, e.t);
    if (s.code() == Status::Code::kAlreadyExists) {
      *present = true;
      return Status::Ok();
    }
    const int err = s.os_errno();
    if (s.ok() || !(err == EXDEV || err == EMLINK || err == EPERM || err == ENOTSUP || err == EOPNOTSUPP)) {
      return s;
    }
    if (err == EXDEV) {
      MarkForeign(f, e.mailbox);
    } else if (err != EMLINK) {
      links_refused_.store(true, std::memory_order_relaxed);
    }
    return PublishCopy(f, e.link_tmp, e);
  }

  // A staged delivery: renamed into place; a folder found on another mount
  // only now (EXDEV) gets a copy.
  Status PublishStaged(Folder& f, const Staged& e) {
    if (e.own_tmp) return PublishOwn(f, e.tmp_name(), e);
    Status s = f.folder.PublishFrom(staging_, e.tmp_name(), e.key, e.t);
    if (s.os_errno() != EXDEV) return s;
    MarkForeign(f, e.mailbox);
    s = PublishCopy(f, e.tmp_name(), e);
    if (s.ok()) staging_.Discard(e.tmp_name());  // published: nobody removes it after
    return s;
  }

  // The staged file `name`'s bytes written into the folder's own tmp/,
  // fsynced, then renamed into place. The name is durable after the batch's
  // second syncfs (same file system), or after PublishMailbox fsyncs the
  // directory (--sync file, or a foreign folder).
  Status PublishCopy(Folder& f, const std::string& name, const Staged& e) {
    WXA_ASSIGN_OR_RETURN(std::string bytes, staging_.Read(name));
    WXA_ASSIGN_OR_RETURN(std::string tmp, f.folder.Stage(e.key, e.t, bytes, /*sync=*/true));
    Status p = PublishOwn(f, tmp, e);
    if (!p.ok()) f.folder.staging().Discard(tmp);
    return p;
  }

  // Renames a file staged in the folder's own tmp/ into place. EXDEV there
  // (a mount on its cur/) is that mailbox's failure (ClassifyLocalError),
  // said in words.
  Status PublishOwn(Folder& f, const std::string& tmp, const Staged& e) {
    Status s = f.folder.Publish(tmp, e.key, e.t);
    if (s.os_errno() == EXDEV) return s.WithContext("the folder's tmp/ and cur/ are on different mounts");
    return s;
  }

  // Kept by mailbox, not only in its Folder: an evicted folder opened again
  // looks reachable by its mount (a project quota id does not show), and
  // every item would pay for a refused rename and a copy again.
  void MarkForeign(Folder& f, const std::string& mb) {
    f.foreign.store(true);
    std::lock_guard<std::mutex> l(mu_);
    foreign_.insert(mb);
  }

  void MarkBad(const std::string& mb, const Status& s) {
    std::lock_guard<std::mutex> l(mu_);
    bad_.emplace(mb, s);
  }

  void Fail(const Delivery& d, const Status& s, const DoneFn& done) {
    Completion::Kind k = ClassifyLocalError(s);
    Status err = s.WithContext(fmt::format("mailbox {}", d.mailbox));
    if (k == Completion::Kind::kMailboxBad) {
      MarkBad(d.mailbox, err);
      done(d.id, Completion::MailboxBad(err));
    } else {
      done(d.id, Completion::SinkBad(err));
    }
  }

  Result<std::shared_ptr<Folder>> GetFolder(const std::string& mailbox, bool create) {
    std::lock_guard<std::mutex> l(mu_);
    if (auto it = cache_.find(mailbox); it != cache_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
    const std::string mdir = maildir::MailboxDirName(mailbox);
    auto f = std::make_shared<Folder>();
    auto opened = maildir::MailFolder::Open(env_, layout_, root_fd_.get(), target_.dir, mdir, folder_, false);
    bool first_look = seen_.insert(mailbox).second;
    if (opened.ok()) {
      if (first_look) f->existed = true;
    } else if (opened.status().IsNotFound() && create) {
      opened = maildir::MailFolder::Open(env_, layout_, root_fd_.get(), target_.dir, mdir, folder_, true);
    }
    if (!opened.ok()) {
      if (first_look && !create) seen_.erase(mailbox);
      return opened.status();
    }
    if (!first_look) {
      auto ex = existed_.find(mailbox);
      f->existed = ex != existed_.end() && ex->second;
    } else {
      existed_[mailbox] = f->existed;
    }
    f->folder = std::move(*opened);
    auto mount = maildir::MountOf(f->folder.final_dir_fd(), f->folder.path());
    if (!mount.ok()) return mount.status();
    f->foreign.store(!(*mount == staging_mount_) || foreign_.count(mailbox) != 0);
    if (cleaned_.insert(mailbox).second) {
      // Temp files of a stopped run were never renamed: garbage. Safe: we
      // hold the tree's lock and have staged nothing in this folder yet.
      auto n = f->folder.CleanTemp();
      if (!n.ok()) {
        cleaned_.erase(mailbox);
        return n.status();
      }
    }
    if (cache_.size() >= o_.max_open_folders) {  // the least recently used goes; holders keep theirs open
      cache_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(mailbox);
    cache_.emplace(mailbox, std::make_pair(f, lru_.begin()));
    return f;
  }

  core::Env* env_;
  Target target_;
  maildir::Layout layout_;
  std::string folder_;  // Maildir++ folder directory name or EML folder path
  LocalSinkOptions o_;
  core::UniqueFd root_fd_;
  core::UniqueFd lock_fd_;
  Status out_of_memory_;   // ExceptionStatus's fallback
  std::mutex publish_mu_;  // one Publish at a time
  // The publisher thread (started by the first Barrier) and its queue.
  std::mutex pub_mu_;
  std::condition_variable pub_cv_;
  std::deque<std::vector<Staged>> to_publish_;  // GUARDED_BY(pub_mu_)
  bool publishing_ = false;                     // GUARDED_BY(pub_mu_)
  bool pub_stop_ = false;                       // GUARDED_BY(pub_mu_)
  Status pub_fatal_;                            // GUARDED_BY(pub_mu_): the first failed publication
  std::thread publisher_;
  std::mutex mu_;
  // Open folders, at most max_open_folders, the least recently used evicted
  // first: a record's mailboxes are staged and published close together.
  std::unordered_map<std::string, std::pair<std::shared_ptr<Folder>, std::list<std::string>::iterator>>
      cache_;                     // GUARDED_BY(mu_)
  std::list<std::string> lru_;  // GUARDED_BY(mu_), most recently used first
  std::unordered_set<std::string> seen_;                            // GUARDED_BY(mu_)
  std::unordered_map<std::string, bool> existed_;                   // GUARDED_BY(mu_)
  std::unordered_set<std::string> cleaned_;                         // GUARDED_BY(mu_)
  std::unordered_set<std::string> foreign_;                         // GUARDED_BY(mu_): MarkForeign
  std::unordered_map<std::string, Status> bad_;                     // GUARDED_BY(mu_)
  std::vector<Staged> pending_;                                     // GUARDED_BY(mu_)
  // The tree's staging directory (kStagingDirName): every item is written
  // there, then renamed or linked into its folders. One directory, not each
  // folder's tmp/: at 5,255 mailboxes a batch dirtied a tmp/ block of nearly
  // every mailbox in both of its file-system commits (7.0 against 4.9 GB
  // written for a 1.0 GB tree, 19.9 against 16.5 s).
  maildir::StagingArea staging_;
  maildir::MountId staging_mount_;  // where staging_ is (found once, at Open)
  // Staged files of the pending batch by item key (their names in staging_),
  // for hard links.
  std::unordered_map<std::string, std::string> link_sources_;       // GUARDED_BY(mu_)
  std::atomic<bool> links_refused_{false};  // the tree's file system refused a hard link
};

// null: renders, counts and discards (measures the core loop; the index is kept).
class NullSink final : public Sink {
 public:
  const char* kind() const override { return "null"; }
  Capabilities capabilities() const override { return {}; }
  Status Open() override { return Status::Ok(); }
  void Submit(Delivery d, DoneFn done) override {
    bytes_ += d.bytes ? d.bytes->size() : 0;
    done(d.id, Completion::Done(""));
  }
  Status Barrier() override { return Status::Ok(); }
  Status Close() override { return Status::Ok(); }

 private:
  std::atomic<uint64_t> bytes_{0};
};

}  // namespace

Result<std::unique_ptr<Sink>> MakeLocalSink(const Target& target, const LocalSinkOptions& options) {
  switch (target.kind) {
    case Target::Kind::kMaildir:
    case Target::Kind::kEml: {
      auto layout = target.kind == Target::Kind::kMaildir ? maildir::Layout::kMaildir : maildir::Layout::kEml;
      WXA_ASSIGN_OR_RETURN(std::string folder, FolderFor(layout, options.folder));
      return std::unique_ptr<Sink>(new LocalTreeSink(target, layout, std::move(folder), options));
    }
    case Target::Kind::kNull:
      return std::unique_ptr<Sink>(new NullSink());
    default:
      return Status::InvalidArgument(fmt::format("'{}' is not a local target", target.spec));
  }
}

Result<std::string> LocalItemPath(const Target& target, std::string_view folder,
                                  const std::string& mailbox, const core::ItemKey& key,
                                  int64_t msgtime_ms) {
  const std::string base = maildir::BaseName(key, msgtime_ms);
  const std::string mdir = core::JoinPath(target.dir, maildir::MailboxDirName(mailbox));
  if (target.kind == Target::Kind::kMaildir) {
    WXA_ASSIGN_OR_RETURN(std::string f, maildir::FolderDirName(folder));
    return core::JoinPath(mdir, f + "/cur/" + base + ":2,S");
  }
  if (target.kind == Target::Kind::kEml) {
    WXA_ASSIGN_OR_RETURN(std::string f, eml::FolderPath(folder));
    return core::JoinPath(mdir, f + "/" + base + ".eml");
  }
  return Status::InvalidArgument(fmt::format("'{}' keeps no files", target.spec));
}

}  // namespace wxa::sinks
