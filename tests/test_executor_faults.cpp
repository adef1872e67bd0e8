// pfp::Executor under faults (issue 11): every accepted submission gets a verdict, whatever
// happens to the pool -- cancel() racing submit(), workers that cannot be (re)started, a start()
// that fails, a task that calls exit() in a worker forked while a thread waited on a future, a
// task that writes on pfp's result pipe.

#include "pfp_catch.hpp"
#include "executor_support.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <unistd.h>

using namespace pfp_test;
using Catch::Matchers::Contains;

namespace {

// Takes every free descriptor (until EMFILE); give them back with release().
struct DescriptorHog {
  std::vector<int> fds;
  explicit DescriptorHog(bool now = true) {
    if (now) take();
  }
  void take() {
    for (int fd; (fd = ::dup(0)) >= 0;) fds.push_back(fd);
  }
  void release() {
    for (int fd : fds) ::close(fd);
    fds.clear();
  }
  ~DescriptorHog() { release(); }
};

// One round of cancel() while three threads submit: true if every accepted submission got its
// verdict in time.
bool cancel_while_submitting(pfp::Backend backend, std::string& why) {
  pfp::Executor ex(executor_options(2, backend));
  auto id = ex.declare("id", [](int n) { return n; });
  ex.start();
  std::vector<std::vector<pfp::Future<int>>> accepted(3);
  std::vector<std::thread> producers;
  std::atomic<int> running{0};
  for (std::size_t t = 0; t < accepted.size(); ++t)
    producers.emplace_back([&, t] {
      ++running;
      for (int i = 0;; ++i) {
        try {
          accepted[t].push_back(ex.submit(id, i));
        } catch (const pfp::error&) {
          return;  // closed: refused, not lost
        }
      }
    });
  while (running.load() < 3) std::this_thread::yield();
  sleep_ms(2);
  ex.cancel();
  for (auto& p : producers) p.join();
  std::size_t total = 0;
  for (auto& fs : accepted) {
    total += fs.size();
    if (!pfp::wait_all(fs, ms(10000))) {
      std::size_t unanswered = 0;
      for (auto& f : fs) unanswered += !f.ready();
      why = std::to_string(unanswered) + " of " + std::to_string(fs.size()) + " accepted submissions never got a verdict";
      return false;
    }
  }
  for (auto& fs : accepted)
    for (auto& f : fs) {
      const pfp::Result& r = f.result();
      if (!r.ok() && r.status != pfp::Status::cancelled) {
        why = "unexpected verdict " + std::string(pfp::to_string(r.status)) + ": " + r.error;
        return false;
      }
    }
  why = std::to_string(total) + " accepted";
  return true;
}

// With max_tasks_per_worker = 1 the pool forks a successor as soon as a worker has retired: waits
// until the one after `retired` is there, so that what comes next needs one more.
void wait_for_successor(int retired) {
  wait_until(
      [&] {
        const std::vector<pid_t> pids = child_pids();
        return pids.size() == 1 && pids[0] != retired;
      },
      ms(10000));
}

// An executor of one worker and one task per worker whose successor worker has just run a task,
// with every descriptor taken (hog): the next task needs a worker that cannot be started.
struct ShortOfDescriptors {
  pfp::Executor ex{[] {
    pfp::Options opt = executor_options(1);
    opt.max_tasks_per_worker = 1;
    return opt;
  }()};
  pfp::Function<int, int> id = ex.declare("id", [](int n) { return n; });
  DescriptorHog hog{false};
  ShortOfDescriptors() {
    auto first = ex.submit(id, 1);
    std::printf("first: %d\n", first.get());
    wait_for_successor(first.result().pid);
    hog.take();
    std::printf("on the successor: %d\n", ex.submit(id, 2).get());
  }
};

// Runs body(ex, id, hog) in a child with a ShortOfDescriptors executor, for up to a minute.
ChildOutcome short_of_descriptors(void (*body)(pfp::Executor&, const pfp::Function<int, int>&, DescriptorHog&)) {
  return run_in_child(
      [body] {
        ShortOfDescriptors run;
        body(run.ex, run.id, run.hog);
        std::fflush(stdout);
        return 0;
      },
      ms(60000));
}

bool skipped_under_sanitizers() {
#if defined(PFP_TEST_SANITIZER_RUNTIME)
  SUCCEED("skipped under sanitizers: they need descriptors this test takes away");
  return true;
#else
  return false;
#endif
}

}  // namespace

TEST_CASE("executor faults: cancel() while other threads submit leaves no future unanswered", "[executor][faults]") {
  for (pfp::Backend backend : {pfp::Backend::processes, pfp::Backend::threads}) {
    for (int round = 0; round < 60; ++round) {
      std::string why;
      const bool ok = cancel_while_submitting(backend, why);
      INFO("backend " << static_cast<int>(backend) << " round " << round << ": " << why);
      REQUIRE(ok);
    }
  }
  CHECK(wait_until([] { return child_pids().empty(); }, ms(5000)));
}

TEST_CASE("executor faults: a pool that cannot restart its workers fails pending and later submissions",
          "[executor][faults]") {
  if (skipped_under_sanitizers()) return;
  // In a child: after the first task its only worker retires, and no descriptor is left for the
  // pipes of a successor, ever again.
  ChildOutcome o = short_of_descriptors([](pfp::Executor& ex, const pfp::Function<int, int>& id, DescriptorHog& hog) {
    auto t0 = Clock::now();
    auto pending = ex.submit(id, 3);
    const bool answered = pending.wait_for(ms(30000));
    const long long waited = elapsed_ms(t0);
    std::printf("pending answered: %d after %lld ms\n", answered ? 1 : 0, waited);
    if (answered) std::printf("pending: %s: %s\n", std::string(pfp::to_string(pending.result().status)).c_str(),
                              pending.result().error.c_str());
    try {
      auto later = ex.submit(id, 4);
      const bool later_answered = later.wait_for(ms(3000));
      std::printf("later submit accepted, answered: %d\n", later_answered ? 1 : 0);
      if (later_answered) std::printf("later: %s\n", later.result().error.c_str());
    } catch (const pfp::error& e) {
      std::printf("later submit: %s\n", e.what());
    }
    hog.release();
  });
  INFO(o.out);
  REQUIRE(o.exited_ok());
  CHECK_THAT(o.out, Contains("first: 1") && Contains("on the successor: 2"));
  CHECK_THAT(o.out, Contains("pending answered: 1"));
  CHECK_THAT(o.out, Contains("pending: cancelled: not run: could not start a worker process") &&
                        Contains("Too many open files"));
  CHECK_THAT(o.out, Contains("later submit: pfp::Executor: the pool has failed") &&
                        Contains("could not start a worker process"));
}

TEST_CASE("executor faults: a short shortage of descriptors is waited out with back-off", "[executor][faults]") {
  if (skipped_under_sanitizers()) return;
  // No descriptor for a successor's pipes for three seconds, then they come back: the pool keeps
  // trying to start one, and the task waiting for it runs.
  ChildOutcome o = short_of_descriptors([](pfp::Executor& ex, const pfp::Function<int, int>& id, DescriptorHog& hog) {
    auto waiting = ex.submit(id, 5);
    sleep_ms(3000);
    const bool early = waiting.ready();
    hog.release();
    std::printf("answered during the shortage: %d\n", early ? 1 : 0);
    const pfp::Result& r = waiting.result();
    std::printf("waiting: %s %s\n", std::string(pfp::to_string(r.status)).c_str(), r.error.c_str());
    std::printf("then: %d\n", ex.submit(id, 3).get());
  });
  INFO(o.out);
  REQUIRE(o.exited_ok());
  CHECK_THAT(o.out, Contains("answered during the shortage: 0"));
  CHECK_THAT(o.out, Contains("waiting: ok"));
  CHECK_THAT(o.out, Contains("then: 3"));
}

TEST_CASE("executor faults: after start() failed, submit() is refused with the reason", "[executor][faults]") {
  if (skipped_under_sanitizers()) return;
  for (pfp::Backend backend : {pfp::Backend::processes, pfp::Backend::threads}) {
    INFO("backend " << static_cast<int>(backend));
    // No descriptor at all for the executor's own pipes.
    ChildOutcome o = run_in_child([backend] {
      pfp::Executor ex(executor_options(2, backend));
      auto id = ex.declare("id", [](int n) { return n; });
      {
        DescriptorHog hog;
        try {
          ex.start();
          std::printf("start() returned\n");
        } catch (const pfp::error& e) {
          std::printf("start: %s\n", e.what());
        }
      }
      try {
        auto f = ex.submit(id, 2);
        std::printf("submit accepted, answered: %d\n", f.wait_for(ms(3000)) ? 1 : 0);
      } catch (const pfp::error& e) {
        std::printf("submit: %s\n", e.what());
      }
      return 0;
    });
    INFO(o.out);
    REQUIRE(o.exited_ok());
    CHECK_THAT(o.out, Contains("start: pfp::Executor: the pool has failed: could not start") && Contains("Too many open files"));
    CHECK_THAT(o.out, Contains("submit: pfp::Executor: the pool has failed: could not start"));
  }
}

TEST_CASE("executor faults: exit() in a worker forked while a thread waits on a future does not hang",
          "[executor][faults]") {
  // Every task gets a fresh worker, forked while another thread waits on a future: a function
  // that calls exit() there must end its worker (a crash), not block in a destructor of pfp's.
  ChildOutcome o = run_in_child(
      [] {
        pfp::Options opt = executor_options(2);
        opt.max_tasks_per_worker = 1;
        pfp::Executor ex(opt);
        auto nap = ex.declare("nap", [](int n) {
          sleep_ms(n);
          return n;
        });
        auto leave = ex.declare("leave", [](int code) -> int { std::exit(code); });
        auto slow = ex.submit(nap, 3000);
        std::thread waiter([&] { slow.wait(); });
        sleep_ms(200);  // the waiter sleeps on the future hub now
        std::printf("quick: %d\n", ex.submit(nap, 1).get());
        auto left = ex.submit(leave, 0);
        const bool answered = left.wait_for(ms(15000));
        std::printf("exit task answered: %d\n", answered ? 1 : 0);
        if (answered)
          std::printf("exit task: %s: %s\n", std::string(pfp::to_string(left.result().status)).c_str(),
                      left.result().error.c_str());
        waiter.join();
        std::printf("slow: %d\n", slow.get());
        std::fflush(stdout);
        if (!answered) ::_exit(3);  // the destructor would hang too
        return 0;
      },
      ms(60000));
  INFO(o.out);
  REQUIRE(o.exited_ok());
  CHECK_THAT(o.out, Contains("exit task answered: 1"));
  CHECK_THAT(o.out, Contains("exit task: crashed") && Contains("exited with"));
  CHECK_THAT(o.out, Contains("slow: 3000"));
}

TEST_CASE("executor faults: a task that wrote on pfp's result pipe is not reported ok", "[executor][faults]") {
  pfp::Executor ex(executor_options(2));
  auto scribble = ex.declare("scribble", [](int n) {
    const char junk[] = "this is not a pfp frame, whatever the worker thinks";
    (void)!::write(pfp::detail::worker_result_fd, junk, sizeof junk);  // pfp's test hook
    if (n % 2) sleep_ms(5);  // found while it runs, or only after its frame was sent
    return n;
  });
  auto id = ex.declare("id", [](int n) { return n; });
  for (int round = 0; round < 8; ++round) {
    INFO("round " << round);
    std::vector<pfp::Future<int>> before, after;
    for (int i = 0; i < 3; ++i) before.push_back(ex.submit(id, i));
    auto bad = ex.submit(scribble, 98 + round % 2);
    for (int i = 0; i < 3; ++i) after.push_back(ex.submit(id, 10 + i));
    const pfp::Result& r = bad.result();
    INFO(pfp::to_string(r.status) << ": " << r.error);
    // Crashed, whether the parent found the junk while the function ran or only after the
    // function returned (then the worker has named it as the writer).
    CHECK(r.status == pfp::Status::crashed);
    CHECK_THAT(r.error, Contains("protocol error"));
    CHECK(r.result.is_null());
    for (int i = 0; i < 3; ++i) {
      CHECK(before[static_cast<std::size_t>(i)].get() == i);
      CHECK(after[static_cast<std::size_t>(i)].get() == 10 + i);
    }
  }
}

TEST_CASE("executor faults: a task that writes junk on every descriptor is not reported ok", "[executor][faults]") {
  std::vector<int> theirs;  // the test's own descriptors are left alone
  for (int fd : open_fds()) theirs.push_back(fd);
  pfp::Executor ex(executor_options(1));
  auto scribble = ex.declare("scribble", [theirs](int n) {
    const std::string junk(512, '\x5a');
    for (int fd = 3; fd < 1024; ++fd) {
      if (std::find(theirs.begin(), theirs.end(), fd) != theirs.end()) continue;
      pollfd pfd{fd, POLLOUT, 0};
      if (::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLOUT)) (void)!::write(fd, junk.data(), junk.size());
    }
    return n;
  });
  auto id = ex.declare("id", [](int n) { return n; });
  for (int round = 0; round < 6; ++round) {
    INFO("round " << round);
    auto bad = ex.submit(scribble, 7);
    auto good = ex.submit(id, round);
    const pfp::Result& r = bad.result();
    INFO(pfp::to_string(r.status) << ": " << r.error);
    CHECK(r.status == pfp::Status::crashed);
    CHECK_THAT(r.error, Contains("protocol error"));
    CHECK(good.get() == round);
  }
}
