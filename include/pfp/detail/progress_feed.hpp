#ifndef PFP_DETAIL_PROGRESS_FEED_HPP
#define PFP_DETAIL_PROGRESS_FEED_HPP

// Options::progress for every front end at the one seam (run_feed): the front end's Feed wrapped
// in one that counts each Result as it is delivered and draws the progress (progress.hpp).

#include <pfp/detail/feed.hpp>
#include <pfp/progress.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pfp {
namespace detail {

/// Whether o asks for progress (a mode other than off, or a callback).
inline bool wants_progress(const ProgressOptions& o) noexcept {
  return o.mode != ProgressMode::off || static_cast<bool>(o.on_progress);
}

/// Forwards everything to the feed it wraps (a new Feed member must be forwarded here too) and
/// counts what is delivered. It gives no runs (pull_run): every task is delivered, and so counted,
/// on every backend.
class ProgressFeed final : public Feed {
 public:
  ProgressFeed(Feed& inner, const ProgressOptions& o)
      : inner_(inner), line_(o, inner.size_hint(), std::chrono::steady_clock::now()) {}

  std::optional<Task> pull() override { return inner_.pull(); }
  bool finished() override { return inner_.finished(); }
  int wake_fd() const override { return inner_.wake_fd(); }
  void workers_started() override { inner_.workers_started(); }
  std::optional<int> next_priority() override { return inner_.next_priority(); }
  std::uint64_t signature() const override { return inner_.signature(); }
  std::optional<std::size_t> size_hint() const override { return inner_.size_hint(); }
  void deliver(std::uint64_t seq, Result&& r) override {
    const Status status = r.status;
    inner_.deliver(seq, std::move(r));
    count(status);
  }
  void amend(std::uint64_t seq, Result&& r) override { inner_.amend(seq, std::move(r)); }
  void drop_rest(const std::string& why) override { inner_.drop_rest(why); }
  bool stop_requested() override { return inner_.stop_requested(); }
  int side_fd() const override { return inner_.side_fd(); }
  void side_ready() override { inner_.side_ready(); }
  void withdrawn(std::vector<std::uint64_t>& out) override { inner_.withdrawn(out); }
  bool wants_report() override { return inner_.wants_report(); }
  void report(const std::vector<WorkerView>& workers) override { inner_.report(workers); }

  /// The run ended (`stopped`: before its end): the last line, or the last call of the callback.
  void finish(bool stopped) {
    line_.set_total(inner_.size_hint());
    line_.finish(done_, failed_, cancelled_, stopped);
  }

 private:
  void count(Status status) {
    if (status == Status::ok) {
      ++done_;
    } else if (status == Status::cancelled) {
      ++cancelled_;
    } else {
      ++done_;
      ++failed_;
    }
    line_.update(done_, failed_, cancelled_);
  }

  Feed& inner_;
  ProgressLine line_;
  std::size_t done_ = 0;
  std::size_t failed_ = 0;
  std::size_t cancelled_ = 0;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_PROGRESS_FEED_HPP
