#ifndef PFP_DETAIL_RUN_FEED_HPP
#define PFP_DETAIL_RUN_FEED_HPP

// The one seam between front ends and backends: a front end describes its work as a Feed
// (feed.hpp) and hands it to run_feed(), which checks the Options once and runs the Feed on the
// backend Options::backend names. Front ends that must adapt to a backend ask what it is like
// (isolated_workers, runs_in_caller), never which one it is.

#include <pfp/detail/feed.hpp>
#include <pfp/detail/local_backends.hpp>
#include <pfp/detail/pool.hpp>
#include <pfp/detail/progress_feed.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/error.hpp>
#include <pfp/options.hpp>

#include <string>

namespace pfp {
namespace detail {

/// Throws pfp::error, saying what to change, for Options no run can honour.
inline void validate(const Options& o) {
  if (o.timeout.count() < 0)
    throw error("pfp::Options::timeout is negative (" + std::to_string(o.timeout.count()) + " ms); use 0 for no limit");
  if (o.max_result_bytes == 0) throw error("pfp::Options::max_result_bytes is 0; every result would be refused");
  if (o.cpu_limit.count() < 0)
    throw error("pfp::Options::cpu_limit is negative (" + std::to_string(o.cpu_limit.count()) + " s); use 0 for no limit");
  switch (o.backend) {
    case Backend::processes:
    case Backend::threads:
    case Backend::inline_:
    case Backend::mpi: return;
  }
  throw error("pfp: Options::backend holds " + std::to_string(static_cast<int>(o.backend)) +
              ", which is not a pfp::Backend; use Backend::processes, Backend::threads, Backend::inline_ or Backend::mpi");
}

/// A backend that runs a Feed across processes of a distributed job. Backend::mpi's is set by a
/// pfp::mpi::Session (<pfp/mpi.hpp>) while it lives, so no core header needs <mpi.h>.
using DistributedBackend = void (*)(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel);
inline DistributedBackend& mpi_backend() noexcept {
  static DistributedBackend backend = nullptr;
  return backend;
}

/// Whether each task runs in a worker process of its own (forked: isolated, killable, inheriting
/// the program as it was at the fork).
inline bool isolated_workers(const Options& o) noexcept {
  return o.backend == Backend::processes || o.backend == Backend::mpi;
}
/// Whether the backend serves a feed's requests about tasks it holds (Feed::withdrawn: stop one,
/// Feed::wants_report: what each worker runs): the process pool does.
inline bool serves_requests(const Options& o) noexcept { return o.backend == Backend::processes; }
/// Whether tasks run one after another in the thread that runs the Feed.
inline bool runs_in_caller(const Options& o) noexcept { return o.backend == Backend::inline_; }

/// run_feed() on the backend itself, without progress.
inline void run_feed_on(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel,
                        KeptWorker* inline_worker) {
  switch (options.backend) {
    case Backend::processes: run_feed_processes(run, options, feed, cancel); return;
    case Backend::threads: run_feed_threads(run, options, feed, cancel); return;
    case Backend::inline_: run_feed_inline(run, options, feed, cancel, inline_worker); return;
    case Backend::mpi:
      if (!mpi_backend())
        throw error("pfp: Options::backend is Backend::mpi but no pfp::mpi::Session is alive; #include <pfp/mpi.hpp>, "
                    "create a pfp::mpi::Session at the start of main() and run the program with mpirun or srun");
      mpi_backend()(run, options, feed, cancel);
      return;
  }
}

/// Runs `feed` to its end on the backend options.backend names: worker processes
/// (run_feed_processes, pool.hpp), threads of this process (run_feed_threads) or the calling
/// thread (run_feed_inline), with the progress Options::progress asks for (ProgressFeed). Every
/// task pulled gets exactly one delivered Result; what each backend enforces and what it throws
/// is said at each of them. Throws pfp::error for invalid Options (validate()). `inline_worker`
/// keeps the inline backend's worker (Options::initializer's state) across runs; see
/// run_feed_inline.
inline void run_feed(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel,
                     KeptWorker* inline_worker = nullptr) {
  validate(options);
  if (!wants_progress(options.progress)) {
    run_feed_on(run, options, feed, cancel, inline_worker);
    return;
  }
  ProgressFeed counted(feed, options.progress);
  try {
    run_feed_on(run, options, counted, cancel, inline_worker);
  } catch (...) {
    try {
      counted.finish(true);
    } catch (...) {  // the run's own exception says more
    }
    throw;
  }
  counted.finish(cancel && cancel->requested());
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_RUN_FEED_HPP
