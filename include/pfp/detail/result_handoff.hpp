#ifndef PFP_DETAIL_RESULT_HANDOFF_HPP
#define PFP_DETAIL_RESULT_HANDOFF_HPP

// How a run driven by callbacks (imap's on_result) becomes a range a caller pulls from: the run
// goes on in a helper thread, which hands each Result over and then waits until the caller asks
// for the next one. The two take turns, never running at once: the run forks its workers only
// while the caller waits inside pfp, holding no lock of its own, and the caller's code between
// two Results runs while the run stands still (as it does while a callback runs).

#include <pfp/result.hpp>

#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <utility>

namespace pfp {
namespace detail {

/// What put() throws once the caller has left: the run stops as it does when on_result throws.
struct ConsumerLeft {};

class ResultHandoff {
 public:
  /// In the run's thread, before it starts: waits until the caller first asks for a Result.
  /// False if the caller left instead.
  bool wait_for_first() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return wanted_ || left_; });
    return !left_;
  }
  /// In the run's thread (its on_result): hands r over and waits until the caller wants the next.
  /// Throws ConsumerLeft when the caller has gone.
  void put(Result&& r) {
    std::unique_lock<std::mutex> lock(mu_);
    if (left_) throw ConsumerLeft{};
    slot_.emplace(std::move(r));
    wanted_ = false;
    cv_.notify_all();
    cv_.wait(lock, [&] { return wanted_ || left_; });
    if (left_) throw ConsumerLeft{};
  }
  /// In the run's thread, last: the run ended (error: what it threw, if anything but ConsumerLeft).
  void finish(std::exception_ptr error) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = std::move(error);
    cv_.notify_all();
  }

  /// In the caller's thread: the next Result, or nullopt when the run has ended; rethrows what
  /// the run threw (once).
  std::optional<Result> next() {
    std::unique_lock<std::mutex> lock(mu_);
    slot_.reset();
    wanted_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return slot_.has_value() || done_; });
    if (slot_) {
      std::optional<Result> r = std::move(slot_);
      slot_.reset();
      return r;
    }
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return std::nullopt;
  }
  /// In the caller's thread: it takes no more; the run stops at its next hand-over.
  void leave() noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    left_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Result> slot_;  // handed over, not yet taken
  bool wanted_ = false;         // the caller waits for a Result
  bool left_ = false;           // the caller takes no more
  bool done_ = false;           // the run ended
  std::exception_ptr error_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_RESULT_HANDOFF_HPP
