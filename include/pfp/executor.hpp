#ifndef PFP_EXECUTOR_HPP
#define PFP_EXECUTOR_HPP

// pfp::Executor: a pool that keeps running while you submit work to it, like Python's
// concurrent.futures executors. Functions are declared before the pool starts (the workers are
// forked then and inherit them); each submit() serializes its arguments, returns a Future, and may
// carry a priority. Futures wait, time out, and hand back the full Result on failure;
// as_completed(), wait_any() and wait_all() work over sets of them; next_completed() streams
// Results to a consumer while a producer is still submitting, with a bounded queue between them.

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

namespace detail {

// The parameter and return types of a callable with exactly one operator() (not a generic lambda).
template <class T, class = void>
struct has_single_call_operator : std::false_type {};
template <class T>
struct has_single_call_operator<T, std::void_t<decltype(&T::operator())>> : std::true_type {};

template <class T, class = void>
struct callable_traits {
  static constexpr bool known = false;
};
template <class R, class... A>
struct callable_traits<R (*)(A...), void> {
  static constexpr bool known = true;
  using result = R;
  using args = std::tuple<std::decay_t<A>...>;
};
template <class R, class... A>
struct callable_traits<R(A...), void> : callable_traits<R (*)(A...)> {};
template <class C, class R, class... A>
struct callable_traits<R (C::*)(A...) const, void> : callable_traits<R (*)(A...)> {};
template <class C, class R, class... A>
struct callable_traits<R (C::*)(A...), void> : callable_traits<R (*)(A...)> {};
template <class T>
struct callable_traits<T, std::enable_if_t<std::is_class_v<T> && has_single_call_operator<T>::value>>
    : callable_traits<decltype(&T::operator())> {};

// Calls f with the elements of the Value array `args`, each read as the parameter's type.
template <class R, class Tuple, class F, std::size_t... I>
Value call_with_value_args(F& f, const Value& args, std::index_sequence<I...>) {
  if (args.size() != sizeof...(I))
    throw error("pfp: the task got " + std::to_string(args.size()) + " arguments; its function takes " +
                std::to_string(sizeof...(I)));
  if constexpr (std::is_void_v<R>) {
    f(args.at(I).template as<std::tuple_element_t<I, Tuple>>()...);
    return Value();
  } else {
    return Value(f(args.at(I).template as<std::tuple_element_t<I, Tuple>>()...));
  }
}

}  // namespace detail

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
class Executor {
 public:
  /// Throws pfp::error if options are invalid.
  explicit Executor(Options options = Options{}, ExecutorOptions queue = ExecutorOptions{})
      : options_(options), queue_options_(queue) {
    detail::validate(options_);
    options_.threads = ThreadPolicy::allow;  // the pool's own thread is the one that forks
  }

  ~Executor() {
    try {
      shutdown();
    } catch (...) {
    }
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
    static_assert(sizeof...(A) == sizeof...(Given), "pfp::Executor::submit: wrong number of arguments for this function");
    Value packed = Value::array();
    (packed.push_back(pack_argument<A>(std::forward<Given>(args))), ...);
    return Future<R>(enqueue(fn.id, priority, encode(packed)));
  }

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
  /// once every worker has been reaped. Idempotent.
  void shutdown(bool cancel_pending = false) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cancel_pending) cancel_queued_locked("cancelled before it started: the executor was shut down");
    }
    close();
    if (runner_.joinable()) runner_.join();
    inline_worker_.end();  // Backend::inline_: its finalizer (the pool's workers ran theirs)
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

  // The Feed the backend pulls from: every call comes from the backend's thread.
  class QueueFeed final : public detail::Feed {
   public:
    // Each run of a backend numbers its tasks from 0; the executor's count goes on across runs
    // (the inline backend runs once per submit()).
    explicit QueueFeed(Executor& ex) : ex_(ex) {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      base_ = ex_.pulls_;
    }
    std::optional<detail::Task> pull() override {
      ex_.drain_wake();
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      if (ex_.waiting_.empty()) return std::nullopt;
      Waiting w = ex_.waiting_.top();
      ex_.waiting_.pop();
      ex_.pulled_.emplace(ex_.pulls_++, Pulled{w.fn, std::move(w.state), w.order});
      if (!ex_.queue_options_.stream_results) ex_.space_cv_.notify_all();
      return detail::Task{w.fn, std::move(*w.payload), w.priority};
    }
    std::optional<int> next_priority() override {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      if (ex_.waiting_.empty()) return std::nullopt;
      return ex_.waiting_.top().priority;
    }
    bool finished() override {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      return ex_.waiting_.empty() && (ex_.closed_ || ex_.draining_inline_);
    }
    int wake_fd() const override { return ex_.wake_.read_fd(); }
    std::uint64_t signature() const override { return ex_.signature(); }
    void workers_started() override {
      {
        std::lock_guard<std::mutex> lock(ex_.mutex_);
        ex_.workers_forked_ = true;
      }
      ex_.forked_cv_.notify_all();
    }
    void deliver(std::uint64_t seq, Result&& r) override {
      std::shared_ptr<detail::FutureState> state;
      {
        std::lock_guard<std::mutex> lock(ex_.mutex_);
        auto it = ex_.pulled_.find(base_ + seq);
        state = std::move(it->second.state);
        r.function_name = ex_.functions_[it->second.fn].name;
        r.index = static_cast<std::size_t>(it->second.order);
        ex_.pulled_.erase(it);
      }
      if (!ex_.queue_options_.stream_results) ex_.space_cv_.notify_all();
      ex_.complete(*state, std::move(r));
    }
    // The backend stops pulling for good (cancelled, or it cannot start a worker): what waits is
    // cancelled, and an executor nobody closed has failed, so later submissions are refused.
    void drop_rest(const std::string& why) override {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      ex_.fail_locked(why);
      ex_.cancel_queued_locked(why);
    }

   private:
    Executor& ex_;
    std::uint64_t base_ = 0;
  };

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
      cancel_state_.open();
      runner_ = std::thread([this] { run_pool(); });
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

  void run_pool() {
    QueueFeed feed(*this);
    try {
      detail::run_feed(task_runner(), options_, feed, &cancel_state_);
    } catch (...) {
      const std::string why = detail::describe_current_exception();
      std::lock_guard<std::mutex> lock(mutex_);
      failure_ = why;  // what the backend threw says most (over what its drop_rest() said)
      closed_ = true;
      cancel_queued_locked("not run: the pool failed: " + why);
    }
    {
      // However the backend ended, nothing may wait for it now.
      std::lock_guard<std::mutex> lock(mutex_);
      fail_locked("the pool ended");
      cancel_queued_locked("not run: the pool has ended");
    }
    cancel_state_.close();
    completed_cv_.notify_all();
    space_cv_.notify_all();
    forked_cv_.notify_all();
  }

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

  std::shared_ptr<detail::FutureState> enqueue(std::uint64_t fn, int priority, std::string payload) {
    auto state = std::make_shared<detail::FutureState>();
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
      waiting_.push(Waiting{priority, order_++, fn, std::make_shared<std::string>(std::move(payload)), state});
    }
    if (detail::runs_in_caller(options_)) {
      run_inline_now();
    } else {
      wake();
    }
    return state;
  }

  // Inline backend: the caller runs what is queued, now.
  void run_inline_now() {
    QueueFeed feed(*this);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      draining_inline_ = true;
    }
    struct Done {
      Executor& ex;
      ~Done() {
        std::lock_guard<std::mutex> lock(ex.mutex_);
        ex.draining_inline_ = false;
      }
    } done{*this};
    detail::run_feed(task_runner(), options_, feed, nullptr, &inline_worker_);
  }

  std::size_t outstanding_locked() const {
    if (queue_options_.stream_results) return submitted_ - taken_;
    // Pulled by the pool: at most one per worker runs, the rest wait in the workers' queues.
    const std::size_t running = std::min(pulled_.size(), static_cast<std::size_t>(detail::effective_workers(options_)));
    return waiting_.size() + pulled_.size() - running;
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

  void cancel_queued_locked(const std::string& why) {
    while (!waiting_.empty()) {
      Waiting w = waiting_.top();
      waiting_.pop();
      Result r;
      r.function_name = functions_[w.fn].name;
      r.index = static_cast<std::size_t>(w.order);
      r.status = Status::cancelled;
      r.error = why;
      if (queue_options_.stream_results) {
        completed_.push_back(r);
        completed_cv_.notify_all();
      }
      detail::fulfil(*w.state, std::move(r));
    }
    space_cv_.notify_all();
  }

  void wake() noexcept { wake_.ring(); }
  void drain_wake() noexcept { wake_.drain(); }

  Options options_;
  ExecutorOptions queue_options_;
  std::vector<Declared> functions_;  // fixed once started
  std::mutex mutex_;
  std::condition_variable space_cv_;      // room in the queue
  std::condition_variable completed_cv_;  // a Result for next_completed(), or the end
  std::condition_variable forked_cv_;     // the pool forked its first workers (or failed)
  bool workers_forked_ = false;
  std::priority_queue<Waiting> waiting_;
  std::unordered_map<std::uint64_t, Pulled> pulled_;
  std::deque<Result> completed_;
  std::uint64_t order_ = 0;
  std::uint64_t pulls_ = 0;
  std::size_t submitted_ = 0;
  std::size_t taken_ = 0;
  bool started_ = false;
  bool closed_ = false;
  bool draining_inline_ = false;
  std::optional<std::string> failure_;
  std::exception_ptr producer_error_;
  detail::WakePipe wake_;  // rung by submit(), close() and shutdown(): the pool's feed has news
  detail::CancelState cancel_state_;
  std::thread runner_;
  detail::KeptWorker inline_worker_{options_};  // Backend::inline_: one worker from the first submit() to shutdown
};

}  // namespace pfp

#endif  // PFP_EXECUTOR_HPP
