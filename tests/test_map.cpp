// pfp::map / map_results / map_unordered over inherited items, and imap / imap_unordered over
// lazy sources.

#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <array>
#include <csignal>
#include <deque>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/resource.h>

// ASan keeps freed memory in quarantine, so peak RSS says nothing about what is held.
#if defined(__SANITIZE_ADDRESS__)
#define PFP_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PFP_TEST_ASAN 1
#endif
#endif

using namespace pfp_test;
using Catch::Matchers::Contains;

namespace {

pfp::MapOptions map_options(unsigned workers, std::size_t chunksize = 1) {
  pfp::MapOptions o;
  o.workers = workers;
  o.chunksize = chunksize;
  return o;
}

std::vector<int> iota_vector(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

long max_rss_kib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

}  // namespace

TEST_CASE("map: results in input order even when items finish out of order", "[map]") {
  const std::vector<int> items = iota_vector(40);
  auto f = [](int x) {
    sleep_ms((40 - x) % 7);  // later items tend to finish first
    return x * x;
  };
  const std::vector<int> squares = pfp::map(map_options(3), f, items);
  REQUIRE(squares.size() == items.size());
  for (std::size_t i = 0; i < items.size(); ++i) CHECK(squares[i] == items[i] * items[i]);
}

TEST_CASE("map: every item is a task of its own, whatever chunksize says (even past the item count)", "[map]") {
  const std::vector<int> items = iota_vector(10);
  auto f = [](int x) { return std::to_string(x) + "!"; };
  for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{1000}, std::size_t{0}, static_cast<std::size_t>(-1)}) {
    INFO("chunksize " << chunk);
    std::vector<pfp::Result> rs = pfp::map_results(map_options(2, chunk), f, items);
    REQUIRE(rs.size() == 10u);
    for (std::size_t i = 0; i < rs.size(); ++i) {
      CHECK(rs[i].ok());
      CHECK(rs[i].index == i);
      CHECK(rs[i].attempts == 1u);
      CHECK(rs[i].result.as<std::string>() == std::to_string(i) + "!");
    }
  }
}

TEST_CASE("map: empty input", "[map]") {
  const std::vector<int> none;
  CHECK(pfp::map(map_options(2), [](int x) { return x; }, none).empty());
  CHECK(pfp::map_results(map_options(2), [](int x) { return x; }, none).empty());
  CHECK(child_pids().empty());  // no worker started for nothing
}

TEST_CASE("map: several ranges are zipped, the shortest decides", "[map]") {
  const std::vector<int> a = {1, 2, 3, 4, 5};
  const std::vector<std::string> b = {"x", "y", "z"};
  const std::array<double, 4> c = {0.5, 1.5, 2.5, 3.5};
  auto f = [](int n, const std::string& s, double d) { return s + std::to_string(n) + ":" + std::to_string(static_cast<int>(d * 2)); };
  const std::vector<std::string> out = pfp::map(map_options(2), f, a, b, c);
  CHECK(out == std::vector<std::string>{"x1:1", "y2:3", "z3:5"});
  // default options
  CHECK(pfp::map([](int x, int y) { return x * y; }, a, a) == std::vector<int>{1, 4, 9, 16, 25});
}

TEST_CASE("map: a failing item is its own Result; map() throws the first failure after all ran", "[map]") {
  const std::vector<int> items = iota_vector(8);
  auto f = [](int x) {
    if (x == 3 || x == 6) throw std::invalid_argument("bad item " + std::to_string(x));
    return x;
  };
  std::vector<pfp::Result> rs = pfp::map_results(map_options(2, 2), f, items);
  REQUIRE(rs.size() == 8u);
  for (std::size_t i = 0; i < rs.size(); ++i) {
    if (i == 3 || i == 6) {
      CHECK(rs[i].status == pfp::Status::exception);
      CHECK_THAT(rs[i].error, Contains("std::invalid_argument") && Contains("bad item " + std::to_string(i)));
    } else {
      CHECK(rs[i].ok());
      CHECK(rs[i].result == pfp::Value(static_cast<int>(i)));
    }
  }
  try {
    pfp::map(map_options(2, 2), f, items);
    FAIL("map() did not throw");
  } catch (const pfp::task_error& e) {
    CHECK(e.result().index == 3u);
  }
}

TEST_CASE("map: a crash or a timeout costs its item only", "[map]") {
  const std::vector<int> items = iota_vector(9);
  auto f = [](int x) {
    if (x == 4) std::raise(SIGABRT);
    if (x == 6) sleep_ms(60000);
    return x;
  };
  for (std::size_t chunk : {std::size_t{0}, std::size_t{3}}) {
    INFO("chunksize " << chunk);
    pfp::MapOptions o = map_options(2, chunk);
    o.timeout = std::chrono::milliseconds(500);
    std::vector<pfp::Result> rs = pfp::map_results(o, f, items);
    REQUIRE(rs.size() == 9u);
    for (std::size_t i = 0; i < rs.size(); ++i) {
      INFO("item " << i);
      if (i == 4) {
        CHECK(rs[i].status == pfp::Status::crashed);
        CHECK_THAT(rs[i].error, Contains("SIGABRT"));
      } else if (i == 6) {
        CHECK(rs[i].status == pfp::Status::timed_out);
      } else {
        CHECK(rs[i].ok());
      }
    }
  }
}

TEST_CASE("imap: chunksize past the item count does not wrap", "[map]") {
  const std::vector<int> items = iota_vector(7);
  pfp::MapOptions o = map_options(2, static_cast<std::size_t>(-1));
  std::vector<pfp::Result> got;
  pfp::imap(o, [](int x) { return x * 3; }, items, [&](pfp::Result&& r) { got.push_back(std::move(r)); });
  REQUIRE(got.size() == items.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].ok());
    CHECK(got[i].result.as<int>() == static_cast<int>(i) * 3);
  }
}

TEST_CASE("map_unordered: results arrive fastest first", "[map]") {
  const std::vector<int> naps = {900, 50, 400};
  std::vector<std::size_t> order;
  pfp::map_unordered(
      map_options(3),
      [](int ms_) {
        sleep_ms(ms_);
        return ms_;
      },
      [&](pfp::Result&& r) {
        REQUIRE(r.ok());
        order.push_back(r.index);
      },
      naps);
  CHECK(order == std::vector<std::size_t>{1, 2, 0});
}

TEST_CASE("imap: a lazy source, in order, with its error reaching the caller after what ran", "[map]") {
  SECTION("an input range") {
    std::deque<int> source = {5, 6, 7, 8};
    std::vector<long long> got;
    pfp::imap(map_options(2), [](int x) { return x * 10; }, source, [&](pfp::Result&& r) { got.push_back(r.result.as<long long>()); });
    CHECK(got == std::vector<long long>{50, 60, 70, 80});
  }
  SECTION("a callable that throws after 3 items") {
    int next = 0;
    auto source = [&]() -> std::optional<int> {
      if (next == 3) throw std::runtime_error("source failed after 3 items");
      return next++;
    };
    std::vector<std::size_t> delivered;
    for (std::size_t chunk : {std::size_t{1}, std::size_t{2}}) {
      next = 0;
      delivered.clear();
      INFO("chunksize " << chunk);
      CHECK_THROWS_WITH(pfp::imap(map_options(2, chunk), [](int x) { return x + 1; }, source,
                                  [&](pfp::Result&& r) {
                                    CHECK(r.ok());
                                    CHECK(r.result.as<int>() == static_cast<int>(r.index) + 1);
                                    delivered.push_back(r.index);
                                  }),
                        "source failed after 3 items");
      CHECK(delivered == std::vector<std::size_t>{0, 1, 2});  // nothing that was pulled is lost
    }
    CHECK(wait_until([] { return child_pids().empty(); }, ms(5000)));
  }
  SECTION("what on_result throws stops the run and is rethrown") {
    int next = 0;
    auto endless = [&]() -> std::optional<int> { return next++; };
    CHECK_THROWS_WITH(pfp::imap(map_options(2), [](int x) { return x; }, endless,
                                [&](pfp::Result&& r) {
                                  if (r.index == 20) throw std::logic_error("consumer had enough");
                                }),
                      "consumer had enough");
    CHECK(wait_until([] { return child_pids().empty(); }, ms(5000)));
  }
}

TEST_CASE("imap_unordered: 1,000,000 items in bounded memory and a bounded number in flight", "[map][slow]") {
  pfp::MapOptions o = map_options(2, 256);
  o.max_in_flight = 4096;
  std::size_t pulled = 0;
  std::size_t delivered = 0;
  std::size_t most_in_flight = 0;
  const std::size_t total = 1000000;
  auto source = [&]() -> std::optional<long long> {
    if (pulled == total) return std::nullopt;
    most_in_flight = std::max(most_in_flight, pulled - delivered);
    return static_cast<long long>(pulled++);
  };
  long long sum = 0;
  const long rss_before = max_rss_kib();
  pfp::imap_unordered(o, [](long long x) { return x % 7; }, source, [&](pfp::Result&& r) {
    ++delivered;
    sum += r.result.as<long long>();
  });
  const long rss_growth_kib = max_rss_kib() - rss_before;
  CHECK(delivered == total);
  long long expect = 0;
  for (std::size_t i = 0; i < total; ++i) expect += static_cast<long long>(i % 7);
  CHECK(sum == expect);
  CHECK(most_in_flight <= o.max_in_flight);
  INFO("peak RSS growth " << rss_growth_kib << " KiB");
#if !defined(PFP_TEST_ASAN)
  CHECK(rss_growth_kib < 40 * 1024);  // holding 1M Results would take well over 100 MiB
#endif
}

TEST_CASE("map: every backend gives the same Results", "[map][backend]") {
  const std::vector<int> items = iota_vector(12);
  auto f = [](int x) {
    if (x % 5 == 4) throw std::range_error("five " + std::to_string(x));
    return std::string(static_cast<std::size_t>(x), 'a');
  };
  auto run = [&](pfp::Backend b) {
    pfp::MapOptions o = map_options(2, 3);
    o.backend = b;
    std::vector<std::tuple<std::size_t, pfp::Status, pfp::Value, std::string>> out;
    for (const pfp::Result& r : pfp::map_results(o, f, items)) out.emplace_back(r.index, r.status, r.result, r.error);
    return out;
  };
  const auto processes = run(pfp::Backend::processes);
  REQUIRE(processes.size() == 12u);
  CHECK(std::get<1>(processes[4]) == pfp::Status::exception);
  CHECK((run(pfp::Backend::threads) == processes));  // (parenthesized: Catch cannot print the tuples)
  CHECK((run(pfp::Backend::inline_) == processes));
}

TEST_CASE("map_unordered: a result finished before a long task on the same worker is delivered at once",
          "[map]") {
  // 20 instant items then one long one, one worker: after the first result the pool sends the
  // rest as one batch, so the worker holds the long item behind the instant ones.
  std::vector<int> naps(20, 0);
  naps.push_back(1500);
  std::vector<long long> delivered_ms(naps.size(), -1);
  const auto t0 = Clock::now();
  pfp::map_unordered(
      map_options(1),
      [](int ms_) {
        sleep_ms(ms_);
        return ms_;
      },
      [&](pfp::Result&& r) { delivered_ms[r.index] = elapsed_ms(t0); }, naps);
  INFO("item 19 delivered after " << delivered_ms[19] << " ms, item 20 after " << delivered_ms[20] << " ms");
  CHECK(delivered_ms[20] >= 1500);
  CHECK(delivered_ms[19] < 700);
}
