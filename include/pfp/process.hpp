#ifndef PFP_PROCESS_HPP
#define PFP_PROCESS_HPP

// Starting and ending worker processes. Fork hygiene lives here: the parent flushes stdio
// before fork; the child resets signal dispositions and mask, becomes its own process-group
// leader, dies with the parent, and never returns into the caller's stack.

#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <streambuf>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <stdio_ext.h>

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
/// (it runs after every function in a worker).
inline void flush_standard_streams() noexcept {
#if defined(__GLIBC__) || defined(__linux__)
  if (__fpending(stdout)) std::fflush(stdout);
  if (__fpending(stderr)) std::fflush(stderr);
#else
  std::fflush(stdout);
  std::fflush(stderr);
#endif
  try {
    // std::cout has its own buffer only after std::ios::sync_with_stdio(false) (or with a
    // buffer of the program's own put in): flushing an empty one costs a virtual call and more.
    if (PutArea::pending(std::cout.rdbuf())) std::cout.flush();
  } catch (...) {
  }
}

/// Flushes every stdio and iostream buffer so a forked child cannot print them a second time.
inline void flush_stdio() noexcept {
  std::fflush(nullptr);
  try {
    std::cout.flush();
    std::clog.flush();
    std::cerr.flush();
  } catch (...) {
  }
}

/// In a freshly forked child: default dispositions for every signal, an empty mask, no
/// alternate signal stack (the caller's belongs to the parent's memory layout, not ours).
inline void reset_signals_in_child() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
#if defined(NSIG)
  const int last = NSIG;
#else
  const int last = 65;
#endif
  for (int sig = 1; sig < last; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::sigaction(sig, &dfl, nullptr);  // fails harmlessly for numbers that are not signals
  }
  stack_t ss{};
  ss.ss_flags = SS_DISABLE;
  ::sigaltstack(&ss, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

/// Forks a child that runs body() and then leaves through _exit. In the child the descriptors
/// in close_in_child are closed first. Returns the child's pid; throws pfp::error if fork fails.
template <class Body>
pid_t fork_worker(Body&& body, const std::vector<int>& close_in_child) {
  flush_stdio();
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    reset_signals_in_child();
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
      ::_exit(126);
    }
    flush_stdio();
    ::_exit(0);
  }
  // Also set from the parent, so a kill of the group right after fork cannot miss the child.
  ::setpgid(pid, pid);
  return pid;
}

/// The live (non-zombie) descendants of root, from /proc. Empty where /proc is unavailable.
inline std::vector<pid_t> live_descendants(pid_t root) {
  std::vector<pid_t> found;
#if defined(__linux__)
  std::unordered_map<pid_t, std::vector<pid_t>> children;
  DIR* proc = ::opendir("/proc");
  if (!proc) return found;
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end) continue;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    char buf[512];
    ssize_t n = read_some(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so parse after the last ')'.
    const char* close_paren = std::strrchr(buf, ')');
    if (!close_paren) continue;
    char state = 0;
    long ppid = 0;
    if (std::sscanf(close_paren + 1, " %c %ld", &state, &ppid) != 2 || state == 'Z' || state == 'X') continue;
    children[static_cast<pid_t>(ppid)].push_back(static_cast<pid_t>(pid));
  }
  ::closedir(proc);
  std::vector<pid_t> todo{root};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    auto it = children.find(p);
    if (it == children.end()) continue;
    for (pid_t c : it->second) {
      found.push_back(c);
      todo.push_back(c);
    }
  }
#else
  (void)root;
#endif
  return found;
}

/// Kills a live worker with everything it started: its process group, and every descendant,
/// even those that left the group with setsid(). Descendants first, while the worker still holds
/// them as their (sub)reaper; repeated while new ones appear.
inline void kill_tree(pid_t root) noexcept {
  try {
    for (int round = 0; round < 8; ++round) {
      std::vector<pid_t> procs = live_descendants(root);
      if (procs.empty()) break;
      for (pid_t p : procs) ::kill(p, SIGKILL);
    }
  } catch (...) {  // out of memory while listing: the group kill below still happens
  }
  ::kill(-root, SIGKILL);
  ::kill(root, SIGKILL);
}

/// Whether pid has ended, without reaping it (so its pid and group id stay reserved).
inline bool has_exited(pid_t pid) noexcept {
  siginfo_t info{};
  for (;;) {
    int r = ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno == ECHILD;  // reaped by someone else: gone all the same
    return info.si_pid == pid;
  }
}

/// Reaps pid. If it has not ended within grace, kills its process group and reaps it then.
/// Returns the wait status, or -1 when it was reaped elsewhere (e.g. a SIGCHLD handler).
inline int reap(pid_t pid, std::chrono::milliseconds grace) noexcept {
  int status = 0;
  auto start = std::chrono::steady_clock::now();
  for (;;) {
    pid_t r = wait_pid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    auto waited = std::chrono::steady_clock::now() - start;
    if (waited >= grace) break;
    // A worker that is leaving normally is gone within microseconds: poll finely at first, so a
    // process-per-function run does not pay a millisecond per process.
    timespec pause{0, waited < std::chrono::milliseconds(2) ? 20'000L : 1'000'000L};
    ::nanosleep(&pause, nullptr);
  }
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  if (wait_pid(pid, &status, 0) == pid) return status;
  return -1;
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_PROCESS_HPP
