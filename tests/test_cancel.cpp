// MultiProcessor::cancel(): from another thread, from a signal handler, with grandchildren of the
// function, without a run in progress, and a run after a cancelled run. Linux only (uses /proc).
#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <new>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using std::chrono::milliseconds;
using namespace pfp_test;

/// An anonymous MAP_SHARED page holding T: what a worker (or its children) store there, the test sees.
template <class T>
class Shared {
 public:
  Shared() {
    void* p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    ptr_ = new (p) T();
  }
  ~Shared() {
    ptr_->~T();
    munmap(static_cast<void*>(ptr_), sizeof(T));
  }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;
  T& operator*() const { return *ptr_; }
  T* operator->() const { return ptr_; }
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
};

static_assert(std::atomic<int>::is_always_lock_free, "the tests share atomics between processes");
static_assert(std::atomic<long long>::is_always_lock_free, "the signal handler stores a 64-bit atomic");

/// Joins a thread on scope exit, so a failing REQUIRE cannot leave a joinable std::thread behind.
struct Joiner {
  std::thread& t;
  ~Joiner() {
    if (t.joinable()) t.join();
  }
};

/// Counts the outcome of a cancelled run and records the first Result that breaks the rules.
struct CancelTally {
  std::size_t ok = 0, before = 0, running = 0, bad = 0;
  std::string first_bad;

  explicit CancelTally(const std::vector<pfp::Result>& rs) {
    for (const pfp::Result& r : rs) {
      bool good = false;
      if (r.status == pfp::Status::ok) {
        good = r.pid > 0 && r.error.empty() && r.attempts == 1 && r.result.is_integer() &&
               r.result.as<int>() == static_cast<int>(r.index);
        ++ok;
      } else if (r.status == pfp::Status::cancelled && r.pid == 0) {
        good = r.error.find("before") != std::string::npos && r.attempts == 0;
        ++before;
      } else if (r.status == pfp::Status::cancelled) {
        good = r.error.find("running") != std::string::npos && r.attempts == 1;
        ++running;
      }
      if (!good) {
        if (bad++ == 0)
          first_bad = "index " + std::to_string(r.index) + " status " + std::string(pfp::to_string(r.status)) +
                      " pid " + std::to_string(r.pid) + " attempts " + std::to_string(r.attempts) + " error '" +
                      r.error + "'";
      }
    }
  }
};

constexpr int kQueued = 1000;
constexpr unsigned kWorkers = 2;

/// Registers kQueued functions that sleep 20 ms, count themselves in *done and return their index.
void register_sleepers(pfp::MultiProcessor<>& mp, std::atomic<int>* done, int count = kQueued, int sleep = 20) {
  for (int i = 0; i < count; ++i) {
    mp.register_function(
        "sleep" + std::to_string(i),
        [done, sleep](const pfp::Value&, const pfp::Args& a) {
          std::this_thread::sleep_for(milliseconds(sleep));
          done->fetch_add(1);
          return a.at("i").as<int>();
        },
        pfp::Args{{"i", i}});
  }
}

void check_cancelled_run(const std::vector<pfp::Result>& rs, std::size_t expected) {
  REQUIRE(rs.size() == expected);
  for (std::size_t i = 0; i < rs.size(); ++i) REQUIRE(rs[i].index == i);
  CancelTally t(rs);
  INFO("ok " << t.ok << ", cancelled before start " << t.before << ", cancelled while running " << t.running
             << ", first bad: " << t.first_bad);
  CHECK(t.bad == 0);
  CHECK(t.ok + t.before + t.running == expected);
  CHECK(t.ok >= 1);
  CHECK(t.before >= expected / 2);  // "many": at 20 ms each on 2 workers a full run takes ~10 s
  CHECK(t.running <= kWorkers);      // only what the workers were running can be cancelled while running
}

// ---- cancel from a signal handler

std::atomic<pfp::MultiProcessor<>*> g_mp{nullptr};
std::atomic<int>* g_done = nullptr;
std::atomic<long long> g_cancel_ns{0};

extern "C" void on_alarm(int) {
  // Repeats every 20 ms until at least one function has finished, then cancels once.
  if (g_cancel_ns.load() != 0 || g_done == nullptr || g_done->load() < 1) return;
  pfp::MultiProcessor<>* mp = g_mp.load();
  if (!mp) return;
  g_cancel_ns.store(mono_ns());
  mp->cancel();
}

/// Installs a handler for sig with sigaction and restores the previous one on scope exit.
class ScopedHandler {
 public:
  ScopedHandler(int sig, void (*fn)(int)) : sig_(sig) {
    struct sigaction act {};
    act.sa_handler = fn;
    sigemptyset(&act.sa_mask);
    act.sa_flags = 0;  // no SA_RESTART: the library must cope with EINTR
    REQUIRE(sigaction(sig_, &act, &old_) == 0);
  }
  ~ScopedHandler() { sigaction(sig_, &old_, nullptr); }
  ScopedHandler(const ScopedHandler&) = delete;
  ScopedHandler& operator=(const ScopedHandler&) = delete;

 private:
  int sig_;
  struct sigaction old_ {};
};

/// Arms ITIMER_REAL and disarms it on scope exit.
class ScopedTimer {
 public:
  ScopedTimer(long first_ms, long interval_ms) {
    itimerval t{};
    t.it_value.tv_sec = first_ms / 1000;
    t.it_value.tv_usec = (first_ms % 1000) * 1000;
    t.it_interval.tv_sec = interval_ms / 1000;
    t.it_interval.tv_usec = (interval_ms % 1000) * 1000;
    REQUIRE(setitimer(ITIMER_REAL, &t, nullptr) == 0);
  }
  ~ScopedTimer() {
    itimerval off{};
    setitimer(ITIMER_REAL, &off, nullptr);
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;
};

// ---- grandchildren

/// A function that starts a grandchild sleeping 60 s, publishes its pid, then sleeps 60 s itself.
struct SpawnGrandchild {
  std::atomic<int>* grandchild_pid;
  int operator()(const pfp::Value&, const pfp::Args&) const {
    const pid_t pid = fork();
    if (pid == 0) {
      for (int i = 0; i < 60; ++i) sleep(1);
      _exit(0);
    }
    if (pid < 0) throw std::runtime_error("fork failed");
    grandchild_pid->store(static_cast<int>(pid));
    for (int i = 0; i < 600; ++i) usleep(100000);
    return 0;
  }
};

bool gone_within(pid_t pid, milliseconds limit) {
  return wait_until([pid] { return !pid_running(pid); }, limit);
}

}  // namespace

TEST_CASE("cancel from another thread stops a run of 1000 queued functions promptly", "[cancel]") {
  const std::set<int> fds_before = open_fds();
  Shared<std::atomic<int>> done;
  {
    pfp::Options o;
    o.workers = kWorkers;
    o.threads = pfp::ThreadPolicy::allow;
    pfp::MultiProcessor<> mp(pfp::Value(), o);
    register_sleepers(mp, done.get());

    std::atomic<long long> cancel_ns{0};
    std::thread canceller([&] {
      // Wait until some functions have finished (so at least one is ok), then cancel.
      wait_until([&] { return done->load() >= 3; }, milliseconds(20000));
      sleep_ms(100);
      cancel_ns.store(mono_ns());
      mp.cancel();
    });
    Joiner join{canceller};

    const auto start = Clock::now();
    const std::vector<pfp::Result>& rs = mp.execute_parallel();
    const long long returned_ns = mono_ns();
    canceller.join();
    INFO("run took " << elapsed_ms(start) << " ms");
    REQUIRE(cancel_ns.load() != 0);
    const long long after_cancel_ms = (returned_ns - cancel_ns.load()) / 1000000;
    CAPTURE(after_cancel_ms);
    CHECK(after_cancel_ms < 1000);
    check_cancelled_run(rs, kQueued);
    CHECK(mp.results().size() == static_cast<std::size_t>(kQueued));

    const auto kids = child_pids();
    INFO("children left: " << pids_to_string(kids));
    CHECK(kids.empty());
  }
  const std::set<int> fds_after = open_fds();
  INFO("fds before: " << fds_to_string(fds_before) << "  after: " << fds_to_string(fds_after));
  CHECK(fds_after == fds_before);
}

TEST_CASE("cancel from a SIGALRM handler stops a run of 1000 queued functions promptly", "[cancel]") {
  const std::set<int> fds_before = open_fds();
  Shared<std::atomic<int>> done;
  {
    pfp::Options o;
    o.workers = kWorkers;
    pfp::MultiProcessor<> mp(pfp::Value(), o);
    register_sleepers(mp, done.get());

    struct sigaction before {};
    sigaction(SIGALRM, nullptr, &before);

    g_cancel_ns.store(0);
    g_done = done.get();
    g_mp.store(&mp);
    std::vector<pfp::Result> rs;
    long long returned_ns = 0;
    const auto start = Clock::now();
    {
      ScopedHandler handler(SIGALRM, on_alarm);
      ScopedTimer timer(300, 20);  // first at 300 ms, then every 20 ms until it has cancelled
      rs = mp.execute_parallel();
      returned_ns = mono_ns();
    }
    g_mp.store(nullptr);
    g_done = nullptr;
    INFO("run took " << elapsed_ms(start) << " ms");

    struct sigaction after {};
    sigaction(SIGALRM, nullptr, &after);
    CHECK(after.sa_handler == before.sa_handler);  // the test restored it (and the library left it alone)

    REQUIRE(g_cancel_ns.load() != 0);
    const long long after_cancel_ms = (returned_ns - g_cancel_ns.load()) / 1000000;
    CAPTURE(after_cancel_ms);
    CHECK(after_cancel_ms < 1000);
    check_cancelled_run(rs, kQueued);

    const auto kids = child_pids();
    INFO("children left: " << pids_to_string(kids));
    CHECK(kids.empty());
  }
  const std::set<int> fds_after = open_fds();
  INFO("fds before: " << fds_to_string(fds_before) << "  after: " << fds_to_string(fds_after));
  CHECK(fds_after == fds_before);
}

TEST_CASE("cancel kills the grandchildren of a running function", "[cancel]") {
  Shared<std::atomic<int>> grandchild;
  pfp::Options o;
  o.workers = 1;
  o.threads = pfp::ThreadPolicy::allow;
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  mp.register_function("spawns", SpawnGrandchild{grandchild.get()});
  mp.register_function("never_starts", [](const pfp::Value&, const pfp::Args&) { return 1; });

  std::atomic<bool> was_alive{false};
  std::atomic<long long> cancel_ns{0};
  std::thread canceller([&] {
    wait_until([&] { return grandchild->load() != 0; }, milliseconds(20000));
    was_alive.store(pid_running(static_cast<pid_t>(grandchild->load())));
    cancel_ns.store(mono_ns());
    mp.cancel();
  });
  Joiner join{canceller};

  const std::vector<pfp::Result>& rs = mp.execute_parallel();
  const long long returned_ns = mono_ns();
  canceller.join();
  const pid_t gc = static_cast<pid_t>(grandchild->load());
  REQUIRE(gc > 0);
  CHECK(was_alive.load());
  CHECK((returned_ns - cancel_ns.load()) / 1000000 < 1000);

  REQUIRE(rs.size() == 2);
  CHECK(rs[0].status == pfp::Status::cancelled);
  CHECK(rs[0].pid > 0);
  CHECK_THAT(rs[0].error, Catch::Matchers::Contains("running"));
  CHECK(rs[1].status == pfp::Status::cancelled);
  CHECK(rs[1].pid == 0);

  const bool gone = gone_within(gc, milliseconds(1000));
  if (!gone) kill(gc, SIGKILL);  // do not leave it behind for 60 s
  CHECK(gone);
  CHECK(child_pids().empty());
}

TEST_CASE("a timed-out function's grandchildren are killed too", "[cancel]") {
  Shared<std::atomic<int>> grandchild;
  pfp::Options o;
  o.workers = 1;
  o.timeout = milliseconds(200);
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  mp.register_function("spawns", SpawnGrandchild{grandchild.get()});
  mp.register_function("after", [](const pfp::Value&, const pfp::Args&) { return 7; });

  const auto start = Clock::now();
  const std::vector<pfp::Result>& rs = mp.execute_parallel();
  CHECK(elapsed_ms(start) < 5000);
  const pid_t gc = static_cast<pid_t>(grandchild->load());
  REQUIRE(gc > 0);

  REQUIRE(rs.size() == 2);
  CHECK(rs[0].status == pfp::Status::timed_out);
  CHECK_THAT(rs[0].error, Catch::Matchers::Contains("200 ms"));
  CHECK(rs[1].ok());
  CHECK(rs[1].result.as<int>() == 7);

  const bool gone = gone_within(gc, milliseconds(1000));
  if (!gone) kill(gc, SIGKILL);
  CHECK(gone);
  CHECK(child_pids().empty());
}

TEST_CASE("cancel() without a run in progress does nothing", "[cancel]") {
  Shared<std::atomic<int>> done;
  pfp::Options o;
  o.workers = 4;
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  register_sleepers(mp, done.get(), 50, 1);

  SECTION("before the first run") {
    mp.cancel();
  }
  SECTION("many times before the first run (more wake-ups than a pipe holds)") {
    for (int i = 0; i < 100000; ++i) mp.cancel();
  }
  SECTION("after a complete run") {
    const auto& first = mp.execute_parallel();
    REQUIRE(first.size() == 50);
    for (const auto& r : first) CHECK(r.ok());
    mp.cancel();
    mp.cancel();
  }
  const std::set<int> fds_before = open_fds();
  const std::vector<pfp::Result>& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 50);
  std::size_t ok = 0;
  for (const auto& r : rs) {
    INFO("index " << r.index << " status " << pfp::to_string(r.status) << " error " << r.error);
    CHECK(r.ok());
    CHECK(r.attempts == 1);
    CHECK(r.result.as<int>() == static_cast<int>(r.index));
    ok += r.ok();
  }
  CHECK(ok == 50);
  CHECK(open_fds() == fds_before);
  CHECK(child_pids().empty());
}

TEST_CASE("a run after a cancelled run is complete and ok", "[cancel]") {
  Shared<std::atomic<int>> done;
  pfp::Options o;
  o.workers = 4;
  o.threads = pfp::ThreadPolicy::allow;
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  register_sleepers(mp, done.get(), 200, 20);

  {
    std::thread canceller([&] {
      wait_until([&] { return done->load() >= 2; }, milliseconds(20000));
      mp.cancel();
    });
    Joiner join{canceller};
    const auto& first = mp.execute_parallel();
    canceller.join();
    REQUIRE(first.size() == 200);
    CancelTally t(first);
    INFO("first run: ok " << t.ok << ", before " << t.before << ", running " << t.running << ", first bad: "
                          << t.first_bad);
    CHECK(t.bad == 0);
    CHECK(t.before + t.running >= 1);  // the first run really was cancelled
  }

  for (int round = 0; round < 2; ++round) {
    const auto start = Clock::now();
    const std::vector<pfp::Result>& rs = mp.execute_parallel();
    INFO("round " << round << " took " << elapsed_ms(start) << " ms");
    REQUIRE(rs.size() == 200);
    CancelTally t(rs);
    INFO("ok " << t.ok << ", before " << t.before << ", running " << t.running << ", first bad: " << t.first_bad);
    CHECK(t.ok == 200);
    CHECK(t.bad == 0);
  }
  CHECK(child_pids().empty());
}
