// pfp::Executor: submit while running, futures, as_completed / wait_any / wait_all, priorities,
// a bounded queue that blocks the producer, streaming to a consumer, and the three backends.

#include "pfp_catch.hpp"
#include "executor_support.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <algorithm>
#include <set>
#include <atomic>
#include <csignal>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace pfp_test;
using Catch::Matchers::Contains;

namespace {

// Sleeps the milliseconds it is given and returns them.
pfp::Function<int, int> declare_nap(pfp::Executor& ex) {
  return ex.declare("nap", [](int ms_) {
    sleep_ms(ms_);
    return ms_;
  });
}

}  // namespace

TEST_CASE("executor: submit while running returns typed futures", "[executor]") {
  pfp::Executor ex(executor_options(2));
  auto add = ex.declare("add", [](int a, int b) { return a + b; });
  auto greet = ex.declare("greet", [](std::string who) { return "hello " + who; });
  std::vector<pfp::Future<int>> sums;
  for (int i = 0; i < 40; ++i) sums.push_back(ex.submit(add, i, 1000));
  auto g = ex.submit(greet, std::string("pfp"));
  for (int i = 0; i < 40; ++i) CHECK(sums[static_cast<std::size_t>(i)].get() == i + 1000);
  CHECK(g.get() == "hello pfp");
  CHECK(g.result().function_name == "greet");
  CHECK(g.result().pid != getpid());
  CHECK(g.result().pid > 0);
}

TEST_CASE("executor: start() returns once its workers are forked", "[executor]") {
  // Threads a program creates after start() must not run while a worker is forked: a lock one of
  // them held then (in malloc under a sanitizer, say) would stay locked in the worker for good.
  for (int round = 0; round < 5; ++round) {
    pfp::Executor ex(executor_options(2));
    auto id = ex.declare("id", [](int n) { return n; });
    ex.start();
    CHECK(pfp_test::child_pids().size() == 2);
    CHECK(ex.submit(id, round).get() == round);
  }
}

TEST_CASE("executor: a failed task's future throws task_error carrying the Result", "[executor]") {
  pfp::Executor ex(executor_options(2));
  auto boom = ex.declare("boom", [](int n) -> int { throw std::out_of_range("no item " + std::to_string(n)); });
  auto crash = ex.declare("crash", [](int) -> int {
    std::raise(SIGSEGV);
    return 0;
  });
  auto fine = ex.declare("fine", [](int n) { return n * 2; });
  auto f1 = ex.submit(boom, 7);
  auto f2 = ex.submit(crash, 1);
  auto f3 = ex.submit(fine, 21);
  try {
    f1.get();
    FAIL("get() did not throw");
  } catch (const pfp::task_error& e) {
    CHECK(e.result().status == pfp::Status::exception);
    CHECK_THAT(e.result().error, Contains("std::out_of_range") && Contains("no item 7"));
    CHECK_THAT(std::string(e.what()), Contains("boom"));
  }
  CHECK_THROWS_AS(f2.get(), pfp::task_error);
  CHECK(f2.result().status == pfp::Status::crashed);
  CHECK_THAT(f2.result().error, Contains("SIGSEGV"));
  CHECK(f3.get() == 42);  // a crash of one worker does not touch the others' results
}

TEST_CASE("executor: ready, wait_for and wait", "[executor]") {
  pfp::Executor ex(executor_options(1));
  auto nap = declare_nap(ex);
  auto f = ex.submit(nap, 300);
  CHECK_FALSE(f.ready());
  CHECK_FALSE(f.wait_for(std::chrono::milliseconds(50)));
  CHECK(f.wait_for(std::chrono::seconds(20)));
  CHECK(f.ready());
  CHECK(f.get() == 300);
  pfp::Future<int> empty;
  CHECK_FALSE(empty.valid());
  CHECK_THROWS_AS(empty.get(), pfp::error);
}

TEST_CASE("executor: as_completed yields futures in completion order", "[executor]") {
  pfp::Executor ex(executor_options(3));
  auto nap = declare_nap(ex);
  std::vector<pfp::Future<int>> fs = {ex.submit(nap, 900), ex.submit(nap, 100), ex.submit(nap, 500)};
  std::vector<int> order;
  for (auto& f : pfp::as_completed(fs)) order.push_back(f.get());
  CHECK(order == std::vector<int>{100, 500, 900});

  auto slow = ex.submit(nap, 2000);
  CHECK_THROWS_WITH(
      [&] {
        for (auto& f : pfp::as_completed(std::vector<pfp::Future<int>>{slow}, std::chrono::milliseconds(100))) (void)f;
      }(),
      Contains("timeout"));
}

TEST_CASE("executor: wait_any and wait_all", "[executor]") {
  pfp::Executor ex(executor_options(2));
  auto nap = declare_nap(ex);
  std::vector<pfp::Future<int>> fs = {ex.submit(nap, 800), ex.submit(nap, 50)};
  auto first = pfp::wait_any(fs);
  REQUIRE(first.has_value());
  CHECK(*first == 1u);
  CHECK_FALSE(pfp::wait_all(fs, std::chrono::milliseconds(10)));
  CHECK(pfp::wait_all(fs));
  CHECK(fs[0].ready());
  CHECK_FALSE(pfp::wait_any(std::vector<pfp::Future<int>>{}).has_value());
}

TEST_CASE("executor: with the worker busy, higher priority starts first", "[executor]") {
  pfp::Executor ex(executor_options(1));
  auto started_at = ex.declare("started_at", [](int hold_ms) {
    long long t = mono_ns();
    sleep_ms(hold_ms);
    return t;
  });
  auto busy = ex.submit(started_at, 400);
  sleep_ms(150);  // the worker has taken the busy task
  std::vector<std::pair<int, pfp::Future<long long>>> fs;
  for (int p : {1, 5, 3, 10, 5})  fs.emplace_back(p, ex.submit_with_priority(p, started_at, 1));
  busy.get();
  std::vector<std::pair<long long, int>> by_start;
  for (std::size_t i = 0; i < fs.size(); ++i) by_start.emplace_back(fs[i].second.get(), fs[i].first * 10 + static_cast<int>(i));
  std::sort(by_start.begin(), by_start.end());
  std::vector<int> order;
  for (auto& [t, tag] : by_start) order.push_back(tag);
  // priority 10 first, then the two 5s in submission order, then 3, then 1
  CHECK(order == std::vector<int>{103, 51, 54, 32, 10});
}

TEST_CASE("executor: a bounded queue blocks the producer", "[executor]") {
  pfp::ExecutorOptions q;
  q.max_queued = 2;
  pfp::Executor ex(executor_options(1), q);
  auto nap = declare_nap(ex);
  ex.start();
  std::atomic<int> submitted{0};
  std::vector<pfp::Future<int>> fs(6);
  std::thread producer([&] {
    for (std::size_t i = 0; i < fs.size(); ++i) {
      fs[i] = ex.submit(nap, 250);
      ++submitted;
    }
  });
  sleep_ms(120);
  // one running + two waiting; the fourth submit() blocks until the first task ends
  CHECK(submitted.load() == 3);
  producer.join();
  CHECK(submitted.load() == 6);
  for (auto& f : fs) CHECK(f.get() == 250);
}

TEST_CASE("executor: producer/consumer streaming ends cleanly and carries the producer's error", "[executor]") {
  pfp::ExecutorOptions q;
  q.max_queued = 4;
  q.stream_results = true;
  SECTION("clean end of stream, no sentinel") {
    pfp::Executor ex(executor_options(2), q);
    auto square = ex.declare("square", [](int n) { return n * n; });
    ex.start();
    std::thread producer([&] {
      for (int i = 0; i < 50; ++i) ex.submit(square, i);
      ex.close();
    });
    long long sum = 0;
    int count = 0;
    while (auto r = ex.next_completed()) {
      REQUIRE(r->ok());
      sum += r->result.as<long long>();
      ++count;
    }
    producer.join();
    CHECK(count == 50);
    CHECK(sum == 40425);  // sum of squares 0..49
  }
  SECTION("a producer error reaches the consumer after the results produced before it") {
    pfp::Executor ex(executor_options(2), q);
    auto square = ex.declare("square", [](int n) { return n * n; });
    ex.start();
    std::thread producer([&] {
      try {
        for (int i = 0; i < 10; ++i) {
          if (i == 5) throw std::runtime_error("the source broke at item 5");
          ex.submit(square, i);
        }
        ex.close();
      } catch (...) {
        ex.close(std::current_exception());
      }
    });
    int count = 0;
    CHECK_THROWS_WITH(
        [&] {
          while (auto r = ex.next_completed()) ++count;
        }(),
        "the source broke at item 5");
    producer.join();
    CHECK(count == 5);
  }
  SECTION("the queue bound includes results the consumer has not taken") {
    pfp::Executor ex(executor_options(2), q);
    auto square = ex.declare("square", [](int n) { return n * n; });
    ex.start();
    std::atomic<int> submitted{0};
    std::thread producer([&] {
      for (int i = 0; i < 10; ++i) {
        ex.submit(square, i);
        ++submitted;
      }
      ex.close();
    });
    sleep_ms(300);
    CHECK(submitted.load() == 4);  // nobody consumes: the producer waits
    int count = 0;
    while (ex.next_completed()) ++count;
    producer.join();
    CHECK(count == 10);
  }
}

TEST_CASE("executor: misuse gets a clear pfp::error", "[executor]") {
  pfp::Executor ex(executor_options(1));
  auto id = ex.declare("id", [](int n) { return n; });
  CHECK(ex.submit(id, 3).get() == 3);
  CHECK_THROWS_WITH(ex.declare("late", [](int n) { return n; }), Contains("before start()"));
  CHECK_THROWS_WITH(ex.next_completed(), Contains("stream_results"));
  ex.shutdown();
  CHECK_THROWS_AS(ex.submit(id, 4), pfp::error);
  pfp::Options bad;
  bad.timeout = std::chrono::milliseconds(-1);
  CHECK_THROWS_AS(pfp::Executor(bad), pfp::error);
}

TEST_CASE("executor: shutdown(cancel_pending) and cancel()", "[executor]") {
  SECTION("shutdown with cancel_pending cancels what has not started") {
    pfp::Executor ex(executor_options(1));
    auto nap = declare_nap(ex);
    auto running = ex.submit(nap, 300);
    sleep_ms(100);
    auto queued = ex.submit(nap, 300);
    ex.shutdown(true);
    CHECK(running.get() == 300);
    CHECK(queued.result().status == pfp::Status::cancelled);
  }
  SECTION("cancel kills the running task") {
    pfp::Executor ex(executor_options(1));
    auto nap = declare_nap(ex);
    auto running = ex.submit(nap, 30000);
    sleep_ms(150);
    auto t0 = Clock::now();
    ex.cancel();
    CHECK(running.result().status == pfp::Status::cancelled);
    CHECK(elapsed_ms(t0) < 5000);
  }
  CHECK(wait_until([] { return child_pids().empty(); }, ms(5000)));
}

TEST_CASE("executor: no worker outlives the executor", "[executor]") {
  {
    pfp::Executor ex(executor_options(3));
    auto id = ex.declare("id", [](int n) { return n; });
    std::vector<pfp::Future<int>> fs;
    for (int i = 0; i < 10; ++i) fs.push_back(ex.submit(id, i));
    CHECK(fs.back().get() == 9);
    CHECK_FALSE(child_pids().empty());
  }
  CHECK(child_pids().empty());
}

TEST_CASE("executor: every backend gives the same Results", "[executor][backend]") {
  auto run = [](pfp::Backend backend) {
    pfp::Executor ex(executor_options(2, backend));
    auto div = ex.declare("div", [](int a, int b) {
      if (b == 0) throw std::domain_error("division by zero");
      return a / b;
    });
    auto text = ex.declare("text", [](std::string s, int n) {
      std::string out;
      for (int i = 0; i < n; ++i) out += s;
      return out;
    });
    std::vector<pfp::Future<pfp::Value>> fs;
    for (int i = 0; i < 6; ++i) fs.push_back(ex.submit(div, 100, i % 3).as<pfp::Value>());
    fs.push_back(ex.submit(text, std::string("ab"), 3).as<pfp::Value>());
    std::vector<std::tuple<std::string, pfp::Status, pfp::Value, std::string>> out;
    for (auto& f : fs) {
      const pfp::Result& r = f.result();
      out.emplace_back(r.function_name, r.status, r.result, r.error);
    }
    return out;
  };
  const auto processes = run(pfp::Backend::processes);
  REQUIRE(processes.size() == 7u);
  CHECK(std::get<1>(processes[0]) == pfp::Status::exception);
  CHECK_THAT(std::get<3>(processes[0]), Contains("std::domain_error") && Contains("division by zero"));
  CHECK(std::get<2>(processes[1]) == pfp::Value(100));
  CHECK(std::get<2>(processes[6]) == pfp::Value("ababab"));
  CHECK((run(pfp::Backend::threads) == processes));  // (parenthesized: Catch cannot print the tuples)
  CHECK((run(pfp::Backend::inline_) == processes));
}

TEST_CASE("executor: an argument that does not convert is that task's exception", "[executor]") {
  pfp::Executor ex(executor_options(1));
  auto small = ex.declare("small", [](std::int8_t n) { return static_cast<int>(n); });
  auto f = ex.submit(small, 1000);  // 1000 converts to int8_t in the caller... as an int argument
  CHECK(f.result().status == pfp::Status::exception);
}

TEST_CASE("executor: timeouts kill the task, fresh workers replace retired ones", "[executor]") {
  pfp::Options o = executor_options(2);
  o.timeout = std::chrono::milliseconds(300);
  o.max_tasks_per_worker = 1;
  pfp::Executor ex(o);
  auto nap = ex.declare("nap", [](int ms_) {
    sleep_ms(ms_);
    return static_cast<int>(getpid());
  });
  auto t0 = Clock::now();
  auto hung = ex.submit(nap, 20000);
  std::vector<pfp::Future<int>> quick;
  for (int i = 0; i < 6; ++i) quick.push_back(ex.submit(nap, 1));
  CHECK(hung.result().status == pfp::Status::timed_out);
  CHECK_THAT(hung.result().error, Contains("300 ms"));
  CHECK(elapsed_ms(t0) < 10000);
  std::set<int> pids;
  for (auto& f : quick) pids.insert(f.get());
  CHECK(pids.size() == quick.size());  // one process per task
}

TEST_CASE("executor: when no worker can start, start() and submit() throw with the reason",
          "[executor]") {
#if defined(PFP_TEST_SANITIZER_RUNTIME)
  SUCCEED("skipped under sanitizers: they need descriptors this test takes away");
  return;
#endif
  // In a child whose descriptor limit leaves no room for a worker's pipes.
  ChildOutcome o = run_in_child([] {
    pfp::Executor ex(executor_options(2));
    auto id = ex.declare("id", [](int n) { return n; });
    // Take every descriptor but the six the executor's own wake-up, control and cancel pipes need.
    std::vector<int> hog;
    for (int fd; (fd = ::dup(0)) >= 0;) hog.push_back(fd);
    for (int k = 0; k < 6 && !hog.empty(); ++k) {
      ::close(hog.back());
      hog.pop_back();
    }
    try {
      ex.start();
      std::printf("start() returned\n");
    } catch (const pfp::error& e) {
      std::printf("start: %s\n", e.what());
    }
    for (int fd : hog) ::close(fd);
    try {
      ex.submit(id, 2);
      std::printf("second submit accepted\n");
    } catch (const pfp::error& e) {
      std::printf("second submit: %s\n", e.what());
    }
    return 0;
  });
  INFO(o.out);
  REQUIRE(o.exited_ok());
  CHECK_THAT(o.out, Contains("start: pfp::Executor: the pool has failed") && Contains("could not start any worker process"));
  CHECK_THAT(o.out, Contains("second submit: pfp::Executor: the pool has failed"));
}
