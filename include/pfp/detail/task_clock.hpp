#ifndef PFP_DETAIL_TASK_CLOCK_HPP
#define PFP_DETAIL_TASK_CLOCK_HPP

// How a worker times its tasks. Every task is timed (Result::duration, the start the parent's
// timeouts count from, and whether it ran long enough to have written on pfp's result pipe), so
// for tasks of a few nanoseconds the clock is most of the cost: steady_clock::now() takes 25-35 ns
// on a virtual machine, the CPU's time-stamp counter half that. Where the counter ticks at a
// constant rate (x86-64 with an invariant TSC), tasks are timed with it, scaled to steady_clock
// nanoseconds by a rate measured in this process over at least a few milliseconds, and re-anchored
// to steady_clock after every long task; until the rate is known, and elsewhere, steady_clock.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// <cpuid.h> is small; the counter is read with the compiler's builtin rather than <x86intrin.h>,
// which alone costs every translation unit that includes pfp about 0.3 s of compile time.
#include <cpuid.h>
#define PFP_DETAIL_HAVE_TSC 1
#else
#define PFP_DETAIL_HAVE_TSC 0
#endif

namespace pfp {
namespace detail {

inline std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class TaskClock {
 public:
  /// In the parent, before forking workers (they inherit what it measured): the first call
  /// measures how long a task must take before it could have written to a pipe; a later call,
  /// once enough time has passed, the counter's rate.
  static void prepare() noexcept { learn_rate(calibration()); }

  /// Called before each batch of tasks: picks the counter up once its rate is known.
  TaskClock() noexcept { refresh(); }
  void refresh() noexcept {
    chained_ = false;
    Calibration& c = calibration();
    learn_rate(c);
    ns_per_tick_ = c.ns_per_tick.load(std::memory_order_relaxed);
    if (ns_per_tick_ > 0) reanchor();
  }

  /// A task starts now: returns when, in steady_clock nanoseconds. With the counter, a task that
  /// follows another with nothing but pfp's own steps in between (see chain()) starts where that
  /// one stopped: one reading per task instead of two, and pfp's few steps counted in its time.
  std::int64_t start() noexcept {
    if (ns_per_tick_ > 0) {
      start_ticks_ = chained_ ? last_stop_ticks_ : ticks();
      if (start_ticks_ - anchor_ticks_ > span_ticks_) reanchor();  // scaled over at most 1 ms
      start_ns_ = anchor_ns_ + scaled(start_ticks_, anchor_ticks_);
    } else {
      start_ns_ = steady_ns();
    }
    return start_ns_;
  }

  /// The task started last ends now: returns how long it took, in nanoseconds.
  std::int64_t stop() noexcept {
    const Calibration& c = calibration();
    if (ns_per_tick_ > 0) {
      const std::uint64_t now = ticks();
      last_stop_ticks_ = now;
      const std::uint64_t took = now - start_ticks_;
      could_write_ = now < start_ticks_ || took >= c.write_floor_ticks;
      if (now < start_ticks_ || took >= long_ticks_) {  // a long task: back to steady_clock's own count
        reanchor();
        return std::max<std::int64_t>(0, anchor_ns_ - start_ns_);
      }
      return static_cast<std::int64_t>(static_cast<double>(took) * ns_per_tick_);
    }
    const std::int64_t took = steady_ns() - start_ns_;
    could_write_ = took >= c.write_floor_ns;
    return took;
  }

  /// Whether the next start() may begin where the last stop() ended: only if what happened in
  /// between was pfp's own work without system calls (false: it reads the clock again).
  void chain(bool chained) noexcept { chained_ = chained; }

  /// Whether the task last stopped took long enough to have written to a pipe. One that took
  /// less did not: the clock's own cost plus half the quickest one-byte pipe write measured here
  /// (half, for a margin against clock-speed changes).
  bool could_have_written() const noexcept { return could_write_; }

 private:
  struct Calibration {
    Calibration() noexcept { measure(*this); }
    std::int64_t write_floor_ns = 0;
    std::uint64_t write_floor_ticks = 0;
    bool counter = false;  // an invariant time-stamp counter
    std::int64_t anchor_ns = 0;
    std::uint64_t anchor_ticks = 0;
    std::atomic<double> ns_per_tick{0};
  };
  static Calibration& calibration() noexcept {
    static Calibration c;  // measured on first use, once per process
    return c;
  }

  static std::uint64_t ticks() noexcept {
#if PFP_DETAIL_HAVE_TSC
    return __builtin_ia32_rdtsc();
#else
    return 0;
#endif
  }

  static bool invariant_counter() noexcept {
#if PFP_DETAIL_HAVE_TSC
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8)) != 0;
#else
    return false;
#endif
  }

  // The quickest of 32 one-byte writes to a pipe, and of 32 clock reads, in both units.
  static void measure(Calibration& c) noexcept {
    c.counter = invariant_counter();
    int fds[2];
    if (::pipe(fds) != 0) return;  // floors stay 0: every task counts as one that could have written
    constexpr std::int64_t never_ns = std::numeric_limits<std::int64_t>::max();
    constexpr std::uint64_t never_ticks = std::numeric_limits<std::uint64_t>::max();
    std::int64_t read_ns = never_ns, write_ns = never_ns;
    std::uint64_t read_ticks = never_ticks, write_ticks = never_ticks;
    for (int i = 0; i < 32; ++i) {
      std::int64_t t0 = steady_ns();
      read_ns = std::min(read_ns, steady_ns() - t0);
      std::uint64_t k0 = ticks();
      read_ticks = std::min(read_ticks, ticks() - k0);
      char byte = 0;
      t0 = steady_ns();
      k0 = ticks();
      const bool wrote = ::write(fds[1], &byte, 1) == 1;
      const std::uint64_t k1 = ticks();
      const std::int64_t t1 = steady_ns();
      if (wrote) {
        write_ns = std::min(write_ns, t1 - t0);
        write_ticks = std::min(write_ticks, k1 - k0);
      }
      [[maybe_unused]] ssize_t drained = ::read(fds[0], &byte, 1);
    }
    ::close(fds[0]);
    ::close(fds[1]);
    if (write_ns == never_ns) return;
    c.write_floor_ns = read_ns + (write_ns - std::min(read_ns, write_ns)) / 2;
    c.write_floor_ticks = read_ticks + (write_ticks - std::min(read_ticks, write_ticks)) / 2;
    read_pair(c.anchor_ns, c.anchor_ticks);
  }

  // A steady_clock reading and the counter's reading at the same moment: of four tries, the one
  // whose two counter readings around it are closest (a preemption between the two clocks would
  // skew the rate and every time scaled with it).
  static void read_pair(std::int64_t& ns, std::uint64_t& at) noexcept {
    std::uint64_t best = std::numeric_limits<std::uint64_t>::max();
    for (int i = 0; i < 4; ++i) {
      const std::uint64_t k0 = ticks();
      const std::int64_t t = steady_ns();
      const std::uint64_t k1 = ticks();
      if (k1 >= k0 && k1 - k0 < best) {
        best = k1 - k0;
        ns = t;
        at = k0 + best / 2;
      }
    }
    if (best == std::numeric_limits<std::uint64_t>::max()) {  // the counter went back: take what there is
      ns = steady_ns();
      at = ticks();
    }
  }

  // The counter's rate, from the anchor to now, once they are 2 ms apart or more.
  static void learn_rate(Calibration& c) noexcept {
    if (!c.counter || c.ns_per_tick.load(std::memory_order_relaxed) > 0 || c.anchor_ns == 0) return;
    if (steady_ns() - c.anchor_ns < 2'000'000) return;
    std::int64_t t;
    std::uint64_t k;
    read_pair(t, k);
    if (k <= c.anchor_ticks) return;
    c.ns_per_tick.store(static_cast<double>(t - c.anchor_ns) / static_cast<double>(k - c.anchor_ticks), std::memory_order_relaxed);
  }

  void reanchor() noexcept {
    read_pair(anchor_ns_, anchor_ticks_);
    long_ticks_ = static_cast<std::uint64_t>(10'000.0 / ns_per_tick_);      // 10 us
    span_ticks_ = static_cast<std::uint64_t>(1'000'000.0 / ns_per_tick_);  // 1 ms
  }

  // Nanoseconds from `from` to `to` (either may come first: the anchor is read after the start of
  // a task that follows another).
  std::int64_t scaled(std::uint64_t to, std::uint64_t from) const noexcept {
    const double d = to >= from ? static_cast<double>(to - from) : -static_cast<double>(from - to);
    return static_cast<std::int64_t>(d * ns_per_tick_);
  }

  double ns_per_tick_ = 0;
  std::int64_t anchor_ns_ = 0;
  std::uint64_t anchor_ticks_ = 0;
  std::uint64_t long_ticks_ = 0;
  std::uint64_t span_ticks_ = 0;
  std::uint64_t start_ticks_ = 0;
  std::int64_t start_ns_ = 0;
  std::uint64_t last_stop_ticks_ = 0;
  bool chained_ = false;
  bool could_write_ = true;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_TASK_CLOCK_HPP
