// The threads backend's batched path (Feed::pull_run): a thread takes a run of consecutive tasks
// whose Results the feed keeps and writes each verdict in place. The verdicts must be those of
// the one-task path -- values, names, indices, pid, attempts, exceptions and their retries, the
// max_result_bytes refusal (and its shortcut for scalars) -- a cancel must leave the tasks not
// begun as Status::cancelled with the usual reason, and a long task must not hold back the
// tasks behind it (runs start at one task and grow only as tasks prove short).
#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// a + b without operator+(const char*, std::string&&), which g++ 12 -O3 warns about (-Wrestrict)
std::string cat(const char* a, const std::string& b) {
  std::string s(a);
  s += b;
  return s;
}

pfp::Options threads(unsigned workers = 2) {
  pfp::Options o;
  o.workers = workers;
  o.backend = pfp::Backend::threads;
  return o;
}

}  // namespace

TEST_CASE("threads backend: every function of a large run gets its own verdict, in place") {
  const std::size_t n = 50000;
  pfp::MultiProcessor<> mp(pfp::Value{}, threads());
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function(cat("f", std::to_string(i % 10)),
                         [i](const pfp::Value&, const pfp::Args&) { return static_cast<long long>(i) * 3; });
  for (int run = 0; run < 2; ++run) {  // a second run on the same processor starts afresh
    const std::vector<pfp::Result>& rs = mp.execute_parallel();
    REQUIRE(rs.size() == n);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const pfp::Result& r = rs[i];
      const bool good = r.ok() && r.index == i && r.function_name == cat("f", std::to_string(i % 10)) &&
                        r.result.as<long long>() == static_cast<long long>(i) * 3 && r.pid == ::getpid() &&
                        r.attempts == 1 && r.duration.count() >= 0 && r.error.empty();
      if (!good && ++bad <= 3) INFO("result " << i << ": " << pfp::to_string(r.status) << " " << r.error);
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("threads backend: exceptions inside runs, with and without retries") {
  const std::size_t n = 5000;
  auto tries = std::make_shared<std::vector<std::atomic<int>>>(n);
  for (bool retry : {false, true}) {
    for (auto& t : *tries) t = 0;
    pfp::Options o = threads();
    o.retries = 1;
    o.retry_exceptions = retry;
    pfp::MultiProcessor<> mp(pfp::Value{}, o);
    for (std::size_t i = 0; i < n; ++i)
      mp.register_function("f", [i, tries](const pfp::Value&, const pfp::Args&) -> long long {
        if (i % 7 == 0 && (*tries)[i]++ == 0) throw std::runtime_error(cat("first try of ", std::to_string(i)));
        return static_cast<long long>(i);
      });
    const std::vector<pfp::Result>& rs = mp.execute_parallel();
    REQUIRE(rs.size() == n);
    for (std::size_t i = 0; i < n; ++i) {
      const pfp::Result& r = rs[i];
      if (i % 7 == 0 && !retry) {
        REQUIRE(r.status == pfp::Status::exception);
        REQUIRE(r.error == cat("std::runtime_error: first try of ", std::to_string(i)));
        REQUIRE(r.result.is_null());
        REQUIRE(r.attempts == 1);
      } else {
        REQUIRE(r.ok());
        REQUIRE(r.result.as<long long>() == static_cast<long long>(i));
        REQUIRE(r.error.empty());
        REQUIRE(r.attempts == (i % 7 == 0 ? 2u : 1u));
      }
    }
  }
}

TEST_CASE("threads backend: max_result_bytes is enforced inside runs, for scalars too") {
  pfp::Options o = threads();
  o.max_result_bytes = 5;  // below a scalar's largest encoding: the shortcut must not apply
  pfp::MultiProcessor<> mp(pfp::Value{}, o);
  const std::size_t n = 3000;
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i](const pfp::Value&, const pfp::Args&) -> pfp::Value {
      if (i % 3 == 0) return std::numeric_limits<long long>::max();  // 1 + 10 bytes
      if (i % 3 == 1) return std::string(40, 'x');
      return 1LL;
    });
  const std::vector<pfp::Result>& rs = mp.execute_parallel();
  REQUIRE(rs.size() == n);
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 3 == 2) {
      REQUIRE(rs[i].ok());
      REQUIRE(rs[i].result.as<long long>() == 1);
    } else {
      REQUIRE(rs[i].status == pfp::Status::exception);
      REQUIRE(rs[i].error.find("exceeds Options::max_result_bytes (5 bytes)") != std::string::npos);
      REQUIRE(rs[i].result.is_null());
    }
  }
}

TEST_CASE("threads backend: a cancel inside a run leaves the tasks not begun cancelled") {
  const std::size_t n = 200000;
  pfp::MultiProcessor<> mp(pfp::Value{}, threads());
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i, &mp](const pfp::Value&, const pfp::Args&) {
      if (i == 2000) mp.cancel();
      return static_cast<long long>(i);
    });
  const std::vector<pfp::Result>& rs = mp.execute_parallel();
  REQUIRE(rs.size() == n);
  REQUIRE(rs[2000].ok());
  std::size_t cancelled = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const pfp::Result& r = rs[i];
    if (r.status == pfp::Status::cancelled) {
      ++cancelled;
      REQUIRE(r.error == "cancelled before it started");
      REQUIRE(r.result.is_null());
      REQUIRE(r.attempts == 0);
    } else {
      REQUIRE(r.ok());
      REQUIRE(r.result.as<long long>() == static_cast<long long>(i));
    }
    REQUIRE(r.index == i);
  }
  CHECK(cancelled > n / 2);  // two threads between tasks stop within a run of at most 1,024 tasks
}

TEST_CASE("threads backend: a long first task does not hold back the short ones behind it") {
  const std::size_t n = 2001;
  std::vector<std::thread::id> ran_on(n);
  pfp::MultiProcessor<> mp(pfp::Value{}, threads());
  for (std::size_t i = 0; i < n; ++i)
    mp.register_function("f", [i, &ran_on](const pfp::Value&, const pfp::Args&) {
      ran_on[i] = std::this_thread::get_id();
      if (i == 0) std::this_thread::sleep_for(std::chrono::milliseconds(500));
      return static_cast<long long>(i);
    });
  const std::vector<pfp::Result>& rs = mp.execute_parallel();
  REQUIRE(rs.size() == n);
  for (const pfp::Result& r : rs) REQUIRE(r.ok());
  std::size_t behind = 0;  // short tasks that ran on the thread that slept
  for (std::size_t i = 1; i < n; ++i) behind += ran_on[i] == ran_on[0];
  INFO(behind << " of " << n - 1 << " short tasks ran on the sleeping task's thread");
  CHECK(behind < (n - 1) / 10);  // the other thread takes them while it sleeps
}
