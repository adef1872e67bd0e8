#ifndef PFP_MULTIPROCESSOR_HPP
#define PFP_MULTIPROCESSOR_HPP

#include <pfp/error.hpp>
#include <pfp/options.hpp>
#include <pfp/detail/run_feed.hpp>
#include <pfp/detail/list_feed.hpp>
#include <pfp/result.hpp>
#include <pfp/value.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pfp {

namespace detail {

// What a registered function becomes: a move-only std::function<void(const Context&, Result&)>
// that keeps callables of up to inline_size bytes in place, so registering costs no allocation
// (a registration is a callable plus its args, and a MultiProcessor may hold millions).
template <class Context>
class TaskCallable {
 public:
  static constexpr std::size_t inline_size = 80;

  TaskCallable() noexcept = default;
  template <class F, std::enable_if_t<!std::is_same_v<std::decay_t<F>, TaskCallable>, int> = 0>
  explicit TaskCallable(F&& f) : TaskCallable(std::in_place_type<std::decay_t<F>>, std::forward<F>(f)) {}
  /// Makes a T from a... in place.
  template <class T, class... A>
  explicit TaskCallable(std::in_place_type_t<T>, A&&... a) {
    if constexpr (sizeof(T) <= inline_size && alignof(T) <= alignof(std::max_align_t) &&
                  std::is_nothrow_move_constructible_v<T>) {
      ::new (static_cast<void*>(storage_)) T{std::forward<A>(a)...};
      ops_ = &inline_ops<T>;
    } else {
      *reinterpret_cast<T**>(storage_) = new T{std::forward<A>(a)...};
      ops_ = &heap_ops<T>;
    }
  }
  TaskCallable(TaskCallable&& other) noexcept : ops_(std::exchange(other.ops_, nullptr)) {
    if (ops_) ops_->relocate(other.storage_, storage_);
  }
  TaskCallable& operator=(TaskCallable&& other) noexcept {
    if (this != &other) {
      reset();
      ops_ = std::exchange(other.ops_, nullptr);
      if (ops_) ops_->relocate(other.storage_, storage_);
    }
    return *this;
  }
  TaskCallable(const TaskCallable&) = delete;
  TaskCallable& operator=(const TaskCallable&) = delete;
  ~TaskCallable() { reset(); }

  void operator()(const Context& context, Result& r) { ops_->call(storage_, context, r); }

 private:
  struct Ops {
    void (*call)(void* self, const Context& context, Result& r);
    void (*relocate)(void* from, void* to) noexcept;  // moves into `to` and destroys `from`
    void (*destroy)(void* self) noexcept;
  };
  template <class T>
  static inline const Ops inline_ops{
      [](void* self, const Context& c, Result& r) { (*static_cast<T*>(self))(c, r); },
      [](void* from, void* to) noexcept {
        ::new (to) T(std::move(*static_cast<T*>(from)));
        static_cast<T*>(from)->~T();
      },
      [](void* self) noexcept { static_cast<T*>(self)->~T(); }};
  template <class T>
  static inline const Ops heap_ops{
      [](void* self, const Context& c, Result& r) { (**static_cast<T**>(self))(c, r); },
      [](void* from, void* to) noexcept { *static_cast<T**>(to) = *static_cast<T**>(from); },
      [](void* self) noexcept { delete *static_cast<T**>(self); }};

  void reset() noexcept {
    if (ops_) ops_->destroy(storage_);
    ops_ = nullptr;
  }

  const Ops* ops_ = nullptr;  // first: a worker reads it and the callable together
  alignas(std::max_align_t) unsigned char storage_[inline_size];
};

// An append-only sequence whose elements never move: chunks of 16, 16, 32, 64, ... elements, so
// growing costs no relocation of what is already there (a registered function is not cheap to move).
template <class T>
class ChunkedList {
 public:
  ChunkedList() = default;
  ChunkedList(const ChunkedList&) = delete;
  ChunkedList& operator=(const ChunkedList&) = delete;
  ~ChunkedList() {
    for (std::size_t i = size_; i > 0; --i) (*this)[i - 1].~T();
    for (std::size_t k = 0; k < chunks_.size(); ++k) release(chunks_[k], chunk_size(k));
  }

  template <class... A>
  T& emplace_back(A&&... args) {
    const std::size_t k = chunk_of(size_);
    if (k == chunks_.size()) {
      chunks_.reserve(k + 1);
      chunks_.push_back(acquire(chunk_size(k)));
    }
    T* at = chunks_[k] + (size_ - chunk_start(k));
    ::new (static_cast<void*>(at)) T(std::forward<A>(args)...);
    ++size_;
    return *at;
  }
  T& operator[](std::size_t i) noexcept {
    const std::size_t k = chunk_of(i);
    return chunks_[k][i - chunk_start(k)];
  }
  const T& operator[](std::size_t i) const noexcept { return const_cast<ChunkedList&>(*this)[i]; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

 private:
  static constexpr std::size_t first = 16;
  // Chunks of 2 MiB or more are aligned to 2 MiB and advised into huge pages: filling them then
  // costs one page fault per 2 MiB, and forking a copy of one page-table entry.
  static constexpr std::size_t huge = std::size_t{2} << 20;
  static T* acquire(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < huge) return std::allocator<T>().allocate(n);
    void* p = ::operator new(bytes, std::align_val_t{huge});
    advise_huge_pages(p, bytes, huge);
    return static_cast<T*>(p);
  }
  static void release(T* p, std::size_t n) noexcept {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < huge)
      std::allocator<T>().deallocate(p, n);
    else
      ::operator delete(p, std::align_val_t{huge});
  }
  static std::size_t chunk_of(std::size_t i) noexcept {
    const unsigned long long n = i / first;
#if defined(__GNUC__) || defined(__clang__)
    return n ? static_cast<std::size_t>(std::numeric_limits<unsigned long long>::digits - __builtin_clzll(n)) : 0;
#else
    std::size_t k = 0;
    for (unsigned long long m = n; m; m >>= 1) ++k;
    return k;
#endif
  }
  static std::size_t chunk_start(std::size_t k) noexcept { return k == 0 ? 0 : first << (k - 1); }
  static std::size_t chunk_size(std::size_t k) noexcept { return k == 0 ? first : first << (k - 1); }

  std::vector<T*> chunks_;
  std::size_t size_ = 0;
};

template <class T>
struct is_std_function : std::false_type {};
template <class S>
struct is_std_function<std::function<S>> : std::true_type {};

}  // namespace detail

/// Runs registered functions in parallel worker processes and collects one Result per function.
///
/// Workers are forked by execute_parallel(), so they inherit the functions, the context and the
/// arguments as they are at that moment: none of them is ever serialized, and any copyable type
/// works. Only results travel back, as pfp::Value. A MultiProcessor is not thread-safe: use one
/// from one thread at a time.
template <class Context = Value>
class MultiProcessor {
 public:
  /// Throws pfp::error if options are invalid (a negative timeout, a zero result limit).
  explicit MultiProcessor(Context context = Context{}, Options options = Options{})
      : context_(std::move(context)), options_(options), cancel_(std::make_unique<detail::CancelState>()) {
    detail::validate(options_);
  }

  /// Registers f under name with its own args. f is one of
  ///   void f(const Context&, const A&, pfp::Result&)  -- fills r.result (name and index are set)
  ///   R    f(const Context&, const A&)               -- the returned R becomes r.result
  /// where A is any copyable type (pfp::Args by default) and R converts to pfp::Value.
  /// The same function may be registered several times. Returns *this for chaining.
  template <class F, class A = Args>
  MultiProcessor& register_function(std::string name, F f, A args = A{}) {
    using Fn = std::decay_t<F>;
    using Arg = std::decay_t<A>;
    constexpr bool fills_result = std::is_invocable_v<Fn&, const Context&, const Arg&, Result&>;
    constexpr bool returns_value = std::is_invocable_v<Fn&, const Context&, const Arg&>;
    static_assert(fills_result || returns_value,
                  "pfp::MultiProcessor::register_function: f must be callable as "
                  "void f(const Context&, const A&, pfp::Result&) or R f(const Context&, const A&), "
                  "where Context is the MultiProcessor's context type and A the type of args");
    if constexpr (fills_result) {
      tasks_.emplace_back(std::move(name), true, std::in_place_type<FillsResult<Fn, Arg>>, std::move(f), std::move(args));
    } else {
      using R = std::invoke_result_t<Fn&, const Context&, const Arg&>;
      static_assert(std::is_void_v<R> || std::is_constructible_v<Value, R>,
                    "pfp::MultiProcessor::register_function: the function's return type cannot be converted to "
                    "pfp::Value; define void to_value(pfp::Value&, const T&) in the type's namespace");
      tasks_.emplace_back(std::move(name), false, std::in_place_type<ReturnsValue<Fn, Arg>>, std::move(f), std::move(args));
    }
    return *this;
  }

  /// Registers f and args like the three-argument overload, together with a result processor:
  /// process_results(config) calls processor(result, config) in this process after a run, with
  /// f's Result and the caller's config object (the two-phase pattern: gather in parallel, then
  /// process single-threaded). processor is callable as
  ///   void processor(const pfp::Result& result, pfp::Value& config)
  /// (any return value is ignored). Throws pfp::error if processor is an empty std::function or a
  /// null function pointer. Returns *this for chaining.
  template <class F, class A, class P>
  MultiProcessor& register_function(std::string name, F f, A args, P processor) {
    using Proc = std::decay_t<P>;
    static_assert(std::is_invocable_v<Proc&, const Result&, Value&>,
                  "pfp::MultiProcessor::register_function: the result processor (4th argument) must be callable as "
                  "void processor(const pfp::Result& result, pfp::Value& config)");
    if constexpr (std::is_pointer_v<Proc> || detail::is_std_function<Proc>::value) {
      if (!processor)
        throw error("pfp::MultiProcessor::register_function: the result processor of '" + name +
                    "' is empty; pass a callable, or use the three-argument overload for no processor");
    }
    register_function(std::move(name), std::move(f), std::move(args));
    processors_.resize(tasks_.size());
    processors_.back() = [p = Proc(std::move(processor))](const Result& r, Value& config) mutable { p(r, config); };
    return *this;
  }

  /// Phase two of the two-phase pattern: calls each registered result processor, in this process,
  /// one after another in registration order, with its function's Result of the last run and
  /// `config` (typically a pfp::Value object the processors fill with config["key"] = value).
  /// Functions registered without a processor are skipped. A processor runs whatever its
  /// function's status, so it sees failures (check result.ok(), result.status, result.error).
  /// A processor that throws does not stop the others: once all ran, one pfp::error is thrown that
  /// names every processor that threw (function name, index, exception type and what()); what the
  /// processors wrote to config stays there. May be called again (e.g. with another config).
  /// Throws pfp::error without calling any processor when there is no complete last run: before
  /// the first execute_parallel(), during one, or after functions were registered since.
  void process_results(Value& config) {
    if (running_) throw error("pfp::MultiProcessor::process_results: a run is in progress; call it after execute_parallel() returned");
    if (results_.size() != tasks_.size())
      throw error("pfp::MultiProcessor::process_results: " +
                  std::string(results_.empty() && !tasks_.empty() ? "there is no run yet"
                                                                  : "functions were registered after the last run") +
                  "; call execute_parallel() first");
    std::string failures;
    std::size_t failed = 0, ran = 0;
    for (std::size_t i = 0; i < processors_.size(); ++i) {
      if (!processors_[i]) continue;
      ++ran;
      try {
        processors_[i](results_[i], config);
      } catch (...) {
        ++failed;
        failures += (failures.empty() ? "" : "; ") + ("'" + tasks_[i].name + "' (#" + std::to_string(i) + "): ") +
                    detail::describe_current_exception();
      }
    }
    if (failed)
      throw error("pfp::MultiProcessor::process_results: " + std::to_string(failed) + " of " + std::to_string(ran) +
                  " result processors threw: " + failures);
  }

  /// Wall-clock time of the last execute_parallel(), from its start to its return (zero before
  /// the first run): the run's total, next to each Result's own duration.
  std::chrono::nanoseconds last_run_duration() const noexcept { return last_run_duration_; }

  /// Runs every registered function in worker processes and returns one Result per registration,
  /// in registration order, whatever the functions do (return, throw, crash, exit, hang, print).
  /// May be called again; each call runs everything anew. When it returns, every worker has been
  /// reaped and every pipe closed.
  /// Throws pfp::error only if no worker process can be started at all (or if called while a
  /// run of this object is already in progress).
  const std::vector<Result>& execute_parallel() {
    if (running_) throw error("pfp::MultiProcessor::execute_parallel: a run of this object is already in progress");
    running_ = true;
    struct Reset {
      bool& flag;
      ~Reset() { flag = false; }
    } reset{running_};
    const auto run_started = std::chrono::steady_clock::now();

    // Only this process writes the Results during the run: kept out of the workers, they cost
    // no copy-on-write fault per page; in huge pages, fewer faults still.
    std::vector<Result> fresh;
    fresh.reserve(tasks_.size());
    detail::advise_huge_pages(fresh.data(), tasks_.size() * sizeof(Result), std::size_t{4} << 20);
    detail::HiddenFromForks hidden(fresh.data(), tasks_.size() * sizeof(Result));
    detail::FeedRunner runner = [this](const detail::TaskView& task, Result& r) {
      const std::size_t i = static_cast<std::size_t>(task.fn);
      if (i >= tasks_.size()) throw error("pfp: worker was sent function index " + std::to_string(i) + " of " + std::to_string(tasks_.size()));
      if (i + 8 < tasks_.size()) {  // runs go through the functions in order
        const char* ahead = reinterpret_cast<const char*>(&tasks_[i + 8]);
        detail::prefetch(ahead);
        detail::prefetch(ahead + 64);
      }
      if (tasks_[i].fills_result) r.function_name = tasks_[i].name;  // the others never see their Result
      r.index = i;
      tasks_[i].run(context_, r);
    };
    cancel_->open();
    struct CloseCancel {
      detail::CancelState& state;
      ~CloseCancel() { state.close(); }
    } close_cancel{*cancel_};
    auto name_of = [this](std::size_t i) -> const std::string& { return tasks_[i].name; };
    detail::ListFeed<decltype(name_of)> feed(fresh, tasks_.size(), name_of);
    detail::run_feed(runner, options_, feed, cancel_.get());
    hidden.reveal();  // results_ lives on, and a later run's workers may read it
    results_ = std::move(fresh);
    last_run_duration_ = std::chrono::steady_clock::now() - run_started;
    return results_;
  }

  /// Stops the run in progress: functions not yet started end as Status::cancelled, running ones
  /// are killed (with their process groups) and end as Status::cancelled, and execute_parallel()
  /// returns promptly. Thread-safe and async-signal-safe (an atomic store and one write()), so it
  /// may be called from another thread or a signal handler. Without a run in progress it does
  /// nothing: a later run is not affected.
  void cancel() noexcept {
    cancel_->request();
  }

  /// The Results of the last run (empty before the first).
  const std::vector<Result>& results() const noexcept { return results_; }
  const Context& context() const noexcept { return context_; }
  const Options& options() const noexcept { return options_; }
  /// Number of registered functions.
  std::size_t size() const noexcept { return tasks_.size(); }

 private:
  // What a registration keeps: the function and its arguments, made in place in the Task (a
  // registration moves them once).
  template <class Fn, class Arg>
  struct FillsResult {
    Fn f;
    Arg a;
    void operator()(const Context& ctx, Result& r) { f(ctx, a, r); }
  };
  template <class Fn, class Arg>
  struct ReturnsValue {
    Fn f;
    Arg a;
    void operator()(const Context& ctx, Result& r) {
      if constexpr (std::is_void_v<std::invoke_result_t<Fn&, const Context&, const Arg&>>)
        f(ctx, a);
      else
        r.result = Value(f(ctx, a));
    }
  };

  struct Task {
    template <class T, class... A>
    Task(std::string&& n, bool fills, std::in_place_type_t<T> callable, A&&... a)
        : run(callable, std::forward<A>(a)...), fills_result(fills), name(std::move(n)) {}
    // What a worker reads of a Task first, within its first two cache lines.
    detail::TaskCallable<Context> run;
    bool fills_result = false;  // takes the Result itself: it may read its name
    std::string name;
  };

  Context context_;
  Options options_;
  detail::ChunkedList<Task> tasks_;
  std::vector<Result> results_;
  std::vector<std::function<void(const Result&, Value&)>> processors_;  // by function index; empty = none
  std::chrono::nanoseconds last_run_duration_{0};
  std::unique_ptr<detail::CancelState> cancel_;
  bool running_ = false;
};

}  // namespace pfp

#endif  // PFP_MULTIPROCESSOR_HPP
