// What makes a fresh worker process cheap (include/pfp/process.hpp, channel.hpp): the signal state
// a child resets is learned once per run (SignalPlan), retired workers are reaped when they are
// gone instead of waited for (Leaving), and a gone worker's shared region serves the next one.
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_support.hpp"

using Catch::Matchers::Contains;
using pfp::Args;
using pfp::MultiProcessor;
using pfp::Options;
using pfp::Status;
using pfp::Value;
using namespace pfp_test;

namespace {

void ignore_signal(int) {}

bool contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// A child that exits after `ms` milliseconds, or never (ms < 0).
pid_t child_exiting_after(long ms) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (ms < 0)
      for (;;) ::pause();
    sleep_ms(ms);
    ::_exit(0);
  }
  return pid;
}

bool reaped(pid_t pid) {
  int status = 0;
  return ::waitpid(pid, &status, WNOHANG) < 0 && errno == ECHILD;
}

}  // namespace

TEST_CASE("SignalPlan names exactly the signals whose disposition is not the default", "[spawn]") {
  ScopedSigaction usr1(SIGUSR1, ignore_signal), usr2(SIGUSR2, SIG_IGN), term(SIGTERM, SIG_DFL);
  const pfp::detail::SignalPlan plan = pfp::detail::SignalPlan::learn();
  CHECK(contains(plan.reset, SIGUSR1));  // a handler
  CHECK(contains(plan.reset, SIGUSR2));  // ignored
  CHECK_FALSE(contains(plan.reset, SIGTERM));
  CHECK_FALSE(contains(plan.reset, SIGKILL));
  CHECK_FALSE(contains(plan.reset, SIGSTOP));

  // A default handler with flags of its own (here: no zombie children) is not the default either.
  struct sigaction nocldstop {};
  nocldstop.sa_handler = SIG_DFL;
  nocldstop.sa_flags = SA_NOCLDSTOP;
  sigemptyset(&nocldstop.sa_mask);
  ScopedSigaction chld(SIGCHLD, nocldstop);
  CHECK(contains(pfp::detail::SignalPlan::learn().reset, SIGCHLD));
}

TEST_CASE("signal handlers installed between two runs are reset in the second run's workers", "[spawn]") {
  MultiProcessor<> mp(Value{}, opts(2, 1));
  mp.register_function("usr2", [](const Value&, const Args&) {
    ::raise(SIGUSR2);  // kills the worker, unless the parent's disposition leaked into it
    return 1;
  });
  mp.register_function("state", [](const Value&, const Args&) { return Value(non_default_signals()); });
  {
    const auto& rs = mp.execute_parallel();
    CHECK(rs[0].status == Status::crashed);
    CHECK_THAT(rs[0].error, Contains("SIGUSR2"));
  }
  ScopedSigaction usr2(SIGUSR2, SIG_IGN), hup(SIGHUP, ignore_signal);
  const auto& rs = mp.execute_parallel();
  INFO(describe(rs[0]));
  CHECK(rs[0].status == Status::crashed);
  CHECK_THAT(rs[0].error, Contains("SIGUSR2"));
  INFO(describe(rs[1]));
  REQUIRE(rs[1].ok());
  CHECK(rs[1].result.as<std::vector<int>>() == std::vector<int>{});
}

TEST_CASE("Leaving: reaps processes once they are gone, kills those past their grace", "[spawn]") {
  std::vector<int> done;
  pfp::detail::Leaving<int> leaving;
  const pid_t quick = child_exiting_after(0);
  const pid_t stuck = child_exiting_after(-1);
  leaving.add(quick, pfp::detail::UniqueFd(pfp::detail::open_pidfd(quick)), 1, std::chrono::milliseconds(10000));
  leaving.add(stuck, pfp::detail::UniqueFd(pfp::detail::open_pidfd(stuck)), 2, std::chrono::milliseconds(200));
  auto note = [&](int k) { done.push_back(k); };

  // The quick one is reaped without waiting for anything; the stuck one is left alone.
  const auto t0 = Clock::now();
  while (done.empty() && elapsed_ms(t0) < 5000) {
    leaving.collect(note);
    sleep_ms(5);
  }
  CHECK(done == std::vector<int>{1});
  CHECK(reaped(quick));
  CHECK(pid_running(stuck));
  CHECK_FALSE(leaving.empty());

  // Past its grace, the stuck one is killed and reaped.
  while (done.size() < 2 && elapsed_ms(t0) < 5000) {
    leaving.collect(note);
    sleep_ms(5);
  }
  CHECK(done == std::vector<int>{1, 2});
  CHECK(reaped(stuck));
  CHECK(leaving.empty());

  // finish() waits for each within its grace; kill_all() does not wait at all.
  const pid_t slow = child_exiting_after(100);
  leaving.add(slow, pfp::detail::UniqueFd(pfp::detail::open_pidfd(slow)), 3, std::chrono::milliseconds(5000));
  leaving.finish(note);
  CHECK(done.back() == 3);
  CHECK(reaped(slow));
  const pid_t forever = child_exiting_after(-1);
  leaving.add(forever, pfp::detail::UniqueFd(pfp::detail::open_pidfd(forever)), 4, std::chrono::milliseconds(60000));
  const auto t1 = Clock::now();
  leaving.kill_all();
  CHECK(elapsed_ms(t1) < 2000);
  CHECK(reaped(forever));
}

TEST_CASE("a fresh process per function: every worker reaped, regions reused safely", "[spawn]") {
  // Workers leave after one function each and are reaped in the background while the next ones
  // run; their shared regions (the result ring) serve their successors. Small results travel
  // through the ring (50 KB each: more than the ring holds, summed over the workers that share a
  // region), so a region handed on with stale counters would garble them.
  MultiProcessor<> mp(Value{}, opts(2, 1));
  const int n = 60;
  for (int i = 0; i < n; ++i) {
    if (i == 17)
      mp.register_function("crash", [](const Value&, const Args&) -> Value {
        ::raise(SIGSEGV);
        return 0;
      });
    else
      mp.register_function("f", [i](const Value&, const Args&) {
        // The process's start time with its pid names it: on a busy machine pids wrap within a run.
        const auto stat = stat_fields(getpid());
        return Value{{"i", i}, {"pad", std::string(50000 + i, 'x')}, {"start", stat.size() > 19 ? stat[19] : std::string()}};
      });
  }
  for (int round = 0; round < 2; ++round) {
    const auto& rs = mp.execute_parallel();
    std::set<std::pair<int, std::string>> processes;
    for (int i = 0; i < n; ++i) {
      INFO(describe(rs[static_cast<std::size_t>(i)]));
      const pfp::Result& r = rs[static_cast<std::size_t>(i)];
      processes.insert({r.pid, r.ok() ? r.result.at("start").as<std::string>() : std::string("crashed")});
      if (i == 17) {
        CHECK(rs[17].status == Status::crashed);
        continue;
      }
      REQUIRE(rs[static_cast<std::size_t>(i)].ok());
      CHECK(rs[static_cast<std::size_t>(i)].result.at("i").as<int>() == i);
      CHECK(rs[static_cast<std::size_t>(i)].result.at("pad").as<std::string>() == std::string(50000 + i, 'x'));
    }
    CHECK(processes.size() == static_cast<std::size_t>(n));  // each function in a process of its own
    CHECK(child_pids().empty());  // nothing left behind, not even a zombie
  }
}

TEST_CASE("SharedRegion::renew gives a reused region fresh counters", "[spawn]") {
  pfp::detail::SharedRegion region = pfp::detail::SharedRegion::create();
  pfp::detail::SharedBlock* b = region.block();
  b->started.store(42);
  b->started_at_ns.store(7);
  b->corrupted_by.store(43);
  b->pipe_read_seq.store(2);
  b->pipe_read_total.store(1000);
  b->produced.store(123456);
  b->consumed.store(123000);
  b->remote_allowed.store(1);
  b->remote_ack.store(2);
  region.ring()[0] = 'x';
  region.renew();
  CHECK(b == region.block());  // the same pages
  CHECK(b->started.load() == 0);
  CHECK(b->started_at_ns.load() == 0);
  CHECK(b->corrupted_by.load() == 0);
  CHECK(b->pipe_read_seq.load() == 0);
  CHECK(b->pipe_read_total.load() == 0);
  CHECK(b->produced.load() == 0);
  CHECK(b->consumed.load() == 0);
  CHECK(b->remote_allowed.load() == 0);
  CHECK(b->remote_ack.load() == 0);
  // A writer and reader on the renewed region agree from the start.
  pfp::detail::RingWriter writer(b, region.ring());
  pfp::detail::RingReader reader(b, region.ring());
  REQUIRE(writer.put("hello"));
  std::string scratch;
  REQUIRE(reader.available() == 5);
  CHECK(reader.peek(5, scratch) == "hello");
}

TEST_CASE("without pidfds (kernels before 5.3) retired workers are still reaped promptly", "[spawn]") {
  struct Restore {
    ~Restore() { pfp::detail::use_pidfds = true; }
  } restore;
  // One worker, a fresh process per function: nothing else wakes the parent up, so a retired
  // worker reaped only by the sweep (every 50 ms) would cost 50 ms per function, 2 s in all.
  // Judged against the same run with pidfds (the fastest of three of each, interleaved), not
  // against a fixed time a loaded machine or a sanitizer's fork cannot promise.
  const int n = 40;
  auto run_once = [&](bool pidfds) {
    pfp::detail::use_pidfds = pidfds;
    REQUIRE((pfp::detail::open_pidfd(::getpid()) == -1) == !pidfds);
    MultiProcessor<> mp(Value{}, opts(1, 1));
    // Each function leaves a grandchild holding the worker's pipes for 20 ms: the parent sees no EOF
    // when the worker leaves, so the worker is reaped as a retired one (Leaving), the path at stake.
    for (int i = 0; i < n; ++i)
      mp.register_function("f", [i](const Value&, const Args&) {
        if (fork() == 0) {
          sleep_ms(20);
          _exit(0);
        }
        return i;
      });
    const auto t0 = Clock::now();
    const auto& rs = mp.execute_parallel();
    const long long wall = elapsed_ms(t0);
    for (int i = 0; i < n; ++i) {
      INFO(describe(rs[static_cast<std::size_t>(i)]));
      REQUIRE(rs[static_cast<std::size_t>(i)].ok());
      CHECK(rs[static_cast<std::size_t>(i)].result.as<int>() == i);
    }
    CHECK(child_pids().empty());
    return wall;
  };
  long long with = std::numeric_limits<long long>::max(), without = with;
  for (int round = 0; round < 3; ++round) {
    with = std::min(with, run_once(true));
    without = std::min(without, run_once(false));
  }
  CAPTURE(with, without);
  // Reaped by the sweep instead, each process could cost up to 50 ms more.
  CHECK(without < with + with / 2 + n * 5);
}
