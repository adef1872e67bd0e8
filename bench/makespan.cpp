// makespan.cpp -- makespan of heterogeneous runs on 2 workers (issue 15).
//
// Each case is a list of busy tasks (a spin on std::chrono::steady_clock for the task's duration,
// not a sleep, so the CPU contention is real) run three ways in this one process:
//
//   pfp   pfp::MultiProcessor<> with Options::workers = 2, one registered function per task;
//         the wall time of execute_parallel() alone (registration not included). Every Result
//         must be ok, in order, and return its own index.
//   bound the best any first-come pool can do on the durations pfp measured (Result::duration):
//         greedy list scheduling in submission (registration) order on 2 machines with zero
//         overhead -- each task goes to the machine that becomes free first.
//   omp   `#pragma omp parallel for schedule(dynamic) num_threads(2)` over the same tasks, right
//         after pfp; its own list bound is computed from the durations its threads measured.
//
// Cases (quick mode in brackets; --quick only checks correctness, its figures mean nothing):
//   long_first   one 2 s task [100 ms], then 4,000 tasks of 1 ms [200]
//   long_middle  2,000 [100] tasks of 1 ms, one 2 s task [100 ms], 2,000 [100] of 1 ms
//   long_last    4,000 [200] tasks of 1 ms, then one 2 s task [100 ms]
//   pareto       10,000 [500] tasks, Pareto (alpha 1.7, capped at 200 ms, rescaled to a mean of
//                exactly 0.5 ms; fixed seed)
//   decreasing   2,000 [100] tasks, durations decreasing linearly from 4 ms to 0.1 ms
//   tiny         200,000 [5,000] tasks of 20 us
//
// Every figure is one line `RESULT <key> <value> <unit>` (see bench/aggregate.py); per case <c>:
//   mk_<c>_n, mk_<c>_min_task_us, mk_<c>_max_task_us, mk_<c>_work_ms (nominal durations),
//   mk_<c>_pfp_ms, mk_<c>_bound_ms, mk_<c>_ratio (pfp / bound),
//   mk_<c>_omp_ms, mk_<c>_omp_bound_ms, mk_<c>_omp_ratio (omp / its bound), mk_<c>_pfp_vs_omp;
//   and, to tell a loaded machine: mk_<c>_pfp_workers_cpu_share (CPU time of pfp's workers / (2 x
//   its makespan); 1 = two CPUs all the time), mk_<c>_pfp_parent_cpu_ms (CPU time of this process
//   during execute_parallel()), mk_<c>_omp_cpu_share (CPU time of this process / (2 x omp makespan)).
// First, for reference: mk_fork_exit_wait_us (fork + child _exit + waitpid, one at a time, median)
// mk_page_touch_us (first write to a fresh anonymous 4 KiB page, per page, median of runs) and
// mk_hugepage_touch_us (the same per fresh 2 MiB transparent huge page; mk_hugepage_got: the share
// of the mapping the kernel backed with huge pages, 0 where THP is off).
// A human-readable `CASE` line per case (with the 1-minute load average when it started); `FAIL`
// lines on wrong Results (exit status 1).
// Built without OpenMP (no -fopenmp), the omp part is skipped with a message.
//
// Usage: makespan [--quick] [--only name,name,...]

#include <pfp/pfp.hpp>

#include "bench_common.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using ns = std::chrono::nanoseconds;

bool quick = false;

// The nominal duration of every task of the current case, in nanoseconds. A global, so the
// registered functions only capture an index and the workers inherit the table through fork().
std::vector<std::int64_t> g_dur;

using bench::fail;
using bench::result;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// The 1-minute load average, to read the figures by: the machine may be shared.
std::string loadavg() {
  std::string s;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    char buf[64] = {};
    if (std::fgets(buf, sizeof buf, f)) s = buf;
    std::fclose(f);
  }
  return s.substr(0, s.find(' '));
}

// CPU time used so far by this process (RUSAGE_SELF) or by its reaped children (RUSAGE_CHILDREN:
// pfp's workers, all reaped when execute_parallel() returns), in milliseconds.
double cpu_ms(int who) {
  rusage u{};
  getrusage(who, &u);
  auto ms = [](const timeval& t) { return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_usec) / 1e3; };
  return ms(u.ru_utime) + ms(u.ru_stime);
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Busy-waits `d` nanoseconds of wall time from its first clock read; returns the time it took.
inline std::int64_t spin(std::int64_t d) {
  const Clock::time_point t0 = Clock::now();
  const Clock::time_point end = t0 + ns(d);
  Clock::time_point t = t0;
  while (t < end) t = Clock::now();
  return std::chrono::duration_cast<ns>(t - t0).count();
}

// Greedy list scheduling in the given order on `machines` machines with zero overhead: each task
// goes to the machine that becomes free first. Returns the makespan in the unit of `d`.
double list_bound(const std::vector<double>& d, int machines = 2) {
  std::vector<double> free_at(static_cast<std::size_t>(machines), 0.0);
  for (double x : d) *std::min_element(free_at.begin(), free_at.end()) += x;
  return *std::max_element(free_at.begin(), free_at.end());
}

// ------------------------------------------------------------------ reference costs

// AnonHugePages (KiB) of the mapping that contains `p`, from /proc/self/smaps (0 if unknown).
long anon_huge_kib(const void* p) {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return 0;
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  char line[512];
  bool inside = false;
  long kib = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
      if (inside) break;
      inside = at >= lo && at < hi;
    } else if (inside && std::sscanf(line, "AnonHugePages: %ld kB", &kib) == 1) {
      break;
    }
  }
  std::fclose(f);
  return inside ? kib : 0;
}

// Microseconds per first write to each of `pages` pages of `page` bytes in a fresh private
// anonymous mapping aligned to `page`, median of `runs` mappings (-1 if mmap fails); `got` is the
// share of the last mapping backed by transparent huge pages.
double median_touch_us(std::size_t page, std::size_t pages, bool huge, int runs, double& got) {
  std::vector<double> per_page;
  for (int run = 0; run < runs; ++run) {
    void* raw = mmap(nullptr, (pages + 1) * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return -1;
    auto* base = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(raw) + page - 1) & ~(page - 1));
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
    madvise(base, pages * page, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
    auto* c = reinterpret_cast<volatile char*>(base);
    const Clock::time_point t0 = Clock::now();
    for (std::size_t i = 0; i < pages; ++i) c[i * page] = 1;
    per_page.push_back(ms_since(t0) * 1e3 / static_cast<double>(pages));
    got = static_cast<double>(anon_huge_kib(base)) * 1024 / static_cast<double>(pages * page);
    munmap(raw, (pages + 1) * page);
  }
  return median(per_page);
}

void bench_reference() {
  // fork + _exit in the child + waitpid in the parent, one process at a time.
  const int forks = quick ? 50 : 500;
  std::vector<double> us;
  for (int i = 0; i < forks; ++i) {
    const Clock::time_point t0 = Clock::now();
    pid_t pid = fork();
    if (pid < 0) {
      fail("reference: fork failed");
      return;
    }
    if (pid == 0) _exit(0);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
    }
    us.push_back(ms_since(t0) * 1e3);
  }
  result("mk_fork_exit_wait_us", median(us), "us");

  // The first write to each page of a fresh private anonymous mapping: 4 KiB pages with
  // transparent huge pages refused (the page fault, zeroing and mapping), then 2 MiB pages of a
  // 2 MiB-aligned mapping with MADV_HUGEPAGE (one fault that zeroes 2 MiB), counted only if the
  // kernel gave huge pages (mk_hugepage_got: the share of the mapping that was, 0 where THP is off).
  double small_got = 0, huge_got = 0;
  const double small = median_touch_us(4096, quick ? 4096 : 16384, false, quick ? 3 : 9, small_got);  // 16 / 64 MiB
  const double huge = median_touch_us(std::size_t{2} << 20, quick ? 8 : 32, true, quick ? 3 : 7, huge_got);
  if (small < 0 || huge < 0) {
    fail("reference: mmap failed");
    return;
  }
  result("mk_page_touch_us", small, "us");
  result("mk_hugepage_touch_us", huge, "us");
  result("mk_hugepage_got", huge_got, "fraction");
}

// ------------------------------------------------------------------ cases

struct Case {
  const char* name;
  const char* what;
  std::function<std::vector<std::int64_t>()> make;  // nominal durations in ns, submission order
};

constexpr std::int64_t kMs = 1000000, kUs = 1000;

std::vector<std::int64_t> long_among_short(std::size_t shorts, std::size_t long_at, std::int64_t long_ns) {
  std::vector<std::int64_t> d(shorts, kMs);
  d.insert(d.begin() + static_cast<std::ptrdiff_t>(long_at), long_ns);
  return d;
}

// Pareto(alpha) durations, capped, then scaled to the given mean. The uniform variates come from
// the raw bits of mt19937_64 (fully specified by the standard), so the list is the same with any
// standard library.
std::vector<std::int64_t> pareto(std::size_t n, double alpha, double mean_ns, double cap_ns) {
  std::mt19937_64 rng(20240615);
  const double xm = mean_ns * (alpha - 1) / alpha;
  std::vector<double> x(n);
  double sum = 0;
  for (auto& v : x) {
    const double u = static_cast<double>((rng() >> 11) + 1) * 0x1.0p-53;  // (0, 1]
    v = std::min(xm / std::pow(u, 1 / alpha), cap_ns);
    sum += v;
  }
  const double scale = mean_ns * static_cast<double>(n) / sum;
  std::vector<std::int64_t> d(n);
  for (std::size_t i = 0; i < n; ++i) d[i] = std::llround(std::min(x[i] * scale, cap_ns));
  return d;
}

std::vector<std::int64_t> decreasing(std::size_t n, double from_ns, double to_ns) {
  std::vector<std::int64_t> d(n);
  for (std::size_t i = 0; i < n; ++i)
    d[i] = std::llround(from_ns + (to_ns - from_ns) * static_cast<double>(i) / static_cast<double>(n - 1));
  return d;
}

void run_case(const Case& c) {
  const std::string load = loadavg();
  g_dur = c.make();
  const std::size_t n = g_dur.size();
  const std::string k = std::string("mk_") + c.name + "_";
  double work = 0;
  for (auto d : g_dur) work += static_cast<double>(d);
  result(k + "n", static_cast<double>(n), "count");
  result(k + "min_task_us", static_cast<double>(*std::min_element(g_dur.begin(), g_dur.end())) / 1e3, "us");
  result(k + "max_task_us", static_cast<double>(*std::max_element(g_dur.begin(), g_dur.end())) / 1e3, "us");
  result(k + "work_ms", work / 1e6, "ms");

  // pfp
  pfp::Options o;
  o.workers = 2;
  o.threads = pfp::ThreadPolicy::allow;  // after the first OpenMP region its idle pool thread exists
  double pfp_ms = 0, bound_ms = 0, measured_ms = 0, pfp_parent_cpu = 0, pfp_workers_cpu = 0;
  bool pfp_ok = true;
  {
    pfp::MultiProcessor<> mp(pfp::Value{}, o);
    for (std::size_t i = 0; i < n; ++i)
      mp.register_function("t", [i](const pfp::Value&, const pfp::Args&) {
        spin(g_dur[i]);
        return static_cast<long long>(i);
      });
    const double self0 = cpu_ms(RUSAGE_SELF), children0 = cpu_ms(RUSAGE_CHILDREN);
    const Clock::time_point t0 = Clock::now();
    const std::vector<pfp::Result>& rs = mp.execute_parallel();
    pfp_ms = ms_since(t0);
    pfp_parent_cpu = cpu_ms(RUSAGE_SELF) - self0;
    pfp_workers_cpu = cpu_ms(RUSAGE_CHILDREN) - children0;
    if (rs.size() != n) {
      fail(std::string(c.name) + ": " + std::to_string(rs.size()) + " results for " + std::to_string(n) + " functions");
      pfp_ok = false;
    }
    std::vector<double> dur;
    dur.reserve(n);
    for (std::size_t i = 0; i < rs.size() && i < n; ++i) {
      const pfp::Result& r = rs[i];
      if (!r.ok()) {
        fail(std::string(c.name) + ": function " + std::to_string(i) + " is " + std::string(pfp::to_string(r.status)) +
             ": " + r.error);
        pfp_ok = false;
      } else if (r.index != i || !r.result.is_integer() || r.result.as<long long>() != static_cast<long long>(i)) {
        fail(std::string(c.name) + ": result " + std::to_string(i) + " has index " + std::to_string(r.index) +
             " and value " + r.result.to_json());
        pfp_ok = false;
      }
      dur.push_back(static_cast<double>(r.duration.count()) / 1e6);
      measured_ms += dur.back();
    }
    bound_ms = list_bound(dur);
  }
  if (pfp_ok) {
    result(k + "pfp_ms", pfp_ms, "ms");
    result(k + "bound_ms", bound_ms, "ms");
    result(k + "ratio", pfp_ms / bound_ms, "x");
    result(k + "pfp_workers_cpu_share", pfp_workers_cpu / (2 * pfp_ms), "fraction");
    result(k + "pfp_parent_cpu_ms", pfp_parent_cpu, "ms");
  }

  // OpenMP, same tasks, same process
  double omp_ms = 0, omp_bound_ms = 0, omp_measured_ms = 0, omp_cpu = 0;
  bool have_omp = false;
#ifdef _OPENMP
  {
    std::vector<std::int64_t> took(n, -1);
    const long long count = static_cast<long long>(n);
    const double self0 = cpu_ms(RUSAGE_SELF);
    const Clock::time_point t0 = Clock::now();
#pragma omp parallel for schedule(dynamic) num_threads(2)
    for (long long i = 0; i < count; ++i) took[static_cast<std::size_t>(i)] = spin(g_dur[static_cast<std::size_t>(i)]);
    omp_ms = ms_since(t0);
    omp_cpu = cpu_ms(RUSAGE_SELF) - self0;
    std::vector<double> dur(n);
    for (std::size_t i = 0; i < n; ++i) {
      dur[i] = static_cast<double>(took[i]) / 1e6;
      omp_measured_ms += dur[i];
    }
    omp_bound_ms = list_bound(dur);
    have_omp = std::none_of(took.begin(), took.end(), [](std::int64_t t) { return t < 0; });
    if (!have_omp) fail(std::string(c.name) + ": an OpenMP iteration did not run");
  }
  if (have_omp) {
    result(k + "omp_ms", omp_ms, "ms");
    result(k + "omp_bound_ms", omp_bound_ms, "ms");
    result(k + "omp_ratio", omp_ms / omp_bound_ms, "x");
    result(k + "omp_cpu_share", omp_cpu / (2 * omp_ms), "fraction");
    if (pfp_ok) result(k + "pfp_vs_omp", pfp_ms / omp_ms, "x");
  }
#endif

  std::printf("CASE %-11s %7zu tasks (%s): pfp %.1f ms, list bound %.1f ms (measured work %.1f ms, nominal %.1f ms), "
              "ratio %.3f, workers had %.0f %% of 2 CPUs, parent used %.0f ms CPU",
              c.name, n, c.what, pfp_ms, bound_ms, measured_ms, work / 1e6, bound_ms > 0 ? pfp_ms / bound_ms : 0.0,
              pfp_ms > 0 ? 100 * pfp_workers_cpu / (2 * pfp_ms) : 0.0, pfp_parent_cpu);
  if (have_omp)
    std::printf("; omp %.1f ms, its bound %.1f ms (measured work %.1f ms), ratio %.3f, had %.0f %% of 2 CPUs; pfp/omp %.3f",
                omp_ms, omp_bound_ms, omp_measured_ms, omp_ms / omp_bound_ms, 100 * omp_cpu / (2 * omp_ms), pfp_ms / omp_ms);
  else
    std::printf("; omp not run");
  std::printf("; load average %s\n", load.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args = bench::parse_args(
      argc, argv, "makespan [--quick] [--only reference,long_first,long_middle,long_last,pareto,decreasing,tiny]");
  if (!args.ok) return 2;
  quick = args.quick;
  auto want = [&](const char* name) { return args.want(name); };

#ifndef _OPENMP
  std::printf("SKIP omp: built without OpenMP (-fopenmp); only the pfp part runs\n");
  std::fflush(stdout);
#endif

  const std::size_t shorts = quick ? 200 : 4000;
  const std::int64_t long_ns = quick ? 100 * kMs : 2000 * kMs;
  const std::vector<Case> cases = {
      {"long_first", "one long task first, then 1 ms ones", [=] { return long_among_short(shorts, 0, long_ns); }},
      {"long_middle", "one long task in the middle of 1 ms ones", [=] { return long_among_short(shorts, shorts / 2, long_ns); }},
      {"long_last", "1 ms tasks, then one long task", [=] { return long_among_short(shorts, shorts, long_ns); }},
      {"pareto", "Pareto alpha 1.7, mean 0.5 ms, cap 200 ms",
       [] { return pareto(quick ? 500 : 10000, 1.7, 0.5 * kMs, 200.0 * kMs); }},
      {"decreasing", "linearly from 4 ms down to 0.1 ms", [] { return decreasing(quick ? 100 : 2000, 4.0 * kMs, 0.1 * kMs); }},
      {"tiny", "20 us each", [] { return std::vector<std::int64_t>(quick ? 5000 : 200000, 20 * kUs); }},
  };

  if (want("reference")) bench_reference();
  for (const Case& c : cases) {
    if (!want(c.name)) continue;
    try {
      run_case(c);
    } catch (const std::exception& e) {
      fail(std::string(c.name) + ": threw " + e.what());
    }
  }
  result("mk_failures", bench::failures, "count");
  return bench::failures ? 1 : 0;
}
