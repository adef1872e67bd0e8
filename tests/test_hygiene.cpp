// What a run leaves behind in the calling process: no children, zombies or descriptors; no
// doubled stdio output; no SIGPIPE death; signal dispositions as they were; workers that end when
// the caller dies; never more workers than asked for.
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
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


Value good(const Value&, const Args& a) { return a.at("i").as<long long>() * 10 + 1; }
Value crash_abort(const Value&, const Args&) { std::abort(); }
Value crash_segv(const Value&, const Args&) {
  volatile int* volatile p = nullptr;
  *p = 1;
  return 0;
}
Value crash_exit3(const Value&, const Args&) { _exit(3); }
Value crash_exit0(const Value&, const Args&) { std::exit(0); }
Value throws(const Value&, const Args&) { throw std::runtime_error("x"); }
Value sleep_long(const Value&, const Args&) {
  for (int i = 0; i < 100; ++i) sleep_ms(100);
  return 0;
}
Value fork_and_sleep(const Value&, const Args&) {
  if (fork() == 0) {
    for (int i = 0; i < 100; ++i) sleep_ms(100);
    _exit(0);
  }
  for (int i = 0; i < 100; ++i) sleep_ms(100);
  return 0;
}

// Registers a mix of every kind of ending.
void register_mix(MultiProcessor<>& mp) {
  int i = 0;
  mp.register_function("good", good, Args{{"i", i++}});
  mp.register_function("abort", crash_abort);
  mp.register_function("good", good, Args{{"i", i++}});
  mp.register_function("segv", crash_segv);
  mp.register_function("exit3", crash_exit3);
  mp.register_function("good", good, Args{{"i", i++}});
  mp.register_function("exit0", crash_exit0);
  mp.register_function("throws", throws);
  mp.register_function("sleep_long", sleep_long);
  mp.register_function("fork_and_sleep", fork_and_sleep);
  mp.register_function("good", good, Args{{"i", i++}});
}

void check_mix(const std::vector<Result>& rs) {
  REQUIRE(rs.size() == 11);
  const Status expect[] = {Status::ok,      Status::crashed,   Status::ok,        Status::crashed,
                           Status::crashed, Status::ok,        Status::crashed,   Status::exception,
                           Status::timed_out, Status::timed_out, Status::ok};
  for (std::size_t k = 0; k < rs.size(); ++k) {
    INFO(describe(rs[k]));
    CHECK(rs[k].status == expect[k]);
  }
}

std::set<int> parse_fd_listing(const std::string& ls_output) {
  std::set<int> fds;
  std::istringstream in(ls_output);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) fds.insert(std::atoi(line.c_str()));
  return fds;
}

std::string join(const std::set<int>& s) {
  std::string out;
  for (int x : s) out += std::to_string(x) + " ";
  return out;
}

}  // namespace

TEST_CASE("no child, zombie or descriptor is left after runs with crashes and timeouts", "[hygiene]") {
  const auto fds_initially = open_fds();
  REQUIRE(child_pids().empty());
  for (const Options& o : {opts(2, 0, 200), opts(1, 0, 200), opts(3, 1, 200)}) {
    INFO("workers " << o.workers << " max_tasks " << o.max_tasks_per_worker);
    std::set<int> fds_before;
    {
      MultiProcessor<> mp(Value{}, o);
      register_mix(mp);
      fds_before = open_fds();  // the object may keep descriptors of its own (e.g. for cancel())
      const auto t0 = Clock::now();
      const auto& rs = mp.execute_parallel();
      // checked at once: nothing may be left when execute_parallel returns
      const auto kids = child_pids();
      errno = 0;
      int st = 0;
      const pid_t w = waitpid(-1, &st, WNOHANG);
      const int wait_errno = errno;
      const auto fds_after = open_fds();
      CAPTURE(elapsed_ms(t0));
      check_mix(rs);
      INFO("children left: " << pids_to_string(kids));
      CHECK(kids.empty());
      CHECK(w == -1);
      CHECK(wait_errno == ECHILD);
      INFO("fds before: " << fds_to_string(fds_before) << "\nfds after: " << fds_to_string(fds_after));
      CHECK(fds_after == fds_before);
    }
    // and once the MultiProcessor is gone, so is everything it opened
    const auto fds_final = open_fds();
    INFO("fds initially: " << fds_to_string(fds_initially) << "\nfds at the end: " << fds_to_string(fds_final));
    CHECK(fds_final == fds_initially);
  }
}

TEST_CASE("many runs do not accumulate descriptors or processes", "[hygiene]") {
  const auto fds_before = open_fds();
  for (int round = 0; round < 20; ++round) {
    MultiProcessor<> mp(Value{}, opts(2, round % 3));
    mp.register_function("good", good, Args{{"i", round}});
    mp.register_function("abort", crash_abort);
    mp.register_function("throws", throws);
    mp.register_function("good2", good, Args{{"i", round}});
    const auto& rs = mp.execute_parallel();
    REQUIRE(rs.size() == 4);
    CHECK(rs[0].ok());
    CHECK(rs[1].status == Status::crashed);
    CHECK(rs[2].status == Status::exception);
    CHECK(rs[3].ok());
  }
  CHECK(child_pids().empty());
  const auto fds_after = open_fds();
  INFO("fds before: " << fds_to_string(fds_before) << "\nfds after: " << fds_to_string(fds_after));
  CHECK(fds_after == fds_before);
}

TEST_CASE("internal descriptors are close-on-exec", "[hygiene]") {
  // What a program exec'ed from the test process itself sees...
  const std::string baseline_text = exec_capture({"/bin/ls", "/proc/self/fd"});
  const auto baseline = parse_fd_listing(baseline_text);
  REQUIRE(baseline.count(0) == 1);
  REQUIRE(baseline.count(1) == 1);
  // ...is exactly what a program exec'ed from a function sees.
  MultiProcessor<> mp(Value{}, opts(3));
  for (int i = 0; i < 3; ++i)
    mp.register_function("exec_ls" + std::to_string(i), [](const Value&, const Args&) {
      sleep_ms(100);  // let all workers exist at once
      return exec_capture({"/bin/ls", "/proc/self/fd"});
    });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 3);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
    const auto seen = parse_fd_listing(r.result.as<std::string>());
    INFO("baseline: " << join(baseline) << " in worker: " << join(seen));
    CHECK(seen == baseline);
  }
}

TEST_CASE("a worker does not hold other workers' descriptors", "[hygiene]") {
  auto fd_counts = [](unsigned workers) {
    MultiProcessor<> mp(Value{}, opts(workers));
    for (unsigned i = 0; i < workers; ++i)
      mp.register_function("count" + std::to_string(i), [](const Value&, const Args&) {
        sleep_ms(150);  // all workers exist at once
        return static_cast<long long>(count_open_fds());
      });
    const auto& rs = mp.execute_parallel();
    std::vector<long long> counts;
    for (const auto& r : rs) {
      INFO(describe(r));
      REQUIRE(r.ok());
      counts.push_back(r.result.as<long long>());
    }
    return counts;
  };
  const auto one = fd_counts(1);
  const auto four = fd_counts(4);
  REQUIRE(one.size() == 1);
  REQUIRE(four.size() == 4);
  for (long long c : four) {
    CAPTURE(one[0], c);
    CHECK(c == one[0]);
  }
}

TEST_CASE("unflushed stdio output of the caller is printed exactly once", "[hygiene]") {
  const auto outcome = run_in_child([] {
    std::printf("PARENT-MARKER\n");  // stdout is a pipe: fully buffered, not flushed
    std::cout << "COUT-MARKER\n";
    MultiProcessor<> mp(Value{}, opts(2, 1));
    mp.register_function("good", good, Args{{"i", 0}});
    mp.register_function("exit0", crash_exit0);  // exit() flushes the worker's stdio copy
    mp.register_function("abort", crash_abort);
    mp.register_function("prints", [](const Value&, const Args&) {
      std::printf("FN-LINE\n");
      return 1;
    });
    mp.register_function("exit0_again", crash_exit0);
    const auto& rs = mp.execute_parallel();
    const bool ok = rs.size() == 5 && rs[0].ok() && rs[1].status == Status::crashed &&
                    rs[2].status == Status::crashed && rs[3].ok() && rs[4].status == Status::crashed;
    std::printf("AFTER-RUN\n");
    return ok ? 0 : 3;
  });
  INFO("child: " << outcome.describe() << "\noutput:\n" << outcome.out);
  CHECK(outcome.exited_ok());
  CHECK(count_occurrences(outcome.out, "PARENT-MARKER\n") == 1);
  CHECK(count_occurrences(outcome.out, "COUT-MARKER\n") == 1);
  CHECK(count_occurrences(outcome.out, "FN-LINE\n") == 1);
  CHECK(count_occurrences(outcome.out, "AFTER-RUN\n") == 1);
}

TEST_CASE("an unflushed FILE* of the caller is written exactly once", "[hygiene]") {
  const std::string path = temp_path("file_marker");
  FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fprintf(f, "FILE-MARKER\n");  // stays in the FILE buffer
  MultiProcessor<> mp(Value{}, opts(2));
  mp.register_function("exit0", crash_exit0);
  mp.register_function("good", good, Args{{"i", 0}});
  mp.register_function("exit0_b", crash_exit0);
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 3);
  CHECK(rs[0].status == Status::crashed);
  CHECK(rs[1].ok());
  std::fclose(f);
  const std::string text = read_file(path);
  std::remove(path.c_str());
  CHECK(count_occurrences(text, "FILE-MARKER\n") == 1);
}

TEST_CASE("a function's unterminated stdout output is flushed exactly once", "[hygiene]") {
  for (unsigned max_tasks : {1u, 0u}) {
    INFO("max_tasks_per_worker " << max_tasks);
    const auto outcome = run_in_child([max_tasks] {
      dup2(1, 2);  // stderr into the same pipe
      MultiProcessor<> mp(Value{}, opts(1, max_tasks));
      mp.register_function("printf_no_newline", [](const Value&, const Args&) {
        std::printf("FROM-WORKER");
        return 1;
      });
      mp.register_function("cout_no_flush", [](const Value&, const Args&) {
        std::cout << "FROM-COUT";
        return 2;
      });
      mp.register_function("stderr_no_newline", [](const Value&, const Args&) {
        std::fprintf(stderr, "FROM-STDERR");
        return 3;
      });
      const auto& rs = mp.execute_parallel();
      const bool ok = rs.size() == 3 && rs[0].ok() && rs[1].ok() && rs[2].ok();
      std::printf("\nRUN-%s\n", ok ? "OK" : "FAILED");
      return ok ? 0 : 3;
    });
    INFO("child: " << outcome.describe() << "\noutput:\n" << outcome.out);
    CHECK(outcome.exited_ok());
    CHECK(count_occurrences(outcome.out, "FROM-WORKER") == 1);
    CHECK(count_occurrences(outcome.out, "FROM-COUT") == 1);
    CHECK(count_occurrences(outcome.out, "FROM-STDERR") == 1);
    CHECK(count_occurrences(outcome.out, "RUN-OK") == 1);
    // the worker output comes before the caller's own later output
    CHECK(outcome.out.find("FROM-WORKER") < outcome.out.find("RUN-OK"));
  }
}

TEST_CASE("the caller never dies of SIGPIPE when workers die", "[hygiene]") {
  const auto outcome = run_in_child([] {
    signal(SIGPIPE, SIG_DFL);
    const std::string big(1 << 20, 'p');
    bool all_ok = true;
    for (unsigned workers : {1u, 2u, 4u}) {
      MultiProcessor<> mp(Value{{"big", big}}, opts(workers));
      for (int i = 0; i < 24; ++i) {
        switch (i % 4) {
          case 0: mp.register_function("exit", crash_exit3, Args{{"big", big}}); break;
          case 1: mp.register_function("abort", crash_abort, Args{{"big", big}}); break;
          case 2:
            mp.register_function("close_all_then_exit", [](const Value&, const Args&) -> Value {
              for (int fd = 0; fd < 1024; ++fd) close(fd);
              sleep_ms(20);
              _exit(1);
            }, Args{{"big", big}});
            break;
          default: mp.register_function("good", good, Args{{"i", i}, {"big", big}}); break;
        }
      }
      const auto& rs = mp.execute_parallel();
      if (rs.size() != 24) all_ok = false;
      for (const auto& r : rs) {
        const bool expect_ok = r.index % 4 == 3;
        if (r.ok() != expect_ok || (!expect_ok && r.status != Status::crashed)) {
          all_ok = false;
          std::printf("unexpected: %s\n", describe(r).c_str());
        }
      }
    }
    struct sigaction now {};
    sigaction(SIGPIPE, nullptr, &now);
    if (now.sa_handler != SIG_DFL) {
      std::printf("SIGPIPE disposition changed\n");
      all_ok = false;
    }
    return all_ok ? 0 : 3;
  });
  INFO("child: " << outcome.describe() << "\noutput:\n" << outcome.out);
  CHECK_FALSE((WIFSIGNALED(outcome.status) && WTERMSIG(outcome.status) == SIGPIPE));
  CHECK(outcome.exited_ok());
}

namespace {
std::atomic<int> g_sigchld_count{0};
void count_sigchld(int, siginfo_t*, void*) { ++g_sigchld_count; }
}  // namespace

TEST_CASE("the caller's signal dispositions and mask are the same after a run", "[hygiene]") {
  struct sigaction act {};
  act.sa_sigaction = count_sigchld;
  act.sa_flags = SA_SIGINFO | SA_RESTART | SA_NOCLDSTOP;
  sigemptyset(&act.sa_mask);
  sigaddset(&act.sa_mask, SIGUSR2);
  ScopedSigaction chld(SIGCHLD, act);
  ScopedSigaction pipe(SIGPIPE, SIG_DFL);
  ScopedSigaction usr1(SIGUSR1, SIG_IGN);
  ScopedBlock block{SIGUSR2};
  const auto before = all_dispositions();
  const auto mask_before = blocked_signals();
  const auto sigchld_before = disposition(SIGCHLD);
  REQUIRE(sigchld_before.handler == reinterpret_cast<std::uintptr_t>(count_sigchld));

  MultiProcessor<> mp(Value{}, opts(2, 0, 200));
  register_mix(mp);
  const auto& rs = mp.execute_parallel();
  check_mix(rs);

  CHECK(disposition(SIGCHLD) == sigchld_before);
  CHECK(blocked_signals() == mask_before);
  const auto after = all_dispositions();
  for (std::size_t i = 0; i < before.size(); ++i) {
    INFO("signal " << i + 1);
    CHECK(after[i] == before[i]);
  }
}

TEST_CASE("SIGCHLD ignored by the caller: crashes are still reported with their cause", "[hygiene]") {
  const auto outcome = run_in_child([] {
    signal(SIGCHLD, SIG_IGN);
    MultiProcessor<> mp(Value{}, opts(2, 0, 300));
    mp.register_function("good", good, Args{{"i", 0}});
    mp.register_function("segv", crash_segv);
    mp.register_function("exit3", crash_exit3);
    mp.register_function("sleep", sleep_long);
    mp.register_function("good", good, Args{{"i", 1}});
    const auto& rs = mp.execute_parallel();
    bool ok = rs.size() == 5;
    for (const auto& r : rs) std::printf("%s\n", describe(r).c_str());
    ok = ok && rs[0].ok() && rs[4].ok();
    ok = ok && rs[1].status == Status::crashed && rs[1].error.find("SIGSEGV") != std::string::npos;
    ok = ok && rs[2].status == Status::crashed && rs[2].error.find("exit code 3") != std::string::npos;
    ok = ok && rs[3].status == Status::timed_out;
    struct sigaction now {};
    sigaction(SIGCHLD, nullptr, &now);
    if (now.sa_handler != SIG_IGN) {
      std::printf("SIGCHLD disposition changed\n");
      ok = false;
    }
    return ok ? 0 : 3;
  }, ms(15000));
  INFO("child: " << outcome.describe() << "\noutput:\n" << outcome.out);
  CHECK(outcome.exited_ok());
}

TEST_CASE("workers end within a second when the caller is killed", "[hygiene]") {
  for (int sig : {SIGKILL, SIGTERM}) {
    INFO("caller killed with signal " << sig);
    const std::string dir = temp_path("orphans");
    std::fflush(nullptr);
    const pid_t caller = fork();
    if (caller == 0) {
      signal(sig, SIG_DFL);
      MultiProcessor<> mp(Value{{"dir", dir}}, opts(3));
      for (int i = 0; i < 3; ++i)
        mp.register_function("sleeper", [](const Value& c, const Args& a) {
          if (a.at("i").as<int>() == 2) signal(SIGTERM, SIG_IGN);  // a stubborn one
          write_file_atomic(c.at("dir").as<std::string>() + "_" + std::to_string(a.at("i").as<int>()),
                            std::to_string(getpid()));
          for (int k = 0; k < 300; ++k) sleep_ms(100);
          return 0;
        }, Args{{"i", i}});
      mp.execute_parallel();
      _exit(0);
    }
    REQUIRE(caller > 0);
    std::vector<pid_t> workers;
    for (int i = 0; i < 3; ++i) {
      const std::string text = wait_for_file(dir + "_" + std::to_string(i), ms(5000));
      workers.push_back(text.empty() ? 0 : static_cast<pid_t>(std::atol(text.c_str())));
      std::remove((dir + "_" + std::to_string(i)).c_str());
    }
    kill(caller, sig);
    int st = 0;
    waitpid(caller, &st, 0);
    CHECK(WIFSIGNALED(st));
    for (pid_t w : workers) {
      CAPTURE(w);
      REQUIRE(w > 0);
      CHECK(wait_until([&] { return !pid_running(w); }, ms(1000)));
      if (pid_running(w)) kill(w, SIGKILL);
    }
  }
}

namespace {
// A sampler process (a child of the test, so no thread in the test process) that counts the
// test's live children (itself excluded) every half millisecond until its control pipe closes,
// then reports the peak and what the children were at that moment.
struct ChildSampler {
  pid_t pid = -1;
  int ctl_w = -1;
  int out_r = -1;
  ChildSampler() {
    int ctl[2], out[2];
    if (pipe2(ctl, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return;
    const pid_t watched = getpid();
    std::fflush(nullptr);
    pid = fork();
    if (pid == 0) {
      ::close(ctl[1]);
      ::close(out[0]);
      const pid_t self = getpid();
      std::size_t peak = 0;
      std::string at_peak;
      for (;;) {
        pollfd pfd{ctl[0], POLLIN, 0};
        if (poll(&pfd, 1, 0) > 0) break;  // EOF: the test is done
        std::vector<pid_t> live;
        for (pid_t k : child_pids(watched))
          if (k != self && pid_running(k)) live.push_back(k);
        if (live.size() > peak) {
          peak = live.size();
          at_peak = pids_to_string(live);
        }
        usleep(500);
      }
      const std::string report = std::to_string(peak) + " " + at_peak;
      (void)!::write(out[1], report.data(), report.size());
      _exit(0);
    }
    ::close(ctl[0]);
    ::close(out[1]);
    ctl_w = ctl[1];
    out_r = out[0];
  }
  // Stops the sampler; returns "<peak> <pids at the peak>".
  std::string finish() {
    ::close(ctl_w);
    std::string report;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(out_r, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      report.append(buf, static_cast<std::size_t>(n));
    }
    ::close(out_r);
    int st = 0;
    waitpid(pid, &st, 0);
    return report;
  }
};
}  // namespace

TEST_CASE("never more worker processes than Options::workers", "[hygiene]") {
  for (unsigned workers : {1u, 2u, 3u}) {
    INFO("workers " << workers);
    ChildSampler sampler;
    REQUIRE(sampler.pid > 0);
    sleep_ms(20);  // the sampler is running
    std::vector<Result> rs;
    {
      MultiProcessor<> mp(Value{}, opts(workers, 2, 150));
      for (int i = 0; i < 12; ++i) {
        switch (i % 4) {
          case 0: mp.register_function("abort", crash_abort); break;
          case 1: mp.register_function("sleep", sleep_long); break;
          default: mp.register_function("short", [](const Value&, const Args&) { sleep_ms(30); return 1; }); break;
        }
      }
      rs = mp.execute_parallel();
    }
    const std::string report = sampler.finish();
    const std::size_t peak = static_cast<std::size_t>(std::atol(report.c_str()));
    REQUIRE(rs.size() == 12);
    INFO("peak and children at the peak: " << report);
    CHECK(peak >= 1);
    CHECK(peak <= workers);
    for (const auto& r : rs) {
      INFO(describe(r));
      CHECK(r.status == (r.index % 4 == 0 ? Status::crashed : r.index % 4 == 1 ? Status::timed_out : Status::ok));
    }
  }
}
