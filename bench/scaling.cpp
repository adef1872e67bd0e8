// scaling.cpp -- how pfp's costs grow (issue 16 goal 4), on pfp::MultiProcessor with processes.
//
//   functions  10^2 .. 10^6 trivial functions (each returns its index) on 2 workers [full mode:
//              also 10^7 when MemAvailable is at least 12 GiB]: µs per function for registration,
//              for execute_parallel() and both; parent RSS growth per function after registering
//              and after the run (Results included), read after malloc_trim
//                sc_fn_<n>_{reg,run,total}_us, sc_fn_<n>_{reg,run}_bytes
//   workers    100,000 trivial functions on 1, 2, 4, ..., 128 workers (on however many cores the
//              machine has): µs per function for execute_parallel(), workers forked inside it
//                sc_workers_<w>_us, sc_workers_n
//   sizes      results of 8 B, 64 B, ..., 1 GiB (x8 a step) made by functions that fill a
//              Value::bytes; as many functions per size as make ~256 MiB (at most 20,000, at
//              least 1), 2 workers: wall time of execute_parallel() per result and bytes per
//              second of it (the functions' own filling included)
//                sc_size_<bytes>_{us,gbps,count}
// Quick mode: 10^2 .. 10^4 functions, 1 .. 8 workers on 10,000 functions, sizes up to 2 MiB.
// Every Result is checked (ok, right value and size); a wrong one is a FAIL line and exit 1.
//
// Usage: scaling [--quick] [--only functions,workers,sizes]

#include <pfp/pfp.hpp>

#include "bench_common.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>


namespace {

using bench::fail;
using bench::result;
using bench::rss_bytes;
using Clock = std::chrono::steady_clock;

bool quick = false;

double us_since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }


// MemAvailable from /proc/meminfo, in bytes (0 if unknown).
double mem_available() {
  double kib = 0;
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "MemAvailable: %lf kB", &kib) == 1) break;
    std::fclose(f);
  }
  return kib * 1024;
}

pfp::Options workers(unsigned w) {
  pfp::Options o;
  o.workers = w;
  return o;
}

void register_trivial(pfp::MultiProcessor<>& mp, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i](const pfp::Value&, const pfp::Args&) { return static_cast<long long>(i); });
}

bool check_trivial(const char* what, const std::vector<pfp::Result>& rs, std::size_t n) {
  if (rs.size() != n) {
    fail(std::string(what) + ": " + std::to_string(rs.size()) + " results for " + std::to_string(n));
    return false;
  }
  for (std::size_t i = 0; i < n; ++i)
    if (!rs[i].ok() || rs[i].result.as<long long>() != static_cast<long long>(i)) {
      fail(std::string(what) + ": result " + std::to_string(i) + " is " + std::string(pfp::to_string(rs[i].status)) +
           " " + rs[i].error);
      return false;
    }
  return true;
}

void bench_functions() {
  std::vector<std::size_t> counts = {100, 1000, 10000};
  if (!quick) {
    counts.push_back(100000);
    counts.push_back(1000000);
    if (mem_available() >= 12.0 * (1ull << 30)) counts.push_back(10000000);
    else std::printf("SKIP functions 10000000: MemAvailable under 12 GiB\n");
  }
  for (std::size_t n : counts) {
    const double before = rss_bytes();
    double reg_us, run_us, registered, ran;
    {
      const Clock::time_point t0 = Clock::now();
      pfp::MultiProcessor<> mp(pfp::Value{}, workers(2));
      register_trivial(mp, n);
      reg_us = us_since(t0);
      registered = rss_bytes();
      const Clock::time_point t1 = Clock::now();
      const std::vector<pfp::Result>& rs = mp.execute_parallel();
      run_us = us_since(t1);
      ran = rss_bytes();
      if (!check_trivial("functions", rs, n)) return;
    }
    const double c = static_cast<double>(n);
    const std::string k = "sc_fn_" + std::to_string(n) + "_";
    result(k + "reg_us", reg_us / c, "us");
    result(k + "run_us", run_us / c, "us");
    result(k + "total_us", (reg_us + run_us) / c, "us");
    result(k + "reg_bytes", (registered - before) / c, "bytes");
    result(k + "run_bytes", (ran - before) / c, "bytes");
  }
}

void bench_workers() {
  const std::size_t n = quick ? 10000 : 100000;
  result("sc_workers_n", static_cast<double>(n), "count");
  for (unsigned w = 1; w <= (quick ? 8u : 128u); w *= 2) {
    pfp::MultiProcessor<> mp(pfp::Value{}, workers(w));
    register_trivial(mp, n);
    const Clock::time_point t0 = Clock::now();
    const std::vector<pfp::Result>& rs = mp.execute_parallel();
    const double us = us_since(t0);
    if (!check_trivial("workers", rs, n)) return;
    result("sc_workers_" + std::to_string(w) + "_us", us / static_cast<double>(n), "us");
  }
}

void bench_sizes() {
  const std::size_t top = quick ? (std::size_t{2} << 20) : (std::size_t{1} << 30);
  for (std::size_t size = 8; size <= top; size *= 8) {
    const std::size_t count = std::max<std::size_t>(1, std::min<std::size_t>(20000, (std::size_t{256} << 20) / size));
    pfp::MultiProcessor<> mp(pfp::Value{}, workers(2));
    for (std::size_t i = 0; i < count; ++i)
      mp.register_function("bytes", [size, i](const pfp::Value&, const pfp::Args&) {
        std::string s(size, static_cast<char>('a' + i % 26));
        return pfp::Value::bytes(std::move(s));
      });
    const Clock::time_point t0 = Clock::now();
    const std::vector<pfp::Result>& rs = mp.execute_parallel();
    const double us = us_since(t0);
    bool ok = rs.size() == count;
    for (std::size_t i = 0; ok && i < count; ++i) {
      const pfp::Result& r = rs[i];
      ok = r.ok() && r.result.is_bytes() && r.result.str().size() == size &&
           r.result.str().front() == static_cast<char>('a' + i % 26) && r.result.str().back() == r.result.str().front();
      if (!ok) fail("sizes: result " + std::to_string(i) + " of " + std::to_string(size) + " bytes is " +
                    std::string(pfp::to_string(r.status)) + " " + r.error);
    }
    if (!ok) return;
    const std::string k = "sc_size_" + std::to_string(size) + "_";
    result(k + "count", static_cast<double>(count), "count");
    result(k + "us", us / static_cast<double>(count), "us");
    result(k + "gbps", static_cast<double>(size) * static_cast<double>(count) / (us * 1e3), "GB/s");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args = bench::parse_args(argc, argv, "scaling [--quick] [--only functions,workers,sizes]");
  if (!args.ok) return 2;
  quick = args.quick;
  const struct {
    const char* name;
    void (*run)();
  } parts[] = {{"functions", bench_functions}, {"workers", bench_workers}, {"sizes", bench_sizes}};
  bench::run_parts(args, parts);
  result("sc_failures", bench::failures, "count");
  return bench::failures ? 1 : 0;
}
