#ifndef PFP_POOL_HPP
#define PFP_POOL_HPP

// The process backend: runs a Feed (feed.hpp) on a pool of forked workers, each with a private
// task pipe (parent -> worker: task messages), a result pipe and a shared-memory ring
// (worker -> parent: framed Results, see channel.hpp), driven by one poll() loop in the parent.
// The parent always knows which tasks each worker holds, in order, and which one it began, so a
// worker that dies or hangs costs exactly the task it was running.
//
// A task message is four native u64 words -- id, seq, fn, payload size -- then the payload; or,
// for a run of tasks with consecutive ids, seqs and fns and no payloads (Feed::pull_run), the same
// words for the first task with run_flag | count in place of the size. The id names the task on
// the wire (it picks the parent's slot and is never reused within a run); the frame a worker sends
// back carries it as its index.

#include <pfp/channel.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/remote.hpp>
#include <pfp/detail/task_clock.hpp>
#include <pfp/error.hpp>
#include <pfp/feed.hpp>
#include <pfp/options.hpp>
#include <pfp/process.hpp>
#include <pfp/result.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

namespace pfp {
namespace detail {

using Clock = std::chrono::steady_clock;

/// Workers for a run of `tasks` tasks (unknown: as many as the options allow).
inline unsigned effective_workers(const Options& o, std::optional<std::size_t> tasks = std::nullopt) {
  unsigned n = o.workers ? o.workers : std::thread::hardware_concurrency();
  if (n == 0) n = 1;
  return tasks ? static_cast<unsigned>(std::min<std::size_t>(n, std::max<std::size_t>(*tasks, 1))) : n;
}

/// Most tasks one worker holds at once.
inline constexpr unsigned max_pipeline_depth = 512;
/// Task message header: id, seq, fn, payload size (or run_flag | count).
inline constexpr std::size_t task_header_size = 4 * sizeof(std::uint64_t);
/// A task's id on the wire is its slot's ticket shifted left by run_bits plus its place in the
/// slot's run, so one message can carry up to max_run consecutive tasks.
inline constexpr unsigned run_bits = 10;
inline constexpr std::uint64_t max_run = std::uint64_t{1} << run_bits;
/// Most tasks one worker holds at once when they come in runs (Feed::pull_run): a few runs, so a
/// worker always has the next one while the parent takes the results of the last.
inline constexpr unsigned max_run_pipeline_depth = 4 * max_run;
/// Set in a task message's fourth word when the message is a run of `count` tasks with
/// consecutive ids, seqs and fns and no payloads.
inline constexpr std::uint64_t run_flag = std::uint64_t{1} << 63;

// ---------------------------------------------------------------- worker side

inline void apply_memory_limit(const Options& opt) noexcept {
  if (opt.memory_limit == 0) return;
  rlimit rl{static_cast<rlim_t>(opt.memory_limit), static_cast<rlim_t>(opt.memory_limit)};
  ::setrlimit(RLIMIT_AS, &rl);
}

// RLIMIT_CPU counts the whole process, and a worker runs many functions: before each one the soft
// limit is moved to what the worker has used so far plus the allowance.
inline void arm_cpu_limit(const Options& opt) noexcept {
  if (opt.cpu_limit.count() <= 0) return;
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  rlimit rl{};
  ::getrlimit(RLIMIT_CPU, &rl);
  // Rounded up: the kernel counts whole seconds, so a function gets at least its allowance and at
  // most one second more.
  long usec = static_cast<long>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  rlim_t used = static_cast<rlim_t>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + usec / 1000000 + (usec % 1000000 ? 1 : 0));
  rl.rlim_cur = used + static_cast<rlim_t>(opt.cpu_limit.count());
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max) rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_CPU, &rl);
}

/// In a worker process: the descriptor its frames go to (-1 elsewhere). For fault-injection tests
/// that must write broken frames the way a dying worker would; not for ordinary code.
inline int worker_result_fd = -1;
/// In a worker process: the index a frame for the running task must carry (its id). For the
/// same fault-injection tests.
inline std::uint64_t worker_current_ticket = 0;
/// Test hook, in the parent: called with the worker's pid when its result stream is found corrupt,
/// before the worker is killed (a test can make the parent slow to react, as a busy machine does).
inline void (*on_corrupt_stream)(pid_t) = nullptr;

// Runs one task into r (timed by `clock`, started by the caller) and encodes its frame: straight
// into `ring` (reserved there, not yet published) when it fits and is an ordinary frame, else into
// `frame`. Returns how many bytes of the frame wait in the ring for RingWriter::commit (0: the
// frame is in `frame`). Strings of remote_min bytes or more are left in r (a frame_kind_remote
// frame), which must then stay untouched until the parent has answered. r is reused from task to
// task.
inline std::size_t run_one(std::uint64_t id, const TaskView& task, const FeedRunner& run, const Options& opt,
                           std::string& frame, Result& r, TaskClock& clock, std::size_t remote_min = no_remote,
                           RingWriter* ring = nullptr) {
  const std::size_t index = static_cast<std::size_t>(id);
  r.function_name.clear();
  if (!r.result.is_null()) r.result = Value();
  r.error.clear();
  r.pid = 0;
  r.attempts = 0;
  r.index = index;
  try {
    run(task, r);
    r.status = Status::ok;
    r.error.clear();
  } catch (const std::bad_alloc&) {
    r.status = Status::exception;
    r.error = describe_current_exception();
    if (opt.memory_limit)
      r.error += " (the worker's address space is limited to " + std::to_string(opt.memory_limit) +
                 " bytes by Options::memory_limit)";
    r.result = Value();
  } catch (...) {
    r.status = Status::exception;
    r.error = describe_current_exception();
    r.result = Value();
  }
  r.duration = std::chrono::nanoseconds(clock.stop());
  r.index = index;  // whatever the function did to its Result, the frame names the right task
  try {
    const FramePlan plan = plan_result_frame(r, remote_min);
    if (plan.full_size > opt.max_result_bytes) {
      std::string().swap(frame);
      r.status = Status::exception;
      r.result = Value();
      r.error = "pfp: the result of " + std::to_string(plan.full_size) + " bytes exceeds Options::max_result_bytes (" +
                std::to_string(opt.max_result_bytes) + " bytes)";
      encode_result_frame_into(r, frame);
      return 0;
    }
    if (ring && plan.kind == frame_kind_result) {
      if (char* at = ring->reserve(plan.size)) {
        write_result_frame(r, plan, at);
        frame.clear();
        return plan.size;
      }
    }
    frame.resize(plan.size);
    write_result_frame(r, plan, frame.data());
  } catch (...) {
    r.status = Status::exception;
    r.error = "pfp: could not serialize the result: " + describe_current_exception();
    r.result = Value();
    std::string().swap(frame);
    encode_result_frame_into(r, frame);
  }
  return 0;
}

// Every byte ever written to the result pipe: what the parent has read plus what is still queued.
inline std::uint64_t bytes_ever_written(int result_fd, SharedBlock* shared) noexcept {
  for (;;) {
    std::uint64_t seq = shared->pipe_read_seq.load(std::memory_order_acquire);
    if (seq & 1) {  // the parent is in the middle of a read
      sched_yield();
      continue;
    }
    std::uint64_t total = shared->pipe_read_total.load(std::memory_order_acquire);
    int queued = 0;
    if (::ioctl(result_fd, FIONREAD, &queued) != 0) queued = 0;
    if (shared->pipe_read_seq.load(std::memory_order_acquire) == seq) return total + static_cast<std::uint64_t>(queued);
  }
}

[[noreturn]] inline void worker_loop(int task_fd, int result_fd, SharedBlock* shared, char* ring, const FeedRunner& run,
                                     const Options& opt, unsigned slot) {
  // Grown without zero-filling: only the bytes read are ever touched.
  std::size_t in_size = std::size_t{1} << 16;
  std::unique_ptr<char[]> in(new char[in_size]);
  std::size_t have = 0;  // bytes in `in`
  std::size_t at = 0;    // bytes of `in` already run
  unsigned done = 0;
  bool bell_owed = false;  // frames in the ring the parent has not been told about
  RingWriter ring_out(shared, ring);
  std::string frame;
  Result r;
  bool remote_refused = false;  // the parent could not read this worker's memory
  // The parent made both pipes non-blocking; this worker's ends block.
  ::fcntl(task_fd, F_SETFL, 0);
  ::fcntl(result_fd, F_SETFL, 0);
#if defined(__linux__) && defined(F_SETPIPE_SZ)
  ::fcntl(result_fd, F_SETPIPE_SZ, 1 << 20);  // fewer wake-ups for large results
#endif
  worker_result_fd = result_fd;
  apply_memory_limit(opt);
  // Every byte ever written to the result pipe, as of the last look, plus what this worker wrote
  // since: more than that after a task means the task (or something it started) wrote there. One
  // look (a system call) per task.
  std::uint64_t pipe_bytes = bytes_ever_written(result_fd, shared);
  auto send = [&](const char* data, std::size_t n) {
    if (!write_all(result_fd, data, n)) ::_exit(0);  // the parent is gone
    pipe_bytes += n;
  };
  auto ring_bell = [&] {
    if (!bell_owed) return;
    bell_owed = false;
    std::string_view bell = doorbell_frame();
    send(bell.data(), bell.size());
  };
  auto word = [&](std::size_t k) {
    std::uint64_t v;
    std::memcpy(&v, in.get() + at + k * sizeof v, sizeof v);
    return v;
  };
  TaskClock clock;
  for (;;) {
    // Run every whole message received.
    while (have - at >= task_header_size) {
      const std::uint64_t first_id = word(0), first_seq = word(1), first_fn = word(2), size_word = word(3);
      const bool is_run = (size_word & run_flag) != 0;
      const std::uint64_t payload_size = is_run ? 0 : size_word;
      const std::uint64_t count = is_run ? size_word & ~run_flag : 1;
      if (have - at - task_header_size < payload_size) break;
      TaskView task;
      task.payload = std::string_view(in.get() + at + task_header_size, static_cast<std::size_t>(payload_size));
      task.worker = slot;
      at += task_header_size + static_cast<std::size_t>(payload_size);  // the payload stays where it is until the loop ends
      clock.refresh();
      for (std::uint64_t k = 0; k < count; ++k) {
        const std::uint64_t id = first_id + k;
        task.seq = first_seq + k;
        task.fn = first_fn + k;
        arm_cpu_limit(opt);
        shared->started_at_ns.store(clock.start(), std::memory_order_relaxed);
        shared->started.store(id + 1, std::memory_order_release);
        worker_current_ticket = id;
        const bool remote = !remote_refused && shared->remote_allowed.load(std::memory_order_relaxed) != 0;
        const std::size_t in_ring = run_one(id, task, run, opt, frame, r, clock, remote ? remote_min_size : no_remote, &ring_out);
        // Only the parent reads this pipe, so its byte count can grow during a task only if the
        // task (or something it started) wrote to it. A task that took less time than a write to
        // a pipe takes cannot have written there: trivial tasks skip the look (itself a system
        // call).
        bool wrote_on_pipe = false;
        const bool look = clock.could_have_written();
        if (look) {
          const std::uint64_t now_written = bytes_ever_written(result_fd, shared);
          // A task that wrote there is the culprit of whatever the parent finds on the pipe. This
          // worker then leaves after that task's frame instead of starting another: however late
          // the parent looks, the task it finds running is the culprit or one that never began (and
          // runs elsewhere, once), never an innocent one caught half-way.
          wrote_on_pipe = now_written > pipe_bytes;
          if (wrote_on_pipe) {
            std::uint64_t none = 0;
            shared->corrupted_by.compare_exchange_strong(none, id + 1);
          }
          pipe_bytes = now_written;
        }
        // What the function printed appears even though the worker leaves by _exit.
        bool quiet = !flush_standard_streams() && !look;
        if (in_ring) {
          ring_out.commit(in_ring);
          bell_owed = true;
        } else if (frame_kind(frame) == frame_kind_remote) {
          quiet = false;
          // The big strings stay in r until the parent has copied them.
          shared->remote_ack.store(remote_ack_waiting, std::memory_order_relaxed);
          send(frame.data(), frame.size());
          if (remote_wait(shared->remote_ack) == remote_ack_refused) {
            remote_refused = true;
            encode_result_frame_into(r, frame);  // within the limit: it was checked with the strings counted
          } else {
            frame.clear();
          }
        }
        if (!r.result.is_null()) r.result = Value();
        if (in_ring || frame.empty()) {
          // published above, or delivered from the worker's memory
        } else if (ring_out.put(frame)) {
          bell_owed = true;
        } else {
          quiet = false;
          send(frame.data(), frame.size());
        }
        if (frame.capacity() > ring_frame_limit) std::string().swap(frame);  // do not sit on a big result's memory
        ++done;
        if (wrote_on_pipe || (opt.max_tasks_per_worker && done >= opt.max_tasks_per_worker)) {
          ring_bell();
          flush_stdio();
          leave(0);
        }
        clock.chain(quiet && opt.cpu_limit.count() <= 0);  // what pfp's system calls in between take is nobody's run time
      }
      if (count > 1) ring_bell();  // the parent collects a run's results while the next one runs
    }
    // Keep the partial message, make room for the rest of it, and wait for more.
    if (at > 0) {
      std::memmove(in.get(), in.get() + at, have - at);
      have -= at;
      at = 0;
    }
    std::size_t want = std::size_t{1} << 16;
    if (have >= task_header_size) want = std::max<std::size_t>(want, static_cast<std::size_t>(task_header_size + word(3) - have));
    // Fit the buffer to what is needed: grown for a big payload, given back after one.
    if (in_size - have < want || (in_size > (std::size_t{4} << 20) && have + want < in_size / 4)) {
      std::unique_ptr<char[]> bigger(new char[have + want]);
      std::memcpy(bigger.get(), in.get(), have);
      in = std::move(bigger);
      in_size = have + want;
    }
    ring_bell();  // about to wait for work: let the parent collect what is in the ring
    ssize_t got = read_some(task_fd, in.get() + have, in_size - have);
    if (got <= 0) {  // the parent closed the pipe (or died): nothing more to do
      flush_stdio();
      ::_exit(0);
    }
    have += static_cast<std::size_t>(got);
  }
}

// ---------------------------------------------------------------- parent side

/// The wake-up line between MultiProcessor::cancel() and the pool's poll() loop: an atomic flag
/// and a self-pipe that exists only while a run is in progress, so a cancel from another thread
/// or a signal handler is seen at once and no descriptor outlives the run.
class CancelState {
 public:
  /// Called when a run starts. Throws pfp::error when out of descriptors.
  void open() {
    Pipe p = make_pipe();
    set_nonblocking(p.read.get());
    set_nonblocking(p.write.get());
    requested_.store(false);
    read_ = std::move(p.read);
    write_fd_.store(p.write.release());
  }
  /// Called when the run ends; waits out a request() that is writing right now.
  void close() noexcept {
    int fd = write_fd_.exchange(-1);
    while (writers_.load() != 0) sched_yield();
    if (fd >= 0) ::close(fd);
    read_.reset();
  }
  /// Async-signal-safe and thread-safe: atomic operations and at most one write().
  void request() noexcept {
    writers_.fetch_add(1);
    requested_.store(true);
    int fd = write_fd_.load();
    if (fd >= 0) {
      int saved = errno;
      char byte = 1;
      [[maybe_unused]] ssize_t ignored = ::write(fd, &byte, 1);  // a full pipe already holds a wake-up
      errno = saved;
    }
    writers_.fetch_sub(1);
  }
  bool requested() const noexcept { return requested_.load(); }
  int wake_fd() const noexcept { return read_.get(); }

 private:
  std::atomic<bool> requested_{false};
  std::atomic<int> write_fd_{-1};
  std::atomic<int> writers_{0};
  UniqueFd read_;
};

/// Threads of this process, or 0 where that cannot be told.
inline std::size_t thread_count() noexcept {
  DIR* dir = ::opendir("/proc/self/task");
  if (!dir) return 0;
  std::size_t n = 0;
  while (dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n;
}

inline void check_threads(const Options& opt) {
  if (opt.threads == ThreadPolicy::allow) return;
  std::size_t n = thread_count();
  if (n <= 1) return;
  std::string msg = "pfp: execute_parallel() was called while this process runs " + std::to_string(n) +
                    " threads. fork() copies only the calling thread, so a lock another thread holds (in malloc, a "
                    "logger, ...) can deadlock a worker. Start the run before creating threads, or set "
                    "Options::threads = pfp::ThreadPolicy::allow if the other threads hold no such locks.";
  if (opt.threads == ThreadPolicy::refuse) throw error(msg);
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    msg += " (warning shown once)\n";
    [[maybe_unused]] bool ignored = write_all(STDERR_FILENO, msg.data(), msg.size());
  }
}

// SIGPIPE is blocked in the calling thread while the pool runs, so writing to a dead worker's
// task pipe yields EPIPE instead of killing the user's process; the pending signal is consumed.
class SigpipeBlock {
 public:
  SigpipeBlock() noexcept {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old_);
  }
  ~SigpipeBlock() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

  static void consume_pending() noexcept {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    timespec zero{0, 0};
#if defined(__linux__)
    while (sigtimedwait(&pipe_only, nullptr, &zero) == SIGPIPE) {
    }
#else
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE)) {
      int sig;
      sigwait(&pipe_only, &sig);
    }
#endif
  }

 private:
  sigset_t old_{};
};

// With SIGCHLD ignored the kernel reaps children itself and waitpid() cannot report how a worker
// died (and blocks until every child is gone). The default disposition is restored for the run.
class SigchldDefault {
 public:
  SigchldDefault() noexcept {
    struct sigaction current {};
    if (::sigaction(SIGCHLD, nullptr, &current) == 0 &&
        (current.sa_handler == SIG_IGN || (current.sa_flags & SA_NOCLDWAIT))) {
      old_ = current;
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      changed_ = ::sigaction(SIGCHLD, &dfl, nullptr) == 0;
    }
  }
  ~SigchldDefault() {
    if (changed_) ::sigaction(SIGCHLD, &old_, nullptr);
  }
  SigchldDefault(const SigchldDefault&) = delete;
  SigchldDefault& operator=(const SigchldDefault&) = delete;

 private:
  struct sigaction old_ {};
  bool changed_ = false;
};

class Pool {
 public:
  Pool(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel = nullptr)
      : run_(run), options_(options), feed_(feed), cancel_(cancel) {}

  ~Pool() {
    for (auto& w : workers_) abandon(*w);
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Runs the feed to its end: every task pulled gets exactly one delivered Result.
  /// Throws pfp::error if no worker process can be started at all, and rethrows what the feed's
  /// pull() or deliver() threw (after every task it had given was delivered or cancelled).
  void run() {
    check_threads(options_);
    SigpipeBlock sigpipe_block;
    SigchldDefault sigchld_default;
    signal_plan_ = SignalPlan::learn();
    bind_worker_calls();
    TaskClock::prepare();  // measured here, not in every worker
    target_workers_ = effective_workers(options_, feed_.size_hint());
    if (feed_.size_hint() && *feed_.size_hint() == 0) return;

    spawn_missing();
    if (!workers_.empty()) {
      try {
        feed_.workers_started();
      } catch (...) {
        consumer_failed();
      }
    }
    if (workers_.empty()) {
      feed_.drop_rest("not run: could not start a worker process: " + last_spawn_error_);
      throw error("pfp: could not start any worker process: " + last_spawn_error_);
    }

    std::vector<pollfd> fds;
    std::vector<Worker*> polled;
    auto last_sweep = Clock::now();
    for (;;) {
      if ((cancel_ && cancel_->requested()) || consumer_error_ || stop_requested()) {
        cancel_everything();
        break;
      }
      feed_waiting_ = false;
      dispatch();
      if (live_ == 0 && pending_.empty() && feed_exhausted()) break;
      fds.clear();
      polled.clear();
      if (cancel_ && cancel_->wake_fd() >= 0) {
        fds.push_back(pollfd{cancel_->wake_fd(), POLLIN, 0});
        polled.push_back(nullptr);
      }
      if (feed_waiting_ && feed_.wake_fd() >= 0) {
        fds.push_back(pollfd{feed_.wake_fd(), POLLIN, 0});
        polled.push_back(nullptr);
      }
      leaving_.append_poll_fds(fds);  // wake-ups only: a retired worker has exited
      polled.resize(fds.size(), nullptr);
      for (auto& w : workers_) {
        if (!w->result_r) continue;
        fds.push_back(pollfd{w->result_r.get(), POLLIN, 0});
        polled.push_back(w.get());
        if (w->out_at < w->out.size() && w->task_w) {
          fds.push_back(pollfd{w->task_w.get(), POLLOUT, 0});
          polled.push_back(w.get());
        }
      }
      int rc = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), poll_timeout_ms());
      if (rc < 0 && errno != EINTR) throw_errno("poll");
      if (rc > 0) {
        for (std::size_t k = 0; k < fds.size(); ++k) {
          if (!fds[k].revents || !polled[k]) continue;
          if (fds[k].events == POLLOUT) {
            if (polled[k]->pid > 0) flush_out(*polled[k]);
          } else {
            read_from(*polled[k]);
          }
        }
      }
      // A worker rings its doorbell only when it runs out of work, so results it finished before
      // a long task it holds would wait for that task: look into the rings of busy workers too.
      for (auto& w : workers_)
        if (w->pid > 0 && w->queue.size() > 1 && w->ring.available() >= frame_header_size) collect(*w);
      auto now = Clock::now();
      enforce_timeouts(now);
      if (rc == 0 || now - last_sweep >= sweep_interval) {
        last_sweep = now;
        for (auto& w : workers_)
          if (w->pid > 0 && has_exited(w->pid)) worker_ended(*w);
      }
      remove_dead();
      leaving_.collect([this](Retired&& r) { recycle(std::move(r.shared)); });
      spawn_missing();
      if (workers_.empty() && leaving_.empty() && (!pending_.empty() || !feed_exhausted())) give_up();
    }
    shutdown();
    if (consumer_error_) std::rethrow_exception(consumer_error_);
    if (source_error_) std::rethrow_exception(source_error_);
  }

 private:
  static constexpr std::size_t answered_kept = 64;

  struct Worker {
    pid_t pid = -1;
    unsigned slot = 0;  // TaskView::worker
    UniqueFd task_w;
    UniqueFd result_r;
    SharedRegion shared;
    RingReader ring;
    std::deque<std::uint64_t> queue;  // ids of tasks sent and not yet answered, in the order the worker runs them
    // (id, seq) of the last tasks it answered, oldest first from answered_at once full
    std::array<std::pair<std::uint64_t, std::uint64_t>, answered_kept> answered{};
    std::size_t answered_at = 0;
    Clock::time_point head_since{};  // when the front of the queue became the front
    unsigned sent = 0;
    std::string out;           // task messages not yet written to the task pipe
    std::size_t out_at = 0;    // bytes of out already written
    ReadBuffer buf;            // bytes from the result pipe
    std::size_t have = 0;      // bytes in buf
    std::size_t consumed = 0;  // bytes of buf already parsed
  };

  // A task pulled from the feed, or a run of them (Feed::pull_run), not yet all delivered; slots
  // are reused, tickets are not. Task k of a slot has id (ticket << run_bits) | k.
  struct Slot {
    Task task;                  // the first task's fn, and the payload of a single task
    Result result;              // a single task's Result, unless the feed keeps it (places)
    Result* places = nullptr;   // where the feed keeps the Results of a run
    std::uint64_t seq = 0;      // the first task's
    std::uint32_t generation = 0;
    std::uint32_t count = 1;        // tasks in it
    std::uint32_t outstanding = 0;  // tasks of it not yet delivered
  };

  static constexpr auto sweep_interval = std::chrono::milliseconds(50);
  static constexpr auto ring_check_interval = std::chrono::milliseconds(2);
  static constexpr std::size_t read_chunk = std::size_t{1} << 16;
  static constexpr std::size_t out_limit = std::size_t{1} << 20;  // payload bytes queued per worker
  // A ticket is (generation << slot_bits) | slot, never reused within a run; a task's id is its
  // slot's ticket shifted by run_bits plus its place in the slot's run.
  static constexpr unsigned slot_bits = 20;
  static constexpr std::uint64_t slot_mask = (std::uint64_t{1} << slot_bits) - 1;

  const FeedRunner& run_;
  const Options& options_;
  Feed& feed_;
  CancelState* cancel_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_slots_;
  std::size_t live_ = 0;               // tasks pulled and not yet delivered
  std::deque<std::uint64_t> pending_;  // ids of tasks pulled, in no worker's queue (retries, tasks handed back)
  std::vector<std::uint64_t> struck_;  // ids of tasks already run again once after a corrupt stream
  std::uint64_t next_seq_ = 0;
  bool feed_done_ = false;     // pull() gave nothing and finished() said so
  bool feed_waiting_ = false;  // pull() gave nothing for now
  std::exception_ptr source_error_;    // pull() threw: no more tasks; those given finish
  std::exception_ptr consumer_error_;  // deliver(), amend() or stop_requested() threw: the run stops
  unsigned target_workers_ = 1;
  double mean_duration_ns_ = -1;  // running mean of what workers report, to size the pipeline
  std::int64_t durations_ns_ = 0;  // durations reported since the mean was last updated ...
  std::size_t durations_ = 0;      // ... and how many
  bool runs_seen_ = false;        // the feed gives runs of tasks
  std::string last_spawn_error_;
  SignalPlan signal_plan_;               // what a new worker resets of this thread's signal state
  std::vector<int> close_in_child_;      // descriptors a new worker closes
  std::vector<SharedRegion> spare_regions_;  // regions of gone workers, for new ones
  ReadBuffer spare_buf_;                     // a gone worker's read buffer, for a new one
  struct Retired {
    SharedRegion shared;
    UniqueFd result_r;
  };
  Leaving<Retired> leaving_;             // retired workers not yet reaped
  std::string scratch_;  // a ring frame that wraps around the end of the ring

  bool feed_exhausted() const noexcept { return feed_done_ || source_error_; }

  void consumer_failed() noexcept {
    if (!consumer_error_) consumer_error_ = std::current_exception();
  }

  bool stop_requested() {
    try {
      return feed_.stop_requested();
    } catch (...) {
      consumer_failed();
      return true;
    }
  }

  // ---- the feed

  // A fresh slot for count tasks starting at seq next_seq_; returns its ticket.
  std::uint64_t new_slot(std::uint32_t count) {
    std::uint32_t index;
    if (!free_slots_.empty()) {
      index = free_slots_.back();
      free_slots_.pop_back();
    } else {
      index = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    live_ += count;
    Slot& slot = slots_[index];
    slot.seq = next_seq_;
    next_seq_ += count;
    slot.count = slot.outstanding = count;
    slot.places = nullptr;
    ++slot.generation;
    return (std::uint64_t{slot.generation} << slot_bits) | index;
  }

  bool may_pull() const noexcept {
    return !feed_exhausted() && !feed_waiting_ && (!free_slots_.empty() || slots_.size() <= slot_mask);
  }

  // Pulls one task from the feed into a new slot; returns its id, or nullopt.
  std::optional<std::uint64_t> pull_one() {
    if (!may_pull()) return std::nullopt;
    std::optional<Task> task;
    try {
      task = feed_.pull();
      if (!task) {
        if (feed_.finished())
          feed_done_ = true;
        else
          feed_waiting_ = true;
        return std::nullopt;
      }
    } catch (...) {
      source_error_ = std::current_exception();
      return std::nullopt;
    }
    const std::uint64_t ticket = new_slot(1);
    Slot& slot = slot_of(ticket << run_bits);
    slot.task = std::move(*task);
    // A reused slot's Result was moved out by deliver(): put back only what a move may leave.
    Result& r = slot.result;
    r.index = static_cast<std::size_t>(slot.seq);
    r.status = Status::cancelled;
    if (!r.result.is_null()) r.result = Value();
    r.error.clear();
    r.pid = 0;
    r.duration = {};
    r.attempts = 0;
    return ticket << run_bits;
  }

  // Pulls up to max tasks as one run (Feed::pull_run) into a new slot; returns the first id, or
  // nullopt when the feed gives none that way.
  std::optional<std::uint64_t> pull_run(std::size_t max) {
    if (!may_pull() || max < 2) return std::nullopt;
    std::uint64_t first_fn = 0;
    Result* places = nullptr;
    std::size_t n = 0;
    try {
      n = feed_.pull_run(static_cast<std::size_t>(std::min<std::uint64_t>(max, max_run)), first_fn, places);
    } catch (...) {
      source_error_ = std::current_exception();
      return std::nullopt;
    }
    if (n == 0) return std::nullopt;
    runs_seen_ = true;
    const std::uint64_t ticket = new_slot(static_cast<std::uint32_t>(n));
    Slot& slot = slot_of(ticket << run_bits);
    slot.task.fn = first_fn;
    slot.places = places;
    return ticket << run_bits;
  }

  Slot& slot_of(std::uint64_t id) { return slots_[static_cast<std::size_t>((id >> run_bits) & slot_mask)]; }
  static std::uint32_t place_of(std::uint64_t id) noexcept { return static_cast<std::uint32_t>(id & (max_run - 1)); }
  std::uint64_t seq_of(std::uint64_t id) { return slot_of(id).seq + place_of(id); }
  Result& result_of(std::uint64_t id) {
    Slot& slot = slot_of(id);
    return slot.places ? slot.places[place_of(id)] : slot.result;
  }

  void deliver(std::uint64_t id) {
    Slot& slot = slot_of(id);
    if (!slot.places) {
      try {
        feed_.deliver(slot.seq, std::move(slot.result));
      } catch (...) {
        consumer_failed();
      }
      if (slot.task.payload.capacity() > 4096)
        std::string().swap(slot.task.payload);
      else
        slot.task.payload.clear();
    }
    --live_;
    if (--slot.outstanding == 0) free_slots_.push_back(static_cast<std::uint32_t>((id >> run_bits) & slot_mask));
  }

  // ---- starting workers

  void spawn_missing() {
    // A retired worker counts until it has exited: never more processes than Options::workers.
    while (workers_.size() + leaving_.size() < target_workers_ && (!pending_.empty() || !feed_exhausted())) {
      if (!spawn_one()) break;
      dispatch();  // the new worker gets its work now, not after its siblings have been forked
    }
  }

  unsigned free_slot() const {
    for (unsigned s = 0;; ++s) {
      bool used = false;
      for (auto& w : workers_) used = used || w->slot == s;
      if (!used) return s;
    }
  }

  bool spawn_one() {
    auto w = std::make_unique<Worker>();
    w->slot = free_slot();
    std::vector<int>& close_in_child = close_in_child_;  // kept: no allocation per process
    close_in_child.clear();
    for (auto& other : workers_) {
      if (other->task_w) close_in_child.push_back(other->task_w.get());
      if (other->result_r) close_in_child.push_back(other->result_r.get());
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
                           &signal_plan_);
      w->ring = RingReader(block, ring);
      w->task_w = std::move(tasks.write);
      w->result_r = std::move(results.read);
    } catch (const error& e) {
      last_spawn_error_ = e.what();
      return false;
    }
    workers_.push_back(std::move(w));
    return true;
  }

  // Every worker failed to start or died and none can be started again: the tasks that never
  // ran say why instead of hanging the run.
  void give_up() {
    for (int attempt = 0; attempt < 20 && workers_.empty(); ++attempt) {
      ::poll(nullptr, 0, 10 * (attempt + 1));
      spawn_missing();
    }
    if (!workers_.empty()) return;
    const std::string why = "not run: could not start a worker process: " + last_spawn_error_;
    while (!pending_.empty()) {
      std::uint64_t id = pending_.front();
      pending_.pop_front();
      Result& r = result_of(id);
      r.status = Status::cancelled;
      r.error = why;
      deliver(id);
    }
    if (!feed_exhausted()) {
      feed_done_ = true;
      feed_.drop_rest(why);
    }
  }

  // ---- handing out work

  // How many tasks a worker may hold at once: enough to hide the round trip for short tasks
  // (about 200 us of work in flight), one for long ones so a slow task does not hold others
  // hostage, and never more than a fair share of what is known to be left.
  unsigned depth() const {
    if (mean_duration_ns_ < 0) return 1;
    double d = 200'000.0 / std::max(mean_duration_ns_, 1.0);
    const unsigned most = runs_seen_ ? max_run_pipeline_depth : max_pipeline_depth;
    auto depth = static_cast<std::size_t>(std::clamp(d, 1.0, static_cast<double>(most)));
    if (std::optional<std::size_t> hint = feed_.size_hint()) {
      std::size_t left = pending_.size() + (*hint > next_seq_ ? *hint - static_cast<std::size_t>(next_seq_) : 0);
      std::size_t live = std::max<std::size_t>(workers_.size(), 1);
      std::size_t fair = (left + live - 1) / live;
      depth = std::max<std::size_t>(1, std::min(depth, fair + 1));
    }
    return static_cast<unsigned>(depth);
  }

  // Folds the durations reported since the last call into the running mean (each one weighing
  // 1/8, as if added one by one): once per batch of results, not once per result.
  void update_mean_duration() {
    if (durations_ == 0) return;
    const double batch = static_cast<double>(durations_ns_) / static_cast<double>(durations_);
    const double kept = durations_ >= 64 ? 0.0 : std::pow(0.875, static_cast<double>(durations_));
    mean_duration_ns_ = mean_duration_ns_ < 0 ? batch : mean_duration_ns_ * kept + batch * (1 - kept);
    durations_ns_ = 0;
    durations_ = 0;
  }

  void dispatch() {
    update_mean_duration();
    const unsigned limit = depth();
    for (auto& w : workers_) {
      if (!w->task_w || w->pid <= 0) continue;
      bool added = false;
      while (w->queue.size() < limit && w->out.size() - w->out_at < out_limit) {
        std::size_t room = limit - w->queue.size();
        if (options_.max_tasks_per_worker) {
          if (w->sent >= options_.max_tasks_per_worker) break;
          room = std::min<std::size_t>(room, options_.max_tasks_per_worker - w->sent);
        }
        if (!pending_.empty()) {
          const std::uint64_t id = pending_.front();
          pending_.pop_front();
          send_tasks(*w, id, 1);
        } else if (std::optional<std::uint64_t> run = pull_run(room)) {
          send_tasks(*w, *run, slot_of(*run).count);
        } else if (std::optional<std::uint64_t> id = pull_one()) {
          send_tasks(*w, *id, 1);
        } else {
          break;
        }
        added = true;
      }
      if (added) flush_out(*w);
    }
  }

  // Queues one message for w: the task `first_id`, or the `count` tasks of a run from it.
  void send_tasks(Worker& w, std::uint64_t first_id, std::uint32_t count) {
    const Slot& slot = slot_of(first_id);
    const std::uint32_t k = place_of(first_id);
    if (w.queue.empty()) w.head_since = Clock::now();
    for (std::uint32_t i = 0; i < count; ++i) w.queue.push_back(first_id + i);
    w.sent += count;
    const std::uint64_t header[4] = {first_id, slot.seq + k, slot.task.fn + k,
                                     count > 1 ? run_flag | count : slot.task.payload.size()};
    w.out.append(reinterpret_cast<const char*>(header), sizeof header);
    if (count == 1) w.out.append(slot.task.payload);
  }

  // Writes what the task pipe takes now; the rest waits for POLLOUT.
  void flush_out(Worker& w) {
    while (w.out_at < w.out.size()) {
      ssize_t n = ::write(w.task_w.get(), w.out.data() + w.out_at, w.out.size() - w.out_at);
      if (n > 0) {
        w.out_at += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // The worker is gone; its death is noticed on its result pipe and its queue handed back.
      SigpipeBlock::consume_pending();
      w.out_at = w.out.size();
      break;
    }
    w.out.clear();
    w.out_at = 0;
    if (w.out.capacity() > out_limit * 4) std::string().swap(w.out);
  }

  // ---- receiving results

  // A frame carries a little more than its Value; saturate so "no limit" (SIZE_MAX) stays that.
  std::size_t max_frame() const noexcept {
    constexpr std::size_t slack = 4096;
    return options_.max_result_bytes > std::numeric_limits<std::size_t>::max() - slack ? std::numeric_limits<std::size_t>::max()
                                                                                     : options_.max_result_bytes + slack;
  }

  // Reads the pipe once. Returns the bytes read, 0 at EOF, -1 when nothing is there now.
  ssize_t read_pipe(Worker& w) {
    std::size_t want = read_chunk;
    if (w.have - w.consumed >= frame_header_size) {
      // Grow towards the frame's size as its bytes arrive, never to what a header merely claims.
      std::uint64_t claimed = 0;
      std::memcpy(&claimed, w.buf.data() + w.consumed + 8, sizeof claimed);
      std::size_t held = w.have - w.consumed;
      std::size_t missing = claimed > held - frame_header_size ? static_cast<std::size_t>(std::min<std::uint64_t>(
                                                                     claimed - (held - frame_header_size), max_frame()))
                                                               : 0;
      want = std::max(want, std::min(missing, std::max(held, read_chunk)));
    }
    if (w.buf.capacity() == 0 && spare_buf_.capacity() >= want) w.buf = std::move(spare_buf_);  // see recycle()
    if (w.buf.capacity() - w.have < want && w.buf.make_room(w.consumed, w.have, w.have - w.consumed + want)) {
      w.have -= w.consumed;
      w.consumed = 0;
    }
    SharedBlock* block = w.shared ? w.shared.block() : nullptr;
    if (block) block->pipe_read_seq.fetch_add(1, std::memory_order_acq_rel);
    ssize_t got = read_some(w.result_r.get(), w.buf.data() + w.have, w.buf.capacity() - w.have);
    if (block) {
      if (got > 0) block->pipe_read_total.fetch_add(static_cast<std::uint64_t>(got), std::memory_order_acq_rel);
      block->pipe_read_seq.fetch_add(1, std::memory_order_acq_rel);
    }
    if (got > 0) {
      w.have += static_cast<std::size_t>(got);
      return got;
    }
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return 0;  // EOF, or an error that means the same
  }

  void read_from(Worker& w) {
    for (int rounds = 0; rounds < 1024 && w.result_r; ++rounds) {
      ssize_t got = read_pipe(w);
      if (got == 0) {
        worker_ended(w);  // EOF: the worker is gone or has closed its end
        return;
      }
      if (!collect(w)) return;
      if (got < 0) return;
    }
  }

  // Reads what a worker left before it is declared dead, so no finished result is lost.
  void drain(Worker& w) {
    while (w.result_r && read_pipe(w) > 0) {
    }
    if (w.result_r) collect(w);
  }

  // Takes every complete frame, from the ring or the pipe, in the order the worker ran them.
  // Returns false if the worker is gone (killed for a protocol error, or retired).
  bool collect(Worker& w) {
    bool pipe_fresh = false;
    bool took = false;
    try {
      for (;;) {
        std::string_view from_ring = ring_frame(w);
        if (!from_ring.empty() && !pipe_fresh) {
          // Whatever reached the pipe before this ring frame is readable now: read it first, so
          // the two streams are merged in the order they were written.
          pipe_fresh = true;
          if (w.result_r) read_pipe(w);
        }
        skip_doorbells(w);
        // The common case, taken without the checks below: nothing waiting from the pipe, and the
        // ring holding the frames of the tasks at the front of the queue, in order.
        // The worker's counter of bytes written is read once for all the frames it covers: the
        // worker moves it after every function, so each look would wait for the other core.
        if (pipe_fresh && w.have == w.consumed && !from_ring.empty()) {
          std::size_t avail = w.ring.available();
          while (!from_ring.empty() && !w.queue.empty()) {
            prefetch(from_ring.data() + 512);  // frames written on another core: ask for them early
            if (frame_index(from_ring) != w.queue.front()) break;
            Reader rd(from_ring.substr(frame_header_size + frame_index_size));
            decode_verdict(rd, result_of(w.queue.front()));
            w.ring.advance(from_ring.size());
            avail -= from_ring.size();
            accepted(w);
            took = true;
            if (retire_if_done(w)) return false;
            from_ring = ring_frame(w, avail);
          }
          if (from_ring.empty()) from_ring = ring_frame(w);
        }
        std::string_view from_pipe = pipe_frame(w);
        if (from_ring.empty() && from_pipe.empty()) break;
        const bool has_expected = !w.queue.empty();
        const std::uint64_t expected = has_expected ? w.queue.front() : 0;
        if (has_expected && !from_pipe.empty() && frame_index(from_pipe) == expected) {
          if (frame_kind(from_pipe) == frame_kind_remote) {
            take_remote(w, from_pipe);
          } else {
            accept(w, from_pipe);
            w.consumed += from_pipe.size();
          }
          took = true;
        } else if (has_expected && !from_ring.empty() && frame_index(from_ring) == expected) {
          accept(w, from_ring);
          w.ring.advance(from_ring.size());
          took = true;
        } else if (!from_ring.empty() && !holds(w, frame_index(from_ring))) {
          // The worker's own frame for a function whose result already came through the pipe
          // (written there by the function itself): the first one delivered stands.
          w.ring.advance(from_ring.size());
        } else if (!from_pipe.empty()) {
          // The worker sends in the order it runs: the expected frame would already be readable.
          throw error("pfp: protocol error: a frame for function " + std::to_string(frame_index(from_pipe)) +
                      (has_expected ? " arrived while function " + std::to_string(expected) + " was running"
                                    : " arrived from a worker that holds no function"));
        } else {
          break;  // the expected frame is still on its way through the pipe
        }
        if (retire_if_done(w)) return false;
      }
    } catch (const error& e) {
      protocol_failure(w, e.what());
      return false;
    }
    w.ring.publish();
    if (took) w.head_since = Clock::now();  // when the task now at the front became the front, near enough
    if (w.consumed == w.have) {
      w.consumed = w.have = 0;
      if (w.buf.capacity() > (std::size_t{4} << 20)) w.buf.release();  // give back a big result's buffer
    } else if (w.consumed > 0 && w.consumed >= w.have / 2) {
      std::memmove(w.buf.data(), w.buf.data() + w.consumed, w.have - w.consumed);
      w.have -= w.consumed;
      w.consumed = 0;
    }
    return true;
  }

  // A result whose big strings are still in the worker's memory: copy them, then let the worker go
  // on. If the kernel will not let this process read the worker's memory, the worker is told to
  // send the result through the pipe instead (and no worker tries again). If the worker died before
  // its memory was read, the result is lost with it: its death is noticed on its pipe, and the task
  // it was running is reported as crashed.
  void take_remote(Worker& w, std::string_view frame) {
    std::atomic<std::uint32_t>& ack = w.shared.block()->remote_ack;
    const std::size_t own = frame.size() - frame_header_size;
    RemoteReader reader(w.pid, max_frame() > own ? max_frame() - own : 0);
    Result& r = result_of(w.queue.front());
    try {
      decode_result_frame_into(frame, max_frame(), r, &reader);
    } catch (const remote_unavailable& e) {
      w.consumed += frame.size();
      if (!e.gone()) {
        remote_reads_refused.store(1);
        remote_answer(ack, remote_ack_refused);
      }
      return;
    } catch (const std::bad_alloc&) {
      r.status = Status::exception;
      r.result = Value();
      r.error = "pfp: the parent could not allocate memory for the result (std::bad_alloc)";
    }
    remote_answer(ack, remote_ack_copied);
    w.consumed += frame.size();
    accepted(w);
  }

  // The next whole frame in the worker's ring, or an empty view.
  std::string_view ring_frame(Worker& w) { return ring_frame(w, w.ring.available()); }
  // ... of the `avail` bytes known to be there.
  std::string_view ring_frame(Worker& w, std::size_t avail) {
    if (avail < frame_header_size) return {};
    std::string_view head = w.ring.peek(frame_header_size, scratch_);
    std::optional<std::size_t> size = frame_size(head, max_frame());
    if (frame_kind(head) != frame_kind_result || *size > avail)
      throw error("pfp: protocol error: a malformed frame in the worker's shared ring");
    return w.ring.peek(*size, scratch_);
  }

  // The next whole frame in the pipe buffer, or an empty view.
  std::string_view pipe_frame(Worker& w) {
    std::string_view rest(w.buf.data() + w.consumed, w.have - w.consumed);
    std::optional<std::size_t> size = frame_size(rest, max_frame());
    return size && rest.size() >= *size ? rest.substr(0, *size) : std::string_view();
  }

  // Doorbells only say "look at the ring".
  void skip_doorbells(Worker& w) {
    while (w.have - w.consumed >= frame_header_size &&
           frame_kind({w.buf.data() + w.consumed, frame_header_size}) == frame_kind_doorbell) {
      frame_size({w.buf.data() + w.consumed, w.have - w.consumed}, max_frame());  // validates the header
      w.consumed += frame_header_size;
    }
  }

  static bool holds(const Worker& w, std::uint64_t id) {
    return std::find(w.queue.begin(), w.queue.end(), id) != w.queue.end();
  }

  // The worker's stream is corrupt: something wrote on its result pipe that the worker did not
  // (a function writing to descriptors it does not own, a process it left behind), or its ring was
  // overwritten. The worker is killed; every whole frame in its ring was written by the worker
  // itself and is kept. The worker notes which function wrote on its pipe; if that was not the
  // one it was running when killed, the running one is innocent and runs again elsewhere.
  void protocol_failure(Worker& w, const std::string& why) {
    if (on_corrupt_stream) on_corrupt_stream(w.pid);
    kill_tree(w.pid);
    int ignored = 0;
    wait_pid(w.pid, &ignored, 0);
    try {
      while (!w.queue.empty()) {
        std::string_view frame = ring_frame(w);
        if (frame.empty()) break;
        const std::uint64_t id = frame_index(frame);
        if (id == w.queue.front()) {
          accept(w, frame);
        } else if (holds(w, id)) {
          break;
        }
        w.ring.advance(frame.size());
      }
    } catch (const error&) {
    }
    const std::uint64_t culprit = w.shared.block()->corrupted_by.load(std::memory_order_acquire);
    // A culprit that already has its verdict from this worker loses it: what it sent cannot be
    // trusted. Feeds that can still change what they reported are told.
    auto answered = std::find_if(w.answered.begin(), w.answered.end(), [&](const auto& a) { return a.first + 1 == culprit; });
    // (ids are never 0, so the unused entries match no culprit)
    if (culprit != 0 && answered != w.answered.end()) {
      const std::uint64_t seq = answered->second;
      Result r;
      r.index = static_cast<std::size_t>(seq);
      r.status = Status::crashed;
      r.error = why + " (this function wrote to pfp's result pipe)";
      r.pid = static_cast<int>(w.pid);
      r.attempts = 1;
      try {
        feed_.amend(seq, std::move(r));
      } catch (...) {
        consumer_failed();
      }
    }
    if (!w.queue.empty() && head_began(w) && culprit != 0 && culprit != w.queue.front() + 1 &&
        std::find(struck_.begin(), struck_.end(), w.queue.front()) == struck_.end()) {
      std::uint64_t again = w.queue.front();
      struck_.push_back(again);
      w.queue.pop_front();
      settle_queue(w, Status::crashed, why);  // the rest never started
      pending_.push_front(again);
    } else {
      settle_queue(w, Status::crashed, why);
    }
    close_pipes(w);
  }

  bool retire_if_done(Worker& w) {
    if (!options_.max_tasks_per_worker || !w.queue.empty() || w.sent < options_.max_tasks_per_worker) return false;
    retire(w);
    return true;
  }

  // The whole frame for the task at the front of w's queue: its verdict, decoded in place.
  // Throws pfp::error if the frame is malformed (the caller declares the stream corrupt).
  void accept(Worker& w, std::string_view frame, RemoteSource* remote = nullptr) {
    decode_result_frame_into(frame, max_frame(), result_of(w.queue.front()), remote);
    accepted(w);
  }

  // The task at the front of w's queue has its verdict in its Result (but for the pid).
  void accepted(Worker& w) {
    const std::uint64_t id = w.queue.front();
    w.queue.pop_front();
    w.answered[w.answered_at++ % answered_kept] = {id, seq_of(id)};
    Result& r = result_of(id);
    r.pid = static_cast<int>(w.pid);
    durations_ns_ += r.duration.count();
    ++durations_;
    conclude(id);
  }

  // One attempt of a task reached a verdict: it is final unless the options ask to try again.
  void conclude(std::uint64_t id) {
    Result& r = result_of(id);
    ++r.attempts;
    bool retryable = r.status == Status::crashed || r.status == Status::timed_out ||
                     (r.status == Status::exception && options_.retry_exceptions);
    if (retryable && r.attempts <= options_.retries) {
      pending_.push_back(id);
      return;
    }
    deliver(id);
  }

  // Whether the worker began the function at the front of its queue, and when.
  static std::optional<Clock::time_point> head_began(const Worker& w) {
    if (w.queue.empty() || !w.shared) return std::nullopt;
    const SharedBlock* b = w.shared.block();
    if (b->started.load(std::memory_order_acquire) != w.queue.front() + 1) return std::nullopt;
    return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
        std::chrono::nanoseconds(b->started_at_ns.load(std::memory_order_relaxed))));
  }

  // When the front of the queue started running, as well as the parent can tell.
  static Clock::time_point head_start(const Worker& w) {
    std::optional<Clock::time_point> began = head_began(w);
    return began ? std::max(*began, w.head_since) : w.head_since;
  }

  // Stops the run: running functions are killed with their workers, the rest never start.
  void cancel_everything() {
    for (auto& w : workers_) {
      if (w->pid <= 0 || w->queue.empty()) continue;
      drain(*w);  // results that made it are kept
      if (w->pid <= 0 || w->queue.empty()) continue;
      std::vector<std::uint64_t> waiting(w->queue.begin() + 1, w->queue.end());
      w->queue.resize(1);
      kill_worker(*w, Status::cancelled, "cancelled while running: the worker was killed with everything it started");
      for (std::uint64_t id : waiting) pending_.push_front(id);
    }
    while (!pending_.empty()) {
      std::uint64_t id = pending_.front();
      pending_.pop_front();
      Result& r = result_of(id);
      r.status = Status::cancelled;
      r.error = "cancelled before it started";
      r.result = Value();
      deliver(id);
    }
    if (!feed_done_) {
      feed_done_ = true;
      try {
        feed_.drop_rest("cancelled before it started");
      } catch (...) {
        consumer_failed();
      }
    }
  }

  // ---- ending workers

  // Hands a dead or killed worker's unfinished functions back: the one it was running gets the
  // verdict; the ones queued behind it never started and go back to the front of the line.
  void settle_queue(Worker& w, Status status, const std::string& why) {
    if (w.queue.empty()) return;
    // A head that never began is innocent even of a timeout: the worker was stuck in a task
    // that had already delivered its result (or in flushing its output), not in this one.
    const bool began = head_began(w).has_value();
    if (began) {
      const std::uint64_t id = w.queue.front();
      Result& r = result_of(id);
      r.status = status;
      r.error = why;
      r.result = Value();
      r.pid = static_cast<int>(w.pid);
      if (status == Status::timed_out || status == Status::cancelled)
        r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - head_start(w));
      w.queue.pop_front();
      if (status == Status::cancelled) {
        ++r.attempts;
        deliver(id);
      } else {
        conclude(id);
      }
    }
    // Otherwise it died between tasks: nothing it held had started.
    for (auto it = w.queue.rbegin(); it != w.queue.rend(); ++it) pending_.push_front(*it);
    w.queue.clear();
  }

  // A gone worker's shared region serves the next one (see SharedRegion::renew).
  void recycle(SharedRegion&& region) {
    if (region && spare_regions_.size() < target_workers_) spare_regions_.push_back(std::move(region));
    region.reset();
  }

  // Called once the worker's process is gone (reaped), or its region moved out.
  void close_pipes(Worker& w) {
    recycle(std::move(w.shared));
    if (w.buf.capacity() == read_chunk && spare_buf_.capacity() == 0) spare_buf_ = std::move(w.buf);  // for the next worker
    w.ring = RingReader();
    w.task_w.reset();
    w.result_r.reset();
    w.buf.release();
    std::string().swap(w.out);
    w.have = w.consumed = w.out_at = 0;
    w.pid = -1;
  }

  // The worker died on its own (EOF on its pipe, or found exited by the sweep).
  void worker_ended(Worker& w) {
    if (w.pid <= 0) return;
    drain(w);
    if (w.pid <= 0) return;
    if (w.queue.empty()) {
      w.task_w.reset();
      reap(w.pid, std::chrono::milliseconds(1000));
      close_pipes(w);
      return;
    }
    // Wait briefly for the exit to complete (EOF can come a moment before the exit status),
    // then take its group down with it: processes the function started must not outlive it.
    auto deadline = Clock::now() + std::chrono::milliseconds(100);
    while (!has_exited(w.pid) && Clock::now() < deadline) ::poll(nullptr, 0, 1);
    kill_tree(w.pid);
    int status = 0;
    std::string why = wait_pid(w.pid, &status, 0) != w.pid
                          ? "ended, but its exit status was collected elsewhere (a SIGCHLD handler calling waitpid?)"
                          : (WIFSIGNALED(status) ? "was " : "exited with ") + describe_wait_status(status);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGXCPU && options_.cpu_limit.count() > 0)
      why += " after using its CPU time limit of " + std::to_string(options_.cpu_limit.count()) + " s (Options::cpu_limit)";
    settle_queue(w, Status::crashed, "worker process " + std::to_string(w.pid) + " " + why + " while running the function");
    close_pipes(w);
  }

  void kill_worker(Worker& w, Status status, const std::string& why) {
    kill_tree(w.pid);
    int ignored = 0;
    wait_pid(w.pid, &ignored, 0);
    settle_queue(w, status, why);
    close_pipes(w);
  }

  // A worker that has run its allowance of functions leaves right after its last frame. It is
  // reaped once it has exited (Leaving, woken by its pidfd), not waited for: the parent serves the
  // other workers meanwhile, and starts the successor as soon as it is gone. Its region and result
  // pipe are kept until then (it may still ring its doorbell).
  void retire(Worker& w) {
    w.task_w.reset();
    w.ring.publish();
    leaving_.add(w.pid, Retired{std::move(w.shared), std::move(w.result_r)}, std::chrono::milliseconds(1000));
    close_pipes(w);
  }

  void enforce_timeouts(Clock::time_point now) {
    if (options_.timeout.count() <= 0) return;
    for (auto& w : workers_) {
      if (w->pid <= 0 || w->queue.empty() || now - head_start(*w) < options_.timeout) continue;
      const std::uint64_t head = w->queue.front();
      drain(*w);  // it may have finished just now
      if (w->pid <= 0 || w->queue.empty() || w->queue.front() != head) continue;
      kill_worker(*w, Status::timed_out,
                  "exceeded the timeout of " + std::to_string(options_.timeout.count()) + " ms and was killed");
    }
  }

  int poll_timeout_ms() const {
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(sweep_interval);
    if (!leaving_.empty()) {
      // Without pidfds, look again soon; with them, by the earliest grace at the latest.
      if (!leaving_.pollable()) wait = std::min(wait, std::chrono::milliseconds(1));
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*leaving_.next_deadline() - Clock::now());
      wait = std::min(wait, std::max(left, std::chrono::milliseconds(0)));
    }
    for (auto& w : workers_)
      if (w->queue.size() > 1) wait = std::min(wait, ring_check_interval);  // see the ring check in run()
    if (options_.timeout.count() > 0) {
      auto now = Clock::now();
      for (auto& w : workers_) {
        if (w->queue.empty()) continue;
        auto left = std::chrono::ceil<std::chrono::milliseconds>(head_start(*w) + options_.timeout - now);
        wait = std::min(wait, std::max(left, std::chrono::milliseconds(0)));
      }
    }
    return static_cast<int>(wait.count());
  }

  void remove_dead() {
    workers_.erase(std::remove_if(workers_.begin(), workers_.end(), [](const auto& w) { return w->pid <= 0; }),
                   workers_.end());
  }

  void shutdown() {
    for (auto& w : workers_) w->task_w.reset();  // every idle worker sees EOF and leaves
    for (auto& w : workers_) {
      if (w->pid > 0) reap(w->pid, std::chrono::milliseconds(1000));
      close_pipes(*w);
    }
    workers_.clear();
    leaving_.finish([](Retired&&) {});
  }

  // Used when the run is left by an exception: nothing may outlive it.
  static void abandon(Worker& w) noexcept {
    if (w.pid > 0) {
      kill_tree(w.pid);
      int ignored = 0;
      wait_pid(w.pid, &ignored, 0);
    }
    w.shared.reset();
    w.task_w.reset();
    w.result_r.reset();
    w.pid = -1;
  }
};

/// Runs `feed` on worker processes (the Backend::processes backend). See Pool::run().
inline void run_feed_processes(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel) {
  Pool pool(run, options, feed, cancel);
  pool.run();
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_POOL_HPP
