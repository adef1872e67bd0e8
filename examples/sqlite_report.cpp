// The two-phase pattern on a real database: a sales report from SQLite.
//
//   0. Makes a SQLite database in a temporary file: one million generated sales rows, inserted in
//      one transaction through one prepared statement (about a second).
//   1. Gathers: eight aggregate queries run in parallel in 4 worker processes. Each worker opens
//      its own read-only connection in Options::initializer and closes it in Options::finalizer:
//      a connection must not cross a fork (SQLite says so), and the workers share nothing but
//      the file. The functions reach their worker's connection with pfp::worker_state<Db>().
//   2. Processes: back in this process, each query's result processor puts its rows into the
//      report config, which is printed as JSON with sorted keys.
//   3. Compares: the same eight queries one after another on one connection in this process,
//      the same rows expected, and both times printed.
//
// Exits with 1 if a query failed or the two ways disagree.
#include <pfp/pfp.hpp>

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

namespace {

constexpr int row_count = 1'000'000;
constexpr unsigned worker_count = 4;

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

// CPU time (user + system) of this process, or of its reaped children (the workers).
double cpu_seconds(int who) {
  rusage ru{};
  ::getrusage(who, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/// One SQLite connection, closed by close() or at the end of its life.
class Db {
 public:
  Db(const std::string& path, int flags) {
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
    db_.reset(raw);
    if (rc != SQLITE_OK) fail("cannot open " + path);
  }
  sqlite3* get() const { return db_.get(); }
  void close() { db_.reset(); }
  int queries = 0;  ///< served by this connection

  void exec(const std::string& sql) {
    char* message = nullptr;
    if (sqlite3_exec(db_.get(), sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
      const std::string text = message ? message : "unknown";
      sqlite3_free(message);
      throw std::runtime_error("sqlite: " + sql + ": " + text);
    }
  }

  /// The rows of a query, each an array of its columns (integers, reals, text or null).
  pfp::Value rows(const std::string& sql) {
    ++queries;
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(), sql.c_str(), -1, &raw, nullptr) != SQLITE_OK) fail("cannot prepare " + sql);
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
    pfp::Value out = pfp::Value::array();
    int rc = 0;
    while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
      pfp::Value row = pfp::Value::array();
      for (int c = 0; c < sqlite3_column_count(raw); ++c) {
        switch (sqlite3_column_type(raw, c)) {
          case SQLITE_INTEGER: row.push_back(static_cast<long long>(sqlite3_column_int64(raw, c))); break;
          case SQLITE_FLOAT: row.push_back(sqlite3_column_double(raw, c)); break;
          case SQLITE_NULL: row.push_back(pfp::Value()); break;
          default: row.push_back(std::string(reinterpret_cast<const char*>(sqlite3_column_text(raw, c))));
        }
      }
      out.push_back(std::move(row));
    }
    if (rc != SQLITE_DONE) fail("cannot run " + sql);
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("sqlite: " + what + ": " + (db_ ? sqlite3_errmsg(db_.get()) : "out of memory"));
  }
  struct Closer {
    void operator()(sqlite3* db) const { sqlite3_close(db); }
  };
  std::unique_ptr<sqlite3, Closer> db_;
};

const char* const regions[] = {"north", "south", "east", "west", "central", "coast", "mountain", "islands"};
const char* const channels[] = {"store", "web", "phone"};

/// One million sales in one transaction through one prepared statement. The generator's raw
/// output (not a std:: distribution, whose results differ between libraries) makes the same
/// rows everywhere.
void generate(const std::string& path) {
  Db db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  db.exec("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;");
  db.exec("CREATE TABLE sales (id INTEGER PRIMARY KEY, day INTEGER, region TEXT, channel TEXT, "
          "product INTEGER, customer INTEGER, qty INTEGER, price_cents INTEGER)");
  db.exec("BEGIN");
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db.get(), "INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?, ?, ?)", -1, &raw, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("sqlite: cannot prepare the insert: ") + sqlite3_errmsg(db.get()));
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> insert(raw, sqlite3_finalize);
  std::mt19937_64 gen(20240601);
  for (int id = 1; id <= row_count; ++id) {
    const std::uint64_t a = gen(), b = gen();
    sqlite3_bind_int(raw, 1, id);
    sqlite3_bind_int(raw, 2, static_cast<int>(a % 365));
    sqlite3_bind_text(raw, 3, regions[(a >> 16) % 8], -1, SQLITE_STATIC);
    sqlite3_bind_text(raw, 4, channels[(a >> 24) % 3], -1, SQLITE_STATIC);
    sqlite3_bind_int(raw, 5, static_cast<int>((a >> 32) % 200));
    sqlite3_bind_int(raw, 6, static_cast<int>(b % 50'000));
    sqlite3_bind_int(raw, 7, static_cast<int>(1 + (b >> 20) % 12));
    sqlite3_bind_int(raw, 8, static_cast<int>(99 + (b >> 32) % 9'901));
    if (sqlite3_step(raw) != SQLITE_DONE)
      throw std::runtime_error(std::string("sqlite: insert failed: ") + sqlite3_errmsg(db.get()));
    sqlite3_reset(raw);
  }
  db.exec("COMMIT");
}

struct Query {
  std::string name;
  std::string sql;
};

// Eight aggregates, each a full scan of the table.
const std::vector<Query>& queries() {
  static const std::vector<Query> all = {
      {"totals", "SELECT COUNT(*), SUM(qty), SUM(qty * price_cents) FROM sales"},
      {"revenue_by_region", "SELECT region, SUM(qty * price_cents) FROM sales GROUP BY region ORDER BY region"},
      {"revenue_by_channel", "SELECT channel, SUM(qty * price_cents), COUNT(*) FROM sales GROUP BY channel ORDER BY channel"},
      {"top_products", "SELECT product, SUM(qty) AS units FROM sales GROUP BY product ORDER BY units DESC, product LIMIT 5"},
      {"revenue_by_month", "SELECT day / 31 AS month, SUM(qty * price_cents) FROM sales GROUP BY month ORDER BY month"},
      {"order_sizes", "SELECT MIN(qty * price_cents), MAX(qty * price_cents), SUM(qty * price_cents > 50000) FROM sales"},
      {"busiest_days", "SELECT day, COUNT(*) AS orders FROM sales GROUP BY day ORDER BY orders DESC, day LIMIT 3"},
      {"customers", "SELECT COUNT(DISTINCT customer), COUNT(*) * 1.0 / COUNT(DISTINCT customer) FROM sales"},
  };
  return all;
}

// Phase 2: each query's result processor, run in this process in registration order.
pfp::Value money(const pfp::Value& cents) { return static_cast<double>(cents.as<long long>()) / 100.0; }

void put_totals(const pfp::Result& r, pfp::Value& cfg) {
  const pfp::Value& row = r.result.at(0);
  cfg["totals"] = pfp::Value{{"orders", row.at(0)}, {"units", row.at(1)}, {"revenue", money(row.at(2))}};
}
void put_keyed(const char* key, const pfp::Result& r, pfp::Value& cfg) {
  pfp::Value out = pfp::Value::object();
  for (const pfp::Value& row : r.result.elements()) out[row.at(0).to_json()] = money(row.at(1));
  cfg[key] = out;
}
void put_by_region(const pfp::Result& r, pfp::Value& cfg) {
  pfp::Value out = pfp::Value::object();
  for (const pfp::Value& row : r.result.elements()) out[row.at(0).as<std::string>()] = money(row.at(1));
  cfg["revenue_by_region"] = out;
}
void put_by_channel(const pfp::Result& r, pfp::Value& cfg) {
  pfp::Value out = pfp::Value::object();
  for (const pfp::Value& row : r.result.elements())
    out[row.at(0).as<std::string>()] = pfp::Value{{"revenue", money(row.at(1))}, {"orders", row.at(2)}};
  cfg["revenue_by_channel"] = out;
}
void put_top_products(const pfp::Result& r, pfp::Value& cfg) {
  pfp::Value out = pfp::Value::array();
  for (const pfp::Value& row : r.result.elements()) out.push_back(pfp::Value{{"product", row.at(0)}, {"units", row.at(1)}});
  cfg["top_products"] = out;
}
void put_by_month(const pfp::Result& r, pfp::Value& cfg) { put_keyed("revenue_by_month", r, cfg); }
void put_order_sizes(const pfp::Result& r, pfp::Value& cfg) {
  const pfp::Value& row = r.result.at(0);
  cfg["order_sizes"] = pfp::Value{{"smallest", money(row.at(0))}, {"largest", money(row.at(1))}, {"over_500", row.at(2)}};
}
void put_busiest_days(const pfp::Result& r, pfp::Value& cfg) {
  pfp::Value out = pfp::Value::array();
  for (const pfp::Value& row : r.result.elements()) out.push_back(pfp::Value{{"day", row.at(0)}, {"orders", row.at(1)}});
  cfg["busiest_days"] = out;
}
void put_customers(const pfp::Result& r, pfp::Value& cfg) {
  const pfp::Value& row = r.result.at(0);
  cfg["customers"] = pfp::Value{{"distinct", row.at(0)}, {"orders_each", row.at(1)}};
}

using Processor = void (*)(const pfp::Result&, pfp::Value&);
const Processor processors[] = {put_totals,       put_by_region,   put_by_channel,   put_top_products,
                                put_by_month,     put_order_sizes, put_busiest_days, put_customers};

}  // namespace

int main() {
  char dir_template[] = "/tmp/pfp_sqlite_report_XXXXXX";
  if (!::mkdtemp(dir_template)) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string path = std::string(dir_template) + "/sales.db";
  struct Cleanup {
    std::string dir, file;
    ~Cleanup() {
      std::remove(file.c_str());
      ::rmdir(dir.c_str());
    }
  } cleanup{dir_template, path};

  using Clock = std::chrono::steady_clock;
  std::cout << std::fixed << std::setprecision(3);
  auto t0 = Clock::now();
  generate(path);
  std::cout << "generated " << row_count << " sales rows in " << seconds(Clock::now() - t0) << " s\n";

  // Phase 1: the gather. Each worker opens its own connection when it starts and closes it when
  // it leaves; pfp::worker_state<Db>() is that connection.
  pfp::Options options;
  options.workers = worker_count;
  options.initializer = [&path](const pfp::WorkerInfo&) { return std::make_unique<Db>(path, SQLITE_OPEN_READONLY); };
  options.finalizer = [](const pfp::WorkerInfo& w) {
    Db& db = pfp::worker_state<Db>();
    db.close();
    std::printf("worker %u: connection closed after %d queries\n", w.number, db.queries);
  };
  pfp::MultiProcessor<> report(pfp::Value(), options);
  for (std::size_t i = 0; i < queries().size(); ++i)
    report.register_function(
        queries()[i].name, [](const pfp::Value&, const std::string& sql) { return pfp::worker_state<Db>().rows(sql); },
        queries()[i].sql, processors[i]);
  const double children_before = cpu_seconds(RUSAGE_CHILDREN);
  const std::vector<pfp::Result>& results = report.execute_parallel();
  const double parallel = seconds(report.last_run_duration());
  const double parallel_cpu = cpu_seconds(RUSAGE_CHILDREN) - children_before;  // every worker is reaped

  // The same queries one after another, on one connection in this process.
  t0 = Clock::now();
  const double self_before = cpu_seconds(RUSAGE_SELF);
  std::vector<pfp::Value> expected;
  {
    Db db(path, SQLITE_OPEN_READONLY);
    for (const Query& q : queries()) expected.push_back(db.rows(q.sql));
  }
  const double sequential = seconds(Clock::now() - t0);
  const double sequential_cpu = cpu_seconds(RUSAGE_SELF) - self_before;

  bool ok = true;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const pfp::Result& r = results[i];
    std::cout << "query " << r.function_name << ": " << pfp::to_string(r.status) << " in " << seconds(r.duration) << " s";
    if (!r.ok()) std::cout << " (" << r.error << ")";
    std::cout << '\n';
    if (!r.ok() || r.result != expected[i]) ok = false;
  }

  // Phase 2: the result processors build the report, in this process.
  pfp::Value cfg{{"database", pfp::Value{{"rows", row_count}, {"table", "sales"}}}};
  report.process_results(cfg);
  std::cout << "Report config:\n" << cfg << '\n';

  // CPU seconds next to wall seconds: on a machine busy with other work, the workers get less
  // than a core each, and the speed-up shows it.
  std::cout << "parallel: " << queries().size() << " queries in " << parallel << " s on " << worker_count
            << " worker processes (" << parallel_cpu << " s of CPU)\n";
  std::cout << "sequential: " << queries().size() << " queries in " << sequential << " s (" << sequential_cpu
            << " s of CPU)\n";
  std::cout << "speed-up: " << std::setprecision(2) << sequential / parallel << "x\n";
  std::cout << (ok ? "parallel and sequential results agree" : "parallel and sequential results DIFFER") << '\n';
  return ok ? 0 : 1;
}
