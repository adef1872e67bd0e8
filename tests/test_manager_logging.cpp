// Live handler logging in the Manager (issue 12, item 6): ctx.log() lines reach the logger as they
// are written, and lines written before a crash or a timeout are kept.
#include "pfp_catch.hpp"
#include "backend_list.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

using namespace pfp_test;
using Catch::Matchers::Contains;

namespace {

struct Lines {
  int count = 1;
  std::function<void(int, pfp::ItemContext&)> handle;
  auto build_items() { return pfp::iota(0, count); }
  void handle_item(int n, pfp::ItemContext& ctx) { handle(n, ctx); }
};

pfp::ManagerOptions options(unsigned workers, pfp::Backend b = pfp::Backend::processes) {
  pfp::ManagerOptions o;
  o.workers = workers;
  o.backend = b;
  o.threads = pfp::ThreadPolicy::allow;
  o.on_error = pfp::ErrorPolicy::continue_on_error;
  o.progress.mode = pfp::ProgressMode::off;
  return o;
}

/// Runs h, keeping every ItemLog the logger receives, in order.
std::vector<pfp::ItemLog> run_logged(Lines h, pfp::ManagerOptions o, pfp::ExitStatus& st,
                                     std::function<void(const pfp::ItemLog&)> also = {}) {
  std::vector<pfp::ItemLog> logs;
  o.logger = [&logs, also](const pfp::ItemLog& l) {
    logs.push_back(l);
    if (also) also(l);
  };
  pfp::Manager<Lines> m(std::move(h), o);
  st = m.run();
  return logs;
}

const pfp::ItemLog* final_of(const std::vector<pfp::ItemLog>& logs, std::uint64_t seq) {
  for (const pfp::ItemLog& l : logs)
    if (!l.live && l.seq == seq) return &l;
  return nullptr;
}

}  // namespace

TEST_CASE("manager logging: a line reaches the logger while its item still runs", "[manager][log][live]") {
  const std::string flag = temp_path("seen");
  ::unlink(flag.c_str());
  Lines h;
  h.handle = [flag](int, pfp::ItemContext& ctx) {
    ctx.log("half way");
    // The parent creates the flag when its logger got the line: wait for it (a generous guard).
    const bool seen = wait_until([&] { return ::access(flag.c_str(), F_OK) == 0; }, ms(20000));
    ctx.stats.set("seen", seen);
    ctx.log("done waiting");
  };
  pfp::ExitStatus st;
  const auto logs = run_logged(h, options(1), st, [flag](const pfp::ItemLog& l) {
    if (l.live && l.messages == std::vector<std::string>{"half way"}) write_file_atomic(flag, "x");
  });
  ::unlink(flag.c_str());
  INFO(pfp::to_string(st));
  CHECK(st.ok());
  CHECK(st.stats.to_object().at("seen").as<bool>());
  REQUIRE(logs.size() == 3u);
  CHECK(logs[0].live);
  REQUIRE(logs[0].worker.has_value());
  CHECK(*logs[0].worker == 0u);
  CHECK(logs[0].pid > 0);
  CHECK(logs[0].label == "0");
  CHECK(logs[1].live);
  CHECK(logs[1].messages == std::vector<std::string>{"done waiting"});
  CHECK_FALSE(logs[2].live);
  CHECK(logs[2].status == pfp::Status::ok);
  CHECK(logs[2].messages == std::vector<std::string>{"half way", "done waiting"});
  CHECK(logs[2].messages_shown == 2u);
}

TEST_CASE("manager logging: lines written before a crash or a timeout are kept", "[manager][log][live]") {
  Lines h;
  h.count = 3;
  h.handle = [](int n, pfp::ItemContext& ctx) {
    ctx.log("item " + std::to_string(n) + " starts");
    if (n == 1) std::abort();
    if (n == 2) sleep_ms(60000);
  };
  pfp::ManagerOptions o = options(3);
  o.timeout = std::chrono::milliseconds(1500);
  pfp::ExitStatus st;
  std::string text;
  const auto logs = run_logged(h, o, st, [&text](const pfp::ItemLog& l) { text += pfp::format_item_log(l); });
  INFO(pfp::to_string(st) << "\n" << text);
  const pfp::ItemLog* crashed = final_of(logs, 1);
  const pfp::ItemLog* timed_out = final_of(logs, 2);
  REQUIRE(crashed);
  REQUIRE(timed_out);
  CHECK(crashed->status == pfp::Status::crashed);
  CHECK(crashed->messages == std::vector<std::string>{"item 1 starts"});
  CHECK_FALSE(crashed->worker.has_value());  // its worker died: known by its pid
  CHECK(timed_out->status == pfp::Status::timed_out);
  CHECK(timed_out->messages == std::vector<std::string>{"item 2 starts"});
  CHECK(count_occurrences(text, ": item 1 starts\n") == 1u);
  CHECK(count_occurrences(text, ": item 2 starts\n") == 1u);
  CHECK(child_pids().empty());
}

TEST_CASE("manager logging: every line of every item arrives once, in its item's order, on every backend",
          "[manager][log][live]") {
  for (pfp::Backend b : kBackends) {
    DYNAMIC_SECTION(name_of(b)) {
      Lines h;
      h.count = 40;
      h.handle = [](int n, pfp::ItemContext& ctx) {
        for (int k = 0; k < 25; ++k) ctx.log(std::to_string(n) + ":" + std::to_string(k));
      };
      pfp::ExitStatus st;
      const auto logs = run_logged(h, options(3, b), st);
      CHECK(st.ok());
      std::map<std::uint64_t, std::vector<std::string>> live;
      for (const pfp::ItemLog& l : logs) {
        if (!l.live) {
          CHECK(l.messages == live[l.seq]);  // every line came live, before the verdict
          CHECK(l.messages_shown == l.messages.size());
          continue;
        }
        REQUIRE(l.messages.size() == 1u);
        live[l.seq].push_back(l.messages[0]);
      }
      REQUIRE(live.size() == 40u);
      for (const auto& [seq, lines] : live) {
        REQUIRE(lines.size() == 25u);
        for (int k = 0; k < 25; ++k) CHECK(lines[static_cast<std::size_t>(k)] == std::to_string(seq) + ":" + std::to_string(k));
      }
    }
  }
}

TEST_CASE("manager logging: live_log = false gives the lines with the verdict only", "[manager][log][live]") {
  Lines h;
  h.count = 4;
  h.handle = [](int n, pfp::ItemContext& ctx) { ctx.log("line of " + std::to_string(n)); };
  pfp::ManagerOptions o = options(2);
  o.live_log = false;
  pfp::ExitStatus st;
  std::string text;
  const auto logs = run_logged(h, o, st, [&text](const pfp::ItemLog& l) { text += pfp::format_item_log(l); });
  REQUIRE(logs.size() == 4u);
  for (const pfp::ItemLog& l : logs) {
    CHECK_FALSE(l.live);
    CHECK(l.messages == std::vector<std::string>{"line of " + std::to_string(l.seq)});
    CHECK(l.messages_shown == 0u);
  }
  CHECK(count_occurrences(text, ": line of ") == 4u);
}

TEST_CASE("manager logging: a line over 60 KiB is cut saying how much", "[manager][log][live]") {
  Lines h;
  h.handle = [](int, pfp::ItemContext& ctx) { ctx.log(std::string(100 * 1024, 'x')); };
  pfp::ExitStatus st;
  const auto logs = run_logged(h, options(1), st);
  const pfp::ItemLog* last = final_of(logs, 0);
  REQUIRE(last);
  REQUIRE(last->messages.size() == 1u);
  CHECK(last->messages[0].size() < 62 * 1024u);
  CHECK_THAT(last->messages[0], Contains("more bytes cut"));
}
