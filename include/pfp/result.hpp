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
  std::chrono::nanoseconds duration{};  ///< how long the function itself ran, measured in the worker
  unsigned attempts = 0;                ///< times the function was started (more than 1 after retries)

  bool ok() const noexcept { return status == Status::ok; }
};

namespace detail {

// A frame: 16-byte header (magic, version, kind, payload size), then the payload:
// varint index, status byte, zigzag duration in ns, error text, encoded Value.
// function_name and pid do not travel: the parent knows both.
inline constexpr std::uint32_t frame_magic = 0x31504650;  // "PFP1" in little-endian memory
inline constexpr std::uint16_t frame_version = 1;
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

/// Encodes r as a frame into out (resized to fit; its capacity is reused). Strings of remote_min
/// (>= 8) bytes or more are left in place as remote references, which makes it a frame_kind_remote
/// frame. Returns the payload size of the frame with every string in it (what the limit applies to).
inline std::size_t encode_result_frame_into(const Result& r, std::string& out, std::size_t remote_min = no_remote) {
  std::uint64_t duration = zigzag(static_cast<std::int64_t>(r.duration.count()));
  RemoteTally remote;
  std::size_t payload = varint_size(r.index) + 1 + varint_size(duration) + varint_size(r.error.size()) +
                        r.error.size() + encoded_size(r.result, 0, remote_min, &remote);
  out.resize(frame_header_size + payload);
  FrameHeader h{frame_magic, frame_version, remote.strings ? frame_kind_remote : frame_kind_result, payload};
  std::memcpy(out.data(), &h, sizeof h);
  Writer w(out.data() + frame_header_size, remote.strings ? remote_min : no_remote);
  w.varint(r.index);
  w.byte(static_cast<std::uint8_t>(r.status));
  w.varint(duration);
  w.text(r.error);
  w.value(r.result);
  return payload + remote.extra();
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

/// The function index a whole, size-checked frame is for. Throws pfp::error if unreadable.
inline std::size_t frame_index(std::string_view frame) {
  Reader rd(frame.substr(frame_header_size));
  return static_cast<std::size_t>(rd.varint());
}

/// The whole size of the frame at the start of buf once its header has arrived, nullopt before.
/// Throws pfp::error on a bad magic or version, or a frame larger than max_frame.
inline std::optional<std::size_t> frame_size(std::string_view buf, std::size_t max_frame) {
  if (buf.size() < frame_header_size) return std::nullopt;
  FrameHeader h;
  std::memcpy(&h, buf.data(), sizeof h);
  if (h.magic != frame_magic) throw error("pfp: protocol error: bad frame magic (the worker wrote something that is not a pfp frame)");
  if (h.version != frame_version)
    throw error("pfp: protocol error: frame version " + std::to_string(h.version) + ", expected " + std::to_string(frame_version));
  if (h.kind != frame_kind_result && h.kind != frame_kind_remote && !(h.kind == frame_kind_doorbell && h.payload_size == 0))
    throw error("pfp: protocol error: unknown frame kind " + std::to_string(h.kind));
  if (h.payload_size > max_frame || h.payload_size > std::numeric_limits<std::size_t>::max() - frame_header_size)
    throw error("pfp: result of " + std::to_string(h.payload_size) + " bytes exceeds the limit of " + std::to_string(max_frame) +
                " bytes (Options::max_result_bytes)");
  return frame_header_size + static_cast<std::size_t>(h.payload_size);
}

/// Decodes one whole frame. A frame_kind_remote frame needs the worker's memory as `remote`.
/// Throws pfp::error on anything malformed.
inline Result decode_result_frame(std::string_view frame, std::size_t max_frame, RemoteSource* remote = nullptr) {
  std::optional<std::size_t> size = frame_size(frame, max_frame);
  if (!size) throw error("pfp: protocol error: truncated frame header");
  const std::uint16_t kind = frame_kind(frame);
  if (kind != frame_kind_result && !(kind == frame_kind_remote && remote))
    throw error("pfp: protocol error: not a result frame");
  if (*size != frame.size())
    throw error("pfp: protocol error: frame says " + std::to_string(*size) + " bytes, got " + std::to_string(frame.size()));
  Reader rd(frame.substr(frame_header_size), kind == frame_kind_remote ? remote : nullptr);
  Result r;
  r.index = static_cast<std::size_t>(rd.varint());
  std::uint8_t status = rd.byte();
  if (status > static_cast<std::uint8_t>(Status::cancelled)) Reader::fail("unknown status " + std::to_string(status));
  r.status = static_cast<Status>(status);
  r.duration = std::chrono::nanoseconds(unzigzag(rd.varint()));
  r.error = std::string(rd.text());
  r.result = rd.value();
  if (rd.remaining() != 0) Reader::fail(std::to_string(rd.remaining()) + " trailing bytes in the frame");
  return r;
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_RESULT_HPP
