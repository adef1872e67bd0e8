#ifndef PFP_STATS_HPP
#define PFP_STATS_HPP

// pfp::Stats: named counters and set values. A Manager gives each handled item a fresh Stats for
// its deltas, sends it back with the item's result, and merges it into the run's totals in the
// parent: exact, and with no lock a dying worker could leave held.

#include <pfp/error.hpp>
#include <pfp/value.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace pfp {

/// Named counters (64-bit integers that add up when merged) and set values (any pfp::Value; the
/// last one merged wins). A key is either a counter or a set value, never both. Not thread-safe
/// by itself: a Manager merges into its totals under its own lock and hands out copies.
class Stats {
 public:
  /// Adds `by` (may be negative) to counter `key`, creating it at 0. Returns *this.
  /// Throws pfp::error if `key` holds a set value or the sum leaves the int64 range.
  Stats& inc(std::string_view key, std::int64_t by = 1) {
    Entry& e = slot(key, true, "inc");
    e.count = checked_add(key, e.count, by);
    return *this;
  }

  /// Sets value `key` (replacing an earlier set value). Returns *this.
  /// Throws pfp::error if `key` is a counter.
  Stats& set(std::string_view key, Value v) {
    slot(key, false, "set").value = std::move(v);
    return *this;
  }

  /// Counter `key`, 0 if absent. Throws pfp::error if `key` holds a set value.
  std::int64_t count(std::string_view key) const {
    auto it = entries_.find(key);
    if (it == entries_.end()) return 0;
    if (!it->second.counter) throw error(kind_clash(key, "count", true));
    return it->second.count;
  }

  /// Counter `key` as an integer Value, set value `key` as it is, or null when absent.
  Value get(std::string_view key) const {
    auto it = entries_.find(key);
    if (it == entries_.end()) return Value();
    return it->second.counter ? Value(it->second.count) : it->second.value;
  }

  bool contains(std::string_view key) const { return entries_.find(key) != entries_.end(); }
  /// True if `key` is a counter (false for a set value or an absent key).
  bool is_counter(std::string_view key) const {
    auto it = entries_.find(key);
    return it != entries_.end() && it->second.counter;
  }
  std::size_t size() const noexcept { return entries_.size(); }
  bool empty() const noexcept { return entries_.empty(); }
  void clear() noexcept { entries_.clear(); }

  /// Adds `delta`'s counters to these and takes its set values. All or nothing: throws pfp::error
  /// (and changes nothing) if a key is a counter on one side and a set value on the other, or a
  /// sum leaves the int64 range.
  void merge(const Stats& delta) {
    for (const auto& [key, d] : delta.entries_) {
      auto it = entries_.find(key);
      if (it == entries_.end()) continue;
      if (it->second.counter != d.counter) throw error(kind_clash(key, "merge", d.counter));
      if (d.counter) checked_add(key, it->second.count, d.count);
    }
    for (const auto& [key, d] : delta.entries_) {
      Entry& e = entries_[key];
      e.counter = d.counter;
      if (d.counter) {
        e.count += d.count;
      } else {
        e.value = d.value;
      }
    }
  }

  /// Every key with its value in one flat object, e.g. {"items_processed": 100, "items_total": 100}.
  Value to_object() const {
    Value out = Value::object();
    for (const auto& [key, e] : entries_) out[key] = e.counter ? Value(e.count) : e.value;
    return out;
  }

  friend bool operator==(const Stats& a, const Stats& b) { return a.entries_ == b.entries_; }
  friend bool operator!=(const Stats& a, const Stats& b) { return !(a == b); }

  /// Compact JSON of to_object(): {"items_negative":50,"items_positive":50}.
  friend std::ostream& operator<<(std::ostream& os, const Stats& s) { return os << s.to_object().to_json(); }

  /// Wire form, kinds kept: {"c": {counters}, "v": {set values}}. Value(stats).as<Stats>() == stats.
  friend void to_value(Value& v, const Stats& s) {
    Value counters = Value::object();
    Value values = Value::object();
    for (const auto& [key, e] : s.entries_) {
      if (e.counter) {
        counters[key] = e.count;
      } else {
        values[key] = e.value;
      }
    }
    v = Value{{"c", std::move(counters)}, {"v", std::move(values)}};
  }
  /// Reads the wire form. Throws pfp::error on anything else.
  friend void from_value(const Value& v, Stats& s) {
    if (!v.is_object() || v.size() != 2 || !v.contains("c") || !v.contains("v"))
      throw error("pfp::Stats: expected {\"c\": {counters}, \"v\": {values}}, got " + v.to_json());
    Stats out;
    for (const auto& [key, n] : v.at("c").items()) out.entries_[key] = Entry{true, n.as<std::int64_t>(), Value()};
    for (const auto& [key, val] : v.at("v").items()) {
      if (out.entries_.count(key)) throw error("pfp::Stats: key \"" + key + "\" is both a counter and a set value");
      out.entries_[key] = Entry{false, 0, val};
    }
    s = std::move(out);
  }

 private:
  struct Entry {
    bool counter = true;
    std::int64_t count = 0;
    Value value;
    bool operator==(const Entry& o) const { return counter == o.counter && count == o.count && value == o.value; }
  };

  Entry& slot(std::string_view key, bool counter, const char* op) {
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      Entry e;
      e.counter = counter;
      return entries_.emplace(std::string(key), std::move(e)).first->second;
    }
    if (it->second.counter != counter) throw error(kind_clash(key, op, counter));
    return it->second;
  }

  static std::int64_t checked_add(std::string_view key, std::int64_t a, std::int64_t b) {
    std::int64_t sum = 0;
    if (__builtin_add_overflow(a, b, &sum))
      throw error("pfp::Stats: counter \"" + std::string(key) + "\" overflows int64 (" + std::to_string(a) + " + " +
                  std::to_string(b) + ")");
    return sum;
  }

  // `wanted_counter`: what the operation needs the key to be.
  static std::string kind_clash(std::string_view key, const char* op, bool wanted_counter) {
    return std::string("pfp::Stats::") + op + ": key \"" + std::string(key) + "\" is " +
           (wanted_counter ? "a set value, not a counter" : "a counter, not a set value") +
           "; use one key per kind (inc/count for counters, set/get for values)";
  }

  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace pfp

#endif  // PFP_STATS_HPP
