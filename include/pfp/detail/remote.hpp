#ifndef PFP_DETAIL_REMOTE_HPP
#define PFP_DETAIL_REMOTE_HPP

// Big results without the pipe: a worker leaves every string or blob of remote_min_size bytes or
// more where it is, in its own memory, and sends a small frame_kind_remote frame naming their
// addresses (serialization.hpp). The parent copies each one with process_vm_readv straight into
// the std::string that becomes part of the Result -- one copy, instead of the pipe's two plus the
// encode and decode copies -- and then acknowledges through the worker's SharedBlock, which lets the
// worker free its memory and go on. Where the kernel refuses the copy (Yama ptrace_scope 2+,
// seccomp, a kernel without CONFIG_CROSS_MEMORY_ATTACH, a worker made non-dumpable), the parent
// answers "refused" instead; the worker then sends the same result the ordinary way, and no worker
// of this process tries the fast path again.

#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>
#include <pfp/serialization.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <sys/types.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#endif

namespace pfp {
namespace detail {

#if defined(__linux__)
inline constexpr bool remote_transfer_supported = true;
#else
inline constexpr bool remote_transfer_supported = false;
#endif

/// What the parent answers a remote frame with (SharedBlock::remote_ack).
enum : std::uint32_t {
  remote_ack_waiting = 0,  ///< the worker has sent a remote frame and waits
  remote_ack_copied = 1,   ///< the parent has what it needs; the memory is the worker's again
  remote_ack_refused = 2,  ///< the parent cannot read the worker's memory: send the result through the pipe
};

/// In this process (the parent): 0 while direct reads of workers' memory have not failed, 1 once
/// the kernel refused one. Workers forked later are told not to try (SharedBlock::remote_allowed).
inline std::atomic<int> remote_reads_refused{0};

/// Test hooks, set in the parent before a run. remote_read_fault: pretend process_vm_readv failed
/// with this errno (0: do not pretend). before_remote_read: called with the worker's pid just
/// before its memory is read.
inline int remote_read_fault = 0;
inline void (*before_remote_read)(pid_t) = nullptr;
/// Bytes the parent has copied out of workers' memory so far (for tests and benchmarks).
inline std::atomic<std::uint64_t> remote_bytes_read{0};

/// Thrown by RemoteReader::fetch when the worker's memory cannot be read: `gone` when the worker has
/// died (its result is lost with it), otherwise the kernel refused (the result comes again through
/// the pipe). Not a pfp::error: it is no protocol error.
class remote_unavailable : public std::exception {
 public:
  remote_unavailable(int err, bool gone) noexcept : err_(err), gone_(gone) {}
  const char* what() const noexcept override { return gone_ ? "pfp: the worker died" : "pfp: process_vm_readv refused"; }
  int err() const noexcept { return err_; }
  bool gone() const noexcept { return gone_; }

 private:
  int err_;
  bool gone_;
};

// ---------------------------------------------------------------- a string filled in place

#if defined(__GLIBCXX__) && _GLIBCXX_USE_CXX11_ABI && !defined(__cpp_lib_string_resize_and_overwrite)
// libstdc++ before C++23 has no way to size a std::string without writing every byte, which for a
// 1 GiB result costs a pass over memory. Its private _M_set_length(n) sets the size and the
// terminator of a string whose capacity is at least n; explicit instantiation is the one place
// C++ allows naming a private member, and it is how the pointer to it is obtained here.
struct StringSetLength {
  using type = void (std::string::*)(std::string::size_type);
  friend type string_set_length(StringSetLength) noexcept;
};
template <class Tag, typename Tag::type Member>
struct PrivateMember {
  friend typename Tag::type string_set_length(Tag) noexcept { return Member; }
};
template struct PrivateMember<StringSetLength, &std::string::_M_set_length>;
#define PFP_HAVE_STRING_SET_LENGTH 1
#endif

/// A std::string of n bytes written by fill(char* data) (which must write all n), without first
/// zero-filling them where the standard library allows it. prepare(char* data) sees the fresh
/// buffer before anything has touched it (beyond its first byte).
template <class Prepare, class Fill>
std::string string_filled_by(std::size_t n, Prepare&& prepare, Fill&& fill) {
  std::string s;
#if defined(__cpp_lib_string_resize_and_overwrite)
  s.resize_and_overwrite(n, [&](char* p, std::size_t) {
    prepare(p);
    fill(p);
    return n;
  });
#elif defined(PFP_HAVE_STRING_SET_LENGTH)
  s.reserve(n);
  prepare(s.data());
  fill(s.data());
  (s.*string_set_length(StringSetLength{}))(n);
#else
  s.reserve(n);
  prepare(s.data());
  s.resize(n);
  fill(s.data());
#endif
  return s;
}

template <class Fill>
std::string string_filled_by(std::size_t n, Fill&& fill) {
  return string_filled_by(n, [](char*) {}, std::forward<Fill>(fill));
}

// ---------------------------------------------------------------- parent side

#if defined(__linux__)
/// CPUs this process may run on.
inline unsigned usable_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return static_cast<unsigned>(CPU_COUNT(&set));
}
#endif

/// Reads the strings a worker's remote frame refers to, within what is left of the result limit.
class RemoteReader final : public RemoteSource {
 public:
  /// Strings at least this big are copied by two threads when there are two CPUs: the copy is
  /// bound by faulting in and zeroing the fresh pages as much as by the copy itself, and the
  /// worker's CPU is idle meanwhile (it waits for the answer).
  static constexpr std::size_t parallel_min = std::size_t{64} << 20;
  static constexpr std::size_t chunk = std::size_t{16} << 20;

  /// budget: bytes the strings may add up to (Options::max_result_bytes minus the frame's own).
  RemoteReader(pid_t pid, std::size_t budget) noexcept : pid_(pid), budget_(budget) {}

  std::string fetch(std::uint64_t address, std::size_t size) override {
    if (size > budget_)
      throw error("pfp: the result's strings add up to more than the limit of Options::max_result_bytes");
    budget_ -= size;
#if defined(__linux__)
    if (before_remote_read) before_remote_read(pid_);
    std::string out = string_filled_by(
        size, [&](char* dst) { advise_huge_pages(dst, size); }, [&](char* dst) { copy_in(dst, address, size); });
    remote_bytes_read.fetch_add(size, std::memory_order_relaxed);
    return out;
#else
    (void)address;
    throw remote_unavailable(ENOSYS, false);
#endif
  }

 private:
  pid_t pid_;
  std::size_t budget_;

#if defined(__linux__)
  // Copies n bytes from address in the worker to dst. Returns 0 or the errno that stopped it.
  int copy_range(char* dst, std::uint64_t address, std::size_t n) const noexcept {
    std::size_t done = 0;
    while (done < n) {
      iovec local{dst + done, n - done};
      iovec remote{reinterpret_cast<void*>(static_cast<std::uintptr_t>(address + done)), n - done};
      ssize_t got = remote_read_fault ? (errno = remote_read_fault, -1) : ::process_vm_readv(pid_, &local, 1, &remote, 1, 0);
      if (got > 0) {
        done += static_cast<std::size_t>(got);
        continue;
      }
      if (got < 0 && errno == EINTR) continue;
      return got < 0 ? errno : EFAULT;
    }
    return 0;
  }

  void copy_in(char* dst, std::uint64_t address, std::size_t size) const {
    int err = 0;
    if (size < parallel_min || usable_cpus() < 2) {
      err = copy_range(dst, address, size);
    } else {
      std::atomic<std::size_t> next{0};
      std::atomic<int> first_error{0};
      auto work = [&]() noexcept {
        for (;;) {
          const std::size_t at = next.fetch_add(chunk);
          if (at >= size || first_error.load(std::memory_order_relaxed) != 0) return;
          if (int e = copy_range(dst + at, address + at, std::min(chunk, size - at))) {
            int none = 0;
            first_error.compare_exchange_strong(none, e);
          }
        }
      };
      try {
        std::thread helper(work);
        work();
        helper.join();
      } catch (const std::system_error&) {  // no thread to be had: copy alone
        work();
      }
      err = first_error.load();
    }
    if (err == 0) return;
    if (err == ESRCH) throw remote_unavailable(err, true);
    if (err == EPERM || err == EACCES || err == ENOSYS || err == ENOMEM) throw remote_unavailable(err, false);
    // EFAULT and the like: the worker named memory it does not have, which it never does.
    throw error("pfp: protocol error: the worker's remote frame names memory that cannot be read: " + errno_text(err));
  }
#endif
};

// ---------------------------------------------------------------- the acknowledgement

/// Parent: answers the worker waiting on `word`.
inline void remote_answer(std::atomic<std::uint32_t>& word, std::uint32_t answer) noexcept {
  word.store(answer, std::memory_order_release);
#if defined(__linux__)
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, 1, nullptr, nullptr, 0);
#endif
}

/// Worker: waits for the parent's answer (the parent's death kills the worker: PR_SET_PDEATHSIG).
inline std::uint32_t remote_wait(std::atomic<std::uint32_t>& word) noexcept {
  for (;;) {
    const std::uint32_t v = word.load(std::memory_order_acquire);
    if (v != remote_ack_waiting) return v;
#if defined(__linux__)
    // Shared (not FUTEX_PRIVATE): the word lives in memory both processes map.
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, remote_ack_waiting, nullptr, nullptr, 0);
#else
    ::usleep(50);
#endif
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_REMOTE_HPP
