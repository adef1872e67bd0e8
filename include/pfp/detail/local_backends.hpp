#ifndef PFP_DETAIL_LOCAL_BACKENDS_HPP
#define PFP_DETAIL_LOCAL_BACKENDS_HPP

// The backends that run a Feed (feed.hpp) inside this process: a pool of threads, or the calling
// thread alone.
//
// In-process backends give the same Results as the process backend for everything a function
// does by returning or throwing: the same status, result, error text ("<demangled type>: what()"),
// attempts and retries of exceptions (Options::retries with Options::retry_exceptions), the same
// Options::max_result_bytes verdict. What they cannot give is isolation:
//   - a crash (a signal, abort(), exit()) in a function ends the whole program, the caller included;
//   - Options::timeout is not enforced: a thread cannot be killed, so a function runs to its end
//     and keeps the verdict it reaches (a hang hangs the run);
//   - Options::memory_limit, Options::cpu_limit, Options::max_tasks_per_worker and
//     Options::threads do not apply (they are properties of worker processes);
//   - cancel (CancelState) and Feed::stop_requested() stop the pulling of new tasks; tasks already
//     running finish and are delivered with their own verdict (the process backend kills them);
//   - functions share the process: what one changes in globals, the context or its args is seen
//     by the others and by the caller. With threads they run concurrently and must be thread-safe.
// Result::pid is this process's pid. Each worker (a thread, or the calling thread inline) runs
// Options::initializer before its first task and Options::finalizer when the run ends (see
// worker_life.hpp); one whose initializer throws start_attempts times in a row breaks the run.

#include <pfp/detail/attempt.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/wake_pipe.hpp>
#include <pfp/detail/worker_life.hpp>
#include <pfp/error.hpp>
#include <pfp/detail/feed.hpp>
#include <pfp/options.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/result.hpp>
#include <pfp/serialization.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>
#include <unistd.h>

namespace pfp {
namespace detail {

/// The error of a task a stopped run never began (Status::cancelled), on every backend here.
inline constexpr const char* not_started_reason = "cancelled before it started";

/// Like the process backend, an ok result that pfp could not send (too deep to encode, or larger
/// than Options::max_result_bytes once encoded) becomes Status::exception.
inline void refuse_unsendable(Result& r, const Options& opt) {
  if (r.status != Status::ok) return;
  constexpr std::size_t scalar_max = 1 + 10;  // the type byte and a varint or a double
  if ((r.result.is_null() || r.result.is_bool() || r.result.is_number()) && opt.max_result_bytes >= scalar_max) return;
  try {
    const std::size_t size = encoded_size(r.result);
    if (size > opt.max_result_bytes) refuse_result(r, oversized(size, opt));
  } catch (...) {
    refuse_result(r, unserializable());
  }
}

/// Runs one attempt of `task` in the calling thread and returns its verdict: Status::ok with what
/// the runner put in r.result, or Status::exception with "<demangled type>: what()" and a null
/// result. Like the process backend, an ok result that pfp could not send (too deep to encode, or
/// larger than Options::max_result_bytes once encoded) becomes Status::exception. Never throws
/// except std::bad_alloc.
inline Result run_attempt_here(const FeedRunner& run, const Options& opt, const TaskView& task) {
  Result r;
  const auto start = std::chrono::steady_clock::now();
  run_attempt(run, task, opt, r);
  r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
  refuse_unsendable(r, opt);
  return r;
}

/// Runs `task` in the calling thread to its final verdict: attempts are repeated while the
/// function throws, Options::retry_exceptions is set and fewer than 1 + Options::retries were
/// made. The Result is ready for Feed::deliver: index = task.seq, empty function_name, pid =
/// `pid` (0: getpid()), attempts = attempts made, duration = the last attempt's.
inline Result run_task_here(const FeedRunner& run, const Options& opt, const TaskView& task, int pid = 0) {
  Result r;
  for (unsigned attempts = 1;; ++attempts) {
    r = run_attempt_here(run, opt, task);
    r.attempts = attempts;
    if (!retry_wanted(r, opt)) break;
  }
  r.function_name.clear();
  r.index = static_cast<std::size_t>(task.seq);
  r.pid = pid ? pid : static_cast<int>(::getpid());
  return r;
}

/// Runs the tasks first_fn, first_fn + 1, ... of a run (Feed::pull_run) one after another in the
/// calling thread, each to its final verdict as run_task_here does, written into places[k] (name
/// and index are the feed's). One clock reading per task: a duration runs from the end of the
/// task before (as in a process worker's run). Between tasks it stops once `cancel` is requested:
/// the tasks not begun keep Status::cancelled with the reason drop_rest gives. Returns the tasks
/// that ran. Never throws except std::bad_alloc.
inline std::size_t run_tasks_in_place(const FeedRunner& run, const Options& opt, TaskView view, std::size_t n,
                                      Result* places, int pid, const CancelState* cancel) {
  auto t = std::chrono::steady_clock::now();
  std::size_t k = 0;
  for (; k < n; ++k, ++view.seq, ++view.fn) {
    if (cancel && cancel->requested()) break;
    Result& r = places[k];
    for (unsigned attempts = 1;; ++attempts) {
      run_attempt(run, view, opt, r);
      const auto end = std::chrono::steady_clock::now();
      r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(end - t);
      t = end;
      refuse_unsendable(r, opt);
      r.attempts = attempts;
      if (!retry_wanted(r, opt)) break;
    }
    r.pid = pid;
  }
  for (std::size_t rest = k; rest < n; ++rest) places[rest].error = not_started_reason;
  return k;
}

/// Waits until one of the descriptors is readable (-1 = none). A feed that has no wake_fd() but
/// may still give tasks breaks the Feed contract; it is looked at again every 10 ms instead of
/// hanging the run. A signal ends the wait early: callers look again anyway.
inline void wait_readable(int feed_fd, int cancel_fd, int interrupt_fd = -1) noexcept {
  pollfd fds[3];
  nfds_t n = 0;
  for (int fd : {feed_fd, cancel_fd, interrupt_fd})
    if (fd >= 0) fds[n++] = pollfd{fd, POLLIN, 0};
  const int rc = ::poll(fds, n, feed_fd >= 0 ? -1 : 10);
  if (rc > 0 && feed_fd >= 0 && (fds[0].revents & POLLNVAL)) ::poll(nullptr, 0, 10);  // a closed wake_fd: no busy loop
}

/// Whether the run must stop pulling: cancelled, or the feed asks for it (fail-fast).
inline bool stop_wanted(Feed& feed, const CancelState* cancel) {
  return (cancel && cancel->requested()) || feed.stop_requested();
}

/// Tells the feed that the tasks it has not given will not run, as the process backend does when
/// a run is stopped. What drop_rest() throws is kept in `error` unless an earlier exception is.
inline void drop_rest_noexcept(Feed& feed, std::exception_ptr& error, const char* why = not_started_reason) noexcept {
  try {
    feed.drop_rest(why);
  } catch (...) {
    if (!error) error = std::current_exception();
  }
}

/// The inline backend: pulls and runs the tasks of `feed` one after another in the calling
/// thread (TaskView::worker = 0), delivering each Result as soon as its task ends. Between tasks
/// it stops when cancel->requested() or feed.stop_requested(), calling feed.drop_rest(). When the
/// feed has nothing now but is not finished it sleeps in poll() on feed.wake_fd() (and
/// cancel->wake_fd()). Returns when the feed is finished or the run stopped.
/// Throws what feed.pull() throws (every task that ran was delivered by then), and what
/// deliver() or stop_requested() throws (after stopping the run as if cancelled).
/// Options::timeout, memory_limit, cpu_limit, max_tasks_per_worker are not enforced (see top of file).
/// The calling thread is worker 0: its initializer runs before the first task and its finalizer
/// when the run returns, or, with `kept`, once for all the runs given the same KeptWorker.
inline void run_feed_inline(const FeedRunner& run, const Options& opt, Feed& feed, CancelState* cancel,
                            KeptWorker* kept = nullptr) {
  std::optional<WorkerLife> own;
  if (!kept) own.emplace(opt, WorkerInfo{});
  CurrentScope scope(kept ? kept->current() : own->current());
  const std::optional<std::string> broken = kept ? kept->enter() : own->begin_here();
  struct End {
    std::optional<WorkerLife>& life;
    ~End() {
      if (life) life->end();
    }
  } end{own};
  std::exception_ptr error;  // what deliver() or stop_requested() threw: the run stops
  if (broken) {  // the worker could not start: nothing runs, and the feed hears why
    drop_rest_noexcept(feed, error, broken->c_str());
    if (error) std::rethrow_exception(error);
    return;
  }
  for (std::uint64_t seq = 0;;) {
    try {
      if (stop_wanted(feed, cancel)) break;
    } catch (...) {
      error = std::current_exception();
      break;
    }
    std::optional<Task> task = feed.pull();  // a throw goes straight out: no task is in flight
    if (!task) {
      if (feed.finished()) return;
      wait_readable(feed.wake_fd(), cancel ? cancel->wake_fd() : -1);
      continue;
    }
    TaskView view;
    view.seq = seq++;
    view.fn = task->fn;
    view.payload = task->payload;
    view.worker = 0;
    try {
      feed.deliver(view.seq, run_task_here(run, opt, view));
    } catch (...) {
      error = std::current_exception();
      break;
    }
  }
  drop_rest_noexcept(feed, error);
  if (error) std::rethrow_exception(error);
}

/// The threads backend's state for one run: worker threads share the Feed under one mutex, and
/// write the Results of runs (Feed::pull_run) in place without it.
class ThreadRun {
 public:
  ThreadRun(const FeedRunner& run, const Options& opt, Feed& feed, CancelState* cancel)
      : run_(run), opt_(opt), feed_(feed), cancel_(cancel) {}
  ThreadRun(const ThreadRun&) = delete;
  ThreadRun& operator=(const ThreadRun&) = delete;

  void run() {
    hint_ = feed_.size_hint();
    const unsigned n = effective_workers(opt_, hint_);
    workers_ = n;
    std::vector<std::thread> threads;
    threads.reserve(n > 0 ? n - 1 : 0);
    for (unsigned slot = 1; slot < n; ++slot) {
      try {
        threads.emplace_back([this, slot] { work(slot); });
      } catch (const std::system_error&) {
        break;  // the system refuses more threads: the ones that exist share the work
      }
    }
    work(0);  // the calling thread is worker slot 0
    for (std::thread& t : threads) t.join();
    if (consumer_error_) std::rethrow_exception(consumer_error_);
    if (source_error_) std::rethrow_exception(source_error_);
  }

 private:
  // One worker thread: start (Options::initializer), then pull, run (unlocked), deliver, until the
  // feed has nothing more for it; then its finalizer. A thread that could not start breaks the
  // run: nothing more is pulled, and the feed hears why (Feed::drop_rest).
  void work(unsigned slot) noexcept {
    WorkerLife life(opt_, WorkerInfo{slot, workers_, 0});
    CurrentScope scope(life.current());
    struct End {
      WorkerLife& life;
      ~End() { life.end(); }  // not under the lock: the finalizer may take its time
    } end{life};
    std::optional<std::string> broken;
    try {
      broken = life.begin_here();
    } catch (...) {  // out of memory for the reason's text
      broken = "not run: the worker initializer could not be run";
    }
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken && broken_.empty()) {
      broken_ = std::move(*broken);
      close(true, broken_.c_str());
    }
    if (broken) return;
    try {
      for (;;) {
        if (run_in_place(lock, slot)) continue;
        std::optional<Task> task = next(lock);
        if (!task) return;
        TaskView view;
        view.seq = next_seq_++;
        view.fn = task->fn;
        view.payload = task->payload;
        view.worker = slot;
        lock.unlock();
        Result r = run_task_here(run_, opt_, view, pid_);
        lock.lock();
        deliver_locked(view.seq, std::move(r));
      }
    } catch (...) {  // out of memory outside a task: the run stops
      if (!lock.owns_lock()) lock.lock();
      consumer_failed();
    }
  }

  // The batched path (Feed::pull_run): takes a run of tasks whose Results the feed keeps, runs
  // them unlocked straight into their places, and returns true; false when the feed gives no run
  // (then next() pulls one task) or the run takes no more. Called and returns with the lock held.
  // A run holds about run_budget of work, measured, and at most a quarter of each thread's share
  // of what is left: it starts at one task and at most doubles, so long tasks are not hoarded.
  bool run_in_place(std::unique_lock<std::mutex>& lock, unsigned slot) {
    if (closed_ || !runs_) return false;
    try {
      if (stop_wanted(feed_, cancel_)) return false;  // next() stops the run
    } catch (...) {
      consumer_failed();
      return false;
    }
    TaskView view;
    Result* places = nullptr;
    const std::size_t n = feed_.pull_run(run_size(), view.fn, places);
    if (n == 0) {
      runs_ = false;  // a feed gives runs from the start or never
      return false;
    }
    view.seq = next_seq_;
    next_seq_ += n;
    view.worker = slot;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    std::size_t ran = 0;
    try {
      ran = run_tasks_in_place(run_, opt_, view, n, places, pid_, cancel_);
    } catch (...) {  // out of memory: the rest of the run keeps Status::cancelled
      lock.lock();
      consumer_failed();
      return true;
    }
    const auto took = std::chrono::steady_clock::now() - t0;
    lock.lock();
    if (ran) learn(took / ran, n);
    if (ran < n) close(true);  // cancelled
    return true;
  }

  std::size_t run_size() const noexcept {
    std::size_t size = last_run_ * 2;
    if (mean_task_.count() > 0) size = std::min<std::size_t>(size, std::max<std::int64_t>(1, run_budget / mean_task_));
    if (hint_) {
      const std::size_t left = *hint_ > next_seq_ ? static_cast<std::size_t>(*hint_ - next_seq_) : 0;
      size = std::min<std::size_t>(size, left / (4 * std::size_t{workers_}));
    }
    return std::max<std::size_t>(1, std::min<std::size_t>(size, max_run));
  }

  void learn(std::chrono::steady_clock::duration per_task, std::size_t n) noexcept {
    const auto d = std::chrono::duration_cast<std::chrono::nanoseconds>(per_task);
    mean_task_ = mean_task_.count() ? (mean_task_ * 3 + d) / 4 : d;
    last_run_ = n;
  }

  void deliver_locked(std::uint64_t seq, Result&& r) noexcept {
    try {
      feed_.deliver(seq, std::move(r));
    } catch (...) {
      consumer_failed();
    }
  }

  // The next task for this thread, or nullopt when the run takes no more (finished, stopped, or
  // failed). Called and returns with the lock held.
  std::optional<Task> next(std::unique_lock<std::mutex>& lock) {
    for (;;) {
      if (closed_) return std::nullopt;
      try {
        if (stop_wanted(feed_, cancel_)) {
          close(true);
          return std::nullopt;
        }
      } catch (...) {
        consumer_failed();
        return std::nullopt;
      }
      try {
        std::optional<Task> task = feed_.pull();
        if (task) return task;
        if (feed_.finished()) {
          close(false);
          return std::nullopt;
        }
        if (polling_) {
          cv_.wait(lock);  // another thread waits on the descriptors for all
          continue;
        }
        wait_for_more(lock);
      } catch (...) {  // no more tasks; the ones given finish and are delivered
        if (!source_error_) source_error_ = std::current_exception();
        close(false);
        return std::nullopt;
      }
    }
  }

  // Sleeps in poll() on the feed's and the cancel's descriptors, and on interrupt_ (close()
  // writes to it), with the lock released; then lets the threads on the condition variable look.
  void wait_for_more(std::unique_lock<std::mutex>& lock) {
    if (!interrupt_.is_open()) interrupt_.open();
    const int feed_fd = feed_.wake_fd();
    const int cancel_fd = cancel_ ? cancel_->wake_fd() : -1;
    polling_ = true;
    lock.unlock();
    wait_readable(feed_fd, cancel_fd, interrupt_.read_fd());
    lock.lock();
    polling_ = false;
    cv_.notify_all();
  }

  // deliver(), stop_requested() or drop_rest() threw: the run stops as if cancelled.
  void consumer_failed() noexcept {
    if (!consumer_error_) consumer_error_ = std::current_exception();
    close(true);
  }

  // No more pulls; with `drop`, the feed hears that what it has not given will not run. Wakes
  // every waiting thread. Called with the lock held.
  void close(bool drop, const char* why = not_started_reason) noexcept {
    if (closed_) return;
    closed_ = true;
    if (drop) drop_rest_noexcept(feed_, consumer_error_, why);
    interrupt_.ring();
    cv_.notify_all();
  }

  static constexpr std::chrono::nanoseconds run_budget{std::chrono::microseconds(200)};
  static constexpr std::size_t max_run = 1024;

  const FeedRunner& run_;
  const Options& opt_;
  Feed& feed_;
  CancelState* cancel_;
  const int pid_ = static_cast<int>(::getpid());
  std::mutex mutex_;               // guards every member below and every call to feed_
  std::optional<std::size_t> hint_;  // feed_.size_hint(), read once
  unsigned workers_ = 1;           // threads of the run (WorkerInfo::workers)
  bool runs_ = true;               // the feed may give runs (pull_run)
  std::size_t last_run_ = 0;       // tasks in the last run taken (the next may be twice that)
  std::chrono::nanoseconds mean_task_{0};  // per task in recent runs, the threads' overhead included
  std::condition_variable cv_;
  std::uint64_t next_seq_ = 0;
  std::string broken_;             // why the run is broken (a thread could not start), or empty
  bool closed_ = false;            // no thread pulls again
  bool polling_ = false;           // one thread is in wait_for_more()
  std::exception_ptr source_error_;    // pull(), finished() or wake_fd() threw
  std::exception_ptr consumer_error_;  // deliver(), stop_requested() or drop_rest() threw
  WakePipe interrupt_;                 // wakes the polling thread when the run closes
};

/// The threads backend: runs the tasks of `feed` on Options::workers threads of this process
/// (0 = std::thread::hardware_concurrency(); never more than feed.size_hint()), the calling
/// thread being one of them; TaskView::worker is the thread's slot, 0 .. workers-1. Every call to
/// the Feed is made under one mutex, so the Feed needs no locking of its own; the runner is called
/// concurrently and must be thread-safe. A feed that gives runs (Feed::pull_run) is taken a run at
/// a time per thread, the verdicts written in place without a lock (about 200 µs of work a run,
/// from one task up). Between tasks each thread stops when cancel->requested() or -- between
/// runs -- feed.stop_requested() (then feed.drop_rest() is called once); tasks already running
/// finish and are delivered. With nothing ready in a feed that is not finished, one thread sleeps in
/// poll() on feed.wake_fd() and cancel->wake_fd(), the others on a condition variable.
/// Returns when every pulled task was delivered and no more will be pulled. Throws, once every
/// task pulled was delivered: what deliver(), stop_requested() or drop_rest() threw (the run
/// stops as if cancelled), else what pull() or finished() threw (the run stops pulling), or
/// pfp::error when no descriptor is left for its internal wake-up pipe.
/// Options::timeout, memory_limit, cpu_limit, max_tasks_per_worker are not enforced (see top of file).
inline void run_feed_threads(const FeedRunner& run, const Options& opt, Feed& feed, CancelState* cancel) {
  ThreadRun(run, opt, feed, cancel).run();
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_LOCAL_BACKENDS_HPP
