#ifndef PFP_DETAIL_PROCESS_HPP
#define PFP_DETAIL_PROCESS_HPP

// Starting and ending worker processes. Fork hygiene lives here: the parent flushes stdio
// before fork; the child resets signal dispositions and mask, becomes its own process-group
// leader, dies with the parent, and never returns into the caller's stack.

#include <pfp/detail/descendants.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <streambuf>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <stdio_ext.h>
#include <sys/ioctl.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include <poll.h>
#include <time.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

namespace pfp {
namespace detail {

/// Whether a stream buffer holds output it has not handed on yet (its put area is not empty).
/// Naming the protected pptr()/pbase() through a derived class is what C++ allows.
struct PutArea : std::streambuf {
  static bool pending(std::streambuf* b) noexcept {
    using Pointer = char* (std::streambuf::*)() const;
    const Pointer next = &PutArea::pptr, base = &PutArea::pbase;
    return b && (b->*next)() != (b->*base)();
  }
};

/// Flushes what a function printed to stdout and stderr, cheaply when there is nothing to flush
/// (it runs after every function in a worker). Returns whether there was anything to flush.
inline bool flush_standard_streams() noexcept {
  bool flushed = false;
#if defined(__GLIBC__)
  // __fpending() without the call for byte-oriented streams (this runs after every function):
  // glibc's FILE is public; wide-oriented ones keep their buffer elsewhere.
  auto pending = [](FILE* f) { return f->_mode > 0 ? __fpending(f) != 0 : f->_IO_write_ptr != f->_IO_write_base; };
  for (FILE* f : {stdout, stderr})
    if (pending(f)) {
      std::fflush(f);
      flushed = true;
    }
#elif defined(__linux__)
  for (FILE* f : {stdout, stderr})
    if (__fpending(f)) {
      std::fflush(f);
      flushed = true;
    }
#else
  std::fflush(stdout);
  std::fflush(stderr);
  flushed = true;
#endif
  try {
    // std::cout has its own buffer only after std::ios::sync_with_stdio(false) (or with a
    // buffer of the program's own put in): flushing an empty one costs a virtual call and more.
    if (PutArea::pending(std::cout.rdbuf())) {
      std::cout.flush();
      flushed = true;
    }
  } catch (...) {
  }
  return flushed;
}

/// Flushes every stdio and iostream buffer so a forked child cannot print them a second time.
inline void flush_stdio() noexcept {
  std::fflush(nullptr);
  try {
    // Only those with a buffer of their own that holds something: with sync_with_stdio(true) they
    // write straight through stdio, flushed just above.
    if (PutArea::pending(std::cout.rdbuf())) std::cout.flush();
    if (PutArea::pending(std::clog.rdbuf())) std::clog.flush();
    if (PutArea::pending(std::cerr.rdbuf())) std::cerr.flush();
  } catch (...) {
  }
}

/// What a forked child has to undo of the parent's signal state. Learned in the parent once per
/// run (64 queries), so that each child makes one system call per signal the parent actually
/// handles or ignores instead of one per signal number: those calls are most of a child's start-up.
struct SignalPlan {
  std::vector<int> reset;  // signals whose disposition (or flags) is not the default
  bool altstack = false;   // the calling thread has an alternate signal stack

  /// The calling thread's current signal state. Handlers installed after this call (by another
  /// thread, during the run) are not seen.
  static SignalPlan learn() {
    SignalPlan plan;
#if defined(NSIG)
    const int last = NSIG;
#else
    const int last = 65;
#endif
#if defined(SA_RESTORER)
    const auto internal = static_cast<decltype(sigaction::sa_flags)>(SA_RESTORER);
#elif defined(__linux__)
    // SA_RESTORER (from <asm/signal.h>, not <signal.h>): glibc sets it on every sigaction().
    const decltype(sigaction::sa_flags) internal = 0x04000000;
#else
    const decltype(sigaction::sa_flags) internal = 0;
#endif
    plan.reset.reserve(8);
    for (int sig = 1; sig < last; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      struct sigaction current {};
      if (::sigaction(sig, nullptr, &current) != 0) continue;  // not a signal number
      if (current.sa_handler != SIG_DFL || (current.sa_flags & ~internal) != 0) plan.reset.push_back(sig);
    }
    stack_t ss{};
    plan.altstack = ::sigaltstack(nullptr, &ss) == 0 && !(ss.ss_flags & SS_DISABLE);
    return plan;
  }
};

/// Ends a worker process at once, like _exit(), through a function bind_worker_calls() has bound.
[[noreturn]] inline void leave(int code) noexcept {
#if defined(__linux__)
  ::syscall(SYS_exit_group, code);
#endif
  ::_exit(code);
}

/// Binds, in the parent, the library functions every new worker calls, once per process. With lazy
/// binding (the default), a function the parent never called is looked up by the dynamic linker in
/// each child on first use: a walk over the libraries' symbol tables that costs every worker a few
/// microseconds and a dozen page faults. Each call below fails or does nothing.
inline void bind_worker_calls() noexcept {
  static std::atomic<bool> bound{false};
  if (bound.exchange(true)) return;
  sigset_t mask;
  ::sigprocmask(SIG_BLOCK, nullptr, &mask);
  [[maybe_unused]] pid_t parent = ::getppid();
#if defined(__linux__)
  int deathsig = 0;
  ::prctl(PR_GET_PDEATHSIG, &deathsig);
#endif
  int n = 0;
  [[maybe_unused]] int r = ::ioctl(-1, FIONREAD, &n);
  char c = 0;
  [[maybe_unused]] ssize_t io = ::read(-1, &c, 0);
  io = ::write(-1, &c, 0);
  r = ::close(-1);
  r = ::fcntl(-1, F_GETFL);
#if defined(__linux__)
  [[maybe_unused]] long id = ::syscall(SYS_getppid);  // leave() exits through syscall()
#endif
#if defined(__GLIBC__) || defined(__linux__)
  [[maybe_unused]] std::size_t pending = __fpending(stdout);
#endif
  try {
    char* volatile block = new char[1];  // volatile: not elided
    delete[] block;
    std::string grown;
    grown.resize(1, 'x');
    grown.resize(64, 'x');  // past the small-string buffer: allocation, mutate, fill
  } catch (...) {
  }
}

/// In a freshly forked child: default dispositions for every signal (for those in plan only, when
/// given), an empty mask, no alternate signal stack (the caller's belongs to the parent's memory
/// layout, not ours).
inline void reset_signals_in_child(const SignalPlan* plan = nullptr) noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  if (plan) {
    for (int sig : plan->reset) ::sigaction(sig, &dfl, nullptr);
  } else {
#if defined(NSIG)
    const int last = NSIG;
#else
    const int last = 65;
#endif
    for (int sig = 1; sig < last; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      ::sigaction(sig, &dfl, nullptr);  // fails harmlessly for numbers that are not signals
    }
  }
  if (!plan || plan->altstack) {
    stack_t ss{};
    ss.ss_flags = SS_DISABLE;
    ::sigaltstack(&ss, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

/// Forks a child that runs body() and then leaves through _exit. In the child the descriptors
/// in close_in_child are closed first, and the signal state is reset (what `signals` names, or
/// everything). Returns the child's pid and sets *pidfd to a pidfd naming it (-1 where the kernel
/// has none); throws pfp::error if fork fails.
template <class Body>
pid_t fork_worker(Body&& body, const std::vector<int>& close_in_child, const SignalPlan* signals, UniqueFd* pidfd) {
  flush_stdio();
  ForkRegistry::prepare();
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    ForkRegistry::enter_worker();
    reset_signals_in_child(signals);
    ::setpgid(0, 0);
#if defined(__linux__)
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    // Orphans of the function's processes (a daemonising double fork, say) are reparented to the
    // worker instead of init, so the parent can still find and kill them: see kill_tree().
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
#endif
    if (::getppid() != parent) ::_exit(127);  // the parent died before PDEATHSIG was armed
    for (int fd : close_in_child) ::close(fd);
    try {
      body();
    } catch (...) {
      flush_stdio();
      leave(126);
    }
    flush_stdio();
    leave(0);
  }
  // Opened before anything can reap the child (it has not run a function yet, so it cannot have
  // ended but by a signal from outside): from here on it is signalled through this, not its pid.
  *pidfd = UniqueFd(open_pidfd(pid));
  // Also set from the parent, so a kill of the group right after fork cannot miss the child.
  ::setpgid(pid, pid);
  return pid;
}

/// Kills a worker with everything it started: its descendants, those /proc shows while it lives
/// (descendants first, while it still holds them as their subreaper) and those the fork registry
/// noted (found even once it died and left them to init), its process group and itself. Nothing is
/// signalled by number once someone else has reaped the worker (its pid may be another's by then).
inline void kill_tree(pid_t root, int pidfd) noexcept {
  if (still_ours(root, pidfd)) kill_descendants(root);
  kill_noted(root);
  kill_group(root, pidfd);
}

/// Whether the child has ended, without reaping it (so its pid and group id stay reserved).
inline bool has_exited(pid_t pid, int pidfd) noexcept {
  siginfo_t info;
  if (wait_child(pid, pidfd, info, WEXITED | WNOHANG | WNOWAIT) < 0) return errno == ECHILD;  // reaped elsewhere
  return info.si_pid != 0;
}

/// Reaps the child (waits for it unless flags has WNOHANG) and frees its fork-registry entries.
/// Returns pid with *status set as waitpid() would, 0 if it is still running, or -1 if someone else
/// reaped it (e.g. a SIGCHLD handler of the caller's).
inline pid_t reap_child(pid_t pid, int pidfd, int* status, int flags = 0) noexcept {
  siginfo_t info;
  if (wait_child(pid, pidfd, info, WEXITED | flags) != 0) {
    ForkRegistry::forget(pid);
    return -1;
  }
  if (info.si_pid == 0) return 0;
  *status = info.si_code == CLD_EXITED ? (info.si_status & 0xff) << 8
                                       : (info.si_status & 0x7f) | (info.si_code == CLD_DUMPED ? 0x80 : 0);
  ForkRegistry::forget(pid);
  return pid;
}

/// Reaps pid. If it has not ended within grace, kills its process group and reaps it then.
/// Returns the wait status, or -1 when it was reaped elsewhere (e.g. a SIGCHLD handler).
inline int reap(pid_t pid, std::chrono::milliseconds grace, int pidfd) noexcept {
  int status = 0;
  auto start = std::chrono::steady_clock::now();
  for (;;) {
    pid_t r = reap_child(pid, pidfd, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    auto waited = std::chrono::steady_clock::now() - start;
    if (waited >= grace) break;
    // A worker that is leaving normally is gone within microseconds: poll finely at first, so a
    // process-per-function run does not pay a millisecond per process.
    timespec pause{0, waited < std::chrono::milliseconds(2) ? 20'000L : 1'000'000L};
    ::nanosleep(&pause, nullptr);
  }
  kill_group(pid, pidfd);
  if (reap_child(pid, pidfd, &status) == pid) return status;
  return -1;
}

/// Processes that are leaving on their own (a worker that has run its allowance): reaped once they
/// are gone, instead of waited for, so the parent goes on with the others meanwhile. Each holds
/// `Keep` (what must outlive the process) until it is reaped, then hands it to the caller. Each has
/// a pidfd to poll for its exit where the kernel has them; otherwise the caller polls briefly.
template <class Keep>
class Leaving {
 public:
  Leaving() = default;
  Leaving(const Leaving&) = delete;
  Leaving& operator=(const Leaving&) = delete;
  ~Leaving() { kill_all(); }

  /// pid (named by pidfd, if it is open) has `grace` to exit before its process group is killed.
  void add(pid_t pid, UniqueFd pidfd, Keep keep, std::chrono::milliseconds grace) {
    entries_.push_back(Entry{pid, std::chrono::steady_clock::now() + grace, std::move(pidfd), std::move(keep)});
  }
  bool empty() const noexcept { return entries_.empty(); }
  /// Processes not reaped yet (some may already have exited).
  std::size_t size() const noexcept { return entries_.size(); }
  /// Whether every one of them can be waited for with poll() (see append_poll_fds).
  bool pollable() const noexcept {
    for (const Entry& e : entries_)
      if (!e.pidfd) return false;
    return true;
  }
  /// Adds a POLLIN entry per pidfd: readable once that process has exited.
  void append_poll_fds(std::vector<pollfd>& fds) const {
    for (const Entry& e : entries_)
      if (e.pidfd) fds.push_back(pollfd{e.pidfd.get(), POLLIN, 0});
  }
  /// Adds this object's own descriptors (the pidfds) and visits each Keep (for the caller's).
  template <class Visit>
  void list_descriptors(std::vector<int>& fds, Visit&& visit) const {
    for (const Entry& e : entries_) {
      if (e.pidfd) fds.push_back(e.pidfd.get());
      visit(e.keep);
    }
  }
  /// The earliest deadline, if any.
  std::optional<std::chrono::steady_clock::time_point> next_deadline() const noexcept {
    std::optional<std::chrono::steady_clock::time_point> first;
    for (const Entry& e : entries_)
      if (!first || e.deadline < *first) first = e.deadline;
    return first;
  }

  /// Reaps those that have exited, and kills and reaps those past their grace; done(keep) for each.
  template <class Done>
  void collect(Done&& done) {
    const auto now = std::chrono::steady_clock::now();
    for (std::size_t k = 0; k < entries_.size();) {
      Entry& e = entries_[k];
      int status = 0;
      pid_t r = reap_child(e.pid, e.pidfd.get(), &status, WNOHANG);
      if (r == 0 && now >= e.deadline) {
        kill_group(e.pid, e.pidfd.get());
        r = reap_child(e.pid, e.pidfd.get(), &status);
      }
      if (r == 0) {
        ++k;
        continue;
      }
      done(std::move(e.keep));
      e = std::move(entries_.back());
      entries_.pop_back();
    }
  }

  /// Waits for all of them, each within what is left of its grace.
  template <class Done>
  void finish(Done&& done) {
    for (Entry& e : entries_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(e.deadline - std::chrono::steady_clock::now());
      reap(e.pid, std::max(left, std::chrono::milliseconds(0)), e.pidfd.get());
      done(std::move(e.keep));
    }
    entries_.clear();
  }

  /// Kills and reaps them all (a run left by an exception).
  void kill_all() noexcept {
    for (Entry& e : entries_) {
      kill_group(e.pid, e.pidfd.get());
      int ignored = 0;
      reap_child(e.pid, e.pidfd.get(), &ignored);
    }
    entries_.clear();
  }

 private:
  struct Entry {
    pid_t pid;
    std::chrono::steady_clock::time_point deadline;
    UniqueFd pidfd;
    Keep keep;
  };
  std::vector<Entry> entries_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_PROCESS_HPP
