#ifndef PFP_DETAIL_WORKER_END_HPP
#define PFP_DETAIL_WORKER_END_HPP

// The parent's end of one worker process: its pipes, its shared region and ring, the bytes read
// and not yet parsed, the task messages not yet written, and the tasks it holds in the order it
// runs them. What it knows of its worker (which task began, when) it reads from the shared block.

#include <pfp/detail/channel.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/process.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/detail/wire.hpp>
#include <pfp/error.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/types.h>
#include <unistd.h>

namespace pfp {
namespace detail {

/// A task in a worker's queue: its id, and its ordinal among the tasks sent to that worker.
struct QueuedTask {
  std::uint64_t id;
  std::uint32_t ord;
};

struct WorkerEnd {
  using Clock = std::chrono::steady_clock;
  static constexpr std::size_t answered_kept = 64;
  static constexpr std::size_t read_chunk = std::size_t{1} << 16;
  static constexpr std::size_t out_limit = std::size_t{1} << 20;  // payload bytes queued per worker


    pid_t pid = -1;
    UniqueFd pidfd;     // names the process even once someone else reaped it (-1: no pidfds)
    unsigned slot = 0;  // TaskView::worker
    UniqueFd task_w;
    UniqueFd result_r;
    SharedRegion shared;
    RingReader ring;
    std::deque<QueuedTask> queue;  // tasks sent and not yet answered, in the order the worker runs them
    // (id, seq) of the last tasks it answered, oldest first from answered_at once full
    std::array<std::pair<std::uint64_t, std::uint64_t>, answered_kept> answered{};
    std::size_t answered_at = 0;
    Clock::time_point head_since{};  // when the front of the queue became the front
    unsigned sent = 0;         // tasks sent (the next one's ordinal, modulo 2^32)
    int floor_priority = 0;    // lowest priority among the queue's tasks (or lower)
    std::string out;           // task messages not yet written to the task pipe
    std::size_t out_at = 0;    // bytes of out already written
    ReadBuffer buf;            // bytes from the result pipe
    std::size_t have = 0;      // bytes in buf
    std::size_t consumed = 0;  // bytes of buf already parsed

  // Takes back every task it holds and has not begun (see take_back() in wire.hpp), appending
  // their ids to `into` in the order they were sent.
  void take_back_unbegun(std::vector<std::uint64_t>& into) {
    if (pid <= 0 || !shared || queue.empty()) return;
    const std::uint32_t first = take_back(*shared.block(), sent);
    const std::size_t from = into.size();
    while (!queue.empty() && static_cast<std::int32_t>(queue.back().ord - first) >= 0) {
      into.push_back(queue.back().id);
      queue.pop_back();
    }
    std::reverse(into.begin() + static_cast<std::ptrdiff_t>(from), into.end());
  }

  // Writes what the task pipe takes now; the rest waits for POLLOUT.
  void flush_out() {
    while (out_at < out.size()) {
      ssize_t n = ::write(task_w.get(), out.data() + out_at, out.size() - out_at);
      if (n > 0) {
        out_at += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // The worker is gone; its death is noticed on its result pipe and its queue handed back.
      SigpipeBlock::consume_pending();
      out_at = out.size();
      break;
    }
    out.clear();
    out_at = 0;
    if (out.capacity() > out_limit * 4) std::string().swap(out);
  }

  // Reads the pipe once. Returns the bytes read, 0 at EOF, -1 when nothing is there now.
  ssize_t read_pipe(ReadBuffer& spare, std::size_t max_frame) {
    std::size_t want = read_chunk;
    if (have - consumed >= frame_header_size) {
      // Grow towards the frame's size as its bytes arrive, never to what a header merely claims.
      std::uint64_t claimed = 0;
      std::memcpy(&claimed, buf.data() + consumed + 8, sizeof claimed);
      std::size_t held = have - consumed;
      std::size_t missing = claimed > held - frame_header_size ? static_cast<std::size_t>(std::min<std::uint64_t>(
                                                                     claimed - (held - frame_header_size), max_frame))
                                                               : 0;
      want = std::max(want, std::min(missing, std::max(held, read_chunk)));
    }
    if (buf.capacity() == 0 && spare.capacity() >= want) buf = std::move(spare);  // see recycle()
    if (buf.capacity() - have < want && buf.make_room(consumed, have, have - consumed + want)) {
      have -= consumed;
      consumed = 0;
    }
    SharedBlock* block = shared ? shared.block() : nullptr;
    if (block) block->pipe_read_seq.fetch_add(1, std::memory_order_acq_rel);
    ssize_t got = read_some(result_r.get(), buf.data() + have, buf.capacity() - have);
    if (block) {
      if (got > 0) block->pipe_read_total.fetch_add(static_cast<std::uint64_t>(got), std::memory_order_acq_rel);
      block->pipe_read_seq.fetch_add(1, std::memory_order_acq_rel);
    }
    if (got > 0) {
      have += static_cast<std::size_t>(got);
      return got;
    }
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return 0;  // EOF, or an error that means the same
  }

  // The next whole frame in the worker's ring, or an empty view.
  std::string_view ring_frame(std::string& scratch, std::size_t max_frame) {
    return ring_frame(scratch, max_frame, ring.available());
  }
  // ... of the `avail` bytes known to be there.
  std::string_view ring_frame(std::string& scratch, std::size_t max_frame, std::size_t avail) {
    if (avail < frame_header_size) return {};
    std::string_view head = ring.peek(frame_header_size, scratch);
    std::optional<std::size_t> size = frame_size(head, max_frame);
    if (frame_kind(head) != frame_kind_result || *size > avail)
      throw error("pfp: protocol error: a malformed frame in the worker's shared ring");
    return ring.peek(*size, scratch);
  }

  // The next whole frame in the pipe buffer, or an empty view.
  std::string_view pipe_frame(std::size_t max_frame) const {
    std::string_view rest(buf.data() + consumed, have - consumed);
    std::optional<std::size_t> size = frame_size(rest, max_frame);
    return size && rest.size() >= *size ? rest.substr(0, *size) : std::string_view();
  }

  // Doorbells only say "look at the ring".
  void skip_doorbells(std::size_t max_frame) {
    while (have - consumed >= frame_header_size &&
           frame_kind({buf.data() + consumed, frame_header_size}) == frame_kind_doorbell) {
      frame_size({buf.data() + consumed, have - consumed}, max_frame);  // validates the header
      consumed += frame_header_size;
    }
  }

  bool holds(std::uint64_t id) const {
    return std::any_of(queue.begin(), queue.end(), [id](const QueuedTask& q) { return q.id == id; });
  }

  // Whether the worker began the function at the front of its queue, and when.
  std::optional<Clock::time_point> head_began() const {
    if (queue.empty() || !shared) return std::nullopt;
    const SharedBlock* b = shared.block();
    if (b->started.load(std::memory_order_acquire) != queue.front().id + 1) return std::nullopt;
    return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
        std::chrono::nanoseconds(b->started_at_ns.load(std::memory_order_relaxed))));
  }

  // When the front of the queue started running, as well as the parent can tell.
  Clock::time_point head_start() const {
    std::optional<Clock::time_point> began = head_began();
    return began ? std::max(*began, head_since) : head_since;
  }

  // Used when the run is left by an exception: nothing may outlive it.
  void abandon() noexcept {
    if (pid > 0) {
      kill_tree(pid, pidfd.get());
      int ignored = 0;
      reap_child(pid, pidfd.get(), &ignored);
    }
    pidfd.reset();
    shared.reset();
    task_w.reset();
    result_r.reset();
    pid = -1;
  }
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WORKER_END_HPP
