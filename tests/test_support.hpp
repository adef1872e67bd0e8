// Shared helpers for the process-level tests (test_multiprocessor, test_faults, test_hygiene).
// Linux only: uses /proc.
#ifndef PFP_TEST_SUPPORT_HPP
#define PFP_TEST_SUPPORT_HPP

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <pfp/pfp.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace pfp_test {

using Clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;

inline long long elapsed_ms(Clock::time_point since) {
  return std::chrono::duration_cast<ms>(Clock::now() - since).count();
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so timestamps taken in
/// different workers can be compared.
inline long long mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

inline void sleep_ms(long n) { std::this_thread::sleep_for(ms(n)); }

// ---------------------------------------------------------------------------------------------
// File descriptors

/// The fds open in this process (the directory handle used to list them excluded).
inline std::set<int> open_fds() {
  std::set<int> fds;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return fds;
  const int self = dirfd(d);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    if (fd != self) fds.insert(fd);
  }
  closedir(d);
  return fds;
}

inline std::size_t count_open_fds() { return open_fds().size(); }

inline std::string fds_to_string(const std::set<int>& fds) {
  std::string s;
  for (int fd : fds) {
    if (!s.empty()) s += ',';
    s += std::to_string(fd);
    char link[512];
    const std::string p = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = readlink(p.c_str(), link, sizeof link - 1);
    if (n > 0) {
      link[n] = 0;
      s += "(";
      s += link;
      s += ")";
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Contents of /proc/<pid>/stat split after the "(comm)" field: [0] = state, [1] = ppid, ...
/// Empty if the process does not exist.
inline std::vector<std::string> stat_fields(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!in || !std::getline(in, line)) return {};
  const auto close = line.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> fields{std::istream_iterator<std::string>(rest), std::istream_iterator<std::string>()};
  return fields;
}

/// Process state letter ('R', 'S', 'Z', ...) or 0 if the process does not exist.
inline char process_state(pid_t pid) {
  auto f = stat_fields(pid);
  return f.empty() || f[0].empty() ? 0 : f[0][0];
}

/// Pids whose parent is `parent` (zombies included).
inline std::vector<pid_t> child_pids(pid_t parent = getpid()) {
  std::vector<pid_t> kids;
  DIR* d = opendir("/proc");
  if (!d) return kids;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != 0) continue;
    auto f = stat_fields(static_cast<pid_t>(pid));
    if (f.size() > 1 && std::atol(f[1].c_str()) == parent) kids.push_back(static_cast<pid_t>(pid));
  }
  closedir(d);
  return kids;
}

inline std::string pids_to_string(const std::vector<pid_t>& pids) {
  std::string s;
  for (pid_t p : pids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(p) + ":" + std::string(1, process_state(p) ? process_state(p) : '?');
  }
  return s;
}

/// True if the process exists and is not a zombie (or dead) -- i.e. it can still run code.
inline bool pid_running(pid_t pid) {
  if (pid <= 0) return false;
  if (kill(pid, 0) == -1 && errno == ESRCH) return false;
  const char st = process_state(pid);
  return st != 0 && st != 'Z' && st != 'X' && st != 'x';
}

/// Polls `pred` until it is true or `timeout` passes; returns the last value.
inline bool wait_until(const std::function<bool()>& pred, ms timeout, ms step = ms(10)) {
  const auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(step);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Small files

inline std::string temp_path(const std::string& tag) {
  static int counter = 0;
  return "/tmp/pfp_test_" + std::to_string(getpid()) + "_" + tag + "_" + std::to_string(++counter);
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Writes `text` to `path` atomically (write a temp file, then rename) with plain syscalls,
/// so it is safe in any process.
inline bool write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok && ::rename(tmp.c_str(), path.c_str()) == 0;
}

/// Appends one line with a single O_APPEND write (atomic for short lines).
inline void append_line(const std::string& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return;
  const std::string l = line + "\n";
  (void)!::write(fd, l.data(), l.size());
  ::close(fd);
}

/// Waits until `path` exists with non-empty content and returns it ("" on timeout).
inline std::string wait_for_file(const std::string& path, ms timeout) {
  std::string text;
  wait_until([&] { text = read_file(path); return !text.empty(); }, timeout);
  return text;
}

inline std::size_t count_occurrences(const std::string& hay, const std::string& needle) {
  std::size_t n = 0;
  for (auto pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + needle.size())) ++n;
  return n;
}

inline std::uint64_t fnv1a(const char* p, std::size_t n, std::uint64_t h = 1469598103934665603ULL) {
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= 1099511628211ULL;
  }
  return h;
}
inline std::uint64_t fnv1a(const std::string& s) { return fnv1a(s.data(), s.size()); }

/// A deterministic, non-periodic byte pattern of length n (includes NUL and high bytes).
inline std::string pattern_bytes(std::size_t n, std::uint32_t seed = 12345) {
  std::string s(n, '\0');
  std::uint32_t x = seed;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s[i] = static_cast<char>(x & 0xff);
  }
  return s;
}

/// Like pattern_bytes but fast for huge sizes: 1 MiB blocks of pattern_bytes, each stamped with
/// its block number, so no two blocks are equal and a misplaced block is noticed.
inline std::string big_pattern(std::size_t n, std::uint32_t seed = 12345) {
  constexpr std::size_t block = std::size_t{1} << 20;
  const std::string base = pattern_bytes(block, seed);
  std::string s(n, '\0');
  for (std::size_t off = 0, b = 0; off < n; off += block, ++b) {
    const std::size_t len = std::min(block, n - off);
    std::memcpy(&s[off], base.data(), len);
    const std::uint64_t stamp = b * 0x9E3779B97F4A7C15ULL;
    std::memcpy(&s[off], &stamp, std::min(len, sizeof stamp));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Running a piece of the test in a forked child

struct ChildOutcome {
  std::string out;         // everything the child wrote to its stdout
  int status = 0;          // raw waitpid status
  bool timed_out = false;  // the child was killed by the harness after the time limit
  bool exited_ok() const { return !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  std::string describe() const {
    if (timed_out) return "harness timeout";
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("signal ") + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
  }
};

/// Forks; the child has its stdout redirected to a pipe (so stdio makes it fully buffered),
/// runs `body` and exits with its return value via exit() (stdio flushed). The parent collects
/// the child's stdout and status. Never returns into the test framework in the child.
inline ChildOutcome run_in_child(const std::function<int()>& body, ms timeout = ms(20000)) {
  ChildOutcome o;
  std::fflush(nullptr);
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    o.timed_out = true;
    return o;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    ::close(p[0]);
    if (dup2(p[1], 1) < 0) _exit(120);
    ::close(p[1]);
    std::setvbuf(stdout, nullptr, _IOFBF, 1 << 16);  // a pipe: fully buffered, as by default
    int rc = 121;
    try {
      rc = body();
    } catch (...) {
      rc = 122;
    }
    std::exit(rc);
  }
  ::close(p[1]);
  const auto deadline = Clock::now() + timeout;
  char buf[65536];
  for (;;) {
    const auto left = std::chrono::duration_cast<ms>(deadline - Clock::now()).count();
    if (left <= 0) {
      o.timed_out = true;
      break;
    }
    pollfd pfd{p[0], POLLIN, 0};
    const int r = poll(&pfd, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    o.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  if (o.timed_out) kill(pid, SIGKILL);
  // The child may have closed stdout before exiting, or its workers may hold the pipe:
  // wait for the child itself with the same deadline.
  for (;;) {
    const pid_t w = waitpid(pid, &o.status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (Clock::now() >= deadline + ms(2000)) {
      o.timed_out = true;
      kill(pid, SIGKILL);
      waitpid(pid, &o.status, 0);
      break;
    }
    sleep_ms(5);
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Signal state

/// Restores a signal's disposition on scope exit.
class ScopedSigaction {
 public:
  ScopedSigaction(int sig, const struct sigaction& act) : sig_(sig) { sigaction(sig_, &act, &old_); }
  ScopedSigaction(int sig, void (*handler)(int)) : sig_(sig) {
    struct sigaction act {};
    act.sa_handler = handler;
    sigemptyset(&act.sa_mask);
    sigaction(sig_, &act, &old_);
  }
  ~ScopedSigaction() { sigaction(sig_, &old_, nullptr); }
  ScopedSigaction(const ScopedSigaction&) = delete;
  ScopedSigaction& operator=(const ScopedSigaction&) = delete;

 private:
  int sig_;
  struct sigaction old_ {};
};

/// Blocks signals in the calling thread; restores the previous mask on scope exit.
class ScopedBlock {
 public:
  explicit ScopedBlock(std::initializer_list<int> sigs) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : sigs) sigaddset(&set, s);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~ScopedBlock() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  ScopedBlock(const ScopedBlock&) = delete;
  ScopedBlock& operator=(const ScopedBlock&) = delete;

 private:
  sigset_t old_;
};

/// A comparable snapshot of a signal's disposition.
struct Disposition {
  std::uintptr_t handler = 0;
  int flags = 0;
  std::vector<int> mask;
  bool operator==(const Disposition& o) const { return handler == o.handler && flags == o.flags && mask == o.mask; }
  bool operator!=(const Disposition& o) const { return !(*this == o); }
};

inline Disposition disposition(int sig) {
  struct sigaction a {};
  sigaction(sig, nullptr, &a);
  Disposition d;
  d.handler = (a.sa_flags & SA_SIGINFO) ? reinterpret_cast<std::uintptr_t>(a.sa_sigaction)
                                        : reinterpret_cast<std::uintptr_t>(a.sa_handler);
  d.flags = a.sa_flags & ~0x04000000;  // ignore SA_RESTORER, which libc adds
  for (int s = 1; s < NSIG; ++s)
    if (sigismember(&a.sa_mask, s) == 1) d.mask.push_back(s);
  return d;
}

/// Every catchable signal's disposition (1 .. SIGRTMAX, SIGKILL/SIGSTOP excluded).
inline std::vector<Disposition> all_dispositions() {
  std::vector<Disposition> v;
  for (int s = 1; s < NSIG; ++s) v.push_back(s == SIGKILL || s == SIGSTOP ? Disposition{} : disposition(s));
  return v;
}

/// The signals blocked in the calling thread.
inline std::vector<int> blocked_signals() {
  sigset_t cur;
  sigemptyset(&cur);
  pthread_sigmask(SIG_BLOCK, nullptr, &cur);
  std::vector<int> v;
  for (int s = 1; s < NSIG; ++s)
    if (sigismember(&cur, s) == 1) v.push_back(s);
  return v;
}

/// The standard signals (1..31) whose disposition is not SIG_DFL in this process.
inline std::vector<int> non_default_signals() {
  std::vector<int> v;
  for (int s = 1; s < 32; ++s) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    struct sigaction a {};
    if (sigaction(s, nullptr, &a) != 0) continue;
    if ((a.sa_flags & SA_SIGINFO) || a.sa_handler != SIG_DFL) v.push_back(s);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Redirecting this process's fd 1/2 for a scope (workers forked inside inherit it)

class ScopedRedirect {
 public:
  ScopedRedirect(int fd, const std::string& path) : fd_(fd) {
    std::fflush(nullptr);
    saved_ = ::dup(fd_);
    const int f = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (f >= 0) {
      ::dup2(f, fd_);
      ::close(f);
    }
  }
  ~ScopedRedirect() {
    std::fflush(nullptr);
    if (saved_ >= 0) {
      ::dup2(saved_, fd_);
      ::close(saved_);
    }
  }
  ScopedRedirect(const ScopedRedirect&) = delete;
  ScopedRedirect& operator=(const ScopedRedirect&) = delete;

 private:
  int fd_;
  int saved_ = -1;
};

/// Runs `argv` (fork + execv) with its stdout captured; returns the output. Usable in any
/// process (the pipe is close-on-exec except for the dup2'ed copy on fd 1).
inline std::string exec_capture(const std::vector<std::string>& argv) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return "pipe failed";
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    if (dup2(p[1], 1) < 0) _exit(127);  // dup2 clears FD_CLOEXEC on the copy
    execv(args[0], args.data());
    _exit(127);
  }
  ::close(p[1]);
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Options and Results

inline pfp::Options opts(unsigned workers, unsigned max_tasks = 0, long timeout_ms = 0) {
  pfp::Options o;
  o.workers = workers;
  o.max_tasks_per_worker = max_tasks;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  return o;
}

inline std::string describe(const pfp::Result& r) {
  return "#" + std::to_string(r.index) + " " + r.function_name + " status=" + std::string(pfp::to_string(r.status)) +
         " error='" + r.error + "' pid=" + std::to_string(r.pid) + " result=" + r.result.to_json();
}

}  // namespace pfp_test

#endif  // PFP_TEST_SUPPORT_HPP
