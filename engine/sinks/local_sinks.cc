#include "engine/sinks/local_sinks.h"

#include <fmt/format.h>

#include "formats/eml/eml_writer.h"
#include "formats/maildir/maildir_writer.h"

namespace wxa::sinks {

Status LocalSink::Deliver(const std::string& mailbox, const core::ItemKey& key, int64_t msgtime_ms,
                          std::string_view bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (prepared_.count(mailbox) == 0) {
      WXA_RETURN_IF_ERROR(Prepare(mailbox));
      // Temp files of a crashed run were never renamed: they are garbage.
      // Safe here: no thread of this run has written to the mailbox yet.
      auto cleaned = CleanTemp(mailbox);
      if (!cleaned.ok()) return cleaned.status();
      prepared_.insert(mailbox);
    }
  }
  return Write(mailbox, key, msgtime_ms, bytes);
}

namespace {

class MaildirSink final : public LocalSink {
 public:
  MaildirSink(core::Env* env, std::string root, std::string folder_dir)
      : LocalSink(root), w_(env, std::move(root), std::move(folder_dir)) {}
  const char* kind() const override { return "maildir"; }
  Result<bool> Exists(const std::string& mailbox, const core::ItemKey& key, int64_t t) override {
    return w_.Exists(maildir::MailboxDirName(mailbox), key, t);
  }
  Status Sync(const std::string& mailbox) override {
    return w_.SyncFolder(maildir::MailboxDirName(mailbox));
  }
  std::string PathFor(const std::string& mailbox, const core::ItemKey& key, int64_t t) const override {
    return w_.PathFor(maildir::MailboxDirName(mailbox), key, t);
  }
  Result<size_t> CleanTemp(const std::string& mailbox) override {
    return w_.CleanTemp(maildir::MailboxDirName(mailbox));
  }

 protected:
  Status Prepare(const std::string& mailbox) override {
    return w_.PrepareMailbox(maildir::MailboxDirName(mailbox));
  }
  Status Write(const std::string& mailbox, const core::ItemKey& key, int64_t t,
               std::string_view bytes) override {
    return w_.Deliver(maildir::MailboxDirName(mailbox), key, t, bytes);
  }

 private:
  maildir::MaildirWriter w_;
};

class EmlSink final : public LocalSink {
 public:
  EmlSink(core::Env* env, std::string root, std::string folder_path)
      : LocalSink(root), w_(env, std::move(root), std::move(folder_path)) {}
  const char* kind() const override { return "eml"; }
  Result<bool> Exists(const std::string& mailbox, const core::ItemKey& key, int64_t t) override {
    return w_.Exists(maildir::MailboxDirName(mailbox), key, t);
  }
  Status Sync(const std::string& mailbox) override {
    return w_.SyncFolder(maildir::MailboxDirName(mailbox));
  }
  std::string PathFor(const std::string& mailbox, const core::ItemKey& key, int64_t t) const override {
    return w_.PathFor(maildir::MailboxDirName(mailbox), key, t);
  }
  Result<size_t> CleanTemp(const std::string& mailbox) override {
    return w_.CleanTemp(maildir::MailboxDirName(mailbox));
  }

 protected:
  Status Prepare(const std::string& mailbox) override {
    return w_.PrepareMailbox(maildir::MailboxDirName(mailbox));
  }
  Status Write(const std::string& mailbox, const core::ItemKey& key, int64_t t,
               std::string_view bytes) override {
    return w_.Deliver(maildir::MailboxDirName(mailbox), key, t, bytes);
  }

 private:
  eml::EmlWriter w_;
};

}  // namespace

Result<std::unique_ptr<LocalSink>> MakeLocalSink(std::string_view target, std::string_view folder,
                                                 core::Env* env) {
  size_t colon = target.find(':');
  if (colon == std::string_view::npos || colon + 1 >= target.size()) {
    return Status::InvalidArgument(
        fmt::format("target '{}' must be maildir:DIR or eml:DIR", target));
  }
  std::string kind(target.substr(0, colon));
  std::string dir(target.substr(colon + 1));
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (kind == "maildir") {
    WXA_ASSIGN_OR_RETURN(std::string folder_dir, maildir::FolderDirName(folder));
    WXA_RETURN_IF_ERROR(env->CreateDirs(dir));
    return std::unique_ptr<LocalSink>(new MaildirSink(env, dir, folder_dir));
  }
  if (kind == "eml") {
    WXA_ASSIGN_OR_RETURN(std::string folder_path, eml::FolderPath(folder));
    WXA_RETURN_IF_ERROR(env->CreateDirs(dir));
    return std::unique_ptr<LocalSink>(new EmlSink(env, dir, folder_path));
  }
  return Status::InvalidArgument(fmt::format(
      "target kind '{}' is not supported (supported: maildir:DIR, eml:DIR)", kind));
}

}  // namespace wxa::sinks
