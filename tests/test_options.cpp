// Options are checked once, the same way, whichever front end runs them (detail::validate in
// run_feed, and early in the constructors of MultiProcessor, Executor and Manager).

#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

using Catch::Matchers::Contains;

namespace {

// Runs two trivial items through the front end `which` with options `o`.
void run_front(const std::string& which, const pfp::Options& o) {
  const std::vector<int> items = {1, 2};
  pfp::MapOptions mo;
  static_cast<pfp::Options&>(mo) = o;
  if (which == "MultiProcessor") {
    pfp::MultiProcessor<> mp({}, o);
    mp.register_function("f", [](const pfp::Value&, const pfp::Args&) { return 1; });
    mp.execute_parallel();
  } else if (which == "map_results") {
    pfp::map_results(mo, [](int x) { return x; }, items);
  } else if (which == "map_unordered") {
    pfp::map_unordered(mo, [](int x) { return x; }, [](pfp::Result&&) {}, items);
  } else if (which == "imap") {
    pfp::imap(mo, [](int x) { return x; }, items, [](pfp::Result&&) {});
  } else if (which == "Executor") {
    pfp::Executor ex(o);
    auto f = ex.declare("f", [](int x) { return x; });
    ex.submit(f, 1).get();
  }
}

}  // namespace

TEST_CASE("options: every front end refuses the same invalid Options with the same message", "[options]") {
  struct Bad {
    std::string what;
    std::function<void(pfp::Options&)> spoil;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {"max_result_bytes 0", [](pfp::Options& o) { o.max_result_bytes = 0; }, "Options::max_result_bytes is 0"},
      {"negative timeout", [](pfp::Options& o) { o.timeout = std::chrono::milliseconds(-5); }, "Options::timeout is negative"},
      {"negative cpu_limit", [](pfp::Options& o) { o.cpu_limit = std::chrono::seconds(-1); }, "Options::cpu_limit is negative"},
      {"not a Backend", [](pfp::Options& o) { o.backend = static_cast<pfp::Backend>(42); }, "not a pfp::Backend"},
  };
  for (const std::string which : {"MultiProcessor", "map_results", "map_unordered", "imap", "Executor"}) {
    for (const Bad& b : bad) {
      INFO(which << " with " << b.what);
      pfp::Options o;
      o.workers = 2;
      b.spoil(o);
      CHECK_THROWS_WITH(run_front(which, o), Contains(b.message));
      CHECK(pfp_test::child_pids().empty());  // refused before any worker started
    }
  }
}

TEST_CASE("options: valid Options run on every front end", "[options]") {
  for (const std::string which : {"MultiProcessor", "map_results", "map_unordered", "imap", "Executor"}) {
    INFO(which);
    pfp::Options o;
    o.workers = 2;
    CHECK_NOTHROW(run_front(which, o));
  }
}
