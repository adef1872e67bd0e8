#ifndef PFP_RESULT_HPP
#define PFP_RESULT_HPP

#include <pfp/error.hpp>
#include <pfp/serialization.hpp>
#include <pfp/value.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace pfp {

/// How a function's run ended.
enum class Status : std::uint8_t {
  ok,         ///< returned normally; Result::result holds what it produced
  exception,  ///< threw; Result::error names the exception type and its what()
  crashed,    ///< its worker died (signal or exit); Result::error names the signal or exit code
  timed_out,  ///< ran past Options::timeout and was killed with its process group
  cancelled,  ///< never ran to completion because the run was stopped or could not start it
};

/// "ok", "exception", "crashed", "timed_out" or "cancelled".
constexpr std::string_view to_string(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::exception: return "exception";
    case Status::crashed: return "crashed";
    case Status::timed_out: return "timed_out";
    case Status::cancelled: return "cancelled";
  }
  return "unknown";
}

/// What one registered function produced. execute_parallel() returns exactly one per function.
struct Result {
  std::string function_name;            ///< the name given to register_function
  std::size_t index = 0;                ///< registration order, from 0
  Status status = Status::cancelled;
  Value result;                         ///< what the function produced (null if nothing)
  std::string error;                    ///< empty when ok; otherwise names the cause
  int pid = 0;                          ///< the worker process that ran it (0 if it never ran)
  /// How long the function itself ran, measured in the worker (for functions of a few nanoseconds
  /// run back to back, the few dozen nanoseconds pfp spends between two of them included).
  std::chrono::nanoseconds duration{};
  unsigned attempts = 0;                ///< times the function was started (more than 1 after retries)

  bool ok() const noexcept { return status == Status::ok; }
};

namespace detail {

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

}  // namespace detail
}  // namespace pfp

#endif  // PFP_RESULT_HPP
