// MultiProcessor behaviour with well-behaved functions: the pypfp example, every supported
// function form, typed args/results/contexts, ordering, parallelism, worker reuse and recycling,
// isolation of the parent, and large results.
#include "pfp_catch.hpp"

#include <pthread.h>
#include <sys/mman.h>

#include <pfp/pfp.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using pfp::Args;
using pfp::MultiProcessor;
using pfp::Options;
using pfp::Result;
using pfp::Status;
using pfp::Value;
using namespace pfp_test;

namespace {


// ----- the pypfp example -----------------------------------------------------------------

Value counters_context() {
  return Value{{"counter1", std::vector<int>{0, 9, 8, 7, 6, 5}}, {"counter2", std::vector<int>{2, 4, 6, 8}}};
}

// void form: fills r.result
void count_and_compute(const Value& context, const Args& args, Result& r) {
  const auto key = args.at("key").as<std::string>();
  const auto op = args.at("op").as<std::string>();
  const auto numbers = context.at(key).as<std::vector<long long>>();
  long long answer = op == "ADD" ? 0 : 1;
  for (long long n : numbers) answer = op == "ADD" ? answer + n : answer * n;
  r.result["Count"] = static_cast<long long>(numbers.size());
  r.result["Answer"] = answer;
  // name and index are already set when the function runs
  r.result["SeenName"] = r.function_name;
  r.result["SeenIndex"] = static_cast<long long>(r.index);
}

// returning form
Value count_and_compute_ret(const Value& context, const Args& args) {
  Result r;
  count_and_compute(context, args, r);
  return r.result;
}

}  // namespace

TEST_CASE("pypfp counters example, void form", "[multiprocessor]") {
  MultiProcessor<> mp(counters_context(), opts(2));
  mp.register_function("count_and_add", count_and_compute, Args{{"key", "counter1"}, {"op", "ADD"}});
  mp.register_function("count_and_multiply", count_and_compute, Args{{"key", "counter2"}, {"op", "MULTIPLY"}});
  REQUIRE(mp.size() == 2);

  const auto& results = mp.execute_parallel();
  REQUIRE(results.size() == 2);
  INFO(describe(results[0]) << "\n" << describe(results[1]));

  CHECK(results[0].ok());
  CHECK(results[0].status == Status::ok);
  CHECK(results[0].error.empty());
  CHECK(results[0].function_name == "count_and_add");
  CHECK(results[0].index == 0);
  CHECK(results[0].result.at("Count").as<int>() == 6);
  CHECK(results[0].result.at("Answer").as<int>() == 35);
  CHECK(results[0].result.at("SeenName").as<std::string>() == "count_and_add");
  CHECK(results[0].result.at("SeenIndex").as<int>() == 0);

  CHECK(results[1].ok());
  CHECK(results[1].function_name == "count_and_multiply");
  CHECK(results[1].index == 1);
  CHECK(results[1].result.at("Count").as<int>() == 4);
  CHECK(results[1].result.at("Answer").as<int>() == 384);
  CHECK(results[1].result.at("SeenName").as<std::string>() == "count_and_multiply");
  CHECK(results[1].result.at("SeenIndex").as<int>() == 1);

  for (const auto& r : results) {
    CHECK(r.pid != 0);
    CHECK(r.pid != getpid());
  }
}

TEST_CASE("pypfp counters example, returning form and lambdas", "[multiprocessor]") {
  MultiProcessor<> mp(counters_context());  // default options: workers = hardware concurrency
  mp.register_function("ret_add", count_and_compute_ret, Args{{"key", "counter1"}, {"op", "ADD"}});
  mp.register_function(
      "lambda_multiply", [](const Value& c, const Args& a) { return count_and_compute_ret(c, a); },
      Args{{"key", "counter2"}, {"op", "MULTIPLY"}});
  mp.register_function(
      "lambda_void", [](const Value& c, const Args& a, Result& r) { count_and_compute(c, a, r); },
      Args{{"key", "counter2"}, {"op", "ADD"}});
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 3);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
  }
  CHECK(rs[0].result.at("Count").as<int>() == 6);
  CHECK(rs[0].result.at("Answer").as<int>() == 35);
  CHECK(rs[1].result.at("Count").as<int>() == 4);
  CHECK(rs[1].result.at("Answer").as<int>() == 384);
  CHECK(rs[2].result.at("Count").as<int>() == 4);
  CHECK(rs[2].result.at("Answer").as<int>() == 20);
  // the returning form does not see a Result, so SeenName comes from the local Result: empty
  CHECK(rs[0].result.at("SeenName").as<std::string>().empty());
  CHECK(rs[2].result.at("SeenName").as<std::string>() == "lambda_void");
  CHECK(rs[2].result.at("SeenIndex").as<int>() == 2);
}

// ----- function forms ----------------------------------------------------------------------

namespace {

int twice_ptr(const Value&, const Args& a) { return 2 * a.at("x").as<int>(); }
void thrice_ptr(const Value&, const Args& a, Result& r) { r.result = 3 * a.at("x").as<int>(); }

struct Multiplier {  // function object with state, returning form
  int factor;
  std::string label;
  Value operator()(const Value&, const Args& a) const {
    return Value{{"product", factor * a.at("x").as<int>()}, {"label", label}};
  }
};

struct Accumulator {  // function object with state, void form
  std::vector<int> base;
  void operator()(const Value& ctx, const Args& a, Result& r) const {
    long long sum = ctx.at("offset").as<long long>() + a.at("x").as<long long>();
    for (int b : base) sum += b;
    r.result["sum"] = sum;
  }
};

}  // namespace

TEST_CASE("function pointers, lambdas with captures and stateful function objects", "[multiprocessor]") {
  int captured = 1000;  // not const, so the lambda really captures it
  const std::string tag = "captured-string";
  MultiProcessor<> mp(Value{{"offset", 7}}, opts(2));
  mp.register_function("ptr_ret", twice_ptr, Args{{"x", 21}});
  mp.register_function("ptr_void", &thrice_ptr, Args{{"x", 5}});
  mp.register_function("functor_ret", Multiplier{10, "ten"}, Args{{"x", 4}});
  mp.register_function("functor_void", Accumulator{{1, 2, 3}}, Args{{"x", 100}});
  mp.register_function("lambda_capture", [captured, tag](const Value& ctx, const Args& a) {
    return Value{{"v", captured + a.at("x").as<int>() + ctx.at("offset").as<int>()}, {"tag", tag}};
  }, Args{{"x", 1}});
  mp.register_function("lambda_no_args", [](const Value&, const Args& a) { return a.is_null() || a.size() == 0; });

  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 6);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
  }
  CHECK(rs[0].result.as<int>() == 42);
  CHECK(rs[1].result.as<int>() == 15);
  CHECK(rs[2].result.at("product").as<int>() == 40);
  CHECK(rs[2].result.at("label").as<std::string>() == "ten");
  CHECK(rs[3].result.at("sum").as<int>() == 113);
  CHECK(rs[4].result.at("v").as<int>() == 1008);
  CHECK(rs[4].result.at("tag").as<std::string>() == "captured-string");
  CHECK(rs[5].result.as<bool>() == true);
}

// ----- typed results -----------------------------------------------------------------------

namespace shop {
struct Sale {
  std::string item;
  int qty = 0;
  std::vector<double> prices;
};
void to_value(pfp::Value& v, const Sale& s) {
  v = pfp::Value{{"item", s.item}, {"qty", s.qty}, {"prices", s.prices}};
}
void from_value(const pfp::Value& v, Sale& s) {
  s.item = v.at("item").as<std::string>();
  s.qty = v.at("qty").as<int>();
  s.prices = v.at("prices").as<std::vector<double>>();
}
}  // namespace shop

TEST_CASE("typed results convert to Value", "[multiprocessor]") {
  MultiProcessor<> mp(Value{}, opts(2));
  mp.register_function("int", [](const Value&, const Args&) { return -123456; });
  mp.register_function("double", [](const Value&, const Args&) { return 2.5e-3; });
  mp.register_function("bool_true", [](const Value&, const Args&) { return true; });
  mp.register_function("bool_false", [](const Value&, const Args&) { return false; });
  mp.register_function("string", [](const Value&, const Args&) { return std::string("h\xc3\xa9llo\n\"w\"\0x", 12); });
  mp.register_function("vector", [](const Value&, const Args&) { return std::vector<int>{3, 1, 4, 1, 5, 9, 2, 6}; });
  mp.register_function("map", [](const Value&, const Args&) {
    return std::map<std::string, double>{{"pi", 3.14159}, {"e", 2.71828}, {"neg", -0.5}};
  });
  mp.register_function("user", [](const Value&, const Args&) { return shop::Sale{"widget", 3, {1.5, 2.25}}; });
  mp.register_function("null_value", [](const Value&, const Args&) { return Value{}; });
  mp.register_function("void_untouched", [](const Value&, const Args&, Result&) {});
  mp.register_function("long_long", [](const Value&, const Args&) { return 9007199254740993LL; });
  mp.register_function("bytes", [](const Value&, const Args&) { return Value::bytes(std::string("\x00\xff\x01", 3)); });

  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 12);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
  }
  CHECK(rs[0].result.is_integer());
  CHECK(rs[0].result.as<int>() == -123456);
  CHECK(rs[1].result.is_floating());
  CHECK(rs[1].result.as<double>() == 2.5e-3);
  CHECK(rs[2].result.is_bool());
  CHECK(rs[2].result.as<bool>() == true);
  CHECK(rs[3].result.as<bool>() == false);
  CHECK(rs[4].result.is_string());
  CHECK(rs[4].result.as<std::string>() == std::string("h\xc3\xa9llo\n\"w\"\0x", 12));
  CHECK(rs[5].result.is_array());
  CHECK(rs[5].result.as<std::vector<int>>() == std::vector<int>{3, 1, 4, 1, 5, 9, 2, 6});
  CHECK(rs[6].result.is_object());
  CHECK(rs[6].result.as<std::map<std::string, double>>() ==
        std::map<std::string, double>{{"pi", 3.14159}, {"e", 2.71828}, {"neg", -0.5}});
  const auto sale = rs[7].result.as<shop::Sale>();
  CHECK(sale.item == "widget");
  CHECK(sale.qty == 3);
  CHECK(sale.prices == std::vector<double>{1.5, 2.25});
  CHECK(rs[7].result.at("item").as<std::string>() == "widget");
  CHECK(rs[8].result.is_null());
  CHECK(rs[9].result.is_null());
  CHECK(rs[10].result.as<long long>() == 9007199254740993LL);
  CHECK(rs[11].result.is_bytes());
  CHECK(rs[11].result.as<std::string>() == std::string("\x00\xff\x01", 3));
}

// ----- typed args and contexts -------------------------------------------------------------

namespace {

struct Plain {  // no to_value/from_value: args only need to be copyable
  int a = 0;
  std::string s;
  std::vector<double> v;
};

struct AppContext {  // a typed context, not a Value
  std::string name;
  std::vector<int> data;
  std::map<std::string, int> table;
  int scale = 1;
};

}  // namespace

TEST_CASE("typed args: std::vector<int>, a plain struct, std::string", "[multiprocessor]") {
  MultiProcessor<> mp(Value{{"base", 100}}, opts(2));
  mp.register_function(
      "sum_vector",
      [](const Value& ctx, const std::vector<int>& xs) {
        long long s = ctx.at("base").as<long long>();
        for (int x : xs) s += x;
        return s;
      },
      std::vector<int>{1, 2, 3, 4});
  mp.register_function(
      "plain_struct",
      [](const Value&, const Plain& p) {
        return Value{{"a", p.a}, {"s", p.s}, {"n", static_cast<long long>(p.v.size())}};
      },
      Plain{7, "seven", {1.0, 2.0, 3.0}});
  mp.register_function(
      "string_arg", [](const Value&, const std::string& s) { return s + s; }, std::string("ab"));
  mp.register_function(
      "void_form_typed_arg",
      [](const Value&, const std::vector<int>& xs, Result& r) { r.result["n"] = static_cast<long long>(xs.size()); },
      std::vector<int>(1000, 1));

  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 4);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
  }
  CHECK(rs[0].result.as<int>() == 110);
  CHECK(rs[1].result.at("a").as<int>() == 7);
  CHECK(rs[1].result.at("s").as<std::string>() == "seven");
  CHECK(rs[1].result.at("n").as<int>() == 3);
  CHECK(rs[2].result.as<std::string>() == "abab");
  CHECK(rs[3].result.at("n").as<int>() == 1000);
}

TEST_CASE("a typed context struct", "[multiprocessor]") {
  AppContext ctx{"app", {1, 2, 3, 4, 5}, {{"x", 10}, {"y", 20}}, 3};
  MultiProcessor<AppContext> mp(ctx, opts(2));
  mp.register_function("name", [](const AppContext& c, const Args&) { return c.name; });
  mp.register_function("scaled_sum", [](const AppContext& c, const Args& a) {
    long long s = 0;
    for (int d : c.data) s += d;
    return s * c.scale + a.at("plus").as<int>();
  }, Args{{"plus", 1}});
  mp.register_function("lookup", [](const AppContext& c, const std::string& key, Result& r) {
    r.result["value"] = c.table.at(key);
  }, std::string("y"));
  mp.register_function("typed_both", [](const AppContext& c, const Plain& p) { return c.scale * p.a; }, Plain{5, "", {}});

  REQUIRE(mp.context().name == "app");
  REQUIRE(mp.context().data == std::vector<int>{1, 2, 3, 4, 5});
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 4);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
  }
  CHECK(rs[0].result.as<std::string>() == "app");
  CHECK(rs[1].result.as<int>() == 46);
  CHECK(rs[2].result.at("value").as<int>() == 20);
  CHECK(rs[3].result.as<int>() == 15);
}

// ----- ordering, names, pids, duration -------------------------------------------------------

TEST_CASE("results come back in registration order with indices and names", "[multiprocessor]") {
  const int n = 9;
  // Completion order is made the reverse of registration order by the functions themselves, not
  // by sleeps a loaded machine may not honour: each waits (in a word shared by all workers) until
  // the one registered after it has finished. One worker each, so all of them run together.
  auto* finished = static_cast<std::atomic<int>*>(
      mmap(nullptr, sizeof(std::atomic<int>) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(finished != MAP_FAILED);
  for (int i = 0; i < n; ++i) new (&finished[i]) std::atomic<int>(0);
  MultiProcessor<> mp(Value{}, opts(n));
  for (int i = 0; i < n; ++i) {
    mp.register_function("fn_" + std::to_string(i), [finished](const Value&, const Args& a) {
      const int me = a.at("i").as<int>();
      // bounded: if pfp ever queued two of these in one worker, the test fails instead of hanging
      const auto deadline = Clock::now() + std::chrono::seconds(30);
      while (me + 1 < n && finished[me + 1].load() == 0 && Clock::now() < deadline) sleep_ms(1);
      const long long done = mono_ns();
      finished[me].store(1);
      return Value{{"i", me}, {"done", done}};
    }, Args{{"i", i}});
  }
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    INFO(describe(rs[i]));
    REQUIRE(rs[i].ok());
    CHECK(rs[i].index == static_cast<std::size_t>(i));
    CHECK(rs[i].function_name == "fn_" + std::to_string(i));
    CHECK(rs[i].result.at("i").as<int>() == i);
    CHECK(rs[i].pid > 0);
    CHECK(rs[i].pid != getpid());
    // each finished after the one registered after it: completion order was the reverse
    if (i + 1 < n) CHECK(rs[i].result.at("done").as<long long>() > rs[i + 1].result.at("done").as<long long>());
  }
  munmap(finished, sizeof(std::atomic<int>) * n);
  REQUIRE(mp.results().size() == static_cast<std::size_t>(n));
  CHECK(mp.results()[4].function_name == "fn_4");
}

TEST_CASE("duration is measured in the worker", "[multiprocessor]") {
  MultiProcessor<> mp(Value{}, opts(2));
  mp.register_function("sleep50", [](const Value&, const Args&) { sleep_ms(50); return 1; });
  mp.register_function("instant", [](const Value&, const Args&) { return 2; });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 2);
  REQUIRE(rs[0].ok());
  REQUIRE(rs[1].ok());
  const auto d0 = std::chrono::duration_cast<std::chrono::milliseconds>(rs[0].duration).count();
  const auto d1 = std::chrono::duration_cast<std::chrono::milliseconds>(rs[1].duration).count();
  CAPTURE(d0, d1);
  CHECK(d0 >= 40);
  CHECK(d0 < 5000);
  CHECK(rs[1].duration.count() >= 0);
  CHECK(d1 < 40);
}

TEST_CASE("functions really run in parallel", "[multiprocessor]") {
  MultiProcessor<> mp(Value{}, opts(4));
  for (int i = 0; i < 4; ++i)
    mp.register_function("sleeper" + std::to_string(i), [](const Value&, const Args&) {
      const auto start = mono_ns();
      sleep_ms(300);
      return Value{{"start", start}, {"end", mono_ns()}};
    });
  const auto t0 = Clock::now();
  const auto& rs = mp.execute_parallel();
  const auto wall = elapsed_ms(t0);
  CAPTURE(wall);
  REQUIRE(rs.size() == 4);
  std::set<int> pids;
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
    CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(r.duration).count() >= 250);
    pids.insert(r.pid);
  }
  CHECK(wall < 900);
  CHECK(pids.size() == 4);
  // every pair of runs overlapped in time
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j) {
      const auto si = rs[i].result.at("start").as<long long>(), ei = rs[i].result.at("end").as<long long>();
      const auto sj = rs[j].result.at("start").as<long long>(), ej = rs[j].result.at("end").as<long long>();
      CHECK((si < ej && sj < ei));
    }
}

TEST_CASE("Options::workers = 1 runs the functions one after another", "[multiprocessor]") {
  MultiProcessor<> mp(Value{}, opts(1));
  for (int i = 0; i < 4; ++i)
    mp.register_function("seq" + std::to_string(i), [](const Value&, const Args&) {
      const auto start = mono_ns();
      sleep_ms(40);
      return Value{{"start", start}, {"end", mono_ns()}};
    });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 4);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
    CHECK(r.pid == rs[0].pid);  // one worker, reused
  }
  // the intervals do not overlap: each starts after the previous (in run order) ended
  std::vector<std::pair<long long, long long>> iv;
  for (const auto& r : rs) iv.emplace_back(r.result.at("start").as<long long>(), r.result.at("end").as<long long>());
  std::sort(iv.begin(), iv.end());
  for (std::size_t i = 1; i < iv.size(); ++i) CHECK(iv[i].first >= iv[i - 1].second);
}

// ----- repeated runs, duplicates, empty ----------------------------------------------------

TEST_CASE("execute_parallel twice runs everything anew", "[multiprocessor]") {
  const std::string log = temp_path("rerun");
  MultiProcessor<> mp(Value{{"log", log}}, opts(2));
  for (int i = 0; i < 3; ++i)
    mp.register_function("stamp" + std::to_string(i), [](const Value& ctx, const Args& a) {
      append_line(ctx.at("log").as<std::string>(), std::to_string(a.at("i").as<int>()));
      return Value{{"i", a.at("i")}, {"t", mono_ns()}, {"pid", static_cast<long long>(getpid())}};
    }, Args{{"i", i}});

  const std::vector<Result> first = mp.execute_parallel();  // a copy
  REQUIRE(first.size() == 3);
  const auto& second = mp.execute_parallel();
  REQUIRE(second.size() == 3);
  for (int i = 0; i < 3; ++i) {
    INFO(describe(first[i]) << " / " << describe(second[i]));
    REQUIRE(first[i].ok());
    REQUIRE(second[i].ok());
    CHECK(second[i].index == static_cast<std::size_t>(i));
    CHECK(second[i].result.at("i").as<int>() == i);
    CHECK(second[i].result.at("t").as<long long>() > first[i].result.at("t").as<long long>());
    CHECK(second[i].result.at("pid").as<long long>() == second[i].pid);
  }
  CHECK(mp.results().size() == 3);
  CHECK(mp.results()[0].result.at("t").as<long long>() == second[0].result.at("t").as<long long>());
  const std::string text = read_file(log);
  CHECK(count_occurrences(text, "\n") == 6);
  for (int i = 0; i < 3; ++i) CHECK(count_occurrences(text, std::to_string(i) + "\n") == 2);
  std::remove(log.c_str());
}

TEST_CASE("the same function registered several times with different args", "[multiprocessor]") {
  MultiProcessor<> mp(counters_context(), opts(2));
  mp.register_function("counter", count_and_compute, Args{{"key", "counter1"}, {"op", "ADD"}});
  mp.register_function("counter", count_and_compute, Args{{"key", "counter2"}, {"op", "MULTIPLY"}});
  mp.register_function("counter", count_and_compute, Args{{"key", "counter1"}, {"op", "MULTIPLY"}});
  mp.register_function("counter_b", count_and_compute, Args{{"key", "counter2"}, {"op", "ADD"}});
  REQUIRE(mp.size() == 4);
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 4);
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
  }
  CHECK(rs[0].result.at("Answer").as<int>() == 35);
  CHECK(rs[1].result.at("Answer").as<int>() == 384);
  CHECK(rs[2].result.at("Answer").as<int>() == 0);
  CHECK(rs[3].result.at("Answer").as<int>() == 20);
  CHECK(rs[2].index == 2);
  CHECK(rs[2].function_name == "counter");
  CHECK(rs[2].result.at("SeenIndex").as<int>() == 2);
}

namespace {
std::atomic<int> g_forks{0};
void count_fork() { ++g_forks; }
}  // namespace

TEST_CASE("zero functions: empty results and no process started", "[multiprocessor]") {
  static const bool registered = [] { return pthread_atfork(count_fork, nullptr, nullptr) == 0; }();
  REQUIRE(registered);
  MultiProcessor<> mp(Value{{"x", 1}}, opts(4));
  CHECK(mp.size() == 0);
  const int forks_before = g_forks.load();
  const auto kids_before = child_pids();
  const auto t0 = Clock::now();
  const auto& rs = mp.execute_parallel();
  CHECK(rs.empty());
  CHECK(mp.results().empty());
  CHECK(g_forks.load() == forks_before);
  CHECK(child_pids() == kids_before);
  CHECK(elapsed_ms(t0) < 500);
  // and again with default options
  MultiProcessor<> dflt;
  CHECK(dflt.execute_parallel().empty());
  CHECK(g_forks.load() == forks_before);
}

TEST_CASE("size(), context() and results()", "[multiprocessor]") {
  const Value ctx = counters_context();
  MultiProcessor<> mp(ctx, opts(2));
  CHECK(mp.size() == 0);
  CHECK(mp.context() == ctx);
  // before a run, results() holds nothing that looks like a run
  for (const auto& r : mp.results()) {
    CHECK(r.pid == 0);
    CHECK(r.status == Status::cancelled);
  }
  auto& chained = mp.register_function("a", count_and_compute, Args{{"key", "counter1"}, {"op", "ADD"}});
  CHECK(&chained == &mp);
  chained.register_function("b", count_and_compute, Args{{"key", "counter2"}, {"op", "ADD"}})
      .register_function("c", [](const Value&, const Args&) { return 1; });
  CHECK(mp.size() == 3);
  const auto& rs = mp.execute_parallel();
  CHECK(rs.size() == 3);
  CHECK(mp.results().size() == 3);
  CHECK(mp.results()[1].function_name == "b");
  CHECK(mp.results()[1].result.at("Answer").as<int>() == 20);
  CHECK(mp.context() == ctx);
  CHECK(mp.size() == 3);
}

// ----- isolation of the parent ---------------------------------------------------------------

namespace {
int g_global = 17;
std::vector<int> g_vector{1, 2, 3};
}  // namespace

TEST_CASE("changes a function makes to context, args or globals never reach the parent", "[multiprocessor]") {
  const Value ctx{{"counter1", std::vector<int>{1, 2}}, {"name", "original"}};
  MultiProcessor<> mp(ctx, opts(1));
  mp.register_function("mutator", [](const Value& c, const Args& a) {
    Value seen{{"ctx", c}, {"args", a}, {"global", g_global}};
    // a copy
    Value copy = c;
    copy["name"] = "copy-changed";
    // const_cast the real ones
    auto& mc = const_cast<Value&>(c);
    mc["name"] = "const-cast-changed";
    mc["added"] = 1;
    auto& ma = const_cast<Args&>(a);
    ma["k"] = "changed";
    g_global = 99;
    g_vector.push_back(4);
    return seen;
  }, Args{{"k", "v"}});
  for (int run = 0; run < 2; ++run) {
    INFO("run " << run);
    const auto& rs = mp.execute_parallel();
    REQUIRE(rs.size() == 1);
    INFO(describe(rs[0]));
    REQUIRE(rs[0].ok());
    // each run sees the context and args as they were at the call
    CHECK(rs[0].result.at("ctx") == ctx);
    CHECK(rs[0].result.at("args") == Value{{"k", "v"}});
    CHECK(rs[0].result.at("global").as<int>() == 17);
    CHECK(mp.context() == ctx);
    CHECK(g_global == 17);
    CHECK(g_vector == std::vector<int>{1, 2, 3});
  }
}

TEST_CASE("a typed context const_cast in the worker is unchanged in the parent", "[multiprocessor]") {
  MultiProcessor<AppContext> mp(AppContext{"n", {1}, {}, 2}, opts(2));
  mp.register_function("mutate", [](const AppContext& c, const Args&) {
    auto& m = const_cast<AppContext&>(c);
    m.name = "mutated";
    m.data.assign(100, 9);
    return m.name;
  });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 1);
  REQUIRE(rs[0].ok());
  CHECK(rs[0].result.as<std::string>() == "mutated");
  CHECK(mp.context().name == "n");
  CHECK(mp.context().data == std::vector<int>{1});
}

// ----- many functions, worker reuse and recycling -------------------------------------------

TEST_CASE("5000 trivial functions on 2 workers", "[multiprocessor]") {
  MultiProcessor<> mp(Value{{"add", 3}}, opts(2));
  const int n = 5000;
  for (int i = 0; i < n; ++i)
    mp.register_function("t" + std::to_string(i),
                         [](const Value& c, const Args& a) { return a.at("i").as<long long>() * 2 + c.at("add").as<long long>(); },
                         Args{{"i", i}});
  const auto t0 = Clock::now();
  const auto& rs = mp.execute_parallel();
  const auto wall = elapsed_ms(t0);
  WARN("5000 trivial functions on 2 workers: wall time " << wall << " ms");
  std::cout << "[pfp-timing] 5000 trivial functions on 2 workers: " << wall << " ms" << std::endl;
  REQUIRE(rs.size() == static_cast<std::size_t>(n));
  std::set<int> pids;
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const auto& r = rs[i];
    const bool good = r.ok() && r.index == static_cast<std::size_t>(i) && r.function_name == "t" + std::to_string(i) &&
                      r.result.is_integer() && r.result.as<long long>() == 2LL * i + 3 && r.pid > 0;
    if (!good && bad++ < 5) FAIL_CHECK("bad result: " << describe(r));
    pids.insert(r.pid);
  }
  CHECK(bad == 0);
  CAPTURE(pids.size());
  CHECK(pids.size() <= 2);
  CHECK(pids.count(getpid()) == 0);
  CHECK(wall < 60000);
}

TEST_CASE("max_tasks_per_worker = 1 gives a fresh process per function", "[multiprocessor]") {
  MultiProcessor<> mp(Value{}, opts(2, 1));
  for (int i = 0; i < 8; ++i)
    mp.register_function("fresh" + std::to_string(i), [](const Value&, const Args&) { return static_cast<long long>(getpid()); });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 8);
  std::set<int> pids;
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
    CHECK(r.result.as<long long>() == r.pid);
    pids.insert(r.pid);
  }
  CHECK(pids.size() == 8);
}

TEST_CASE("max_tasks_per_worker = 3 with 9 functions and 1 worker uses exactly 3 processes", "[multiprocessor]") {
  MultiProcessor<> mp(Value{}, opts(1, 3));
  for (int i = 0; i < 9; ++i)
    mp.register_function("batch" + std::to_string(i), [](const Value&, const Args&) { return static_cast<long long>(getpid()); });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 9);
  std::map<int, int> uses;
  for (const auto& r : rs) {
    INFO(describe(r));
    REQUIRE(r.ok());
    CHECK(r.result.as<long long>() == r.pid);
    ++uses[r.pid];
  }
  CHECK(uses.size() == 3);
  for (const auto& [pid, count] : uses) {
    CAPTURE(pid);
    CHECK(count == 3);
  }
  // one worker at a time, in order: functions 0-2, 3-5, 6-8 share a process
  CHECK(rs[0].pid == rs[2].pid);
  CHECK(rs[3].pid == rs[5].pid);
  CHECK(rs[6].pid == rs[8].pid);
}

TEST_CASE("workers are reused across functions by default", "[multiprocessor]") {
  MultiProcessor<> mp(Value{}, opts(1));
  for (int i = 0; i < 20; ++i)
    mp.register_function("reuse" + std::to_string(i), [](const Value&, const Args&) { return 0; });
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 20);
  std::set<int> pids;
  for (const auto& r : rs) {
    REQUIRE(r.ok());
    pids.insert(r.pid);
  }
  CHECK(pids.size() == 1);
}

// ----- large results ---------------------------------------------------------------------------

TEST_CASE("a 256 MiB result arrives intact", "[multiprocessor]") {
  constexpr std::size_t size = 256u << 20;
  MultiProcessor<> mp(Value{}, opts(2));
  mp.register_function("small_before", [](const Value&, const Args&) { return 1; });
  mp.register_function("huge_string", [](const Value&, const Args&) { return big_pattern(size, 777); });
  mp.register_function("small_after", [](const Value&, const Args&) { return 2; });
  const auto t0 = Clock::now();
  const auto& rs = mp.execute_parallel();
  WARN("256 MiB result: execute_parallel took " << elapsed_ms(t0) << " ms");
  REQUIRE(rs.size() == 3);
  INFO((rs[1].ok() ? std::string("ok") : describe(rs[1])));
  REQUIRE(rs[1].ok());
  CHECK(rs[0].ok());
  CHECK(rs[2].ok());
  CHECK(rs[0].result.as<int>() == 1);
  CHECK(rs[2].result.as<int>() == 2);
  REQUIRE(rs[1].result.is_string());
  const std::string& got = rs[1].result.str();
  REQUIRE(got.size() == size);
  const std::string expected = big_pattern(size, 777);
  CHECK(got.compare(0, 4096, expected, 0, 4096) == 0);
  CHECK(got.compare(size - 4096, 4096, expected, size - 4096, 4096) == 0);
  CHECK(got == expected);  // every byte
}

TEST_CASE("a 64 MiB bytes result and many medium results arrive intact", "[multiprocessor]") {
  constexpr std::size_t size = 64u << 20;
  MultiProcessor<> mp(Value{}, opts(2));
  mp.register_function("huge_bytes", [](const Value&, const Args&) { return Value::bytes(big_pattern(size, 4242)); });
  for (int i = 0; i < 16; ++i)
    mp.register_function("medium" + std::to_string(i), [](const Value&, const Args& a) {
      const int i = a.at("i").as<int>();
      Value v = Value::object();
      v["blob"] = Value::bytes(pattern_bytes(100000 + i * 7919, static_cast<std::uint32_t>(i + 1)));
      v["list"] = std::vector<int>(1000, i);
      return v;
    }, Args{{"i", i}});
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 17);
  for (const auto& r : rs) {
    INFO((r.ok() ? r.function_name : describe(r)));
    REQUIRE(r.ok());
  }
  REQUIRE(rs[0].result.is_bytes());
  CHECK(rs[0].result.str().size() == size);
  CHECK(rs[0].result.str() == big_pattern(size, 4242));
  for (int i = 0; i < 16; ++i) {
    const auto& r = rs[1 + i];
    CHECK(r.result.at("blob").str() == pattern_bytes(100000 + i * 7919, static_cast<std::uint32_t>(i + 1)));
    CHECK(r.result.at("list").as<std::vector<int>>() == std::vector<int>(1000, i));
  }
}

TEST_CASE("large context and args reach the workers intact", "[multiprocessor]") {
  Value ctx = Value::object();
  ctx["blob"] = Value::bytes(pattern_bytes(8u << 20, 99));
  MultiProcessor<> mp(ctx, opts(2, 1));
  for (int i = 0; i < 4; ++i)
    mp.register_function("hash" + std::to_string(i), [](const Value& c, const std::string& arg) {
      return Value{{"ctx", std::to_string(fnv1a(c.at("blob").str()))}, {"arg", std::to_string(fnv1a(arg))}};
    }, pattern_bytes((1u << 20) + static_cast<std::size_t>(i), static_cast<std::uint32_t>(i + 5)));
  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 4);
  const auto ctx_hash = std::to_string(fnv1a(pattern_bytes(8u << 20, 99)));
  for (int i = 0; i < 4; ++i) {
    INFO(describe(rs[i]));
    REQUIRE(rs[i].ok());
    CHECK(rs[i].result.at("ctx").as<std::string>() == ctx_hash);
    CHECK(rs[i].result.at("arg").as<std::string>() ==
          std::to_string(fnv1a(pattern_bytes((1u << 20) + static_cast<std::size_t>(i), static_cast<std::uint32_t>(i + 5)))));
  }
}

// ----- less common but legitimate uses -----------------------------------------------------------

TEST_CASE("mutable lambdas and function objects with a non-const call operator", "[multiprocessor]") {
  struct Counter {
    int calls = 0;
    int operator()(const Value&, const Args&) { return ++calls; }  // not const
  };
  MultiProcessor<> mp(Value{}, opts(1));
  mp.register_function("counter", Counter{});
  mp.register_function("mutable_lambda", [n = 10](const Value&, const Args&) mutable { n += 5; return n; });
  for (int run = 0; run < 2; ++run) {
    const auto& rs = mp.execute_parallel();
    REQUIRE(rs.size() == 2);
    REQUIRE(rs[0].ok());
    REQUIRE(rs[1].ok());
    // state changes happen in the worker, so every run starts from the registered state
    CHECK(rs[0].result.as<int>() == 1);
    CHECK(rs[1].result.as<int>() == 15);
  }
}

TEST_CASE("a function may run its own MultiProcessor", "[multiprocessor]") {
  MultiProcessor<> outer(Value{}, opts(2));
  for (int i = 0; i < 3; ++i)
    outer.register_function("outer" + std::to_string(i), [](const Value&, const Args& a) {
      const int base = a.at("i").as<int>() * 100;
      MultiProcessor<> inner(Value{{"base", base}}, opts(2));
      for (int k = 0; k < 4; ++k)
        inner.register_function("inner" + std::to_string(k),
                                [](const Value& c, const Args& b) { return c.at("base").as<int>() + b.at("k").as<int>(); },
                                Args{{"k", k}});
      inner.register_function("inner_crash", [](const Value&, const Args&) -> Value { std::abort(); });
      long long sum = 0;
      std::string statuses;
      for (const auto& r : inner.execute_parallel()) {
        if (r.ok()) sum += r.result.as<long long>();
        statuses += std::string(pfp::to_string(r.status)) + ",";
      }
      return Value{{"sum", sum}, {"statuses", statuses}};
    }, Args{{"i", i}});
  const auto& rs = outer.execute_parallel();
  REQUIRE(rs.size() == 3);
  for (int i = 0; i < 3; ++i) {
    INFO(describe(rs[i]));
    REQUIRE(rs[i].ok());
    CHECK(rs[i].result.at("sum").as<int>() == 4 * i * 100 + 6);
    CHECK(rs[i].result.at("statuses").as<std::string>() == "ok,ok,ok,ok,crashed,");
  }
  CHECK(child_pids().empty());
}

TEST_CASE("a void-form function that overwrites the library's fields of its Result", "[multiprocessor]") {
  const std::string log = temp_path("meddler");
  MultiProcessor<> mp(Value{{"log", log}}, opts(1));
  mp.register_function("before", [](const Value& c, const Args&) {
    append_line(c.at("log").as<std::string>(), "before");
    return 1;
  });
  mp.register_function("meddler", [](const Value& c, const Args&, Result& r) {
    append_line(c.at("log").as<std::string>(), "meddler");
    r.result = "kept";
    r.index = 12345;
    r.function_name = "renamed";
    r.pid = 1;
  });
  mp.register_function("after", [](const Value& c, const Args&) {
    append_line(c.at("log").as<std::string>(), "after");
    return 3;
  });
  const auto& rs = mp.execute_parallel();
  const std::string text = read_file(log);
  std::remove(log.c_str());
  REQUIRE(rs.size() == 3);
  for (const auto& r : rs) {
    INFO(describe(r));
    CHECK(r.ok());
  }
  CHECK(rs[1].index == 1);
  CHECK(rs[1].function_name == "meddler");
  CHECK(rs[1].pid == rs[0].pid);
  CHECK(rs[1].result.is_string());
  if (rs[1].result.is_string()) CHECK(rs[1].result.as<std::string>() == "kept");
  CHECK(rs[2].result.as<int>() == 3);
  // and every function ran exactly once
  INFO("log:\n" << text);
  CHECK(count_occurrences(text, "before\n") == 1);
  CHECK(count_occurrences(text, "meddler\n") == 1);
  CHECK(count_occurrences(text, "after\n") == 1);
}

TEST_CASE("deeply nested results", "[multiprocessor]") {
  const std::string log = temp_path("nested");
  MultiProcessor<> mp(Value{{"log", log}}, opts(1));
  for (int depth : {100, 1500, 2500})
    mp.register_function("nested" + std::to_string(depth), [](const Value& c, const Args& a) {
      append_line(c.at("log").as<std::string>(), "nested" + std::to_string(a.at("depth").as<int>()));
      Value v = 1;
      for (int d = 0; d < a.at("depth").as<int>(); ++d) {
        Value outer = Value::array();
        outer.push_back(std::move(v));
        v = std::move(outer);
      }
      return v;
    }, Args{{"depth", depth}});
  for (int k = 0; k < 3; ++k)
    mp.register_function("after" + std::to_string(k), [](const Value& c, const Args& a) {
      append_line(c.at("log").as<std::string>(), "after" + std::to_string(a.at("k").as<int>()));
      return 7;
    }, Args{{"k", k}});
  const auto& rs = mp.execute_parallel();
  const std::string text = read_file(log);
  std::remove(log.c_str());
  REQUIRE(rs.size() == 6);
  auto depth_of = [](const Value& v) {
    int d = 0;
    const Value* p = &v;
    while (p->is_array() && p->size() == 1) {
      p = &p->at(std::size_t{0});
      ++d;
    }
    return d;
  };
  for (std::size_t k = 0; k < 3; ++k) {
    INFO(describe(rs[k]));
    const int want = k == 0 ? 100 : k == 1 ? 1500 : 2500;
    // either it arrives intact, or the function is told its result could not be sent: the
    // function itself did not crash.
    if (rs[k].ok()) {
      CHECK(depth_of(rs[k].result) == want);
    } else {
      CHECK(rs[k].status == Status::exception);
    }
  }
  CHECK(rs[0].ok());
  CHECK(rs[1].ok());
  for (std::size_t k = 3; k < 6; ++k) {
    INFO(describe(rs[k]));
    CHECK(rs[k].ok());
  }
  INFO("log:\n" << text);
  for (const char* name : {"nested100\n", "nested1500\n", "nested2500\n", "after0\n", "after1\n", "after2\n"}) {
    CAPTURE(name);
    CHECK(count_occurrences(text, name) == 1);
  }
}

TEST_CASE("multiprocessor: Options::backend runs the same registrations on processes, threads and inline",
          "[multiprocessor][backend]") {
  auto run = [](pfp::Backend backend) {
    pfp::Options o;
    o.workers = 2;
    o.backend = backend;
    pfp::MultiProcessor<> mp(pfp::Value{{"base", 10}}, o);
    for (int i = 0; i < 6; ++i)
      mp.register_function("f" + std::to_string(i), [](const pfp::Value& ctx, const pfp::Args& a) {
        if (a.at("n").as<int>() == 3) throw std::length_error("three is too long");
        return ctx.at("base").as<int>() + a.at("n").as<int>();
      }, pfp::Args{{"n", i}});
    std::vector<std::tuple<std::string, std::size_t, pfp::Status, pfp::Value, std::string, bool>> out;
    for (const pfp::Result& r : mp.execute_parallel())
      out.emplace_back(r.function_name, r.index, r.status, r.result, r.error, r.pid == getpid());
    return out;
  };
  const auto processes = run(pfp::Backend::processes);
  REQUIRE(processes.size() == 6u);
  CHECK(std::get<3>(processes[5]) == pfp::Value(15));
  CHECK(std::get<2>(processes[3]) == pfp::Status::exception);
  CHECK_FALSE(std::get<5>(processes[0]));  // ran in a worker process
  auto in_process = [](auto rows) {
    for (auto& row : rows) {
      CHECK(std::get<5>(row));  // ran in this process
      std::get<5>(row) = false;
    }
    return rows;
  };
  CHECK((in_process(run(pfp::Backend::threads)) == processes));  // (parenthesized: Catch cannot print the tuples)
  CHECK((in_process(run(pfp::Backend::inline_)) == processes));
}
