// pfp::Executor, per-submission control (issue 12 items 3 and 7): a timeout per submission,
// Future::cancel() of one task, Future::running(), add_done_callback / then, Executor::map with
// an overall deadline, and status() (what each worker runs, queued and running counts). Each on
// every backend where it applies.

#include "pfp_catch.hpp"
#include "executor_support.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <atomic>
#include <cstdio>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <unistd.h>

using namespace pfp_test;
using Catch::Matchers::Contains;

namespace {

const std::vector<pfp::Backend> all_backends = {pfp::Backend::processes, pfp::Backend::threads, pfp::Backend::inline_};

const char* name_of(pfp::Backend b) {
  return b == pfp::Backend::processes ? "processes" : b == pfp::Backend::threads ? "threads" : "inline";
}

pfp::Function<int, int> declare_nap(pfp::Executor& ex) {
  return ex.declare("nap", [](int ms_) {
    sleep_ms(ms_);
    return ms_;
  });
}

// Runs body(ex, nap, backend) for each backend, each time with a fresh executor of `workers`
// workers that has "nap" declared (body may declare more before its first submit).
template <class Body>
void per_backend(const std::vector<pfp::Backend>& backends, unsigned workers, Body body) {
  for (pfp::Backend b : backends) {
    INFO(name_of(b));
    pfp::Executor ex(executor_options(workers, b));
    auto nap = declare_nap(ex);
    body(ex, nap, b);
  }
}

// A task that leaves a line in a file: whether it ran at all, seen from any backend.
struct RanLog {
  std::string path = temp_path("executor_ran");
  ~RanLog() { std::remove(path.c_str()); }
  pfp::Function<int, int> declare(pfp::Executor& ex) const {
    const std::string p = path;
    return ex.declare("mark", [p](int n) {
      append_line(p, "ran " + std::to_string(n));
      return n;
    });
  }
  bool ran(int n) const { return read_file(path).find("ran " + std::to_string(n) + "\n") != std::string::npos; }
};

}  // namespace

// ------------------------------------------------------------------ a timeout per submission

TEST_CASE("executor control: a submission's own timeout kills it, others run unbounded (processes)", "[executor][control]") {
  pfp::Executor ex(executor_options(2));
  auto nap = declare_nap(ex);
  pfp::Submission limited;
  limited.timeout = ms(300);
  const auto t0 = Clock::now();
  auto hung = ex.submit_with(limited, nap, 20000);
  auto free_running = ex.submit(nap, 900);  // longer than the other's limit: no limit of its own
  CHECK(hung.result().status == pfp::Status::timed_out);
  CHECK_THAT(hung.result().error, Contains("300 ms"));
  CHECK(elapsed_ms(t0) < 10000);
  CHECK(free_running.get() == 900);
  pfp::Submission quick = limited;
  CHECK(ex.submit_with(quick, nap, 10).get() == 10);
  pfp::Submission negative;
  negative.timeout = ms(-1);
  CHECK_THROWS_WITH(ex.submit_with(negative, nap, 1), Contains("Submission::timeout is negative"));
}

TEST_CASE("executor control: a submission's timeout takes the place of Options::timeout (processes)", "[executor][control]") {
  pfp::Options o = executor_options(1);
  o.timeout = ms(200);
  pfp::Executor ex(o);
  auto nap = declare_nap(ex);
  pfp::Submission longer;
  longer.timeout = ms(5000);
  CHECK(ex.submit_with(longer, nap, 600).get() == 600);
  auto bounded = ex.submit(nap, 5000);
  CHECK(bounded.result().status == pfp::Status::timed_out);
  CHECK_THAT(bounded.result().error, Contains("200 ms"));
}

TEST_CASE("executor control: threads and inline do not enforce a submission's timeout", "[executor][control]") {
  per_backend({pfp::Backend::threads, pfp::Backend::inline_}, 2, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    pfp::Submission limited;
    limited.timeout = ms(20);
    CHECK(ex.submit_with(limited, nap, 120).get() == 120);  // as documented: runs to its end
  });
}

// ------------------------------------------------------------------ Future::cancel()

TEST_CASE("executor control: cancel() of a queued task: it never runs", "[executor][control]") {
  per_backend({pfp::Backend::processes, pfp::Backend::threads}, 1, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    RanLog log;
    auto mark = log.declare(ex);
    auto busy = ex.submit(nap, 600);
    REQUIRE(wait_until([&] { return busy.running(); }, ms(10000)));
    std::vector<pfp::Future<int>> queued;
    for (int i = 0; i < 4; ++i) queued.push_back(ex.submit(mark, i));
    CHECK(queued[1].cancel());
    CHECK(queued[3].cancel());
    CHECK_FALSE(queued[3].cancel());  // has its verdict already
    CHECK(queued[1].result().status == pfp::Status::cancelled);
    CHECK_THAT(queued[1].result().error, Contains("before it started"));
    if (b == pfp::Backend::threads) CHECK_THAT(queued[1].result().error, Contains("(Future::cancel())"));  // never pulled
    CHECK(queued[1].result().index == 2u);
    CHECK(queued[1].result().function_name == "mark");
    CHECK(busy.get() == 600);
    CHECK(queued[0].get() == 0);
    CHECK(queued[2].get() == 2);
    CHECK(queued[3].result().status == pfp::Status::cancelled);
    ex.shutdown();
    CHECK(log.ran(0));
    CHECK(log.ran(2));
    CHECK_FALSE(log.ran(1));
    CHECK_FALSE(log.ran(3));
  });
}

TEST_CASE("executor control: cancel() of a task a worker holds ahead of time (processes)", "[executor][control]") {
  // Many short tasks make the pool hand a worker several at once: cancelling the later ones
  // takes them back before they begin.
  RanLog log;
  pfp::Executor ex(executor_options(1));
  auto mark = log.declare(ex);
  auto nap = declare_nap(ex);
  for (int i = 0; i < 200; ++i) ex.submit(nap, 0).get();  // the pool learns tasks are short
  auto head = ex.submit(nap, 400);
  std::vector<pfp::Future<int>> behind;
  for (int i = 0; i < 6; ++i) behind.push_back(ex.submit(mark, i));
  sleep_ms(100);
  for (auto& f : behind) CHECK(f.cancel());
  CHECK(head.get() == 400);
  for (auto& f : behind) CHECK(f.result().status == pfp::Status::cancelled);
  ex.shutdown();
  for (int i = 0; i < 6; ++i) CHECK_FALSE(log.ran(i));
}

TEST_CASE("executor control: cancel() of a running task kills its worker (processes)", "[executor][control]") {
  pfp::Executor ex(executor_options(2));
  auto nap = declare_nap(ex);
  auto other = ex.submit(nap, 800);
  auto hung = ex.submit(nap, 30000);
  REQUIRE(wait_until([&] { return hung.running(); }, ms(10000)));
  const auto t0 = Clock::now();
  CHECK(hung.cancel());
  CHECK(hung.result().status == pfp::Status::cancelled);
  CHECK_THAT(hung.result().error, Contains("killed"));
  CHECK(elapsed_ms(t0) < 10000);
  CHECK(other.get() == 800);  // its neighbour is untouched
  CHECK(ex.submit(nap, 5).get() == 5);  // and the pool goes on
  ex.shutdown();
  CHECK(wait_until([] { return child_pids().empty(); }, ms(5000)));
}

TEST_CASE("executor control: cancel() cannot stop a running thread, nor a finished task", "[executor][control]") {
  per_backend(all_backends, 1, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    auto done = ex.submit(nap, 1);
    CHECK(done.get() == 1);
    CHECK_FALSE(done.cancel());
    CHECK(done.result().ok());
    if (b == pfp::Backend::threads) {
      auto runs = ex.submit(nap, 300);
      REQUIRE(wait_until([&] { return runs.running(); }, ms(10000)));
      CHECK_FALSE(runs.cancel());
      CHECK(runs.get() == 300);
    }
  });
}

// ------------------------------------------------------------------ Future::running()

TEST_CASE("executor control: running() is true only while the task runs", "[executor][control]") {
  per_backend({pfp::Backend::processes, pfp::Backend::threads}, 1, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    auto first = ex.submit(nap, 500);
    auto second = ex.submit(nap, 1);
    REQUIRE(wait_until([&] { return first.running(); }, ms(10000)));
    CHECK_FALSE(second.running());  // waits behind it (a worker may hold it, but has not begun it)
    CHECK(first.get() == 500);
    CHECK_FALSE(first.running());
    CHECK(second.get() == 1);
    CHECK_FALSE(second.running());
  });
  pfp::Executor inline_ex(executor_options(1, pfp::Backend::inline_));
  auto nap = declare_nap(inline_ex);
  auto f = inline_ex.submit(nap, 1);
  CHECK_FALSE(f.running());  // ran inside submit()
  CHECK(f.get() == 1);
}

// ------------------------------------------------------------------ add_done_callback / then

TEST_CASE("executor control: add_done_callback runs once per future, in the documented thread", "[executor][control]") {
  per_backend(all_backends, 2, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    std::atomic<int> calls{0}, sum{0}, in_caller{0};
    const std::thread::id me = std::this_thread::get_id();
    std::vector<pfp::Future<int>> fs;
    for (int i = 0; i < 6; ++i) {
      fs.push_back(ex.submit(nap, 50 + i));
      fs.back().add_done_callback([&](const pfp::Future<int>& f) {
        ++calls;
        sum += f.get();
        in_caller += std::this_thread::get_id() == me;
      });
    }
    CHECK(pfp::wait_all(fs, ms(20000)));
    ex.shutdown();
    CHECK(calls == 6);
    CHECK(sum == 6 * 50 + 15);
    // processes and threads: the pool's or a worker's thread; inline: the task ran in submit(),
    // so the callback ran at once, here
    if (b == pfp::Backend::inline_) CHECK(in_caller == 6);
    if (b == pfp::Backend::processes) CHECK(in_caller == 0);
    // on a future that is done already: at once, in this thread
    bool here = false;
    fs[0].add_done_callback([&](const pfp::Future<int>&) { here = std::this_thread::get_id() == me; });
    CHECK(here);
  });
}

TEST_CASE("executor control: what a done callback throws is rethrown by shutdown()", "[executor][control]") {
  per_backend({pfp::Backend::processes, pfp::Backend::threads}, 1, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    auto f = ex.submit(nap, 200);
    f.add_done_callback([](const pfp::Future<int>&) { throw std::runtime_error("callback broke"); });
    CHECK(f.get() == 200);  // the task's own verdict is untouched
    CHECK(ex.submit(nap, 1).get() == 1);  // the pool goes on
    CHECK_THROWS_WITH(ex.shutdown(), Contains("callback broke"));
    CHECK_NOTHROW(ex.shutdown());  // rethrown once
  });
  // on a future that is done already, the throw goes to the caller
  pfp::Executor ex(executor_options(1, pfp::Backend::inline_));
  auto nap = declare_nap(ex);
  auto f = ex.submit(nap, 1);
  CHECK_THROWS_WITH(f.add_done_callback([](const pfp::Future<int>&) { throw std::runtime_error("now"); }), Contains("now"));
}

TEST_CASE("executor control: a callback of a task cancelled in the queue may submit", "[executor][control]") {
  // Callbacks run outside the executor's lock, wherever the verdict is given.
  pfp::Executor ex(executor_options(1, pfp::Backend::threads));
  auto nap = declare_nap(ex);
  auto busy = ex.submit(nap, 300);
  auto queued = ex.submit(nap, 1);
  std::vector<pfp::Future<int>> from_callback;
  queued.add_done_callback([&](const pfp::Future<int>&) { from_callback.push_back(ex.submit(nap, 7)); });
  CHECK(queued.cancel());
  REQUIRE(from_callback.size() == 1);
  CHECK(from_callback[0].get() == 7);
  CHECK(busy.get() == 300);
}

TEST_CASE("executor control: then() chains a value, and what its function throws is its Result", "[executor][control]") {
  per_backend(all_backends, 2, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    auto boom = ex.declare("boom", [](int) -> int { throw std::domain_error("no"); });
    pfp::Future<int> doubled = ex.submit(nap, 20).then([](const pfp::Future<int>& f) { return 2 * f.get(); });
    CHECK(doubled.get() == 40);
    CHECK(doubled.result().function_name == "nap");
    auto text = doubled.then([](const pfp::Future<int>& f) { return "got " + std::to_string(f.get()); });
    CHECK(text.get() == "got 40");
    auto failed = ex.submit(boom, 1).then([](const pfp::Future<int>& f) { return f.get() + 1; });
    CHECK(failed.result().status == pfp::Status::exception);
    CHECK_THAT(failed.result().error, Contains("pfp::task_error") && Contains("std::domain_error: no"));
    auto thrown = ex.submit(nap, 1).then([](const pfp::Future<int>&) -> int { throw std::logic_error("in then"); });
    CHECK(thrown.result().status == pfp::Status::exception);
    CHECK_THAT(thrown.result().error, Contains("std::logic_error: in then"));
    CHECK_FALSE(thrown.cancel());  // not a submission of its own
    ex.shutdown();  // nothing was lost to rethrow here
  });
}

// ------------------------------------------------------------------ Executor::map

TEST_CASE("executor control: map returns values in input order on every backend", "[executor][control]") {
  for (pfp::Backend b : all_backends) {
    INFO(name_of(b));
    pfp::Executor ex(executor_options(3, b));
    auto square = ex.declare("square", [](int n) { return n * n; });
    auto add = ex.declare("add", [](int a, int c) { return a + c; });
    std::vector<int> in;
    for (int i = 0; i < 30; ++i) in.push_back(i);
    std::vector<int> want;
    for (int i : in) want.push_back(i * i);
    CHECK(ex.map(square, in) == want);
    CHECK(ex.map(square, in, ms(60000)) == want);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    CHECK(ex.map(add, pairs) == std::vector<int>{3, 7, 11});
    CHECK(ex.map(square, std::vector<int>{}).empty());
  }
}

TEST_CASE("executor control: map throws the first failure in input order", "[executor][control]") {
  for (pfp::Backend b : all_backends) {
    INFO(name_of(b));
    pfp::Executor ex(executor_options(2, b));
    auto check = ex.declare("check", [](int n) {
      if (n % 4 == 3) throw std::out_of_range("bad " + std::to_string(n));
      return n;
    });
    try {
      ex.map(check, std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
      FAIL("map did not throw");
    } catch (const pfp::task_error& e) {
      CHECK(e.result().index == 3u);  // the submission of item 3
      CHECK_THAT(e.result().error, Contains("bad 3"));
    }
  }
}

TEST_CASE("executor control: map's deadline cancels what is not done (processes kill it)", "[executor][control]") {
  per_backend({pfp::Backend::processes, pfp::Backend::threads}, 1, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    RanLog log;
    auto mark = log.declare(ex);
    const int slow = b == pfp::Backend::processes ? 30000 : 2500;
    const auto t0 = Clock::now();
    CHECK_THROWS_WITH(ex.map(nap, std::vector<int>{10, slow, 10}, ms(1000)),
                      Contains("timeout of 1000 ms passed with 2 of 3 results not ready"));
    CHECK(elapsed_ms(t0) < 10000);
    // the last one never ran; the slow one was killed (processes) or finished (threads)
    CHECK(ex.map(mark, std::vector<int>{1, 2}) == std::vector<int>{1, 2});
    CHECK(elapsed_ms(t0) < 15000);
    ex.shutdown();
  });
}

// ------------------------------------------------------------------ status()

TEST_CASE("executor control: status() shows each worker's task, since when, and the counts", "[executor][control]") {
  per_backend({pfp::Backend::processes, pfp::Backend::threads}, 2, [&](pfp::Executor& ex, const pfp::Function<int, int>& nap, [[maybe_unused]] pfp::Backend b) {
    ex.start();
    pfp::ExecutorStatus idle = ex.status();
    CHECK(idle.running == 0u);
    CHECK(idle.queued == 0u);
    if (b == pfp::Backend::processes) CHECK(idle.workers.size() == 2u);  // both idle, each with a pid
    const auto before = std::chrono::steady_clock::now();
    std::vector<pfp::Future<int>> fs;
    for (int i = 0; i < 5; ++i) fs.push_back(ex.submit(nap, i < 2 ? 1500 : 1));
    REQUIRE(wait_until([&] { return ex.status().running == 2u; }, ms(10000)));
    pfp::ExecutorStatus st = ex.status();
    CHECK(st.running == 2u);
    CHECK(st.queued == 3u);
    std::set<std::size_t> tasks;
    std::set<int> pids;
    for (const pfp::ExecutorWorker& w : st.workers) {
      if (!w.task) continue;
      tasks.insert(*w.task);
      pids.insert(w.pid);
      CHECK(w.function == "nap");
      CHECK(w.since >= before);
      CHECK(w.since <= std::chrono::steady_clock::now());
    }
    CHECK(tasks == std::set<std::size_t>{0, 1});
    if (b == pfp::Backend::processes) {
      CHECK(pids.size() == 2u);
      CHECK(pids.count(static_cast<int>(::getpid())) == 0u);
    } else {
      CHECK(pids == std::set<int>{static_cast<int>(::getpid())});
    }
    CHECK(pfp::wait_all(fs, ms(20000)));
    pfp::ExecutorStatus after = ex.status();
    CHECK(after.running == 0u);
    CHECK(after.queued == 0u);
  });
}

TEST_CASE("executor control: status() from a callback in the pool's thread does not wait for itself", "[executor][control]") {
  pfp::Executor ex(executor_options(1));
  auto nap = declare_nap(ex);
  auto f = ex.submit(nap, 500);  // the callback is added long before the verdict
  std::atomic<long long> took_ms{-1};
  std::atomic<std::size_t> seen{99};
  f.add_done_callback([&](const pfp::Future<int>&) {
    const auto t0 = Clock::now();
    seen = ex.status().workers.size();  // runs in the pool's thread: no report to wait for
    took_ms = elapsed_ms(t0);
  });
  CHECK(f.get() == 500);
  ex.shutdown();
  CHECK(took_ms >= 0);
  CHECK(took_ms < 2000);
  CHECK(seen == 0u);
}
