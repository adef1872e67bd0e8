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

/// Thrown by Future::get() (and pfp::map()) when a task did not return normally. Carries the
/// task's full Result: status, error text, pid, duration, attempts.
class task_error : public error {
 public:
  explicit task_error(Result r) : error(describe(r)), result_(std::move(r)) {}
  const Result& result() const noexcept { return result_; }

 private:
  static std::string describe(const Result& r) {
    return "pfp: task " + (r.function_name.empty() ? std::to_string(r.index) : r.function_name) + " " +
           std::string(to_string(r.status)) + ": " + r.error;
  }
  Result result_;
};

template <class T>
class Future;
class Executor;

namespace detail {
struct FutureAccess;

// One mutex and condition variable for every future in the process: a completion wakes whoever
// waits on any set of futures, whichever executors they came from.
struct FutureHub {
  std::mutex mutex;
  std::condition_variable done;
  static FutureHub& instance() {
    static FutureHub hub;
    return hub;
  }
};

struct FutureState {
  std::optional<Result> result;  // guarded by FutureHub::mutex
};

inline void fulfil(FutureState& state, Result&& r) {
  FutureHub& hub = FutureHub::instance();
  {
    std::lock_guard<std::mutex> lock(hub.mutex);
    state.result = std::move(r);
  }
  hub.done.notify_all();
}

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

/// The outcome of a submitted task, available once it completes. Copies share the same outcome.
/// T is what get() returns: the function's return type (pfp::Value for untyped functions).
template <class T = Value>
class Future {
 public:
  Future() = default;

  /// False for a default-constructed Future.
  bool valid() const noexcept { return state_ != nullptr; }

  /// True once the task has a verdict (whatever it is). Never blocks.
  bool ready() const {
    check();
    std::lock_guard<std::mutex> lock(detail::FutureHub::instance().mutex);
    return state_->result.has_value();
  }

  /// Blocks until the task has a verdict.
  void wait() const {
    check();
    detail::FutureHub& hub = detail::FutureHub::instance();
    std::unique_lock<std::mutex> lock(hub.mutex);
    hub.done.wait(lock, [&] { return state_->result.has_value(); });
  }

  /// Blocks until the task has a verdict or `timeout` passes. Returns ready().
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    check();
    detail::FutureHub& hub = detail::FutureHub::instance();
    std::unique_lock<std::mutex> lock(hub.mutex);
    return hub.done.wait_for(lock, timeout, [&] { return state_->result.has_value(); });
  }

  /// Waits, then returns the task's full Result (whatever its status).
  const Result& result() const {
    wait();
    return *state_->result;  // never changes once set
  }

  /// Waits, then returns what the function returned, converted to T. Throws pfp::task_error
  /// (carrying the Result) if the task threw, crashed, timed out or was cancelled, and
  /// pfp::error if the value does not convert to T.
  T get() const {
    const Result& r = result();
    if (!r.ok()) throw task_error(r);
    if constexpr (std::is_void_v<T>) {
      return;
    } else {
      return r.result.template as<T>();
    }
  }

 private:
  template <class>
  friend class Future;
  friend class Executor;
  friend struct detail::FutureAccess;
  explicit Future(std::shared_ptr<detail::FutureState> s) : state_(std::move(s)) {}
  void check() const {
    if (!state_) throw error("pfp::Future: this future is empty (default-constructed); use one returned by submit()");
  }
  std::shared_ptr<detail::FutureState> state_;

 public:
  /// A Future of another type over the same outcome (e.g. to mix them in one wait_any()).
  template <class U>
  Future<U> as() const {
    return Future<U>(state_);
  }
};

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
    if (options_.timeout.count() < 0) throw error("pfp::Executor: Options::timeout is negative; use 0 for no limit");
    if (options_.max_result_bytes == 0) throw error("pfp::Executor: Options::max_result_bytes is 0; every result would be refused");
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
  }

  /// Stops everything now: queued tasks are cancelled, running ones killed (processes) with their
  /// process groups, all as Status::cancelled. Async-signal-unsafe; thread-safe.
  void cancel() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cancel_queued_locked("cancelled before it started");
    }
    cancel_state_.request();
    close();
  }

  const Options& options() const noexcept { return options_; }

 private:
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
    void drop_rest(const std::string& why) override {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
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
    wake_.open();
    if (detail::runs_in_caller(options_)) return;  // runs in submit()
    cancel_state_.open();
    runner_ = std::thread([this] { run_pool(); });
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
      failure_ = why;
      closed_ = true;
      cancel_queued_locked("not run: the pool failed: " + why);
    }
    cancel_state_.close();
    completed_cv_.notify_all();
    space_cv_.notify_all();
    forked_cv_.notify_all();
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
    detail::run_feed(task_runner(), options_, feed, nullptr);
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
};

namespace detail {
struct FutureAccess {
  template <class T>
  static const FutureState* state(const Future<T>& f) {
    if (!f.state_) throw error("pfp: an empty (default-constructed) future was given; use ones returned by submit()");
    return f.state_.get();
  }
};

// Under the hub lock: the first position in `states` that is ready and not yet taken, waiting
// until `deadline` (if any).
inline std::optional<std::size_t> wait_first_ready(const std::vector<const FutureState*>& states, const std::vector<bool>* taken,
                                                   std::optional<std::chrono::steady_clock::time_point> deadline) {
  FutureHub& hub = FutureHub::instance();
  std::unique_lock<std::mutex> lock(hub.mutex);
  std::optional<std::size_t> found;
  auto scan = [&] {
    for (std::size_t i = 0; i < states.size(); ++i)
      if ((!taken || !(*taken)[i]) && states[i]->result) return (found = i).has_value();
    return false;
  };
  if (deadline)
    hub.done.wait_until(lock, *deadline, scan);
  else
    hub.done.wait(lock, scan);
  return found;
}

template <class T>
std::vector<const FutureState*> states_of(const std::vector<Future<T>>& futures) {
  std::vector<const FutureState*> states;
  states.reserve(futures.size());
  for (const auto& f : futures) states.push_back(FutureAccess::state(f));
  return states;
}

inline std::optional<std::chrono::steady_clock::time_point> deadline_after(std::optional<std::chrono::milliseconds> timeout) {
  if (!timeout) return std::nullopt;
  return std::chrono::steady_clock::now() + *timeout;
}
}  // namespace detail

/// Blocks until one of `futures` is ready and returns its position; std::nullopt if `futures` is
/// empty or `timeout` (if given) passes first. Throws pfp::error if a future is empty.
template <class T>
std::optional<std::size_t> wait_any(const std::vector<Future<T>>& futures,
                                    std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  if (futures.empty()) return std::nullopt;
  return detail::wait_first_ready(detail::states_of(futures), nullptr, detail::deadline_after(timeout));
}

/// Blocks until every one of `futures` is ready. Returns false if `timeout` (if given) passed
/// first. Throws pfp::error if a future is empty.
template <class T>
bool wait_all(const std::vector<Future<T>>& futures, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  std::vector<const detail::FutureState*> states = detail::states_of(futures);
  detail::FutureHub& hub = detail::FutureHub::instance();
  std::unique_lock<std::mutex> lock(hub.mutex);
  auto all = [&] {
    for (const auto* s : states)
      if (!s->result) return false;
    return true;
  };
  if (!timeout) {
    hub.done.wait(lock, all);
    return true;
  }
  return hub.done.wait_for(lock, *timeout, all);
}

/// The futures in the order they complete, as a range: `for (auto& f : pfp::as_completed(fs))`.
/// Each step blocks until the next one is ready; with a timeout, a step that waits past the
/// deadline (counted from the call) throws pfp::error, like concurrent.futures.as_completed.
template <class T>
class AsCompleted {
 public:
  AsCompleted(std::vector<Future<T>> futures, std::optional<std::chrono::milliseconds> timeout)
      : futures_(std::move(futures)),
        states_(detail::states_of(futures_)),
        taken_(futures_.size(), false),
        deadline_(detail::deadline_after(timeout)) {}

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Future<T>;
    using difference_type = std::ptrdiff_t;
    using pointer = Future<T>*;
    using reference = Future<T>&;
    reference operator*() const { return owner_->futures_[at_]; }
    pointer operator->() const { return &owner_->futures_[at_]; }
    iterator& operator++() {
      at_ = owner_->next();
      return *this;
    }
    bool operator==(const iterator& o) const { return at_ == o.at_; }
    bool operator!=(const iterator& o) const { return at_ != o.at_; }

   private:
    friend class AsCompleted;
    iterator(AsCompleted* owner, std::size_t at) : owner_(owner), at_(at) {}
    AsCompleted* owner_;
    std::size_t at_;
  };

  iterator begin() { return iterator(this, next()); }
  iterator end() { return iterator(this, futures_.size()); }

 private:
  std::size_t next() {
    if (yielded_ == futures_.size()) return futures_.size();
    std::optional<std::size_t> i = detail::wait_first_ready(states_, &taken_, deadline_);
    if (!i)
      throw error("pfp::as_completed: the timeout passed with " + std::to_string(futures_.size() - yielded_) + " of " +
                  std::to_string(futures_.size()) + " futures not ready");
    taken_[*i] = true;
    ++yielded_;
    return *i;
  }
  std::vector<Future<T>> futures_;
  std::vector<const detail::FutureState*> states_;
  std::vector<bool> taken_;
  std::size_t yielded_ = 0;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
};

/// Iterates `futures` in completion order (see AsCompleted).
template <class T>
AsCompleted<T> as_completed(std::vector<Future<T>> futures, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  return AsCompleted<T>(std::move(futures), timeout);
}

}  // namespace pfp

#endif  // PFP_EXECUTOR_HPP
