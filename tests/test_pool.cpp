// The process backend's runs (pool.hpp): a MultiProcessor's functions travel to a worker as one
// message of up to max_run consecutive functions, with their Results filled in place. A run must
// keep every promise a single task keeps: a crash, a hang, a retry, a cancel or a function writing
// on pfp's result pipe costs exactly the function concerned, however deep inside a run it sits.
// Also the clock workers time tasks with (detail/task_clock.hpp).
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "fault_support.hpp"

using Catch::Matchers::Contains;
using pfp::Args;
using pfp::MultiProcessor;
using pfp::Options;
using pfp::Result;
using pfp::Status;
using pfp::Value;

namespace {

constexpr std::size_t many = 20000;  // far more than one run: runs of up to 1,024 are sent, several per worker

Options two_workers() {
  Options o;
  o.workers = 2;
  return o;
}

// Registers `n` functions returning i * 3; function `odd_one` does what `odd` does instead.
template <class Odd>
void register_many(MultiProcessor<>& mp, std::size_t n, std::size_t odd_one, Odd odd) {
  for (std::size_t i = 0; i < n; ++i) {
    if (i == odd_one)
      mp.register_function("odd", [odd](const Value&, const Args&) { return odd(); });
    else
      mp.register_function("f" + std::to_string(i), [i](const Value&, const Args&) { return static_cast<long long>(i * 3); });
  }
}

// Every function but odd_one is ok with its own value, its name, one attempt and a worker's pid.
void check_others(const std::vector<Result>& rs, std::size_t n, std::size_t odd_one) {
  REQUIRE(rs.size() == n);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (i == odd_one) continue;
    const Result& r = rs[i];
    const bool right = r.ok() && r.index == i && r.function_name == "f" + std::to_string(i) && r.attempts == 1 &&
                       r.pid > 0 && r.pid != ::getpid() && r.result.is_integer() &&
                       r.result.as<long long>() == static_cast<long long>(i * 3);
    if (!right && wrong++ < 5) FAIL_CHECK("function " << i << ": " << pfp::to_string(r.status) << " " << r.error << " "
                                                      << r.result.to_json() << " attempts " << r.attempts);
  }
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("runs: a crash deep inside a run costs that function only", "[pool][runs]") {
  const std::size_t odd_one = GENERATE(as<std::size_t>{}, 1, 5000, 12345, many - 1);
  MultiProcessor<> mp(Value(), two_workers());
  register_many(mp, many, odd_one, []() -> long long { std::abort(); });
  const auto& rs = mp.execute_parallel();
  INFO("the crash is function " << odd_one);
  check_others(rs, many, odd_one);
  CHECK(rs[odd_one].status == Status::crashed);
  CHECK_THAT(rs[odd_one].error, Contains("SIGABRT"));
  CHECK(rs[odd_one].attempts == 1u);
  CHECK(pfp_fault::child_pids().empty());
}

TEST_CASE("runs: a function of a run that crashes is retried alone", "[pool][runs]") {
  Options o = two_workers();
  o.retries = 2;
  MultiProcessor<> mp(Value(), o);
  const std::size_t odd_one = 7000;
  register_many(mp, many, odd_one, []() -> long long { std::abort(); });
  const auto& rs = mp.execute_parallel();
  check_others(rs, many, odd_one);  // the functions after it in its run started once, elsewhere
  CHECK(rs[odd_one].status == Status::crashed);
  CHECK(rs[odd_one].attempts == 3u);
}

TEST_CASE("runs: a hang deep inside a run times out alone", "[pool][runs]") {
  Options o = two_workers();
  o.timeout = std::chrono::milliseconds(300);
  MultiProcessor<> mp(Value(), o);
  const std::size_t odd_one = 9000;
  register_many(mp, many, odd_one, []() -> long long {
    for (;;) ::pause();
  });
  const auto t0 = std::chrono::steady_clock::now();
  const auto& rs = mp.execute_parallel();
  CHECK(pfp_fault::elapsed_ms(t0) < 10000);
  check_others(rs, many, odd_one);
  CHECK(rs[odd_one].status == Status::timed_out);
  CHECK(rs[odd_one].duration >= std::chrono::milliseconds(300));
  CHECK(pfp_fault::child_pids().empty());
}

TEST_CASE("runs: a function deep inside a run that writes on pfp's result pipe is blamed alone", "[pool][runs]") {
  MultiProcessor<> mp(Value(), two_workers());
  const std::size_t odd_one = 11000;
  register_many(mp, many, odd_one, []() -> long long {
    pfp_fault::write_to_result_pipe("not a frame, written by a function");
    return 1;
  });
  const auto& rs = mp.execute_parallel();
  check_others(rs, many, odd_one);
  CHECK(rs[odd_one].status == Status::crashed);
  CHECK_THAT(rs[odd_one].error, Contains("protocol error"));
}

TEST_CASE("runs: cancel() while runs are in flight accounts for every function", "[pool][runs]") {
  const std::size_t n = 400000;
  Options o = two_workers();
  o.threads = pfp::ThreadPolicy::allow;  // the canceller thread holds no lock a worker needs
  MultiProcessor<> mp(Value(), o);
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i](const Value&, const Args&) {
      if (i % 1000 == 999) pfp_fault::sleep_for_us(200);  // long enough for the cancel to land mid-run
      return static_cast<long long>(i);
    });
  std::thread canceller([&] {
    // Once the run is under way (its workers exist), and a little into it.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (pfp_fault::child_pids().empty() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    mp.cancel();
  });
  const auto t0 = std::chrono::steady_clock::now();
  const auto& rs = mp.execute_parallel();
  const long long ms = pfp_fault::elapsed_ms(t0);
  canceller.join();
  REQUIRE(rs.size() == n);
  std::size_t ok = 0, cancelled = 0, wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const Result& r = rs[i];
    if (r.ok() && r.result.as<long long>() == static_cast<long long>(i))
      ++ok;
    else if (r.status == Status::cancelled && r.result.is_null() && !r.error.empty())
      ++cancelled;
    else
      ++wrong;
  }
  INFO(ok << " ok, " << cancelled << " cancelled, " << wrong << " wrong, " << ms << " ms");
  CHECK(wrong == 0);
  CHECK(ok > 0);
  CHECK(cancelled > 0);
  CHECK(ok + cancelled == n);
  CHECK(pfp_fault::child_pids().empty());
}

TEST_CASE("runs: durations are the functions' own, in nanoseconds of steady_clock", "[pool][runs]") {
  // Many quick functions first (the worker learns its counter's rate a few milliseconds in),
  // then some that sleep a known time.
  MultiProcessor<> mp(Value(), two_workers());
  const std::size_t quick = 50000, sleepers = 6;
  for (std::size_t i = 0; i < quick; ++i)
    mp.register_function("quick", [i](const Value&, const Args&) { return static_cast<long long>(i); });
  for (std::size_t i = 0; i < sleepers; ++i)
    mp.register_function("sleeper", [](const Value&, const Args&) {
      pfp_fault::sleep_for_us(20000);
      return 0;
    });
  const auto& rs = mp.execute_parallel();
  for (std::size_t i = quick; i < quick + sleepers; ++i) {
    INFO("sleeper " << i << ": " << rs[i].duration.count() << " ns");
    CHECK(rs[i].duration >= std::chrono::milliseconds(20));
    CHECK(rs[i].duration < std::chrono::milliseconds(20 + 200));
  }
  std::chrono::nanoseconds longest{0};
  for (std::size_t i = 0; i < quick; ++i) {
    CHECK(rs[i].duration.count() >= 0);
    longest = std::max(longest, rs[i].duration);
  }
  CHECK(longest < std::chrono::seconds(1));
}

TEST_CASE("task clock: a write is always noticed, a trivial task is not taken for one", "[pool][clock]") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pfp::detail::TaskClock::prepare();
  // Let the counter's rate be learnt (2 ms after the first prepare()), then time both ways.
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  pfp::detail::TaskClock::prepare();
  pfp::detail::TaskClock clock;
  std::size_t writes_missed = 0, trivial_flagged = 0;
  volatile long sink = 0;
  for (int i = 0; i < 2000; ++i) {
    clock.start();
    char byte = 1;
    REQUIRE(::write(fds[1], &byte, 1) == 1);
    const std::int64_t took = clock.stop();
    CHECK(took >= 0);
    if (!clock.could_have_written()) ++writes_missed;
    REQUIRE(::read(fds[0], &byte, 1) == 1);
    clock.start();
    sink = sink + i;
    clock.stop();
    if (clock.could_have_written()) ++trivial_flagged;
  }
  ::close(fds[0]);
  ::close(fds[1]);
  CHECK(writes_missed == 0);
  INFO(trivial_flagged << " of 2000 trivial tasks were taken for ones that could have written");
  CHECK(trivial_flagged < 1000);  // the point of the clock: most trivial tasks skip the look
}

TEST_CASE("task clock: start() is steady_clock time and stop() measures like it", "[pool][clock]") {
  pfp::detail::TaskClock::prepare();
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  pfp::detail::TaskClock clock;  // picks the counter up if it has one
  for (const auto wait : {std::chrono::microseconds(50), std::chrono::microseconds(2000), std::chrono::microseconds(20000)}) {
    const std::int64_t before = pfp::detail::steady_ns();
    const std::int64_t started = clock.start();
    const std::int64_t after = pfp::detail::steady_ns();
    CHECK(started >= before - 1000);  // scaled counter readings may be a hair off steady_clock's
    CHECK(started <= after + 1000);
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < wait) {
    }
    const std::int64_t took = clock.stop();
    const std::int64_t wanted = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
    INFO("waited " << wanted << " ns, measured " << took << " ns");
    CHECK(took >= wanted - wanted / 100);
    CHECK(took < wanted + 200'000'000);  // generous: a loaded machine preempts the spinning thread
  }
}
