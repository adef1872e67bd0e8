// pfp_bench.cpp -- pfp on the six workloads of issue 6, to compare with bench/floors.c and
// bench/python_baselines.py. Every figure is one line
//     RESULT <key> <value> <unit>
// and every Result of every run is checked (status ok, the right value): any mismatch is printed
// as a FAIL line and the program exits with status 1.
//
// Usage: pfp_bench [--quick] [--only name,name,...]
//   names: latency fork trivial cpu repeat bytes memory   (default: all, in that order)
//
//   1 trivial  pfp_trivial_{reg,run,total}_us  100,000 functions returning their index, 2 workers:
//              registration, execute_parallel() and both, per function
//   2 fork     pfp_fork_us                     max_tasks_per_worker = 1, 2,000 functions, 2 workers
//   3 bytes    pfp_bytes_gbps                  one 1 GiB Value::bytes result (256 MiB in quick mode);
//                                              transfer time = wall time - Result::duration
//   4 cpu      pfp_cpu_speedup                 8 equal CPU-bound tasks on 2 workers vs the same 8 run
//                                              one after another in this process
//   5 memory   pfp_mem_reg_bytes_per_fn        RSS growth per registration over 1,000,000 registrations
//              pfp_mem_run_bytes_per_fn        ... and after running them all (Results included)
//     repeat   pfp_rss_run1_kib / _run20_kib   RSS after the 1st and the 20th run of one processor
//   6 latency  pfp_latency_us                  execute_parallel() call -> first function running,
//                                              2 workers, median of 20 runs

#include <pfp/pfp.hpp>

#include "bench_common.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using bench::fail;
using bench::result;
using bench::rss_bytes;

bool quick = false;

double now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}


// Checks every Result of a run: ok, and the value `expect(i)` returns.
template <class Expect>
void check_all(const char* bench, const std::vector<pfp::Result>& rs, std::size_t n, Expect expect) {
  if (rs.size() != n) {
    fail(std::string(bench) + ": " + std::to_string(rs.size()) + " results for " + std::to_string(n) + " functions");
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const pfp::Result& r = rs[i];
    if (!r.ok()) {
      fail(std::string(bench) + ": function " + std::to_string(i) + " is " + std::string(pfp::to_string(r.status)) + ": " +
           r.error);
      continue;
    }
    if (r.index != i) fail(std::string(bench) + ": result " + std::to_string(i) + " has index " + std::to_string(r.index));
    if (!expect(i, r.result)) fail(std::string(bench) + ": function " + std::to_string(i) + " returned " + r.result.to_json());
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}


pfp::Options two_workers() {
  pfp::Options o;
  o.workers = 2;
  return o;
}

// ------------------------------------------------------------------ 6. latency

void bench_latency() {
  const int runs = 20;
  auto* slots = static_cast<double*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (slots == MAP_FAILED) {
    fail("latency: mmap");
    return;
  }
  std::vector<double> lat;
  for (int run = 0; run < runs; ++run) {
    pfp::MultiProcessor<> mp(pfp::Value{}, two_workers());
    for (int k = 0; k < 2; ++k)
      mp.register_function("stamp", [slots, k](const pfp::Value&, const pfp::Args&) {
        slots[k] = now_ns();
        return k;
      });
    slots[0] = slots[1] = 0;
    const double t0 = now_ns();
    const auto& rs = mp.execute_parallel();
    check_all("latency", rs, 2, [](std::size_t i, const pfp::Value& v) { return v.as<long long>() == static_cast<long long>(i); });
    double first = std::min(slots[0] > 0 ? slots[0] : 1e300, slots[1] > 0 ? slots[1] : 1e300);
    if (first > 1e299) {
      fail("latency: no function recorded its start");
      continue;
    }
    lat.push_back((first - t0) / 1e3);
  }
  munmap(slots, 4096);
  if (!lat.empty()) {
    result("pfp_latency_us", median(lat), "us");
    result("pfp_latency_min_us", *std::min_element(lat.begin(), lat.end()), "us");
  }
}

// ------------------------------------------------------------------ 2. a process per function

void bench_fork() {
  const std::size_t n = quick ? 200 : 2000;
  pfp::Options o = two_workers();
  o.max_tasks_per_worker = 1;
  pfp::MultiProcessor<> mp(pfp::Value{}, o);
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i](const pfp::Value&, const pfp::Args&) { return static_cast<long long>(i); });
  const double t0 = now_ns();
  const auto& rs = mp.execute_parallel();
  const double t1 = now_ns();
  check_all("fork", rs, n, [](std::size_t i, const pfp::Value& v) { return v.as<long long>() == static_cast<long long>(i); });
  std::set<int> pids;
  for (const auto& r : rs) pids.insert(r.pid);
  result("pfp_fork_n", static_cast<double>(n), "count");
  result("pfp_fork_us", (t1 - t0) / 1e3 / static_cast<double>(n), "us");
  result("pfp_fork_distinct_pids", static_cast<double>(pids.size()), "count");
}

// ------------------------------------------------------------------ 1. trivial functions

void bench_trivial() {
  const std::size_t n = quick ? 20000 : 100000;
  const double t0 = now_ns();
  pfp::MultiProcessor<> mp(pfp::Value{}, two_workers());
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i](const pfp::Value&, const pfp::Args&) { return static_cast<long long>(i); });
  const double t1 = now_ns();
  const auto& rs = mp.execute_parallel();
  const double t2 = now_ns();
  check_all("trivial", rs, n, [](std::size_t i, const pfp::Value& v) { return v.as<long long>() == static_cast<long long>(i); });
  const double per = 1e3 * static_cast<double>(n);
  result("pfp_trivial_n", static_cast<double>(n), "count");
  result("pfp_trivial_reg_us", (t1 - t0) / per, "us");
  result("pfp_trivial_run_us", (t2 - t1) / per, "us");
  result("pfp_trivial_total_us", (t2 - t0) / per, "us");
}

// ------------------------------------------------------------------ 4. CPU-bound

// Integer hashing, the same loop as floors.c's.
std::uint64_t cpu_task(std::uint64_t iters, std::uint64_t seed) {
  std::uint64_t h = seed ^ 0x9E3779B97F4A7C15ull;
  for (std::uint64_t i = 0; i < iters; ++i) {
    h ^= i;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  return h;
}

std::uint64_t calibrate(double target_ms) {
  std::uint64_t iters = 1000000;
  for (;;) {
    const double t0 = now_ns();
    volatile std::uint64_t sink = cpu_task(iters, 1);
    (void)sink;
    const double ms = (now_ns() - t0) / 1e6;
    if (ms > 20 || ms > target_ms / 2) return static_cast<std::uint64_t>(static_cast<double>(iters) * target_ms / ms);
    iters *= 4;
  }
}

void bench_cpu() {
  const int tasks = 8;
  const std::uint64_t iters = calibrate(quick ? 20.0 : 100.0);
  std::vector<std::uint64_t> expect(tasks);
  double t0 = now_ns();
  for (int t = 0; t < tasks; ++t) expect[t] = cpu_task(iters, static_cast<std::uint64_t>(t));
  const double seq = now_ns() - t0;

  pfp::MultiProcessor<> mp(pfp::Value{}, two_workers());
  for (int t = 0; t < tasks; ++t)
    mp.register_function("hash", [iters, t](const pfp::Value&, const pfp::Args&) {
      // as a string: a uint64 above INT64_MAX does not fit pfp's integer
      return std::to_string(cpu_task(iters, static_cast<std::uint64_t>(t)));
    });
  t0 = now_ns();
  const auto& rs = mp.execute_parallel();
  const double par = now_ns() - t0;
  check_all("cpu", rs, tasks, [&](std::size_t i, const pfp::Value& v) { return v.as<std::string>() == std::to_string(expect[i]); });
  result("pfp_cpu_task_ms", seq / tasks / 1e6, "ms");
  result("pfp_cpu_seq_ms", seq / 1e6, "ms");
  result("pfp_cpu_par_ms", par / 1e6, "ms");
  result("pfp_cpu_speedup", seq / par, "x");
}

// ------------------------------------------------------------------ 5b. repeated runs

void bench_repeat() {
  const std::size_t n = quick ? 2000 : 20000;
  const int runs = 20;
  pfp::MultiProcessor<> mp(pfp::Value{}, two_workers());
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i](const pfp::Value&, const pfp::Args&) { return static_cast<long long>(i); });
  double first = 0, last = 0;
  for (int run = 1; run <= runs; ++run) {
    const auto& rs = mp.execute_parallel();
    check_all("repeat", rs, n, [](std::size_t i, const pfp::Value& v) { return v.as<long long>() == static_cast<long long>(i); });
    if (run == 1) first = rss_bytes();
    if (run == runs) last = rss_bytes();
  }
  result("pfp_repeat_n", static_cast<double>(n), "count");
  result("pfp_rss_run1_kib", first / 1024, "KiB");
  result("pfp_rss_run20_kib", last / 1024, "KiB");
  result("pfp_rss_growth_kib", (last - first) / 1024, "KiB");
}

// ------------------------------------------------------------------ 3. one big result

void bench_bytes() {
  const std::size_t size = quick ? (std::size_t{256} << 20) : (std::size_t{1} << 30);
  const std::size_t words = size / 8;
  constexpr std::uint64_t K = 0x9E3779B97F4A7C15ull;
  pfp::MultiProcessor<> mp(pfp::Value{}, two_workers());
  mp.register_function("big", [size, words](const pfp::Value&, const pfp::Args&) {
    std::string s(size, '\0');
    auto* w = reinterpret_cast<std::uint64_t*>(s.data());
    for (std::size_t i = 0; i < words; ++i) w[i] = i * K;
    return pfp::Value::bytes(std::move(s));
  });
  const double t0 = now_ns();
  const auto& rs = mp.execute_parallel();
  const double wall = now_ns() - t0;
  check_all("bytes", rs, 1, [&](std::size_t, const pfp::Value& v) {
    if (!v.is_bytes() || v.str().size() != size) return false;
    const char* p = v.str().data();
    for (std::size_t i = 0; i < words; ++i) {
      std::uint64_t x;
      std::memcpy(&x, p + 8 * i, 8);
      if (x != i * K) return false;
    }
    return true;
  });
  if (rs.size() != 1) return;
  const double fn = static_cast<double>(rs[0].duration.count());
  result("pfp_bytes_size", static_cast<double>(size), "bytes");
  result("pfp_bytes_wall_ms", wall / 1e6, "ms");
  result("pfp_bytes_fn_ms", fn / 1e6, "ms");
  result("pfp_bytes_gbps", static_cast<double>(size) / std::max(wall - fn, 1.0), "GB/s");
}

// ------------------------------------------------------------------ 5. memory per function

void bench_memory() {
  const std::size_t n = quick ? 100000 : 1000000;
  const double before = rss_bytes();
  double t0, t1, t2, registered, ran;
  {
    pfp::MultiProcessor<> mp(pfp::Value{}, two_workers());
    t0 = now_ns();
    for (std::size_t i = 0; i < n; ++i)
      mp.register_function("f", [i](const pfp::Value&, const pfp::Args&) { return static_cast<long long>(i); });
    t1 = now_ns();
    registered = rss_bytes();
    const auto& rs = mp.execute_parallel();
    t2 = now_ns();
    ran = rss_bytes();
    check_all("memory", rs, n, [](std::size_t i, const pfp::Value& v) { return v.as<long long>() == static_cast<long long>(i); });
  }
  const double after = rss_bytes();
  const double count = static_cast<double>(n);
  result("pfp_mem_functions", count, "count");
  result("pfp_mem_reg_bytes_per_fn", (registered - before) / count, "bytes");
  result("pfp_mem_run_bytes_per_fn", (ran - before) / count, "bytes");
  result("pfp_mem_left_after_kib", (after - before) / 1024, "KiB");
  result("pfp_mem_reg_us", (t1 - t0) / 1e3 / count, "us");
  result("pfp_mem_run_us", (t2 - t1) / 1e3 / count, "us");
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args =
      bench::parse_args(argc, argv, "pfp_bench [--quick] [--only latency,fork,trivial,cpu,repeat,bytes,memory]");
  if (!args.ok) return 2;
  quick = args.quick;
  struct {
    const char* name;
    void (*run)();
  } benches[] = {{"latency", bench_latency}, {"fork", bench_fork},     {"trivial", bench_trivial}, {"cpu", bench_cpu},
                 {"repeat", bench_repeat},   {"bytes", bench_bytes}, {"memory", bench_memory}};
  bench::run_parts(args, benches);
  result("pfp_failures", bench::failures, "count");
  return bench::failures ? 1 : 0;
}
