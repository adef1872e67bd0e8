#ifndef PFP_DETAIL_POOL_STARTS_HPP
#define PFP_DETAIL_POOL_STARTS_HPP

// The process pool, continued: how workers start. Up to Options::workers processes (a retired one
// counts until it has exited), each forked with its pipes and a shared region (reused from a gone
// worker where one is spare) and given work at once; when none can be started for a while, the
// tasks that never ran say why. Part of pool.hpp, which includes it at its end.

#include <pfp/detail/pool.hpp>

namespace pfp {
namespace detail {

inline void Pool::spawn_missing() {
  // A retired worker counts until it has exited: never more processes than Options::workers.
  while (workers_.size() + leaving_.size() < target_workers_ && (!tasks_.pending.empty() || !feed_exhausted())) {
    if (!spawn_one()) break;
    dispatch();  // the new worker gets its work now, not after its siblings have been forked
  }
}

inline unsigned Pool::free_slot() const {
  for (unsigned s = 0;; ++s) {
    bool used = false;
    for (auto& w : workers_) used = used || w->slot == s;
    if (!used) return s;
  }
}

inline bool Pool::spawn_one() {
  auto w = std::make_unique<Worker>();
  last_failed_errno = 0;
  w->slot = free_slot();
  std::vector<int>& close_in_child = close_in_child_;  // kept: no allocation per process
  close_in_child.clear();
  for (auto& other : workers_) {
    if (other->task_w) close_in_child.push_back(other->task_w.get());
    if (other->result_r) close_in_child.push_back(other->result_r.get());
    if (other->pidfd) close_in_child.push_back(other->pidfd.get());
  }
  if (cancel_ && cancel_->wake_fd() >= 0) close_in_child.push_back(cancel_->wake_fd());
  leaving_.list_descriptors(close_in_child, [&](const Retired& r) {
    if (r.result_r) close_in_child.push_back(r.result_r.get());
  });
  try {
    // Non-blocking from the start (the parent's ends must be); the worker makes its own ends
    // blocking again, and sizes its result pipe: fewer system calls in the parent per process.
    Pipe tasks = make_pipe(true);
    Pipe results = make_pipe(true);
    if (spare_regions_.empty()) {
      w->shared = SharedRegion::create();
    } else {
      w->shared = std::move(spare_regions_.back());
      spare_regions_.pop_back();
      w->shared.renew();
    }
    w->shared.block()->remote_allowed.store(remote_transfer_supported && !remote_reads_refused.load(), std::memory_order_relaxed);
    close_in_child.push_back(tasks.write.get());
    close_in_child.push_back(results.read.get());
    const int task_fd = tasks.read.get();
    const int result_fd = results.write.get();
    SharedBlock* block = w->shared.block();
    char* ring = w->shared.ring();
    const FeedRunner& run = run_;
    const Options& opt = options_;
    const unsigned slot = w->slot;
    w->pid = fork_worker([&] { worker_loop(task_fd, result_fd, block, ring, run, opt, slot); }, close_in_child,
                         &signal_plan_, &w->pidfd);
    w->ring = RingReader(block, ring);
    w->task_w = std::move(tasks.write);
    w->result_r = std::move(results.read);
  } catch (const error& e) {
    last_spawn_error_ = e.what();
    last_spawn_errno_ = last_failed_errno;
    return false;
  }
  workers_.push_back(std::move(w));
  return true;
}

// Every worker failed to start or died and none can be started again. A shortage the system may
// soon relieve (EAGAIN: the process limit; EMFILE, ENFILE: descriptors; ENOMEM) is waited out
// with a doubling back-off, about six seconds in all; any other failure gets a few quick tries.
// A cancel ends the wait at once (turn() then cancels the run). After that the tasks that never
// ran, and every task the feed would still give, say why instead of hanging.
inline void Pool::give_up() {
  const int e = last_spawn_errno_;
  const bool transient = e == EAGAIN || e == EMFILE || e == ENFILE || e == ENOMEM;
  const auto until = Clock::now() + (transient ? std::chrono::milliseconds(6000) : std::chrono::milliseconds(300));
  for (int pause_ms = 10; workers_.empty(); pause_ms = std::min(2 * pause_ms, 1000)) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left <= 0) break;
    pollfd wake{cancel_ ? cancel_->wake_fd() : -1, POLLIN, 0};
    ::poll(&wake, 1, static_cast<int>(std::min<long long>(pause_ms, left)));
    if (cancel_ && cancel_->requested()) return;
    spawn_missing();
  }
  if (!workers_.empty()) return;
  const std::string why = "not run: could not start a worker process: " + last_spawn_error_;
  while (!tasks_.pending.empty()) {
    std::uint64_t id = tasks_.pending.front();
    tasks_.pending.pop_front();
    Result& r = tasks_.result_of(id);
    r.status = Status::cancelled;
    r.error = why;
    deliver(id);
  }
  if (!feed_exhausted()) {
    feed_done_ = true;
    try {
      feed_.drop_rest(why);
    } catch (...) {
      consumer_failed();
    }
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_STARTS_HPP
