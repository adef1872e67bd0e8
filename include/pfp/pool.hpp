#ifndef PFP_POOL_HPP
#define PFP_POOL_HPP

// The engine behind execute_parallel(): a pool of forked workers, each with a private task pipe
// (parent -> worker: 8-byte function indices) and result pipe (worker -> parent: framed
// Results), driven by one poll() loop in the parent. The parent always knows which indices each
// worker holds, in order, so a worker that dies or hangs costs exactly the function it was running.

#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>
#include <pfp/options.hpp>
#include <pfp/process.hpp>
#include <pfp/result.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

namespace pfp {
namespace detail {

using Clock = std::chrono::steady_clock;

/// Runs function `index` inside a worker, filling the Result (result, and the user's fields).
/// Exceptions escape to the worker loop, which reports them.
using TaskRunner = std::function<void(std::size_t index, Result& r)>;

inline unsigned effective_workers(const Options& o, std::size_t functions) {
  unsigned n = o.workers ? o.workers : std::thread::hardware_concurrency();
  if (n == 0) n = 1;
  return static_cast<unsigned>(std::min<std::size_t>(n, functions));
}

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
  rlim_t used = static_cast<rlim_t>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec);
  rl.rlim_cur = used + static_cast<rlim_t>(opt.cpu_limit.count());
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max) rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_CPU, &rl);
}

/// In a worker process: the descriptor its frames go to (-1 elsewhere). For fault-injection tests
/// that must write broken frames the way a dying worker would; not for ordinary code.
inline int worker_result_fd = -1;

// One word shared by a worker and the parent: 1 + the index of the function the worker last began.
// A store into shared memory costs no system call, and it survives the worker's death, so the
// parent can tell the function a dead worker was running from the ones it never started.
using StartedSlot = std::atomic<std::uint64_t>;
static_assert(StartedSlot::is_always_lock_free, "pfp needs lock-free 64-bit atomics in shared memory");

[[noreturn]] inline void worker_loop(int task_fd, int result_fd, StartedSlot* started, const TaskRunner& run,
                                     const Options& opt) {
  constexpr std::size_t slots = 512;
  std::uint64_t indices[slots];
  std::size_t carried = 0;  // bytes of a partial index left from the last read
  unsigned done = 0;
  worker_result_fd = result_fd;
  apply_memory_limit(opt);
  for (;;) {
    char* base = reinterpret_cast<char*>(indices);
    ssize_t got = read_some(task_fd, base + carried, sizeof indices - carried);
    if (got <= 0) ::_exit(0);  // the parent closed the pipe (or died): nothing more to do
    std::size_t bytes = carried + static_cast<std::size_t>(got);
    std::size_t count = bytes / sizeof(std::uint64_t);
    for (std::size_t k = 0; k < count; ++k) {
      Result r;
      r.index = static_cast<std::size_t>(indices[k]);
      started->store(indices[k] + 1, std::memory_order_release);
      arm_cpu_limit(opt);
      auto start = Clock::now();
      try {
        run(r.index, r);
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
      r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start);
      std::string frame;
      try {
        frame = encode_result_frame(r);
        if (frame.size() - frame_header_size > opt.max_result_bytes) {
          std::size_t size = frame.size() - frame_header_size;
          frame.clear();
          frame.shrink_to_fit();
          r.status = Status::exception;
          r.result = Value();
          r.error = "pfp: the result of " + std::to_string(size) + " bytes exceeds Options::max_result_bytes (" +
                    std::to_string(opt.max_result_bytes) + " bytes)";
          frame = encode_result_frame(r);
        }
      } catch (...) {
        r.status = Status::exception;
        r.error = "pfp: could not serialize the result: " + describe_current_exception();
        r.result = Value();
        frame = encode_result_frame(r);
      }
      flush_stdio();  // what the function printed appears even though the worker leaves by _exit
      if (!write_all(result_fd, frame.data(), frame.size())) ::_exit(0);  // the parent is gone
      if (opt.max_tasks_per_worker && ++done >= opt.max_tasks_per_worker) ::_exit(0);
    }
    carried = bytes % sizeof(std::uint64_t);
    if (carried) std::memmove(base, base + count * sizeof(std::uint64_t), carried);
  }
}

// ---------------------------------------------------------------- parent side

/// The wake-up line between MultiProcessor::cancel() and the pool's poll() loop: an atomic flag
/// and a self-pipe, so a cancel from another thread or a signal handler is seen at once.
class CancelState {
 public:
  CancelState() {
    Pipe p = make_pipe();
    set_nonblocking(p.read.get());
    set_nonblocking(p.write.get());
    read_ = std::move(p.read);
    write_ = std::move(p.write);
  }
  /// Async-signal-safe and thread-safe: one atomic store and one write().
  void request() noexcept {
    requested_.store(true, std::memory_order_release);
    char byte = 1;
    int saved = errno;
    [[maybe_unused]] ssize_t ignored = ::write(write_.get(), &byte, 1);  // full pipe: a wake-up is pending anyway
    errno = saved;
  }
  bool requested() const noexcept { return requested_.load(std::memory_order_acquire); }
  int wake_fd() const noexcept { return read_.get(); }
  /// Forgets earlier requests: a cancel applies to the run in progress only.
  void reset() noexcept {
    requested_.store(false, std::memory_order_release);
    char buf[64];
    while (read_some(read_.get(), buf, sizeof buf) > 0) {
    }
  }

 private:
  std::atomic<bool> requested_{false};
  UniqueFd read_;
  UniqueFd write_;
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
  /// results must hold one Result per function, with function_name and index already set.
  Pool(const TaskRunner& run, const Options& options, std::vector<Result>& results, CancelState* cancel = nullptr)
      : run_(run), options_(options), results_(results), cancel_(cancel) {}

  ~Pool() {
    for (auto& w : workers_) abandon(*w);
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Runs every function once. Throws pfp::error only if no worker process can be started.
  void run() {
    const std::size_t total = results_.size();
    if (total == 0) return;
    check_threads(options_);
    SigpipeBlock sigpipe_block;
    SigchldDefault sigchld_default;
    target_workers_ = effective_workers(options_, total);
    for (std::size_t i = 0; i < total; ++i) pending_.push_back(i);

    spawn_missing();
    if (workers_.empty()) throw error("pfp: could not start any worker process: " + last_spawn_error_);

    std::vector<pollfd> fds;
    std::vector<Worker*> polled;
    auto last_sweep = Clock::now();
    while (completed_ < total) {
      if (cancel_ && cancel_->requested()) {
        cancel_everything();
        break;
      }
      dispatch();
      fds.clear();
      polled.clear();
      if (cancel_) {
        fds.push_back(pollfd{cancel_->wake_fd(), POLLIN, 0});
        polled.push_back(nullptr);
      }
      for (auto& w : workers_) {
        if (!w->result_r) continue;
        fds.push_back(pollfd{w->result_r.get(), POLLIN, 0});
        polled.push_back(w.get());
      }
      int rc = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), poll_timeout_ms());
      if (rc < 0 && errno != EINTR) throw_errno("poll");
      if (rc > 0) {
        for (std::size_t k = 0; k < fds.size(); ++k)
          if (fds[k].revents && polled[k]) read_from(*polled[k]);
      }
      auto now = Clock::now();
      enforce_timeouts(now);
      if (rc == 0 || now - last_sweep >= sweep_interval) {
        last_sweep = now;
        for (auto& w : workers_)
          if (w->pid > 0 && has_exited(w->pid)) worker_ended(*w);
      }
      remove_dead();
      spawn_missing();
      if (workers_.empty() && !pending_.empty()) give_up_on_pending();
    }
    shutdown();
  }

 private:
  struct Worker {
    pid_t pid = -1;
    UniqueFd task_w;
    UniqueFd result_r;
    std::deque<std::size_t> queue;  // sent and not yet answered; front() is running
    Clock::time_point head_started{};
    StartedSlot* started = nullptr;  // in a MAP_SHARED page
    unsigned sent = 0;
    std::vector<char> buf;
    std::size_t have = 0;      // bytes in buf
    std::size_t consumed = 0;  // bytes of buf already parsed into results
  };

  static constexpr auto sweep_interval = std::chrono::milliseconds(50);
  static constexpr std::size_t read_chunk = std::size_t{1} << 16;
  static constexpr unsigned max_depth = 64;

  const TaskRunner& run_;
  const Options& options_;
  std::vector<Result>& results_;
  CancelState* cancel_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::deque<std::size_t> pending_;
  std::size_t completed_ = 0;
  unsigned target_workers_ = 1;
  double mean_duration_ns_ = -1;  // running mean of what workers report, to size the pipeline
  std::string last_spawn_error_;

  // ---- starting workers

  void spawn_missing() {
    while (workers_.size() < target_workers_ && !pending_.empty()) {
      if (!spawn_one()) break;
    }
  }

  bool spawn_one() {
    auto w = std::make_unique<Worker>();
    std::vector<int> close_in_child;
    for (auto& other : workers_) {
      if (other->task_w) close_in_child.push_back(other->task_w.get());
      if (other->result_r) close_in_child.push_back(other->result_r.get());
    }
    try {
      Pipe tasks = make_pipe();
      Pipe results = make_pipe();
#if defined(__linux__) && defined(F_SETPIPE_SZ)
      ::fcntl(results.write.get(), F_SETPIPE_SZ, 1 << 20);  // fewer wake-ups for large results
#endif
      close_in_child.push_back(tasks.write.get());
      close_in_child.push_back(results.read.get());
      const int task_fd = tasks.read.get();
      const int result_fd = results.write.get();
      void* page = ::mmap(nullptr, sizeof(StartedSlot), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
      if (page == MAP_FAILED) throw_errno("mmap");
      w->started = new (page) StartedSlot(0);
      StartedSlot* started = w->started;
      const TaskRunner& run = run_;
      const Options& opt = options_;
      try {
        w->pid = fork_worker([&] { worker_loop(task_fd, result_fd, started, run, opt); }, close_in_child);
      } catch (...) {
        unmap(*w);
        throw;
      }
      w->task_w = std::move(tasks.write);
      w->result_r = std::move(results.read);
      set_nonblocking(w->result_r.get());
    } catch (const error& e) {
      last_spawn_error_ = e.what();
      return false;
    }
    workers_.push_back(std::move(w));
    return true;
  }

  // Every worker failed to start or died and none can be started again: the functions that
  // never ran say why instead of hanging the run.
  void give_up_on_pending() {
    for (int attempt = 0; attempt < 20 && workers_.empty(); ++attempt) {
      ::poll(nullptr, 0, 10 * (attempt + 1));
      spawn_missing();
    }
    if (!workers_.empty()) return;
    for (std::size_t i : pending_) {
      results_[i].status = Status::cancelled;
      results_[i].error = "not run: could not start a worker process: " + last_spawn_error_;
      ++completed_;
    }
    pending_.clear();
  }

  // ---- handing out work

  // How many functions a worker may hold at once: enough to hide the round trip for short
  // functions, one for long ones so a slow function does not hold others hostage.
  unsigned depth() const {
    if (mean_duration_ns_ < 0) return 1;
    double d = 200'000.0 / std::max(mean_duration_ns_, 1.0);
    unsigned depth = static_cast<unsigned>(std::clamp(d, 1.0, static_cast<double>(max_depth)));
    std::size_t fair = (pending_.size() + workers_.size() - 1) / std::max<std::size_t>(workers_.size(), 1);
    return static_cast<unsigned>(std::max<std::size_t>(1, std::min<std::size_t>(depth, fair + 1)));
  }

  void dispatch() {
    if (pending_.empty()) return;
    const unsigned limit = depth();
    std::uint64_t batch[max_depth];
    for (auto& w : workers_) {
      if (!w->task_w || pending_.empty()) continue;
      std::size_t n = 0;
      while (w->queue.size() + n < limit && !pending_.empty()) {
        if (options_.max_tasks_per_worker && w->sent + n >= options_.max_tasks_per_worker) break;
        batch[n++] = pending_.front();
        pending_.pop_front();
      }
      if (n == 0) continue;
      if (w->queue.empty()) w->head_started = Clock::now();
      for (std::size_t k = 0; k < n; ++k) w->queue.push_back(static_cast<std::size_t>(batch[k]));
      w->sent += static_cast<unsigned>(n);
      // At most 64 indices (512 bytes, below PIPE_BUF) are ever in the pipe: the write is atomic
      // and never blocks.
      if (!write_all(w->task_w.get(), batch, n * sizeof(std::uint64_t))) {
        SigpipeBlock::consume_pending();
        // The worker is gone; its death is noticed on its result pipe and its queue handed back.
      }
    }
  }

  // ---- receiving results

  // A frame carries a little more than its Value; saturate so "no limit" (SIZE_MAX) stays that.
  std::size_t max_frame() const noexcept {
    constexpr std::size_t slack = 4096;
    return options_.max_result_bytes > std::numeric_limits<std::size_t>::max() - slack ? std::numeric_limits<std::size_t>::max()
                                                                                     : options_.max_result_bytes + slack;
  }

  void read_from(Worker& w) {
    if (!w.result_r) return;
    for (int rounds = 0; rounds < 256; ++rounds) {
      std::size_t want = read_chunk;
      if (w.have - w.consumed >= frame_header_size) {
        // Grow towards the frame's size as its bytes arrive, never to what a header merely claims.
        std::size_t claimed = 0;
        std::memcpy(&claimed, w.buf.data() + w.consumed + 8, sizeof claimed);
        std::size_t missing = claimed + frame_header_size > w.have - w.consumed
                                  ? claimed + frame_header_size - (w.have - w.consumed)
                                  : 0;
        want = std::max(want, std::min(missing, std::max(w.have - w.consumed, read_chunk)));
      }
      if (w.buf.size() - w.have < want) w.buf.resize(w.have + want);
      ssize_t got = read_some(w.result_r.get(), w.buf.data() + w.have, w.buf.size() - w.have);
      if (got > 0) {
        w.have += static_cast<std::size_t>(got);
        if (!parse_frames(w)) return;
        if (static_cast<std::size_t>(got) < want) return;  // drained for now
        continue;
      }
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      worker_ended(w);  // EOF (or a read error): the worker is gone or has closed its end
      return;
    }
  }

  // Parses every complete frame. Returns false if the worker was killed for a protocol error.
  bool parse_frames(Worker& w) {
    for (;;) {
      std::string_view view(w.buf.data() + w.consumed, w.have - w.consumed);
      std::optional<std::size_t> size;
      try {
        size = frame_size(view, max_frame());
        if (!size || view.size() < *size) break;
        if (w.queue.empty()) throw error("pfp: protocol error: a frame arrived from a worker that holds no function");
        Result decoded = decode_result_frame(view.substr(0, *size), max_frame());
        const std::size_t expected = w.queue.front();
        if (decoded.index != expected)
          throw error("pfp: protocol error: a frame for function " + std::to_string(decoded.index) + " arrived while function " +
                      std::to_string(expected) + " was running");
        accept(w, std::move(decoded));
      } catch (const error& e) {
        kill_worker(w, Status::crashed, e.what());
        return false;
      }
      w.consumed += *size;
      if (options_.max_tasks_per_worker && w.queue.empty() && w.sent >= options_.max_tasks_per_worker) {
        retire(w);
        return false;
      }
    }
    if (w.consumed == w.have) {
      w.consumed = w.have = 0;
      if (w.buf.size() > (std::size_t{4} << 20)) std::vector<char>().swap(w.buf);  // give back a big result's buffer
    } else if (w.consumed > 0 && w.consumed >= w.have / 2) {
      std::memmove(w.buf.data(), w.buf.data() + w.consumed, w.have - w.consumed);
      w.have -= w.consumed;
      w.consumed = 0;
    }
    return true;
  }

  void accept(Worker& w, Result&& decoded) {
    const std::size_t i = w.queue.front();
    w.queue.pop_front();
    Result& r = results_[i];
    r.status = decoded.status;
    r.error = std::move(decoded.error);
    r.result = std::move(decoded.result);
    r.duration = decoded.duration;
    r.pid = static_cast<int>(w.pid);
    conclude(i);
    double ns = static_cast<double>(r.duration.count());
    mean_duration_ns_ = mean_duration_ns_ < 0 ? ns : mean_duration_ns_ * 0.875 + ns * 0.125;
    w.head_started = Clock::now();
  }

  // One attempt of function i reached a verdict: it is final unless the options ask to try again.
  void conclude(std::size_t i) {
    Result& r = results_[i];
    ++r.attempts;
    bool retryable = r.status == Status::crashed || r.status == Status::timed_out ||
                     (r.status == Status::exception && options_.retry_exceptions);
    if (retryable && r.attempts <= options_.retries) {
      pending_.push_back(i);
      return;
    }
    ++completed_;
  }

  // Stops the run: running functions are killed with their workers, the rest never start.
  void cancel_everything() {
    for (auto& w : workers_) {
      if (w->pid <= 0) continue;
      if (w->queue.empty()) continue;
      drain(*w);  // results that made it are kept
      if (w->pid <= 0 || w->queue.empty()) continue;
      std::vector<std::size_t> waiting(w->queue.begin() + 1, w->queue.end());
      w->queue.resize(1);
      kill_worker(*w, Status::cancelled, "cancelled while running: the worker was killed");
      for (std::size_t i : waiting) pending_.push_front(i);
    }
    for (std::size_t i : pending_) {
      results_[i].status = Status::cancelled;
      results_[i].error = "cancelled before it started";
      ++completed_;
    }
    pending_.clear();
  }

  // ---- ending workers

  // Hands a dead or killed worker's unfinished functions back: the running one gets the verdict,
  // the ones queued behind it never started and go back to the front of the line.
  void settle_queue(Worker& w, Status status, const std::string& why) {
    if (w.queue.empty()) return;
    const bool head_began = status == Status::timed_out ||
                            w.started->load(std::memory_order_acquire) == static_cast<std::uint64_t>(w.queue.front()) + 1;
    if (!head_began) {  // died between functions: nothing it held had started
      for (auto it = w.queue.rbegin(); it != w.queue.rend(); ++it) pending_.push_front(*it);
      w.queue.clear();
      return;
    }
    Result& r = results_[w.queue.front()];
    r.status = status;
    r.error = why;
    r.result = Value();
    r.pid = static_cast<int>(w.pid);
    if (status == Status::timed_out || status == Status::cancelled)
      r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - w.head_started);
    w.queue.pop_front();
    if (status == Status::cancelled) {
      ++r.attempts;
      ++completed_;
    } else {
      conclude(r.index);
    }
    for (auto it = w.queue.rbegin(); it != w.queue.rend(); ++it) pending_.push_front(*it);
    w.queue.clear();
  }

  static void unmap(Worker& w) noexcept {
    if (w.started) ::munmap(static_cast<void*>(w.started), sizeof(StartedSlot));
    w.started = nullptr;
  }

  void close_pipes(Worker& w) {
    unmap(w);
    w.task_w.reset();
    w.result_r.reset();
    std::vector<char>().swap(w.buf);
    w.have = w.consumed = 0;
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
    ::kill(-w.pid, SIGKILL);
    ::kill(w.pid, SIGKILL);
    int status = 0;
    std::string why = wait_pid(w.pid, &status, 0) != w.pid
                          ? "ended, but its exit status was collected elsewhere (a SIGCHLD handler calling waitpid?)"
                          : (WIFSIGNALED(status) ? "was " : "exited with ") + describe_wait_status(status);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGXCPU && options_.cpu_limit.count() > 0)
      why += " after using its CPU time limit of " + std::to_string(options_.cpu_limit.count()) + " s (Options::cpu_limit)";
    settle_queue(w, Status::crashed, "worker process " + std::to_string(w.pid) + " " + why + " while running the function");
    close_pipes(w);
  }

  // Reads what a worker left in its pipe before it is declared dead, so no finished result is lost.
  void drain(Worker& w) {
    while (w.result_r) {
      if (w.buf.size() - w.have < read_chunk) w.buf.resize(w.have + read_chunk);
      ssize_t got = read_some(w.result_r.get(), w.buf.data() + w.have, w.buf.size() - w.have);
      if (got <= 0) return;
      w.have += static_cast<std::size_t>(got);
      if (!parse_frames(w)) return;
    }
  }

  void kill_worker(Worker& w, Status status, const std::string& why) {
    ::kill(-w.pid, SIGKILL);
    ::kill(w.pid, SIGKILL);
    int ignored = 0;
    wait_pid(w.pid, &ignored, 0);
    settle_queue(w, status, why);
    close_pipes(w);
  }

  // A worker that has run its allowance of functions: it exits by itself right after its last frame.
  void retire(Worker& w) {
    w.task_w.reset();
    reap(w.pid, std::chrono::milliseconds(1000));
    close_pipes(w);
  }

  void enforce_timeouts(Clock::time_point now) {
    if (options_.timeout.count() <= 0) return;
    for (auto& w : workers_) {
      if (w->pid <= 0 || w->queue.empty() || now - w->head_started < options_.timeout) continue;
      const std::size_t head = w->queue.front();
      drain(*w);  // it may have finished just now
      if (w->pid <= 0 || w->queue.empty() || w->queue.front() != head) continue;
      kill_worker(*w, Status::timed_out,
                  "exceeded the timeout of " + std::to_string(options_.timeout.count()) + " ms and was killed");
    }
  }

  int poll_timeout_ms() const {
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(sweep_interval);
    if (options_.timeout.count() > 0) {
      auto now = Clock::now();
      for (auto& w : workers_) {
        if (w->queue.empty()) continue;
        auto left = std::chrono::ceil<std::chrono::milliseconds>(w->head_started + options_.timeout - now);
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
  }

  // Used when the run is left by an exception: nothing may outlive it.
  static void abandon(Worker& w) noexcept {
    if (w.pid > 0) {
      ::kill(-w.pid, SIGKILL);
      ::kill(w.pid, SIGKILL);
      int ignored = 0;
      wait_pid(w.pid, &ignored, 0);
    }
    unmap(w);
    w.task_w.reset();
    w.result_r.reset();
    w.pid = -1;
  }
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_POOL_HPP
