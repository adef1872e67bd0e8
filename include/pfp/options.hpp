#ifndef PFP_OPTIONS_HPP
#define PFP_OPTIONS_HPP

#include <pfp/worker.hpp>

#include <pfp/progress_options.hpp>

#include <chrono>
#include <cstddef>
#include <string_view>

namespace pfp {

/// What execute_parallel() does when the calling process already runs other threads. fork()
/// copies only the calling thread: a lock another thread holds at that moment (in malloc, a
/// logger, ...) stays locked forever in the worker.
enum class ThreadPolicy {
  warn,    ///< print one warning to stderr per process, then go on
  refuse,  ///< throw pfp::error
  allow,   ///< go on silently (you know the other threads hold no locks the functions need)
};

/// Where the functions of a run execute. Switching is one option; the Results are the same
/// except where isolation is the difference (see README, "Backends").
enum class Backend {
  processes,  ///< forked worker processes (default): crashes, hangs and memory are isolated
  threads,    ///< a thread pool in this process: lower overhead, no isolation (a crash ends the program)
  inline_,    ///< one after another in the calling thread: for debuggers, sanitizers and profilers
  mpi,        ///< worker processes on every MPI rank (needs <pfp/mpi.hpp> and a live pfp::mpi::Session)
};

/// The backend's name as written in the enum ("processes", "threads", "inline", "mpi").
constexpr std::string_view to_string(Backend b) noexcept {
  switch (b) {
    case Backend::processes: return "processes";
    case Backend::threads: return "threads";
    case Backend::inline_: return "inline";
    case Backend::mpi: return "mpi";
  }
  return "?";
}

/// How a run is carried out. Every field has a usable default.
struct Options {
  /// Worker processes that may exist at once; 0 = std::thread::hardware_concurrency().
  unsigned workers = 0;
  /// Per-function wall-clock limit; 0 = no limit. A function past it is killed with its whole
  /// process group and reported as Status::timed_out.
  std::chrono::milliseconds timeout{0};
  /// Functions one worker process runs before it is replaced; 0 = unlimited,
  /// 1 = a fresh process per function.
  unsigned max_tasks_per_worker = 0;
  /// Largest serialized result accepted, in bytes. A larger one is refused on that function
  /// (Status::exception) and never allocated by the parent.
  std::size_t max_result_bytes = std::size_t{4} << 30;
  /// Extra attempts for a function that crashed or timed out (and, with retry_exceptions, threw).
  /// Result::attempts tells how many were made.
  unsigned retries = 0;
  /// Also retry functions that threw.
  bool retry_exceptions = false;
  /// Address-space limit of each worker in bytes (RLIMIT_AS); 0 = none. An allocation past it
  /// fails in the function: std::bad_alloc, reported as Status::exception.
  std::size_t memory_limit = 0;
  /// CPU time one function may use (RLIMIT_CPU, whole seconds, so up to one second more); 0 = none. A function past it
  /// gets SIGXCPU and is reported as Status::crashed with a message that names the limit.
  std::chrono::seconds cpu_limit{0};
  /// What to do when the calling process already runs other threads.
  ThreadPolicy threads = ThreadPolicy::warn;
  /// A progress report as functions finish (ProgressOptions: a live line on a terminal, plain
  /// lines elsewhere, or your own callback), for every front end; off by default (the Manager
  /// turns it on).
  ProgressOptions progress = ProgressOptions::none();
  /// Where the functions run: worker processes (default), threads of this process, or inline.
  Backend backend = Backend::processes;
  /// Runs once in each worker before its first function: a callable f(const pfp::WorkerInfo&)
  /// that returns nothing, or the worker's state (then reached with pfp::worker_state<State>();
  /// see pfp::WorkerInitializer). Open per-worker resources here (connections, files, seeded
  /// generators), not before the fork. With Backend::threads it runs in each thread, concurrently.
  /// A start fails when it throws, crashes the worker or runs past Options::timeout: the worker's
  /// tasks go to another worker, and once 3 starts in a row of one worker number failed, the run
  /// (or Executor) is broken: every function not yet begun gets Status::cancelled with an error
  /// that says the initializer failed and what it threw.
  WorkerInitializer initializer;
  /// Runs once in each worker that started when it leaves normally (the run or the Executor ends,
  /// or it is replaced after max_tasks_per_worker), before its state is destroyed; not after a
  /// crash, a timeout or a cancel (the process is killed). A worker process has 10 s for it.
  /// What it throws is printed to stderr.
  WorkerFinalizer finalizer;
};

}  // namespace pfp

#endif  // PFP_OPTIONS_HPP
