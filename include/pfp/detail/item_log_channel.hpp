#ifndef PFP_DETAIL_ITEM_LOG_CHANNEL_HPP
#define PFP_DETAIL_ITEM_LOG_CHANNEL_HPP

// How what a Manager's handler writes with ItemContext::log() reaches the parent while the item
// runs, and how the parent learns which worker ran an item that threw: records of
// [seq u64][worker u32][pid i32][kind u8][text]. Worker processes send each record on a
// SOCK_SEQPACKET socket pair made before they are forked (one send() per record: records of
// different workers never interleave, a worker waits while the parent's queue is full); the
// in-process backends put them in a queue under a mutex. The parent takes what has arrived
// whenever it looks (the process backend watches the socket: Feed::side_fd).

#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/socket.h>
#include <unistd.h>

namespace pfp {
namespace detail {

class ItemLogChannel {
 public:
  enum class Kind : std::uint8_t {
    line,    ///< a line the handler wrote
    failed,  ///< the handler threw (the worker lives on): text is empty
  };
  struct Record {
    std::uint64_t seq = 0;
    unsigned worker = 0;
    int pid = 0;
    Kind kind = Kind::line;
    std::string text;
  };
  /// Longest line sent as it is written; a longer one is cut, saying how much was cut.
  static constexpr std::size_t max_line = 60 * 1024;

  /// Before a run: a socket pair for worker processes, else the in-process queue.
  /// Throws pfp::error when out of descriptors.
  void open(bool processes) {
    close();
    if (!processes) {
      queued_ = true;
      return;
    }
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
    read_.reset();
    read_ = UniqueFd(sv[0]);
    write_ = UniqueFd(sv[1]);
    int size = 1 << 18;  // room for a longest line and then some
    (void)::setsockopt(write_.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    set_nonblocking(read_.get());
  }
  /// After the run (in the parent).
  void close() noexcept {
    read_.reset();
    write_.reset();
    queued_ = false;
    std::lock_guard<std::mutex> lock(mu_);
    queue_.clear();
  }
  bool is_open() const noexcept { return queued_ || write_; }

  /// In the worker: sends one record. False if it could not (the caller keeps the line itself).
  bool send(std::uint64_t seq, unsigned worker, Kind kind, std::string_view text) {
    std::string cut;
    if (text.size() > max_line) {
      cut = std::string(text.substr(0, max_line)) + "... (" + std::to_string(text.size() - max_line) + " more bytes cut)";
      text = cut;
    }
    const int pid = static_cast<int>(::getpid());
    if (queued_) {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(Record{seq, worker, pid, kind, std::string(text)});
      return true;
    }
    if (!write_) return false;
    std::string buf(header_size + text.size(), '\0');
    const auto w = static_cast<std::uint32_t>(worker);
    const auto k = static_cast<std::uint8_t>(kind);
    std::memcpy(&buf[0], &seq, 8);
    std::memcpy(&buf[8], &w, 4);
    std::memcpy(&buf[12], &pid, 4);
    std::memcpy(&buf[16], &k, 1);
    if (!text.empty()) std::memcpy(&buf[header_size], text.data(), text.size());
    for (;;) {
      const ssize_t n = ::send(write_.get(), buf.data(), buf.size(), MSG_NOSIGNAL);
      if (n >= 0) return true;
      if (errno != EINTR) return false;
    }
  }

  /// In the parent: the socket to watch (-1 for the in-process queue, or when closed).
  int fd() const noexcept { return read_.get(); }

  /// In the parent: every record that has arrived, in the order each worker sent them.
  std::vector<Record> take() {
    std::vector<Record> out;
    if (queued_) {
      std::lock_guard<std::mutex> lock(mu_);
      out.swap(queue_);
      return out;
    }
    if (!read_) return out;
    buffer_.resize(header_size + max_line + 128);
    for (;;) {
      const ssize_t n = ::recv(read_.get(), &buffer_[0], buffer_.size(), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < static_cast<ssize_t>(header_size)) break;  // nothing more now (or a record no worker sends)
      Record r;
      std::uint32_t w = 0;
      std::uint8_t k = 0;
      std::memcpy(&r.seq, &buffer_[0], 8);
      std::memcpy(&w, &buffer_[8], 4);
      std::memcpy(&r.pid, &buffer_[12], 4);
      std::memcpy(&k, &buffer_[16], 1);
      r.worker = w;
      r.kind = k == static_cast<std::uint8_t>(Kind::failed) ? Kind::failed : Kind::line;
      r.text.assign(&buffer_[header_size], static_cast<std::size_t>(n) - header_size);
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  static constexpr std::size_t header_size = 17;
  UniqueFd read_;
  UniqueFd write_;
  bool queued_ = false;
  std::mutex mu_;  // guards queue_ (the threads backend's workers log concurrently)
  std::vector<Record> queue_;
  std::string buffer_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_ITEM_LOG_CHANNEL_HPP
