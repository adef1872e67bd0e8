// Helpers for the fault-matrix and stress tests (tests/test_fault_matrix.cpp, tests/test_stress.cpp).
// Linux only: reads /proc.
//
//  * run_bounded(): runs a whole execute_parallel() in a forked child of the test process and
//    brings the Results back through a pipe, with a hard time limit. A run that hangs is reported
//    as a failure of the test (with the cell named) instead of hanging the test executable.
//  * inject(): the faults of the matrix (exception, abort, SIGSEGV, _exit(7), SIGKILL from another
//    process, hang), for use inside worker processes.
//  * process figures: open fds, child processes, resident set size.
//  * SharedArray<T>: a MAP_SHARED | MAP_ANONYMOUS array, visible to every process forked after it.
#ifndef PFP_TESTS_FAULT_SUPPORT_HPP
#define PFP_TESTS_FAULT_SUPPORT_HPP

#include <pfp/pfp.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define PFP_FAULT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PFP_FAULT_ASAN 1
#endif
#endif
#if !defined(PFP_FAULT_ASAN)
#define PFP_FAULT_ASAN 0
#endif

namespace pfp_fault {

using Clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;

inline long long elapsed_ms(Clock::time_point since) {
  return std::chrono::duration_cast<ms>(Clock::now() - since).count();
}

/// Sleeps the whole duration even if signals interrupt it.
inline void sleep_for_us(long long us) {
  timespec left{static_cast<time_t>(us / 1000000), static_cast<long>((us % 1000000) * 1000)};
  while (::nanosleep(&left, &left) != 0 && errno == EINTR) {
  }
}

// ---------------------------------------------------------------- process figures

/// Open descriptors of this process (the one used to list them not counted).
inline std::size_t count_open_fds() {
  std::size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return 0;
  const int self = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    if (std::atoi(e->d_name) != self) ++n;
  }
  ::closedir(d);
  return n;
}

/// The parent pid recorded in /proc/<pid>/stat, or -1.
inline long parent_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!in || !std::getline(in, line)) return -1;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(line.substr(close + 1));
  std::string state;
  long ppid = -1;
  rest >> state >> ppid;
  return ppid;
}

/// Processes whose parent is `parent` (zombies included), found by scanning /proc/*/stat.
inline std::vector<pid_t> child_pids(pid_t parent = ::getpid()) {
  std::vector<pid_t> kids;
  DIR* d = ::opendir("/proc");
  if (!d) return kids;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != 0) continue;
    if (parent_of(static_cast<pid_t>(pid)) == parent) kids.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(d);
  return kids;
}

/// Resident set size of this process in bytes (/proc/self/statm).
inline long long rss_bytes() {
  std::ifstream in("/proc/self/statm");
  long long size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<long long>(::sysconf(_SC_PAGESIZE));
}

// ---------------------------------------------------------------- shared memory

/// n zero-initialised T in a MAP_SHARED | MAP_ANONYMOUS mapping; processes forked afterwards
/// (the run_bounded child, its workers, their children) all see the same memory.
template <class T>
class SharedArray {
  static_assert(std::is_trivially_destructible_v<T>, "SharedArray holds trivially destructible types");

 public:
  explicit SharedArray(std::size_t n) : n_(n) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    data_ = static_cast<T*>(p);
    for (std::size_t i = 0; i < n_; ++i) new (data_ + i) T();
  }
  ~SharedArray() { ::munmap(static_cast<void*>(data_), bytes()); }
  SharedArray(const SharedArray&) = delete;
  SharedArray& operator=(const SharedArray&) = delete;

  T& operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return n_; }

 private:
  std::size_t bytes() const { return sizeof(T) * (n_ ? n_ : 1); }
  T* data_ = nullptr;
  std::size_t n_;
};

// ---------------------------------------------------------------- faults

enum class How { exception, abort_, segv, exit7, sigkill_outside, hang };
inline constexpr How all_hows[] = {How::exception, How::abort_, How::segv, How::exit7, How::sigkill_outside, How::hang};

inline const char* name(How h) {
  switch (h) {
    case How::exception: return "exception";
    case How::abort_: return "abort()";
    case How::segv: return "raise(SIGSEGV)";
    case How::exit7: return "_exit(7)";
    case How::sigkill_outside: return "SIGKILL from another process";
    case How::hang: return "hang";
  }
  return "?";
}

/// Does the fault in the calling (worker) process. Never returns: throws or ends the process
/// (a hang ends when the parent kills the worker).
[[noreturn]] inline void inject(How h) {
  switch (h) {
    case How::exception: throw std::runtime_error("injected fault");
    case How::abort_: std::abort();
    case How::segv:
      ::raise(SIGSEGV);
      ::_exit(99);  // not reached: functions run with the default disposition
    case How::exit7: ::_exit(7);
    case How::sigkill_outside: {
      const pid_t killer = ::fork();
      if (killer == 0) {
        ::kill(::getppid(), SIGKILL);
        ::_exit(0);
      }
      if (killer < 0) ::kill(::getpid(), SIGKILL);
      for (;;) ::pause();
    }
    case How::hang:
      for (;;) ::pause();
  }
  ::_exit(98);
}

/// Writes raw bytes to the worker's result pipe (pfp::detail::worker_result_fd), as a worker
/// that is about to die mid-write (or writes nonsense) would.
inline void write_to_result_pipe(const std::string& bytes) {
  if (pfp::detail::worker_result_fd < 0) throw std::logic_error("not in a pfp worker");
  if (!pfp::detail::write_all(pfp::detail::worker_result_fd, bytes.data(), bytes.size()))
    throw std::runtime_error("write to the result pipe failed");
}

/// A complete, valid frame that reports `value` as function `index`'s ok result.
inline std::string ok_frame(std::size_t index, const pfp::Value& value) {
  pfp::Result r;
  r.index = index;
  r.status = pfp::Status::ok;
  r.result = value;
  return pfp::detail::encode_result_frame(r);
}

/// A 16-byte frame header (magic, version, kind, payload size) as pfp lays it out.
inline std::string frame_header(std::uint32_t magic, std::uint16_t version, std::uint16_t kind, std::uint64_t payload) {
  pfp::detail::FrameHeader h{magic, version, kind, payload};
  return std::string(reinterpret_cast<const char*>(&h), sizeof h);
}

// ---------------------------------------------------------------- bounded runs

/// One Result as it came back from a bounded run.
struct Outcome {
  std::string name;
  std::size_t index = 0;
  pfp::Status status = pfp::Status::cancelled;
  pfp::Value result;
  std::string error;
  int pid = 0;
  unsigned attempts = 0;
};

struct Bounded {
  bool finished = false;           // the child reported back within the limit
  std::string problem;             // why not (or the exception execute_parallel() threw)
  long long run_ms = -1;           // how long execute_parallel() took in the child
  long long children_left = -1;    // child processes of the child right after the run
  long long maxrss_growth_kb = -1; // growth of the child's peak RSS during the run
  std::vector<Outcome> results;

  std::string describe() const {
    std::ostringstream s;
    s << (finished ? "finished" : "NOT finished: " + problem) << " in " << run_ms << " ms, " << children_left
      << " children left, peak RSS +" << maxrss_growth_kb << " KiB\n";
    for (const Outcome& o : results) {
      std::string json = o.result.to_json();
      if (json.size() > 80) json = json.substr(0, 60) + "... (" + std::to_string(json.size()) + " chars)";
      s << "  [" << o.index << "] " << o.name << ": " << pfp::to_string(o.status) << " attempts=" << o.attempts
        << " pid=" << o.pid << " result=" << json << (o.error.empty() ? "" : " error=\"" + o.error + "\"") << "\n";
    }
    return s.str();
  }
};

namespace detail {

enum class ReadEnd { complete, closed, deadline };

inline ReadEnd read_exact(int fd, char* p, std::size_t n, Clock::time_point deadline) {
  while (n > 0) {
    const auto now = Clock::now();
    if (now >= deadline) return ReadEnd::deadline;
    const long long left = std::chrono::ceil<ms>(deadline - now).count();
    pollfd pfd{fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left));
    if (r <= 0) continue;  // EINTR or the time is up: checked above
    const ssize_t got = ::read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return ReadEnd::closed;
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  return ReadEnd::complete;
}

inline pfp::Value to_value(const std::vector<pfp::Result>& rs) {
  pfp::Value arr = pfp::Value::array();
  for (const pfp::Result& r : rs) {
    pfp::Value o = pfp::Value::object();
    o["name"] = r.function_name;
    o["index"] = r.index;
    o["status"] = static_cast<int>(r.status);
    o["result"] = r.result;
    o["error"] = r.error;
    o["pid"] = r.pid;
    o["attempts"] = r.attempts;
    arr.push_back(std::move(o));
  }
  return arr;
}

}  // namespace detail

/// Runs body() -- which builds a MultiProcessor, runs it and returns its Results -- in a forked
/// child of the test process and brings the Results back. If the child has not answered within
/// `limit` it is killed (its workers die with it: they have PR_SET_PDEATHSIG) and the run is
/// reported as not finished. Never returns into the test framework in the child.
template <class Body>
Bounded run_bounded(Body&& body, ms limit) {
  Bounded b;
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    b.problem = "pipe2 failed";
    return b;
  }
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(p[0]);
    ::close(p[1]);
    b.problem = "fork failed";
    return b;
  }
  if (pid == 0) {
    ::close(p[0]);
    pfp::Value out = pfp::Value::object();
    try {
      rusage before{}, after{};
      ::getrusage(RUSAGE_SELF, &before);
      const auto t0 = Clock::now();
      const std::vector<pfp::Result> rs = body();
      out["run_ms"] = elapsed_ms(t0);
      ::getrusage(RUSAGE_SELF, &after);
      out["maxrss_growth_kb"] = static_cast<long long>(after.ru_maxrss - before.ru_maxrss);
      out["children_left"] = child_pids().size();
      out["results"] = detail::to_value(rs);
    } catch (const std::exception& e) {
      out["exception"] = std::string(e.what());
    } catch (...) {
      out["exception"] = "an exception not derived from std::exception";
    }
    std::string bytes;
    try {
      bytes = pfp::encode(out);
    } catch (...) {
      ::_exit(3);
    }
    const std::uint64_t n = bytes.size();
    if (!pfp::detail::write_all(p[1], &n, sizeof n) || !pfp::detail::write_all(p[1], bytes.data(), bytes.size()))
      ::_exit(4);
    ::_exit(0);
  }
  ::close(p[1]);
  const auto deadline = Clock::now() + limit;
  std::uint64_t n = 0;
  std::string bytes;
  detail::ReadEnd end = detail::read_exact(p[0], reinterpret_cast<char*>(&n), sizeof n, deadline);
  if (end == detail::ReadEnd::complete) {
    if (n < (std::uint64_t{1} << 32)) {
      bytes.resize(static_cast<std::size_t>(n));
      end = detail::read_exact(p[0], bytes.data(), bytes.size(), deadline);
    } else {
      end = detail::ReadEnd::closed;
    }
  }
  ::close(p[0]);
  if (end != detail::ReadEnd::complete) ::kill(pid, SIGKILL);  // a hung run, or a child that went astray
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (end == detail::ReadEnd::deadline) {
    b.problem = "the run did not finish within " + std::to_string(limit.count()) + " ms (hang)";
    return b;
  }
  if (end == detail::ReadEnd::closed) {
    b.problem = "the process running execute_parallel() died without answering: " +
                (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                     : "exit status " + std::to_string(WEXITSTATUS(status)));
    return b;
  }
  try {
    const pfp::Value out = pfp::decode(bytes);
    if (const pfp::Value* e = out.find("exception")) {
      b.problem = "execute_parallel() threw: " + e->as<std::string>();
      return b;
    }
    b.run_ms = out.at("run_ms").as<long long>();
    b.children_left = out.at("children_left").as<long long>();
    b.maxrss_growth_kb = out.at("maxrss_growth_kb").as<long long>();
    for (const pfp::Value& o : out.at("results").elements()) {
      Outcome r;
      r.name = o.at("name").as<std::string>();
      r.index = o.at("index").as<std::size_t>();
      r.status = static_cast<pfp::Status>(o.at("status").as<int>());
      r.result = o.at("result");
      r.error = o.at("error").as<std::string>();
      r.pid = o.at("pid").as<int>();
      r.attempts = o.at("attempts").as<unsigned>();
      b.results.push_back(std::move(r));
    }
    b.finished = true;
  } catch (const std::exception& e) {
    b.problem = std::string("could not decode the child's report: ") + e.what();
  }
  return b;
}

}  // namespace pfp_fault

#endif  // PFP_TESTS_FAULT_SUPPORT_HPP
