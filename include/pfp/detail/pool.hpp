#ifndef PFP_DETAIL_POOL_HPP
#define PFP_DETAIL_POOL_HPP

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

#include <pfp/detail/attempt.hpp>
#include <pfp/detail/channel.hpp>
#include <pfp/detail/feed.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/process.hpp>
#include <pfp/detail/remote.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/detail/task_clock.hpp>
#include <pfp/detail/task_table.hpp>
#include <pfp/detail/testing.hpp>
#include <pfp/detail/wire.hpp>
#include <pfp/detail/worker_end.hpp>
#include <pfp/detail/worker_life.hpp>
#include <pfp/detail/worker_process.hpp>
#include <pfp/error.hpp>
#include <pfp/options.hpp>
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

class Pool {
 public:
  Pool(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel = nullptr)
      : run_(run), options_(options), feed_(feed), cancel_(cancel) {}

  ~Pool() {
    for (auto& w : workers_) w->abandon();
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

    while (turn()) {
    }
    shutdown();
    if (consumer_error_) std::rethrow_exception(consumer_error_);
    if (source_error_) std::rethrow_exception(source_error_);
  }

 private:
  using Worker = WorkerEnd;
  using Queued = QueuedTask;

  // One turn of the main loop: hand out work, wait for something to happen, and act on it.
  // Returns false once the run is over (every task delivered, or the run stopped).
  bool turn() {
    if ((cancel_ && cancel_->requested()) || consumer_error_ || stop_requested()) {
      cancel_everything();
      return false;
    }
    feed_waiting_ = false;
    dispatch();
    if (tasks_.live == 0 && tasks_.pending.empty() && feed_exhausted()) return false;
    const int ready = wait_for_events();
    serve_ready(ready);
    serve_side();
    look_into_busy_rings();
    const auto now = Clock::now();
    enforce_timeouts(now);
    if (ready == 0 || now - last_sweep_ >= sweep_interval) sweep_exited(now);
    remove_dead();
    leaving_.collect([this](Retired&& r) { recycle(std::move(r.shared)); });
    spawn_missing();
    if (workers_.empty() && leaving_.empty() && (!tasks_.pending.empty() || !feed_exhausted())) give_up();
    return true;
  }

  // Sleeps in poll() until a worker sends, a task pipe takes more, the feed or the cancel line
  // wakes it, a retired worker exits, or the next deadline. Returns poll()'s count.
  int wait_for_events() {
    poll_fds_.clear();
    polled_.clear();
    if (cancel_ && cancel_->wake_fd() >= 0) poll_fds_.push_back(pollfd{cancel_->wake_fd(), POLLIN, 0});
    if (feed_waiting_ && feed_.wake_fd() >= 0) poll_fds_.push_back(pollfd{feed_.wake_fd(), POLLIN, 0});
    side_at_ = feed_.side_fd() >= 0 ? poll_fds_.size() : std::numeric_limits<std::size_t>::max();
    if (feed_.side_fd() >= 0) poll_fds_.push_back(pollfd{feed_.side_fd(), POLLIN, 0});
    leaving_.append_poll_fds(poll_fds_);  // wake-ups only: a retired worker has exited
    polled_.resize(poll_fds_.size(), nullptr);
    for (auto& w : workers_) {
      if (!w->result_r) continue;
      poll_fds_.push_back(pollfd{w->result_r.get(), POLLIN, 0});
      polled_.push_back(w.get());
      if (w->out_at < w->out.size() && w->task_w) {
        poll_fds_.push_back(pollfd{w->task_w.get(), POLLOUT, 0});
        polled_.push_back(w.get());
      }
    }
    const int rc = poll_fds(poll_fds_.data(), poll_fds_.size(), poll_timeout_ms());
    if (rc < 0 && errno != EINTR) throw_errno("poll");
    return rc;
  }

  // Reads the result pipes that have something and writes to the task pipes that take more.
  void serve_ready(int ready) {
    if (ready <= 0) return;
    for (std::size_t k = 0; k < poll_fds_.size(); ++k) {
      if (!poll_fds_[k].revents || !polled_[k]) continue;
      if (poll_fds_[k].events == POLLOUT) {
        if (polled_[k]->pid > 0) polled_[k]->flush_out();
      } else {
        read_from(*polled_[k]);
      }
    }
  }

  // What tasks sent besides their results (Feed::side_fd) goes to the feed as it comes; then the
  // feed's requests about tasks it gave (pool_control.hpp).
  void serve_side() {
    if (side_at_ >= poll_fds_.size() || !poll_fds_[side_at_].revents) {
      if (!withdrawing_.empty()) serve_requests();
      return;
    }
    try {
      feed_.side_ready();
      serve_requests();
    } catch (...) {
      consumer_failed();
    }
  }

  // ---- requests of the feed about tasks it gave (pool_control.hpp)

  void serve_requests();
  // Stops task `seq` if this run still holds it; false while it cannot tell yet.
  bool withdraw(std::uint64_t seq);
  // Delivers pending task `id` cancelled, by request, without it having run.
  void deliver_withdrawn(std::uint64_t id);
  void report_workers();

  // A worker rings its doorbell only when it runs out of work, so results it finished before a
  // long task it holds would wait for that task: look into the rings of busy workers too.
  void look_into_busy_rings() {
    for (auto& w : workers_)
      if (w->pid > 0 && w->queue.size() > 1 && w->ring.available() >= frame_header_size) collect(*w);
  }

  // Workers that exited without closing their pipe first (their descendants hold it open).
  void sweep_exited(Clock::time_point now) {
    last_sweep_ = now;
    for (auto& w : workers_)
      if (w->pid > 0 && has_exited(w->pid, w->pidfd.get())) worker_ended(*w);
  }

  static constexpr std::size_t read_chunk = WorkerEnd::read_chunk;
  static constexpr std::size_t out_limit = WorkerEnd::out_limit;
  static constexpr std::size_t answered_kept = WorkerEnd::answered_kept;

  static constexpr auto sweep_interval = std::chrono::milliseconds(50);
  static constexpr auto ring_check_interval = std::chrono::milliseconds(2);
  // A task that has run this long (or four times the mean, if longer) no longer holds others back.
  static constexpr auto stuck_after = std::chrono::milliseconds(1);
  // Once a function returned within Options::timeout, the hand-over of its result gets this long
  // (or ten times the timeout, if longer) before the worker is killed.
  static constexpr auto handover_guard = std::chrono::seconds(10);
  const FeedRunner& run_;
  const Options& options_;
  Feed& feed_;
  CancelState* cancel_;
  std::vector<std::unique_ptr<Worker>> workers_;
  TaskTable tasks_;
  std::vector<std::uint64_t> struck_;  // ids of tasks already run again once after a corrupt stream
  bool task_timeouts_ = false;  // some task has a time limit of its own (Task::timeout)
  std::vector<std::uint64_t> withdrawing_;  // seqs the feed wants stopped, not yet settled (pool_control.hpp)
  std::vector<WorkerView> views_;           // kept: what Feed::report() is given
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
  int last_spawn_errno_ = 0;  // of the last failed start, 0 if it was no system call's
  SlotStarts starts_;    // each worker number's starts (Options::initializer)
  std::string broken_;   // why the run is broken (no worker can start), or empty
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
  std::vector<std::uint64_t> taken_back_;  // kept: no allocation per take-back
  std::vector<Worker*> dispatch_order_;    // kept: no allocation per dispatch ...
  std::vector<Worker*> dispatched_;        // ... nor per message
  std::vector<pollfd> poll_fds_;           // what wait_for_events() polls ...
  std::vector<Worker*> polled_;            // ... and whose each is (null: not a worker's)
  std::size_t side_at_ = 0;                // where in poll_fds_ Feed::side_fd is (SIZE_MAX: not there)
  Clock::time_point last_sweep_ = Clock::now();

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

  bool may_pull() const noexcept {
    return !feed_exhausted() && !feed_waiting_ && tasks_.has_room();
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
    const std::uint64_t ticket = tasks_.new_slot(1);
    TaskTable::Slot& slot = tasks_.slot_of(ticket << run_bits);
    slot.task = std::move(*task);
    task_timeouts_ = task_timeouts_ || slot.task.timeout.count() > 0;
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
    const std::uint64_t ticket = tasks_.new_slot(static_cast<std::uint32_t>(n));
    TaskTable::Slot& slot = tasks_.slot_of(ticket << run_bits);
    slot.task.fn = first_fn;
    slot.task.priority = 0;
    slot.places = places;
    return ticket << run_bits;
  }

  void deliver(std::uint64_t id) {
    TaskTable::Slot& slot = tasks_.slot_of(id);
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
    } else {
      try {
        feed_.placed(slot.seq + TaskTable::place_of(id));
      } catch (...) {
        consumer_failed();
      }
    }
    tasks_.release(id);
  }

  // ---- starting workers

  void spawn_missing();

  unsigned free_slot() const;

  bool spawn_one();

  // Every worker failed to start or died and none can be started again: the tasks that never
  // ran say why instead of hanging the run.
  void give_up();

  // Workers whose initializer still runs (see pool_starts.hpp).
  bool starting(const Worker& w) const;
  void watch_starts();
  bool start_failed(Worker& w);
  void note_started(const Worker& w);
  void start_lost(Worker& w, const std::string& why);
  void fail_rest(const std::string& why);
  std::chrono::milliseconds leave_grace() const;

  // ---- handing out work

  // How many tasks a worker may hold at once: enough work in flight (about 4 ms) that the worker
  // never waits for the parent between two tasks, which looks at busy workers every 2 ms, at least
  // two so the next task is there when one ends, and never more than a fair share of what is known
  // to be left. Deep queues cost nothing when a task runs long: the tasks behind it are taken back
  // (rebalance()).
  unsigned depth() const {
    if (mean_duration_ns_ < 0) return 1;
    double d = 4'000'000.0 / std::max(mean_duration_ns_, 1.0);
    const unsigned most = runs_seen_ ? max_run_pipeline_depth : max_pipeline_depth;
    auto depth = static_cast<std::size_t>(std::clamp(d, 2.0, static_cast<double>(most)));
    if (std::optional<std::size_t> hint = feed_.size_hint()) {
      std::size_t left = tasks_.pending.size() + (*hint > tasks_.next_seq ? *hint - static_cast<std::size_t>(tasks_.next_seq) : 0);
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

  // A worker is stuck when the task it runs has run much longer than tasks usually do: it gets no
  // more work, and what it holds that has not begun goes to the others.
  bool stuck(const Worker& w, Clock::time_point now) const {
    if (w.queue.empty()) return false;
    const std::optional<Clock::time_point> began = w.head_began();
    if (!began) return false;
    const auto usual = std::chrono::nanoseconds(static_cast<std::int64_t>(4 * std::max(mean_duration_ns_, 0.0)));
    return now - *began > std::max<Clock::duration>(stuck_after, usual);
  }

  // Takes back every task w holds and has not begun (the worker skips them when it comes to them)
  // and puts them with the pending ones. Exactly one side wins each task: see take_back().
  std::size_t take_back_from(Worker& w) {
    std::vector<std::uint64_t>& back = taken_back_;
    back.clear();
    w.take_back_unbegun(back);
    w.floor_priority = std::numeric_limits<int>::max();
    for (const Queued& q : w.queue) w.floor_priority = std::min(w.floor_priority, tasks_.slot_of(q.id).task.priority);
    tasks_.hand_back(back);
    return back.size();
  }

  // Moves work that waits where it should not: behind a task that runs long while another worker
  // could begin it, in a busy worker while another one is idle, or ahead of a higher priority.
  void rebalance(Clock::time_point now) {
    std::optional<int> wanted = feed_.next_priority();
    if (!tasks_.pending.empty() && (!wanted || tasks_.priority_of(tasks_.pending.front()) > *wanted)) wanted = tasks_.priority_of(tasks_.pending.front());
    if (workers_.size() < 2 && !wanted) return;
    std::size_t idle = 0, free_to_work = 0;
    for (auto& w : workers_) {
      if (!may_receive(*w)) continue;
      idle += w->queue.empty();
      free_to_work += !stuck(*w, now);
    }
    const bool nothing_else = tasks_.pending.empty() && (feed_exhausted() || feed_waiting_);
    for (auto& w : workers_) {
      if (w->pid <= 0 || w->queue.empty() || (w->queue.size() == 1 && w->head_began())) continue;
      const bool blocks = free_to_work > 0 && stuck(*w, now);
      const bool starves = idle > 0 && nothing_else && w->queue.size() > 1;
      const bool outranked = wanted && *wanted > w->floor_priority;
      if (blocks || starves || outranked) take_back_from(*w);
    }
  }

  // Whether w may be sent more tasks (alive, and below Options::max_tasks_per_worker).
  bool may_receive(const Worker& w) const {
    return w.pid > 0 && w.task_w && (!options_.max_tasks_per_worker || w.sent < options_.max_tasks_per_worker);
  }

  // Hands out work one message at a time, always to the least loaded worker that may take more,
  // so a new task goes where it begins soonest; nothing to a stuck worker.
  void dispatch() {
    update_mean_duration();
    const auto now = Clock::now();
    rebalance(now);
    const unsigned limit = depth();
    std::vector<Worker*>& open = dispatch_order_;
    open.clear();
    for (auto& w : workers_)
      if (may_receive(*w) && !stuck(*w, now)) open.push_back(w.get());
    std::vector<Worker*>& given = dispatched_;
    given.clear();
    while (!open.empty()) {
      const auto least = std::min_element(open.begin(), open.end(),
                                          [](const Worker* a, const Worker* b) { return a->queue.size() < b->queue.size(); });
      Worker& w = **least;
      const std::size_t room = room_in(w, limit);
      if (room == 0) {
        open.erase(least);
        continue;
      }
      if (!hand_one(w, room)) break;  // nothing to hand out now
      if (std::find(given.begin(), given.end(), &w) == given.end()) given.push_back(&w);
    }
    for (Worker* w : given) w->flush_out();
  }

  // How many more tasks w may be given now.
  std::size_t room_in(const Worker& w, unsigned limit) const {
    if (w.queue.size() >= limit || w.out.size() - w.out_at >= out_limit) return 0;
    std::size_t room = limit - w.queue.size();
    if (options_.max_tasks_per_worker)
      room = w.sent >= options_.max_tasks_per_worker ? 0 : std::min<std::size_t>(room, options_.max_tasks_per_worker - w.sent);
    return room;
  }

  // Queues for w the next task (or run of up to `room` tasks): a pending one or one from the
  // feed, whichever has the higher priority (pending first on a tie). False if there is none.
  bool hand_one(Worker& w, std::size_t room) {
    const std::optional<int> feed_priority = tasks_.pending.empty() ? std::nullopt : feed_.next_priority();
    if (!tasks_.pending.empty() && !(feed_priority && *feed_priority > tasks_.priority_of(tasks_.pending.front()))) {
      send_pending(w);
    } else if (std::optional<std::uint64_t> run = pull_run(room)) {
      send_tasks(w, *run, tasks_.slot_of(*run).count);
    } else if (std::optional<std::uint64_t> id = pull_one()) {
      send_tasks(w, *id, 1);
    } else if (!tasks_.pending.empty()) {
      send_pending(w);
    } else {
      return false;
    }
    return true;
  }

  void send_pending(Worker& w) {
    const std::uint64_t id = tasks_.pending.front();
    tasks_.pending.pop_front();
    send_tasks(w, id, 1);
  }

  // Queues one message for w: the task `first_id`, or the `count` tasks of a run from it.
  void send_tasks(Worker& w, std::uint64_t first_id, std::uint32_t count) {
    const TaskTable::Slot& slot = tasks_.slot_of(first_id);
    const std::uint32_t k = TaskTable::place_of(first_id);
    if (w.queue.empty()) w.head_since = Clock::now();
    if (w.queue.empty() || slot.task.priority < w.floor_priority) w.floor_priority = slot.task.priority;
    for (std::uint32_t i = 0; i < count; ++i) w.queue.push_back(Queued{first_id + i, w.sent + i});
    w.sent += count;
    const std::uint64_t header[4] = {first_id, slot.seq + k, slot.task.fn + k,
                                     count > 1 ? run_flag | count : slot.task.payload.size()};
    w.out.append(reinterpret_cast<const char*>(header), sizeof header);
    if (count == 1) w.out.append(slot.task.payload);
  }

  // ---- receiving results

  // A frame carries a little more than its Value; saturate so "no limit" (SIZE_MAX) stays that.
  std::size_t max_frame() const noexcept;

  void read_from(Worker& w);

  // Reads what a worker left before it is declared dead, so no finished result is lost.
  void drain(Worker& w);

  // Takes every complete frame, from the ring or the pipe, in the order the worker ran them.
  // Returns false if the worker is gone (killed for a protocol error, or retired).
  bool collect(Worker& w);

  // A result whose big strings are still in the worker's memory: copy them, then let the worker go
  // on. If the kernel will not let this process read the worker's memory, the worker is told to
  // send the result through the pipe instead (and no worker tries again). If the worker died before
  // its memory was read, the result is lost with it: its death is noticed on its pipe, and the task
  // it was running is reported as crashed.
  void take_remote(Worker& w, std::string_view frame);

  // The worker's stream is corrupt: something wrote on its result pipe that the worker did not
  // (a function writing to descriptors it does not own, a process it left behind), or its ring was
  // overwritten. The worker is killed; every whole frame in its ring was written by the worker
  // itself and is kept. The worker notes which function wrote on its pipe; if that was not the
  // one it was running when killed, the running one is innocent and runs again elsewhere.
  void protocol_failure(Worker& w, const std::string& why);

  bool retire_if_done(Worker& w);

  // The whole frame for the task at the front of w's queue: its verdict, decoded in place.
  // Throws pfp::error if the frame is malformed (the caller declares the stream corrupt).
  void accept(Worker& w, std::string_view frame, RemoteSource* remote = nullptr);

  // The task at the front of w's queue has its verdict in its Result (but for the pid).
  void accepted(Worker& w);

  std::uint64_t tainted_task(const Worker& w) const noexcept;
  void withhold_if_tainted(const Worker& w, Result& r) const;
  static constexpr const char* tainted_suffix = " (this function wrote to pfp's result pipe)";
  static constexpr const char* tainted_why =
      "pfp: protocol error: bytes pfp did not write appeared on the worker's result pipe while this function ran, "
      "so its result was withheld (this function wrote to pfp's result pipe)";

  // One attempt of a task reached a verdict: it is final unless the options ask to try again.
  void conclude(std::uint64_t id);

  // Stops the run: running functions are killed with their workers, the rest never start.
  void cancel_everything();

  // ---- ending workers

  // Hands a dead or killed worker's unfinished functions back: the one it was running gets the
  // verdict; the ones queued behind it never started and go back to the front of the line.
  void settle_queue(Worker& w, Status status, const std::string& why);

  // A gone worker's shared region serves the next one (see SharedRegion::renew).
  void recycle(SharedRegion&& region);

  // Called once the worker's process is gone (reaped), or its region moved out.
  void close_pipes(Worker& w);

  // The worker died on its own (EOF on its pipe, or found exited by the sweep).
  void worker_ended(Worker& w);

  void kill_worker(Worker& w, Status status, const std::string& why);

  // A worker that has run its allowance of functions leaves right after its last frame. It is
  // reaped once it has exited (Leaving, woken by its pidfd), not waited for: the parent serves the
  // other workers meanwhile, and starts the successor as soon as it is gone. Its region and result
  // pipe are kept until then (it may still ring its doorbell).
  void retire(Worker& w);

  std::chrono::milliseconds time_limit(std::uint64_t id) const;

  // When the function at the front of w's queue is out of time: Options::timeout after it began,
  // plus the hand-over guard once it has returned (then only the parent's reading remains).
  Clock::time_point deadline(const Worker& w) const;

  void enforce_timeouts(Clock::time_point now);

  int poll_timeout_ms() const;

  void remove_dead();

  void shutdown();

};

/// Runs `feed` on worker processes (the Backend::processes backend). See Pool::run().
inline void run_feed_processes(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel) {
  Pool pool(run, options, feed, cancel);
  pool.run();
}

}  // namespace detail
}  // namespace pfp

#include <pfp/detail/pool_endings.hpp>  // IWYU pragma: export
#include <pfp/detail/pool_starts.hpp>  // IWYU pragma: export
#include <pfp/detail/pool_results.hpp>  // IWYU pragma: export
#include <pfp/detail/pool_control.hpp>  // IWYU pragma: export

#endif  // PFP_DETAIL_POOL_HPP
