// pools.cpp -- pfp's front ends against C++ thread pools at their own game (issue 16, goal 2).
//
// Every variant runs N trivial tasks on 2 workers; the anchor of each task stores one short
// string and one int64 into a vector slot of its own (out[i] = {"task", i}), and every slot is
// checked afterwards (a wrong or missing one is a FAIL line and exit status 1). Per variant and
// size the figure is microseconds per task, wall time from the first submission to the last
// result in hand, the output vector's allocation included, the check not (the pools' threads are
// started and warmed before; pfp: construction + registration + run, map(), or -- on an Executor
// started beforehand -- submit + get):
//
//   tbb_parallel_for  tbb::parallel_for over [0, N), default (auto) partitioner
//   tbb_task_group    tbb::task_group::run once per task, then wait()
//   omp_for           #pragma omp parallel for schedule(static) num_threads(2)
//   omp_dynamic       the same with schedule(dynamic) (one iteration per grab)
//   pfp_mp            pfp::MultiProcessor, processes: register_function per task ("task" + i),
//                     execute_parallel(); the anchor is the Result (function_name + int64)
//   pfp_threads       the same with Options::backend = Backend::threads
//   pfp_map           pfp::map over a vector<int64> of N items (processes)
//   pfp_executor      pfp::Executor (processes): submit() N times, then get() every Future
//   pfp_executor_threads  the same on Backend::threads
//
// TBB and OpenMP parts are compiled only where the compiler finds them (PFP_BENCH_TBB, _OPENMP);
// run.sh probes for both. Sizes: 10^5 and 10^6 (quick: 10^4, one variant of each kind small
// enough to stay in a few seconds). Every figure: `RESULT pools_<variant>_<N>_us <value> us`.
//
// Usage: pools [--quick] [--only variant,variant,...] [--sizes N,N,...]

#include <pfp/pfp.hpp>

#include "bench_common.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifdef PFP_BENCH_TBB
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_group.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

bool quick = false;

struct Slot {
  std::string name;
  std::int64_t value = -1;
};

using bench::fail;
using bench::result;

// Wall time of the variant that runs now, set by it before it checks its results.
double g_us = 0;

struct Span {
  Clock::time_point t0 = Clock::now();
  void stop() const { g_us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }
};


void check_slots(const char* variant, const std::vector<Slot>& out) {
  for (std::size_t i = 0; i < out.size(); ++i)
    if (out[i].name != "task" || out[i].value != static_cast<std::int64_t>(i)) {
      fail(std::string(variant) + ": slot " + std::to_string(i) + " holds '" + out[i].name + "', " +
           std::to_string(out[i].value));
      return;
    }
}

void check_results(const char* variant, const std::vector<pfp::Result>& rs, std::size_t n) {
  if (rs.size() != n) {
    fail(std::string(variant) + ": " + std::to_string(rs.size()) + " results for " + std::to_string(n));
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const pfp::Result& r = rs[i];
    if (!r.ok() || r.function_name != "task" || r.result.as<long long>() != static_cast<long long>(i)) {
      fail(std::string(variant) + ": result " + std::to_string(i) + " is " + std::string(pfp::to_string(r.status)) +
           " '" + r.function_name + "' " + r.result.to_json() + " " + r.error);
      return;
    }
  }
}

pfp::Options two(pfp::Backend backend) {
  pfp::Options o;
  o.workers = 2;
  o.backend = backend;
  o.threads = pfp::ThreadPolicy::allow;  // the TBB and OpenMP pools of earlier variants are idle
  return o;
}

// ------------------------------------------------------------------ the variants

void run_mp(const char* variant, std::size_t n, pfp::Backend backend) {
  Span span;
  pfp::MultiProcessor<> mp(pfp::Value{}, two(backend));
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("task", [i](const pfp::Value&, const pfp::Args&) { return static_cast<long long>(i); });
  const std::vector<pfp::Result>& rs = mp.execute_parallel();
  span.stop();
  check_results(variant, rs, n);
}

void pfp_mp(std::size_t n) { run_mp("pfp_mp", n, pfp::Backend::processes); }
void pfp_threads(std::size_t n) { run_mp("pfp_threads", n, pfp::Backend::threads); }

void pfp_map(std::size_t n) {
  std::vector<long long> items(n);
  for (std::size_t i = 0; i < n; ++i) items[i] = static_cast<long long>(i);
  pfp::MapOptions o;
  static_cast<pfp::Options&>(o) = two(pfp::Backend::processes);
  Span span;
  std::vector<long long> got = pfp::map(o, [](long long x) { return x; }, items);
  span.stop();
  if (got != items) fail("pfp_map: wrong values");
}

void run_executor(const char* variant, std::size_t n, pfp::Backend backend) {
  pfp::Executor ex(two(backend));
  auto fn = ex.declare("task", [](long long x) { return x; });
  ex.start();  // like the thread pools, whose threads exist before the clock starts
  Span span;
  std::vector<Slot> out(n);
  std::vector<pfp::Future<long long>> futures;
  futures.reserve(n);
  for (std::size_t i = 0; i < n; ++i) futures.push_back(ex.submit(fn, static_cast<long long>(i)));
  for (std::size_t i = 0; i < n; ++i) {
    out[i].name = "task";
    out[i].value = futures[i].get();
  }
  span.stop();
  check_slots(variant, out);
}

void pfp_executor(std::size_t n) { run_executor("pfp_executor", n, pfp::Backend::processes); }
void pfp_executor_threads(std::size_t n) { run_executor("pfp_executor_threads", n, pfp::Backend::threads); }

#if defined(PFP_BENCH_TBB) || defined(_OPENMP)
inline void anchor(std::vector<Slot>& out, std::size_t i) {
  Slot& s = out[i];
  s.name = "task";
  s.value = static_cast<std::int64_t>(i);
}
#endif

#ifdef PFP_BENCH_TBB
void tbb_parallel_for(std::size_t n) {
  Span span;
  std::vector<Slot> out(n);
  tbb::parallel_for(std::size_t{0}, n, [&](std::size_t i) { anchor(out, i); });
  span.stop();
  check_slots("tbb_parallel_for", out);
}

void tbb_task_group(std::size_t n) {
  Span span;
  std::vector<Slot> out(n);
  tbb::task_group g;
  for (std::size_t i = 0; i < n; ++i) g.run([&out, i] { anchor(out, i); });
  g.wait();
  span.stop();
  check_slots("tbb_task_group", out);
}
#endif

#ifdef _OPENMP
// schedule(runtime), so one loop serves both kinds; dynamic hands out one iteration per grab.
void omp_loop(const char* variant, std::size_t n, omp_sched_t kind) {
  omp_set_schedule(kind, 0);
  Span span;
  std::vector<Slot> out(n);
  const long long count = static_cast<long long>(n);
#pragma omp parallel for schedule(runtime) num_threads(2)
  for (long long i = 0; i < count; ++i) anchor(out, static_cast<std::size_t>(i));
  span.stop();
  check_slots(variant, out);
}

void omp_for(std::size_t n) { omp_loop("omp_for", n, omp_sched_static); }
void omp_dynamic(std::size_t n) { omp_loop("omp_dynamic", n, omp_sched_dynamic); }
#endif

struct Variant {
  const char* name;
  void (*run)(std::size_t);
  std::size_t max_n;  // larger sizes are skipped (0: none), to keep a run within minutes
};

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
#ifdef PFP_BENCH_TBB
      {"tbb_parallel_for", tbb_parallel_for, 0},
      {"tbb_task_group", tbb_task_group, 0},
#endif
#ifdef _OPENMP
      {"omp_for", omp_for, 0},
      {"omp_dynamic", omp_dynamic, 0},
#endif
      {"pfp_mp", pfp_mp, 0},
      {"pfp_threads", pfp_threads, 0},
      {"pfp_map", pfp_map, 0},
      {"pfp_executor", pfp_executor, 0},
      {"pfp_executor_threads", pfp_executor_threads, 0},
  };
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> only;
  std::vector<std::size_t> sizes;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if ((a == "--only" || a == "--sizes") && i + 1 < argc) {
      std::stringstream ss(argv[++i]);
      std::string item;
      while (std::getline(ss, item, ',')) {
        if (a == "--only") only.push_back(item);
        else sizes.push_back(static_cast<std::size_t>(std::stoull(item)));
      }
    } else {
      std::fprintf(stderr, "usage: pools [--quick] [--only variant,...] [--sizes N,...]\n");
      return 2;
    }
  }
  if (sizes.empty()) sizes = quick ? std::vector<std::size_t>{10000} : std::vector<std::size_t>{100000, 1000000};
#ifdef PFP_BENCH_TBB
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, 2);
  std::printf("INFO tbb: yes\n");
#else
  std::printf("SKIP tbb: built without oneTBB (libtbb-dev)\n");
#endif
#ifdef _OPENMP
  std::printf("INFO openmp: yes\n");
#else
  std::printf("SKIP openmp: built without OpenMP (-fopenmp)\n");
#endif
  // The pools' threads exist before any clock starts, as in a program that uses them all along.
#ifdef PFP_BENCH_TBB
  tbb_parallel_for(1000);
  tbb_task_group(1000);
#endif
#ifdef _OPENMP
  omp_for(1000);
#endif
  auto want = [&](const char* name) { return only.empty() || std::find(only.begin(), only.end(), name) != only.end(); };
  for (std::size_t n : sizes) {
    result("pools_n_" + std::to_string(n), static_cast<double>(n), "count");
    for (const Variant& v : variants()) {
      if (!want(v.name) || (v.max_n && n > v.max_n)) continue;
      try {
        // OpenMP's and oneTBB's idle threads spin a while after their work: let them park first,
        // so no variant is timed against the spinning threads of the one before
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        g_us = 0;
        v.run(n);
        result(std::string("pools_") + v.name + "_" + std::to_string(n) + "_us", g_us / static_cast<double>(n), "us");
      } catch (const std::exception& e) {
        fail(std::string(v.name) + ": threw " + e.what());
      }
    }
  }
  result("pools_failures", bench::failures, "count");
  return bench::failures ? 1 : 0;
}
