#ifndef PFP_EXECUTOR_HPP
#define PFP_EXECUTOR_HPP

// pfp::Executor: a pool that keeps running while you submit work to it, like Python's
// concurrent.futures executors. Functions are declared before the pool starts (the workers are
// forked then and inherit them); each submit() serializes its arguments, returns a Future, and may
// carry a priority. Futures wait, time out, and hand back the full Result on failure;
// as_completed(), wait_any() and wait_all() work over sets of them; next_completed() streams
// Results to a consumer while a producer is still submitting, with a bounded queue between them.

#include <pfp/detail/callable.hpp>
#include <pfp/detail/run_feed.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/wake_pipe.hpp>
#include <pfp/error.hpp>
#include <pfp/future.hpp>
#include <pfp/detail/feed.hpp>
#include <pfp/options.hpp>
#include <pfp/result.hpp>
#include <pfp/serialization.hpp>
#include <pfp/value.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <shared_mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

namespace pfp {

namespace mpi {
class Session;  // serves an Executor's submissions on the ranks other than 0 (<pfp/mpi.hpp>)
}

/// A declared function: what Executor::submit() takes. R is its return type, A its parameters.
template <class R, class... A>
struct Function {
  std::uint64_t id = 0;
  std::string name;
};

/// How an Executor queues work, beyond the run Options.
struct ExecutorOptions {
  /// Submissions that may wait to start before submit() blocks (backpressure on a producer);
  /// 0 = unbounded. A submission waits from submit() until a worker can begin it: beyond the one
  /// task per worker that runs, tasks handed to workers ahead of time still count as waiting.
  /// With stream_results, a submission counts until next_completed() takes it.
  std::size_t max_queued = 0;
  /// Keep every completed Result for next_completed(), in completion order.
  bool stream_results = false;
};

/// Per-submission settings (Executor::submit_with).
struct Submission {
  /// Higher starts first when every worker is busy (as submit_with_priority()).
  int priority = 0;
  /// This task's wall-clock limit in place of Options::timeout (0: the Options' one), like
  /// pebble's schedule(timeout=): past it the task is killed with its process group and reported
  /// Status::timed_out. Backend::processes only: the threads and inline backends enforce no
  /// timeout (a thread cannot be killed).
  std::chrono::milliseconds timeout{0};
};

/// One worker, as Executor::status() sees it.
struct ExecutorWorker {
  int pid = 0;                                    ///< its process (threads and inline: this process)
  std::optional<std::size_t> task;                ///< the index (Result::index) of the submission it runs
  std::string function;                           ///< the name of that submission's function
  std::chrono::steady_clock::time_point since{};  ///< when that submission began
};

/// A moment's view of an Executor (Executor::status()).
struct ExecutorStatus {
  std::size_t queued = 0;   ///< submitted and not begun (with processes: held by a worker ahead of time included)
  std::size_t running = 0;  ///< begun, without a verdict yet
  /// Processes: every live worker, an idle one without a task. Threads and inline: one entry per
  /// running submission (the pool's threads are not told apart).
  std::vector<ExecutorWorker> workers;
};

/// A pool of workers that runs submitted tasks until shut down, like concurrent.futures'
/// ProcessPoolExecutor (Options::backend picks processes, threads or inline).
///
/// declare() every function first; the workers start at start() (or the first submit()) and
/// inherit them, so functions may capture anything. Only the arguments of each submission are
/// serialized (to pfp::Value, see to_value/from_value). Priorities: with every worker busy, the
/// highest priority waiting submission starts first; equal priorities start in submission order.
/// submit(), next_completed(), close() and the Future calls are thread-safe; declare(), start(),
/// shutdown() and the destructor are for the owning thread. The destructor shuts down and waits:
/// no worker process outlives the Executor.
///
/// With Backend::processes the pool runs a background thread of this process, which forks the
/// workers at start() and replaces dead or retired ones later: start the Executor before other
/// threads that hold locks a function needs (see Options::threads).
class Executor : private detail::FutureOwner {
 public:
  /// Throws pfp::error if options are invalid.
  explicit Executor(Options options = Options{}, ExecutorOptions queue = ExecutorOptions{})
      : options_(options), queue_options_(queue), link_(std::make_shared<detail::FutureLink>()) {
    detail::validate(options_);
    options_.threads = ThreadPolicy::allow;  // the pool's own thread is the one that forks
    link_->owner = this;
  }

  /// Shuts down and waits. A done callback's exception that shutdown() did not rethrow is
  /// written to stderr (a destructor cannot throw).
  ~Executor() {
    try {
      shutdown();
    } catch (...) {
      report_lost(std::current_exception());
    }
    std::unique_lock<std::shared_mutex> lock(link_->mutex);
    link_->owner = nullptr;
  }
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  /// Declares f (any callable with one non-template operator(): a function, a lambda without auto
  /// parameters, ...) for submit(). Parameters are read from the submitted Values with as<T>()
  /// and the return value converted with pfp::Value(r). Throws pfp::error after start().
  template <class F>
  auto declare(std::string name, F f) {
    using Fn = std::decay_t<F>;
    using Traits = detail::callable_traits<Fn>;
    static_assert(Traits::known,
                  "pfp::Executor::declare: f must have exactly one call signature (a function, or a lambda "
                  "without auto parameters) so that its parameter types can be read from the submitted values");
    if constexpr (Traits::known) {
      using R = typename Traits::result;
      using Params = typename Traits::args;
      static_assert(std::is_void_v<R> || std::is_constructible_v<Value, R>,
                    "pfp::Executor::declare: the function's return type cannot be converted to pfp::Value; define "
                    "void to_value(pfp::Value&, const T&) in the type's namespace");
      std::lock_guard<std::mutex> lock(mutex_);
      if (started_) throw error("pfp::Executor::declare: declare every function before start() or the first submit()");
      const std::uint64_t id = functions_.size();
      functions_.push_back(Declared{name, [f = Fn(std::move(f))](const Value& args) mutable {
                                       return detail::call_with_value_args<R, Params>(
                                           f, args, std::make_index_sequence<std::tuple_size_v<Params>>{});
                                     }});
      return make_function<R>(id, std::move(name), static_cast<Params*>(nullptr));
    }
  }

  /// Starts the workers. Called by the first submit() if not before. With the processes backend
  /// it returns once the workers are forked, so threads created after start() never run while
  /// one is (a lock such a thread held at that moment would stay locked in the worker). Workers
  /// started later (to replace one that died or left) are forked while other threads run.
  /// Throws pfp::error if no worker can be started (processes) or after shutdown().
  void start() {
    std::unique_lock<std::mutex> lock(mutex_);
    start_locked(lock);
  }

  /// Queues f(args...) and returns its Future. Blocks while ExecutorOptions::max_queued
  /// submissions wait. Throws pfp::error after close()/shutdown() or if the pool has failed, and
  /// pfp::error from the conversion of an argument to pfp::Value.
  template <class R, class... A, class... Given>
  Future<R> submit(const Function<R, A...>& fn, Given&&... args) {
    return submit_with_priority(0, fn, std::forward<Given>(args)...);
  }

  /// submit() with a priority: higher starts first when workers are busy.
  template <class R, class... A, class... Given>
  Future<R> submit_with_priority(int priority, const Function<R, A...>& fn, Given&&... args) {
    Submission how;
    how.priority = priority;
    return submit_with(how, fn, std::forward<Given>(args)...);
  }

  /// submit() with per-submission settings: a priority, a timeout of its own (see Submission).
  /// Throws like submit(), and pfp::error for a negative timeout.
  template <class R, class... A, class... Given>
  Future<R> submit_with(const Submission& how, const Function<R, A...>& fn, Given&&... args) {
    static_assert(sizeof...(A) == sizeof...(Given), "pfp::Executor::submit: wrong number of arguments for this function");
    if (how.timeout.count() < 0)
      throw error("pfp::Submission::timeout is negative (" + std::to_string(how.timeout.count()) +
                  " ms); use 0 for Options::timeout");
    Value packed = Value::array();
    (packed.push_back(pack_argument<A>(std::forward<Given>(args))), ...);
    return Future<R>(enqueue(fn.id, how, encode(packed)));
  }

  /// Like concurrent.futures.Executor.map: submits fn for every item of `items` (the argument,
  /// or a std::tuple of the arguments for a function of several), then returns what each
  /// returned, in input order. `timeout`, counted from the call, bounds the whole. Throws
  /// pfp::task_error for the first item, in input order, that did not return normally, and
  /// pfp::error once the timeout passes before every value is there; either way the
  /// submissions still without a verdict are cancelled first (Future::cancel()).
  template <class R, class... A, class Range>
  std::vector<R> map(const Function<R, A...>& fn, const Range& items, std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  /// Queued and running counts and what each worker runs, since when (see ExecutorStatus).
  /// With Backend::processes it asks the pool's thread (a round trip); from a done callback that
  /// runs in that thread it reports no workers. Thread-safe.
  ExecutorStatus status();

  /// The next completed Result, in completion order; blocks until one is there. Returns nullopt
  /// once close() was called and every submission's Result was taken; then rethrows the error
  /// given to close(), if any. Needs ExecutorOptions::stream_results (else throws pfp::error).
  std::optional<Result> next_completed() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!queue_options_.stream_results)
      throw error("pfp::Executor::next_completed: set ExecutorOptions::stream_results to receive completed results");
    completed_cv_.wait(lock, [&] { return !completed_.empty() || (closed_ && taken_ == submitted_); });
    if (completed_.empty()) {
      if (producer_error_) std::rethrow_exception(std::exchange(producer_error_, nullptr));
      return std::nullopt;
    }
    Result r = std::move(completed_.front());
    completed_.pop_front();
    ++taken_;
    space_cv_.notify_all();
    return r;
  }

  /// Ends the stream of submissions: submit() then throws, queued tasks still run, and
  /// next_completed() returns nullopt after the last Result (rethrowing producer_error, if given).
  void close(std::exception_ptr producer_error = nullptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!closed_) {
        closed_ = true;
        producer_error_ = producer_error;
      }
    }
    wake();
    space_cv_.notify_all();
    completed_cv_.notify_all();
  }

  /// Stops taking work and waits for the pool to end. With cancel_pending, tasks that have not
  /// started end as Status::cancelled; otherwise they run first. Running tasks finish. Returns
  /// once every worker has been reaped. Idempotent. Then rethrows the first exception a done
  /// callback (Future::add_done_callback) threw in another thread, if any.
  void shutdown(bool cancel_pending = false) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cancel_pending) cancel_queued_locked("cancelled before it started: the executor was shut down");
    }
    settle_set_aside();
    close();
    if (runner_.joinable()) runner_.join();
    inline_worker_.end();  // Backend::inline_: its finalizer (the pool's workers ran theirs)
    settle_set_aside();
    std::exception_ptr failed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      failed = std::exchange(callback_error_, nullptr);
    }
    if (failed) std::rethrow_exception(failed);
  }

  /// Stops everything now: queued tasks are cancelled, running ones killed (processes) with their
  /// process groups, all as Status::cancelled. Async-signal-unsafe; thread-safe.
  void cancel() {
    {
      // Closed under the same lock that cancels the queue: nothing submitted in between waits for
      // a pool that has stopped pulling.
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      cancel_queued_locked("cancelled before it started");
    }
    settle_set_aside();
    cancel_state_.request();
    close();
  }

  const Options& options() const noexcept { return options_; }

 private:
  friend class mpi::Session;
  struct Declared {
    std::string name;
    std::function<Value(const Value&)> run;
  };
  struct Waiting {
    int priority;
    std::chrono::milliseconds timeout;
    std::uint64_t order;
    std::uint64_t fn;
    std::shared_ptr<std::string> payload;
    std::shared_ptr<detail::FutureState> state;
    bool operator<(const Waiting& o) const {  // std::priority_queue keeps the largest on top
      return priority != o.priority ? priority < o.priority : order > o.order;
    }
  };
  struct Pulled {
    std::uint64_t fn;
    std::shared_ptr<detail::FutureState> state;
    std::uint64_t order;  // the submission's number: its Result's index
    std::chrono::steady_clock::time_point since{};  // when it was pulled (threads, inline: when it began)
  };

  // As given when it converts to a Value (the worker's as<A>() then checks ranges), else as A.
  template <class A, class G>
  static Value pack_argument(G&& given) {
    if constexpr (std::is_constructible_v<Value, G&&>) {
      return Value(std::forward<G>(given));
    } else {
      static_assert(std::is_constructible_v<A, G&&>, "pfp::Executor::submit: an argument does not convert to the parameter's type");
      return Value(A(std::forward<G>(given)));
    }
  }

  template <class R, class... A>
  static Function<R, A...> make_function(std::uint64_t id, std::string name, std::tuple<A...>*) {
    return Function<R, A...>{id, std::move(name)};
  }

  // The Feed the backend pulls from: every call comes from the backend's thread (see
  // detail/executor_control.hpp).
  class QueueFeed;
  friend class QueueFeed;

  void start_locked(std::unique_lock<std::mutex>& lock) {
    if (started_) {
      if (failure_) throw error("pfp::Executor: the pool has failed: " + *failure_);
      if (closed_) throw error("pfp::Executor: the executor was shut down or closed; create a new one");
      return;
    }
    started_ = true;
    try {
      wake_.open();
      if (detail::runs_in_caller(options_)) return;  // runs in submit()
      if (detail::serves_requests(options_)) control_.open();
      cancel_state_.open();
      runner_ = std::thread([this] { run_pool(); });
      pool_thread_ = runner_.get_id();
      pool_running_ = true;
    } catch (...) {
      // Without its pipes or its thread no pool will ever answer: refuse every submission.
      cancel_state_.close();
      fail_locked("could not start: " + detail::describe_current_exception());
      throw error("pfp::Executor: the pool has failed: " + *failure_);
    }
    if (!detail::isolated_workers(options_)) return;
    forked_cv_.wait(lock, [&] { return workers_forked_ || failure_; });
    if (failure_) throw error("pfp::Executor: the pool has failed: " + *failure_);
  }

  void run_pool();

  // The declared names, hashed: what every rank of a Backend::mpi pool must have alike.
  std::uint64_t signature() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::uint64_t h = detail::hash_bytes(detail::hash_seed, "executor " + std::to_string(functions_.size()));
    for (const Declared& d : functions_) h = detail::hash_bytes(detail::hash_bytes(h, d.name), std::string_view("\0", 1));
    return h;
  }

  detail::FeedRunner task_runner() {
    return [this](const detail::TaskView& task, Result& r) {
      if (task.fn >= functions_.size()) throw error("pfp: unknown function id " + std::to_string(task.fn));
      r.result = functions_[static_cast<std::size_t>(task.fn)].run(decode(task.payload));
    };
  }

  std::shared_ptr<detail::FutureState> enqueue(std::uint64_t fn, const Submission& how, std::string payload) {
    auto state = std::make_shared<detail::FutureState>();
    state->link = link_;
    state->submitted = true;
    state->fn = fn;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (closed_ && started_) start_locked(lock);  // throws the reason
      if (closed_) throw error("pfp::Executor::submit: the executor was closed; no more submissions are taken");
      start_locked(lock);
      if (queue_options_.max_queued) {
        space_cv_.wait(lock, [&] { return closed_ || outstanding_locked() < queue_options_.max_queued; });
        if (closed_) throw error("pfp::Executor::submit: the executor was closed while this submission waited for room");
      }
      ++submitted_;
      state->order = order_;
      waiting_.push(Waiting{how.priority, how.timeout, order_++, fn, std::make_shared<std::string>(std::move(payload)), state});
    }
    if (detail::runs_in_caller(options_)) {
      run_inline_now();
    } else {
      wake();
    }
    return state;
  }

  // Inline backend: the caller runs what is queued, now.
  void run_inline_now();

  std::size_t outstanding_locked() const {
    if (queue_options_.stream_results) return submitted_ - taken_;
    // Pulled by the pool: at most one per worker runs, the rest wait in the workers' queues.
    const std::size_t running = std::min(pulled_.size(), static_cast<std::size_t>(detail::effective_workers(options_)));
    return waiting_.size() - withdrawn_waiting_ + pulled_.size() - running;
  }

  void complete(detail::FutureState& state, Result&& r) {
    if (queue_options_.stream_results) {
      Result copy = r;
      detail::fulfil(state, std::move(r));
      std::lock_guard<std::mutex> lock(mutex_);
      completed_.push_back(std::move(copy));
      completed_cv_.notify_all();
    } else {
      detail::fulfil(state, std::move(r));
    }
  }

  // The pool cannot go on: unless the executor was closed first (then it just ends), the reason
  // is kept for every later submit() and start().
  void fail_locked(const std::string& why) {
    if (!closed_ && !failure_) failure_ = why;
    closed_ = true;
  }

  Result cancelled_result(std::uint64_t fn, std::uint64_t order, const std::string& why) const {
    Result r;
    r.function_name = functions_[fn].name;
    r.index = static_cast<std::size_t>(order);
    r.status = Status::cancelled;
    r.error = why;
    return r;
  }

  // Every waiting submission is cancelled; their futures are fulfilled by settle_set_aside(),
  // once the lock is released (their callbacks may call the executor).
  void cancel_queued_locked(const std::string& why);
  void settle_set_aside();

  // detail::FutureOwner: what a Future asks (detail/executor_control.hpp).
  bool cancel(detail::FutureState& s, std::optional<Result>& settle) override;
  bool running(const detail::FutureState& s) override;
  void callback_failed(std::exception_ptr e) noexcept override;
  static void report_lost(std::exception_ptr e) noexcept;
  bool ready_locked(const detail::FutureState& s) const;
  // What the pool's workers do now (processes), asked through the control pipe; nullopt if the
  // pool does not answer (not running, or busy starting workers for seconds).
  std::optional<std::vector<detail::WorkerView>> ask_pool(std::unique_lock<std::mutex>& lock);

  template <class R, class... A, class Item>
  Future<R> submit_item(const Function<R, A...>& fn, const Item& item) {
    if constexpr (sizeof...(A) == 1) {
      return submit(fn, item);
    } else {
      return std::apply([&](const auto&... args) { return submit(fn, args...); }, item);
    }
  }

  void wake() noexcept { wake_.ring(); }
  void drain_wake() noexcept { wake_.drain(); }

  Options options_;
  ExecutorOptions queue_options_;
  std::shared_ptr<detail::FutureLink> link_;  // shared with every Future handed out
  std::vector<Declared> functions_;  // fixed once started
  std::mutex mutex_;
  std::condition_variable space_cv_;      // room in the queue
  std::condition_variable completed_cv_;  // a Result for next_completed(), or the end
  std::condition_variable forked_cv_;     // the pool forked its first workers (or failed)
  std::condition_variable report_cv_;     // the pool reported its workers (or ended)
  bool workers_forked_ = false;
  std::priority_queue<Waiting> waiting_;
  std::size_t withdrawn_waiting_ = 0;  // entries of waiting_ cancelled by Future::cancel(), skipped when pulled
  std::unordered_map<std::uint64_t, Pulled> pulled_;
  std::vector<std::pair<std::shared_ptr<detail::FutureState>, Result>> set_aside_;  // see cancel_queued_locked()
  std::deque<Result> completed_;
  std::uint64_t order_ = 0;
  std::uint64_t pulls_ = 0;
  std::uint64_t feed_base_ = 0;  // pulls_ when the backend's current run began: its seq 0
  std::size_t submitted_ = 0;
  std::size_t taken_ = 0;
  bool started_ = false;
  bool closed_ = false;
  bool draining_inline_ = false;
  bool pool_running_ = false;  // the pool's thread runs the backend
  std::thread::id pool_thread_;  // runner_'s, kept apart from it (join() changes runner_)
  std::vector<std::uint64_t> cancel_requests_;  // pulls_ numbers of running tasks to stop (processes)
  bool report_wanted_ = false;
  std::uint64_t report_count_ = 0;  // reports the pool gave
  std::vector<detail::WorkerView> report_;
  std::optional<std::string> failure_;
  std::exception_ptr producer_error_;
  std::exception_ptr callback_error_;  // the first a done callback threw in another thread
  detail::WakePipe wake_;     // rung by submit(), close() and shutdown(): the pool's feed has news
  detail::WakePipe control_;  // rung by Future::cancel(), running() and status(): requests for the pool (processes)
  detail::CancelState cancel_state_;
  std::thread runner_;
  detail::KeptWorker inline_worker_{options_};  // Backend::inline_: one worker from the first submit() to shutdown
};

}  // namespace pfp

#include <pfp/detail/executor_control.hpp>  // IWYU pragma: export

#endif  // PFP_EXECUTOR_HPP
