// The files the user names (the user directory, mapping CSV, mailbox list,
// IMAP/Graph secrets) and the source directory itself are opened and read
// through core::Env (issue #8 item 22), with core::ReadUserFile's rules:
// a regular file or a pipe (process substitution) is read, once; a device,
// directory or socket is refused before any read; more than the cap is
// refused. The import parses and fingerprints the same bytes.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "engine/pipeline/import.h"
#include "formats/core/csv.h"
#include "formats/core/file.h"
#include "tests/test_util.h"

namespace wxa::pipeline {
namespace {

namespace fs = std::filesystem;

const test::Corpus& Corpus() { return test::SharedCorpus(8, 12, 22); }

ImportOptions Options(const std::string& source, const std::string& out_dir, core::Env* env) {
  ImportOptions o;
  o.source_dir = source;
  o.directory_csv = source + "/directory.csv";
  o.mapping_csv = source + "/mapping.csv";
  o.mailboxes_file = source + "/mailboxes.txt";
  o.target = "maildir:" + out_dir;
  o.report_path = out_dir + ".report.json";
  o.threads = 2;
  o.env = env;
  return o;
}

// "mailbox Message-ID" of every delivered mail (a multiset: duplicates show).
std::multiset<std::string> Delivered(const std::string& out) {
  std::multiset<std::string> ids;
  for (const auto& f : test::ListFiles(out)) {
    if (f.find("/cur/") == std::string::npos) continue;
    std::string text = test::ReadFile(out + "/" + f);
    size_t at = text.rfind("Message-ID: ", 0) == 0 ? 0 : text.find("\r\nMessage-ID: ");
    if (at == std::string::npos) continue;
    size_t end = text.find("\r\n", at + 2);
    ids.insert(f.substr(0, f.find('/')) + " " + text.substr(at, end - at));
  }
  return ids;
}

// A pipe's read end as a path, the way bash's <(...) hands one over.
std::string PipePath(int read_fd) { return fmt::format("/proc/self/fd/{}", read_fd); }

TEST(ReadUserFile, RegularFileWhole) {
  test::TempDir tmp;
  test::WriteFile(tmp / "a.csv", "userid,name\nu1,One\n");
  auto text = core::ReadUserFile(nullptr, tmp / "a.csv");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, "userid,name\nu1,One\n");
}

TEST(ReadUserFile, DevicesDirectoriesAndMissingFilesAreRefusedBeforeAnyRead) {
  test::TempDir tmp;
  // /dev/zero would fill memory, /dev/tty or a FIFO-like device would block.
  auto zero = core::ReadUserFile(nullptr, "/dev/zero");
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("/dev/zero is a character device, not a regular file or pipe"),
            std::string::npos)
      << zero.status().ToString();
  auto dir = core::ReadUserFile(nullptr, tmp.path());
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find("is a directory, not a regular file or pipe"), std::string::npos)
      << dir.status().ToString();
  auto missing = core::ReadUserFile(nullptr, tmp / "absent.csv");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(missing.status().IsNotFound()) << missing.status().ToString();
}

TEST(ReadUserFile, LargerThanTheCapIsRefusedWithoutReadingIt) {
  test::TempDir tmp;
  const std::string path = tmp / "huge.csv";
  {
    // Sparse: 16 GiB that take no disk, and would take 16 GiB of memory to read.
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, off_t{16} << 30), 0);
    ::close(fd);
  }
  auto text = core::ReadUserFile(nullptr, path);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), Status::Code::kTooLarge);
  EXPECT_NE(text.status().message().find("is larger than 256 MiB"), std::string::npos) << text.status().ToString();
}

TEST(ReadUserFile, PipeIsReadToItsWritersEnd) {
  // A writer still writing (process substitution of a slow command).
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  std::string want;
  for (int i = 0; i < 20000; ++i) want += fmt::format("+86138{:08d},user{}@corp.example.com\n", i, i);
  std::thread writer([&] {
    size_t off = 0;
    while (off < want.size()) {
      ssize_t n = ::write(p[1], want.data() + off, std::min<size_t>(4096, want.size() - off));
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::close(p[1]);
  });
  auto text = core::ReadUserFile(nullptr, PipePath(p[0]));
  writer.join();
  ::close(p[0]);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, want);
}

TEST(ReadUserFile, PipeWhoseWriterHasFinishedIsReadNotWaitedFor) {
  // The writer wrote and exited before the file was opened: opening the
  // path again, blocking, would wait for a writer that never comes.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const std::string want = "mobile,mailbox\n+8613800000000,a@corp.example.com\n";
  ASSERT_EQ(::write(p[1], want.data(), want.size()), static_cast<ssize_t>(want.size()));
  ::close(p[1]);
  auto text = core::ReadUserFile(nullptr, PipePath(p[0]));
  ::close(p[0]);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, want);
}

TEST(ReadUserFile, NamedFifoWaitsForItsWriter) {
  // mkfifo users.csv; (sleep 1; cat real.csv > users.csv) &: the writer
  // opens after the reader. (Read at once, the FIFO looked empty.)
  test::TempDir tmp;
  const std::string fifo = tmp / "users.csv";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string want = "userid,name\nu1,One\n";
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    int w = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(w, 0);
    ASSERT_EQ(::write(w, want.data(), want.size()), static_cast<ssize_t>(want.size()));
    ::close(w);
  });
  auto text = core::ReadUserFile(nullptr, fifo);
  writer.join();
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, want);
}

TEST(ReadUserFile, EmptyFinishedPipeIsEmptyNotAHang) {
  // <(true): the writer ended before the open, having written nothing.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ::close(p[1]);
  auto text = core::ReadUserFile(nullptr, PipePath(p[0]));
  ::close(p[0]);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, "");
}

TEST(ReadUserFile, PipeLongerThanTheCapIsRefused) {
  ::signal(SIGPIPE, SIG_IGN);  // the writer outlives the reader: EPIPE, not death
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  std::thread writer([&] {
    std::string chunk(4096, 'x');
    for (int i = 0; i < 64; ++i) {
      if (::write(p[1], chunk.data(), chunk.size()) <= 0) break;
    }
    ::close(p[1]);
  });
  auto text = core::ReadUserFile(nullptr, PipePath(p[0]), 100000);
  ::close(p[0]);  // the writer sees EPIPE if still writing
  writer.join();
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), Status::Code::kTooLarge) << text.status().ToString();
}

class UserFilesImportTest : public ::testing::Test {
 protected:
  std::string Out() const { return tmp_ / "out"; }
  test::TempDir tmp_;
};

// A read fault on each user-named file, and on the source directory, stops
// the run at start-up with an error naming the file and the errno, before
// anything is written. (Read outside the Env, the fault is not seen and
// the run completes: the test fails.)
TEST_F(UserFilesImportTest, ReadFaultOnEachUserFileStopsTheRunBeforeWriting) {
  struct Case {
    std::string file, what;
    bool at_open;
  };
  const std::vector<Case> cases = {
      {"/directory.csv", "user directory", false}, {"/mapping.csv", "mapping CSV", false},
      {"/mailboxes.txt", "mailbox list", false},   {"/directory.csv", "user directory", true},
      {"/mapping.csv", "mapping CSV", true},       {"/mailboxes.txt", "mailbox list", true},
  };
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file + (c.at_open ? " (open)" : " (read)"));
    test::FaultEnv env;
    env.read_paths_containing = c.file;
    env.fail_read_open = c.at_open;
    if (!c.at_open) env.fail_reads_at = 0;
    const std::string out = tmp_ / fmt::format("out{}", n++);
    auto r = RunImport(Options(Corpus().dir, out, &env));
    ASSERT_FALSE(r.ok() && r->fatal.ok());
    const Status& s = r.ok() ? r->fatal : r.status();
    EXPECT_NE(s.ToString().find(c.what), std::string::npos) << s.ToString();
    EXPECT_NE(s.ToString().find(Corpus().dir + c.file), std::string::npos) << s.ToString();
    EXPECT_NE(s.ToString().find("Input/output error"), std::string::npos) << s.ToString();
    EXPECT_GT(env.read_faults.load(), 0);
    EXPECT_FALSE(fs::exists(out)) << "output created before the inputs were read";
  }
}

TEST_F(UserFilesImportTest, SourceDirectoryIsOpenedThroughTheEnv) {
  test::FaultEnv env;
  env.read_paths_containing = Corpus().dir;
  env.fail_read_open = true;
  env.read_errno = EACCES;
  auto r = RunImport(Options(Corpus().dir, Out(), &env));
  ASSERT_FALSE(r.ok() && r->fatal.ok());
  const Status& s = r.ok() ? r->fatal : r.status();
  EXPECT_NE(s.ToString().find("source directory"), std::string::npos) << s.ToString();
  EXPECT_NE(s.ToString().find("Permission denied"), std::string::npos) << s.ToString();
}

TEST_F(UserFilesImportTest, DeviceAsMappingCsvIsAClearStartUpError) {
  ImportOptions o = Options(Corpus().dir, Out(), nullptr);
  o.mapping_csv = "/dev/zero";
  auto r = RunImport(o);
  ASSERT_FALSE(r.ok() && r->fatal.ok());
  const Status& s = r.ok() ? r->fatal : r.status();
  EXPECT_NE(s.ToString().find("mapping CSV: /dev/zero is a character device, not a regular file or pipe"),
            std::string::npos)
      << s.ToString();
  EXPECT_FALSE(fs::exists(Out()));
}

// The directory, mapping CSV and mailbox list may come from process
// substitution: each is read once, and the run is the same as from files.
TEST_F(UserFilesImportTest, UserFilesFromPipesImportLikeFiles) {
  const std::string ref_out = tmp_ / "ref";
  auto ref = RunImport(Options(Corpus().dir, ref_out, nullptr));
  ASSERT_TRUE(ref.ok() && ref->fatal.ok());

  std::vector<std::thread> writers;
  std::vector<int> read_ends;
  auto pipe_of = [&](const std::string& path) {
    int p[2];
    EXPECT_EQ(::pipe(p), 0);
    read_ends.push_back(p[0]);
    writers.emplace_back([w = p[1], text = test::ReadFile(path)] {
      size_t off = 0;
      while (off < text.size()) {
        ssize_t n = ::write(w, text.data() + off, text.size() - off);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      ::close(w);
    });
    return PipePath(p[0]);
  };
  ImportOptions o = Options(Corpus().dir, Out(), nullptr);
  o.directory_csv = pipe_of(Corpus().dir + "/directory.csv");
  o.mapping_csv = pipe_of(Corpus().dir + "/mapping.csv");
  o.mailboxes_file = pipe_of(Corpus().dir + "/mailboxes.txt");
  auto r = RunImport(o);
  for (auto& w : writers) w.join();
  for (int fd : read_ends) ::close(fd);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(r->fatal.ok()) << r->fatal.ToString();
  EXPECT_EQ(r->counts.imported, ref->counts.imported);
  EXPECT_EQ(r->counts.unmapped, ref->counts.unmapped);
  EXPECT_EQ(Delivered(Out()), Delivered(ref_out));
}

// Rewrites the mapping CSV on disk right after the run opened it: the run
// parses the old bytes, and must fingerprint those, not the new file.
class SwapAfterOpenEnv : public core::Env {
 public:
  std::string path, new_text;
  int opens = 0;
  Result<core::UniqueFd> OpenUserFile(const std::string& p, struct stat* st) override {
    auto fd = Env::OpenUserFile(p, st);
    if (p == path) {
      ++opens;
      test::WriteFile(path + ".new", new_text);
      EXPECT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
    }
    return fd;
  }
};

// A mapping CSV replaced while a run starts: the run used the old mapping,
// so the next run (with the new one) must see a change and read everything
// again; it ends with every delivery a clean run with the new mapping makes.
// (Fingerprinting the file by reading it a second time records the new
// mapping as used: the next run sees no change, and the items the new
// mapping maps stay unmapped.)
TEST_F(UserFilesImportTest, MappingReplacedDuringStartUpIsSeenByTheNextRun) {
  // The new mapping sends the first user with a mobile number to another
  // user's mailbox (one on the list); the old one maps nobody.
  auto dir = core::ParseCsv(test::ReadFile(Corpus().dir + "/directory.csv"), "directory.csv");
  ASSERT_TRUE(dir.ok());
  const int c_mobile = dir->Column({"mobile"}), c_email = dir->Column({"email"});
  ASSERT_GE(c_mobile, 0);
  ASSERT_GE(c_email, 0);
  const std::string list = test::ReadFile(Corpus().dir + "/mailboxes.txt");
  std::string mobile, moved_from, moved_to;
  for (const auto& row : dir->rows) {
    const std::string& email = row.fields.at(c_email);
    if (email.empty() || list.find(email) == std::string::npos) continue;
    if (mobile.empty() && !row.fields.at(c_mobile).empty()) {
      mobile = row.fields.at(c_mobile);
      moved_from = email;
    } else if (!mobile.empty()) {
      moved_to = email;
      break;
    }
  }
  ASSERT_FALSE(moved_to.empty());
  const std::string mapping = tmp_ / "mapping.csv";
  test::WriteFile(mapping, "mobile,mailbox\n");  // maps nobody
  SwapAfterOpenEnv env;
  env.path = mapping;
  env.new_text = fmt::format("mobile,mailbox\n\"{}\",{}\n", mobile, moved_to);

  // What a clean run with the new mapping delivers.
  const std::string ref_out = tmp_ / "ref";
  test::WriteFile(tmp_ / "new-mapping.csv", env.new_text);
  ImportOptions ro = Options(Corpus().dir, ref_out, nullptr);
  ro.mapping_csv = tmp_ / "new-mapping.csv";
  auto ref = RunImport(ro);
  ASSERT_TRUE(ref.ok() && ref->fatal.ok());
  ASSERT_GT(ref->deliveries_by_mailbox[moved_to], 0u);

  ImportOptions o = Options(Corpus().dir, Out(), &env);
  o.mapping_csv = mapping;
  auto first = RunImport(o);
  ASSERT_TRUE(first.ok() && first->fatal.ok());
  EXPECT_EQ(env.opens, 1) << "the mapping CSV is opened once per run";
  ASSERT_NE(first->deliveries_by_mailbox, ref->deliveries_by_mailbox) << moved_from << " -> " << moved_to;
  ASSERT_EQ(test::ReadFile(mapping), env.new_text);

  o.env = nullptr;
  auto second = RunImport(o);
  ASSERT_TRUE(second.ok() && second->fatal.ok());
  EXPECT_NE(second->index.rescan_reason.find("changed"), std::string::npos) << second->index.rescan_reason;
  std::multiset<std::string> got = Delivered(Out());
  for (const auto& d : Delivered(ref_out)) {
    EXPECT_EQ(got.count(d), 1u) << d;
  }
}

}  // namespace
}  // namespace wxa::pipeline
