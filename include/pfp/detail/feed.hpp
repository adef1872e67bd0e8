#ifndef PFP_DETAIL_FEED_HPP
#define PFP_DETAIL_FEED_HPP

// The seam between what a run does (a fixed list of functions, a stream of submissions, a lazy
// source of items) and how it is carried out (worker processes, threads, or the calling thread).
// Every front end (MultiProcessor, Executor, map, Manager) describes its work as a Feed; every
// backend runs a Feed to the end and hands back exactly one Result per task it took.

#include <pfp/options.hpp>
#include <pfp/result.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <functional>
#include <thread>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pfp {

namespace detail {

/// One unit of work: which function (the front end's own numbering) and its serialized input.
/// Front ends whose inputs are inherited by fork leave payload empty.
struct Task {
  std::uint64_t fn = 0;
  std::string payload;
  int priority = 0;  ///< higher begins first among tasks that have not begun (see Feed::next_priority)
  /// This task's wall-clock limit in place of Options::timeout (0: the Options' one). Enforced by
  /// the process backend only, like Options::timeout.
  std::chrono::milliseconds timeout{0};
};

/// What one worker of the process backend is doing, for Feed::report().
struct WorkerView {
  int pid = 0;
  unsigned slot = 0;                             ///< as TaskView::worker
  std::optional<std::uint64_t> running;          ///< the seq of the task it runs, if it runs one
  std::chrono::steady_clock::time_point since{};  ///< when that task began
  std::size_t held = 0;                          ///< tasks it holds, the running one included
};

/// What a worker is given to run one task.
struct TaskView {
  std::uint64_t seq = 0;         ///< the task's number in the run, from 0, in the order it was pulled
  std::uint64_t fn = 0;
  std::string_view payload;
  unsigned worker = 0;           ///< which worker slot runs it, 0 .. workers-1 (stable per slot)
};

/// Runs one task inside a worker (process, thread or the caller), filling r.result. Throwing is
/// how a task fails: the backend turns the exception into Status::exception.
using FeedRunner = std::function<void(const TaskView& task, Result& r)>;

/// A run's source of tasks and sink of results. Backends call it one call at a time, never
/// concurrently (the threads backend from several threads, under one mutex).
class Feed {
 public:
  virtual ~Feed() = default;

  /// The next task, or nullopt if none is ready now. May throw: the backend stops pulling, lets
  /// the tasks it holds finish (delivering them), and rethrows from its run function.
  virtual std::optional<Task> pull() = 0;

  /// Optional fast path for many small tasks: up to `max` tasks at once, whose fns are
  /// first_fn, first_fn + 1, ... and whose payloads are empty, with their Results kept by the feed
  /// in places[0 .. n) (function_name and index already set, status cancelled, attempts 0). The
  /// backend writes each verdict there in place of calling deliver(), and may send the n tasks to a
  /// worker as one message. Returns n; 0 means none this way: call pull(). The default never
  /// gives any.
  virtual std::size_t pull_run(std::size_t /*max*/, std::uint64_t& /*first_fn*/, Result*& /*places*/) { return 0; }

  /// After pull_run(): the verdict of task `seq` is final in its place (for a feed that streams
  /// them on, e.g. to another MPI rank). Called once per task, in completion order.
  virtual void placed(std::uint64_t /*seq*/) {}

  /// After pull() returned nullopt: true if no task will ever come again (the run ends once the
  /// tasks in flight are delivered); false if more may come later (see wake_fd).
  virtual bool finished() = 0;

  /// A descriptor that becomes readable when pull() may have something new, or -1 if the feed
  /// never waits (finished() is true whenever pull() returns nullopt). pull() drains it.
  virtual int wake_fd() const { return -1; }

  /// The process backend has forked the workers it starts with (called once per run; not when it
  /// could start none: the run then fails). A feed fed from other threads can hold them back until
  /// then: a fork while another thread holds a lock leaves that lock held in the worker.
  virtual void workers_started() {}

  /// The priority of the task pull() would give next, if the feed orders its tasks by priority
  /// (nullopt: it gives none now, or all its tasks are equal). A backend that holds tasks of lower
  /// priority that have not begun takes them back, so the higher one begins first.
  virtual std::optional<int> next_priority() { return std::nullopt; }

  /// What every process of a distributed run (Backend::mpi) must have alike for the same fn to
  /// mean the same function there: a hash of the functions' names and count, or of the items'
  /// count; 0 = nothing to compare. Compared between ranks before any task is sent.
  virtual std::uint64_t signature() const { return 0; }

  /// Tasks the feed knows it will give, if known (used to start no more workers than needed).
  virtual std::optional<std::size_t> size_hint() const { return std::nullopt; }

  /// The final verdict of task `seq` (after retries), in completion order. r.index == seq,
  /// r.function_name is empty (the feed names its tasks), r.pid is the process that ran it.
  /// May throw: the backend then stops the run as if cancelled and rethrows.
  virtual void deliver(std::uint64_t seq, Result&& r) = 0;

  /// A verdict already delivered turned out wrong: the task corrupted pfp's result stream after
  /// its result was sent, so it is reported as Status::crashed. A feed that can still change what
  /// it reported takes the new Result; a stream keeps the first (the default).
  virtual void amend(std::uint64_t /*seq*/, Result&& /*r*/) {}

  /// The run stopped early (cancelled, or no worker could be started): tasks never pulled will
  /// not run. A feed with a known list of tasks reports them (Status::cancelled, error `why`);
  /// a stream just stops.
  virtual void drop_rest(const std::string& /*why*/) {}

  /// Polled by the backend between tasks: true asks it to stop as if cancelled (fail-fast).
  virtual bool stop_requested() { return false; }

  /// A descriptor the process backend watches for the whole run (-1: none), for what tasks send
  /// the parent while they run besides their results (the Manager's log lines); side_ready() is
  /// called when it is readable. May throw: the backend then stops the run as if cancelled and
  /// rethrows.
  virtual int side_fd() const { return -1; }
  virtual void side_ready() {}

  /// Asked by the process backend after each side_ready(): tasks the front end wants stopped
  /// (their seqs, appended to `out`). One that has not begun never runs and is delivered
  /// Status::cancelled; a running one is killed with its worker and delivered cancelled; one
  /// already delivered is ignored. The threads and inline backends never ask (they cannot stop
  /// a running task; a front end withdraws what it has not given itself).
  virtual void withdrawn(std::vector<std::uint64_t>& /*out*/) {}

  /// Asked by the process backend after each side_ready(): whether the front end wants to know
  /// what the workers do now; if so report() gets one WorkerView per live worker, at once.
  virtual bool wants_report() { return false; }
  virtual void report(const std::vector<WorkerView>& /*workers*/) {}
  // A new member here is forwarded by ProgressFeed (progress_feed.hpp) too.
};

/// A user's callback that a feed hands results to (on_result, a Manager's logger). What it throws
/// stops the run and is rethrown by the backend; from then on it is never called again, whatever
/// the stop still delivers (tasks killed or never started, tasks of other threads finishing).
template <class F>
class UserCallback {
 public:
  explicit UserCallback(F& f) noexcept : f_(&f) {}
  /// Calls the callback unless it threw before; false if it was not called.
  template <class... Args>
  bool operator()(Args&&... args) {
    if (threw_) return false;
    try {
      (*f_)(std::forward<Args>(args)...);
    } catch (...) {
      threw_ = true;
      throw;
    }
    return true;
  }
  bool threw() const noexcept { return threw_; }

 private:
  F* f_;
  bool threw_ = false;
};


/// FNV-1a over `bytes`, continuing from h (for Feed::signature()).
inline std::uint64_t hash_bytes(std::uint64_t h, std::string_view bytes) noexcept {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
inline constexpr std::uint64_t hash_seed = 0xcbf29ce484222325ull;

/// Workers for a run of `tasks` tasks (unknown: as many as the options allow).
inline unsigned effective_workers(const Options& o, std::optional<std::size_t> tasks = std::nullopt) {
  unsigned n = o.workers ? o.workers : std::thread::hardware_concurrency();
  if (n == 0) n = 1;
  return tasks ? static_cast<unsigned>(std::min<std::size_t>(n, std::max<std::size_t>(*tasks, 1))) : n;
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_FEED_HPP
