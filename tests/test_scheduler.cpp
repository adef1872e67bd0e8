// The process backend's scheduler: tasks queued in a worker ahead of time are never stuck there.
// A worker that runs long gives back what it has not begun, an idle worker takes work from a busy
// one, a higher priority goes first, ExecutorOptions::max_queued counts tasks queued in workers,
// and a function that returned in time is never timed out while its result is handed over.

#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

using namespace pfp_test;

namespace {

void spin_us(long long us) {
  const long long until = mono_ns() + us * 1000;
  while (mono_ns() < until) {
  }
}

// A pipe the workers inherit: a task that reads it blocks until release() writes a byte for it.
// (Closing the write end would not do: every worker holds a copy of it.)
struct Gate {
  int fds[2] = {-1, -1};
  bool released = false;
  Gate() { REQUIRE(::pipe(fds) == 0); }
  ~Gate() {
    release();
    ::close(fds[0]);
    ::close(fds[1]);
  }
  void release() {
    if (released) return;
    released = true;
    const char bytes[64] = {};
    REQUIRE(::write(fds[1], bytes, sizeof bytes) == static_cast<ssize_t>(sizeof bytes));
  }
  int wait() const {
    char c;
    return ::read(fds[0], &c, 1) == 1 ? 0 : -1;
  }
};

// Many trivial tasks: afterwards the pool has seen short tasks and pipelines deeply.
void warm_up(pfp::Executor& ex, const pfp::Function<int, int>& id) {
  std::vector<pfp::Future<int>> fs;
  for (int i = 0; i < 3000; ++i) fs.push_back(ex.submit(id, i));
  for (int i = 0; i < 3000; ++i) REQUIRE(fs[static_cast<std::size_t>(i)].get() == i);
}

}  // namespace

TEST_CASE("scheduler: short functions never wait behind a long one they were queued behind", "[scheduler]") {
  // One long function first, then many of ~20 us: once the pool has seen short ones it queues
  // many in each worker; those behind the long one are taken back and run by the other worker.
  constexpr int shorts = 2000;
  pfp::MultiProcessor<> mp({}, opts(2));
  mp.register_function("long", [](const pfp::Value&, const pfp::Args&) {
    const long long start = mono_ns();
    sleep_ms(2500);
    return start;
  });
  for (int i = 0; i < shorts; ++i)
    mp.register_function("short" + std::to_string(i), [](const pfp::Value&, const pfp::Args&) {
      const long long start = mono_ns();
      spin_us(20);
      return start;
    });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == shorts + 1);
  for (const auto& r : rs) REQUIRE(r.ok());
  const long long long_end = rs[0].result.as<long long>() + rs[0].duration.count();
  int waited = 0;
  for (std::size_t i = 1; i < rs.size(); ++i) waited += rs[i].result.as<long long>() >= long_end;
  CHECK(waited == 0);
}

TEST_CASE("scheduler: after warm-up, submissions are spread over the workers, not queued in one", "[scheduler][executor]") {
  pfp::Executor ex(opts(2));
  auto id = ex.declare("id", [](int n) { return n; });
  auto nap = ex.declare("nap", [](int ms_) {
    sleep_ms(ms_);
    return static_cast<int>(::getpid());
  });
  ex.start();
  warm_up(ex, id);
  std::vector<pfp::Future<int>> fs;
  for (int i = 0; i < 40; ++i) fs.push_back(ex.submit(nap, 20));
  std::vector<int> pids;
  for (auto& f : fs) pids.push_back(f.get());
  std::sort(pids.begin(), pids.end());
  const auto first = std::count(pids.begin(), pids.end(), pids.front());
  // each worker runs a good part of them (all queued in one worker: 40 / 0)
  CHECK(first >= 8);
  CHECK(first <= 32);
}

TEST_CASE("scheduler: after warm-up, a short task submitted while a worker is blocked completes", "[scheduler][executor]") {
  Gate gate;
  pfp::Executor ex(opts(2));
  auto id = ex.declare("id", [](int n) { return n; });
  auto block = ex.declare("block", [&gate](int) { return gate.wait(); });
  ex.start();
  warm_up(ex, id);
  auto blocked = ex.submit(block, 0);
  sleep_ms(50);  // it has begun
  std::vector<pfp::Future<int>> fs;
  for (int i = 0; i < 50; ++i) fs.push_back(ex.submit(id, i));
  bool all = true;
  for (auto& f : fs) all = all && f.wait_for(std::chrono::seconds(20));
  CHECK(all);
  CHECK_FALSE(blocked.ready());
  gate.release();
  CHECK(blocked.get() == 0);
  for (int i = 0; i < 50; ++i) CHECK(fs[static_cast<std::size_t>(i)].get() == i);
}

TEST_CASE("scheduler: after warm-up, a higher priority begins before tasks already queued in the worker", "[scheduler][executor]") {
  pfp::Executor ex(opts(1));
  auto id = ex.declare("id", [](int n) { return n; });
  auto started_at = ex.declare("started_at", [](int hold_ms) {
    const long long t = mono_ns();
    sleep_ms(hold_ms);
    return t;
  });
  ex.start();
  warm_up(ex, id);
  std::vector<pfp::Future<long long>> low;
  for (int i = 0; i < 100; ++i) low.push_back(ex.submit(started_at, 3));
  low.front().wait();  // by now the pool has handed the others to the worker
  auto high = ex.submit_with_priority(10, started_at, 0);
  const long long high_start = high.get();
  int before = 0;
  for (auto& f : low) before += f.get() < high_start;
  // 100 tasks of 3 ms were queued first; the priority-10 one waits for at most some of them
  CHECK(before <= 40);
}

TEST_CASE("scheduler: after warm-up, max_queued counts tasks queued in workers as waiting", "[scheduler][executor]") {
  Gate gate;
  pfp::ExecutorOptions q;
  q.max_queued = 4;
  pfp::Executor ex(opts(2), q);
  auto id = ex.declare("id", [](int n) { return n; });
  auto block = ex.declare("block", [&gate](int) { return gate.wait(); });
  ex.start();
  warm_up(ex, id);
  auto b1 = ex.submit(block, 0);
  auto b2 = ex.submit(block, 0);
  sleep_ms(100);  // both have begun: no worker can begin anything else
  std::atomic<int> accepted{0};
  std::vector<pfp::Future<int>> fs(50);
  std::thread producer([&] {
    for (std::size_t i = 0; i < fs.size(); ++i) {
      fs[i] = ex.submit(id, static_cast<int>(i));
      ++accepted;
    }
  });
  sleep_ms(500);
  CHECK(accepted.load() == 4);
  gate.release();
  producer.join();
  CHECK(accepted.load() == 50);
  for (std::size_t i = 0; i < fs.size(); ++i) CHECK(fs[i].get() == static_cast<int>(i));
  CHECK(b1.get() == 0);
  CHECK(b2.get() == 0);
}

namespace {
void slow_hand_over() { std::this_thread::sleep_for(std::chrono::milliseconds(1500)); }
}  // namespace

TEST_CASE("scheduler: a function that returned in time is not timed out while its result is handed over", "[scheduler]") {
  // The worker is slow to hand the result over (as on a loaded machine): 1.5 s pass between the
  // function's return, well within its 1 s timeout, and its result reaching the parent.
  pfp::detail::testing::after_return = slow_hand_over;  // inherited by the workers
  struct Restore {
    ~Restore() { pfp::detail::testing::after_return = nullptr; }
  } restore;
  pfp::MultiProcessor<> mp({}, opts(1, 0, 1000));
  mp.register_function("quick", [](const pfp::Value&, const pfp::Args&) { return std::string(1u << 20, 'x'); });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 1);
  INFO(describe(rs[0]));
  CHECK(rs[0].ok());
  CHECK(rs[0].result.as<std::string>().size() == (1u << 20));
  CHECK(rs[0].duration < std::chrono::milliseconds(1000));
}

TEST_CASE("scheduler: a function that runs past its timeout is still timed out", "[scheduler]") {
  pfp::MultiProcessor<> mp({}, opts(2, 0, 100));
  for (int i = 0; i < 20; ++i) mp.register_function("quick" + std::to_string(i), [](const pfp::Value&, const pfp::Args&) { return 1; });
  mp.register_function("hang", [](const pfp::Value&, const pfp::Args&) {
    sleep_ms(60000);
    return 0;
  });
  const auto& rs = mp.execute_parallel();
  for (int i = 0; i < 20; ++i) CHECK(rs[static_cast<std::size_t>(i)].ok());
  CHECK(rs[20].status == pfp::Status::timed_out);
  CHECK(rs[20].error.find("exceeded the timeout of 100 ms") != std::string::npos);
}
