#ifndef PFP_DETAIL_LIST_FEED_HPP
#define PFP_DETAIL_LIST_FEED_HPP

#include <pfp/detail/feed.hpp>
#include <pfp/result.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pfp {
namespace detail {

// Feeds tasks 0..n-1 that the workers inherit (fn == seq, nothing serialized: registered
// functions, or the items of a random-access range) and files each Result at its index. The
// Results are made as their tasks are handed out, so making them overlaps with the workers' first
// runs instead of delaying them.
template <class NameOf>
class ListFeed final : public Feed {
 public:
  /// results is empty, with room reserved for n; name_of(i) is function i's name.
  ListFeed(std::vector<Result>& results, std::size_t n, NameOf name_of) : results_(results), n_(n), name_of_(name_of) {}
  std::optional<Task> pull() override {
    if (next_ >= n_) return std::nullopt;
    make_results(next_ + 1);
    return Task{next_++, {}};
  }
  std::size_t pull_run(std::size_t max, std::uint64_t& first_fn, Result*& places) override {
    const std::size_t n = std::min<std::size_t>(max, n_ - static_cast<std::size_t>(next_));
    make_results(next_ + n);
    first_fn = next_;
    places = results_.data() + next_;
    next_ += n;
    return n;
  }
  bool finished() override { return true; }
  std::optional<std::size_t> size_hint() const override { return n_; }
  std::uint64_t signature() const override {
    std::uint64_t h = hash_bytes(hash_seed, std::to_string(n_));
    for (std::size_t i = 0; i < n_; ++i) {
      const std::string& name = name_of_(i);
      h = hash_bytes(hash_bytes(h, name), std::string_view("\0", 1));
    }
    return h;
  }
  void deliver(std::uint64_t seq, Result&& r) override { file(seq, std::move(r)); }
  void amend(std::uint64_t seq, Result&& r) override { file(seq, std::move(r)); }
  void drop_rest(const std::string& why) override {
    make_results(n_);
    for (; next_ < n_; ++next_) {
      results_[next_].status = Status::cancelled;
      results_[next_].error = why;
    }
  }

 private:
  // Results up to function `upto` (exclusive) exist, named and numbered. Within the reserved room:
  // places handed out stay where they are.
  void make_results(std::uint64_t upto) {
    while (results_.size() < upto) {
      const std::size_t i = results_.size();
      Result& r = results_.emplace_back();
      r.function_name = name_of_(i);
      r.index = i;
    }
  }
  // Everything but the name and index, which the slot already has.
  void file(std::uint64_t seq, Result&& r) {
    Result& slot = results_[static_cast<std::size_t>(seq)];
    slot.status = r.status;
    if (!r.result.is_null() || !slot.result.is_null()) slot.result = std::move(r.result);
    if (!r.error.empty() || !slot.error.empty()) slot.error = std::move(r.error);
    slot.pid = r.pid;
    slot.duration = r.duration;
    slot.attempts = r.attempts;
  }
  std::vector<Result>& results_;
  std::size_t n_;
  NameOf name_of_;
  std::uint64_t next_ = 0;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_LIST_FEED_HPP
