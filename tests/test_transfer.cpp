// Big results: strings and blobs of pfp::detail::remote_min_size bytes or more are left in the
// worker's memory and copied by the parent with process_vm_readv (include/pfp/detail/remote.hpp).
// Covers the codec, the fast path itself, its fallback to the pipe (simulated and under a real
// seccomp filter), a worker dying before its memory was read, the result limit on the fast path,
// and forged remote frames.
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault_support.hpp"
#include "test_support.hpp"

using Catch::Matchers::Contains;
using pfp::Args;
using pfp::MultiProcessor;
using pfp::Options;
using pfp::Result;
using pfp::Status;
using pfp::Value;

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

// n bytes that differ from one position (and one seed) to the next.
std::string pattern(std::size_t n, std::uint64_t seed) {
  std::string s(n, '\0');
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>(x);
  }
  return s;
}

Options workers(unsigned n) {
  Options o;
  o.workers = n;
  o.threads = pfp::ThreadPolicy::allow;
  return o;
}

std::uint64_t fetched() { return pfp::detail::remote_bytes_read.load(); }

// Restores the process-wide fast-path state a test changed.
struct RemoteState {
  ~RemoteState() {
    pfp::detail::remote_read_fault = 0;
    pfp::detail::before_remote_read = nullptr;
    pfp::detail::remote_reads_refused.store(0);
  }
};

// A result with big strings and blobs at several depths, and small ones beside them.
Value big_mixed(std::uint64_t seed) {
  Value v = Value::object();
  v["blob"] = Value::bytes(pattern(3 * MiB + 7, seed));
  v["text"] = pattern(MiB, seed + 1);  // exactly the threshold: left in place too
  v["small"] = pattern(MiB - 1, seed + 2);  // one byte under: serialized
  v["list"] = Value::array({Value(1), Value::bytes(pattern(2 * MiB, seed + 3)), Value("x")});
  return v;
}

// Forks a child that runs body() under a seccomp filter making process_vm_readv fail with EPERM,
// the way Docker's default profile or a hardened sandbox does. Returns what run_bounded returns.
template <class Body>
pfp_fault::Bounded without_process_vm_readv(Body&& body) {
  return pfp_fault::run_bounded(
      [&] {
        sock_filter filter[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_process_vm_readv, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        sock_fprog prog{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
        if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
          throw std::runtime_error("could not install the seccomp filter");
        // Proof that the filter works: the kernel now refuses.
        char a = 0, b = 0;
        iovec l{&a, 1}, r{&b, 1};
        if (::process_vm_readv(::getpid(), &l, 1, &r, 1, 0) != -1 || errno != EPERM)
          throw std::runtime_error("the seccomp filter does not refuse process_vm_readv");
        return body();
      },
      std::chrono::milliseconds(60000));
}

}  // namespace

TEST_CASE("remote references: encoded in place of big strings, refused where no worker's memory is", "[transfer]") {
  Result r;
  r.index = 5;
  r.status = Status::ok;
  r.result = big_mixed(1);
  std::string wire;
  const std::size_t full = pfp::detail::encode_result_frame_into(r, wire, pfp::detail::remote_min_size);
  const std::string plain = pfp::detail::encode_result_frame(r);
  // The frame stands for the whole result but carries only the small parts.
  CHECK(full == plain.size() - pfp::detail::frame_header_size);
  CHECK(wire.size() < 2 * MiB);
  CHECK(wire.size() > MiB - 1);  // the string one byte under the threshold is in it
  CHECK(pfp::detail::frame_kind(wire) == pfp::detail::frame_kind_remote);
  CHECK(pfp::detail::frame_kind(plain) == pfp::detail::frame_kind_result);
  CHECK(pfp::detail::frame_index(wire) == 5);

  // Without a source of remote memory (the ring, fuzzed input, pfp::decode), it is malformed.
  CHECK_THROWS_AS(pfp::detail::decode_result_frame(wire, std::size_t{1} << 30), pfp::error);

  // With one, the references resolve to the same strings, with their types.
  struct SameProcess final : pfp::detail::RemoteSource {
    std::size_t calls = 0;
    std::string fetch(std::uint64_t address, std::size_t size) override {
      ++calls;
      return std::string(reinterpret_cast<const char*>(static_cast<std::uintptr_t>(address)), size);
    }
  } here;
  Result back = pfp::detail::decode_result_frame(wire, std::size_t{1} << 30, &here);
  CHECK(here.calls == 3);
  CHECK(back.index == 5);
  CHECK(back.result == r.result);
  CHECK(back.result.at("blob").is_bytes());
  CHECK(back.result.at("text").is_string());

  // A value with a remote tag is never accepted by the public decoder.
  std::string raw(1, static_cast<char>(pfp::detail::Tag::remote_bytes));
  raw += '\x01';
  raw += std::string(8, '\0');
  CHECK_THROWS_AS(pfp::decode(raw), pfp::error);
}

TEST_CASE("string_filled_by: the size asked for, every byte from the filler", "[transfer]") {
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{15}, std::size_t{16}, std::size_t{100000}}) {
    std::string s = pfp::detail::string_filled_by(n, [&](char* p) {
      for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<char>('a' + i % 26);
    });
    REQUIRE(s.size() == n);
    CHECK(s.c_str()[n] == '\0');
    for (std::size_t i = 0; i < n; ++i) REQUIRE(s[i] == static_cast<char>('a' + i % 26));
  }
}

TEST_CASE("big results are copied straight from the worker's memory", "[transfer]") {
  RemoteState restore;
  MultiProcessor<> mp(Value{}, workers(2));
  for (int i = 0; i < 4; ++i)
    mp.register_function("big", [i](const Value&, const Args&) { return big_mixed(static_cast<std::uint64_t>(i)); });
  mp.register_function("huge", [](const Value&, const Args&) { return Value::bytes(pattern(80 * MiB, 99)); });
  mp.register_function("small", [](const Value&, const Args&) { return 42; });
  const std::uint64_t before = fetched();
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 6);
  for (int i = 0; i < 4; ++i) {
    INFO(pfp_test::describe(rs[i]));
    REQUIRE(rs[i].ok());
    CHECK(rs[i].result == big_mixed(static_cast<std::uint64_t>(i)));
  }
  INFO(pfp_test::describe(rs[4]));
  REQUIRE(rs[4].ok());
  CHECK(rs[4].result.str() == pattern(80 * MiB, 99));  // big enough to be copied by two threads
  CHECK(rs[5].result == Value(42));
  CHECK(fetched() - before == 4 * (3 * MiB + 7 + MiB + 2 * MiB) + 80 * MiB);
}

TEST_CASE("big results with a fresh process per function", "[transfer]") {
  Options o = workers(2);
  o.max_tasks_per_worker = 1;
  MultiProcessor<> mp(Value{}, o);
  for (int i = 0; i < 6; ++i)
    mp.register_function("big", [i](const Value&, const Args&) { return Value::bytes(pattern(2 * MiB, static_cast<std::uint64_t>(i))); });
  const std::uint64_t before = fetched();
  const auto& rs = mp.execute_parallel();
  for (int i = 0; i < 6; ++i) {
    INFO(pfp_test::describe(rs[i]));
    REQUIRE(rs[i].ok());
    CHECK(rs[i].result.str() == pattern(2 * MiB, static_cast<std::uint64_t>(i)));
  }
  CHECK(fetched() - before == 12 * MiB);
}

TEST_CASE("when the kernel refuses the copy, big results come through the pipe", "[transfer]") {
  RemoteState restore;
  pfp::detail::remote_read_fault = EPERM;  // as Yama ptrace_scope 3 or a seccomp filter would
  MultiProcessor<> mp(Value{}, workers(2));
  for (int i = 0; i < 4; ++i)
    mp.register_function("big", [i](const Value&, const Args&) { return big_mixed(static_cast<std::uint64_t>(i)); });
  const std::uint64_t before = fetched();
  const auto& rs = mp.execute_parallel();
  for (int i = 0; i < 4; ++i) {
    INFO(pfp_test::describe(rs[i]));
    REQUIRE(rs[i].ok());
    CHECK(rs[i].result == big_mixed(static_cast<std::uint64_t>(i)));
  }
  CHECK(fetched() == before);
  CHECK(pfp::detail::remote_reads_refused.load() == 1);

  // Workers started after the refusal do not try again.
  static int attempts = 0;
  attempts = 0;
  pfp::detail::before_remote_read = [](pid_t) { ++attempts; };
  const auto& again = mp.execute_parallel();
  for (int i = 0; i < 4; ++i) REQUIRE(again[i].ok());
  CHECK(again[3].result == big_mixed(3));
  CHECK(attempts == 0);
}

TEST_CASE("under a seccomp filter that forbids process_vm_readv, big results still arrive", "[transfer]") {
  pfp_fault::Bounded b = without_process_vm_readv([] {
    MultiProcessor<> mp(Value{}, workers(2));
    for (int i = 0; i < 3; ++i)
      mp.register_function("big", [i](const Value&, const Args&) { return big_mixed(static_cast<std::uint64_t>(i)); });
    mp.register_function("huge", [](const Value&, const Args&) { return Value::bytes(pattern(70 * MiB, 7)); });
    std::vector<Result> rs = mp.execute_parallel();
    // Brought back through run_bounded's pipe: keep the check here and send a digest.
    for (int i = 0; i < 3; ++i)
      if (rs[i].ok() && rs[i].result == big_mixed(static_cast<std::uint64_t>(i))) rs[i].result = "same";
    if (rs[3].ok() && rs[3].result.str() == pattern(70 * MiB, 7)) rs[3].result = "same";
    rs.push_back(Result());
    rs.back().result = static_cast<long long>(pfp::detail::remote_reads_refused.load());
    return rs;
  });
  INFO(b.describe());
  REQUIRE(b.finished);
  REQUIRE(b.results.size() == 5);
  for (int i = 0; i < 4; ++i) {
    CHECK(b.results[i].status == Status::ok);
    CHECK(b.results[i].result == Value("same"));
  }
  CHECK(b.results[4].result == Value(1));  // the fast path was tried, refused, and given up
}

TEST_CASE("a worker that dies before its big result was read: the function crashed, and a retry works", "[transfer]") {
  RemoteState restore;
  // Just before the parent reads the worker's memory, the worker is killed and becomes a zombie:
  // its memory is gone.
  static int kills = 0;
  kills = 0;
  pfp::detail::before_remote_read = [](pid_t pid) {
    if (kills++ > 0) return;
    ::kill(pid, SIGKILL);
    siginfo_t info{};
    ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT);
  };
  Options o = workers(1);
  MultiProcessor<> mp(Value{}, o);
  mp.register_function("before", [](const Value&, const Args&) { return 1; });
  mp.register_function("big", [](const Value&, const Args&) { return Value::bytes(pattern(4 * MiB, 3)); });
  mp.register_function("after", [](const Value&, const Args&) { return 3; });
  const auto& rs = mp.execute_parallel();
  CHECK(kills == 1);
  CHECK(rs[0].result == Value(1));
  INFO(pfp_test::describe(rs[1]));
  CHECK(rs[1].status == Status::crashed);
  CHECK_THAT(rs[1].error, Contains("SIGKILL"));
  CHECK(rs[1].result.is_null());
  CHECK(rs[2].ok());
  CHECK(rs[2].result == Value(3));

  kills = 0;
  o.retries = 1;
  MultiProcessor<> retried(Value{}, o);
  retried.register_function("big", [](const Value&, const Args&) { return Value::bytes(pattern(4 * MiB, 3)); });
  const auto& again = retried.execute_parallel();
  INFO(pfp_test::describe(again[0]));
  CHECK(again[0].ok());
  CHECK(again[0].attempts == 2);
  CHECK(again[0].result.str() == pattern(4 * MiB, 3));
}

TEST_CASE("a big result over max_result_bytes is refused in the worker: the parent reads none of it", "[transfer]") {
  Options o = workers(1);
  o.max_result_bytes = 2 * MiB;
  MultiProcessor<> mp(Value{}, o);
  mp.register_function("too big", [](const Value&, const Args&) { return Value::bytes(pattern(3 * MiB, 1)); });
  mp.register_function("fits", [](const Value&, const Args&) { return Value::bytes(pattern(MiB + MiB / 2, 2)); });
  const std::uint64_t before = fetched();
  const auto& rs = mp.execute_parallel();
  CHECK(rs[0].status == Status::exception);
  CHECK_THAT(rs[0].error, Contains("max_result_bytes"));
  CHECK(rs[0].result.is_null());
  INFO(pfp_test::describe(rs[1]));
  CHECK(rs[1].ok());
  CHECK(rs[1].result.str() == pattern(MiB + MiB / 2, 2));
  CHECK(fetched() - before == MiB + MiB / 2);
}

TEST_CASE("forged remote frames: over the limit, or naming memory the worker does not have", "[transfer]") {
  // A function writes a remote frame of its own on pfp's result pipe. The parent must neither
  // allocate what the frame claims nor read where it points without checking; the function that
  // wrote it is blamed.
  auto forged = [](std::uint64_t size, std::uint64_t address) {
    auto varint = [](std::string& out, std::uint64_t n) {
      while (n >= 0x80) {
        out += static_cast<char>(n | 0x80);
        n >>= 7;
      }
      out += static_cast<char>(n);
    };
    std::string payload;
    const std::uint64_t index = pfp::detail::worker_current_ticket;  // what the running task's frame must carry
    payload.append(reinterpret_cast<const char*>(&index), sizeof index);
    payload += '\0';                                       // status ok
    payload += '\0';                                       // duration 0
    payload += '\0';                                       // no error text
    payload += static_cast<char>(pfp::detail::Tag::remote_bytes);
    varint(payload, size);
    payload.append(reinterpret_cast<const char*>(&address), 8);
    return pfp_fault::frame_header(pfp::detail::frame_magic, pfp::detail::frame_version, pfp::detail::frame_kind_remote,
                                   payload.size()) +
           payload;
  };
  pfp_fault::Bounded b = pfp_fault::run_bounded(
      [&] {
        Options o = workers(1);
        o.max_tasks_per_worker = 1;  // each forgery on its own worker
        MultiProcessor<> mp(Value{}, o);
        mp.register_function("ok", [](const Value&, const Args&) { return 1; });
        mp.register_function("claims a terabyte", [&](const Value&, const Args&) {
          pfp_fault::write_to_result_pipe(forged(std::uint64_t{1} << 40, 4096));
          pfp_test::sleep_ms(300);  // alive while the parent reads the frame
          return 2;
        });
        mp.register_function("points at nothing", [&](const Value&, const Args&) {
          pfp_fault::write_to_result_pipe(forged(2 * MiB, 4096));  // page 1 is never mapped
          pfp_test::sleep_ms(300);  // alive while the parent reads the frame (a dead worker's memory is just gone)
          return 3;
        });
        mp.register_function("ok", [](const Value&, const Args&) { return 4; });
        return mp.execute_parallel();
      },
      std::chrono::milliseconds(30000));
  INFO(b.describe());
  REQUIRE(b.finished);
  REQUIRE(b.results.size() == 4);
  CHECK(b.results[0].result == Value(1));
  CHECK(b.results[1].status == Status::crashed);
  CHECK_THAT(b.results[1].error, Contains("max_result_bytes"));
  CHECK(b.maxrss_growth_kb < 512 * 1024);
  CHECK(b.results[2].status == Status::crashed);
  CHECK_THAT(b.results[2].error, Contains("protocol error"));
  CHECK(b.results[3].result == Value(4));
}

TEST_CASE("what a function prints through a buffered std::cout appears even if its worker dies later", "[transfer][hygiene]") {
  // Workers skip flushing std::cout when its buffer is empty; with sync_with_stdio(false) it has a
  // buffer of its own, which must still be flushed after every function: a worker killed later
  // would take the text with it.
  const std::string out = pfp_test::temp_path("cout");
  pfp_fault::Bounded b = pfp_fault::run_bounded(
      [&] {
        std::ios::sync_with_stdio(false);
        const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || ::dup2(fd, STDOUT_FILENO) < 0) throw std::runtime_error("cannot redirect stdout");
        ::close(fd);
        MultiProcessor<> mp(Value{}, workers(1));
        for (int i = 0; i < 3; ++i)
          mp.register_function("print", [i](const Value&, const Args&) {
            std::cout << "printed-by-" << i << "\n";  // no std::endl, no flush
            return i;
          });
        mp.register_function("die", [](const Value&, const Args&) {
          ::raise(SIGKILL);
          return 0;
        });
        return mp.execute_parallel();
      },
      std::chrono::milliseconds(30000));
  INFO(b.describe());
  REQUIRE(b.finished);
  REQUIRE(b.results.size() == 4);
  const std::string printed = pfp_test::read_file(out);
  std::remove(out.c_str());
  for (int i = 0; i < 3; ++i) {
    CHECK(b.results[static_cast<std::size_t>(i)].status == Status::ok);
    CHECK_THAT(printed, Contains("printed-by-" + std::to_string(i) + "\n"));
  }
  CHECK(b.results[3].status == Status::crashed);
}

namespace {
std::atomic<int>* g_starts = nullptr;  // for the hook below, which is a plain function pointer
}  // namespace

TEST_CASE("a function that writes on pfp's result pipe: its worker starts nothing after it", "[transfer][faults]") {
  // The worker notices the foreign bytes right after the function and leaves instead of starting
  // the next one. Otherwise a parent slow to react (a busy machine) finds the worker already
  // running the next function, kills it, and runs it a second time. Each function counts its
  // starts in shared memory first thing, so a second start always shows. Here the parent waits,
  // before it acts on the garbage, until the next function has started (or 300 ms have passed).
  pfp_fault::SharedArray<std::atomic<int>> starts(16);
  g_starts = &starts[0];
  struct Restore {
    ~Restore() {
      pfp::detail::testing::on_corrupt_stream = nullptr;
      g_starts = nullptr;
    }
  } restore;
  pfp::detail::testing::on_corrupt_stream = [](pid_t) {
    for (int waited = 0; waited < 300 && g_starts[4].load() == 0; ++waited) pfp_test::sleep_ms(1);
  };
  for (int round = 0; round < 2; ++round) {
    INFO("round " << round);
    for (std::size_t i = 0; i < starts.size(); ++i) starts[i].store(0);
    MultiProcessor<> mp(Value{}, workers(1));
    auto counted = [&starts](int i) {
      return [&starts, i](const Value&, const Args&) {
        starts[static_cast<std::size_t>(i)].fetch_add(1);
        if (i == 4) pfp_test::sleep_ms(100);  // the one right after the garbage: still running when killed
        return i;
      };
    };
    for (int i = 0; i < 4; ++i) mp.register_function("f", counted(i));
    mp.register_function("garbage", [&starts](const Value&, const Args&) {
      starts[15].fetch_add(1);
      pfp_fault::write_to_result_pipe(std::string(64, 'G'));  // and return at once
      return -1;
    });
    for (int i = 4; i < 12; ++i) mp.register_function("f", counted(i));
    const auto& rs = mp.execute_parallel();
    CHECK(rs[4].status == Status::crashed);
    CHECK_THAT(rs[4].error, Contains("protocol error"));
    CHECK(starts[15].load() == 1);
    for (int i = 0; i < 12; ++i) {
      const std::size_t k = static_cast<std::size_t>(i < 4 ? i : i + 1);
      INFO(pfp_test::describe(rs[k]));
      CHECK(rs[k].ok());
      CHECK(starts[static_cast<std::size_t>(i)].load() == 1);
    }
  }
}
