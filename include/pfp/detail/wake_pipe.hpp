#ifndef PFP_DETAIL_WAKE_PIPE_HPP
#define PFP_DETAIL_WAKE_PIPE_HPP

// The self-pipe wake-up: a thread (or a signal handler) rings it, a poll() loop sleeping on its
// read end wakes up and drains it. Both ends non-blocking and close-on-exec: a full pipe already
// holds a wake-up, so ringing never blocks, and draining never waits.

#include <pfp/detail/posix.hpp>

#include <cerrno>
#include <utility>

#include <unistd.h>

namespace pfp {
namespace detail {

class WakePipe {
 public:
  WakePipe() = default;
  /// Makes the pipe. Throws pfp::error when out of descriptors.
  void open() {
    pipe_ = make_pipe(true);
  }
  bool is_open() const noexcept { return static_cast<bool>(pipe_.read); }
  /// The descriptor to poll for POLLIN (-1 before open()).
  int read_fd() const noexcept { return pipe_.read.get(); }
  /// Async-signal-safe: one write(), errno kept.
  void ring() const noexcept { ring_fd(pipe_.write.get()); }
  /// Takes every pending wake-up.
  void drain() const noexcept {
    char buf[256];
    while (::read(pipe_.read.get(), buf, sizeof buf) > 0) {
    }
  }
  /// ring() for a write end held elsewhere (an atomic, say); nothing for -1.
  static void ring_fd(int fd) noexcept {
    if (fd < 0) return;
    const int saved = errno;
    const char byte = 1;
    [[maybe_unused]] const ssize_t ignored = ::write(fd, &byte, 1);
    errno = saved;
  }
  /// Gives up the write end (for a holder that must close it itself, under its own rules).
  int release_write() noexcept { return pipe_.write.release(); }
  void close() noexcept { pipe_ = Pipe(); }

 private:
  Pipe pipe_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WAKE_PIPE_HPP
