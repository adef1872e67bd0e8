#ifndef PFP_DETAIL_MPI_ROOT_HPP
#define PFP_DETAIL_MPI_ROOT_HPP

// Rank 0 of a Backend::mpi run (see mpi_run.hpp): it pulls the front end's Feed and hands every
// rank, itself included, batches of tasks so that each holds a window of them: two per worker
// at first, then as many as fill ~20 ms of each worker's time at the mean duration seen so far
// (at most 16 * max_run per worker), topped up once half of it is done. Results are filed as they
// come: in the feed's places (Feed::pull_run) or through Feed::deliver.

#include <pfp/detail/mpi_run.hpp>

#include <cstring>

namespace pfp {
namespace detail {

class RootRun {
 public:
  RootRun(Transport& t, const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel)
      : t_(t), options_(options), feed_(feed), cancel_(cancel), share_(run, options, 0) {}

  void run() {
    const std::vector<HelloBlock> hello = handshake(t_, feed_, share_.workers());
    ranks_.resize(hello.size());
    for (std::size_t r = 0; r < hello.size(); ++r) ranks_[r].workers = static_cast<std::size_t>(std::max<std::uint64_t>(hello[r].workers, 1));
    share_.start();
    Idle idle;
    try {
      loop(idle);
    } catch (...) {  // the other ranks wait in the run: ending the job is better than a hang
      t_.abort("rank 0 cannot go on with the run: " + describe_current_exception());
    }
    share_.join();
    while (t_.sending()) idle.wait({});
    if (!rank_error_.empty()) throw error("pfp::mpi: " + rank_error_);
    if (consumer_error_) std::rethrow_exception(consumer_error_);
    if (source_error_) std::rethrow_exception(source_error_);
    if (std::exception_ptr e = share_.error()) std::rethrow_exception(e);
  }

 private:
  // Until every rank, this one included, has ended its share.
  void loop(Idle& idle) {
    for (;;) {
      bool active = check_stop();
      if (!stopping_ && !feed_done_) active |= dispatch();
      active |= receive();
      active |= collect_local();
      if (share_.take_workers_started()) try {  // rank 0's own: what the front end waits for
          feed_.workers_started();
        } catch (...) {
          consumer_failed();
          stop_all();
        }
      if (outstanding_ == 0 && (feed_done_ || stopping_) && !ending_) end_ranks();
      if (ending_ && dones_ == ranks_.size() - 1 && share_.ended()) break;
      if (active) idle.busy();
      t_.sending();
      std::vector<int> fds{share_.results_fd()};
      if (cancel_ && !stopping_) fds.push_back(cancel_->wake_fd());
      if (feed_waiting_ && !stopping_) fds.push_back(feed_.wake_fd());
      idle.wait(fds);
    }
  }

  struct Rank {
    std::size_t workers = 1;
    std::size_t outstanding = 0;
  };

  // Cancelled, or the feed asks to stop: every rank stops what it runs.
  bool check_stop() {
    if (stopping_) return false;
    bool stop = cancel_ && cancel_->requested();
    if (!stop) try {
        stop = feed_.stop_requested();
      } catch (...) {
        consumer_failed();
        stop = true;
      }
    if (stop) stop_all();
    return stop;
  }
  void stop_all() noexcept {
    if (stopping_) return;
    stopping_ = true;
    share_.cancel();
    for (std::size_t r = 1; r < ranks_.size(); ++r) control(static_cast<int>(r), control_cancel);
    try {
      feed_.drop_rest("cancelled before it started");
    } catch (...) {
      consumer_failed();
    }
  }
  void end_ranks() {
    ending_ = true;
    share_.finish();
    for (std::size_t r = 1; r < ranks_.size(); ++r) control(static_cast<int>(r), control_end);
  }
  void control(int r, std::uint32_t code) noexcept {
    try {
      send_owned(t_, r, tag_control, std::string(reinterpret_cast<const char*>(&code), sizeof code));
    } catch (...) {
      consumer_failed();
    }
  }

  std::size_t window(const Rank& r) const {
    std::size_t per_worker = 2;
    // Up to 16 pool runs a worker: short tasks then cost one round trip per ~16k of them.
    if (mean_ns_ > 0) per_worker = static_cast<std::size_t>(std::clamp(20e6 / mean_ns_, 2.0, 16.0 * max_run));
    return r.workers * per_worker;
  }

  // Tops up every rank whose window is half empty. Returns whether any task was handed out.
  bool dispatch() {
    bool any = false;
    for (std::size_t k = 0; k < ranks_.size() && !feed_done_ && !stopping_; ++k) {
      const std::size_t r = (next_rank_ + k) % ranks_.size();
      const std::size_t w = window(ranks_[r]);
      if (ranks_[r].outstanding > w / 2) continue;
      any |= fill(static_cast<int>(r), w - ranks_[r].outstanding);
    }
    next_rank_ = (next_rank_ + 1) % ranks_.size();
    return any;
  }

  // Pulls up to `room` tasks for rank r and hands them over in one batch.
  bool fill(int r, std::size_t room) {
    std::string batch;
    std::size_t n = 0;
    while (n < room) {
      std::uint64_t first_fn = 0;
      Result* places = nullptr;
      std::size_t got = 0;
      std::optional<Task> task;
      try {
        got = feed_.pull_run(std::min<std::size_t>(room - n, max_run), first_fn, places);
        if (got == 0) task = feed_.pull();
      } catch (...) {
        if (!source_error_) source_error_ = std::current_exception();
        feed_done_ = true;
        break;
      }
      if (got == 0 && !task) {
        try {
          feed_waiting_ = !feed_.finished();
        } catch (...) {
          if (!source_error_) source_error_ = std::current_exception();
        }
        feed_done_ = !feed_waiting_;
        break;
      }
      feed_waiting_ = false;
      const std::uint64_t seq = places_.size();
      if (got) {
        for (std::size_t k = 0; k < got; ++k) places_.push_back(places + k);
        hand_over(r, batch, seq, first_fn, got, {});
        n += got;
      } else {
        places_.push_back(nullptr);
        hand_over(r, batch, seq, task->fn, 1, std::move(task->payload));
        ++n;
      }
    }
    if (!batch.empty()) send_owned(t_, r, tag_tasks, std::move(batch));
    ranks_[static_cast<std::size_t>(r)].outstanding += n;
    outstanding_ += n;
    return n > 0;
  }
  void hand_over(int r, std::string& batch, std::uint64_t seq, std::uint64_t fn, std::size_t count, std::string payload) {
    if (r == 0)
      share_.add(seq, fn, count, std::move(payload));
    else if (count > 1)
      add_task_run(batch, seq, fn, count);
    else
      add_task(batch, seq, fn, payload);
  }

  // Takes every message that has arrived. Returns whether there was any.
  bool receive() {
    bool any = false;
    int source, tag;
    std::size_t bytes;
    while (t_.probe(source, tag, bytes)) {
      any = true;
      msg_.resize(bytes);
      t_.recv(source, tag, msg_.data(), bytes);
      if (tag == tag_results) {
        BulkSource bulk(t_, source);
        const std::size_t max_frame = options_.max_result_bytes + 4096;
        for_each_result(msg_, max_frame, [&](std::uint64_t seq, std::int32_t pid, std::uint32_t attempts, std::string_view frame) {
          Result r;
          decode_result_frame_into(frame, max_frame, r, &bulk);
          r.index = static_cast<std::size_t>(seq);
          r.pid = pid;
          r.attempts = attempts;
          r.rank = source;
          file(static_cast<std::size_t>(source), std::move(r));
        });
      } else if (tag == tag_done) {
        ++dones_;
        if (bytes && rank_error_.empty()) rank_error_ = "rank " + std::to_string(source) + " could not run its share: " + msg_;
      } else {
        throw error("pfp::mpi: protocol error: rank " + std::to_string(source) + " sent message tag " + std::to_string(tag));
      }
    }
    return any;
  }

  bool collect_local() {
    local_.clear();
    share_.take(local_);
    for (Result& r : local_) file(0, std::move(r));
    return !local_.empty();
  }

  // Files the Result of task r.index, run by `rank`.
  void file(std::size_t rank, Result&& r) {
    const std::size_t seq = r.index;
    if (seq >= places_.size()) throw error("pfp::mpi: protocol error: a Result for task " + std::to_string(seq) + " never sent");
    --ranks_[rank].outstanding;
    --outstanding_;
    if (r.duration.count() > 0 && r.status == Status::ok)
      mean_ns_ = mean_ns_ < 0 ? static_cast<double>(r.duration.count()) : 0.9 * mean_ns_ + 0.1 * static_cast<double>(r.duration.count());
    if (Result* place = places_[seq]) {
      place->status = r.status;
      if (!r.result.is_null() || !place->result.is_null()) place->result = std::move(r.result);
      if (!r.error.empty() || !place->error.empty()) place->error = std::move(r.error);
      place->pid = r.pid;
      place->duration = r.duration;
      place->attempts = r.attempts;
      place->rank = r.rank;
      return;
    }
    if (consumer_error_) return;
    try {
      feed_.deliver(seq, std::move(r));
    } catch (...) {
      consumer_failed();
      stop_all();
    }
  }

  void consumer_failed() noexcept {
    if (!consumer_error_) consumer_error_ = std::current_exception();
  }

  Transport& t_;
  const Options& options_;
  Feed& feed_;
  CancelState* cancel_;
  RankShare share_;
  std::vector<Rank> ranks_;
  std::vector<Result*> places_;  // by seq: where the feed keeps its Result (null: deliver())
  std::size_t outstanding_ = 0, next_rank_ = 0, dones_ = 0;
  double mean_ns_ = -1;
  bool stopping_ = false, ending_ = false, feed_done_ = false, feed_waiting_ = false;
  std::string msg_, rank_error_;
  std::vector<Result> local_;
  std::exception_ptr source_error_, consumer_error_;
};

/// Runs `feed` as one rank of a Backend::mpi run: rank 0 dispatches and files every Result, the
/// others serve (their feed hears drop_rest: the Results are on rank 0). Collective: every rank
/// calls it with the same registrations. Throws pfp::error on every rank if they differ.
inline void run_feed_ranks(Transport& t, const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel) {
  if (feed.side_fd() >= 0)  // the same on every rank: each throws before the handshake
    throw error("pfp::mpi: this front end (the batch Manager) sends its workers' log lines on a channel of one machine, "
                "which Backend::mpi does not carry; use MultiProcessor, map_results or Executor with Backend::mpi");
  if (t.rank() == 0)
    RootRun(t, run, options, feed, cancel).run();
  else
    serve_rank(t, run, options, feed);
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_MPI_ROOT_HPP
