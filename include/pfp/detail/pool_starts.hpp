#ifndef PFP_DETAIL_POOL_STARTS_HPP
#define PFP_DETAIL_POOL_STARTS_HPP

// The process pool, continued: how workers start. Up to Options::workers processes (a retired one
// counts until it has exited), each forked with its pipes and a shared region (reused from a gone
// worker where one is spare) and given work at once; when none can be started for a while, the
// tasks that never ran say why. Each worker runs Options::initializer before its first task (see
// worker_life.hpp): a start that fails (the initializer threw, crashed or ran past
// Options::timeout) costs no task, and start_attempts of them in a row for one worker number break
// the run: every task not begun then gets the reason as its verdict, and no worker is started
// again. Part of pool.hpp, which includes it at its end.

#include <pfp/detail/pool.hpp>

namespace pfp {
namespace detail {

inline void Pool::spawn_missing() {
  watch_starts();
  if (!broken_.empty()) {
    fail_rest(broken_);
    return;
  }
  // A retired worker counts until it has exited: never more processes than Options::workers. None
  // for a feed whose every task is already out (a start may cost an initializer).
  const std::optional<std::size_t> hint = feed_.size_hint();
  bool all_out = hint && tasks_.next_seq >= *hint;
  if (all_out && tasks_.pending.empty() && !feed_exhausted()) {
    if (std::optional<std::uint64_t> id = pull_one()) tasks_.hand_back(*id);  // the hint was short
    all_out = false;  // the feed says for itself now
  }
  while (workers_.size() + leaving_.size() < target_workers_ && (!tasks_.pending.empty() || (!feed_exhausted() && !all_out))) {
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
    const WorkerInfo info = starts_.forking(w->slot, target_workers_);
    w->pid = fork_worker([&] { worker_loop(task_fd, result_fd, block, ring, run, opt, info); }, close_in_child,
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
  if (!broken_.empty()) {
    fail_rest(broken_);
    return;
  }
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
  fail_rest("not run: could not start a worker process: " + last_spawn_error_);
}

// Every task not begun -- pending, or still in the feed (Feed::drop_rest) -- gets `why`.
inline void Pool::fail_rest(const std::string& why) {
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

inline bool Pool::starting(const Worker& w) const {
  return options_.initializer && w.shared &&
         w.shared.block()->start_state.load(std::memory_order_acquire) == worker_starting;
}

// Notes the workers whose initializer returned (their tasks' time begins now), and kills the ones
// whose initializer has run past Options::timeout.
inline void Pool::watch_starts() {
  if (!options_.initializer) return;
  const auto now = Clock::now();
  for (auto& w : workers_) {
    if (w->pid <= 0 || !w->shared || !starts_.waiting(w->slot)) continue;
    const std::uint32_t state = w->shared.block()->start_state.load(std::memory_order_acquire);
    if (state == worker_ready) {
      starts_.started(w->slot);
      if (!w->queue.empty() && !w->head_began()) w->head_since = now;
    } else if (state == worker_starting && options_.timeout.count() > 0 && now - starts_.since(w->slot) > options_.timeout) {
      kill_tree(w->pid, w->pidfd.get());
      int ignored = 0;
      reap_child(w->pid, w->pidfd.get(), &ignored);
      start_lost(*w, "the initializer ran past Options::timeout (" + std::to_string(options_.timeout.count()) +
                         " ms) and its worker process was killed");
    }
  }
}

// A worker that started and is going away before watch_starts() saw it start.
inline void Pool::note_started(const Worker& w) {
  if (w.shared && starts_.waiting(w.slot) && w.shared.block()->start_state.load(std::memory_order_acquire) == worker_ready)
    starts_.started(w.slot);
}

// A worker ended before its initializer returned (it threw, or the process died): true if so,
// once the worker is reaped and its start counted as failed.
inline bool Pool::start_failed(Worker& w) {
  if (!options_.initializer || !w.shared) return false;
  const SharedBlock* block = w.shared.block();
  const std::uint32_t state = block->start_state.load(std::memory_order_acquire);
  if (state == worker_ready) return false;
  // As in worker_ended(): the exit status can come a moment after EOF; take its group down.
  const auto deadline = Clock::now() + std::chrono::milliseconds(100);
  while (!has_exited(w.pid, w.pidfd.get()) && Clock::now() < deadline) ::poll(nullptr, 0, 1);
  kill_tree(w.pid, w.pidfd.get());
  int status = 0;
  const bool reaped = reap_child(w.pid, w.pidfd.get(), &status) == w.pid;
  std::string why;
  if (state == worker_start_failed)
    why.assign(block->start_error, ::strnlen(block->start_error, sizeof block->start_error));
  else
    why = "its worker process " + std::to_string(w.pid) +
          (reaped ? (WIFSIGNALED(status) ? " was " : " exited with ") + describe_wait_status(status) : std::string(" ended")) +
          " while running the initializer";
  start_lost(w, why);
  return true;
}

// w (reaped) never started: the tasks it holds go back (none began); the run is broken when that
// makes start_attempts failed starts in a row for its number.
inline void Pool::start_lost(Worker& w, const std::string& why) {
  std::vector<std::uint64_t> never_began;
  for (const Queued& q : w.queue) never_began.push_back(q.id);
  w.queue.clear();
  tasks_.hand_back(never_began);
  const unsigned number = w.slot;
  close_pipes(w);
  if (!starts_.failed(number) || !broken_.empty()) return;
  broken_ = broken_reason(number, why);
  // The workers that did start finish what they began and leave; nothing else begins.
  for (auto& other : workers_) {
    if (other->pid <= 0) continue;
    take_back_from(*other);
    other->task_w.reset();
  }
  fail_rest(broken_);
}

// How long a worker told to leave has before it is killed: its finalizer and its state's
// destructor may have work to do.
inline std::chrono::milliseconds Pool::leave_grace() const {
  return options_.finalizer || options_.initializer.state_type() ? std::chrono::milliseconds(10'000)
                                                                 : std::chrono::milliseconds(1000);
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_STARTS_HPP
