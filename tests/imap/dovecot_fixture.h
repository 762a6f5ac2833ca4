// A private Dovecot 2.3 for one test (or one suite): its own temp directory,
// free loopback ports (IMAP with STARTTLS, and IMAPS), a CA and a server
// certificate made here with OpenSSL, users and a master user in
// passwd-files. The destructor stops it and every process it spawned, even
// when the test failed. README.md next to this file shows the generated
// configuration and the capability strings of each mode.
//
// Process model: Dovecot runs in the foreground (`dovecot -F`) as a child of
// the test, in its own process group, never as root: when the test runs as
// root the whole instance runs as `run_as` (default "nobody") and the
// directory is handed to that user; otherwise it runs as the test's user.
// If the test process dies without running destructors, the master gets
// SIGTERM (PR_SET_PDEATHSIG) and the next Start() removes the leftovers
// (instances whose owner pid is gone). PR_SET_PDEATHSIG follows the thread
// that called Start(): call it from a thread that outlives the instance.
//
// Threading: Start() and Stop() from one thread; the const helpers may be
// called from any thread (each opens its own connection or process).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "formats/core/status.h"

namespace wxa::test {

enum class MailStorage : uint8_t { kMaildir, kMdbox };
// How gtest shows a MailStorage test parameter (found by ADL).
inline void PrintTo(MailStorage s, std::ostream* os) { *os << (s == MailStorage::kMaildir ? "maildir" : "mdbox"); }

struct DovecotUser {
  std::string name;
  std::string password;
};

struct DovecotOptions {
  MailStorage storage = MailStorage::kMdbox;
  std::vector<DovecotUser> users = {{"u1", "pw1"}};
  // May log in as any user: SASL PLAIN with authcid = this name and
  // authzid = the user, or LOGIN "user*master". Empty name: no master user.
  DovecotUser master = {"wxa-master", "master-secret"};
  // Per user and client IP (Dovecot's default of 10 refuses parallel
  // uploads); every connection through a local proxy counts too.
  int max_userip_connections = 128;
  // STARTTLS on the plain port and an implicit-TLS IMAPS port.
  bool tls = true;
  // Capabilities the server must not advertise ("LITERAL+", "MULTIAPPEND",
  // "UIDPLUS", ...; "APPENDLIMIT" matches "APPENDLIMIT=n"). Non-empty makes
  // the fixture write an explicit imap_capability list. Dovecot hides them
  // from the lists only: it still accepts {n+} literals and several messages
  // per APPEND, and still answers [APPENDUID ...]. FaultProxy can enforce.
  std::vector<std::string> hide_capabilities;
  // imap_literal_minus = yes: LITERAL- instead of LITERAL+; a {n+} literal
  // over 4096 bytes then ends the session with "* BYE [TOOBIG] ...".
  bool literal_minus = false;
  // > 0: APPENDLIMIT=<n> is advertised (Dovecot 2.3 has no APPENDLIMIT of
  // its own; it is added to imap_capability) and enforced by the quota
  // plugin's quota_max_mail_size = n: larger messages get
  // "NO [LIMIT] Mail size is larger than the maximum size allowed by server configuration".
  uint64_t append_limit = 0;
  std::string mail_fsync = "optimized";  // Dovecot's mail_fsync: optimized | always | never
  // Raw lines appended to the end of dovecot.conf (later settings win).
  std::vector<std::string> extra_config;
  // Used only when the test runs as root: the account Dovecot runs as.
  std::string run_as = "nobody";
  std::chrono::milliseconds start_timeout{20000};
  // Keep the directory after Stop() (also: environment WXA_KEEP_DOVECOT=1).
  bool keep_dir = false;
};

// One stored message, as the census reports it.
struct StoredMessage {
  uint32_t uid = 0;
  std::string message_id;          // Message-ID header value with its <>, "" when absent
  int64_t internal_date = 0;       // INTERNALDATE as Unix seconds
  std::string internal_date_text;  // as the server sent it: "05-Mar-2024 16:00:00 +0800"
  std::vector<std::string> flags;  // "\\Seen", keywords...; without \Recent (session state)
  uint64_t size = 0;               // RFC822.SIZE
  std::string text;                // the whole message as IMAP BODY[] returns it (CRLF lines)
};

struct MailboxCensus {
  uint32_t uidvalidity = 0;
  std::vector<StoredMessage> messages;  // in UID order
};

// "0 lost, 0 duplicated, nothing extra": OK, or kNotFound / kAlreadyExists /
// kCorruption naming the offending Message-IDs (missing, duplicated, unexpected).
Status CheckExactlyOnce(const std::vector<std::string>& expected_message_ids,
                        const MailboxCensus& census);

class DovecotFixture {
 public:
  // Starts Dovecot and returns once the plain port greets and a login works.
  // kUnsupported with an install hint when Dovecot is missing.
  static Result<std::unique_ptr<DovecotFixture>> Start(DovecotOptions options);
  ~DovecotFixture();
  DovecotFixture(const DovecotFixture&) = delete;
  DovecotFixture& operator=(const DovecotFixture&) = delete;

  // Stops Dovecot (SIGTERM to its process group, SIGKILL to whatever is
  // left after 0.5 s) and removes the directory unless kept. Idempotent.
  Status Stop();
  // A crash: SIGKILL to every Dovecot process, mid-command or not. The
  // directory stays; Restart() brings the same instance back.
  Status Kill();
  // Stops (if running) and starts again with the same configuration, ports
  // and mail: "the server went away and came back".
  Status Restart();
  bool running() const { return pid_ > 0; }

  uint16_t imap_port() const { return imap_port_; }   // plain, STARTTLS offered when tls
  uint16_t imaps_port() const { return imaps_port_; }  // implicit TLS; 0 without tls
  const std::string& ca_file() const { return ca_file_; }  // PEM of the CA that signed the server cert
  const std::string& config_path() const { return config_path_; }
  const std::string& log_path() const { return log_path_; }
  const std::string& dir() const { return dir_; }
  const DovecotOptions& options() const { return options_; }
  // <dir>/home/<user>/Maildir or .../mdbox (Maildir++ folders are ".<name>" inside).
  std::string mail_dir(const std::string& user) const;
  // The last `lines` lines of Dovecot's log (plus its stderr), for failure output.
  std::string LogTail(size_t lines = 40) const;
  // The generated dovecot.conf.
  std::string ConfigText() const;

  // Runs `doveadm -c <conf> args...` (TZ=UTC); its stdout, or an error with
  // the exit code and stderr.
  Result<std::string> Doveadm(const std::vector<std::string>& args) const;
  // `doveadm -f tab fetch -u user '<fields>' mailbox <mailbox> <query>`: one
  // map per message, field -> value. Fields must be single-line (uid, guid,
  // flags, date.received, date.saved, hdr.message-id, size.physical, ...).
  Result<std::vector<std::map<std::string, std::string>>> DoveadmFetch(
      const std::string& user, const std::vector<std::string>& fields,
      const std::string& mailbox, const std::string& query = "all") const;
  // Folder names of a user (doveadm mailbox list).
  Result<std::vector<std::string>> ListMailboxes(const std::string& user) const;
  // Number of messages in a folder (doveadm mailbox status messages).
  Result<uint64_t> MessageCount(const std::string& user, const std::string& mailbox) const;

  // The census: every message of `mailbox` with UID, Message-ID,
  // INTERNALDATE, flags and full text, read over IMAP on the plain port
  // (EXAMINE + UID FETCH BODY.PEEK[], so nothing is changed) as the master
  // user for `user`, or as `user` with its password when there is no master.
  // A missing folder is kNotFound.
  Result<MailboxCensus> Census(const std::string& user, const std::string& mailbox) const;

  // A connected test client on the plain port, logged in as `user` (via the
  // master user when configured). For quick checks and seeding.
  Result<std::unique_ptr<class ImapTestClient>> LoginClient(const std::string& user) const;

 private:
  DovecotFixture() = default;
  Status Launch(bool fresh_logs);
  Status StopProcess();  // Stop() without removing the directory
  Status Signal(bool graceful);
  Status WaitReady();
  Status WriteConfig();
  std::string CapabilityLine() const;

  DovecotOptions options_;
  std::string dir_;
  std::string config_path_;
  std::string log_path_;
  std::string stderr_path_;
  std::string ca_file_;
  std::string instance_name_;
  std::string doveadm_bin_;
  std::string dovecot_bin_;
  uint16_t imap_port_ = 0;
  uint16_t imaps_port_ = 0;
  int run_uid_ = -1;
  int run_gid_ = -1;
  std::string run_user_;
  std::string run_group_;
  int pid_ = -1;  // the master (also its process group id)
};

// Removes instance directories of test processes that died without
// stopping their Dovecot, killing what is left of it. Start() calls it.
void SweepStaleDovecotInstances();

// /proc/PID/cmdline with NULs as spaces; "" when the process is gone (also
// when it exits while read).
std::string ProcCmdline(int pid);

// The post-login capability list Dovecot 2.3.19 sends by default, without
// the parts it adds itself (LITERAL+/LITERAL-, NOTIFY, QUOTA...). The base
// of the explicit list written when capabilities are hidden.
extern const char* const kDovecot23Capabilities;

}  // namespace wxa::test
