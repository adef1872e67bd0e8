#ifndef PFP_DETAIL_CHANNEL_HPP
#define PFP_DETAIL_CHANNEL_HPP

// The shared-memory half of a worker's result channel. Each worker has one MAP_SHARED region,
// created before fork, holding:
//   - `started`: 1 + the index of the function the worker last began, and when it began. A store
//     costs no system call and survives the worker's death, so the parent can tell the function
//     a dead worker was running from the ones it never started, and time it exactly.
//   - a single-producer / single-consumer byte ring for result frames. Small frames go there
//     instead of through the pipe; the worker writes one doorbell frame to its pipe when it runs
//     out of work, so a batch of results costs one system call. Frames in the ring survive the
//     worker, so a crash never loses a result that was already produced.
// Frames that do not fit (large results, or a full ring) go through the pipe. Each stream stays
// in execution order, and the parent takes from whichever holds the function it expects next.

#include <pfp/detail/posix.hpp>
#include <pfp/detail/wire.hpp>
#include <pfp/error.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>

#include <sys/mman.h>

namespace pfp {
namespace detail {

inline constexpr std::size_t ring_capacity = std::size_t{1} << 20;  // a power of two
/// Frames larger than this always take the pipe, so one big result cannot monopolise the ring.
inline constexpr std::size_t ring_frame_limit = ring_capacity / 4;

/// Owns one worker's shared region.
class SharedRegion {
 public:
  static constexpr std::size_t header_bytes = 4096;
  static_assert(sizeof(SharedBlock) <= header_bytes, "SharedBlock must fit its page");

  SharedRegion() = default;
  /// Maps a fresh region. Throws pfp::error if mmap fails.
  static SharedRegion create() {
    SharedRegion r;
    void* p = ::mmap(nullptr, header_bytes + ring_capacity, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw_errno("mmap of a worker's shared region");
    r.base_ = static_cast<char*>(p);
    new (r.base_) SharedBlock();
    return r;
  }
  SharedRegion(SharedRegion&& o) noexcept : base_(std::exchange(o.base_, nullptr)) {}
  SharedRegion& operator=(SharedRegion&& o) noexcept {
    if (this != &o) {
      reset();
      base_ = std::exchange(o.base_, nullptr);
    }
    return *this;
  }
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;
  ~SharedRegion() { reset(); }

  void reset() noexcept {
    if (base_) ::munmap(base_, header_bytes + ring_capacity);
    base_ = nullptr;
  }
  explicit operator bool() const noexcept { return base_ != nullptr; }
  /// Makes a region whose worker is gone (reaped) fit for a new one: fresh counters. The pages stay
  /// mapped, so the parent takes no page fault on them after the next fork.
  void renew() noexcept { new (base_) SharedBlock(); }
  SharedBlock* block() const noexcept { return reinterpret_cast<SharedBlock*>(base_); }
  char* ring() const noexcept { return base_ + header_bytes; }

 private:
  char* base_ = nullptr;
};

inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Worker side: appends whole frames; never blocks.
class RingWriter {
 public:
  RingWriter(SharedBlock* block, char* ring) noexcept : block_(block), ring_(ring) {}

  /// Room for n contiguous bytes at the ring's head, or nullptr when there is none right now (or
  /// n is over ring_frame_limit). What is written there is published by commit(n).
  char* reserve(std::size_t n) noexcept {
    const std::uint64_t head = block_->produced.load(std::memory_order_relaxed);
    const std::uint64_t tail = block_->consumed.load(std::memory_order_acquire);
    const std::size_t at = static_cast<std::size_t>(head & (ring_capacity - 1));
    if (n > ring_frame_limit || n > ring_capacity - (head - tail) || n > ring_capacity - at) return nullptr;
    return ring_ + at;
  }
  void commit(std::size_t n) noexcept {
    block_->produced.store(block_->produced.load(std::memory_order_relaxed) + n, std::memory_order_release);
  }

  /// Copies frame into the ring and publishes it. False when it does not fit right now.
  bool put(std::string_view frame) noexcept {
    const std::uint64_t head = block_->produced.load(std::memory_order_relaxed);
    const std::uint64_t tail = block_->consumed.load(std::memory_order_acquire);
    if (frame.size() > ring_frame_limit || frame.size() > ring_capacity - (head - tail)) return false;
    const std::size_t at = static_cast<std::size_t>(head & (ring_capacity - 1));
    const std::size_t first = std::min(frame.size(), ring_capacity - at);
    std::memcpy(ring_ + at, frame.data(), first);
    std::memcpy(ring_, frame.data() + first, frame.size() - first);
    block_->produced.store(head + frame.size(), std::memory_order_release);
    return true;
  }

 private:
  SharedBlock* block_;
  char* ring_;
};

/// Parent side: reads what the worker published, checking every number it finds there (a buggy
/// function can scribble on the region) before using it.
class RingReader {
 public:
  RingReader() = default;
  RingReader(SharedBlock* block, const char* ring) noexcept : block_(block), ring_(ring) {}

  /// Bytes published and not yet taken. Throws pfp::error if the counters are impossible.
  std::size_t available() const {
    const std::uint64_t head = block_->produced.load(std::memory_order_acquire);
    const std::uint64_t unread = head - pos_;
    if (head < pos_ || unread > ring_capacity) throw error("pfp: protocol error: the worker's shared ring counters are corrupt");
    return static_cast<std::size_t>(unread);
  }
  /// The next n bytes (n <= available()), contiguous: in place, or copied into scratch at the wrap.
  std::string_view peek(std::size_t n, std::string& scratch) const {
    const std::size_t at = static_cast<std::size_t>(pos_ & (ring_capacity - 1));
    if (at + n <= ring_capacity) return {ring_ + at, n};
    scratch.resize(n);
    const std::size_t first = ring_capacity - at;
    std::memcpy(scratch.data(), ring_ + at, first);
    std::memcpy(scratch.data() + first, ring_, n - first);
    return scratch;
  }
  void advance(std::size_t n) noexcept { pos_ += n; }
  /// Hands the space taken so far back to the worker.
  void publish() noexcept {
    if (block_) block_->consumed.store(pos_, std::memory_order_release);
  }

 private:
  SharedBlock* block_ = nullptr;
  const char* ring_ = nullptr;
  std::uint64_t pos_ = 0;
};

/// Parent side: bytes read from a worker's result pipe. Grown without zero-filling, copying only the
/// bytes still unparsed: after every fork each page the parent writes costs it a copy-on-write
/// fault, so only what read() fills is ever touched.
class ReadBuffer {
 public:
  char* data() noexcept { return data_.get(); }
  const char* data() const noexcept { return data_.get(); }
  /// Bytes it can hold.
  std::size_t capacity() const noexcept { return capacity_; }
  /// Makes room for at least n bytes, keeping the bytes in [from, to) (moved to the start: the
  /// caller's offsets change by -from when this returns true).
  bool make_room(std::size_t from, std::size_t to, std::size_t n) {
    if (n <= capacity_ && from == 0) return false;
    if (n <= capacity_) {
      std::memmove(data_.get(), data_.get() + from, to - from);
      return true;
    }
    std::unique_ptr<char[]> bigger(new char[n]);
    if (to > from) std::memcpy(bigger.get(), data_.get() + from, to - from);
    data_ = std::move(bigger);
    capacity_ = n;
    return true;
  }
  void release() noexcept {
    data_.reset();
    capacity_ = 0;
  }
  ReadBuffer() = default;
  ReadBuffer(ReadBuffer&& o) noexcept : data_(std::move(o.data_)), capacity_(std::exchange(o.capacity_, 0)) {}
  ReadBuffer& operator=(ReadBuffer&& o) noexcept {
    data_ = std::move(o.data_);
    capacity_ = std::exchange(o.capacity_, 0);
    return *this;
  }

 private:
  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_CHANNEL_HPP
