// Options::progress for every front end (issue 12, item 5): execute_parallel, map_results,
// map_unordered, imap and the Executor draw the Manager's progress line, or call your own
// on_progress, on every backend.
#include "pfp_catch.hpp"
#include "backend_list.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace pfp_test;
using Catch::Matchers::Contains;

namespace {

/// Runs body(options) with Options::progress in plain mode, a line per finished task, into a
/// file; returns what was written.
std::string plain_progress(pfp::Options o, const std::function<void(const pfp::Options&)>& body) {
  const std::string path = temp_path("progress");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  o.progress.mode = pfp::ProgressMode::plain;
  o.progress.fd = fd;
  o.progress.interval = std::chrono::milliseconds(0);
  body(o);
  ::close(fd);
  std::string out = read_file(path);
  ::unlink(path.c_str());
  return out;
}

std::string last_line(const std::string& text) {
  if (text.empty()) return text;
  const std::string body = text.substr(0, text.size() - 1);
  const std::size_t nl = body.rfind('\n');
  return nl == std::string::npos ? body : body.substr(nl + 1);
}

int twice(int x) {
  if (x == 7) throw std::runtime_error("seven");
  return 2 * x;
}

}  // namespace

TEST_CASE("progress: plain lines from every front end on every backend", "[map][progress]") {
  const std::vector<int> items = numbers(20);
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      pfp::MapOptions base = map_opts(b);
      SECTION("map_results") {
        const std::string out = plain_progress(base, [&](const pfp::Options& o) {
          pfp::MapOptions m = base;
          m.progress = o.progress;
          CHECK(pfp::map_results(m, twice, items).size() == 20u);
        });
        INFO(out);
        CHECK(count_occurrences(out, "progress: ") >= 20u);
        CHECK(last_line(out).rfind("progress: 20/20 (100%) |", 0) == 0);
        CHECK_THAT(last_line(out), Contains("| 1 failed |"));
      }
      SECTION("map_unordered and imap") {
        for (bool lazy : {false, true}) {
          const std::string out = plain_progress(base, [&](const pfp::Options& o) {
            pfp::MapOptions m = base;
            m.progress = o.progress;
            std::size_t n = 0;
            if (lazy)
              pfp::imap(m, twice, items, [&n](pfp::Result&&) { ++n; });
            else
              pfp::map_unordered(m, twice, [&n](pfp::Result&&) { ++n; }, items);
            CHECK(n == 20u);
          });
          INFO(out);
          CHECK(count_occurrences(out, "progress: ") >= 20u);
          CHECK(last_line(out).rfind(lazy ? "progress: 20 items |" : "progress: 20/20 (100%) |", 0) == 0);
        }
      }
      SECTION("execute_parallel") {
        const std::string out = plain_progress(base, [&](const pfp::Options& o) {
          pfp::MultiProcessor<> mp(pfp::Value::object(), o);
          for (int i = 0; i < 12; ++i)
            mp.register_function("f" + std::to_string(i), [i](const pfp::Value&, const pfp::Args&) { return i; });
          CHECK(mp.execute_parallel().size() == 12u);
        });
        INFO(out);
        CHECK(last_line(out).rfind("progress: 12/12 (100%) |", 0) == 0);
      }
      // Backend::inline_: the Executor runs each batch of submissions as a run of its own, each
      // with its own report.
      if (b != pfp::Backend::inline_) SECTION("Executor") {
        const std::string out = plain_progress(base, [&](const pfp::Options& o) {
          pfp::Executor ex(o);
          auto f = ex.declare("twice", [](int x) { return 2 * x; });
          ex.start();
          std::vector<pfp::Future<int>> fs;
          for (int i = 0; i < 10; ++i) fs.push_back(ex.submit(f, i));
          for (int i = 0; i < 10; ++i) CHECK(fs[static_cast<std::size_t>(i)].get() == 2 * i);
          ex.shutdown();
        });
        INFO(out);
        CHECK(count_occurrences(out, "progress: ") >= 10u);
        CHECK(last_line(out).rfind("progress: 10 items |", 0) == 0);
      }
    }
  }
}

TEST_CASE("progress: your own on_progress gets the counts, and a last call", "[map][progress]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      pfp::MapOptions o = map_opts(b);
      std::vector<pfp::ProgressSnapshot> seen;
      o.progress.refresh = std::chrono::milliseconds(0);
      o.progress.on_progress = [&seen](const pfp::ProgressSnapshot& s) { seen.push_back(s); };
      const std::vector<int> items = numbers(30);
      CHECK(pfp::map_results(o, twice, items).size() == 30u);
      REQUIRE(seen.size() >= 2u);
      for (std::size_t i = 1; i < seen.size(); ++i) CHECK(seen[i].done >= seen[i - 1].done);
      const pfp::ProgressSnapshot& last = seen.back();
      CHECK(last.last);
      CHECK_FALSE(last.stopped);
      CHECK(last.done == 30u);
      CHECK(last.failed == 1u);
      REQUIRE(last.total.has_value());
      CHECK(*last.total == 30u);
      for (std::size_t i = 0; i + 1 < seen.size(); ++i) CHECK_FALSE(seen[i].last);
    }
  }
}

TEST_CASE("progress: what on_progress throws stops the run and is rethrown", "[map][progress]") {
  pfp::MapOptions o = map_opts(pfp::Backend::processes);
  o.progress.refresh = std::chrono::milliseconds(0);
  std::size_t calls = 0;
  o.progress.on_progress = [&calls](const pfp::ProgressSnapshot&) {
    if (++calls == 3) throw std::runtime_error("the screen is gone");
  };
  const std::vector<int> items = numbers(500);
  CHECK_THROWS_WITH(pfp::map_unordered(o, [](int x) { return x; }, [](pfp::Result&&) {}, items),
                    Contains("the screen is gone"));
  CHECK(child_pids().empty());
}

TEST_CASE("progress: off by default outside the Manager", "[map][progress]") {
  const pfp::Options o;
  CHECK(o.progress.mode == pfp::ProgressMode::off);
  CHECK_FALSE(o.progress.on_progress);
  const pfp::ManagerOptions m;
  CHECK(m.progress.mode == pfp::ProgressMode::automatic);
}
