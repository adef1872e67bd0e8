// The two-phase pattern: result processors registered with their functions run after the parallel
// gather, in the parent, single-threaded, in registration order, and fill a config Value; and the
// run's total wall time (MultiProcessor::last_run_duration).
#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <csignal>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace pfp_test;
using pfp::Result;
using pfp::Status;
using pfp::Value;

/// Sleeps args["sleep_ms"], then returns args["row"] with the time it finished.
Value timed_query(const Value&, const pfp::Args& args) {
  sleep_ms(args.at("sleep_ms").as<long>());
  Value row = args.at("row");
  row["finished_ns"] = mono_ns();
  return row;
}

/// Returns args unchanged (a query whose result set is its arguments).
Value echo(const Value&, const pfp::Args& args) { return args; }

/// The seed's processors: every column becomes a config key ...
void set_all_columns(const Result& r, Value& cfg) {
  for (const auto& [k, v] : r.result.items()) cfg[k] = v;
}
/// ... or custom parsing builds one key from the whole result.
void itemized_sales(const Result& r, Value& cfg) {
  cfg["sales"] = "Custom results parsing logic for cfg assignment: " + r.result.to_json();
}

}  // namespace

TEST_CASE("processors: run in registration order, in the parent, after functions that finished out of order",
          "[processors]") {
  constexpr int n = 4;
  pfp::MultiProcessor<> mp(Value{}, opts(n));
  std::vector<std::string> calls;  // name, as each processor is called
  std::vector<std::thread::id> threads;
  std::vector<int> pids;
  for (int i = 0; i < n; ++i) {
    const std::string name = "q" + std::to_string(i);
    // later registrations sleep less, so they finish first
    mp.register_function(name, timed_query, Value{{"sleep_ms", (n - i) * 120}, {"row", Value{{"q", i}}}},
                         [&, name](const Result& r, Value& cfg) {
                           calls.push_back(name);
                           threads.push_back(std::this_thread::get_id());
                           pids.push_back(static_cast<int>(getpid()));
                           cfg["order"].push_back(r.function_name);
                         });
  }
  const auto& results = mp.execute_parallel();
  REQUIRE(results.size() == n);
  for (int i = 0; i + 1 < n; ++i) {
    INFO(describe(results[i]) << " / " << describe(results[i + 1]));
    REQUIRE(results[i].ok());
    // the functions really did finish in reverse registration order
    CHECK(results[i].result.at("finished_ns").as<long long>() > results[i + 1].result.at("finished_ns").as<long long>());
  }
  CHECK(calls.empty());  // processors run only when asked

  Value cfg = Value::object();
  mp.process_results(cfg);
  CHECK(calls == std::vector<std::string>{"q0", "q1", "q2", "q3"});
  CHECK(cfg.at("order") == Value::array({"q0", "q1", "q2", "q3"}));
  for (std::size_t k = 0; k < threads.size(); ++k) {
    CHECK(threads[k] == std::this_thread::get_id());
    CHECK(pids[k] == getpid());
    CHECK(results[k].pid != getpid());  // while the functions ran in workers
  }

  // Again, with another config: the same Results, the same order.
  Value again;
  mp.process_results(again);
  CHECK(again == cfg);
  CHECK(calls.size() == 2 * n);
}

TEST_CASE("processors: a failed function's processor runs and sees the failure", "[processors]") {
  pfp::MultiProcessor<> mp(Value{}, opts(3));
  auto record = [](const Result& r, Value& cfg) {
    cfg[r.function_name] = Value{{"status", std::string(pfp::to_string(r.status))}, {"error", r.error},
                                 {"result", r.result}};
  };
  mp.register_function("fine", echo, Value{{"rows", 3}}, record);
  mp.register_function(
      "throws", [](const Value&, const pfp::Args&) -> Value { throw std::runtime_error("database is down"); }, Value{},
      record);
  mp.register_function(
      "crashes", [](const Value&, const pfp::Args&) -> Value { std::abort(); }, Value{}, record);
  mp.register_function("after", echo, Value{{"rows", 1}}, record);
  mp.execute_parallel();

  Value cfg;
  mp.process_results(cfg);
  REQUIRE(cfg.size() == 4);
  CHECK(cfg.at("fine").at("status") == Value("ok"));
  CHECK(cfg.at("fine").at("result") == Value{{"rows", 3}});
  CHECK(cfg.at("throws").at("status") == Value("exception"));
  CHECK_THAT(cfg.at("throws").at("error").as<std::string>(), Catch::Matchers::Contains("std::runtime_error"));
  CHECK_THAT(cfg.at("throws").at("error").as<std::string>(), Catch::Matchers::Contains("database is down"));
  CHECK(cfg.at("crashes").at("status") == Value("crashed"));
  CHECK_THAT(cfg.at("crashes").at("error").as<std::string>(), Catch::Matchers::Contains("SIGABRT"));
  CHECK(cfg.at("crashes").at("result").is_null());
  CHECK(cfg.at("after").at("status") == Value("ok"));
}

TEST_CASE("processors: the seed's config prints as the exact JSON text expected", "[processors]") {
  pfp::MultiProcessor<> mp(Value{}, opts(4));
  // The seed's sample run, made deterministic: each "query" returns one column.
  const char* rows[][2] = {{"h", "WQKss"}, {"n", "iuGQi"}, {"o", "niQyr"}, {"j", "orlPE"},
                           {"j", "FUBSe"}, {"R", "oXKag"}, {"t", "wlqGl"}};
  for (int i = 0; i < 7; ++i) {
    const Value row{{rows[i][0], rows[i][1]}};
    if (i < 6)
      mp.register_function("query" + std::to_string(i), echo, row, set_all_columns);
    else
      mp.register_function("query" + std::to_string(i), echo, row, itemized_sales);
  }
  mp.execute_parallel();
  Value cfg{{"x", 3}, {"y", "three"}, {"z", Value::array()}, {"a", "Aye!"}};
  mp.process_results(cfg);

  std::ostringstream out;
  out << cfg;
  // Keys sorted, 4 spaces, and the later "j" overwrote the earlier one (registration order).
  const std::string expected =
      "{\n"
      "    \"R\": \"oXKag\",\n"
      "    \"a\": \"Aye!\",\n"
      "    \"h\": \"WQKss\",\n"
      "    \"j\": \"FUBSe\",\n"
      "    \"n\": \"iuGQi\",\n"
      "    \"o\": \"niQyr\",\n"
      "    \"sales\": \"Custom results parsing logic for cfg assignment: {\\\"t\\\":\\\"wlqGl\\\"}\",\n"
      "    \"x\": 3,\n"
      "    \"y\": \"three\",\n"
      "    \"z\": []\n"
      "}";
  CHECK(out.str() == expected);
}

TEST_CASE("processors: one that throws does not stop the others; all failures are reported together",
          "[processors]") {
  pfp::MultiProcessor<> mp(Value{}, opts(2));
  mp.register_function("first", echo, Value{}, [](const Result&, Value& cfg) { cfg["first"] = 1; });
  mp.register_function("second", echo, Value{}, [](const Result&, Value& cfg) {
    cfg["second"] = "partly";
    throw std::runtime_error("bad row in second");
  });
  mp.register_function("no_processor", echo, Value{});
  mp.register_function("third", echo, Value{}, [](const Result&, Value& cfg) { cfg["third"] = 3; });
  mp.register_function("fourth", echo, Value{}, [](const Result&, Value&) { throw 7; });
  mp.execute_parallel();

  Value cfg;
  std::string message;
  try {
    mp.process_results(cfg);
  } catch (const pfp::error& e) {
    message = e.what();
  }
  INFO(message);
  CHECK_THAT(message, Catch::Matchers::Contains("2 of 4 result processors threw"));
  CHECK_THAT(message, Catch::Matchers::Contains("'second' (#1): std::runtime_error: bad row in second"));
  CHECK_THAT(message, Catch::Matchers::Contains("'fourth' (#4): int"));
  CHECK(message.find("first") == std::string::npos);
  CHECK(message.find("third") == std::string::npos);
  CHECK(cfg == Value{{"first", 1}, {"second", "partly"}, {"third", 3}});
}

TEST_CASE("processors: misuse is refused with a message that says what to do", "[processors]") {
  pfp::MultiProcessor<> mp(Value{}, opts(2));
  Value cfg;
  mp.register_function("a", echo, Value{}, set_all_columns);
  REQUIRE_THROWS_WITH(mp.process_results(cfg), Catch::Matchers::Contains("call execute_parallel() first"));
  mp.execute_parallel();
  REQUIRE_NOTHROW(mp.process_results(cfg));
  mp.register_function("b", echo, Value{}, set_all_columns);
  REQUIRE_THROWS_WITH(mp.process_results(cfg), Catch::Matchers::Contains("registered after the last run"));

  std::function<void(const Result&, Value&)> empty;
  REQUIRE_THROWS_WITH(mp.register_function("c", echo, Value{}, empty), Catch::Matchers::Contains("is empty"));
  void (*null_fn)(const Result&, Value&) = nullptr;
  REQUIRE_THROWS_AS(mp.register_function("d", echo, Value{}, null_fn), pfp::error);
  CHECK(mp.size() == 2);  // refused registrations add nothing
}

TEST_CASE("processors: the run's wall time covers its longest function", "[processors]") {
  pfp::MultiProcessor<> mp(Value{}, opts(3));
  CHECK(mp.last_run_duration() == std::chrono::nanoseconds(0));
  for (long ms_ : {100L, 400L, 250L}) mp.register_function("sleep", timed_query, Value{{"sleep_ms", ms_}, {"row", Value::object()}});
  const auto start = Clock::now();
  const auto& results = mp.execute_parallel();
  const auto outside = Clock::now() - start;
  for (const Result& r : results) REQUIRE(r.ok());
  CHECK(mp.last_run_duration() >= std::chrono::milliseconds(400));
  CHECK(mp.last_run_duration() <= outside);
  CHECK(mp.last_run_duration() < std::chrono::milliseconds(400 + 10000));
  CHECK(mp.last_run_duration() >= results[1].duration);

  // One worker: the functions run one after another.
  pfp::MultiProcessor<> serial(Value{}, opts(1));
  for (long ms_ : {100L, 200L}) serial.register_function("sleep", timed_query, Value{{"sleep_ms", ms_}, {"row", Value::object()}});
  serial.execute_parallel();
  CHECK(serial.last_run_duration() >= std::chrono::milliseconds(300));
}
