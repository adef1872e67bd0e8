// What a worker started dies with it, and pfp never signals a process that is not its own: a
// grandchild that left with setsid() before its worker crashed (its children go to init, where
// /proc no longer tells they descend from the worker); a caller's SIGCHLD handler that reaps pfp's
// workers with waitpid(-1), after which their pids may name other processes.
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "test_support.hpp"

using Catch::Matchers::Contains;
using pfp::Args;
using pfp::MultiProcessor;
using pfp::Options;
using pfp::Result;
using pfp::Status;
using pfp::Value;
using namespace pfp_test;

namespace {

enum class Ending { segv, abort, exit3, sigkill, timeout };

const char* name_of(Ending e) {
  switch (e) {
    case Ending::segv: return "SIGSEGV";
    case Ending::abort: return "abort()";
    case Ending::exit3: return "_exit(3)";
    case Ending::sigkill: return "SIGKILL to itself";
    case Ending::timeout: return "timeout";
  }
  return "?";
}

// Forks a grandchild that leaves the worker's session and group with setsid() (with `daemon`, the
// grandchild forks once more and exits, so the one left is an orphan the worker had adopted),
// writes the survivor's pid on report_fd, and sleeps 30 s. Once the pid is written, the function
// ends as `how` says.
struct StartsDetachedGrandchild {
  int report_fd;
  Ending how;
  bool daemon;

  Value operator()(const Value&, const Args&) const {
    int ready[2];
    if (pipe(ready) != 0) return -1;
    const pid_t pid = fork();
    if (pid == 0) {
      ::close(ready[0]);
      setsid();
      if (daemon && fork() != 0) _exit(0);
      const std::int32_t me = getpid();
      if (write(report_fd, &me, sizeof me) != sizeof me) _exit(1);
      char c = 1;
      if (write(ready[1], &c, 1) != 1) _exit(1);
      for (int i = 0; i < 300; ++i) sleep_ms(100);
      _exit(0);
    }
    ::close(ready[1]);
    char c = 0;
    while (read(ready[0], &c, 1) < 0 && errno == EINTR) {
    }
    if (daemon) sleep_ms(50);  // the intermediate process has exited: the survivor is the worker's
    switch (how) {
      case Ending::segv: {
        volatile int* volatile p = nullptr;
        *p = 1;
        break;
      }
      case Ending::abort: std::abort();
      case Ending::exit3: _exit(3);
      case Ending::sigkill: raise(SIGKILL); break;
      case Ending::timeout: break;
    }
    for (int i = 0; i < 100; ++i) sleep_ms(100);
    return 0;
  }
};

// The pids written on fd within `timeout` (the read end is non-blocking).
std::vector<pid_t> read_pids(int fd, ms timeout) {
  std::vector<pid_t> pids;
  const auto deadline = Clock::now() + timeout;
  std::int32_t pid = 0;
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    const ssize_t n = read(fd, &pid, sizeof pid);
    if (n == sizeof pid) return {static_cast<pid_t>(pid)};
  }
  return pids;
}

}  // namespace

TEST_CASE("a grandchild that left with setsid() dies with its worker when that worker crashes or times out",
          "[reaping]") {
  for (bool daemon : {false, true}) {
    for (Ending how : {Ending::segv, Ending::abort, Ending::exit3, Ending::sigkill, Ending::timeout}) {
      INFO((daemon ? "double fork, " : "one fork, ") << "the worker ends by " << name_of(how));
      int report[2];
      REQUIRE(pipe2(report, O_CLOEXEC | O_NONBLOCK) == 0);
      // The timeout is long enough for the fork and setsid() to happen first on a loaded machine.
      Options o = opts(1, 0, how == Ending::timeout ? 2000 : 20000);
      MultiProcessor<> mp(Value{}, o);
      mp.register_function("starts", StartsDetachedGrandchild{report[1], how, daemon});
      mp.register_function("after", [](const Value&, const Args&) { return 7; });
      const auto& rs = mp.execute_parallel();
      const std::vector<pid_t> gc = read_pids(report[0], ms(5000));
      ::close(report[0]);
      ::close(report[1]);
      REQUIRE(rs.size() == 2);
      INFO(describe(rs[0]));
      CHECK(rs[0].status == (how == Ending::timeout ? Status::timed_out : Status::crashed));
      CHECK(rs[1].ok());
      REQUIRE(gc.size() == 1);
      CAPTURE(gc[0]);
      // Gone (or a zombie waiting for whoever adopted it): kill(pid, 0) and /proc both say so.
      const bool gone = wait_until([&] { return !pid_running(gc[0]); }, ms(5000));
      CHECK(gone);
      if (!gone) kill(gc[0], SIGKILL);
    }
  }
}

namespace {

// A caller's SIGCHLD handler that reaps every child with waitpid(-1). Right after reaping one of
// pfp's workers it starts a decoy under the same pid where the kernel lets it (ns_last_pid): a
// process-group leader, as a newer worker or a shell job would be, that must outlive the run.
constexpr int max_decoys = 256;
pid_t decoys[max_decoys];
std::atomic<int> decoy_count{0};
std::atomic<int> decoys_dead{0};
std::atomic<int> reaped_by_handler{0};
volatile sig_atomic_t make_decoys = 0;

bool is_decoy(pid_t pid) {
  const int n = decoy_count.load();
  for (int k = 0; k < n; ++k)
    if (decoys[k] == pid) return true;
  return false;
}

#if defined(__SANITIZE_THREAD__)
#define PFP_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PFP_TEST_TSAN 1
#endif
#endif

#if defined(PFP_TEST_TSAN)
void start_decoy(pid_t) {}  // TSan's fork() cannot run in a signal handler: only the reaping is tested there
#else
void start_decoy(pid_t pid) {
  const int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  char text[16];
  int n = 0;
  char digits[16];
  for (unsigned long v = static_cast<unsigned long>(pid - 1); v; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
  for (int k = 0; k < n; ++k) text[k] = digits[n - 1 - k];
  const bool set = write(fd, text, static_cast<std::size_t>(n)) == n;
  close(fd);
  if (!set) return;
  const pid_t d = fork();
  if (d == 0) {
    for (int f = 3; f < 1024; ++f) close(f);
    setpgid(0, 0);
    for (;;) pause();
  }
  if (d <= 0) return;
  const int k = decoy_count.load();
  if (d != pid || k >= max_decoys) {  // someone else took the pid first: not a decoy
    kill(d, SIGKILL);
    return;
  }
  decoys[k] = d;
  decoy_count.store(k + 1);
}
#endif

void reap_everything(int) {
  const int saved = errno;
  for (;;) {
    int status = 0;
    const pid_t p = waitpid(-1, &status, WNOHANG);
    if (p <= 0) break;
    if (is_decoy(p)) {
      decoys_dead.fetch_add(1);
      continue;
    }
    reaped_by_handler.fetch_add(1);
    if (make_decoys) start_decoy(p);
  }
  errno = saved;
}

}  // namespace

TEST_CASE("a SIGCHLD handler that reaps with waitpid(-1): every Result arrives, nothing foreign is signalled",
          "[reaping]") {
  struct sigaction act {}, old {};
  act.sa_handler = reap_everything;
  act.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigemptyset(&act.sa_mask);
  REQUIRE(sigaction(SIGCHLD, &act, &old) == 0);
  struct Restore {
    struct sigaction old;
    ~Restore() {
      make_decoys = 0;
      sigaction(SIGCHLD, &old, nullptr);
      for (int k = 0; k < decoy_count.load(); ++k) kill(decoys[k], SIGKILL);
      for (int k = 0; k < decoy_count.load(); ++k) waitpid(decoys[k], nullptr, 0);
      decoy_count.store(0);
    }
  } restore{old};
  decoys_dead.store(0);
  reaped_by_handler.store(0);
  make_decoys = 1;
  for (unsigned max_tasks : {0u, 1u}) {  // workers that crash; and workers that also retire after each function
    INFO("max_tasks_per_worker " << max_tasks);
    MultiProcessor<> mp(Value{}, opts(2, max_tasks, 2000));  // generous: an abort() under a sanitizer is slow
    for (int i = 0; i < 24; ++i) {
      switch (i % 4) {
        case 0: mp.register_function("exit3", [](const Value&, const Args&) -> Value { _exit(3); }); break;
        case 1: mp.register_function("abort", [](const Value&, const Args&) -> Value { std::abort(); }); break;
        case 2: mp.register_function("sleeps", [](const Value&, const Args&) { sleep_ms(30000); return 0; }); break;
        default: mp.register_function("good", [i](const Value&, const Args&) { return i; }); break;
      }
    }
    const auto& rs = mp.execute_parallel();
    REQUIRE(rs.size() == 24);
    for (const Result& r : rs) {
      INFO(describe(r));
      switch (r.index % 4) {
        case 0:
        case 1: CHECK(r.status == Status::crashed); break;
        case 2: CHECK(r.status == Status::timed_out); break;
        default:
          CHECK(r.ok());
          CHECK(r.result.as<int>() == static_cast<int>(r.index));
      }
    }
  }
  make_decoys = 0;
  const int decoys_made = decoy_count.load();
  INFO("workers reaped by the handler " << reaped_by_handler.load() << ", decoys under their pids " << decoys_made);
  CHECK(reaped_by_handler.load() > 0);
  if (decoys_made == 0) WARN("no decoy could take a reaped worker's pid (ns_last_pid not writable?): only the Results were checked");
  CHECK(decoys_dead.load() == 0);
  for (int k = 0; k < decoys_made; ++k) {
    INFO("decoy " << decoys[k]);
    CHECK(pid_running(decoys[k]));
  }
}
