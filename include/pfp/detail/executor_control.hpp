#ifndef PFP_DETAIL_EXECUTOR_CONTROL_HPP
#define PFP_DETAIL_EXECUTOR_CONTROL_HPP

// pfp::Executor, continued: the Feed its backend pulls from, how the pool's thread ends, and what
// a Future or a caller asks while tasks run -- cancel one task, whether it runs, what every
// worker runs (status()), map(). Requests for the process pool go through the control pipe, which
// the pool watches as the feed's side descriptor: a run that asks nothing pays nothing per task.
// Part of executor.hpp, which includes it at its end.

#include <pfp/executor.hpp>

namespace pfp {

// Every call comes from the backend's thread (the threads backend: one at a time, under its lock).
class Executor::QueueFeed final : public detail::Feed {
 public:
  // Each run of a backend numbers its tasks from 0; the executor's count goes on across runs
  // (the inline backend runs once per submit()).
  explicit QueueFeed(Executor& ex) : ex_(ex) {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    base_ = ex_.feed_base_ = ex_.pulls_;
  }
  std::optional<detail::Task> pull() override {
    ex_.drain_wake();
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    if (!skip_withdrawn()) return std::nullopt;
    Waiting w = ex_.waiting_.top();
    ex_.waiting_.pop();
    w.state->pulled_as = ex_.pulls_;
    Pulled pulled{w.fn, std::move(w.state), w.order};
    if (!detail::serves_requests(ex_.options_)) pulled.since = std::chrono::steady_clock::now();  // handed out now
    ex_.pulled_.emplace(ex_.pulls_++, std::move(pulled));
    if (!ex_.queue_options_.stream_results) ex_.space_cv_.notify_all();
    return detail::Task{w.fn, std::move(*w.payload), w.priority, w.timeout};
  }
  std::optional<int> next_priority() override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    if (!skip_withdrawn()) return std::nullopt;
    return ex_.waiting_.top().priority;
  }
  bool finished() override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    return ex_.waiting_.empty() && (ex_.closed_ || ex_.draining_inline_);
  }
  int wake_fd() const override { return ex_.wake_.read_fd(); }
  std::uint64_t signature() const override { return ex_.signature(); }
  void workers_started() override {
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      ex_.workers_forked_ = true;
    }
    ex_.forked_cv_.notify_all();
  }
  void deliver(std::uint64_t seq, Result&& r) override {
    std::shared_ptr<detail::FutureState> state;
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      auto it = ex_.pulled_.find(base_ + seq);
      state = std::move(it->second.state);
      r.function_name = ex_.functions_[it->second.fn].name;
      r.index = static_cast<std::size_t>(it->second.order);
      ex_.pulled_.erase(it);
    }
    if (!ex_.queue_options_.stream_results) ex_.space_cv_.notify_all();
    ex_.complete(*state, std::move(r));
  }
  // The backend stops pulling for good (cancelled, or it cannot start a worker): what waits is
  // cancelled, and an executor nobody closed has failed, so later submissions are refused.
  void drop_rest(const std::string& why) override {
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      ex_.fail_locked(why);
      ex_.cancel_queued_locked(why);
    }
    ex_.settle_set_aside();
  }
  int side_fd() const override { return ex_.control_.read_fd(); }
  void side_ready() override { ex_.control_.drain(); }
  void withdrawn(std::vector<std::uint64_t>& out) override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    for (std::uint64_t pulled_as : ex_.cancel_requests_) out.push_back(pulled_as - base_);
    ex_.cancel_requests_.clear();
  }
  bool wants_report() override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    return ex_.report_wanted_;
  }
  void report(const std::vector<detail::WorkerView>& workers) override {
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      ex_.report_ = workers;
      ex_.report_wanted_ = false;
      ++ex_.report_count_;
    }
    ex_.report_cv_.notify_all();
  }

 private:
  // Drops the cancelled entries at the top of the queue; false if nothing is left.
  bool skip_withdrawn() {
    while (!ex_.waiting_.empty() && ex_.waiting_.top().state->withdrawn) {
      ex_.waiting_.pop();
      --ex_.withdrawn_waiting_;
    }
    return !ex_.waiting_.empty();
  }
  Executor& ex_;
  std::uint64_t base_ = 0;
};

inline void Executor::run_pool() {
  QueueFeed feed(*this);
  try {
    detail::run_feed(task_runner(), options_, feed, &cancel_state_);
  } catch (...) {
    const std::string why = detail::describe_current_exception();
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = why;  // what the backend threw says most (over what its drop_rest() said)
    closed_ = true;
    cancel_queued_locked("not run: the pool failed: " + why);
  }
  {
    // However the backend ended, nothing may wait for it now.
    std::lock_guard<std::mutex> lock(mutex_);
    fail_locked("the pool ended");
    cancel_queued_locked("not run: the pool has ended");
    pool_running_ = false;
  }
  settle_set_aside();
  cancel_state_.close();
  completed_cv_.notify_all();
  space_cv_.notify_all();
  forked_cv_.notify_all();
  report_cv_.notify_all();
}

inline void Executor::run_inline_now() {
  QueueFeed feed(*this);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    draining_inline_ = true;
  }
  struct Done {
    Executor& ex;
    ~Done() {
      std::lock_guard<std::mutex> lock(ex.mutex_);
      ex.draining_inline_ = false;
    }
  } done{*this};
  detail::run_feed(task_runner(), options_, feed, nullptr, &inline_worker_);
}

inline void Executor::cancel_queued_locked(const std::string& why) {
  while (!waiting_.empty()) {
    Waiting w = waiting_.top();
    waiting_.pop();
    if (w.state->withdrawn) {  // has its verdict already
      --withdrawn_waiting_;
      continue;
    }
    Result r = cancelled_result(w.fn, w.order, why);
    if (queue_options_.stream_results) {
      completed_.push_back(r);
      completed_cv_.notify_all();
    }
    set_aside_.emplace_back(std::move(w.state), std::move(r));
  }
  space_cv_.notify_all();
}

inline void Executor::settle_set_aside() {
  std::vector<std::pair<std::shared_ptr<detail::FutureState>, Result>> now;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    now.swap(set_aside_);
  }
  for (auto& [state, r] : now) detail::fulfil(*state, std::move(r));
}

inline bool Executor::ready_locked(const detail::FutureState& s) const {
  std::lock_guard<std::mutex> hub(detail::FutureHub::instance().mutex);
  return s.result.has_value();
}

inline bool Executor::cancel(detail::FutureState& s, std::optional<Result>& settle) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!s.submitted || s.withdrawn || ready_locked(s)) return false;
  if (s.pulled_as == detail::FutureState::not_pulled) {
    // Still in the queue: it stays there, skipped when it comes to the top.
    s.withdrawn = true;
    ++withdrawn_waiting_;
    Result r = cancelled_result(s.fn, s.order, "cancelled before it started (Future::cancel())");
    if (queue_options_.stream_results) {
      completed_.push_back(r);
      completed_cv_.notify_all();
    }
    settle = std::move(r);
    space_cv_.notify_all();
    return true;
  }
  // Pulled: with threads or inline it runs and cannot be stopped; a worker process can.
  if (!detail::serves_requests(options_) || !pool_running_) return false;
  cancel_requests_.push_back(s.pulled_as);
  control_.ring();
  return true;
}

inline std::optional<std::vector<detail::WorkerView>> Executor::ask_pool(std::unique_lock<std::mutex>& lock) {
  // The pool's own thread (a done callback) would wait for itself.
  if (!pool_running_ || !control_.is_open() || std::this_thread::get_id() == pool_thread_) return std::nullopt;
  const std::uint64_t asked = report_count_;
  report_wanted_ = true;
  control_.ring();
  report_cv_.wait_for(lock, std::chrono::seconds(5), [&] { return report_count_ != asked || !pool_running_; });
  if (report_count_ == asked) return std::nullopt;
  return report_;
}

inline bool Executor::running(const detail::FutureState& s) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!s.submitted || s.pulled_as == detail::FutureState::not_pulled || ready_locked(s)) return false;
  // A thread pulls a task when it begins it; a backend that does not report (Backend::mpi) says
  // no more than that it was handed out.
  if (!detail::serves_requests(options_)) return true;
  const std::uint64_t pulled_as = s.pulled_as;
  std::optional<std::vector<detail::WorkerView>> views = ask_pool(lock);
  if (!views) return false;
  for (const detail::WorkerView& v : *views)
    if (v.running && *v.running + feed_base_ == pulled_as) return !ready_locked(s);
  return false;
}

inline ExecutorStatus Executor::status() {
  std::unique_lock<std::mutex> lock(mutex_);
  ExecutorStatus st;
  auto add = [&](int pid, const Pulled& p, std::chrono::steady_clock::time_point since) {
    ExecutorWorker w;
    w.pid = pid;
    w.task = static_cast<std::size_t>(p.order);
    w.function = functions_[p.fn].name;
    w.since = since;
    st.workers.push_back(std::move(w));
    ++st.running;
  };
  if (detail::serves_requests(options_)) {
    if (std::optional<std::vector<detail::WorkerView>> views = ask_pool(lock)) {
      for (const detail::WorkerView& v : *views) {
        auto it = v.running ? pulled_.find(*v.running + feed_base_) : pulled_.end();
        if (it != pulled_.end()) {
          add(v.pid, it->second, v.since);
        } else {
          ExecutorWorker idle;
          idle.pid = v.pid;
          st.workers.push_back(std::move(idle));
        }
      }
    }
  } else {
    const int pid = detail::isolated_workers(options_) ? 0 : static_cast<int>(::getpid());  // 0: unknown
    for (const auto& entry : pulled_) add(pid, entry.second, entry.second.since);
  }
  st.queued = waiting_.size() - withdrawn_waiting_ + pulled_.size() - std::min(st.running, pulled_.size());
  return st;
}

inline void Executor::callback_failed(std::exception_ptr e) noexcept {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!callback_error_) {
      callback_error_ = e;
      return;
    }
  }
  report_lost(e);  // only the first is rethrown
}

inline void Executor::report_lost(std::exception_ptr e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (...) {
    const std::string msg = "pfp::Executor: a done callback threw, and no shutdown() rethrew it: " +
                            detail::describe_current_exception() + "\n";
    [[maybe_unused]] bool ignored = detail::write_all(STDERR_FILENO, msg.data(), msg.size());
  }
}

template <class R, class... A, class Range>
std::vector<R> Executor::map(const Function<R, A...>& fn, const Range& items, std::optional<std::chrono::milliseconds> timeout) {
  static_assert(!std::is_void_v<R>, "pfp::Executor::map: the function returns nothing; use submit()");
  const auto deadline = detail::deadline_after(timeout);
  std::vector<Future<R>> fs;
  auto cancel_from = [&](std::size_t i) {
    for (; i < fs.size(); ++i) fs[i].cancel();
  };
  try {
    for (const auto& item : items) fs.push_back(submit_item(fn, item));
  } catch (...) {
    cancel_from(0);
    throw;
  }
  std::vector<R> out;
  out.reserve(fs.size());
  for (std::size_t i = 0; i < fs.size(); ++i) {
    if (deadline && !fs[i].wait_for(std::max(*deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero()))) {
      std::size_t late = 0;
      for (std::size_t k = i; k < fs.size(); ++k) late += !fs[k].ready();
      cancel_from(i);
      throw error("pfp::Executor::map: the timeout of " + std::to_string(timeout->count()) + " ms passed with " +
                  std::to_string(late) + " of " + std::to_string(fs.size()) + " results not ready; they were cancelled");
    }
    if (!fs[i].result().ok()) cancel_from(i + 1);
    out.push_back(fs[i].get());  // throws task_error for a failed one
  }
  return out;
}

}  // namespace pfp

#endif  // PFP_DETAIL_EXECUTOR_CONTROL_HPP
