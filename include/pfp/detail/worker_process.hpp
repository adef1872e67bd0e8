#ifndef PFP_DETAIL_WORKER_PROCESS_HPP
#define PFP_DETAIL_WORKER_PROCESS_HPP

// The child side of the process backend: what a forked worker does until it leaves. It reads task
// messages from its inbox (the task pipe), claims each task before it begins it (the parent may
// have taken it back), runs it, and sends its result frame through the shared ring or the result
// pipe (wire.hpp). It runs Options::initializer first and tells the parent how that went in its
// shared block. It leaves only through _exit (after its finalizer and a coverage flush, see
// exit_normally()): when the parent closes the pipe, when it has run Options::max_tasks_per_worker
// tasks, after a task that wrote on pfp's result pipe, or when its initializer failed.

#include <pfp/detail/attempt.hpp>
#include <pfp/detail/channel.hpp>
#include <pfp/detail/feed.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/process.hpp>
#include <pfp/detail/remote.hpp>
#include <pfp/detail/task_clock.hpp>
#include <pfp/detail/testing.hpp>
#include <pfp/detail/wire.hpp>
#include <pfp/detail/worker_life.hpp>
#include <pfp/options.hpp>
#include <pfp/result.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace pfp {
namespace detail {


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


// Runs one task into r (timed by `clock`, started by the caller) and encodes its frame: straight
// into `ring` (reserved there, not yet published) when it fits and is an ordinary frame, else into
// `frame`. Returns how many bytes of the frame wait in the ring for RingWriter::commit (0: the
// frame is in `frame`). Strings of remote_min bytes or more are left in r (a frame_kind_remote
// frame), which must then stay untouched until the parent has answered. r is reused from task to
// task.
inline std::size_t run_one(std::uint64_t id, const TaskView& task, const FeedRunner& run, const Options& opt,
                           std::string& frame, Result& r, TaskClock& clock, std::size_t remote_min = no_remote,
                           RingWriter* ring = nullptr, std::atomic<std::uint64_t>* returned = nullptr) {
  const std::size_t index = static_cast<std::size_t>(id);
  r.function_name.clear();
  if (!r.result.is_null()) r.result = Value();
  r.error.clear();
  r.pid = 0;
  r.attempts = 0;
  r.index = index;
  run_attempt(run, task, opt, r);
  r.duration = std::chrono::nanoseconds(clock.stop());
  if (returned) {
    returned->store(id + 1, std::memory_order_release);
    if (testing::after_return) testing::after_return();
  }
  r.index = index;  // whatever the function did to its Result, the frame names the right task
  try {
    const FramePlan plan = plan_result_frame(r, remote_min);
    if (plan.full_size > opt.max_result_bytes) {
      std::string().swap(frame);
      refuse_result(r, oversized(plan.full_size, opt));
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
    refuse_result(r, unserializable());
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

// A worker process's life after fork: serve() reads task messages, claims and runs each task,
// and sends its frame, until the parent closes the inbox.
class WorkerProcess {
 public:
  WorkerProcess(int task_fd, int result_fd, SharedBlock* shared, char* ring, const FeedRunner& run, const Options& opt,
                WorkerInfo info)
      : task_fd_(task_fd), result_fd_(result_fd), shared_(shared), ring_out_(shared, ring), run_(run), opt_(opt),
        slot_(info.number), life_(opt, info) {}

  [[noreturn]] void serve() {
    // The parent made both pipes non-blocking; this worker's ends block.
    ::fcntl(task_fd_, F_SETFL, 0);
    ::fcntl(result_fd_, F_SETFL, 0);
#if defined(__linux__) && defined(F_SETPIPE_SZ)
    ::fcntl(result_fd_, F_SETPIPE_SZ, 1 << 20);  // fewer wake-ups for large results
#endif
    worker_result_fd = result_fd_;
    apply_memory_limit(opt_);
    current_worker = &life_.current();  // for the whole life of this process
    start();
    pipe_bytes_ = bytes_ever_written(result_fd_, shared_);
    for (;;) {
      run_messages();
      read_more();
    }
  }

 private:
  // Runs every whole message in the inbox buffer.
  void run_messages() {
    while (have_ - at_ >= task_header_size) {
      const std::uint64_t first_id = word(0), first_seq = word(1), first_fn = word(2), size_word = word(3);
      const bool is_run = (size_word & run_flag) != 0;
      const std::uint64_t payload_size = is_run ? 0 : size_word;
      const std::uint64_t count = is_run ? size_word & ~run_flag : 1;
      if (have_ - at_ - task_header_size < payload_size) return;
      TaskView task;
      task.payload = std::string_view(in_.get() + at_ + task_header_size, static_cast<std::size_t>(payload_size));
      task.worker = slot_;
      at_ += task_header_size + static_cast<std::size_t>(payload_size);  // the payload stays until read_more()
      clock_.refresh();
      for (std::uint64_t k = 0; k < count; ++k) {
        if (!claim_task(*shared_, ordinal_++)) continue;  // the parent took it back: it runs elsewhere
        task.seq = first_seq + k;
        task.fn = first_fn + k;
        run_task(first_id + k, task);
      }
      if (count > 1) ring_bell();  // the parent collects a run's results while the next one runs
    }
  }

  // Runs one claimed task and sends its frame; leaves after it when it must.
  void run_task(std::uint64_t id, const TaskView& task) {
    arm_cpu_limit(opt_);
    shared_->started_at_ns.store(clock_.start(), std::memory_order_relaxed);
    shared_->started.store(id + 1, std::memory_order_release);
    worker_current_ticket = id;
    const bool remote = !remote_refused_ && shared_->remote_allowed.load(std::memory_order_relaxed) != 0;
    const std::size_t in_ring = run_one(id, task, run_, opt_, frame_, r_, clock_, remote ? remote_min_size : no_remote,
                                        &ring_out_, &shared_->returned);
    // A task that took less time than a write to a pipe takes cannot have written there: trivial
    // tasks skip the look (itself a system call).
    const bool look = clock_.could_have_written();
    const bool wrote_on_pipe = look && wrote_on_result_pipe(id);
    // What the function printed appears even though the worker leaves by _exit.
    bool quiet = !flush_standard_streams() && !look;
    quiet = send_frame(in_ring) && quiet;
    ++done_;
    if (wrote_on_pipe || (opt_.max_tasks_per_worker && done_ >= opt_.max_tasks_per_worker)) {
      ring_bell();
      exit_normally();
    }
    clock_.chain(quiet && opt_.cpu_limit.count() <= 0);  // what pfp's system calls in between take is nobody's run time
  }

  // Only the parent reads the result pipe, so its byte count can grow during a task only if the
  // task (or something it started) wrote to it. Such a task is the culprit of whatever the parent
  // finds on the pipe: the worker then leaves after that task's frame instead of starting another,
  // so however late the parent looks, the task it finds running is the culprit or one that never
  // began (and runs elsewhere, once), never an innocent one caught half-way.
  bool wrote_on_result_pipe(std::uint64_t id) {
    const std::uint64_t now_written = bytes_ever_written(result_fd_, shared_);
    const bool wrote = now_written > pipe_bytes_;
    if (wrote) {
      std::uint64_t none = 0;
      shared_->corrupted_by.compare_exchange_strong(none, id + 1);
    }
    pipe_bytes_ = now_written;
    return wrote;
  }

  // Sends the frame run_one() made: published in the ring already (in_ring bytes), or a remote
  // frame the parent copies from, or into the ring, or through the pipe. Returns true if it took
  // no system call.
  bool send_frame(std::size_t in_ring) {
    bool quiet = true;
    if (in_ring) {
      ring_out_.commit(in_ring);
      bell_owed_ = true;
    } else if (frame_kind(frame_) == frame_kind_remote) {
      quiet = false;
      // The big strings stay in r_ until the parent has copied them.
      shared_->remote_ack.store(remote_ack_waiting, std::memory_order_relaxed);
      send(frame_.data(), frame_.size());
      if (remote_wait(shared_->remote_ack) == remote_ack_refused) {
        remote_refused_ = true;
        encode_result_frame_into(r_, frame_);  // within the limit: it was checked with the strings counted
      } else {
        frame_.clear();
      }
    }
    if (!r_.result.is_null()) r_.result = Value();
    if (in_ring || frame_.empty()) {
      // published above, or delivered from the worker's memory
    } else if (ring_out_.put(frame_)) {
      bell_owed_ = true;
    } else {
      quiet = false;
      send(frame_.data(), frame_.size());
    }
    if (frame_.capacity() > ring_frame_limit) std::string().swap(frame_);  // do not sit on a big result's memory
    return quiet;
  }

  // Keeps the partial message, makes room for the rest of it, and waits for more; leaves when
  // the parent closed the inbox (or died).
  void read_more() {
    if (at_ > 0) {
      std::memmove(in_.get(), in_.get() + at_, have_ - at_);
      have_ -= at_;
      at_ = 0;
    }
    std::size_t want = std::size_t{1} << 16;
    if (have_ >= task_header_size) want = std::max<std::size_t>(want, static_cast<std::size_t>(task_header_size + word(3) - have_));
    // Fit the buffer to what is needed: grown for a big payload, given back after one.
    if (in_size_ - have_ < want || (in_size_ > (std::size_t{4} << 20) && have_ + want < in_size_ / 4)) {
      std::unique_ptr<char[]> bigger(new char[have_ + want]);
      std::memcpy(bigger.get(), in_.get(), have_);
      in_ = std::move(bigger);
      in_size_ = have_ + want;
    }
    ring_bell();  // about to wait for work: let the parent collect what is in the ring
    const ssize_t got = read_some(task_fd_, in_.get() + have_, in_size_ - have_);
    if (got <= 0) exit_normally();
    have_ += static_cast<std::size_t>(got);
  }

  void send(const char* data, std::size_t n) {
    if (!write_all(result_fd_, data, n)) exit_normally();  // the parent is gone
    pipe_bytes_ += n;
  }

  // Runs the initializer. If it throws, the parent reads why in the shared block, and the worker
  // leaves without running anything (nor the finalizer: it never started).
  void start() {
    std::string why;
    if (life_.begin(why)) {
      shared_->start_state.store(worker_ready, std::memory_order_release);
      return;
    }
    const std::size_t n = std::min(why.size(), sizeof shared_->start_error - 1);
    std::memcpy(shared_->start_error, why.data(), n);
    shared_->start_error[n] = '\0';
    shared_->start_state.store(worker_start_failed, std::memory_order_release);
    flush_coverage();
    flush_stdio();
    leave(0);
  }

  // Every way a worker leaves on its own: finalizer (with the worker's state), coverage data,
  // buffered output, then _exit.
  [[noreturn]] void exit_normally() noexcept {
    life_.end();
    flush_coverage();
    flush_stdio();
    leave(0);
  }

  void ring_bell() {
    if (!bell_owed_) return;
    bell_owed_ = false;
    const std::string_view bell = doorbell_frame();
    send(bell.data(), bell.size());
  }

  std::uint64_t word(std::size_t k) const {
    std::uint64_t v;
    std::memcpy(&v, in_.get() + at_ + k * sizeof v, sizeof v);
    return v;
  }

  const int task_fd_;
  const int result_fd_;
  SharedBlock* const shared_;
  RingWriter ring_out_;
  const FeedRunner& run_;
  const Options& opt_;
  const unsigned slot_;
  WorkerLife life_;
  std::size_t in_size_ = std::size_t{1} << 16;
  std::unique_ptr<char[]> in_{new char[in_size_]};  // grown without zero-filling: only bytes read are touched
  std::size_t have_ = 0;        // bytes in in_
  std::size_t at_ = 0;          // bytes of in_ already run
  unsigned done_ = 0;           // tasks run
  std::uint32_t ordinal_ = 0;   // of the next task in the inbox (see claim_task)
  bool bell_owed_ = false;      // frames in the ring the parent has not been told about
  bool remote_refused_ = false;  // the parent could not read this worker's memory
  // Every byte ever written to the result pipe, as of the last look, plus what this worker wrote
  // since: more than that after a task means the task (or something it started) wrote there.
  std::uint64_t pipe_bytes_ = 0;
  std::string frame_;
  Result r_;  // reused from task to task
  TaskClock clock_;
};

[[noreturn]] inline void worker_loop(int task_fd, int result_fd, SharedBlock* shared, char* ring, const FeedRunner& run,
                                     const Options& opt, WorkerInfo info) {
  WorkerProcess(task_fd, result_fd, shared, ring, run, opt, info).serve();
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WORKER_PROCESS_HPP
