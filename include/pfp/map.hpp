#ifndef PFP_MAP_HPP
#define PFP_MAP_HPP

// pfp::map and friends: one function applied to every item, in worker processes.
//
//   map / map_results / map_unordered  -- items that exist before the run (containers with
//       random access, several zipped like Python's map(f, a, b)): the workers inherit them by
//       fork, each item is a task of its own, nothing is serialized but the results.
//   imap / imap_unordered              -- a lazy source (an input range, or a callable returning
//       std::optional<T>, of any length, even endless): items are serialized as they are pulled,
//       and at most `max_in_flight` are pulled and not yet handed to you, so memory stays flat.
//
// Every item gets exactly one Result (index = its position in the input). An item that throws is
// Status::exception on its own; a crash or timeout costs its item only (with imap's chunksize > 1,
// the items of its chunk).

#include <pfp/detail/run_feed.hpp>
#include <pfp/detail/list_feed.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/result_handoff.hpp>
#include <pfp/detail/wake_pipe.hpp>
#include <pfp/error.hpp>
#include <pfp/executor.hpp>
#include <pfp/detail/feed.hpp>
#include <pfp/options.hpp>
#include <pfp/result.hpp>
#include <pfp/serialization.hpp>
#include <pfp/value.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

namespace pfp {

/// Options of map() and imap(): the run's Options plus how items are grouped and bounded.
struct MapOptions : Options {
  /// imap(): items serialized and sent as one task (0 or 1: each item on its own). Larger chunks
  /// cost fewer round trips; a crash or timeout then costs the whole chunk, and exceptions are
  /// not retried. map() ignores it: its items are inherited, and each is a task of its own.
  std::size_t chunksize = 1;
  /// imap(): items pulled from the source and not yet handed to on_result; 0 = 64 per worker.
  std::size_t max_in_flight = 0;
};

namespace detail {

// An item's verdict inside a chunk's Value: [status, value or error text, duration in ns].
inline Value item_entry(Status status, Value v, std::chrono::nanoseconds d) {
  Value e = Value::array();
  e.push_back(static_cast<int>(status));
  e.push_back(std::move(v));
  e.push_back(static_cast<long long>(d.count()));
  return e;
}

// Runs f on one item inside a worker; an exception is the item's own verdict.
template <class Call>
Value run_item(Call&& call) {
  auto start = std::chrono::steady_clock::now();
  try {
    Value v = call();
    return item_entry(Status::ok, std::move(v), std::chrono::steady_clock::now() - start);
  } catch (...) {
    return item_entry(Status::exception, Value(describe_current_exception()), std::chrono::steady_clock::now() - start);
  }
}

template <class F, class... Items>
Value call_item(F& f, Items&&... items) {
  using R = std::invoke_result_t<F&, Items...>;
  static_assert(std::is_void_v<R> || std::is_constructible_v<Value, R>,
                "pfp::map: the function's return type cannot be converted to pfp::Value; define "
                "void to_value(pfp::Value&, const T&) in the type's namespace");
  if constexpr (std::is_void_v<R>) {
    f(std::forward<Items>(items)...);
    return Value();
  } else {
    return Value(f(std::forward<Items>(items)...));
  }
}

// Splits a chunk's Result into one Result per item and hands each to `emit(index, Result&&)`.
template <class Emit>
void split_chunk(const Result& chunk, std::size_t first, std::size_t count, Emit&& emit) {
  const bool whole = chunk.ok() && chunk.result.is_array() && chunk.result.size() == count;
  for (std::size_t k = 0; k < count; ++k) {
    Result r;
    r.index = first + k;
    r.pid = chunk.pid;
    r.attempts = chunk.attempts;
    if (whole) {
      const Value& e = chunk.result.at(k);
      r.status = static_cast<Status>(e.at(0).as<int>());
      if (r.status == Status::ok)
        r.result = e.at(1);
      else
        r.error = e.at(1).as<std::string>();
      r.duration = std::chrono::nanoseconds(e.at(2).as<long long>());
    } else {
      r.status = chunk.ok() ? Status::exception : chunk.status;
      r.error = chunk.ok() ? "pfp: a chunk's result was malformed" : chunk.error;
      r.duration = chunk.duration;
    }
    emit(first + k, std::move(r));
  }
}

inline std::size_t map_workers(const Options& o) { return effective_workers(o); }

// map_unordered(): item i is task i (fn == seq, nothing serialized), each Result handed on as it
// completes.
template <class OnItem>
class ItemFeed final : public Feed {
 public:
  ItemFeed(std::size_t items, OnItem& on_item) : items_(items), on_item_(on_item) {}
  std::optional<Task> pull() override {
    if (next_ >= items_) return std::nullopt;
    return Task{next_++, {}};
  }
  bool finished() override { return true; }
  std::optional<std::size_t> size_hint() const override { return items_; }
  void deliver(std::uint64_t seq, Result&& r) override { on_item_(static_cast<std::size_t>(seq), std::move(r)); }
  void drop_rest(const std::string& why) override {
    if (on_item_.threw()) return;  // the run stops for what it threw: it hears of nothing more
    for (; next_ < items_; ++next_) {
      Result r;
      r.index = static_cast<std::size_t>(next_);
      r.status = Status::cancelled;
      r.error = why;
      on_item_(r.index, std::move(r));
    }
  }

 private:
  std::uint64_t items_;
  UserCallback<OnItem> on_item_;
  std::uint64_t next_ = 0;
};

template <class Range>
std::size_t range_size(const Range& r) {
  using It = decltype(std::begin(r));
  static_assert(std::is_base_of_v<std::random_access_iterator_tag, typename std::iterator_traits<It>::iterator_category>,
                "pfp::map: every range must have random access (a vector, array, deque, string, ...); "
                "for a lazy or single-pass source use pfp::imap");
  return static_cast<std::size_t>(std::distance(std::begin(r), std::end(r)));
}

// The size of the zipped ranges (the shortest decides) and the runner of item i: f(a[i], b[i], ...)
// into the Result; what f throws is the item's verdict, as for any task.
template <class F, class... Ranges>
std::pair<std::size_t, FeedRunner> item_runner(F& f, const Ranges&... ranges) {
  static_assert(sizeof...(Ranges) > 0, "pfp::map: give at least one range of items");
  static_assert(std::is_invocable_v<F&, decltype(*std::begin(ranges))...>,
                "pfp::map: f must be callable with one item of each range, in order");
  const std::size_t n = std::min({range_size(ranges)...});
  FeedRunner runner = [&f, &ranges...](const TaskView& task, Result& r) {
    r.result = call_item(f, std::begin(ranges)[static_cast<std::ptrdiff_t>(task.fn)]...);
  };
  return {n, std::move(runner)};
}

// map_results(): every item's Result, in input order, made in place (a run of items is one message).
template <class F, class... Ranges>
std::vector<Result> run_map_results(const MapOptions& o, F& f, const Ranges&... ranges) {
  auto [n, runner] = item_runner(f, ranges...);
  std::vector<Result> out;
  if (n == 0) return out;
  out.reserve(n);
  auto no_name = [](std::size_t) { return std::string(); };
  ListFeed<decltype(no_name)> feed(out, n, no_name);
  run_feed(runner, o, feed, nullptr);
  return out;
}

// map_unordered(): each item's Result handed to on_item(index, Result&&) as it completes.
template <class F, class OnItem, class... Ranges>
void run_map(const MapOptions& o, F& f, OnItem& on_item, const Ranges&... ranges) {
  auto [n, runner] = item_runner(f, ranges...);
  if (n == 0) return;
  ItemFeed<OnItem> feed(n, on_item);
  run_feed(runner, o, feed, nullptr);
}

}  // namespace detail

/// Applies f to the zipped items of `ranges` (f(a[i], b[i], ...), as many as the shortest range)
/// in workers and returns one Result per item, in input order. Never throws for what f does;
/// throws pfp::error if no worker can be started.
template <class F, class... Ranges>
std::vector<Result> map_results(const MapOptions& options, F f, const Ranges&... ranges) {
  return detail::run_map_results(options, f, ranges...);
}

/// Like map_results(), but returns the values f returned, in input order, as R (default: f's
/// return type). Once every item ran, throws pfp::task_error for the first item (in input order)
/// that failed.
template <class R = void, class F, class... Ranges>
auto map(const MapOptions& options, F f, const Ranges&... ranges) {
  using Natural = std::decay_t<std::invoke_result_t<F&, decltype(*std::begin(ranges))...>>;
  using Out = std::conditional_t<std::is_void_v<R>, Natural, R>;
  static_assert(!std::is_void_v<Out>, "pfp::map: f returns nothing; use pfp::map_results to see each item's Result");
  std::vector<Result> results = map_results(options, std::move(f), ranges...);
  std::vector<Out> values;
  values.reserve(results.size());
  for (Result& r : results) {
    if (!r.ok()) throw task_error(std::move(r));
    values.push_back(r.result.template as<Out>());
  }
  return values;
}

/// map() with default MapOptions.
template <class F, class Range, class... Ranges, std::enable_if_t<!std::is_base_of_v<Options, std::decay_t<F>>, int> = 0>
auto map(F f, const Range& range, const Ranges&... ranges) {
  return map(MapOptions{}, std::move(f), range, ranges...);
}

/// Applies f like map_results(), calling on_result(Result&&) -- or on_result(Result&&, a[i], b[i],
/// ...), with the item's inputs, if it takes them -- in this thread as each item completes
/// (fastest first); Result::index is the item's position. What on_result throws stops the run
/// (running tasks are killed) and is rethrown; on_result is not called again.
template <class F, class OnResult, class... Ranges>
void map_unordered(const MapOptions& options, F f, OnResult on_result, const Ranges&... ranges) {
  constexpr bool with_items = std::is_invocable_v<OnResult&, Result&&, decltype(*std::begin(ranges))...>;
  static_assert(with_items || std::is_invocable_v<OnResult&, Result&&>,
                "pfp::map_unordered: on_result must be callable as on_result(pfp::Result&&) or "
                "on_result(pfp::Result&&, <one item of each range>...)");
  auto emit = [&]([[maybe_unused]] std::size_t i, Result&& r) {
    if constexpr (with_items)
      on_result(std::move(r), std::begin(ranges)[static_cast<std::ptrdiff_t>(i)]...);
    else
      on_result(std::move(r));
  };
  detail::run_map(options, f, emit, ranges...);
}

namespace detail {

// A lazy source as "give me the next item or nothing": an input range or a callable.
template <class Source, class = void>
struct is_range : std::false_type {};
template <class Source>
struct is_range<Source, std::void_t<decltype(std::begin(std::declval<Source&>())), decltype(std::end(std::declval<Source&>()))>>
    : std::true_type {};

template <class T>
struct optional_value;
template <class T>
struct optional_value<std::optional<T>> {
  using type = T;
};

template <class Source, class = void>
struct source_traits {
  using callable_result = std::decay_t<std::invoke_result_t<Source&>>;
  using item = typename optional_value<callable_result>::type;
  using iterator = int;  // unused
};
template <class Source>
struct source_traits<Source, std::enable_if_t<is_range<Source>::value>> {
  using iterator = decltype(std::begin(std::declval<Source&>()));
  using item = std::decay_t<decltype(*std::declval<iterator&>())>;
};

template <class Source>
class SourceCursor {
 public:
  using Item = typename source_traits<Source>::item;
  explicit SourceCursor(Source& s) : source_(s) {
    if constexpr (is_range<Source>::value) {
      it_.emplace(std::begin(source_));
    }
  }
  std::optional<Item> next() {
    if constexpr (is_range<Source>::value) {
      if (*it_ == std::end(source_)) return std::nullopt;
      std::optional<Item> item(**it_);
      ++*it_;
      return item;
    } else {
      return source_();
    }
  }

 private:
  Source& source_;
  std::optional<typename source_traits<Source>::iterator> it_;
};

// imap(): serialized items, each a task of its own (chunk 1) or in chunks (an array of items, and
// an array of per-item verdicts back); at most max_in_flight items between the source and on_result.
// Each Result goes to on_item(Result&&, const Item*): the item itself when keep_items (kept from
// when it is pulled until its Result is handed on), else null.
template <class Cursor, class OnItem>
class StreamFeed final : public Feed {
 public:
  using Item = typename Cursor::Item;
  StreamFeed(Cursor& cursor, std::size_t chunk, std::size_t max_in_flight, bool ordered, bool keep_items, OnItem& on_item)
      : cursor_(cursor), chunk_(chunk), max_in_flight_(max_in_flight), ordered_(ordered), keep_items_(keep_items),
        on_item_(on_item) {
    wake_.open();
  }
  std::optional<Task> pull() override {
    wake_.drain();
    if (source_error_) std::rethrow_exception(std::exchange(source_error_, nullptr));
    if (done_ || pulled_ - emitted_ > max_in_flight_ - chunk_) return std::nullopt;  // max_in_flight_ >= chunk_
    Value items = Value::array();
    try {
      while (items.size() < chunk_) {
        std::optional<typename Cursor::Item> item = cursor_.next();
        if (!item) {
          done_ = true;
          break;
        }
        items.push_back(Value(*item));
        if (keep_items_) kept_.emplace(pulled_ + items.size() - 1, std::move(*item));
      }
    } catch (...) {
      if (items.size() == 0) throw;
      source_error_ = std::current_exception();  // the items already taken run first
    }
    if (items.size() == 0) return std::nullopt;
    chunks_.emplace(chunk_seq_++, std::make_pair(pulled_, items.size()));
    pulled_ += items.size();
    return Task{0, encode(chunk_ == 1 ? items.at(0) : items)};
  }
  bool finished() override { return done_; }
  int wake_fd() const override { return wake_.read_fd(); }
  void deliver(std::uint64_t seq, Result&& r) override {
    auto it = chunks_.find(seq);
    const auto [first, count] = it->second;
    chunks_.erase(it);
    auto emit = [&](std::size_t i, Result&& item) {
      if (!ordered_) {
        hand_on(i, std::move(item));
        return;
      }
      waiting_.emplace(i, std::move(item));
      while (!waiting_.empty() && waiting_.begin()->first == emitted_) {
        Result next = std::move(waiting_.begin()->second);
        waiting_.erase(waiting_.begin());
        hand_on(emitted_, std::move(next));
      }
    };
    if (chunk_ == 1) {
      r.index = first;
      emit(first, std::move(r));
    } else {
      split_chunk(r, first, count, emit);
    }
    wake_.ring();
  }
  // Stopped for what on_result threw (it hears of nothing more), or the run cannot go on: the
  // items not yet taken from the source will not run, which run_imap() must not keep quiet.
  void drop_rest(const std::string& why) override {
    if (!done_ && !on_item_.threw()) cut_short_ = why;
    done_ = true;
  }
  // Item i's Result to on_result, with the item if it was kept.
  void hand_on(std::size_t i, Result&& r) {
    ++emitted_;
    if (!keep_items_) {
      on_item_(std::move(r), nullptr);
      return;
    }
    auto it = kept_.find(i);
    std::optional<Item> item;
    if (it != kept_.end()) {
      item.emplace(std::move(it->second));
      kept_.erase(it);
    }
    if (item) on_item_(std::move(r), &*item);
  }

  /// Why the run ended before the source did (empty: it did not).
  const std::string& cut_short() const noexcept { return cut_short_; }
  std::size_t emitted() const noexcept { return emitted_; }

 private:
  Cursor& cursor_;
  std::size_t chunk_;
  std::size_t max_in_flight_;
  bool ordered_;
  bool keep_items_;
  UserCallback<OnItem> on_item_;
  std::unordered_map<std::size_t, Item> kept_;  // keep_items_: the items pulled, by index
  bool done_ = false;
  std::string cut_short_;
  std::exception_ptr source_error_;
  std::size_t pulled_ = 0;
  std::size_t emitted_ = 0;
  std::uint64_t chunk_seq_ = 0;
  std::unordered_map<std::uint64_t, std::pair<std::size_t, std::size_t>> chunks_;
  std::map<std::size_t, Result> waiting_;  // ordered mode: finished early, waiting for their turn
  WakePipe wake_;  // rung when a result makes room for more items
};

template <class F, class Source, class OnResult>
void run_imap(const MapOptions& o, F& f, Source& source, OnResult& on_result, bool ordered) {
  static_assert(is_range<Source>::value || std::is_invocable_v<Source&>,
                "pfp::imap: the source must be an input range or a callable returning std::optional<T>");
  using Cursor = SourceCursor<Source>;
  using Item = typename Cursor::Item;
  static_assert(std::is_invocable_v<F&, const Item&>, "pfp::imap: f must be callable with one item of the source");
  constexpr bool with_item = std::is_invocable_v<OnResult&, Result&&, const Item&>;
  static_assert(with_item || std::is_invocable_v<OnResult&, Result&&>,
                "pfp::imap: on_result must be callable as on_result(pfp::Result&&) or on_result(pfp::Result&&, const Item&)");
  const std::size_t chunk = std::max<std::size_t>(1, o.chunksize);
  const std::size_t bound = std::max(chunk, o.max_in_flight ? o.max_in_flight : 64 * detail::map_workers(o));
  FeedRunner runner = [&](const TaskView& task, Result& r) {
    if (chunk == 1) {  // the item's own task: what f throws is its verdict, retried like any task's
      r.result = call_item(f, decode(task.payload).template as<Item>());
      return;
    }
    const Value items = decode(task.payload);
    Value out = Value::array();
    for (const Value& item : items.elements())
      out.push_back(run_item([&] { return call_item(f, item.template as<Item>()); }));
    r.result = std::move(out);
  };
  Cursor cursor(source);
  auto emit = [&](Result&& r, [[maybe_unused]] const Item* item) {
    if constexpr (with_item)
      on_result(std::move(r), *item);
    else
      on_result(std::move(r));
  };
  StreamFeed<Cursor, decltype(emit)> feed(cursor, chunk, bound, ordered, with_item, emit);
  run_feed(runner, o, feed, nullptr);
  if (!feed.cut_short().empty())
    throw error("pfp::imap: the run ended after " + std::to_string(feed.emitted()) +
                " items, before the source did (the rest were not taken from it): " + feed.cut_short());
}

}  // namespace detail

/// Applies f to every item of a lazy source -- an input range, or a callable returning
/// std::optional<T> (std::nullopt ends it) -- calling on_result(Result&&) in input order.
/// Items are serialized (T converts to pfp::Value and back); at most MapOptions::max_in_flight
/// are between the source and on_result at once, so an endless source runs in flat memory.
/// If the source throws, the items already pulled still run and reach on_result, then the
/// exception is rethrown. What on_result throws stops the run and is rethrown.
template <class F, class Source, class OnResult>
void imap(const MapOptions& options, F f, Source&& source, OnResult on_result) {
  detail::run_imap(options, f, source, on_result, true);
}

/// imap() handing each Result to on_result as soon as it completes (Result::index tells which).
template <class F, class Source, class OnResult>
void imap_unordered(const MapOptions& options, F f, Source&& source, OnResult on_result) {
  detail::run_imap(options, f, source, on_result, false);
}

/// The Results of imap() or imap_unordered() called without on_result, as a single-pass range:
///   for (pfp::Result& r : pfp::imap(options, f, source)) ...
/// The run starts at begin() and goes on only while the loop waits for its next Result (in a
/// helper thread, which alone forks the workers, and only while the loop's thread waits inside
/// pfp). Leaving the loop early (break, return, an exception) stops the run when the range is
/// destroyed: running items are killed and every worker is reaped before the destructor returns.
/// What the run throws (the source's exception, pfp::error when it cannot go on) comes out of
/// begin() or the increment that reaches it. An rvalue source is kept in the range; an lvalue
/// one is referred to and must outlive it.
template <class F, class Source>
class ResultRange {
  struct State {
    MapOptions options;
    F f;
    Source source;
    bool ordered;
    detail::ResultHandoff handoff;
    std::thread thread;
    std::optional<Result> current;
  };

 public:
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Result;
    using difference_type = std::ptrdiff_t;
    using pointer = Result*;
    using reference = Result&;
    iterator() = default;
    Result& operator*() const { return *state_->current; }
    Result* operator->() const { return &*state_->current; }
    iterator& operator++() {
      state_->current = state_->handoff.next();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& a, const iterator& b) { return a.at_end() == b.at_end(); }
    friend bool operator!=(const iterator& a, const iterator& b) { return !(a == b); }

   private:
    friend class ResultRange;
    explicit iterator(State* s) : state_(s) {}
    bool at_end() const { return !state_ || !state_->current; }
    State* state_ = nullptr;
  };

  ResultRange(const MapOptions& options, F f, Source&& source, bool ordered)
      : state_(new State{options, std::move(f), std::forward<Source>(source), ordered, {}, {}, {}}) {}
  ResultRange(ResultRange&&) noexcept = default;
  ResultRange& operator=(ResultRange&&) = delete;
  ~ResultRange() { stop(); }

  /// Starts the run and waits for its first Result. Throws pfp::error when called twice.
  iterator begin() {
    if (state_->thread.joinable()) throw error("pfp::imap: a range of Results can be walked only once");
    if (detail::isolated_workers(state_->options)) detail::check_threads(state_->options);  // before the helper exists
    state_->options.threads = ThreadPolicy::allow;
    State* st = state_.get();
    st->thread = std::thread([st] {
      std::exception_ptr failure;
      try {
        if (st->handoff.wait_for_first()) {
          auto on_result = [st](Result&& r) { st->handoff.put(std::move(r)); };
          detail::run_imap(st->options, st->f, st->source, on_result, st->ordered);
        }
      } catch (const detail::ConsumerLeft&) {
      } catch (...) {
        failure = std::current_exception();
      }
      st->handoff.finish(failure);
    });
    iterator it(st);
    ++it;
    return it;
  }
  iterator end() noexcept { return iterator(); }

 private:
  void stop() noexcept {
    if (!state_ || !state_->thread.joinable()) return;
    state_->handoff.leave();
    state_->thread.join();
  }
  std::unique_ptr<State> state_;
};

/// imap() as a range of Results in input order (see ResultRange).
template <class F, class Source>
ResultRange<F, Source> imap(const MapOptions& options, F f, Source&& source) {
  return ResultRange<F, Source>(options, std::move(f), std::forward<Source>(source), true);
}

/// imap_unordered() as a range of Results in completion order (see ResultRange).
template <class F, class Source>
ResultRange<F, Source> imap_unordered(const MapOptions& options, F f, Source&& source) {
  return ResultRange<F, Source>(options, std::move(f), std::forward<Source>(source), false);
}

}  // namespace pfp

#endif  // PFP_MAP_HPP
