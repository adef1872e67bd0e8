#ifndef PFP_DETAIL_POOL_ENDINGS_HPP
#define PFP_DETAIL_POOL_ENDINGS_HPP

// The process pool, continued: how workers end. A worker that died, hung past its deadline, ran
// its allowance or was cancelled is reaped with everything it started; the task it was running
// gets the verdict, the ones it held and never began go back to the pending ones. Part of
// pool.hpp, which includes it at its end.

#include <pfp/detail/pool.hpp>

namespace pfp {
namespace detail {

// Hands a dead or killed worker's unfinished functions back: the one it was running gets the
// verdict; the ones queued behind it never started and go back to the front of the line.
inline void Pool::settle_queue(Worker& w, Status status, const std::string& why) {
  if (w.queue.empty()) return;
  // A head that never began is innocent even of a timeout: the worker was stuck in a task
  // that had already delivered its result (or in flushing its output), not in this one.
  const bool began = w.head_began().has_value();
  if (began) {
    const std::uint64_t id = w.queue.front().id;
    Result& r = tasks_.result_of(id);
    r.status = status;
    r.error = why;
    r.result = Value();
    r.pid = static_cast<int>(w.pid);
    if (status == Status::timed_out || status == Status::cancelled)
      r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - w.head_start());
    w.queue.pop_front();
    if (status == Status::cancelled) {
      ++r.attempts;
      deliver(id);
    } else {
      conclude(id);
    }
  }
  // Otherwise it died between tasks: nothing it held had started.
  std::vector<std::uint64_t> never_began;
  for (const Queued& q : w.queue) never_began.push_back(q.id);
  w.queue.clear();
  tasks_.hand_back(never_began);
}

// A gone worker's shared region serves the next one (see SharedRegion::renew).
inline void Pool::recycle(SharedRegion&& region) {
  if (region && spare_regions_.size() < target_workers_) spare_regions_.push_back(std::move(region));
  region.reset();
}

// Called once the worker's process is gone (reaped), or its region moved out.
inline void Pool::close_pipes(Worker& w) {
  note_started(w);
  recycle(std::move(w.shared));
  if (w.buf.capacity() == read_chunk && spare_buf_.capacity() == 0) spare_buf_ = std::move(w.buf);  // for the next worker
  w.ring = RingReader();
  w.task_w.reset();
  w.result_r.reset();
  w.buf.release();
  std::string().swap(w.out);
  w.have = w.consumed = w.out_at = 0;
  w.pid = -1;
  w.pidfd.reset();
}

// The worker died on its own (EOF on its pipe, or found exited by the sweep).
inline void Pool::worker_ended(Worker& w) {
  if (w.pid <= 0) return;
  drain(w);
  if (w.pid <= 0 || start_failed(w)) return;
  if (w.queue.empty()) {
    w.task_w.reset();
    reap(w.pid, leave_grace(), w.pidfd.get());
    close_pipes(w);
    return;
  }
  // Wait briefly for the exit to complete (EOF can come a moment before the exit status),
  // then take its group down with it: processes the function started must not outlive it.
  auto deadline = Clock::now() + std::chrono::milliseconds(100);
  while (!has_exited(w.pid, w.pidfd.get()) && Clock::now() < deadline) ::poll(nullptr, 0, 1);
  kill_tree(w.pid, w.pidfd.get());
  int status = 0;
  std::string why = reap_child(w.pid, w.pidfd.get(), &status) != w.pid
                        ? "ended, but its exit status was collected elsewhere (a SIGCHLD handler calling waitpid?)"
                        : (WIFSIGNALED(status) ? "was " : "exited with ") + describe_wait_status(status);
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGXCPU && options_.cpu_limit.count() > 0)
    why += " after using its CPU time limit of " + std::to_string(options_.cpu_limit.count()) + " s (Options::cpu_limit)";
  settle_queue(w, Status::crashed, "worker process " + std::to_string(w.pid) + " " + why + " while running the function");
  close_pipes(w);
}

inline void Pool::kill_worker(Worker& w, Status status, const std::string& why) {
  kill_tree(w.pid, w.pidfd.get());
  int ignored = 0;
  reap_child(w.pid, w.pidfd.get(), &ignored);
  settle_queue(w, status, why);
  close_pipes(w);
}

// A worker that has run its allowance of functions leaves right after its last frame. It is
// reaped once it has exited (Leaving, woken by its pidfd), not waited for: the parent serves the
// other workers meanwhile, and starts the successor as soon as it is gone. Its region and result
// pipe are kept until then (it may still ring its doorbell).
inline void Pool::retire(Worker& w) {
  note_started(w);
  w.task_w.reset();
  w.ring.publish();
  leaving_.add(w.pid, std::move(w.pidfd), Retired{std::move(w.shared), std::move(w.result_r)}, leave_grace());
  close_pipes(w);
}

// The wall-clock limit of task `id`: its own (Task::timeout), else Options::timeout; 0 = none.
inline std::chrono::milliseconds Pool::time_limit(std::uint64_t id) const {
  const std::chrono::milliseconds own = tasks_.slot_of(id).task.timeout;
  return own.count() > 0 ? own : options_.timeout;
}

// When the function at the front of w's queue is out of time: its time limit after it began,
// plus the hand-over guard once it has returned (then only the parent's reading remains).
inline Clock::time_point Pool::deadline(const Worker& w) const {
  const std::chrono::milliseconds limit = time_limit(w.queue.front().id);
  if (limit.count() <= 0) return Clock::time_point::max();
  Clock::time_point at = w.head_start() + limit;
  if (w.shared && w.shared.block()->returned.load(std::memory_order_acquire) == w.queue.front().id + 1)
    at += std::max<Clock::duration>(handover_guard, 10 * limit);
  return at;
}

inline void Pool::enforce_timeouts(Clock::time_point now) {
  if (options_.timeout.count() <= 0 && !task_timeouts_) return;
  for (auto& w : workers_) {
    if (w->pid <= 0 || w->queue.empty() || starting(*w) || now < deadline(*w)) continue;
    const std::uint64_t head = w->queue.front().id;
    drain(*w);  // it may have finished just now
    if (w->pid <= 0 || w->queue.empty() || w->queue.front().id != head) continue;
    const bool returned = w->shared.block()->returned.load(std::memory_order_acquire) == head + 1;
    const std::string limit = std::to_string(time_limit(head).count());
    kill_worker(*w, Status::timed_out,
                returned ? "returned within the timeout of " + limit +
                               " ms, but its result was not handed over in time; the worker was killed"
                         : "exceeded the timeout of " + limit + " ms and was killed");
  }
}

inline int Pool::poll_timeout_ms() const {
  auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(sweep_interval);
  if (!leaving_.empty()) {
    // Without pidfds, look again soon; with them, by the earliest grace at the latest.
    if (!leaving_.pollable()) wait = std::min(wait, std::chrono::milliseconds(1));
    auto left = std::chrono::ceil<std::chrono::milliseconds>(*leaving_.next_deadline() - Clock::now());
    wait = std::min(wait, std::max(left, std::chrono::milliseconds(0)));
  }
  for (auto& w : workers_)
    if (w->queue.size() > 1) wait = std::min(wait, ring_check_interval);  // see the ring check in run()
  if (!withdrawing_.empty()) wait = std::min(wait, std::chrono::milliseconds(1));  // a task to stop begins any moment
  if (options_.timeout.count() > 0 || task_timeouts_) {
    auto now = Clock::now();
    for (auto& w : workers_) {
      if (w->queue.empty()) continue;
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline(*w) - now);
      wait = std::min(wait, std::max(left, std::chrono::milliseconds(0)));
    }
  }
  return static_cast<int>(wait.count());
}

inline void Pool::remove_dead() {
  workers_.erase(std::remove_if(workers_.begin(), workers_.end(), [](const auto& w) { return w->pid <= 0; }),
                 workers_.end());
}

inline void Pool::shutdown() {
  for (auto& w : workers_) w->task_w.reset();  // every idle worker sees EOF and leaves
  for (auto& w : workers_) {
    if (w->pid > 0) reap(w->pid, leave_grace(), w->pidfd.get());
    close_pipes(*w);
  }
  workers_.clear();
  leaving_.finish([](Retired&&) {});
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_ENDINGS_HPP
