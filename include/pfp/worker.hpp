#ifndef PFP_WORKER_HPP
#define PFP_WORKER_HPP

// Per-worker set-up and tear-down (Options::initializer, Options::finalizer), the worker's own
// typed state (pfp::worker_state<State>()) and who the worker is (pfp::this_worker()).
//
// A worker is one slot of a run's pool: a worker process (Backend::processes), a thread
// (Backend::threads) or the calling thread (Backend::inline_). Its initializer runs in it once
// before its first function; its finalizer once when it leaves normally (the run or the Executor
// ends, or it is replaced after Options::max_tasks_per_worker), then its state is destroyed.

#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace pfp {

/// Who a worker is: given to Options::initializer and Options::finalizer, and to every function
/// through pfp::this_worker().
struct WorkerInfo {
  /// The worker's slot, 0 .. workers-1. Stable: a worker that replaces one (after
  /// Options::max_tasks_per_worker, a crash or a timeout) takes the number of the one it replaces.
  unsigned number = 0;
  /// How many slots the run has (Options::workers, or fewer when there are fewer tasks; 1 inline).
  unsigned workers = 1;
  /// How many workers held this number before in this run (0 for the first): with number, it
  /// tells replacements apart, e.g. std::seed_seq{base, number, generation} for a random engine.
  unsigned generation = 0;
};

namespace detail {

// A distinct address per type, with or without RTTI-based comparison across libraries.
template <class T>
struct state_tag {
  static constexpr char id = 0;
};

template <class T>
std::string state_type_name() {
  return demangle(typeid(T).name());
}

// What the initializer's return value keeps: the State itself, or what a smart pointer owns.
template <class R>
struct state_of {
  using type = R;
};
template <class T, class D>
struct state_of<std::unique_ptr<T, D>> {
  using type = T;
};
template <class T>
struct state_of<std::shared_ptr<T>> {
  using type = T;
};

/// The worker the calling thread is, while pfp runs one in it (null otherwise).
struct CurrentWorker {
  WorkerInfo info;
  std::shared_ptr<void> state;     // what the initializer returned (null: nothing, or not yet)
  const void* state_type = nullptr;
  std::string (*state_name)() = nullptr;
  bool has_initializer = false;
  bool initialized = false;
};
inline thread_local CurrentWorker* current_worker = nullptr;

}  // namespace detail

/// Options::initializer: a callable run once in each worker before its first function, as
///   void  f(const pfp::WorkerInfo&)        -- set-up only (seed a generator, set up a logger), or
///   State f(const pfp::WorkerInfo&)        -- the worker's state (a database connection, ...),
/// where State may also come as std::unique_ptr<State> or std::shared_ptr<State> (for a State that
/// cannot be moved). The state lives until the worker leaves, after the finalizer, and functions
/// reach it with pfp::worker_state<State>(). What the initializer throws (or a crash in it) fails
/// that worker's start; see Options::initializer.
class WorkerInitializer {
 public:
  WorkerInitializer() = default;
  WorkerInitializer(std::nullptr_t) noexcept {}  // NOLINT: none, as with std::function

  template <class F, std::enable_if_t<!std::is_same_v<std::decay_t<F>, WorkerInitializer> &&
                                          !std::is_same_v<std::decay_t<F>, std::nullptr_t>,
                                      int> = 0>
  WorkerInitializer(F f) {  // NOLINT: implicit, so that `options.initializer = [](...) {...};` reads naturally
    using Fn = std::decay_t<F>;
    static_assert(std::is_invocable_v<const Fn&, const WorkerInfo&>,
                  "pfp::Options::initializer takes a callable f(const pfp::WorkerInfo&) that returns nothing or the "
                  "worker's state");
    if constexpr (std::is_invocable_v<const Fn&, const WorkerInfo&>) {
      if constexpr (std::is_pointer_v<Fn> || std::is_member_pointer_v<Fn>) {
        if (!f) return;
      }
      using R = std::invoke_result_t<const Fn&, const WorkerInfo&>;
      if constexpr (std::is_void_v<R>) {
        make_ = [f = std::move(f)](const WorkerInfo& w) -> std::shared_ptr<void> {
          std::invoke(f, w);
          return nullptr;
        };
      } else {
        using Returned = std::decay_t<R>;
        using State = typename detail::state_of<Returned>::type;
        state_type_ = &detail::state_tag<State>::id;
        state_name_ = &detail::state_type_name<State>;
        make_ = [f = std::move(f)](const WorkerInfo& w) -> std::shared_ptr<void> {
          if constexpr (std::is_same_v<State, Returned>) {
            return std::make_shared<State>(std::invoke(f, w));
          } else {
            std::shared_ptr<State> p(std::invoke(f, w));
            if (!p)
              throw error("pfp::Options::initializer returned a null pointer to " + detail::state_type_name<State>() +
                          "; return the state, or throw to fail the worker's start");
            return p;
          }
        };
      }
    }
  }

  /// Whether there is an initializer.
  explicit operator bool() const noexcept { return static_cast<bool>(make_); }

  /// Runs it for the worker `w`: its state (null if it returns nothing). Throws what it throws.
  std::shared_ptr<void> operator()(const WorkerInfo& w) const { return make_(w); }
  const void* state_type() const noexcept { return state_type_; }
  std::string (*state_name() const noexcept)() { return state_name_; }

 private:
  std::function<std::shared_ptr<void>(const WorkerInfo&)> make_;
  const void* state_type_ = nullptr;
  std::string (*state_name_)() = nullptr;
};

/// Options::finalizer: run once in each worker when it leaves normally, before its state (see
/// WorkerInitializer) is destroyed, so it may still use pfp::worker_state<State>().
using WorkerFinalizer = std::function<void(const WorkerInfo&)>;

namespace detail {
[[noreturn]] PFP_DETAIL_COLD inline void worker_state_refused(const CurrentWorker* w, const std::string& asked_type) {
  const std::string asked = "pfp::worker_state<" + asked_type + ">: ";
  if (!w)
    throw error(asked + "called outside a pfp worker; call it from a function or finalizer that pfp runs, in the "
                        "thread that pfp runs it in");
  if (!w->state_type)
    throw error(asked + (w->has_initializer ? "this worker's Options::initializer returns nothing; return the state from it"
                                            : "no Options::initializer is set; set one that returns the worker's state"));
  if (!w->initialized || !w->state)
    throw error(asked + "the worker's state is not made yet: Options::initializer has not returned");
  throw error(asked + "the worker's state is a " + w->state_name() + "; ask for worker_state<" + w->state_name() + ">()");
}
}  // namespace detail

/// The worker that runs the calling function (or initializer, or finalizer): its number, 0 ..
/// workers-1, for per-worker files or seeds. Throws pfp::error when called outside a worker (in
/// the parent, or in a thread the function started).
inline const WorkerInfo& this_worker() {
  const detail::CurrentWorker* w = detail::current_worker;
  if (!w)
    throw error("pfp::this_worker: called outside a pfp worker; call it from a function, initializer or finalizer "
                "that pfp runs, in the thread that pfp runs it in");
  return w->info;
}

/// The state this worker's Options::initializer returned, as a State&: valid in the worker's
/// functions and its finalizer, until the worker leaves. State is the type the initializer
/// returned (or that its smart pointer owns), optionally const.
/// Throws pfp::error, saying what to fix, outside a worker, when no initializer returned a state,
/// before it has returned (in the initializer itself), or when State is not the state's type.
template <class State>
State& worker_state() {
  using Plain = std::remove_cv_t<std::remove_reference_t<State>>;
  const detail::CurrentWorker* w = detail::current_worker;
  if (!w || !w->initialized || !w->state || w->state_type != &detail::state_tag<Plain>::id)
    detail::worker_state_refused(w, detail::state_type_name<Plain>());
  return *static_cast<Plain*>(w->state.get());
}

}  // namespace pfp

#endif  // PFP_WORKER_HPP
