// The IMAP target: `imap://HOST[:PORT]` (STARTTLS when offered; credentials
// never go in the clear except to a loopback address) and
// `imaps://HOST[:PORT]` (implicit TLS). Certificates are verified against the
// system store or --ca-file unless --tls-insecure (tests only).
//
// Per mailbox: log in (SASL PLAIN with a master user's authorization as the
// mailbox, a mailbox's own login from a credentials file, or XOAUTH2 with a
// token from a command), LIST/CREATE the archive folder (modified UTF-7),
// SELECT it, then APPEND with INTERNALDATE = the item's time and \Seen:
// MULTIAPPEND batches bounded by count, bytes and APPENDLIMIT where offered,
// pipelined single APPENDs otherwise (Exchange Online offers no MULTIAPPEND);
// LITERAL+ (or LITERAL- for small literals) sends literals without waiting;
// APPENDUID gives each delivery its remote reference "UIDVALIDITY:UID".
//
// Failure classes (ARCHITECTURE section 8): a tagged NO on one message is
// ItemBad (a refused MULTIAPPEND batch is split to find which); NO on
// SELECT/CREATE, a failed login or [OVERQUOTA] is MailboxBad; BYE, resets,
// timeouts, [UNAVAILABLE], [THROTTLED] and "Suggested Backoff Time" are
// Transient — in doubt when the command was fully sent without an answer, so
// the engine probes (UID SEARCH HEADER Message-ID) before resending. Commands
// not fully sent when a connection dies are requeued (MULTIAPPEND is atomic).
// A server that refuses every connection, or every login, is SinkBad.
//
// Concurrency: one I/O thread; at most `connections` in total and
// `connections_per_mailbox` per mailbox; at most `max_commands_in_flight`
// pipelined commands per connection. Secrets never appear in errors.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>

#include "engine/sinks/sink.h"

namespace wxa::sinks {

struct ImapOptions {
  std::string folder = "WeChat Archiver";  // levels separated by '/'
  enum class Auth : uint8_t { kPlain, kLogin, kXoauth2 };
  Auth auth = Auth::kPlain;
  // SASL PLAIN as `master_user`, authorized as each mailbox (Dovecot,
  // Cyrus, Zimbra).
  std::string master_user;
  std::string master_secret;
  struct Login {
    std::string user;
    std::string secret;
  };
  std::unordered_map<std::string, Login> credentials;  // lowercase mailbox -> its own login
  // XOAUTH2: run with the mailbox as its one argument; prints the token.
  std::string token_command;
  std::string ca_file;        // empty: the system store
  bool tls_insecure = false;  // do not verify the server certificate (tests only)

  size_t connections = 16;
  size_t connections_per_mailbox = 2;
  size_t batch_max_messages = 100;
  uint64_t batch_max_bytes = 8ull << 20;
  size_t max_commands_in_flight = 2;
  uint32_t connect_timeout_ms = 20000;
  uint32_t command_timeout_ms = 120000;  // plus the time a slow link needs for the bytes
  uint32_t idle_close_ms = 1500;         // an idle connection logs out after this
  uint32_t reconnect_base_ms = 200;
  uint32_t reconnect_max_ms = 30000;
  // Connection attempts failing in a row, all mailboxes together, before
  // the target counts as gone (SinkBad).
  uint32_t max_connect_failures = 12;
  bool check_mailboxes = true;  // log in once per candidate mailbox at start
};

// "mailbox,login,secret" rows (a header row is recognised and skipped).
Status LoadImapCredentials(const std::string& csv_path, ImapOptions* options);
// Reads a secret from a file: its first line, without the line end.
Result<std::string> ReadSecretFile(const std::string& path);

Result<std::unique_ptr<Sink>> MakeImapSink(const Target& target, ImapOptions options);

}  // namespace wxa::sinks
