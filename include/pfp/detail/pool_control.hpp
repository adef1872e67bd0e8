#ifndef PFP_DETAIL_POOL_CONTROL_HPP
#define PFP_DETAIL_POOL_CONTROL_HPP

// The process pool, continued: what a feed asks about the tasks it gave while they are in the
// pool (Feed::withdrawn, Feed::wants_report): stopping one task -- never run if it has not begun,
// killed with its worker if it runs -- and saying what each worker runs. Asked only after the
// feed's side descriptor was readable (or while a request waits to be settled), so a run that asks
// nothing pays nothing. Part of pool.hpp, which includes it at its end.

#include <pfp/detail/pool.hpp>

namespace pfp {
namespace detail {

inline void Pool::serve_requests() {
  feed_.withdrawn(withdrawing_);
  for (std::size_t i = 0; i < withdrawing_.size();) {
    if (withdraw(withdrawing_[i])) {
      withdrawing_[i] = withdrawing_.back();
      withdrawing_.pop_back();
    } else {
      ++i;
    }
  }
  if (feed_.wants_report()) report_workers();
}

// Stops task `seq` if this run still holds it. False when it cannot tell yet: the worker that
// holds it claimed it a moment ago (it runs by the next turn, and is killed then).
inline bool Pool::withdraw(std::uint64_t seq) {
  auto is = [&](std::uint64_t id) { return tasks_.slot_of(id).count == 1 && tasks_.seq_of(id) == seq; };
  auto from_pending = [&] {
    const auto it = std::find_if(tasks_.pending.begin(), tasks_.pending.end(), is);
    if (it == tasks_.pending.end()) return false;
    const std::uint64_t id = *it;
    tasks_.pending.erase(it);
    deliver_withdrawn(id);
    return true;
  };
  if (from_pending()) return true;
  for (auto& w : workers_) {
    if (w->pid <= 0) continue;
    const auto at = std::find_if(w->queue.begin(), w->queue.end(), [&](const Queued& q) { return is(q.id); });
    if (at == w->queue.end()) continue;
    if (at == w->queue.begin() && w->head_began()) {
      const std::uint64_t id = at->id;
      drain(*w);  // it may have finished just now: then its verdict stands
      if (w->pid > 0 && !w->queue.empty() && w->queue.front().id == id)
        kill_worker(*w, Status::cancelled, "cancelled while running: the worker was killed with everything it started");
      return true;
    }
    take_back_from(*w);    // what it has not begun comes back at once ...
    return from_pending();  // ... unless it began this one just now
  }
  return true;  // delivered already
}

inline void Pool::deliver_withdrawn(std::uint64_t id) {
  Result& r = tasks_.result_of(id);
  r.status = Status::cancelled;
  r.error = "cancelled before it started";
  r.result = Value();
  deliver(id);
}

inline void Pool::report_workers() {
  views_.clear();
  for (auto& w : workers_) {
    if (w->pid <= 0) continue;
    WorkerView v;
    v.pid = static_cast<int>(w->pid);
    v.slot = w->slot;
    v.held = w->queue.size();
    if (!w->queue.empty()) {
      if (std::optional<Clock::time_point> began = w->head_began()) {
        v.running = tasks_.seq_of(w->queue.front().id);
        v.since = *began;
      }
    }
    views_.push_back(v);
  }
  feed_.report(views_);
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_CONTROL_HPP
