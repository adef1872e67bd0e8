#ifndef PFP_DETAIL_POSIX_HPP
#define PFP_DETAIL_POSIX_HPP

// Thin, EINTR-safe wrappers over the POSIX calls pfp makes, and the text it derives from them.

#include <pfp/error.hpp>

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>
#include <utility>

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace pfp {
namespace detail {

/// A hint that memory at p will be read soon; never faults, whatever p is.
inline void prefetch(const void* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

/// Fresh memory the parent is about to fill: transparent huge pages mean 512 times fewer page
/// faults (and, for memory a fork shares, 512 times fewer entries to copy). A hint, for buffers of
/// min_bytes or more; kernels without huge pages ignore it.
inline void advise_huge_pages(void* p, std::size_t n, std::size_t min_bytes = std::size_t{32} << 20) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t huge = std::uintptr_t{2} << 20;
  if (n < min_bytes) return;
  const auto begin = reinterpret_cast<std::uintptr_t>(p), end = begin + n;
  const std::uintptr_t hb = (begin + huge - 1) & ~(huge - 1), he = end & ~(huge - 1);
  if (he > hb) ::madvise(reinterpret_cast<void*>(hb), he - hb, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
  (void)min_bytes;
#endif
}

/// Keeps the whole pages of a buffer out of the processes forked while it lives (MADV_DONTFORK):
/// memory only the parent writes during a run then costs no copy-on-write fault per page, and no
/// page-table copy per fork. The pages are handed back to fork (MADV_DOFORK) when this ends, before
/// the buffer can be freed and its pages reused for something a child needs. Children must never
/// touch the buffer. A no-op where the advice does not exist, and for small buffers.
class HiddenFromForks {
 public:
  HiddenFromForks(void* p, std::size_t n) noexcept {
#if defined(__linux__) && defined(MADV_DONTFORK) && defined(MADV_DOFORK)
    constexpr std::size_t min_bytes = std::size_t{256} << 10;
    const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = reinterpret_cast<std::uintptr_t>(p), end = begin + n;
    const std::uintptr_t pb = (begin + page - 1) & ~(page - 1), pe = end & ~(page - 1);
    if (n >= min_bytes && pe > pb && ::madvise(reinterpret_cast<void*>(pb), pe - pb, MADV_DONTFORK) == 0) {
      begin_ = reinterpret_cast<void*>(pb);
      size_ = pe - pb;
    }
#else
    (void)p;
    (void)n;
#endif
  }
  HiddenFromForks(const HiddenFromForks&) = delete;
  HiddenFromForks& operator=(const HiddenFromForks&) = delete;
  ~HiddenFromForks() { reveal(); }
  /// Forks copy the pages again from now on.
  void reveal() noexcept {
#if defined(__linux__) && defined(MADV_DONTFORK) && defined(MADV_DOFORK)
    if (begin_) ::madvise(begin_, size_, MADV_DOFORK);
#endif
    begin_ = nullptr;
  }

 private:
  void* begin_ = nullptr;
  std::size_t size_ = 0;
};

inline std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

/// errno of the last system call throw_errno() reported in this thread, so a caller can tell a
/// shortage the system may soon relieve (EAGAIN, EMFILE, ...) from a permanent failure.
inline thread_local int last_failed_errno = 0;

[[noreturn]] inline void throw_errno(const std::string& what, int err = errno) {
  last_failed_errno = err;
  throw error("pfp: " + what + " failed: " + errno_text(err));
}

/// Owns one file descriptor; closes it once.
class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    // close() is not retried on EINTR: on Linux the descriptor is released either way.
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

/// A close-on-exec pipe, both ends non-blocking if asked. Throws pfp::error when the system is out
/// of descriptors.
inline Pipe make_pipe(bool nonblocking = false) {
  int fds[2];
#if defined(__linux__)
  if (::pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)) != 0) throw_errno("pipe2");
#else
  if (::pipe(fds) != 0) throw_errno("pipe");
  for (int fd : fds) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (nonblocking) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
#endif
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

inline void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw_errno("fcntl(O_NONBLOCK)");
}

/// Writes all n bytes, retrying on EINTR and short writes. Returns false with errno set on failure.
inline bool write_all(int fd, const void* data, std::size_t n) noexcept {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

/// Reads up to n bytes, retrying on EINTR. Returns what read() returns.
inline ssize_t read_some(int fd, void* data, std::size_t n) noexcept {
  for (;;) {
    ssize_t r = ::read(fd, data, n);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/// waitpid() retried on EINTR.
/// poll(), also when the descriptors watched outnumber RLIMIT_NOFILE (then poll() itself refuses
/// with EINVAL, e.g. after the program lowered the limit mid-run): the set is then looked at in
/// slices the limit allows, every millisecond until one is ready or timeout_ms passed. Returns
/// poll()'s count, or -1 with errno for any other failure (EINTR included).
inline int poll_fds(pollfd* fds, std::size_t n, int timeout_ms) noexcept {
  int rc = ::poll(fds, static_cast<nfds_t>(n), timeout_ms);
  if (rc >= 0 || errno != EINVAL || n == 0) return rc;
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= n || lim.rlim_cur == 0) return rc;
  const std::size_t slice = static_cast<std::size_t>(lim.rlim_cur);
  for (int waited = 0;; ++waited) {
    int ready = 0;
    for (std::size_t at = 0; at < n; at += slice) {
      const std::size_t len = n - at < slice ? n - at : slice;
      const int r = ::poll(fds + at, static_cast<nfds_t>(len), 0);
      if (r < 0) return r;
      ready += r;
    }
    if (ready > 0 || (timeout_ms >= 0 && waited >= timeout_ms)) return ready;
    timespec pause{0, 1'000'000L};
    ::nanosleep(&pause, nullptr);
  }
}

inline pid_t wait_pid(pid_t pid, int* status, int flags) noexcept {
  for (;;) {
    pid_t r = ::waitpid(pid, status, flags);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/// "SIGSEGV", "SIGKILL", ... or "signal N" for one without a portable name.
inline std::string signal_name(int sig) {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGCHLD: return "SIGCHLD";
    case SIGCONT: return "SIGCONT";
    case SIGSTOP: return "SIGSTOP";
    case SIGTSTP: return "SIGTSTP";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    case SIGURG: return "SIGURG";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGVTALRM: return "SIGVTALRM";
    case SIGPROF: return "SIGPROF";
    case SIGSYS: return "SIGSYS";
    default: return "signal " + std::to_string(sig);
  }
}

/// What a wait status means, in the words a Result's error uses.
inline std::string describe_wait_status(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* text = ::strsignal(sig);
    return "killed by signal " + signal_name(sig) + (text ? std::string(" (") + text + ")" : std::string());
  }
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  return "stopped with wait status " + std::to_string(status);
}

inline std::string demangle(const char* name) {
  int rc = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &rc), std::free);
  return rc == 0 && out ? std::string(out.get()) : std::string(name);
}

/// The type and message of the exception being handled, e.g. "std::runtime_error: boom".
/// Call only inside a catch block.
inline std::string describe_current_exception() {
  std::type_info* type = abi::__cxa_current_exception_type();
  std::string name = type ? demangle(type->name()) : std::string("unknown exception");
  try {
    throw;
  } catch (const error& e) {
    // pfp's internal refinements of pfp::error are no part of the API: name the public type.
    if (name.rfind("pfp::detail::", 0) == 0) name = "pfp::error";
    return name + ": " + e.what();
  } catch (const std::exception& e) {
    return name + ": " + e.what();
  } catch (const std::string& s) {
    return "std::string: " + s;
  } catch (const char* s) {
    return std::string("const char*: ") + (s ? s : "(null)");
  } catch (...) {
    return name + " (not derived from std::exception)";
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POSIX_HPP
