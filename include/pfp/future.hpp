#ifndef PFP_FUTURE_HPP
#define PFP_FUTURE_HPP

// pfp::Future: the outcome of a task submitted to an Executor, and waiting on sets of them
// (wait_any, wait_all, as_completed), like concurrent.futures.

#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>
#include <pfp/result.hpp>
#include <pfp/value.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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
// waits on any set of futures, whichever executors they came from. Never destroyed: a worker
// forked while a thread waited here inherits a condition variable that counts that waiter, and a
// function that calls exit() there would block for good in its destructor.
struct FutureHub {
  std::mutex mutex;
  std::condition_variable done;
  static FutureHub& instance() {
    static FutureHub* const hub = new FutureHub;
    return *hub;
  }
};

struct FutureState;

// What a Future asks of the executor it came from (implemented by Executor).
class FutureOwner {
 public:
  // True if the task will end cancelled; `settle` gets the verdict when it is known now (the
  // caller fulfils the future with it, outside every lock).
  virtual bool cancel(FutureState& s, std::optional<Result>& settle) = 0;
  virtual bool running(const FutureState& s) = 0;
  virtual void callback_failed(std::exception_ptr e) noexcept = 0;

 protected:
  ~FutureOwner() = default;
};

// Shared by an executor and its futures, which may outlive it: calls reach the executor only
// while it exists (the executor clears `owner`, under an exclusive lock, once it has shut down;
// calls hold a shared one, so they never wait for each other).
struct FutureLink {
  std::shared_mutex mutex;
  FutureOwner* owner = nullptr;
};

struct FutureState {
  static constexpr std::uint64_t not_pulled = ~std::uint64_t{0};
  std::optional<Result> result;                  // guarded by FutureHub::mutex
  std::vector<std::function<void()>> callbacks;  // guarded by FutureHub::mutex; run once result is set
  std::shared_ptr<FutureLink> link;              // set before the Future is handed out
  // Set before the Future is handed out, then guarded by the executor's mutex:
  bool submitted = false;  // a submission of the executor's own (not a then() future)
  bool withdrawn = false;  // cancelled while it waited in the executor: never pulled
  std::uint64_t fn = 0;
  std::uint64_t order = 0;                       // the submission's number
  std::uint64_t pulled_as = not_pulled;          // the executor's count of pulls when it was pulled
};

// What a callback threw goes to the executor the future came from (which keeps it for
// shutdown()), or to stderr once that executor is gone.
inline void callback_failed(const FutureState& state, std::exception_ptr e) noexcept {
  if (state.link) {
    std::shared_lock<std::shared_mutex> lock(state.link->mutex);
    if (state.link->owner) {
      state.link->owner->callback_failed(e);
      return;
    }
  }
  try {
    std::rethrow_exception(e);
  } catch (...) {
    const std::string msg = "pfp: a future's done callback threw after its executor was gone: " + describe_current_exception() + "\n";
    [[maybe_unused]] bool ignored = write_all(2, msg.data(), msg.size());
  }
}

// Sets the verdict, wakes every waiter, then runs the callbacks in this thread (outside every
// lock of pfp's: a callback may submit, or add callbacks).
inline void fulfil(FutureState& state, Result&& r) {
  FutureHub& hub = FutureHub::instance();
  std::vector<std::function<void()>> callbacks;
  {
    std::lock_guard<std::mutex> lock(hub.mutex);
    state.result = std::move(r);
    callbacks.swap(state.callbacks);
  }
  hub.done.notify_all();
  for (auto& callback : callbacks) {
    try {
      callback();
    } catch (...) {
      callback_failed(state, std::current_exception());
    }
  }
}

// Runs `callback` once `state` has its verdict: now, in this thread (what it throws goes to the
// caller), or later in the thread that fulfils it.
inline void when_done(FutureState& state, std::function<void()> callback) {
  {
    std::lock_guard<std::mutex> lock(FutureHub::instance().mutex);
    if (!state.result) {
      state.callbacks.push_back(std::move(callback));
      return;
    }
  }
  callback();
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

  /// Cancels this one task. One that has not begun never runs: its Result is Status::cancelled
  /// ("cancelled before it started") at once, or, with Backend::processes when a worker held it
  /// already, within a turn of the pool. With Backend::processes one that runs is killed with its
  /// worker and everything it started, Status::cancelled. Returns true when the task ends so (a
  /// running one may still finish first: see result()); false when it has a verdict already, is
  /// running on the threads or inline backend (a thread cannot be stopped), or came from then().
  /// Thread-safe.
  bool cancel() const {
    check();
    if (!state_->link) return false;
    std::optional<Result> settle;
    bool taken = false;
    {
      std::shared_lock<std::shared_mutex> lock(state_->link->mutex);
      taken = state_->link->owner && state_->link->owner->cancel(*state_, settle);
    }
    if (settle) detail::fulfil(*state_, std::move(*settle));
    return taken;
  }

  /// True while the task runs: it has begun and has no verdict yet. With Backend::processes
  /// this asks the pool's thread (a round trip of a few microseconds when it is idle).
  bool running() const {
    check();
    if (!state_->link) return false;
    std::shared_lock<std::shared_mutex> lock(state_->link->mutex);
    return state_->link->owner && state_->link->owner->running(*state_);
  }

  /// Calls f(future) (f takes a const Future<T>&) once the task has its verdict, whatever it is.
  /// Where f runs: at once in this thread if the verdict is there (what f throws then goes to the
  /// caller); else in the thread that gives the verdict -- the pool's thread (processes), the
  /// thread that ran the task (threads), the thread that submitted it (inline), or the thread
  /// that cancelled it (cancel(), shutdown(true)). What f throws there is never lost: the
  /// Executor keeps the first such exception and shutdown() rethrows it (its destructor, which
  /// cannot throw, writes it to stderr). f must be quick and must not wait for the executor (a
  /// submit() into a full queue, get() of a future that is not ready): the pool waits for f.
  template <class F>
  void add_done_callback(F f) const {
    check();
    detail::when_done(*state_, [self = *this, f = std::move(f)]() mutable { f(self); });
  }

  /// A Future of what f(future) returns (f takes a const Future<T>&; its return type U must
  /// convert to pfp::Value, or be void), completed when f has run, where add_done_callback()'s
  /// f would. What f throws is that Future's Result (Status::exception, "<type>: what()"):
  /// never lost. The Result keeps this task's function_name and index.
  template <class F>
  auto then(F f) const {
    check();
    using U = std::invoke_result_t<F&, const Future<T>&>;
    auto next = std::make_shared<detail::FutureState>();
    next->link = state_->link;
    detail::when_done(*state_, [self = *this, next, f = std::move(f)]() mutable {
      Result r;
      r.function_name = self.state_->result->function_name;
      r.index = self.state_->result->index;
      try {
        if constexpr (std::is_void_v<U>) {
          f(self);
        } else {
          r.result = Value(f(self));
        }
        r.status = Status::ok;
      } catch (...) {
        r.status = Status::exception;
        r.result = Value();
        r.error = detail::describe_current_exception();
      }
      detail::fulfil(*next, std::move(r));
    });
    return Future<U>(std::move(next));
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

#endif  // PFP_FUTURE_HPP
