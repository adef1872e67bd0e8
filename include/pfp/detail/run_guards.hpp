#ifndef PFP_DETAIL_RUN_GUARDS_HPP
#define PFP_DETAIL_RUN_GUARDS_HPP

// What the calling thread holds while a process run is in progress: the cancel line, the check
// for other threads before forking, SIGPIPE blocked, and SIGCHLD at its default disposition.

#include <pfp/detail/posix.hpp>
#include <pfp/detail/wake_pipe.hpp>
#include <pfp/error.hpp>
#include <pfp/options.hpp>

#include <atomic>
#include <cerrno>
#include <string>

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

namespace pfp {
namespace detail {


/// The wake-up line between MultiProcessor::cancel() and the pool's poll() loop: an atomic flag
/// and a self-pipe that exists only while a run is in progress, so a cancel from another thread
/// or a signal handler is seen at once and no descriptor outlives the run.
class CancelState {
 public:
  /// Called when a run starts. Throws pfp::error when out of descriptors.
  void open() {
    requested_.store(false);
    wake_.open();
    write_fd_.store(wake_.release_write());
  }
  /// Called when the run ends; waits out a request() that is writing right now.
  void close() noexcept {
    int fd = write_fd_.exchange(-1);
    while (writers_.load() != 0) sched_yield();
    if (fd >= 0) ::close(fd);
    wake_.close();
  }
  /// Async-signal-safe and thread-safe: atomic operations and at most one write().
  void request() noexcept {
    writers_.fetch_add(1);
    requested_.store(true);
    WakePipe::ring_fd(write_fd_.load());
    writers_.fetch_sub(1);
  }
  bool requested() const noexcept { return requested_.load(); }
  int wake_fd() const noexcept { return wake_.read_fd(); }

 private:
  std::atomic<bool> requested_{false};
  std::atomic<int> write_fd_{-1};
  std::atomic<int> writers_{0};
  WakePipe wake_;  // its write end is write_fd_, closed by close() once no request() uses it
};

/// Threads of this process, or 0 where that cannot be told.
inline std::size_t thread_count() noexcept {
  DIR* dir = ::opendir("/proc/self/task");
  if (!dir) return 0;
  std::size_t n = 0;
  while (dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n;
}

inline void check_threads(const Options& opt) {
  if (opt.threads == ThreadPolicy::allow) return;
  std::size_t n = thread_count();
  if (n <= 1) return;
  std::string msg = "pfp: execute_parallel() was called while this process runs " + std::to_string(n) +
                    " threads. fork() copies only the calling thread, so a lock another thread holds (in malloc, a "
                    "logger, ...) can deadlock a worker. Start the run before creating threads, or set "
                    "Options::threads = pfp::ThreadPolicy::allow if the other threads hold no such locks.";
  if (opt.threads == ThreadPolicy::refuse) throw error(msg);
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    msg += " (warning shown once)\n";
    [[maybe_unused]] bool ignored = write_all(STDERR_FILENO, msg.data(), msg.size());
  }
}

// SIGPIPE is blocked in the calling thread while the pool runs, so writing to a dead worker's
// task pipe yields EPIPE instead of killing the user's process; the pending signal is consumed.
class SigpipeBlock {
 public:
  SigpipeBlock() noexcept {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old_);
  }
  ~SigpipeBlock() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

  static void consume_pending() noexcept {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    timespec zero{0, 0};
#if defined(__linux__)
    while (sigtimedwait(&pipe_only, nullptr, &zero) == SIGPIPE) {
    }
#else
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE)) {
      int sig;
      sigwait(&pipe_only, &sig);
    }
#endif
  }

 private:
  sigset_t old_{};
};

// With SIGCHLD ignored the kernel reaps children itself and waitpid() cannot report how a worker
// died (and blocks until every child is gone). The default disposition is restored for the run.
class SigchldDefault {
 public:
  SigchldDefault() noexcept {
    struct sigaction current {};
    if (::sigaction(SIGCHLD, nullptr, &current) == 0 &&
        (current.sa_handler == SIG_IGN || (current.sa_flags & SA_NOCLDWAIT))) {
      old_ = current;
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      changed_ = ::sigaction(SIGCHLD, &dfl, nullptr) == 0;
    }
  }
  ~SigchldDefault() {
    if (changed_) ::sigaction(SIGCHLD, &old_, nullptr);
  }
  SigchldDefault(const SigchldDefault&) = delete;
  SigchldDefault& operator=(const SigchldDefault&) = delete;

 private:
  struct sigaction old_ {};
  bool changed_ = false;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_RUN_GUARDS_HPP
