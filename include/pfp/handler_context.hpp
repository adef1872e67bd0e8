#ifndef PFP_HANDLER_CONTEXT_HPP
#define PFP_HANDLER_CONTEXT_HPP

// What a pfp::Manager hands its handler: BuildContext to build_items() in the parent, ItemContext
// to handle_item() in a worker (shared values, stats, the worker's number, log lines).

#include <pfp/detail/item_log_channel.hpp>
#include <pfp/detail/manager_support.hpp>
#include <pfp/error.hpp>
#include <pfp/stats.hpp>
#include <pfp/value.hpp>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pfp {

template <class Handler>
class Manager;

namespace detail {

/// The parent's side of one Manager run that the handler's item builder may touch.
struct ManagerRunState {
  std::mutex mu;
  Stats totals;  // guarded by mu
  Value shared = Value::object();
  bool frozen = false;
  std::optional<std::size_t> expected;
  unsigned workers = 1;
  ItemLogChannel log_channel;  // the handlers' ctx.log() lines, as they are written
};

}  // namespace detail

/// Given to the handler's build_items(). Valid until run() returns, so an item source may keep a
/// reference to it and use it while it produces items (in the parent).
class BuildContext {
 public:
  /// Adds `key` to the read-only data every worker's handler sees (ItemContext::shared). Only
  /// while build_items() runs: the workers start after it returns.
  /// Throws pfp::error when called later.
  void share(std::string key, Value value) {
    if (state_.frozen)
      throw error("pfp::BuildContext::share(\"" + key + "\"): shared data must be set inside build_items(), before it "
                  "returns; the workers have already started with the data as it was then");
    state_.shared[key] = std::move(value);
  }
  /// The shared data so far (an object).
  const Value& shared() const noexcept { return state_.shared; }

  /// Sets value `key` in the run's stats (e.g. "items_total"). Any time during the run.
  /// Throws pfp::error if `key` is a counter.
  void set_stat(std::string_view key, Value value) {
    std::lock_guard<std::mutex> lock(state_.mu);
    state_.totals.set(key, std::move(value));
  }
  /// Adds to counter `key` of the run's stats. Any time during the run.
  /// Throws pfp::error if `key` holds a set value or the counter overflows.
  void inc_stat(std::string_view key, std::int64_t by = 1) {
    std::lock_guard<std::mutex> lock(state_.mu);
    state_.totals.inc(key, by);
  }

  /// Tells how many items the source will produce, for the progress report (a range with size()
  /// tells it by itself). Any time during the run, from the thread that runs it.
  void expect(std::size_t items) noexcept { state_.expected = items; }

  /// Worker processes (or threads) the run uses at most.
  unsigned workers() const noexcept { return state_.workers; }

 private:
  template <class H>
  friend class Manager;
  explicit BuildContext(detail::ManagerRunState& s) noexcept : state_(s) {}
  detail::ManagerRunState& state_;
};

/// Given to the handler's handle_item() for one item, in the worker.
class ItemContext {
 public:
  /// This item's stats: fresh (empty) for every item, or what reset_stats() made it. Counters
  /// added here are summed into the run's totals, set values replace theirs, when the item
  /// succeeds; a failed item's stats are dropped.
  Stats stats;

  /// The data build_items() shared (an object; read-only).
  const Value& shared() const noexcept { return *shared_; }
  /// Shared value `key`. Throws pfp::error if build_items() did not share it.
  const Value& shared(std::string_view key) const {
    const Value* v = shared_->find(key);
    if (!v)
      throw error("pfp::ItemContext::shared(\"" + std::string(key) +
                  "\"): no such shared value; add it with BuildContext::share() in build_items()");
    return *v;
  }

  /// Adds a line to this item's log. The Logger receives it in the parent as it is written (an
  /// ItemLog with `live` set; worker processes send it at once, the threads and inline backends
  /// by the item's verdict at the latest), and again in the item's final ItemLog::messages: lines of different
  /// workers never interleave, and lines written before the item threw, crashed or timed out
  /// are kept. A line over 60 KiB is cut, saying how much was cut.
  void log(std::string line) {
    if (channel_ && channel_->send(seq_, worker_, detail::ItemLogChannel::Kind::line, line)) return;
    messages_.push_back(std::move(line));  // goes with the item's result
  }

  /// The worker slot running this item, 0 .. workers-1.
  unsigned worker() const noexcept { return worker_; }
  /// The item's number in the run, from 0, in the order the items were produced.
  std::uint64_t seq() const noexcept { return seq_; }

 private:
  template <class H>
  friend class Manager;
  ItemContext(const Value& shared, unsigned worker, std::uint64_t seq, detail::ItemLogChannel* channel) noexcept
      : shared_(&shared), worker_(worker), seq_(seq), channel_(channel) {}
  const Value* shared_;
  unsigned worker_;
  std::uint64_t seq_;
  detail::ItemLogChannel* channel_;
  std::vector<std::string> messages_;
};

/// What a Manager needs from Handler, checked with readable static_assert messages by Manager.
/// A handler is any class with
///   required  auto build_items(pfp::BuildContext&)  (or build_items()): the items, as a range
///             (begin/end; input iterators suffice, e.g. pfp::batches(...)) or a generator
///             callable returning std::optional<Item> (std::nullopt ends the items). Called once
///             per run, in the parent, before any worker starts; the range is read lazily during
///             the run. Item must convert to and from pfp::Value (to_value/from_value for your
///             own types).
///   required  void handle_item(const Item&, pfp::ItemContext&): handles one item, in a worker.
///             Throwing fails the item.
///   optional  log_item(const Item&) -> std::string or a number: the item's label in logs and in
///             ExitStatus::error_target (default: the item's seq). Called in the parent when the
///             item is handed out, so a crashed item still has its label.
///   optional  void reset_stats(pfp::Stats&): called on each item's fresh stats before
///             handle_item (e.g. to list counters at 0 so they appear in the totals).
template <class Handler>
struct handler_traits {
  static constexpr bool has_build_items = detail::builds_with_context<Handler>::value || detail::builds_plain<Handler>::value;
  using source_type = typename detail::build_result<Handler>::type;
  static constexpr bool source_is_range = detail::is_range_source<source_type>::value;
  static constexpr bool source_is_generator = detail::is_generator_source<source_type>::value;
  static constexpr bool valid_source = has_build_items && (source_is_range || source_is_generator);
  using item_type = typename detail::item_of<source_type>::type;
  static constexpr bool item_converts = valid_source && detail::converts_to_value<item_type>::value;
  static constexpr bool has_handle_item = valid_source && detail::has_handle_item<Handler, item_type>::value;
  using label_type = typename detail::log_item_result<Handler, item_type>::type;
  static constexpr bool has_log_item = valid_source && detail::log_item_result<Handler, item_type>::present;
  static constexpr bool valid_log_item =
      !has_log_item || std::is_convertible_v<label_type, std::string> || std::is_arithmetic_v<label_type>;
  static constexpr bool has_reset_stats = detail::has_reset_stats<Handler>::value;
  static constexpr bool valid = valid_source && item_converts && has_handle_item && valid_log_item;
};

/// True if Handler satisfies handler_traits (what Manager<Handler> requires).
template <class Handler>
inline constexpr bool is_handler_v = handler_traits<Handler>::valid;

}  // namespace pfp

#endif  // PFP_HANDLER_CONTEXT_HPP
