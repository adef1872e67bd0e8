// Front ends under faults (issue 11, items 6-9): a callback that threw is never called again, a
// run that cannot start a worker mid-run gives every item a verdict and never looks like a
// success, the Manager logs what its handlers wrote and counts what happened honestly.
#include "pfp_catch.hpp"
#include "backend_list.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

using namespace pfp_test;
using Catch::Matchers::Contains;

namespace {

/// While it lives, every free descriptor is taken (dup() until EMFILE), so no worker process can
/// be started: pfp needs pipes for each, more than a retiring worker gives back. Made inside a
/// callback, it is "no worker can be started mid-run" (as a full descriptor table is).
class NoNewDescriptors {
 public:
  NoNewDescriptors() {
    for (int fd; (fd = ::dup(0)) >= 0;) fds_.push_back(fd);
  }
  ~NoNewDescriptors() {
    for (int fd : fds_) ::close(fd);
  }
  NoNewDescriptors(const NoNewDescriptors&) = delete;
  NoNewDescriptors& operator=(const NoNewDescriptors&) = delete;

 private:
  std::vector<int> fds_;
};

/// An on_result that keeps every Result and, after the first, lets no worker start.
struct StarveAfterFirst {
  std::optional<NoNewDescriptors> starve;
  std::vector<pfp::Result> got;
  void operator()(pfp::Result&& r) {
    got.push_back(std::move(r));
    if (got.size() == 1) starve.emplace();
  }
};

/// Options where the one worker leaves after each item: each later item needs a new worker.
pfp::MapOptions one_item_per_worker() {
  pfp::MapOptions o;
  o.workers = 1;
  o.max_tasks_per_worker = 1;
  return o;
}

pfp::ManagerOptions quiet(unsigned workers, pfp::Backend b = pfp::Backend::processes) {
  pfp::ManagerOptions o;
  o.workers = workers;
  o.backend = b;
  o.threads = pfp::ThreadPolicy::allow;
  o.logger = pfp::silent_logger();
  o.progress.mode = pfp::ProgressMode::off;
  return o;
}

struct Numbers {
  int count = 12;
  std::function<void(int, pfp::ItemContext&)> handle;
  auto build_items() { return pfp::iota(0, count); }
  void handle_item(int n, pfp::ItemContext& ctx) {
    if (handle) handle(n, ctx);
    ctx.stats.inc("handled");
  }
};

std::string describe(const pfp::ExitStatus& st) {
  return pfp::to_string(st) + " ok=" + std::to_string(st.items_ok) + " failed=" + std::to_string(st.items_failed) +
         " cancelled=" + std::to_string(st.items_cancelled);
}

}  // namespace

// ---------------------------------------------------------------- item 6: a callback that threw

TEST_CASE("stream faults: map_unordered never calls on_result again after it threw", "[stream_faults][callback]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      const std::vector<int> items = numbers(2000);
      std::size_t calls = 0;
      auto on_result = [&calls](pfp::Result&&) {
        if (++calls == 50) throw std::runtime_error("the consumer is full");
      };
      CHECK_THROWS_WITH(pfp::map_unordered(map_opts(b), [](int x) { return x; }, on_result, items),
                        Contains("the consumer is full"));
      CHECK(calls == 50u);
      CHECK(child_pids().empty());
    }
  }
}

TEST_CASE("stream faults: imap and imap_unordered never call on_result again after it threw", "[stream_faults][callback]") {
  for (pfp::Backend b : kBackends) {
    for (bool ordered : {true, false}) {
      DYNAMIC_SECTION(name_of(b) << (ordered ? " imap" : " imap_unordered")) {
        std::size_t calls = 0;
        auto on_result = [&calls](pfp::Result&&) {
          if (++calls == 5) throw std::runtime_error("the consumer is full");
        };
        auto f = [](int x) {
          sleep_ms(x % 3);
          return x;
        };
        pfp::MapOptions o = map_opts(b);
        o.max_in_flight = 64;
        const std::vector<int> items = numbers(500);
        if (ordered)
          CHECK_THROWS_WITH(pfp::imap(o, f, items, on_result), Contains("the consumer is full"));
        else
          CHECK_THROWS_WITH(pfp::imap_unordered(o, f, items, on_result), Contains("the consumer is full"));
        CHECK(calls == 5u);
        CHECK(child_pids().empty());
      }
    }
  }
}

TEST_CASE("stream faults: a Manager logger that threw is never called again", "[stream_faults][callback]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      Numbers h;
      h.count = 200;
      h.handle = [](int n, pfp::ItemContext&) { sleep_ms(n % 3); };
      pfp::ManagerOptions o = quiet(2, b);
      std::size_t calls = 0;
      o.logger = [&calls](const pfp::ItemLog&) {
        if (++calls == 3) throw std::runtime_error("the log disk is full");
      };
      pfp::Manager<Numbers> m(h, o);
      const pfp::ExitStatus st = m.run();
      INFO(describe(st));
      CHECK(st.code == 1);
      CHECK_THAT(st.message, Contains("the log disk is full"));
      CHECK(calls == 3u);
      CHECK(child_pids().empty());
    }
  }
}

// ---------------------------------------------------------------- item 7: no worker mid-run

TEST_CASE("stream faults: imap that cannot start a worker mid-run throws, every item it took has a verdict",
          "[stream_faults][no_worker]") {
  for (bool ordered : {true, false}) {
    DYNAMIC_SECTION((ordered ? "imap" : "imap_unordered")) {
      StarveAfterFirst collect;
      std::vector<pfp::Result>& got = collect.got;
      auto on_result = [&](pfp::Result&& r) { collect(std::move(r)); };
      const std::vector<int> items = numbers(12);
      auto f = [](int x) { return x * 2; };
      std::string what;
      try {
        if (ordered)
          pfp::imap(one_item_per_worker(), f, items, on_result);
        else
          pfp::imap_unordered(one_item_per_worker(), f, items, on_result);
      } catch (const pfp::error& e) {
        what = e.what();
      }
      collect.starve.reset();
      INFO(what);
      CHECK_THAT(what, Contains("could not start a worker process"));
      REQUIRE(got.size() < items.size());
      std::set<std::size_t> seen;
      for (const pfp::Result& r : got) {
        CHECK(seen.insert(r.index).second);
        if (r.ok()) {
          CHECK(r.result.as<int>() == static_cast<int>(r.index) * 2);
        } else {
          CHECK(r.status == pfp::Status::cancelled);
          CHECK_THAT(r.error, Contains("not run: could not start a worker process"));
        }
      }
      CHECK(child_pids().empty());
    }
  }
}

TEST_CASE("stream faults: map_unordered that cannot start a worker mid-run gives every item a verdict",
          "[stream_faults][no_worker]") {
  StarveAfterFirst collect;
  std::vector<pfp::Result>& got = collect.got;
  const std::vector<int> items = numbers(12);
  pfp::map_unordered(one_item_per_worker(), [](int x) { return x; }, [&](pfp::Result&& r) { collect(std::move(r)); }, items);
  collect.starve.reset();
  REQUIRE(got.size() == items.size());
  std::size_t cancelled = 0;
  for (const pfp::Result& r : got) {
    if (r.ok()) continue;
    ++cancelled;
    CHECK(r.status == pfp::Status::cancelled);
    CHECK_THAT(r.error, Contains("not run: could not start a worker process"));
  }
  CHECK(cancelled > 0u);
}

TEST_CASE("stream faults: a Manager that cannot start a worker mid-run gives every item a verdict and fails",
          "[stream_faults][no_worker]") {
  for (pfp::ErrorPolicy policy : {pfp::ErrorPolicy::fail_fast, pfp::ErrorPolicy::continue_on_error}) {
    DYNAMIC_SECTION((policy == pfp::ErrorPolicy::fail_fast ? "fail_fast" : "continue_on_error")) {
      Numbers h;
      h.count = 12;
      pfp::ManagerOptions o = quiet(1);
      o.max_tasks_per_worker = 1;
      o.on_error = policy;
      std::optional<NoNewDescriptors> starve;
      std::vector<pfp::ItemLog> logs;
      o.logger = [&](const pfp::ItemLog& l) {
        logs.push_back(l);
        if (logs.size() == 1) starve.emplace();
      };
      pfp::Manager<Numbers> m(h, o);
      const pfp::ExitStatus st = m.run();
      starve.reset();
      INFO(describe(st));
      CHECK(st.code == pfp::ExitStatus::failure);
      CHECK_FALSE(st.ok());
      CHECK_THAT(st.message, Contains("could not start a worker process"));
      CHECK(st.items_ok + st.items_failed + st.items_cancelled == 12u);
      CHECK(st.items_ok < 12u);
      CHECK(logs.size() == 12u);
      std::set<std::uint64_t> seqs;
      for (const pfp::ItemLog& l : logs) {
        CHECK(seqs.insert(l.seq).second);
        if (l.status != pfp::Status::ok) {
          CHECK(l.status == pfp::Status::cancelled);
          CHECK_THAT(l.error, Contains("not run: could not start a worker process"));
        }
      }
      CHECK(child_pids().empty());
    }
  }
}

// ---------------------------------------------------------------- item 8: what a failed item logs

TEST_CASE("stream faults: an item that throws in a live worker is logged with its worker and its lines",
          "[stream_faults][log]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      Numbers h;
      h.count = 4;
      h.handle = [](int n, pfp::ItemContext& ctx) {
        ctx.log("starting " + std::to_string(n));
        if (n == 2) throw std::runtime_error("item two is bad");
        ctx.log("finished " + std::to_string(n));
      };
      pfp::ManagerOptions o = quiet(2, b);
      o.on_error = pfp::ErrorPolicy::continue_on_error;
      std::vector<pfp::ItemLog> logs;
      std::string text;
      o.logger = [&](const pfp::ItemLog& l) {
        logs.push_back(l);
        text += pfp::format_item_log(l);
      };
      pfp::Manager<Numbers> m(h, o);
      const pfp::ExitStatus st = m.run();
      INFO(describe(st) << "\n" << text);
      CHECK(st.items_failed == 1u);
      std::optional<pfp::ItemLog> failed;
      for (const pfp::ItemLog& l : logs)
        if (l.seq == 2 && l.status != pfp::Status::ok) failed = l;
      REQUIRE(failed.has_value());
      CHECK(failed->status == pfp::Status::exception);
      REQUIRE(failed->worker.has_value());
      CHECK(*failed->worker < 2u);
      CHECK(failed->messages == std::vector<std::string>{"starting 2"});
      CHECK(text.find("[pid ") == std::string::npos);
      CHECK(count_occurrences(text, "] 2: starting 2\n") == 1u);
      CHECK_THAT(text, Contains("] 2: exception: std::runtime_error: item two is bad"));
    }
  }
}

TEST_CASE("stream faults: an item that throws keeps its lines when exceptions are retried", "[stream_faults][log]") {
  Numbers h;
  h.count = 1;
  h.handle = [](int, pfp::ItemContext& ctx) {
    ctx.log("trying");
    throw std::runtime_error("never works");
  };
  pfp::ManagerOptions o = quiet(1);
  o.retries = 2;
  o.retry_exceptions = true;
  std::vector<pfp::ItemLog> logs;
  o.logger = [&](const pfp::ItemLog& l) {
    if (!l.live) logs.push_back(l);
  };
  pfp::Manager<Numbers> m(h, o);
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  REQUIRE(logs.size() == 1u);
  CHECK(logs[0].status == pfp::Status::exception);
  CHECK(logs[0].worker.has_value());
  CHECK(logs[0].messages == std::vector<std::string>{"trying", "trying", "trying"});
}

// ---------------------------------------------------------------- item 9: the last progress line after Ctrl-C

TEST_CASE("stream faults: after Ctrl-C the last progress line counts cancelled items apart and shows no ETA",
          "[stream_faults][progress]") {
  const std::string path = temp_path("progress");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  const pid_t parent = ::getpid();
  Numbers h;
  h.count = 20;
  h.handle = [parent](int n, pfp::ItemContext&) {
    if (n == 1) throw std::runtime_error("one fails");
    if (n == 4) ::kill(parent, SIGINT);
    sleep_ms(n >= 4 ? 30000 : 10);
  };
  pfp::ManagerOptions o = quiet(2);
  o.on_error = pfp::ErrorPolicy::continue_on_error;
  o.progress.mode = pfp::ProgressMode::plain;
  o.progress.fd = fd;
  o.progress.interval = std::chrono::milliseconds(0);
  pfp::Manager<Numbers> m(h, o);
  const pfp::ExitStatus st = m.run();
  ::close(fd);
  const std::string out = read_file(path);
  ::unlink(path.c_str());
  INFO(describe(st) << "\n" << out);
  REQUIRE(st.code == pfp::ExitStatus::interrupted);
  CHECK(st.items_cancelled >= 1u);
  REQUIRE(!out.empty());
  std::string last = out.substr(0, out.size() - 1);
  last = last.substr(last.rfind('\n') == std::string::npos ? 0 : last.rfind('\n') + 1);
  INFO("last line: " << last);
  const std::string done = "progress: " + std::to_string(st.items_ok + st.items_failed) + "/20 ";
  CHECK(last.rfind(done, 0) == 0);
  CHECK(last.find("ETA") == std::string::npos);
  CHECK_THAT(last, Contains(" " + std::to_string(st.items_failed) + " failed"));
  CHECK_THAT(last, Contains(" " + std::to_string(st.items_cancelled) + " cancelled"));
  CHECK(child_pids().empty());
}

namespace {
/// A handler whose item source never ends.
struct Endless {
  auto build_items() {
    return pfp::generate([n = 0]() mutable -> std::optional<int> { return n++; });
  }
  void handle_item(int, pfp::ItemContext&) {}
};
}  // namespace

TEST_CASE("stream faults: a Manager over an endless source that cannot start a worker returns, failed",
          "[stream_faults][no_worker]") {
  pfp::ManagerOptions o = quiet(1);
  o.max_tasks_per_worker = 1;
  o.on_error = pfp::ErrorPolicy::continue_on_error;
  std::optional<NoNewDescriptors> starve;
  std::size_t logged = 0;
  o.logger = [&](const pfp::ItemLog&) {
    if (++logged == 1) starve.emplace();
  };
  pfp::Manager<Endless> m(Endless{}, o);
  const auto start = std::chrono::steady_clock::now();
  const pfp::ExitStatus st = m.run();
  starve.reset();
  INFO(describe(st));
  CHECK(st.code == pfp::ExitStatus::failure);
  CHECK_THAT(st.message, Contains("could not start a worker process"));
  CHECK_THAT(st.message, Contains("the item source was not read past"));
  CHECK(st.items_ok >= 1u);
  CHECK(st.items_cancelled + st.items_failed >= 100000u);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(120));
  CHECK(child_pids().empty());
}
