// The fault matrix: WHERE a function's worker fails x HOW it fails, plus workers that kill each
// other and workers that write garbage onto their result pipe.
//
// where: (a) while running the function
//        (b) while converting its result to a Value (a user type whose ADL to_value does the fault)
//        (c) while writing the frame: the function writes HALF of a valid frame for its own index
//            to pfp::detail::worker_result_fd, then does the fault
//        (d) after the result was sent: it writes a complete valid ok frame for its own index,
//            then does the fault -- the result was delivered, so it must count
// how:   exception, abort(), raise(SIGSEGV), _exit(7), SIGKILL from another process, hang (timeout)
//
// Each cell runs 5 functions, the faulty one in the middle, with 1 and with 2 workers. Every run
// happens in a forked child with a hard time limit (fault_support.hpp: run_bounded), so a run
// that hangs fails its cell by name instead of hanging this executable.
#include "pfp_catch.hpp"

#include "fault_support.hpp"

#include <pfp/pfp.hpp>

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using pfp::Status;
using pfp_fault::Bounded;
using pfp_fault::How;
using pfp_fault::Outcome;

namespace fm {

/// A result type whose conversion to Value does the fault (stage b).
struct Faulty {
  How how;
};
inline void to_value(pfp::Value& v, const Faulty& f) {
  v = pfp::Value();
  pfp_fault::inject(f.how);
}

enum class Where { running, to_value, mid_frame, after_frame };
inline constexpr Where all_wheres[] = {Where::running, Where::to_value, Where::mid_frame, Where::after_frame};

inline const char* name(Where w) {
  switch (w) {
    case Where::running: return "(a) while running";
    case Where::to_value: return "(b) in to_value";
    case Where::mid_frame: return "(c) after half a frame";
    case Where::after_frame: return "(d) after a complete frame";
  }
  return "?";
}

constexpr std::size_t functions = 5;
constexpr std::size_t faulty = 2;
constexpr auto hang_timeout = std::chrono::milliseconds(300);
constexpr auto run_limit = std::chrono::milliseconds(8000);  // hard limit of one run (a hang)
constexpr long long generous_ms = 6000;                       // what a run may take

inline pfp::Value neighbour_value(std::size_t i) { return static_cast<long long>(i) * 10 + 1; }

/// What the faulty function sends in stages (c) and (d): 64 characters, so half of its frame
/// holds the whole 16-byte header and part of the payload.
inline pfp::Value delivered_value() {
  std::string s = "delivered-by-function-2:";
  while (s.size() < 64) s += static_cast<char>('a' + s.size() % 26);
  return s;
}

/// Runs one cell in a bounded child.
inline Bounded run_cell(Where where, How how, unsigned workers) {
  return pfp_fault::run_bounded(
      [&] {
        pfp::Options o;
        o.workers = workers;
        if (how == How::hang) o.timeout = hang_timeout;
        pfp::MultiProcessor<> mp(pfp::Value(), o);
        for (std::size_t i = 0; i < functions; ++i) {
          const std::string nm = "f" + std::to_string(i);
          if (i != faulty) {
            mp.register_function(nm, [i](const pfp::Value&, const pfp::Args&) { return neighbour_value(i); });
            continue;
          }
          switch (where) {
            case Where::running:
              mp.register_function(nm, [how](const pfp::Value&, const pfp::Args&, pfp::Result&) { pfp_fault::inject(how); });
              break;
            case Where::to_value:
              mp.register_function(nm, [how](const pfp::Value&, const pfp::Args&) { return Faulty{how}; });
              break;
            case Where::mid_frame:
              mp.register_function(nm, [how](const pfp::Value&, const pfp::Args&, pfp::Result&) {
                const std::string frame = pfp_fault::ok_frame(pfp::detail::worker_current_ticket, delivered_value());
                pfp_fault::write_to_result_pipe(frame.substr(0, frame.size() / 2));
                pfp_fault::inject(how);
              });
              break;
            case Where::after_frame:
              mp.register_function(nm, [how](const pfp::Value&, const pfp::Args&, pfp::Result&) {
                pfp_fault::write_to_result_pipe(pfp_fault::ok_frame(pfp::detail::worker_current_ticket, delivered_value()));
                pfp_fault::inject(how);
              });
              break;
          }
        }
        return mp.execute_parallel();
      },
      run_limit);
}

/// The error text a crashed/timed-out/thrown function must show for each fault.
inline std::string expected_text(How how) {
  switch (how) {
    case How::exception: return "injected fault";
    case How::abort_: return "SIGABRT";
    case How::segv: return "SIGSEGV";
    case How::exit7: return "exit code 7";
    case How::sigkill_outside: return "SIGKILL";
    case How::hang: return "300 ms";
  }
  return "?";
}

inline Status expected_status(Where where, How how) {
  if (where == Where::after_frame) return Status::ok;  // the result was delivered before the fault
  if (how == How::hang) return Status::timed_out;
  if (how == How::exception) return Status::exception;  // (c): or crashed, see below
  return Status::crashed;
}

}  // namespace fm

TEST_CASE("fault matrix: where x how x workers", "[faults][matrix]") {
  using namespace fm;
  int cells = 0, runs = 0, runs_passed = 0;
  std::ostringstream failed_runs;
  for (Where where : all_wheres) {
    for (How how : pfp_fault::all_hows) {
      ++cells;
      for (unsigned workers : {1u, 2u}) {
        ++runs;
        const std::string cell = std::string(name(where)) + " x " + pfp_fault::name(how) + " x workers=" + std::to_string(workers);
        const Bounded b = run_cell(where, how, workers);
        INFO("cell: " << cell);
        INFO(b.describe());
        bool pass = true;
        auto check = [&](bool cond) {
          pass = pass && cond;
          return cond;
        };
        CHECK(check(b.finished));
        CHECK(check(b.results.size() == functions));
        CHECK(check(b.run_ms < generous_ms));
        CHECK(check(b.children_left == 0));
        if (b.results.size() != functions) {
          failed_runs << "  " << cell << "\n";
          continue;
        }
        for (std::size_t i = 0; i < functions; ++i) {
          const Outcome& r = b.results[i];
          INFO("function " << i);
          CHECK(check(r.index == i));
          CHECK(check(r.name == "f" + std::to_string(i)));
          CHECK(check(r.attempts == 1u));
          CHECK(check(r.pid > 0));
          if (i != faulty) {
            CHECK(check(r.status == Status::ok));
            CHECK(check(r.result == neighbour_value(i)));
            CHECK(check(r.error.empty()));
            continue;
          }
          const Status want = expected_status(where, how);
          INFO("expected " << pfp::to_string(want));
          if (where == Where::mid_frame && how == How::exception) {
            // Half a frame on the pipe, then the worker reports the exception itself (through
            // its shared ring, or after the half frame on the pipe). The parent either notices
            // the corrupt stream (crashed, protocol error / size limit) or takes the exception
            // frame; it must never report ok or a value.
            const bool protocol = r.status == Status::crashed && (r.error.find("protocol") != std::string::npos ||
                                                                  r.error.find("max_result_bytes") != std::string::npos);
            const bool thrown = r.status == Status::exception && r.error.find("injected fault") != std::string::npos;
            CHECK(check(protocol || thrown));
            CHECK(check(r.result.is_null()));
          } else if (where == Where::after_frame) {
            // The function forged a whole frame on pfp's result pipe, then failed. If the parent
            // took that frame before the worker reported the write, it stands (ok, the forged
            // value); otherwise the function is the culprit of a corrupt stream and its result is
            // withheld (crashed, protocol error). Never anything else.
            const bool taken = r.status == Status::ok && r.result == delivered_value() && r.error.empty();
            const bool withheld = r.status == Status::crashed && r.error.find("protocol error") != std::string::npos &&
                                  r.result.is_null();
            CHECK(check(taken || withheld));
          } else if (want == Status::ok) {
            CHECK(check(r.status == want));
            CHECK(check(r.result == delivered_value()));
            CHECK(check(r.error.empty()));
          } else {
            CHECK(check(r.status == want));
            CHECK_THAT(r.error, Catch::Matchers::Contains(expected_text(how)));
            check(r.error.find(expected_text(how)) != std::string::npos);
            if (how == How::exception) CHECK_THAT(r.error, Catch::Matchers::Contains("std::runtime_error"));
            CHECK(check(r.result.is_null()));
          }
        }
        if (pass) {
          ++runs_passed;
        } else {
          failed_runs << "  " << cell << "\n";
        }
      }
    }
  }
  CHECK(cells == 24);
  WARN("fault matrix: " << cells << " cells (4 stages x 6 faults), " << runs << " runs (workers 1 and 2), "
                        << runs_passed << " runs passed" << (runs_passed == runs ? "" : "; failing runs:\n" + failed_runs.str()));
}

// Half a frame and then an exception, for frames of several sizes: the cut falls in the header,
// in the payload, or in a payload longer than everything the worker writes afterwards. The
// neighbours return small results (they travel through the shared ring) or 512 KiB ones (too big
// for the ring: they travel through the same pipe as the half frame). Whatever the bytes, the
// faulty function must not be reported ok, the others must be, with their values, and the run
// must end.
TEST_CASE("fault matrix: half a frame then an exception at several frame sizes", "[faults][matrix]") {
  struct Variant {
    const char* what;
    pfp::Value value;
  };
  const std::vector<Variant> variants = {
      {"small value (the cut falls inside the header)", pfp::Value(777)},
      {"64-char string (the cut falls in the payload)", fm::delivered_value()},
      {"4 KiB string (the rest of the frame never comes)", pfp::Value(std::string(4096, 'x'))},
  };
  int runs = 0, runs_passed = 0;
  for (const Variant& v : variants) {
    for (std::size_t neighbour_bytes : {std::size_t{0}, std::size_t{512} << 10}) {
      for (unsigned workers : {1u, 2u}) {
        ++runs;
        auto neighbour = [neighbour_bytes](std::size_t i) {
          return neighbour_bytes ? pfp::Value(std::string(neighbour_bytes, static_cast<char>('a' + i))) : fm::neighbour_value(i);
        };
        const pfp::Value value = v.value;
        const Bounded b = pfp_fault::run_bounded(
            [&] {
              pfp::Options o;
              o.workers = workers;
              pfp::MultiProcessor<> mp(pfp::Value(), o);
              for (std::size_t i = 0; i < fm::functions; ++i) {
                if (i != fm::faulty) {
                  mp.register_function("f" + std::to_string(i), [i, neighbour](const pfp::Value&, const pfp::Args&) { return neighbour(i); });
                } else {
                  mp.register_function("f" + std::to_string(i), [value](const pfp::Value&, const pfp::Args&, pfp::Result&) {
                    const std::string frame = pfp_fault::ok_frame(pfp::detail::worker_current_ticket, value);
                    pfp_fault::write_to_result_pipe(frame.substr(0, frame.size() / 2));
                    throw std::runtime_error("injected fault after half a frame");
                  });
                }
              }
              return mp.execute_parallel();
            },
            std::chrono::milliseconds(8000));
        INFO(v.what << ", neighbours return " << (neighbour_bytes ? "512 KiB strings" : "small integers") << ", workers=" << workers);
        INFO(b.describe());
        bool pass = b.finished && b.results.size() == fm::functions;
        CHECK(b.finished);
        CHECK(b.results.size() == fm::functions);
        for (std::size_t i = 0; i < b.results.size(); ++i) {
          INFO("function " << i);
          if (i == fm::faulty) {
            CHECK(b.results[i].status != Status::ok);
            CHECK(b.results[i].result.is_null());
            pass = pass && b.results[i].status != Status::ok && b.results[i].result.is_null();
          } else {
            const bool right_value = b.results[i].result == neighbour(i);  // (no 512 KiB expansions on failure)
            CHECK(b.results[i].status == Status::ok);
            CHECK(right_value);
            pass = pass && b.results[i].status == Status::ok && right_value;
          }
        }
        if (pass) ++runs_passed;
      }
    }
  }
  WARN("half a frame then an exception: " << runs_passed << " of " << runs << " runs passed");
}

// ------------------------------------------------------------------------------------------
// Neighbour kills: each function publishes its worker's pid in a shared array and SIGKILLs the
// worker of another slot. Any worker may die at any moment, between or during functions.

namespace fm {

/// True if pid is (still) a pfp worker of `parent`: a child of it that leads its own process
/// group. Checked just before the kill, so a recycled pid is not shot.
inline bool is_sibling_worker(pid_t pid, pid_t parent) {
  return pid > 0 && pid != ::getpid() && pfp_fault::parent_of(pid) == parent && ::getpgid(pid) == pid;
}

}  // namespace fm

TEST_CASE("fault matrix: functions that kill the workers of other functions", "[faults][matrix]") {
  constexpr std::size_t n = 20;
  for (unsigned workers : {1u, 2u, 5u}) {
    pfp_fault::SharedArray<pid_t> slots(n);
    pfp_fault::SharedArray<int> kills(1);
    const Bounded b = pfp_fault::run_bounded(
        [&] {
          pfp::Options o;
          o.workers = workers;
          pfp::MultiProcessor<> mp(pfp::Value(), o);
          const pid_t parent = ::getpid();
          for (std::size_t i = 0; i < n; ++i) {
            mp.register_function("k" + std::to_string(i), [&slots, &kills, i, parent](const pfp::Value&, const pfp::Args&) {
              slots[i] = ::getpid();
              pfp_fault::sleep_for_us(3000);
              const pid_t target = slots[(i + 1) % slots.size()];
              if (fm::is_sibling_worker(target, parent) && ::kill(target, SIGKILL) == 0)
                __atomic_add_fetch(&kills[0], 1, __ATOMIC_SEQ_CST);
              pfp_fault::sleep_for_us(3000);
              return static_cast<long long>(i) * 7;
            });
          }
          return mp.execute_parallel();
        },
        std::chrono::milliseconds(8000));
    INFO("workers=" << workers << ", kills done: " << kills[0]);
    INFO(b.describe());
    REQUIRE(b.finished);
    CHECK(b.run_ms < 6000);
    CHECK(b.children_left == 0);
    REQUIRE(b.results.size() == n);
    std::size_t ok = 0, crashed = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const Outcome& r = b.results[i];
      INFO("function " << i);
      CHECK(r.index == i);
      CHECK((r.status == Status::ok || r.status == Status::crashed));
      if (r.status == Status::ok) {
        ++ok;
        CHECK(r.result == pfp::Value(static_cast<long long>(i) * 7));
      } else if (r.status == Status::crashed) {
        ++crashed;
        CHECK_THAT(r.error, Catch::Matchers::Contains("SIGKILL"));
      }
    }
    if (workers == 1) CHECK(kills[0] == 0);  // one worker at a time: nobody else to kill
    if (workers > 1) CHECK(kills[0] > 0);    // the test did what it says
    WARN("neighbour kills, workers=" << workers << ": " << kills[0] << " kills, " << ok << " ok, " << crashed
                                     << " crashed, " << b.run_ms << " ms");
  }
}

// ------------------------------------------------------------------------------------------
// Garbage on the result pipe: the parent must refuse it as a protocol error (or a size over the
// limit), blame only the function that wrote it, and never allocate what a header claims.

TEST_CASE("fault matrix: garbage and impossible lengths on the result pipe", "[faults][matrix]") {
  using pfp::detail::frame_magic;
  using pfp::detail::frame_version;
  struct Garbage {
    const char* what;
    std::string bytes;
    const char* expect;  // in the error
    bool own_index = false;  // the payload starts with the index of the function that writes it
  };
  std::string random(4096, '\0');
  std::uint32_t x = 0x9e3779b9u;
  for (char& c : random) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x & 0xff);
  }
  std::uint32_t first4 = 0;
  std::memcpy(&first4, random.data(), 4);
  REQUIRE(first4 != frame_magic);
  const std::vector<Garbage> garbage = {
      {"a valid-magic header claiming 2^60 bytes", pfp_fault::frame_header(frame_magic, frame_version, 0, std::uint64_t{1} << 60),
       "max_result_bytes"},
      {"4 KiB of random bytes", random, "protocol"},
      {"a frame of the wrong version", pfp_fault::frame_header(frame_magic, frame_version + 1, 0, 10) + std::string(10, '\0'),
       "protocol"},
      {"a frame of an unknown kind", pfp_fault::frame_header(frame_magic, frame_version, 7, 10) + std::string(10, '\0'),
       "protocol"},
      {"a frame whose payload is nonsense", pfp_fault::frame_header(frame_magic, frame_version, 0, 64) + std::string(64, '\xff'),
       "protocol"},
      {"a frame for its own function whose payload is nonsense",
       pfp_fault::frame_header(frame_magic, frame_version, 0, 64) + std::string(56, '\xff'), "malformed", true},
  };
  for (const Garbage& g : garbage) {
    for (unsigned workers : {1u, 2u}) {
      const Bounded b = pfp_fault::run_bounded(
          [&] {
            pfp::Options o;
            o.workers = workers;
            pfp::MultiProcessor<> mp(pfp::Value(), o);
            for (std::size_t i = 0; i < fm::functions; ++i) {
              if (i != fm::faulty) {
                mp.register_function("f" + std::to_string(i), [i](const pfp::Value&, const pfp::Args&) { return fm::neighbour_value(i); });
              } else {
                const std::string bytes = g.bytes;
                const bool own_index = g.own_index;
                mp.register_function("f" + std::to_string(i), [bytes, own_index](const pfp::Value&, const pfp::Args&) {
                  std::string frame = bytes;
                  if (own_index) {
                    const std::uint64_t index = pfp::detail::worker_current_ticket;
                    frame.insert(pfp::detail::frame_header_size, reinterpret_cast<const char*>(&index), sizeof index);
                  }
                  pfp_fault::write_to_result_pipe(frame);
                  return 5;
                });
              }
            }
            return mp.execute_parallel();
          },
          std::chrono::milliseconds(8000));
      INFO(g.what << ", workers=" << workers);
      INFO(b.describe());
      REQUIRE(b.finished);
      CHECK(b.run_ms < 6000);
      CHECK(b.children_left == 0);
      CHECK(b.maxrss_growth_kb < 64 * 1024);  // nothing near what a header claims was allocated
      REQUIRE(b.results.size() == fm::functions);
      for (std::size_t i = 0; i < fm::functions; ++i) {
        const Outcome& r = b.results[i];
        INFO("function " << i);
        CHECK(r.attempts == 1u);
        if (i == fm::faulty) {
          CHECK(r.status == Status::crashed);
          CHECK_THAT(r.error, Catch::Matchers::Contains(g.expect));
          CHECK(r.result.is_null());
        } else {
          CHECK(r.status == Status::ok);
          CHECK(r.result == fm::neighbour_value(i));
        }
      }
    }
  }
}

TEST_CASE("fault matrix: a header claiming 1 GiB and then the worker dies", "[faults][matrix]") {
  // 1 GiB is under the default Options::max_result_bytes (4 GiB): the parent must wait for the
  // bytes to arrive rather than allocate what the header claims, and report the death.
  for (unsigned workers : {1u, 2u}) {
    const Bounded b = pfp_fault::run_bounded(
        [&] {
          pfp::Options o;
          o.workers = workers;
          pfp::MultiProcessor<> mp(pfp::Value(), o);
          for (std::size_t i = 0; i < fm::functions; ++i) {
            if (i != fm::faulty) {
              mp.register_function("f" + std::to_string(i), [i](const pfp::Value&, const pfp::Args&) { return fm::neighbour_value(i); });
            } else {
              mp.register_function("f" + std::to_string(i), [](const pfp::Value&, const pfp::Args&) {
                pfp_fault::write_to_result_pipe(pfp_fault::frame_header(pfp::detail::frame_magic, pfp::detail::frame_version, 0,
                                                                        std::uint64_t{1} << 30) +
                                                std::string(100, 'x'));
                ::_exit(3);
              });
            }
          }
          return mp.execute_parallel();
        },
        std::chrono::milliseconds(8000));
    INFO("workers=" << workers);
    INFO(b.describe());
    REQUIRE(b.finished);
    CHECK(b.maxrss_growth_kb < 64 * 1024);
    REQUIRE(b.results.size() == fm::functions);
    for (std::size_t i = 0; i < fm::functions; ++i) {
      INFO("function " << i);
      if (i == fm::faulty) {
        CHECK(b.results[i].status == Status::crashed);
        CHECK_THAT(b.results[i].error, Catch::Matchers::Contains("exit code 3"));
      } else {
        CHECK(b.results[i].status == Status::ok);
        CHECK(b.results[i].result == fm::neighbour_value(i));
      }
    }
  }
}
