#ifndef PFP_HANDLER_CONTEXT_HPP
#define PFP_HANDLER_CONTEXT_HPP

// What a pfp::Manager hands its handler: BuildContext to build_items() in the parent, ItemContext
// to handle_item() in a worker (shared values, stats, the worker's number, log lines).

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

  /// Adds a line to this item's log: the Logger receives it (ItemLog::messages) with the item's
  /// verdict, in the parent, so lines of different workers never interleave.
  void log(std::string line) { messages_.push_back(std::move(line)); }

  /// The worker slot running this item, 0 .. workers-1.
  unsigned worker() const noexcept { return worker_; }
  /// The item's number in the run, from 0, in the order the items were produced.
  std::uint64_t seq() const noexcept { return seq_; }

 private:
  template <class H>
  friend class Manager;
  ItemContext(const Value& shared, unsigned worker, std::uint64_t seq) noexcept
      : shared_(&shared), worker_(worker), seq_(seq) {}
  const Value* shared_;
  unsigned worker_;
  std::uint64_t seq_;
  std::vector<std::string> messages_;
};


}  // namespace pfp

#endif  // PFP_HANDLER_CONTEXT_HPP
