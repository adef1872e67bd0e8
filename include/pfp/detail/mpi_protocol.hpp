#ifndef PFP_DETAIL_MPI_PROTOCOL_HPP
#define PFP_DETAIL_MPI_PROTOCOL_HPP

// What the ranks of a Backend::mpi run say to each other, as bytes; no <mpi.h> here (the
// transport that carries them is in <pfp/mpi.hpp>). Every rank runs the same program, so the
// functions are the same everywhere and only task numbers, payloads and Results travel.
//
//   hello    (every rank, collective)  HelloBlock: frame magic and version, byte order, the
//                                      feed's signature and size, the rank's workers
//   tasks    (rank 0 -> rank k)        records: u64 seq, u64 fn, u64 size, then `size` payload
//                                      bytes; size = run_flag | count: `count` tasks with
//                                      consecutive seqs and fns and no payload
//   results  (rank k -> rank 0)        records: i32 pid, u32 attempts, then one result frame
//                                      (wire.hpp) whose index is the seq; strings of
//                                      remote_min_size bytes or more stay out of the frame as
//                                      remote references and follow as bulk messages, in order
//   bulk     (rank k -> rank 0)        raw bytes of one piece (up to bulk_piece) of such a string
//   control  (rank 0 -> rank k)        u32 control_end (no more tasks) or control_cancel
//   done     (rank k -> rank 0)        every Result was sent; the text of what failed, if anything
// Integers are native: the hello block refuses ranks whose byte order or frame version differ.

#include <pfp/detail/wire.hpp>
#include <pfp/error.hpp>
#include <pfp/result.hpp>
#include <pfp/serialization.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace pfp {
namespace detail {

enum MpiTag : int { tag_tasks = 7301, tag_results, tag_bulk, tag_control, tag_done };
inline constexpr std::uint32_t control_end = 1;
inline constexpr std::uint32_t control_cancel = 2;
/// The most bytes of one string sent as one bulk message (MPI counts are int).
inline constexpr std::size_t bulk_piece = std::size_t{512} << 20;

/// What each rank tells the others when a run starts; every field must agree except workers.
struct HelloBlock {
  std::uint64_t byte_order = 0x0102030405060708ull;  // reads differently on another byte order
  std::uint32_t magic = frame_magic;
  std::uint16_t version = frame_version;
  std::uint16_t protocol = 1;
  std::uint64_t signature = 0;  // Feed::signature()
  std::uint64_t tasks = 0;      // Feed::size_hint(), or unknown_tasks
  std::uint64_t workers = 0;    // this rank's worker processes (may differ between ranks)
};
inline constexpr std::uint64_t unknown_tasks = ~std::uint64_t{0};

/// Throws the pfp::error that says how rank `r`'s hello differs from rank 0's, if it does.
inline void check_hello(const HelloBlock& root, const HelloBlock& other, int r) {
  const std::string who = "pfp::mpi: rank " + std::to_string(r) + " ";
  if (other.byte_order != root.byte_order)
    throw error(who + "has another byte order than rank 0; run every rank on machines of one byte order");
  if (other.magic != root.magic || other.version != root.version || other.protocol != root.protocol)
    throw error(who + "runs another pfp version (frame version " + std::to_string(other.version) + ", rank 0 has " +
                std::to_string(root.version) + "); run the same program on every rank");
  if (other.tasks != root.tasks || other.signature != root.signature) {
    auto count = [](std::uint64_t n) { return n == unknown_tasks ? std::string("a stream of") : std::to_string(n); };
    throw error(who + "registered other functions than rank 0 (" + count(other.tasks) + " tasks, names hash " +
                std::to_string(other.signature) + "; rank 0: " + count(root.tasks) + " tasks, names hash " +
                std::to_string(root.signature) +
                "). Every rank must register the same functions under the same names in the same order, "
                "and call the same collective (execute_parallel, map) at the same point");
  }
}

// ---- task batches

inline void put_u64(std::string& out, std::uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
inline std::uint64_t get_u64(const char*& p, const char* end) {
  if (end - p < 8) throw error("pfp::mpi: protocol error: a truncated message");
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  p += sizeof v;
  return v;
}

/// Appends one task (seq, fn, payload) to a task batch.
inline void add_task(std::string& batch, std::uint64_t seq, std::uint64_t fn, std::string_view payload) {
  put_u64(batch, seq);
  put_u64(batch, fn);
  put_u64(batch, payload.size());
  batch.append(payload.data(), payload.size());
}
/// Appends `count` tasks with consecutive seqs and fns from seq, fn, and no payloads.
inline void add_task_run(std::string& batch, std::uint64_t seq, std::uint64_t fn, std::uint64_t count) {
  put_u64(batch, seq);
  put_u64(batch, fn);
  put_u64(batch, run_flag | count);
}

/// Calls each(seq, fn, count, payload) for every record of a batch (count > 1: a run of tasks
/// with consecutive seqs and fns and no payloads). Throws pfp::error if the batch is malformed.
template <class Each>
void for_each_task(std::string_view batch, Each&& each) {
  const char* p = batch.data();
  const char* end = p + batch.size();
  while (p != end) {
    const std::uint64_t seq = get_u64(p, end), fn = get_u64(p, end), size = get_u64(p, end);
    if (size & run_flag) {
      each(seq, fn, size & ~run_flag, std::string_view());
      continue;
    }
    if (static_cast<std::uint64_t>(end - p) < size) throw error("pfp::mpi: protocol error: a truncated task");
    each(seq, fn, std::uint64_t{1}, std::string_view(p, static_cast<std::size_t>(size)));
    p += size;
  }
}

// ---- result batches

/// The strings of v that a frame encoded with remote_min leaves out as remote references, in the
/// order the frame names them (the order Writer::value walks v).
inline void remote_strings(const Value& v, std::size_t remote_min, std::vector<std::string_view>& out) {
  switch (v.type()) {
    case Value::Type::string:
    case Value::Type::bytes:
      if (v.str().size() >= remote_min) out.emplace_back(v.str());
      return;
    case Value::Type::array:
      for (const Value& e : v.elements()) remote_strings(e, remote_min, out);
      return;
    case Value::Type::object:
      for (const auto& kv : v.items()) remote_strings(kv.second, remote_min, out);
      return;
    default: return;
  }
}

/// Appends r's record (pid, attempts, frame with index = r.index) to a result batch; strings of
/// remote_min_size bytes or more are left in r and named in `bulk`, to be sent after the batch.
/// Returns false, with nothing appended, if r.result cannot be encoded (nested too deep).
inline bool add_result(std::string& batch, const Result& r, std::vector<std::string_view>& bulk) {
  FramePlan plan;
  try {
    plan = plan_result_frame(r, remote_min_size);
  } catch (const error&) {
    return false;
  }
  const std::int32_t pid = r.pid;
  const std::uint32_t attempts = r.attempts;
  const std::size_t at = batch.size();
  batch.resize(at + 8 + plan.size);
  std::memcpy(&batch[at], &pid, 4);
  std::memcpy(&batch[at + 4], &attempts, 4);
  write_result_frame(r, plan, &batch[at + 8]);
  if (plan.kind == frame_kind_remote) remote_strings(r.result, remote_min_size, bulk);
  return true;
}

/// Calls each(seq, pid, attempts, frame) for every record of a result batch. Throws pfp::error if
/// the batch is malformed.
template <class Each>
void for_each_result(std::string_view batch, std::size_t max_frame, Each&& each) {
  std::size_t at = 0;
  while (at < batch.size()) {
    if (batch.size() - at < 8 + frame_header_size) throw error("pfp::mpi: protocol error: a truncated result");
    std::int32_t pid;
    std::uint32_t attempts;
    std::memcpy(&pid, batch.data() + at, 4);
    std::memcpy(&attempts, batch.data() + at + 4, 4);
    const std::string_view rest = batch.substr(at + 8);
    const std::size_t size = *frame_size(rest, max_frame);
    if (size > rest.size()) throw error("pfp::mpi: protocol error: a truncated result frame");
    const std::string_view frame = rest.substr(0, size);
    each(frame_index(frame), pid, attempts, frame);
    at += 8 + size;
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_MPI_PROTOCOL_HPP
