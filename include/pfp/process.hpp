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
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

namespace pfp {
namespace detail {

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
#endif
    if (::getppid() != parent) ::_exit(127);  // the parent died before PDEATHSIG was armed
    for (int fd : close_in_child) ::close(fd);
    try {
      body();
    } catch (...) {
      ::_exit(126);
    }
    ::_exit(0);
  }
  // Also set from the parent, so a kill of the group right after fork cannot miss the child.
  ::setpgid(pid, pid);
  return pid;
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
  auto deadline = std::chrono::steady_clock::now() + grace;
  for (;;) {
    pid_t r = wait_pid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) break;
    ::poll(nullptr, 0, 1);
  }
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  if (wait_pid(pid, &status, 0) == pid) return status;
  return -1;
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_PROCESS_HPP
