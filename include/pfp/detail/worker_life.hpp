#ifndef PFP_DETAIL_WORKER_LIFE_HPP
#define PFP_DETAIL_WORKER_LIFE_HPP

// One worker's life on every backend: Options::initializer before its first function,
// Options::finalizer when it leaves normally, its state in between (worker.hpp), and what a run
// does when workers cannot be started: after start_attempts failed starts in a row of one worker
// number the run is broken, and every task not begun gets broken_reason() as its verdict.

#include <pfp/detail/posix.hpp>
#include <pfp/options.hpp>
#include <pfp/result.hpp>
#include <pfp/worker.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

// Coverage runtimes write their data at exit(), which a worker never calls (it leaves by _exit):
// when the program is built with coverage, these exist and a worker calls them before it leaves.
extern "C" void __gcov_dump(void) __attribute__((weak));               // gcc/clang --coverage
extern "C" int __llvm_profile_write_file(void) __attribute__((weak));  // clang -fprofile-instr-generate

namespace pfp {
namespace detail {

/// Failed starts in a row of one worker number after which a run is broken.
inline constexpr unsigned start_attempts = 3;

/// Writes the coverage data of this process, when it is built with coverage (else nothing).
inline void flush_coverage() noexcept {
  if (__gcov_dump) __gcov_dump();
  if (__llvm_profile_write_file) __llvm_profile_write_file();
}

/// The verdict text of the tasks of a broken run.
inline std::string broken_reason(unsigned number, const std::string& last_error) {
  return "not run: the worker initializer failed " + std::to_string(start_attempts) + " times in a row (worker " +
         std::to_string(number) + "): " + last_error;
}

/// Makes `w` the calling thread's worker (pfp::this_worker(), pfp::worker_state()) for the scope.
class CurrentScope {
 public:
  explicit CurrentScope(CurrentWorker& w) noexcept : previous_(std::exchange(current_worker, &w)) {}
  ~CurrentScope() { current_worker = previous_; }
  CurrentScope(const CurrentScope&) = delete;
  CurrentScope& operator=(const CurrentScope&) = delete;

 private:
  CurrentWorker* previous_;
};

/// One worker's set-up and tear-down, in the thread (or process) that is the worker. The caller
/// keeps a CurrentScope on current() while the worker runs anything.
class WorkerLife {
 public:
  WorkerLife(const Options& o, WorkerInfo info) : opt_(o) {
    me_.info = info;
    me_.has_initializer = static_cast<bool>(o.initializer);
    me_.state_type = o.initializer.state_type();
    me_.state_name = o.initializer.state_name();
  }
  WorkerLife(const WorkerLife&) = delete;
  WorkerLife& operator=(const WorkerLife&) = delete;

  CurrentWorker& current() noexcept { return me_; }
  bool started() const noexcept { return me_.initialized; }

  /// Runs the initializer (if any). True once it returned; false with `why` (the exception's type
  /// and what()) when it threw.
  bool begin(std::string& why) noexcept {
    try {
      if (opt_.initializer) me_.state = opt_.initializer(me_.info);
      me_.initialized = true;
      return true;
    } catch (...) {
      why = "the initializer threw " + describe_current_exception();
      return false;
    }
  }

  /// begin() up to start_attempts times, each with the next generation. nullopt once it
  /// succeeded, else the run's broken_reason().
  std::optional<std::string> begin_here() {
    std::string why;
    for (unsigned k = 0; k < start_attempts; ++k, ++me_.info.generation)
      if (begin(why)) return std::nullopt;
    return broken_reason(me_.info.number, why);
  }

  /// If it started: runs the finalizer, then destroys the state. What either throws is printed to
  /// stderr (the worker is leaving: there is nobody else to tell). Idempotent.
  void end() noexcept {
    if (!me_.initialized) return;
    try {
      if (opt_.finalizer) opt_.finalizer(me_.info);
    } catch (...) {
      complain("the finalizer threw");
    }
    try {
      me_.state.reset();
    } catch (...) {
      complain("destroying the worker's state threw");
    }
    me_.initialized = false;
  }

 private:
  void complain(const char* what) noexcept {
    try {
      std::fprintf(stderr, "pfp: worker %u: %s %s\n", me_.info.number, what, describe_current_exception().c_str());
    } catch (...) {
    }
  }

  const Options& opt_;
  CurrentWorker me_;
};

/// The inline backend's worker kept across runs: the Executor runs its inline backend once per
/// submission, and its worker lives from the first submission to shutdown.
class KeptWorker {
 public:
  explicit KeptWorker(const Options& o) : life_(o, WorkerInfo{}) {}

  /// Starts it in the calling thread on first use; the broken_reason() if it cannot start.
  std::optional<std::string> enter() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!tried_) {
      tried_ = true;
      CurrentScope scope(life_.current());
      broken_ = life_.begin_here();
    }
    return broken_;
  }
  CurrentWorker& current() noexcept { return life_.current(); }
  /// The worker leaves (finalizer, state destroyed), if it started.
  void end() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    CurrentScope scope(life_.current());
    life_.end();
  }
  ~KeptWorker() { end(); }

 private:
  std::mutex mutex_;
  WorkerLife life_;
  bool tried_ = false;
  std::optional<std::string> broken_;
};

/// The process backend's record of each worker number's starts.
class SlotStarts {
 public:
  using Clock = std::chrono::steady_clock;

  /// A worker of this number is being forked: its WorkerInfo.
  WorkerInfo forking(unsigned number, unsigned workers) {
    Slot& s = at(number);
    s.waiting = true;
    s.since = Clock::now();
    return WorkerInfo{number, workers, s.generation++};
  }
  /// Whether a worker of this number was forked and has not yet been seen started or failed.
  bool waiting(unsigned number) const { return number < slots_.size() && slots_[number].waiting; }
  Clock::time_point since(unsigned number) const { return slots_[number].since; }
  /// Its initializer returned.
  void started(unsigned number) {
    at(number).waiting = false;
    at(number).failures = 0;
  }
  /// Its start failed: true when that makes start_attempts in a row (the run is then broken).
  bool failed(unsigned number) {
    at(number).waiting = false;
    return ++at(number).failures >= start_attempts;
  }

 private:
  struct Slot {
    unsigned generation = 0;
    unsigned failures = 0;  // in a row
    bool waiting = false;
    Clock::time_point since{};
  };
  Slot& at(unsigned number) {
    if (number >= slots_.size()) slots_.resize(number + 1);
    return slots_[number];
  }
  std::vector<Slot> slots_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WORKER_LIFE_HPP
