// The two-phase pattern: gather in parallel, then process single-threaded.
//
//   1. Seven simulated database queries run in 4 worker processes (each takes half a second and
//      returns one row with a random column name and value), so the gather takes about
//      ceil(7 / 4) x 0.5 s = 1 s instead of 3.5 s.
//   2. Back in this process, each query's result processor -- set_all_columns or itemized_sales --
//      is given the query's Result and a config object, in registration order, and sets keys on it.
//
// Prints the total wall time, each query's row and time, and the config as JSON (sorted keys,
// 4-space indent). Exits with 1 if a query failed.
#include <pfp/pfp.hpp>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <random>
#include <string>
#include <thread>

namespace {

constexpr auto query_time = std::chrono::milliseconds(500);

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

// Stands for any slow external resource: it would connect, run args["sql"], and close. Here it
// sleeps and returns one row with a random single-letter column holding a random 5-letter value.
pfp::Value execute_database_query(const pfp::Value& /*connection*/, const pfp::Args& /*args*/) {
  std::this_thread::sleep_for(query_time);
  // Column names leave out the preset config keys a, x, y and z, so those stay visible.
  static const std::string columns = "bcdefghijklmnopqrstuvwBCDEFGHIJKLMNOPQRSTUVWXYZ";
  static const std::string letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  std::random_device seed;  // per call: every worker process draws its own
  std::mt19937 gen(seed());
  auto pick = [&](const std::string& from) { return from[std::uniform_int_distribution<std::size_t>(0, from.size() - 1)(gen)]; };
  std::string value;
  for (int i = 0; i < 5; ++i) value += pick(letters);
  return pfp::Value{{std::string(1, pick(columns)), value}};
}

// Result processors: run in the parent after the gather, one at a time, in registration order.

// Every column of the row becomes a config key (a later query's column overwrites an earlier one).
void set_all_columns(const pfp::Result& r, pfp::Value& cfg) {
  for (const auto& [column, value] : r.result.items()) cfg[column] = value;
}

// Custom parsing of the whole result set into one key.
void itemized_sales(const pfp::Result& r, pfp::Value& cfg) {
  cfg["sales"] = "Custom results parsing logic for cfg assignment: " + r.result.to_json();
}

}  // namespace

int main() {
  pfp::Options options;
  options.workers = 4;
  pfp::MultiProcessor<> queries(pfp::Value{{"dsn", "postgresql://reports@db/warehouse"}}, options);
  for (int i = 0; i < 6; ++i)
    queries.register_function("query" + std::to_string(i), execute_database_query,
                              pfp::Args{{"sql", "SELECT * FROM settings_" + std::to_string(i)}}, set_all_columns);
  queries.register_function("sales", execute_database_query, pfp::Args{{"sql", "SELECT item, qty FROM sales"}},
                            itemized_sales);

  const auto& results = queries.execute_parallel();
  bool all_ok = true;
  std::cout << std::setprecision(9);
  std::cout << "lapse_seconds_all_queries: " << seconds(queries.last_run_duration()) << '\n';
  for (const pfp::Result& r : results) {
    std::cout << "query_result: " << r.result.to_json() << " query_time: " << seconds(r.duration);
    if (!r.ok()) {
      all_ok = false;
      std::cout << " (" << r.function_name << " " << pfp::to_string(r.status) << ": " << r.error << ")";
    }
    std::cout << '\n';
  }

  pfp::Value cfg{{"x", 3}, {"y", "three"}, {"z", pfp::Value::array()}, {"a", "Aye!"}};
  queries.process_results(cfg);
  std::cout << "Config Object:\n" << cfg << '\n';
  return all_ok ? 0 : 1;
}
