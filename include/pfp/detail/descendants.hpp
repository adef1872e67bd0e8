#ifndef PFP_DETAIL_DESCENDANTS_HPP
#define PFP_DETAIL_DESCENDANTS_HPP

// Finding and signalling what a worker started, and the workers themselves, without ever hitting
// an unrelated process. Two dangers: a worker that died has left its children to init, where /proc
// no longer tells they were its (the fork registry below remembers them); and a pid that someone
// else reaped (a SIGCHLD handler of the caller's calling waitpid(-1)) may name another process by
// now (pidfds name a process, not a number; without them only pids pfp still owns are signalled).

#include <pfp/detail/posix.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <new>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

namespace pfp {
namespace detail {

/// Test hook: false makes open_pidfd() fail, as on kernels before 5.3.
inline bool use_pidfds = true;

/// A descriptor that names pid for as long as it is open, even once the process is reaped and its
/// number reused (Linux 5.3+); it becomes readable when the process has exited. -1 without.
inline int open_pidfd(pid_t pid) noexcept {
  if (!use_pidfds || pid <= 0) return -1;
#if defined(__linux__)
#if defined(SYS_pidfd_open)
  const long nr = SYS_pidfd_open;
#else
  const long nr = 434;  // the same on every architecture
#endif
  const long fd = ::syscall(nr, pid, 0);  // close-on-exec by definition
  if (fd >= 0) return static_cast<int>(fd);
#endif
  return -1;
}

/// Sends sig to the process pidfd names (nothing if it has been reaped). False if the kernel has no
/// pidfd_send_signal (then the caller falls back to the pid).
inline bool pidfd_signal(int pidfd, int sig) noexcept {
#if defined(__linux__)
#if defined(SYS_pidfd_send_signal)
  const long nr = SYS_pidfd_send_signal;
#else
  const long nr = 424;  // the same on every architecture
#endif
  return ::syscall(nr, pidfd, sig, nullptr, 0) == 0 || errno != ENOSYS;
#else
  (void)pidfd;
  (void)sig;
  return false;
#endif
}

/// waitid() on the child pidfd names (P_PIDFD, Linux 5.4+), or on pid where there is no pidfd or
/// the kernel does not know P_PIDFD. Retried on EINTR.
inline int wait_child(pid_t pid, int pidfd, siginfo_t& info, int flags) noexcept {
  for (;;) {
    info = siginfo_t{};
    int r = pidfd >= 0 ? ::waitid(static_cast<idtype_t>(3 /* P_PIDFD */), static_cast<id_t>(pidfd), &info, flags) : -1;
    if (pidfd < 0 || (r < 0 && errno == EINVAL)) r = ::waitid(P_PID, static_cast<id_t>(pid), &info, flags);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/// Whether this process still owns the child (nobody has reaped it yet): until then neither its
/// pid nor its process-group id can name another process.
inline bool still_ours(pid_t pid, int pidfd) noexcept {
  siginfo_t info;
  return pid > 0 && wait_child(pid, pidfd, info, WEXITED | WNOHANG | WNOWAIT) == 0;
}

/// Sends sig to a child of this process through its pidfd, or by pid only while it is still ours.
inline void signal_child(pid_t pid, int pidfd, int sig) noexcept {
  if (pidfd >= 0 && pidfd_signal(pidfd, sig)) return;
  if (still_ours(pid, -1)) ::kill(pid, sig);
}

/// SIGKILL to a worker and its process group (it leads one of its own). The group is signalled
/// only while the worker is still ours: once someone else reaped it, the number may lead another
/// group (a newer worker's, say).
inline void kill_group(pid_t pid, int pidfd) noexcept {
  if (still_ours(pid, pidfd)) ::kill(-pid, SIGKILL);
  signal_child(pid, pidfd, SIGKILL);
}

/// What /proc/<pid>/stat says of a process.
struct ProcStat {
  pid_t ppid = 0;
  char state = 0;
  unsigned long long start = 0;  // clock ticks after boot: with the pid, names one process
};

/// Parses /proc/<pid>/stat (or /proc/self/stat for pid 0) with async-signal-safe calls only.
inline bool read_proc_stat(pid_t pid, ProcStat& out) noexcept {
#if defined(__linux__)
  char path[64] = "/proc/self/stat";
  if (pid > 0) {
    // "/proc/<pid>/stat" without snprintf (not async-signal-safe)
    char digits[16];
    int n = 0;
    for (unsigned long v = static_cast<unsigned long>(pid); v && n < 15; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
    char* p = path + 6;
    while (n) *p++ = digits[--n];
    std::memcpy(p, "/stat", 6);
  }
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  const ssize_t n = read_some(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  // "pid (comm) state ppid pgrp ... starttime(22nd) ...": comm may hold spaces and parentheses.
  const char* p = std::strrchr(buf, ')');
  if (!p || p[1] != ' ') return false;
  p += 2;
  out.state = *p;
  auto number = [](const char*& q) {
    unsigned long long v = 0;
    bool negative = *q == '-';
    if (negative) ++q;
    while (*q >= '0' && *q <= '9') v = v * 10 + static_cast<unsigned long long>(*q++ - '0');
    return negative ? 0ULL : v;
  };
  for (int field = 3; field <= 22; ++field) {  // p is at field `field`
    if (field == 4) {
      out.ppid = static_cast<pid_t>(number(p));
    } else if (field == 22) {
      out.start = number(p);
      return true;
    } else {
      while (*p && *p != ' ') ++p;
    }
    if (*p != ' ') return false;
    ++p;
  }
  return false;
#else
  (void)pid;
  (void)out;
  return false;
#endif
}

/// The processes forked inside workers and their descendants, noted by each in the one table the
/// parent and all of them share (an anonymous shared mapping made before the first worker). When a
/// worker dies its children go to init, and /proc no longer says they descend from it; this table
/// still does, so that a crashed worker can take them with it. What fork() starts is noted (a
/// pthread_atfork handler in the child); posix_spawn() and exec'd programs run no such handler.
class ForkRegistry {
 public:
  struct Noted {
    pid_t pid;
    unsigned long long start;
  };

  /// In the parent, before it forks a worker. Without the mapping nothing is noted.
  static void prepare() noexcept {
    static std::atomic<bool> done{false};
    if (done.exchange(true)) return;  // (in a worker: the table it inherited stays in use)
    void* p = ::mmap(nullptr, sizeof(Table), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    table() = new (p) Table();
    ::pthread_atfork(nullptr, nullptr, &note_child);
  }

  /// In a new worker: what it forks from now on is noted as its own.
  static void enter_worker() noexcept { self() = ::getpid(); }

  /// In the parent: the processes noted for worker, and those entries freed.
  static std::vector<Noted> take(pid_t worker) {
    std::vector<Noted> found;
    Table* t = table();
    if (!t || t->used.load(std::memory_order_acquire) == 0) return found;
    for (Entry& e : t->entries) {
      if (e.worker.load(std::memory_order_acquire) != worker) continue;
      const pid_t pid = e.pid.load(std::memory_order_acquire);
      if (pid > 0) found.push_back(Noted{pid, e.start.load(std::memory_order_relaxed)});
      e.pid.store(0, std::memory_order_relaxed);
      e.worker.store(0, std::memory_order_release);
      t->used.fetch_sub(1, std::memory_order_acq_rel);
    }
    return found;
  }

  /// In the parent, once worker is reaped: its entries are freed, so a later worker that gets
  /// the same pid does not inherit them.
  static void forget(pid_t worker) noexcept {
    Table* t = table();
    if (!t || t->used.load(std::memory_order_acquire) == 0) return;  // no worker forked anything
    try {
      take(worker);
    } catch (...) {
    }
  }

 private:
  static constexpr std::size_t capacity = 1024;
  struct Entry {
    std::atomic<std::int32_t> worker{0};  // 0: free
    std::atomic<std::int32_t> pid{0};     // 0: being written
    std::atomic<unsigned long long> start{0};
  };
  struct Table {
    std::atomic<std::uint32_t> used{0};
    Entry entries[capacity];
  };
  static_assert(std::atomic<std::int32_t>::is_always_lock_free && std::atomic<unsigned long long>::is_always_lock_free,
                "shared between processes: only lock-free atomics are address-free");

  static Table*& table() noexcept {
    static Table* t = nullptr;
    return t;
  }
  static pid_t& self() noexcept {
    static pid_t worker = 0;  // 0: not in a worker
    return worker;
  }

  // The child side of every fork(): async-signal-safe calls only (the parent may have threads).
  static void note_child() noexcept {
    Table* t = table();
    const pid_t worker = self();
    if (!t || worker == 0) return;
    ProcStat st;
    if (!read_proc_stat(0, st)) return;
    for (Entry& e : t->entries) {
      std::int32_t expected = 0;
      if (e.worker.load(std::memory_order_relaxed) != 0 ||
          !e.worker.compare_exchange_strong(expected, worker, std::memory_order_acq_rel))
        continue;
      t->used.fetch_add(1, std::memory_order_acq_rel);
      e.start.store(st.start, std::memory_order_relaxed);
      e.pid.store(::getpid(), std::memory_order_release);
      return;
    }
    // Full: entries of this worker's processes that are gone make room.
    for (Entry& e : t->entries) {
      const pid_t pid = e.pid.load(std::memory_order_acquire);
      if (e.worker.load(std::memory_order_acquire) != worker || pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
      e.pid.store(0, std::memory_order_relaxed);
      e.start.store(st.start, std::memory_order_relaxed);
      e.pid.store(::getpid(), std::memory_order_release);
      return;
    }
  }
};

/// A process and its parent, as /proc showed them.
struct ProcLink {
  pid_t pid;
  pid_t ppid;
};

/// The live (non-zombie) descendants of root, from /proc. Empty where /proc is unavailable.
inline std::vector<ProcLink> live_descendants(pid_t root) {
  std::vector<ProcLink> found;
#if defined(__linux__)
  std::unordered_map<pid_t, std::vector<pid_t>> children;
  DIR* proc = ::opendir("/proc");
  if (!proc) return found;
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end) continue;
    ProcStat st;
    if (!read_proc_stat(static_cast<pid_t>(pid), st) || st.state == 'Z' || st.state == 'X') continue;
    children[st.ppid].push_back(static_cast<pid_t>(pid));
  }
  ::closedir(proc);
  std::vector<pid_t> todo{root};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    auto it = children.find(p);
    if (it == children.end()) continue;
    for (pid_t c : it->second) {
      found.push_back(ProcLink{c, p});
      todo.push_back(c);
    }
  }
#else
  (void)root;
#endif
  return found;
}

/// SIGKILL to pid if it is still the process /proc described (its parent is `parent`, or it
/// started at `start`). With a pidfd opened first the check is exact: if the process it names is
/// alive when signalled, it was alive when its stat was read, so that stat was its own.
inline void kill_if_still(pid_t pid, pid_t parent, unsigned long long start = 0) noexcept {
  UniqueFd fd(open_pidfd(pid));
  ProcStat st;
  if (!read_proc_stat(pid, st) || (start ? st.start != start : st.ppid != parent)) return;
  if (fd && pidfd_signal(fd.get(), SIGKILL)) return;
  ::kill(pid, SIGKILL);
}

/// Kills every descendant of root that /proc shows (not root itself), repeated while new ones
/// appear: descendants first, while root still holds them as their (sub)reaper.
inline void kill_descendants(pid_t root) noexcept {
  try {
    for (int round = 0; round < 8; ++round) {
      std::vector<ProcLink> procs = live_descendants(root);
      if (procs.empty()) break;
      for (const ProcLink& p : procs) kill_if_still(p.pid, p.ppid);
    }
  } catch (...) {  // out of memory while listing
  }
}

/// Kills the processes the fork registry noted for worker (each only if it is still the process
/// noted) with their descendants.
inline void kill_noted(pid_t worker) noexcept {
  try {
    for (const ForkRegistry::Noted& n : ForkRegistry::take(worker)) {
      ProcStat st;
      if (!read_proc_stat(n.pid, st) || st.start != n.start) continue;  // gone; the number may be another's now
      kill_descendants(n.pid);
      kill_if_still(n.pid, 0, n.start);
    }
  } catch (...) {
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_DESCENDANTS_HPP
