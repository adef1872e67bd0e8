#ifndef PFP_DETAIL_POOL_RESULTS_HPP
#define PFP_DETAIL_POOL_RESULTS_HPP

// The process pool, continued: how results come in. Frames are taken from a worker's ring and
// result pipe in the order it ran its tasks, decoded in place into each task's Result, and
// concluded (final, or tried again). A stream found corrupt kills its worker and costs the task it
// was running (or the one that wrote on the pipe); big results are copied out of the worker's
// memory. Part of pool.hpp, which includes it at its end.

#include <pfp/detail/pool.hpp>

namespace pfp {
namespace detail {

// A frame carries a little more than its Value; saturate so "no limit" (SIZE_MAX) stays that.
inline std::size_t Pool::max_frame() const noexcept {
  constexpr std::size_t slack = 4096;
  return options_.max_result_bytes > std::numeric_limits<std::size_t>::max() - slack ? std::numeric_limits<std::size_t>::max()
                                                                                   : options_.max_result_bytes + slack;
}

inline void Pool::read_from(Worker& w) {
  for (int rounds = 0; rounds < 1024 && w.result_r; ++rounds) {
    ssize_t got = w.read_pipe(spare_buf_, max_frame());
    if (got == 0) {
      worker_ended(w);  // EOF: the worker is gone or has closed its end
      return;
    }
    if (!collect(w)) return;
    if (got < 0) return;
  }
}

// Reads what a worker left before it is declared dead, so no finished result is lost.
inline void Pool::drain(Worker& w) {
  while (w.result_r && w.read_pipe(spare_buf_, max_frame()) > 0) {
  }
  if (w.result_r) collect(w);
}

// Takes every complete frame, from the ring or the pipe, in the order the worker ran them.
// Returns false if the worker is gone (killed for a protocol error, or retired).
inline bool Pool::collect(Worker& w) {
  bool pipe_fresh = false;
  bool took = false;
  try {
    for (;;) {
      std::string_view from_ring = w.ring_frame(scratch_, max_frame());
      if (!from_ring.empty() && !pipe_fresh) {
        // Whatever reached the pipe before this ring frame is readable now: read it first, so
        // the two streams are merged in the order they were written.
        pipe_fresh = true;
        if (w.result_r) w.read_pipe(spare_buf_, max_frame());
      }
      w.skip_doorbells(max_frame());
      // The common case, taken without the checks below: nothing waiting from the pipe, and the
      // ring holding the frames of the tasks at the front of the queue, in order.
      // The worker's counter of bytes written is read once for all the frames it covers: the
      // worker moves it after every function, so each look would wait for the other core.
      if (pipe_fresh && w.have == w.consumed && !from_ring.empty()) {
        std::size_t avail = w.ring.available();
        const std::uint64_t culprit = tainted_task(w);  // once for every frame `avail` covers
        while (!from_ring.empty() && !w.queue.empty()) {
          prefetch(from_ring.data() + 512);  // frames written on another core: ask for them early
          if (frame_index(from_ring) != w.queue.front().id || culprit == w.queue.front().id + 1) break;
          Reader rd(from_ring.substr(frame_header_size + frame_index_size));
          decode_verdict(rd, tasks_.result_of(w.queue.front().id));
          w.ring.advance(from_ring.size());
          avail -= from_ring.size();
          accepted(w);
          took = true;
          if (retire_if_done(w)) return false;
          from_ring = w.ring_frame(scratch_, max_frame(), avail);
        }
        if (from_ring.empty()) from_ring = w.ring_frame(scratch_, max_frame());
      }
      std::string_view from_pipe = w.pipe_frame(max_frame());
      if (from_ring.empty() && from_pipe.empty()) break;
      const bool has_expected = !w.queue.empty();
      const std::uint64_t expected = has_expected ? w.queue.front().id : 0;
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
      } else if (!from_ring.empty() && !w.holds(frame_index(from_ring))) {
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
inline void Pool::take_remote(Worker& w, std::string_view frame) {
  std::atomic<std::uint32_t>& ack = w.shared.block()->remote_ack;
  const std::size_t own = frame.size() - frame_header_size;
  RemoteReader reader(w.pid, max_frame() > own ? max_frame() - own : 0);
  Result& r = tasks_.result_of(w.queue.front().id);
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
  withhold_if_tainted(w, r);
  accepted(w);
}

// The worker's stream is corrupt: something wrote on its result pipe that the worker did not
// (a function writing to descriptors it does not own, a process it left behind), or its ring was
// overwritten. The worker is killed; every whole frame in its ring was written by the worker
// itself and is kept. The worker notes which function wrote on its pipe; if that was not the
// one it was running when killed, the running one is innocent and runs again elsewhere.
inline void Pool::protocol_failure(Worker& w, const std::string& why) {
  if (testing::on_corrupt_stream) testing::on_corrupt_stream(w.pid);
  kill_tree(w.pid, w.pidfd.get());
  int ignored = 0;
  reap_child(w.pid, w.pidfd.get(), &ignored);
  try {
    while (!w.queue.empty()) {
      std::string_view frame = w.ring_frame(scratch_, max_frame());
      if (frame.empty()) break;
      const std::uint64_t id = frame_index(frame);
      if (id == w.queue.front().id) {
        accept(w, frame);
      } else if (w.holds(id)) {
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
    r.error = why + tainted_suffix;
    r.pid = static_cast<int>(w.pid);
    r.attempts = 1;
    try {
      feed_.amend(seq, std::move(r));
    } catch (...) {
      consumer_failed();
    }
  }
  if (!w.queue.empty() && w.head_began() && culprit != 0 && culprit != w.queue.front().id + 1 &&
      std::find(struck_.begin(), struck_.end(), w.queue.front().id) == struck_.end()) {
    std::uint64_t again = w.queue.front().id;
    struck_.push_back(again);
    w.queue.pop_front();
    settle_queue(w, Status::crashed, why);  // the rest never started
    tasks_.hand_back(again);
  } else {
    const bool head_wrote = !w.queue.empty() && culprit == w.queue.front().id + 1;
    settle_queue(w, Status::crashed, head_wrote ? why + tainted_suffix : why);
  }
  close_pipes(w);
}

inline bool Pool::retire_if_done(Worker& w) {
  if (!options_.max_tasks_per_worker || !w.queue.empty() || w.sent < options_.max_tasks_per_worker) return false;
  retire(w);
  return true;
}

// The whole frame for the task at the front of w's queue: its verdict, decoded in place.
// Throws pfp::error if the frame is malformed (the caller declares the stream corrupt).
inline void Pool::accept(Worker& w, std::string_view frame, RemoteSource* remote) {
  Result& r = tasks_.result_of(w.queue.front().id);
  decode_result_frame_into(frame, max_frame(), r, remote);
  withhold_if_tainted(w, r);
  accepted(w);
}

// 1 + the id of the task during which bytes the worker did not write appeared on its result pipe
// (0: none). The worker marks the task before it sends that task's frame, so a frame seen before
// this load is looked at is covered by it.
inline std::uint64_t Pool::tainted_task(const Worker& w) const noexcept {
  return w.shared ? w.shared.block()->corrupted_by.load(std::memory_order_acquire) : 0;
}

// The result of a task that wrote on pfp's result pipe cannot be trusted, whatever its frame
// says: it is withheld and the task reported crashed, before any feed sees it (a stream cannot
// take back a verdict it has handed out).
inline void Pool::withhold_if_tainted(const Worker& w, Result& r) const {
  if (tainted_task(w) != w.queue.front().id + 1) return;
  r.status = Status::crashed;
  r.result = Value();
  r.error = tainted_why;
}

// The task at the front of w's queue has its verdict in its Result (but for the pid).
inline void Pool::accepted(Worker& w) {
  const std::uint64_t id = w.queue.front().id;
  w.queue.pop_front();
  w.answered[w.answered_at++ % answered_kept] = {id, tasks_.seq_of(id)};
  Result& r = tasks_.result_of(id);
  r.pid = static_cast<int>(w.pid);
  durations_ns_ += r.duration.count();
  ++durations_;
  conclude(id);
}

// One attempt of a task reached a verdict: it is final unless the options ask to try again.
inline void Pool::conclude(std::uint64_t id) {
  Result& r = tasks_.result_of(id);
  ++r.attempts;
  if (retry_wanted(r, options_)) {
    tasks_.hand_back(id);
    return;
  }
  deliver(id);
}

// Stops the run: running functions are killed with their workers, the rest never start.
inline void Pool::cancel_everything() {
  for (auto& w : workers_) {
    if (w->pid <= 0 || w->queue.empty()) continue;
    drain(*w);  // results that made it are kept
    if (w->pid <= 0 || w->queue.empty()) continue;
    std::vector<std::uint64_t> waiting;
    for (auto it = w->queue.begin() + 1; it != w->queue.end(); ++it) waiting.push_back(it->id);
    w->queue.resize(1);
    kill_worker(*w, Status::cancelled, "cancelled while running: the worker was killed with everything it started");
    tasks_.hand_back(waiting);
  }
  while (!tasks_.pending.empty()) {
    std::uint64_t id = tasks_.pending.front();
    tasks_.pending.pop_front();
    Result& r = tasks_.result_of(id);
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

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_RESULTS_HPP
