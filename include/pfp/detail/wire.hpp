#ifndef PFP_DETAIL_WIRE_HPP
#define PFP_DETAIL_WIRE_HPP

// Every byte layout between the parent and a worker process, in one place. Both ends are the same
// program on the same machine: integers travel in native byte order and width.
//
// Parent -> worker, on the worker's task pipe: task messages.
//   4 x u64: id, seq, fn, size  then `size` payload bytes          (one task)
//   4 x u64: id, seq, fn, run_flag | count                         (a run: `count` tasks with
//            consecutive ids, seqs and fns and no payloads, see Feed::pull_run)
//   id names the task on the wire (the parent's slot and ticket, never reused within a run), seq
//   is TaskView::seq, fn is TaskView::fn. The worker numbers the tasks it is sent from 0 (their
//   ordinals) and claims each before it begins it (claim_task, in the SharedBlock below).
//
// Worker -> parent: result frames, in the worker's shared ring (small ones) or on its result pipe
// (large ones, and frames that do not fit the ring now), each stream in the order the tasks ran.
//   16-byte header: u32 frame_magic, u16 frame_version, u16 kind, u64 payload size
//   kind result:   u64 index (the task's id), status byte, zigzag varint duration in ns,
//                  error text (varint length + bytes), the Value (serialization.hpp)
//   kind remote:   the same, with strings of remote_min_size bytes or more left in the worker's
//                  memory and named by address (remote.hpp); the parent copies and acknowledges
//   kind doorbell: no payload; "look at the ring" (sent when the worker runs out of work)
//   function_name and pid do not travel: the parent knows both.
//
// Shared by both, one page per worker (SharedBlock): what the worker began and when, what it saw
// return, the task claims, the ring's counters, the pipe's byte count, the remote-transfer answer.

#include <pfp/result.hpp>
#include <pfp/serialization.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace pfp {
namespace detail {

// ---- task messages

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

// ---- result frames

// A frame: 16-byte header (magic, version, kind, payload size), then the payload: the index as
// 8 native bytes (read without decoding: the parent checks it on every frame), status byte,
// zigzag varint duration in ns, error text, encoded Value. function_name and pid do not travel:
// the parent knows both. Both ends are the same program on the same machine.
inline constexpr std::uint32_t frame_magic = 0x31504650;  // "PFP1" in little-endian memory
inline constexpr std::uint16_t frame_version = 2;
inline constexpr std::size_t frame_index_size = 8;
inline constexpr std::size_t frame_header_size = 16;
inline constexpr std::uint16_t frame_kind_result = 0;
// A header with no payload that only says "look at the shared ring": see channel.hpp.
inline constexpr std::uint16_t frame_kind_doorbell = 1;
// A result frame whose Value refers to strings left in the worker's memory (Tag::remote_*): the
// parent copies them with process_vm_readv, then acknowledges (remote.hpp); only then may the
// worker touch that memory again. Only ever sent through the pipe.
inline constexpr std::uint16_t frame_kind_remote = 2;

struct FrameHeader {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t kind;
  std::uint64_t payload_size;
};
static_assert(sizeof(FrameHeader) == frame_header_size, "FrameHeader must be 16 bytes");

/// The shape of r's frame, worked out before writing it (encode_result_frame_into does both).
struct FramePlan {
  std::size_t size = 0;       ///< the whole frame, header included
  std::size_t full_size = 0;  ///< its payload with every string in it (what the result limit applies to)
  std::uint64_t duration = 0;
  std::size_t remote_min = no_remote;  ///< no_remote unless strings stay in this process's memory
  std::uint16_t kind = frame_kind_result;
};

/// Sizes r's frame. Strings of remote_min (>= 8) bytes or more are to be left in place as remote
/// references, which makes it a frame_kind_remote frame. Throws pfp::error if r.result cannot be
/// encoded (nested too deep).
inline FramePlan plan_result_frame(const Result& r, std::size_t remote_min = no_remote) {
  FramePlan p;
  p.duration = zigzag(static_cast<std::int64_t>(r.duration.count()));
  RemoteTally remote;
  std::size_t value_size;
  switch (r.result.type()) {  // the usual results without a call
    case Value::Type::null: value_size = 1; break;
    case Value::Type::integer: value_size = 1 + varint_size(zigzag(r.result.as<std::int64_t>())); break;
    default: value_size = encoded_size(r.result, 0, remote_min, &remote);
  }
  const std::size_t payload =
      frame_index_size + 1 + varint_size(p.duration) + varint_size(r.error.size()) + r.error.size() + value_size;
  p.size = frame_header_size + payload;
  p.full_size = payload + remote.extra();
  if (remote.strings) {
    p.kind = frame_kind_remote;
    p.remote_min = remote_min;
  }
  return p;
}

/// Writes r's frame, planned by plan_result_frame, at out (plan.size bytes).
inline void write_result_frame(const Result& r, const FramePlan& plan, char* out) {
  const FrameHeader h{frame_magic, frame_version, plan.kind, plan.size - frame_header_size};
  std::memcpy(out, &h, sizeof h);
  const std::uint64_t index = r.index;
  std::memcpy(out + frame_header_size, &index, sizeof index);
  Writer w(out + frame_header_size + sizeof index, plan.remote_min);
  w.byte(static_cast<std::uint8_t>(r.status));
  w.varint(plan.duration);
  w.text(r.error);
  switch (r.result.type()) {
    case Value::Type::null: w.byte(static_cast<std::uint8_t>(Tag::null)); break;
    case Value::Type::integer:
      w.byte(static_cast<std::uint8_t>(Tag::integer));
      w.varint(zigzag(r.result.as<std::int64_t>()));
      break;
    default: w.value(r.result);
  }
}

/// Encodes r as a frame into out (resized to fit; its capacity is reused). Strings of remote_min
/// (>= 8) bytes or more are left in place as remote references, which makes it a frame_kind_remote
/// frame. Returns the payload size of the frame with every string in it (what the limit applies to).
inline std::size_t encode_result_frame_into(const Result& r, std::string& out, std::size_t remote_min = no_remote) {
  const FramePlan plan = plan_result_frame(r, remote_min);
  out.resize(plan.size);
  write_result_frame(r, plan, out.data());
  return plan.full_size;
}

inline std::string encode_result_frame(const Result& r) {
  std::string frame;
  encode_result_frame_into(r, frame);
  return frame;
}

inline std::string_view doorbell_frame() noexcept {
  static const FrameHeader bell{frame_magic, frame_version, frame_kind_doorbell, 0};
  return {reinterpret_cast<const char*>(&bell), sizeof bell};
}

inline std::uint16_t frame_kind(std::string_view header) noexcept {
  std::uint16_t kind;
  std::memcpy(&kind, header.data() + 6, sizeof kind);
  return kind;
}

/// The function index a whole, size-checked frame is for. Throws pfp::error if it is too short to
/// hold one.
inline std::uint64_t frame_index(std::string_view frame) {
  if (frame.size() < frame_header_size + frame_index_size) throw error("pfp: protocol error: a frame too short to name its function");
  std::uint64_t index;
  std::memcpy(&index, frame.data() + frame_header_size, sizeof index);
  return index;
}

/// Throws the pfp::error that says what is wrong with a frame header frame_size() refused.
[[noreturn]] inline void bad_frame_header(const FrameHeader& h, std::size_t max_frame) {
  if (h.magic != frame_magic) throw error("pfp: protocol error: bad frame magic (the worker wrote something that is not a pfp frame)");
  if (h.version != frame_version)
    throw error("pfp: protocol error: frame version " + std::to_string(h.version) + ", expected " + std::to_string(frame_version));
  if (h.kind != frame_kind_result && h.kind != frame_kind_remote && !(h.kind == frame_kind_doorbell && h.payload_size == 0))
    throw error("pfp: protocol error: unknown frame kind " + std::to_string(h.kind));
  throw error("pfp: result of " + std::to_string(h.payload_size) + " bytes exceeds the limit of " + std::to_string(max_frame) +
              " bytes (Options::max_result_bytes)");
}

/// The whole size of the frame at the start of buf once its header has arrived, nullopt before.
/// Throws pfp::error on a bad magic or version, or a frame larger than max_frame.
inline std::optional<std::size_t> frame_size(std::string_view buf, std::size_t max_frame) {
  if (buf.size() < frame_header_size) return std::nullopt;
  FrameHeader h;
  std::memcpy(&h, buf.data(), sizeof h);
  const bool known = h.kind == frame_kind_result || h.kind == frame_kind_remote || (h.kind == frame_kind_doorbell && h.payload_size == 0);
  if (h.magic != frame_magic || h.version != frame_version || !known || h.payload_size > max_frame ||
      h.payload_size > std::numeric_limits<std::size_t>::max() - frame_header_size)
    bad_frame_header(h, max_frame);
  return frame_header_size + static_cast<std::size_t>(h.payload_size);
}

/// Checks a frame's header and size (and that it is a result frame, or a remote one when
/// `remote` is given) and returns a Reader of its payload. Throws pfp::error if malformed.
inline Reader open_result_frame(std::string_view frame, std::size_t max_frame, RemoteSource* remote = nullptr) {
  std::optional<std::size_t> size = frame_size(frame, max_frame);
  if (!size) throw error("pfp: protocol error: truncated frame header");
  const std::uint16_t kind = frame_kind(frame);
  if (kind != frame_kind_result && !(kind == frame_kind_remote && remote))
    throw error("pfp: protocol error: not a result frame");
  if (*size != frame.size())
    throw error("pfp: protocol error: frame says " + std::to_string(*size) + " bytes, got " + std::to_string(frame.size()));
  return Reader(frame.substr(frame_header_size), kind == frame_kind_remote ? remote : nullptr);
}

/// Reads what follows the index in a result frame's payload into r: status, duration, error and
/// result (function_name, index, pid and attempts are left as they are). Throws pfp::error if
/// malformed (r may then hold part of it).
inline void decode_verdict(Reader& rd, Result& r) {
  std::uint8_t status = rd.byte();
  if (status > static_cast<std::uint8_t>(Status::cancelled)) Reader::fail("unknown status " + std::to_string(status));
  r.status = static_cast<Status>(status);
  r.duration = std::chrono::nanoseconds(unzigzag(rd.varint()));
  const std::string_view error_text = rd.text();
  if (error_text.empty())
    r.error.clear();
  else
    r.error.assign(error_text.data(), error_text.size());
  rd.value_into(r.result);
  if (rd.remaining() != 0) Reader::fail(std::to_string(rd.remaining()) + " trailing bytes in the frame");
}

/// Decodes one whole frame into r (see decode_verdict) and returns the index it carries. A
/// frame_kind_remote frame needs the worker's memory as `remote`. Throws pfp::error on anything
/// malformed.
inline std::uint64_t decode_result_frame_into(std::string_view frame, std::size_t max_frame, Result& r,
                                              RemoteSource* remote = nullptr) {
  Reader rd = open_result_frame(frame, max_frame, remote);
  std::uint64_t index;
  std::memcpy(&index, rd.take(frame_index_size), sizeof index);
  decode_verdict(rd, r);
  return index;
}

/// Decodes one whole frame into a new Result (index from the frame). Throws like
/// decode_result_frame_into.
inline Result decode_result_frame(std::string_view frame, std::size_t max_frame, RemoteSource* remote = nullptr) {
  Result r;
  r.index = static_cast<std::size_t>(decode_result_frame_into(frame, max_frame, r, remote));
  return r;
}

// ---- the shared block

// Each side's frequently written words have cache lines of their own: a worker writes `started`
// and `produced` for every function, the parent `consumed` and the pipe counts for every batch.
struct SharedBlock {
  std::atomic<std::uint64_t> started{0};
  std::atomic<std::int64_t> started_at_ns{0};  // steady_clock time the function began
  // 1 + the index of the function the worker last saw return: from then on only the hand-over of
  // its result remains, which Options::timeout does not cover.
  std::atomic<std::uint64_t> returned{0};
  // Who owns each task sent to this worker and not yet begun (see claim_task / take_back_from):
  // low 32 bits, the ordinal of the next task the worker will look at; high 32 bits, the ordinal
  // below which the parent has taken the tasks back. One word, so exactly one side wins a task.
  std::atomic<std::uint64_t> claim{0};
  // 1 + the index of the first function during which bytes the worker did not write appeared on
  // its result pipe: who corrupted the stream, when the parent finds it corrupt.
  std::atomic<std::uint64_t> corrupted_by{0};
  // Bytes the parent has read from the result pipe, under a sequence count that is odd while a
  // read is in progress: with FIONREAD it gives the worker every byte ever written to the pipe.
  alignas(64) std::atomic<std::uint64_t> pipe_read_seq{0};
  std::atomic<std::uint64_t> pipe_read_total{0};
  alignas(64) std::atomic<std::uint64_t> produced{0};  // bytes ever written to the ring
  alignas(64) std::atomic<std::uint64_t> consumed{0};  // bytes ever taken by the parent
  // Big results left in the worker's memory (remote.hpp): whether the worker may send them that way
  // (set by the parent), and the futex word the parent answers a remote frame on.
  alignas(64) std::atomic<std::uint32_t> remote_allowed{0};
  std::atomic<std::uint32_t> remote_ack{0};
  // The worker's start (Options::initializer): worker_starting until it returned (worker_ready), or
  // worker_start_failed with what it threw in start_error (NUL-terminated).
  alignas(64) std::atomic<std::uint32_t> start_state{0};
  char start_error[1024] = {};
};
inline constexpr std::uint32_t worker_starting = 0, worker_ready = 1, worker_start_failed = 2;
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "pfp needs lock-free 64-bit atomics in shared memory");

/// Worker side: decides whether the worker may begin the task with ordinal `ord` (tasks are
/// numbered per worker in the order they were sent, from 0, modulo 2^32), or the parent took it
/// back. Called for every task in order; the compare-exchange makes the race with take_back()
/// have exactly one winner.
inline bool claim_task(SharedBlock& b, std::uint32_t ord) noexcept {
  std::uint64_t cur = b.claim.load(std::memory_order_acquire);
  for (;;) {
    const auto taken_below = static_cast<std::uint32_t>(cur >> 32);
    const std::uint64_t next = (cur & ~std::uint64_t{0xffffffff}) | static_cast<std::uint32_t>(ord + 1u);
    if (b.claim.compare_exchange_weak(cur, next, std::memory_order_acq_rel, std::memory_order_acquire))
      return static_cast<std::int32_t>(ord - taken_below) >= 0;
  }
}

/// Parent side: takes back every task of ordinal below `sent` that the worker has not begun.
/// Returns the ordinal of the first task taken back: those from it up to `sent` will never run in
/// this worker (it skips them); those below it it has begun or finished.
inline std::uint32_t take_back(SharedBlock& b, std::uint32_t sent) noexcept {
  std::uint64_t cur = b.claim.load(std::memory_order_acquire);
  for (;;) {
    const std::uint64_t want = (std::uint64_t{sent} << 32) | (cur & 0xffffffff);
    if (b.claim.compare_exchange_weak(cur, want, std::memory_order_acq_rel, std::memory_order_acquire))
      return static_cast<std::uint32_t>(cur);
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WIRE_HPP
