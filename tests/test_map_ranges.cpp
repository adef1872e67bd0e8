// imap / imap_unordered as ranges of Results (issue 12, item 4), and the input item handed to
// on_result alongside its Result, on every backend.
#include "pfp_catch.hpp"
#include "backend_list.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <atomic>
#include <cstddef>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using namespace pfp_test;
using Catch::Matchers::Contains;

TEST_CASE("imap range: every Result in input order, on every backend", "[map][range]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      const std::vector<int> items = numbers(60);
      auto f = [](int x) {
        sleep_ms((60 - x) % 3);
        return x * 3;
      };
      std::size_t expect = 0;
      for (pfp::Result& r : pfp::imap(map_opts(b), f, items)) {
        REQUIRE(r.ok());
        CHECK(r.index == expect);
        CHECK(r.result.as<int>() == static_cast<int>(expect) * 3);
        ++expect;
      }
      CHECK(expect == items.size());
      CHECK(child_pids().empty());
    }
  }
}

TEST_CASE("imap_unordered range: every Result once, on every backend", "[map][range]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      std::set<std::size_t> seen;
      // an rvalue source: the range keeps it
      for (const pfp::Result& r : pfp::imap_unordered(map_opts(b), [](int x) { return x + 1; }, numbers(40))) {
        REQUIRE(r.ok());
        CHECK(r.result.as<int>() == static_cast<int>(r.index) + 1);
        CHECK(seen.insert(r.index).second);
      }
      CHECK(seen.size() == 40u);
    }
  }
}

TEST_CASE("imap range: breaking out of the loop stops the run - workers killed and reaped, nothing left",
          "[map][range]") {
  for (bool ordered : {true, false}) {
    DYNAMIC_SECTION((ordered ? "imap" : "imap_unordered")) {
      const std::vector<int> items = numbers(100);
      auto f = [](int x) {
        if (x >= 3) sleep_ms(30000);  // still running when the loop leaves
        return x;
      };
      std::size_t taken = 0;
      const auto start = Clock::now();
      {
        auto results = ordered ? pfp::imap(map_opts(pfp::Backend::processes, 3), f, items)
                               : pfp::imap_unordered(map_opts(pfp::Backend::processes, 3), f, items);
        for (pfp::Result& r : results) {
          CHECK(r.ok());
          if (++taken == 2) break;
        }
        CHECK_FALSE(child_pids().empty());  // the run stands still while the loop body runs
      }
      CHECK(taken == 2u);
      CHECK(child_pids().empty());
      CHECK(elapsed_ms(start) < 20000);
    }
  }
}

TEST_CASE("imap range: breaking out on the in-process backends lets running items finish and stops", "[map][range]") {
  for (pfp::Backend b : {pfp::Backend::threads, pfp::Backend::inline_}) {
    DYNAMIC_SECTION(name_of(b)) {
      std::atomic<int> ran{0};
      const std::vector<int> items = numbers(1000);
      std::size_t taken = 0;
      for (pfp::Result& r : pfp::imap(map_opts(b), [&ran](int x) { ++ran; return x; }, items)) {
        CHECK(r.ok());
        if (++taken == 5) break;
      }
      CHECK(taken == 5u);
      CHECK(ran.load() < 1000);
    }
  }
}

TEST_CASE("imap range: what the source throws comes out of the loop after the items taken", "[map][range]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      int next = 0;
      auto source = [&next]() -> std::optional<int> {
        if (next == 5) throw std::runtime_error("the source broke");
        return next++;
      };
      std::size_t taken = 0;
      auto loop = [&] {
        for (pfp::Result& r : pfp::imap(map_opts(b), [](int x) { return x; }, source)) {
          CHECK(r.ok());
          ++taken;
        }
      };
      CHECK_THROWS_WITH(loop(), Contains("the source broke"));
      CHECK(taken == 5u);
      CHECK(child_pids().empty());
    }
  }
}

TEST_CASE("imap range: begin() twice is refused saying why", "[map][range]") {
  const std::vector<int> items = numbers(3);
  auto results = pfp::imap(map_opts(pfp::Backend::processes), [](int x) { return x; }, items);
  std::size_t n = 0;
  for (auto it = results.begin(); it != results.end(); ++it) ++n;
  CHECK(n == 3u);
  CHECK_THROWS_WITH(results.begin(), Contains("only once"));
}

TEST_CASE("imap range: a range never walked starts nothing", "[map][range]") {
  const std::vector<int> items = numbers(3);
  { auto results = pfp::imap(map_opts(pfp::Backend::processes), [](int x) { return x; }, items); }
  CHECK(child_pids().empty());
}

TEST_CASE("on_result gets the input item with its Result: imap, imap_unordered, map_unordered", "[map][item]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      std::vector<std::string> words;
      for (int i = 0; i < 30; ++i) words.push_back("w" + std::to_string(i));
      auto f = [](const std::string& w) { return w.size(); };
      for (bool ordered : {true, false}) {
        std::size_t calls = 0;
        auto check = [&](pfp::Result&& r, const std::string& item) {
          ++calls;
          CHECK(item == words.at(r.index));
          CHECK(r.result.as<std::size_t>() == item.size());
        };
        pfp::MapOptions o = map_opts(b);
        o.chunksize = ordered ? 1 : 4;
        if (ordered)
          pfp::imap(o, f, words, check);
        else
          pfp::imap_unordered(o, f, words, check);
        CHECK(calls == words.size());
      }
      const std::vector<int> counts = numbers(30);
      std::size_t calls = 0;
      pfp::map_unordered(
          map_opts(b), [](const std::string& w, int n) { return w + "/" + std::to_string(n); },
          [&](pfp::Result&& r, const std::string& w, int n) {
            ++calls;
            CHECK(&w == &words.at(r.index));  // a reference to the item itself
            CHECK(r.result.as<std::string>() == w + "/" + std::to_string(n));
          },
          words, counts);
      CHECK(calls == words.size());
    }
  }
}
