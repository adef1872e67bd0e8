// The batch manager (issue 5): lazy item sources, stats, logging and progress, the handler check,
// and Manager runs: totals, fail-fast, continue-on-error, crashes, hangs, backpressure, SIGINT,
// repeated runs, progress on a pseudo-terminal. Linux only (uses /proc and openpty).
#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace pfp_test;

// ------------------------------------------------------------------------------------------------
// An input-only range that counts how many elements were read from it.

class CountingInput {
 public:
  CountingInput(int n, int* reads) : n_(n), reads_(reads) {}

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    using pointer = const int*;
    using reference = int;
    iterator() = default;
    iterator(const CountingInput* r, int i) : r_(r), i_(i) {}
    int operator*() const {
      ++*r_->reads_;
      return i_;
    }
    iterator& operator++() {
      ++i_;
      return *this;
    }
    bool operator!=(const iterator& o) const { return i_ != o.i_; }
    bool operator==(const iterator& o) const { return i_ == o.i_; }

   private:
    const CountingInput* r_ = nullptr;
    int i_ = 0;
  };
  iterator begin() const { return iterator(this, 0); }
  iterator end() const { return iterator(this, n_); }

 private:
  int n_;
  int* reads_;
};

template <class R>
std::vector<std::vector<int>> collect(R&& r) {
  std::vector<std::vector<int>> out;
  for (const auto& b : r) out.push_back(b);
  return out;
}

using Batches = std::vector<std::vector<int>>;

// ------------------------------------------------------------------------------------------------
// Handlers for the Manager tests. What they do is decided by members set in the parent before the
// run; workers inherit them.

pfp::ManagerOptions quiet(unsigned workers) {
  pfp::ManagerOptions o;
  o.workers = workers;
  o.logger = pfp::silent_logger();
  o.progress.mode = pfp::ProgressMode::off;
  return o;
}

/// Items 0 .. count-1 from pfp::iota; handle(n, ctx) decides what an item does (default: count it).
struct NumberHandler {
  int count = 10;
  std::function<void(int, pfp::ItemContext&)> handle;

  auto build_items() { return pfp::iota(0, count); }
  void handle_item(int n, pfp::ItemContext& ctx) {
    if (handle) handle(n, ctx);
    ctx.stats.inc("handled");
  }
};

/// Items from a generator that the test controls in the parent.
struct GeneratorHandler {
  std::function<std::optional<int>()> next;
  std::function<void(int, pfp::ItemContext&)> handle;

  auto build_items() {
    return [this]() { return next(); };
  }
  void handle_item(int n, pfp::ItemContext& ctx) {
    if (handle) handle(n, ctx);
    ctx.stats.inc("handled");
  }
};

/// The seed's sample handler with no sleeping: batches of 2 of 0..99, factorial(n) / cos(n).
struct SampleLike {
  using Item = std::pair<std::size_t, std::vector<int>>;
  std::size_t batches_total = 0;

  auto build_items(pfp::BuildContext& ctx) {
    batches_total = 50;
    ctx.set_stat("items_total", 100);
    ctx.share("shared_data", pfp::Value{{"somekey", "some value"}});
    return pfp::enumerate(pfp::batches(pfp::iota(0, 100), 2));
  }
  std::string log_item(const Item& item) const { return std::to_string(item.first) + " / " + std::to_string(batches_total); }
  void reset_stats(pfp::Stats& s) { s.inc("items_processed", 0).inc("items_positive", 0).inc("items_negative", 0); }
  void handle_item(const Item& item, pfp::ItemContext& ctx) {
    if (ctx.shared("shared_data").at("somekey").as<std::string>() != "some value") throw std::runtime_error("shared data lost");
    for (int n : item.second) {
      const double value = std::exp(std::lgamma(n + 1.0)) / std::cos(static_cast<double>(n));
      ctx.stats.inc("items_processed");
      ctx.stats.inc(value > 0 ? "items_positive" : "items_negative");
    }
  }
};

std::vector<pfp::ItemLog> run_logged(pfp::ManagerOptions o, NumberHandler h, pfp::ExitStatus& st) {
  std::vector<pfp::ItemLog> logs;
  o.logger = [&logs](const pfp::ItemLog& l) { logs.push_back(l); };
  pfp::Manager<NumberHandler> m(std::move(h), o);
  st = m.run();
  return logs;
}

std::string describe(const pfp::ExitStatus& st) {
  std::string s = pfp::to_string(st) + " ok=" + std::to_string(st.items_ok) + " failed=" + std::to_string(st.items_failed) +
                  " cancelled=" + std::to_string(st.items_cancelled) + " stats=" + st.stats.to_object().to_json();
  for (const auto& f : st.failures) s += " [" + f.label + " " + std::string(pfp::to_string(f.status)) + " " + f.error + "]";
  return s;
}

/// Runs m and checks that it returned within limit_ms (generous: it only catches a hang).
template <class H>
pfp::ExitStatus run_within(pfp::Manager<H>& m, long long limit_ms = 15000) {
  const auto start = Clock::now();
  pfp::ExitStatus st = m.run();
  const long long took = elapsed_ms(start);
  INFO(describe(st) << " took " << took << " ms");
  CHECK(took < limit_ms);
  return st;
}

/// Reads everything from fd until EOF/EIO or the deadline.
std::string read_until_eof(int fd, ms timeout) {
  std::string out;
  const auto deadline = Clock::now() + timeout;
  char buf[4096];
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 100);
    if (r <= 0) continue;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

/// A process started on a new pseudo-terminal (its stdin, stdout and stderr), running body and
/// exiting with what it returns; the test reads the terminal's output from master.
struct PtyChild {
  pid_t pid = -1;
  int master = -1;
};

PtyChild start_on_pty(const std::function<int()>& body) {
  PtyChild c;
  std::fflush(nullptr);
  c.pid = ::forkpty(&c.master, nullptr, nullptr, nullptr);
  REQUIRE(c.pid >= 0);
  if (c.pid == 0) {
    const int rc = body();
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return c;
}

/// Reads the rest of c's terminal output into out, then reaps c; returns its wait status.
int finish(PtyChild& c, std::string& out) {
  out += read_until_eof(c.master, ms(30000));
  ::close(c.master);
  int status = 0;
  REQUIRE(::waitpid(c.pid, &status, 0) == c.pid);
  return status;
}

/// Runs h on 2 workers after configure(options, fd) pointed the logger or the progress at a pipe;
/// returns what came through the pipe.
std::string run_capturing(NumberHandler h, const std::function<void(pfp::ManagerOptions&, int)>& configure) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  pfp::ManagerOptions o = quiet(2);
  configure(o, p[1]);
  {
    pfp::Manager<NumberHandler> m(std::move(h), o);
    CHECK(m.run().ok());
  }
  ::close(p[1]);
  std::string out = read_until_eof(p[0], ms(2000));
  ::close(p[0]);
  return out;
}

}  // namespace

// =================================================================================================
// batches, enumerate, iota, generate

TEST_CASE("batches: full batches - then a shorter last one", "[manager][batch]") {
  CHECK(collect(pfp::batches(std::vector<int>{1, 2, 3, 4, 5}, 2)) == Batches{{1, 2}, {3, 4}, {5}});
  CHECK(collect(pfp::batches(std::vector<int>{1, 2, 3, 4}, 2)) == Batches{{1, 2}, {3, 4}});
  CHECK(collect(pfp::batches(std::vector<int>{1, 2, 3}, 1)) == Batches{{1}, {2}, {3}});
  CHECK(collect(pfp::batches(std::vector<int>{1, 2, 3}, 10)) == Batches{{1, 2, 3}});
}

TEST_CASE("batches: size 0 is one batch of everything - an empty range gives no batch", "[manager][batch]") {
  CHECK(collect(pfp::batches(std::vector<int>{1, 2, 3}, 0)) == Batches{{1, 2, 3}});
  CHECK(collect(pfp::batches(std::vector<int>{}, 0)).empty());
  CHECK(collect(pfp::batches(std::vector<int>{}, 3)).empty());
  CHECK(pfp::batches(std::vector<int>{1, 2, 3}, 0).size() == 1);
  CHECK(pfp::batches(std::vector<int>{}, 0).size() == 0);
}

TEST_CASE("batches: size() counts the batches of a sized range", "[manager][batch]") {
  CHECK(pfp::batches(std::vector<int>(5), 2).size() == 3);
  CHECK(pfp::batches(std::vector<int>(4), 2).size() == 2);
  CHECK(pfp::batches(pfp::iota(0, 100), 2).size() == 50);
  CHECK(pfp::batches(pfp::iota(0, 101), 2).size() == 51);
  CHECK(pfp::enumerate(pfp::batches(pfp::iota(0, 7), 3)).size() == 3);
}

TEST_CASE("batches: lazy over input iterators - reading only what the batches taken so far need", "[manager][batch]") {
  int reads = 0;
  auto b = pfp::batches(CountingInput(1000000, &reads), 3);
  CHECK(reads == 0);  // nothing is read before the first batch is asked for
  auto it = b.begin();
  CHECK(*it == std::vector<int>{0, 1, 2});
  CHECK(reads == 3);
  ++it;
  CHECK(*it == std::vector<int>{3, 4, 5});
  CHECK(reads == 6);
}

TEST_CASE("batches: an lvalue range is referred to - an rvalue one is owned", "[manager][batch]") {
  std::vector<int> v{1, 2, 3};
  auto ref = pfp::batches(v, 2);
  v.push_back(4);  // seen: the batches refer to v
  CHECK(collect(ref) == Batches{{1, 2}, {3, 4}});
  auto owned = [] { return pfp::batches(std::vector<int>{7, 8, 9}, 2); }();  // the temporary is gone
  CHECK(collect(owned) == Batches{{7, 8}, {9}});
}

TEST_CASE("batches over a generator call it only for the elements of the batches taken", "[manager][batch]") {
  int calls = 0;
  auto b = pfp::batches(pfp::generate([&calls]() -> std::optional<int> { return ++calls; }), 2);
  auto it = b.begin();
  CHECK(*it == std::vector<int>{1, 2});
  CHECK(calls == 2);  // the third element is not read ahead
  ++it;
  CHECK(*it == std::vector<int>{3, 4});
  CHECK(calls == 4);
}

TEST_CASE("iota and enumerate and generate are lazy single-pass ranges", "[manager][batch]") {
  std::vector<int> got;
  for (int i : pfp::iota(3, 7)) got.push_back(i);
  CHECK(got == std::vector<int>{3, 4, 5, 6});
  CHECK(pfp::iota(5, 5).size() == 0);
  CHECK(pfp::iota(5, 2).size() == 0);
  CHECK(pfp::iota(std::numeric_limits<int>::min(), std::numeric_limits<int>::max()).size() == 0xFFFFFFFFu);

  std::vector<std::pair<std::size_t, char>> pairs;
  for (const auto& p : pfp::enumerate(std::string("abc"))) pairs.push_back(p);
  CHECK(pairs == std::vector<std::pair<std::size_t, char>>{{0, 'a'}, {1, 'b'}, {2, 'c'}});

  int calls = 0;
  auto g = pfp::generate([&calls]() -> std::optional<int> {
    ++calls;
    if (calls > 4) return std::nullopt;
    return calls * 10;
  });
  CHECK(calls == 0);
  CHECK(collect(pfp::batches(g, 3)) == Batches{{10, 20, 30}, {40}});
  CHECK(calls == 5);
  for (int x : g) FAIL("a generator that ended is not called again: " << x);
  CHECK(calls == 5);
}

// =================================================================================================
// Stats

TEST_CASE("Stats: counters add - set values replace - snapshot as one object", "[manager][stats]") {
  pfp::Stats s;
  s.inc("a").inc("a").inc("b", 5).inc("b", -2).set("total", 100).set("name", "x").set("name", "y");
  CHECK(s.count("a") == 2);
  CHECK(s.count("b") == 3);
  CHECK(s.count("absent") == 0);
  CHECK(s.get("total") == pfp::Value(100));
  CHECK(s.get("name") == pfp::Value("y"));
  CHECK(s.get("absent").is_null());
  CHECK(s.is_counter("a"));
  CHECK_FALSE(s.is_counter("name"));
  CHECK(s.to_object().to_json() == R"({"a":2,"b":3,"name":"y","total":100})");
  std::ostringstream os;
  os << s;
  CHECK(os.str() == s.to_object().to_json());
}

TEST_CASE("Stats: merge sums counters exactly and takes the other's set values", "[manager][stats]") {
  pfp::Stats total;
  for (int w = 0; w < 8; ++w) {
    pfp::Stats delta;
    for (int i = 0; i < 1000; ++i) delta.inc("n");
    delta.set("last", w);
    total.merge(delta);
  }
  CHECK(total.count("n") == 8000);
  CHECK(total.get("last") == pfp::Value(7));
}

TEST_CASE("Stats: misuse throws pfp::error saying what to fix - and a failed merge changes nothing", "[manager][stats]") {
  pfp::Stats s;
  s.inc("n", 1).set("v", 1);
  REQUIRE_THROWS_WITH(s.set("n", 2), Catch::Matchers::Contains("is a counter, not a set value"));
  REQUIRE_THROWS_WITH(s.inc("v"), Catch::Matchers::Contains("is a set value, not a counter"));
  REQUIRE_THROWS_WITH(s.count("v"), Catch::Matchers::Contains("is a set value, not a counter"));
  s.inc("big", std::numeric_limits<std::int64_t>::max());
  REQUIRE_THROWS_WITH(s.inc("big"), Catch::Matchers::Contains("overflows"));

  pfp::Stats clash;
  clash.inc("ok", 1).inc("v", 1);  // "v" is a set value in s
  const pfp::Stats before = s;
  REQUIRE_THROWS_AS(s.merge(clash), pfp::error);
  CHECK(s == before);  // "ok" was not added either
  pfp::Stats overflow;
  overflow.inc("n", 1).inc("big", 1);
  REQUIRE_THROWS_WITH(s.merge(overflow), Catch::Matchers::Contains("overflows"));
  CHECK(s == before);
}

TEST_CASE("Stats: the wire form keeps counters and set values apart", "[manager][stats]") {
  pfp::Stats s;
  s.inc("n", 3).set("v", pfp::Value{{"k", 1}}).set("i", 4);
  const pfp::Value wire(s);
  const pfp::Stats back = pfp::decode(pfp::encode(wire)).as<pfp::Stats>();
  CHECK(back == s);
  CHECK(back.is_counter("n"));
  CHECK_FALSE(back.is_counter("i"));
  REQUIRE_THROWS_AS(pfp::Value(42).as<pfp::Stats>(), pfp::error);
  REQUIRE_THROWS_AS((pfp::Value{{"c", pfp::Value{{"x", 1}}}, {"v", pfp::Value{{"x", 2}}}}.as<pfp::Stats>()), pfp::error);
}

// =================================================================================================
// Logging and progress text

TEST_CASE("format_progress: done/total - percent - rate - ETA - failures - no total when unknown", "[manager][progress]") {
  using std::chrono::seconds;
  CHECK(pfp::format_progress({25, 1, 100, seconds(5)}) ==
        "progress: 25/100 (25%) | 5.0 items/s | ETA 15s | 1 failed | 5s elapsed");
  CHECK(pfp::format_progress({0, 0, 10, seconds(0)}) ==
        "progress: 0/10 (0%) | 0.0 items/s | ETA ? | 0 failed | 0s elapsed");
  CHECK(pfp::format_progress({10, 0, 10, seconds(2)}) ==
        "progress: 10/10 (100%) | 5.0 items/s | ETA 0s | 0 failed | 2s elapsed");
  CHECK(pfp::format_progress({1, 0, 1000, seconds(10)}) ==
        "progress: 1/1000 (0%) | 0.1 items/s | ETA 2h46m | 0 failed | 10s elapsed");
  CHECK(pfp::format_progress({30, 2, std::nullopt, seconds(130)}) ==
        "progress: 30 items | 0.2 items/s | 2 failed | 2m10s elapsed");
}

TEST_CASE("format_item_log: worker and label on every line - handler messages first", "[manager][progress]") {
  pfp::ItemLog log;
  log.label = "3 / 50";
  log.worker = 2;
  log.pid = 1234;
  log.duration = std::chrono::milliseconds(120);
  log.messages = {"hello", "world"};
  CHECK(pfp::format_item_log(log) ==
        "[worker 2] 3 / 50: hello\n[worker 2] 3 / 50: world\n[worker 2] 3 / 50: done in 0.120 s\n");
  log.worker.reset();
  log.messages.clear();
  log.status = pfp::Status::crashed;
  log.error = "killed by SIGSEGV";
  CHECK(pfp::format_item_log(log) == "[pid 1234] 3 / 50: crashed: killed by SIGSEGV (after 0.120 s)\n");
}

TEST_CASE("progress line: terminal mode redraws in place - plain mode writes whole lines", "[manager][progress]") {
  auto capture = [](pfp::ProgressMode mode) {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    {
      pfp::ProgressOptions o;
      o.mode = mode;
      o.fd = p[1];
      o.refresh = std::chrono::milliseconds(0);
      o.interval = std::chrono::milliseconds(0);
      pfp::detail::ProgressLine line(o, 3, std::chrono::steady_clock::now());
      line.update(1, 0);
      line.suspend();
      line.resume();
      line.update(2, 1);
      line.finish(3, 1);
    }
    ::close(p[1]);
    std::string out = read_until_eof(p[0], ms(2000));
    ::close(p[0]);
    return out;
  };
  const std::string term = capture(pfp::ProgressMode::terminal);
  CHECK(term.rfind("\r\033[Kprogress: 0/3", 0) == 0);
  CHECK(count_occurrences(term, "\r\033[Kprogress: 3/3 (100%)") == 1);
  CHECK(count_occurrences(term, "\n") == 1);  // only the final line end
  CHECK(term.back() == '\n');

  const std::string plain = capture(pfp::ProgressMode::plain);
  CHECK(plain.find('\r') == std::string::npos);
  CHECK(plain.find('\033') == std::string::npos);
  CHECK(count_occurrences(plain, "progress: ") == 3);  // two updates and the end
  CHECK(plain.find("progress: 2/3 (66%)") != std::string::npos);
  CHECK(plain.find("progress: 3/3 (100%)") != std::string::npos);

  CHECK(capture(pfp::ProgressMode::off).empty());
  CHECK(capture(pfp::ProgressMode::automatic).find('\r') == std::string::npos);  // a pipe is no terminal
}

TEST_CASE("progress line: automatic mode on a pseudo-terminal is the live line", "[manager][progress]") {
  int master = -1, slave = -1;
  REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
  {
    pfp::ProgressOptions o;
    o.fd = slave;
    pfp::detail::ProgressLine line(o, 2, std::chrono::steady_clock::now());
    CHECK(line.mode() == pfp::ProgressMode::terminal);
    line.finish(2, 0);
  }
  ::close(slave);
  const std::string out = read_until_eof(master, ms(2000));
  ::close(master);
  CHECK(out.find("\r\033[Kprogress: 2/2 (100%)") != std::string::npos);
}

// =================================================================================================
// The handler check

namespace {
struct NoBuild {
  void handle_item(int, pfp::ItemContext&) {}
};
struct BuildsNotARange {
  int build_items() { return 3; }
  void handle_item(int, pfp::ItemContext&) {}
};
struct NoHandle {
  std::vector<int> build_items() { return {}; }
};
struct WrongHandle {
  std::vector<int> build_items() { return {}; }
  void handle_item(const std::string&, pfp::ItemContext&) {}
};
struct Opaque {
  int x = 0;
};
struct ItemNotAValue {
  std::vector<Opaque> build_items() { return {}; }
  void handle_item(const Opaque&, pfp::ItemContext&) {}
};
struct BadLabel {
  std::vector<int> build_items() { return {}; }
  void handle_item(int, pfp::ItemContext&) {}
  std::vector<int> log_item(int) { return {}; }
};
struct Complete {
  auto build_items(pfp::BuildContext&) { return pfp::iota(0, 3); }
  void handle_item(int, pfp::ItemContext&) {}
  int log_item(int n) const { return n * 10; }
  void reset_stats(pfp::Stats&) {}
};
}  // namespace

TEST_CASE("handler check: what is required and what is optional", "[manager][traits]") {
  STATIC_REQUIRE(pfp::is_handler_v<NumberHandler>);
  STATIC_REQUIRE(pfp::is_handler_v<GeneratorHandler>);
  STATIC_REQUIRE(pfp::is_handler_v<SampleLike>);
  STATIC_REQUIRE(pfp::is_handler_v<Complete>);
  STATIC_REQUIRE(pfp::handler_traits<Complete>::has_log_item);
  STATIC_REQUIRE(pfp::handler_traits<Complete>::has_reset_stats);
  STATIC_REQUIRE_FALSE(pfp::handler_traits<NumberHandler>::has_log_item);
  STATIC_REQUIRE(std::is_same_v<pfp::handler_traits<GeneratorHandler>::item_type, int>);
  STATIC_REQUIRE(std::is_same_v<pfp::handler_traits<SampleLike>::item_type, SampleLike::Item>);

  STATIC_REQUIRE_FALSE(pfp::handler_traits<NoBuild>::has_build_items);
  STATIC_REQUIRE(pfp::handler_traits<BuildsNotARange>::has_build_items);
  STATIC_REQUIRE_FALSE(pfp::handler_traits<BuildsNotARange>::valid_source);
  STATIC_REQUIRE_FALSE(pfp::handler_traits<NoHandle>::has_handle_item);
  STATIC_REQUIRE_FALSE(pfp::handler_traits<WrongHandle>::has_handle_item);
  STATIC_REQUIRE_FALSE(pfp::handler_traits<ItemNotAValue>::item_converts);
  STATIC_REQUIRE_FALSE(pfp::handler_traits<BadLabel>::valid_log_item);
  for (bool valid : {pfp::is_handler_v<NoBuild>, pfp::is_handler_v<BuildsNotARange>, pfp::is_handler_v<NoHandle>,
                     pfp::is_handler_v<WrongHandle>, pfp::is_handler_v<ItemNotAValue>, pfp::is_handler_v<BadLabel>})
    CHECK_FALSE(valid);
}

TEST_CASE("a log_item returning a number labels the item", "[manager][traits]") {
  pfp::ManagerOptions o = quiet(2);
  std::vector<std::string> labels;
  o.logger = [&labels](const pfp::ItemLog& l) { labels.push_back(l.label); };
  pfp::Manager<Complete> m(o);
  REQUIRE(m.run().ok());
  std::sort(labels.begin(), labels.end());
  CHECK(labels == std::vector<std::string>{"0", "10", "20"});
}

// =================================================================================================
// Manager runs

TEST_CASE("sample run: 100 numbers in batches of 2 on 8 workers give 100 / 50 / 50 and status 0", "[manager]") {
  pfp::ManagerOptions o = quiet(8);
  std::vector<pfp::ItemLog> logs;
  o.logger = [&logs](const pfp::ItemLog& l) { logs.push_back(l); };
  pfp::Manager<SampleLike> m(o);
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.code == 0);
  CHECK(st.message == "Success");
  CHECK_FALSE(st.error_target.has_value());
  CHECK(st.ok());
  CHECK(st.stats.count("items_processed") == 100);
  CHECK(st.stats.count("items_positive") == 50);
  CHECK(st.stats.count("items_negative") == 50);
  CHECK(st.stats.get("items_total") == pfp::Value(100));
  CHECK(m.stats() == st.stats);
  CHECK(st.items_ok == 50);
  CHECK(st.failures.empty());
  CHECK(st.seconds > 0);
  CHECK_THAT(pfp::to_string(st), Catch::Matchers::StartsWith("code 0 (Success) in "));
  REQUIRE(logs.size() == 50);
  std::set<std::string> labels;
  for (const auto& l : logs) {
    labels.insert(l.label);
    CHECK(l.status == pfp::Status::ok);
    REQUIRE(l.worker.has_value());
    CHECK(*l.worker < 8);
    CHECK(l.pid > 0);
  }
  CHECK(labels.size() == 50);
  CHECK(labels.count("0 / 50") == 1);
  CHECK(labels.count("49 / 50") == 1);
}

TEST_CASE("stats are exact under concurrency: 8 workers x 1000 increments = 8000", "[manager][stats]") {
  NumberHandler h;
  h.count = 8;
  h.handle = [](int, pfp::ItemContext& ctx) {
    sleep_ms(100);  // every worker gets an item
    for (int i = 0; i < 1000; ++i) ctx.stats.inc("n");
  };
  pfp::ManagerOptions o = quiet(8);
  pfp::Manager<NumberHandler>* manager = nullptr;
  std::vector<std::int64_t> snapshots;
  std::set<unsigned> workers;
  o.logger = [&](const pfp::ItemLog& l) {
    snapshots.push_back(manager->stats().count("n"));  // a snapshot during the run
    if (l.worker) workers.insert(*l.worker);
  };
  pfp::Manager<NumberHandler> m(h, o);
  manager = &m;
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  REQUIRE(st.ok());
  CHECK(st.stats.count("n") == 8000);
  CHECK(st.stats.count("handled") == 8);
  CHECK(snapshots == std::vector<std::int64_t>{1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000});
  CHECK(workers.size() >= 2);
}

TEST_CASE("stats are exact over 8000 one-increment items on 8 workers", "[manager][stats]") {
  NumberHandler h;
  h.count = 8000;
  h.handle = [](int n, pfp::ItemContext& ctx) { ctx.stats.inc("sum", n); };
  pfp::Manager<NumberHandler> m(h, quiet(8));
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  REQUIRE(st.ok());
  CHECK(st.stats.count("handled") == 8000);
  CHECK(st.stats.count("sum") == 8000LL * 7999 / 2);
  CHECK(st.items_ok == 8000);
}

TEST_CASE("fail-fast: an error on item 0 names target 0", "[manager][fail-fast]") {
  NumberHandler h;
  h.count = 20;
  h.handle = [](int n, pfp::ItemContext&) {
    if (n == 0) throw std::runtime_error("bad item zero");
  };
  pfp::Manager<NumberHandler> m(h, quiet(2));
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.code == 1);
  REQUIRE(st.error_target.has_value());
  CHECK(*st.error_target == "0");
  CHECK_THAT(st.message, Catch::Matchers::Contains("std::runtime_error") && Catch::Matchers::Contains("bad item zero"));
  CHECK_THAT(pfp::to_string(st), Catch::Matchers::Contains("target 0 in"));
  REQUIRE_FALSE(st.failures.empty());
  CHECK(st.failures.front().label == "0");
  CHECK(st.failures.front().status == pfp::Status::exception);
  CHECK(st.items_failed == st.failures.size());
}

TEST_CASE("fail-fast: an error after the other workers went idle returns promptly", "[manager][fail-fast]") {
  // The original's deadlock: workers that found the queue empty had left, the failing one waited for them.
  SECTION("the last item fails once every other item is finished") {
    const std::string done = temp_path("done");
    NumberHandler h;
    h.count = 11;
    h.handle = [done](int n, pfp::ItemContext&) {
      if (n != 10) {
        append_line(done, std::to_string(n));
        return;
      }
      // Once the other ten items are handled, the other workers have nothing left to do.
      wait_until([&] { return count_occurrences(read_file(done), "\n") == 10; }, ms(20000));
      throw std::runtime_error("item ten is broken");
    };
    pfp::Manager<NumberHandler> m(h, quiet(4));
    const pfp::ExitStatus st = run_within(m);
    const std::string handled = read_file(done);
    ::unlink(done.c_str());
    INFO(describe(st));
    CHECK(count_occurrences(handled, "\n") == 10);
    CHECK(st.code == 1);
    CHECK(st.error_target == std::optional<std::string>("10"));
    CHECK_THAT(st.message, Catch::Matchers::Contains("item ten is broken"));
    CHECK(st.items_ok == 10);
  }
  SECTION("a middle item fails; the items after it are not all handed out") {
    NumberHandler h;
    h.count = 1000;
    h.handle = [](int n, pfp::ItemContext&) {
      if (n == 10) {
        sleep_ms(300);
        throw std::runtime_error("item ten is broken");
      }
    };
    pfp::ManagerOptions o = quiet(4);
    o.max_in_flight = 1;  // while item 10 runs, nothing else is handed out: the other workers are idle
    pfp::Manager<NumberHandler> m(h, o);
    const pfp::ExitStatus st = run_within(m);
    INFO(describe(st));
    CHECK(st.code == 1);
    CHECK(st.error_target == std::optional<std::string>("10"));
    CHECK(st.items_ok == 10);
    CHECK(st.stats.count("handled") == 10);
  }
  CHECK(child_pids().empty());
}

namespace {
struct ThrowingBuilder {
  std::vector<int> build_items() { throw std::runtime_error("cannot open the database"); }
  void handle_item(int, pfp::ItemContext&) {}
};
}  // namespace

TEST_CASE("an exception from build_items ends the run with its message", "[manager][fail-fast]") {
  pfp::Manager<ThrowingBuilder> m(quiet(2));
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.code == 1);
  CHECK_THAT(st.message, Catch::Matchers::Contains("item builder") && Catch::Matchers::Contains("std::runtime_error") &&
                             Catch::Matchers::Contains("cannot open the database"));
  CHECK_FALSE(st.error_target.has_value());
  CHECK(st.items_ok == 0);
  CHECK(child_pids().empty());
}

TEST_CASE("an exception from the item source mid-run ends the run with its message", "[manager][fail-fast]") {
  for (pfp::ErrorPolicy policy : {pfp::ErrorPolicy::fail_fast, pfp::ErrorPolicy::continue_on_error}) {
    GeneratorHandler h;
    int produced = 0;
    h.next = [&produced]() -> std::optional<int> {
      if (produced == 5) throw std::out_of_range("page 6 of the listing is missing");
      return produced++;
    };
    pfp::ManagerOptions o = quiet(2);
    o.on_error = policy;
    pfp::Manager<GeneratorHandler> m(h, o);
    const pfp::ExitStatus st = m.run();
    INFO(describe(st));
    CHECK(st.code == 1);
    CHECK_THAT(st.message, Catch::Matchers::Contains("std::out_of_range") &&
                               Catch::Matchers::Contains("page 6 of the listing is missing"));
    CHECK(st.items_failed == 0);
    CHECK(st.items_ok + st.items_cancelled == 5);
    if (policy == pfp::ErrorPolicy::continue_on_error) CHECK(st.items_ok == 5);
  }
}

namespace {
struct HugeNumbers {
  std::vector<std::uint64_t> build_items() { return {1, std::numeric_limits<std::uint64_t>::max(), 3}; }
  void handle_item(std::uint64_t, pfp::ItemContext&) {}
};
struct CounterOnAValue {
  auto build_items(pfp::BuildContext& ctx) {
    ctx.set_stat("k", "a set value");
    return pfp::iota(0, 3);
  }
  void handle_item(int, pfp::ItemContext& ctx) { ctx.stats.inc("k"); }
};
}  // namespace

TEST_CASE("an item that cannot be sent to a worker ends the run naming it", "[manager][fail-fast]") {
  pfp::Manager<HugeNumbers> m(quiet(2));
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.code == 1);
  CHECK_THAT(st.message, Catch::Matchers::Contains("item 1 could not be prepared") && Catch::Matchers::Contains("pfp::error"));
  CHECK(st.error_target == std::optional<std::string>("1"));
}

TEST_CASE("item stats that clash with the totals fail the item, saying why", "[manager][stats]") {
  pfp::ManagerOptions o = quiet(2);
  o.on_error = pfp::ErrorPolicy::continue_on_error;
  pfp::Manager<CounterOnAValue> m(o);
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.items_failed == 3);
  REQUIRE_FALSE(st.failures.empty());
  CHECK_THAT(st.failures[0].error, Catch::Matchers::Contains("could not be merged") &&
                                       Catch::Matchers::Contains("is a set value, not a counter"));
  CHECK(st.stats.get("k") == pfp::Value("a set value"));
}

TEST_CASE("continue-on-error: every item is handled - every failure counted and listed", "[manager][continue]") {
  NumberHandler h;
  h.count = 20;
  h.handle = [](int n, pfp::ItemContext&) {
    if (n % 5 == 3) throw std::invalid_argument("odd one " + std::to_string(n));
  };
  pfp::ManagerOptions o = quiet(3);
  o.on_error = pfp::ErrorPolicy::continue_on_error;
  pfp::ExitStatus st;
  const auto logs = run_logged(o, h, st);
  INFO(describe(st));
  CHECK(st.code == 1);
  CHECK(st.items_ok == 16);
  CHECK(st.items_failed == 4);
  CHECK(st.items_cancelled == 0);
  CHECK(st.stats.count("handled") == 16);
  std::set<std::string> labels;
  for (const auto& f : st.failures) {
    labels.insert(f.label);
    CHECK(f.status == pfp::Status::exception);
    CHECK_THAT(f.error, Catch::Matchers::Contains("std::invalid_argument: odd one " + f.label));
  }
  CHECK(labels == std::set<std::string>{"3", "8", "13", "18"});
  CHECK_THAT(st.message, Catch::Matchers::StartsWith("4 of 20 items failed (first: exception: std::invalid_argument"));
  REQUIRE(st.error_target.has_value());
  CHECK(*st.error_target == st.failures.front().label);
  CHECK(logs.size() == 20);
}

/// Runs h (6 items, continue-on-error, 2 workers) and checks that item 2 alone failed, with
/// `status` and a cause containing `cause`.
void check_only_item_2_failed(const NumberHandler& h, pfp::Status status, const std::string& cause) {
  pfp::ManagerOptions o = quiet(2);
  o.on_error = pfp::ErrorPolicy::continue_on_error;
  pfp::Manager<NumberHandler> m(h, o);
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.code == 1);
  CHECK(st.items_ok == 5);
  CHECK(st.items_failed == 1);
  REQUIRE(st.failures.size() == 1);
  CHECK(st.failures[0].label == "2");
  CHECK(st.failures[0].status == status);
  CHECK_THAT(st.failures[0].error, Catch::Matchers::Contains(cause));
  CHECK(st.error_target == std::optional<std::string>("2"));
}

TEST_CASE("a crashing handler fails its item only", "[manager][faults]") {
  NumberHandler h;
  h.count = 6;
  h.handle = [](int n, pfp::ItemContext&) {
    if (n == 2) std::abort();
  };
  SECTION("continue-on-error") { check_only_item_2_failed(h, pfp::Status::crashed, "SIGABRT"); }
  SECTION("fail-fast") {
    pfp::Manager<NumberHandler> m(h, quiet(2));
    const pfp::ExitStatus st = m.run();
    INFO(describe(st));
    CHECK(st.code == 1);
    CHECK(st.error_target == std::optional<std::string>("2"));
    CHECK_THAT(st.message, Catch::Matchers::StartsWith("crashed: ") && Catch::Matchers::Contains("SIGABRT"));
  }
  CHECK(child_pids().empty());
}

TEST_CASE("an item that corrupts the result stream fails even if its result was already delivered", "[manager][faults]") {
  NumberHandler h;
  h.count = 6;
  h.handle = [](int n, pfp::ItemContext&) {
    if (n != 2) return;
    const char junk[] = "this is not a pfp frame, whatever the worker thinks";
    (void)!::write(pfp::detail::worker_result_fd, junk, sizeof junk);  // pfp's test hook
  };
  // If item 2's ok verdict was delivered before the garbage was noticed, it is taken back (Feed::amend).
  check_only_item_2_failed(h, pfp::Status::crashed, "protocol error");
}

TEST_CASE("a hanging handler is timed out (Options::timeout) and fails its item only", "[manager][faults]") {
  NumberHandler h;
  h.count = 4;
  h.handle = [](int n, pfp::ItemContext&) {
    if (n == 1) sleep_ms(60000);
  };
  for (pfp::ErrorPolicy policy : {pfp::ErrorPolicy::fail_fast, pfp::ErrorPolicy::continue_on_error}) {
    pfp::ManagerOptions o = quiet(2);
    o.timeout = ms(300);
    o.on_error = policy;
    pfp::Manager<NumberHandler> m(h, o);
    const pfp::ExitStatus st = run_within(m);
    INFO(describe(st));
    CHECK(st.code == 1);
    CHECK(st.error_target == std::optional<std::string>("1"));
    REQUIRE_FALSE(st.failures.empty());
    CHECK(st.failures[0].status == pfp::Status::timed_out);
    CHECK_THAT(st.failures[0].error, Catch::Matchers::Contains("300 ms"));
    if (policy == pfp::ErrorPolicy::continue_on_error) CHECK(st.items_ok == 3);
    CHECK(child_pids().empty());
  }
}

TEST_CASE("backpressure: never more items in flight than the bound", "[manager][backpressure]") {
  auto max_in_flight = [](unsigned workers, std::size_t bound, long delay_ms) {
    std::size_t produced = 0, delivered = 0, most = 0;
    GeneratorHandler h;
    h.next = [&]() -> std::optional<int> {
      if (produced == 400) return std::nullopt;
      ++produced;
      most = std::max(most, produced - delivered);  // handed out and not finished, measured in the parent
      return static_cast<int>(produced);
    };
    h.handle = [delay_ms](int, pfp::ItemContext&) { sleep_ms(delay_ms); };
    pfp::ManagerOptions o = quiet(workers);
    o.max_in_flight = bound;
    o.logger = [&delivered](const pfp::ItemLog&) { ++delivered; };
    pfp::Manager<GeneratorHandler> m(h, o);
    const pfp::ExitStatus st = m.run();
    INFO(describe(st));
    CHECK(st.ok());
    CHECK(st.items_ok == 400);
    return most;
  };
  CHECK(max_in_flight(8, 3, 2) == 3);  // 8 workers could take 8 at once
  CHECK(max_in_flight(2, 1, 0) == 1);
  // Default: twice the workers. Instant items: the engine alone would queue many per worker.
  const std::size_t most = max_in_flight(2, 0, 0);
  CHECK(most <= 4);
  CHECK(most >= 2);
}

TEST_CASE("SIGINT during a run: code 2 - Keyboard interrupt - no worker left - handler restored", "[manager][sigint]") {
  const std::string pids = temp_path("pids");
  const pid_t parent = ::getpid();
  NumberHandler h;
  h.count = 50;
  h.handle = [pids, parent](int n, pfp::ItemContext&) {
    append_line(pids, std::to_string(::getpid()));
    if (n == 3) ::kill(parent, SIGINT);  // Ctrl-C
    sleep_ms(n >= 3 ? 30000 : 10);
  };
  const Disposition before = disposition(SIGINT);
  Disposition during;
  pfp::ManagerOptions o = quiet(2);
  o.logger = [&during](const pfp::ItemLog&) { during = disposition(SIGINT); };
  pfp::Manager<NumberHandler> m(h, o);
  const pfp::ExitStatus st = run_within(m);
  INFO(describe(st));
  CHECK(st.code == 2);
  CHECK(st.message == "Keyboard interrupt");
  CHECK(st.items_ok <= 3);
  CHECK(st.items_failed == 0);
  CHECK(st.items_cancelled >= 1);
  CHECK(during != before);
  CHECK(disposition(SIGINT) == before);
  std::istringstream in(read_file(pids));
  std::set<pid_t> workers;
  for (pid_t p; in >> p;) workers.insert(p);
  ::unlink(pids.c_str());
  CHECK_FALSE(workers.empty());
  for (pid_t p : workers) CHECK_FALSE(pid_running(p));
  CHECK(child_pids().empty());
}

TEST_CASE("Ctrl-C typed on the terminal stops the run with code 2 and leaves no worker", "[manager][sigint]") {
  PtyChild c = start_on_pty([] {
    NumberHandler h;
    h.count = 100;
    h.handle = [](int, pfp::ItemContext&) { sleep_ms(60000); };
    pfp::ManagerOptions o = quiet(2);
    o.progress.mode = pfp::ProgressMode::terminal;  // its first line says the run has started
    pfp::Manager<NumberHandler> m(h, o);
    const pfp::ExitStatus st = m.run();
    std::printf("\nmessage: %s, workers left: %zu\n", st.message.c_str(), child_pids().size());
    return st.code;
  });
  std::string out;
  char buf[4096];
  const bool started = wait_until(
      [&] {
        pollfd p{c.master, POLLIN, 0};
        if (::poll(&p, 1, 10) > 0) {
          const ssize_t n = ::read(c.master, buf, sizeof buf);
          if (n > 0) out.append(buf, static_cast<std::size_t>(n));
        }
        return out.find("progress: 0/100") != std::string::npos;
      },
      ms(20000));
  CHECK(started);
  sleep_ms(100);  // the workers are in their items
  REQUIRE(::write(c.master, "\x03", 1) == 1);  // the terminal turns it into SIGINT for the foreground group
  const int status = finish(c, out);
  INFO(out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 2);
  CHECK(out.find("message: Keyboard interrupt, workers left: 0") != std::string::npos);
}

TEST_CASE("handle_sigint = false leaves SIGINT alone", "[manager][sigint]") {
  const Disposition before = disposition(SIGINT);
  std::vector<Disposition> during;
  pfp::ManagerOptions o = quiet(2);
  o.handle_sigint = false;
  o.logger = [&during](const pfp::ItemLog&) { during.push_back(disposition(SIGINT)); };
  NumberHandler h;
  h.count = 3;
  pfp::Manager<NumberHandler> m(h, o);
  REQUIRE(m.run().ok());
  REQUIRE(during.size() == 3);
  for (const auto& d : during) CHECK(d == before);
}

TEST_CASE("cancel() stops the run with code 3", "[manager]") {
  NumberHandler h;
  h.count = 100;
  h.handle = [](int, pfp::ItemContext&) { sleep_ms(5); };
  pfp::ManagerOptions o = quiet(2);
  pfp::Manager<NumberHandler>* manager = nullptr;
  std::size_t seen = 0;
  o.logger = [&](const pfp::ItemLog&) {
    if (++seen == 5) manager->cancel();
  };
  pfp::Manager<NumberHandler> m(h, o);
  manager = &m;
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.code == 3);
  CHECK(st.message == "Cancelled");
  CHECK(st.items_ok < 100);
  CHECK(st.items_failed == 0);
  // The next run is not affected.
  o.logger = pfp::silent_logger();
  pfp::Manager<NumberHandler> again(h, o);
  CHECK(again.run().items_ok == 100);
}

TEST_CASE("two runs in one process - by the same Manager and by another", "[manager]") {
  pfp::Manager<SampleLike> m(quiet(4));
  for (int run = 0; run < 2; ++run) {
    const pfp::ExitStatus st = m.run();
    INFO("run " << run << ": " << describe(st));
    CHECK(st.ok());
    CHECK(st.stats.count("items_processed") == 100);  // not 200: each run starts from zero
    CHECK(st.stats.count("items_positive") == 50);
    CHECK(st.stats.count("items_negative") == 50);
  }
  pfp::Manager<SampleLike> other(quiet(3));
  CHECK(other.run().stats.count("items_processed") == 100);

  NumberHandler h;
  h.count = 5;
  bool fail = true;
  h.handle = [&fail](int, pfp::ItemContext&) {
    if (fail) throw std::runtime_error("first run fails");
  };
  pfp::Manager<NumberHandler> flaky(h, quiet(2));
  CHECK(flaky.run().code == 1);
  fail = false;  // the next run's workers are forked with this
  const pfp::ExitStatus st = flaky.run();
  INFO(describe(st));
  CHECK(st.ok());
  CHECK(st.items_ok == 5);
}

TEST_CASE("run() from inside a run is refused with a pfp::error", "[manager]") {
  NumberHandler h;
  h.count = 3;
  pfp::ManagerOptions o = quiet(2);
  pfp::Manager<NumberHandler>* manager = nullptr;
  std::string refused;
  o.logger = [&](const pfp::ItemLog&) {
    try {
      manager->run();
    } catch (const pfp::error& e) {
      refused = e.what();
    }
  };
  pfp::Manager<NumberHandler> m(h, o);
  manager = &m;
  CHECK(m.run().ok());
  CHECK_THAT(refused, Catch::Matchers::Contains("already in progress"));
}

TEST_CASE("a logger that throws stops the run with its message", "[manager][log]") {
  NumberHandler h;
  h.count = 50;
  pfp::ManagerOptions o = quiet(2);
  std::size_t seen = 0;
  o.logger = [&seen](const pfp::ItemLog&) {
    if (++seen == 3) throw std::runtime_error("the log disk is full");
  };
  pfp::Manager<NumberHandler> m(h, o);
  const pfp::ExitStatus st = run_within(m);
  INFO(describe(st));
  CHECK(st.code == 1);
  CHECK_THAT(st.message, Catch::Matchers::Contains("std::runtime_error") && Catch::Matchers::Contains("the log disk is full"));
  CHECK_FALSE(st.error_target.has_value());
  CHECK(st.items_ok < 50);
  CHECK(child_pids().empty());
}

TEST_CASE("invalid options are refused when the Manager is made", "[manager]") {
  pfp::ManagerOptions o = quiet(2);
  o.timeout = ms(-1);
  REQUIRE_THROWS_AS(pfp::Manager<NumberHandler>(NumberHandler{}, o), pfp::error);
}

// =================================================================================================
// Shared data, per-item log lines, backends

namespace {
struct SharesLate {
  pfp::BuildContext* ctx = nullptr;
  auto build_items(pfp::BuildContext& c) {
    ctx = &c;
    c.share("early", 1);
    return pfp::generate([this, n = 0]() mutable -> std::optional<int> {
      if (n == 1) ctx->share("late", 2);  // the workers have started: refused
      if (n == 3) return std::nullopt;
      return n++;
    });
  }
  void handle_item(int, pfp::ItemContext& ctx) {
    if (ctx.shared("early") != pfp::Value(1)) throw std::runtime_error("early shared value lost");
    if (ctx.shared().contains("late")) throw std::runtime_error("late shared value seen");
    ctx.shared("never_shared");
  }
};
}  // namespace

TEST_CASE("shared data: set in build_items - read by every item - misuse says what to fix", "[manager][shared]") {
  pfp::ManagerOptions o = quiet(2);
  o.on_error = pfp::ErrorPolicy::continue_on_error;
  pfp::Manager<SharesLate> m(o);
  const pfp::ExitStatus st = m.run();
  INFO(describe(st));
  CHECK(st.code == 1);
  REQUIRE(st.failures.size() == 1);  // item 0; item 1 was never produced
  CHECK_THAT(st.failures[0].error, Catch::Matchers::Contains("no such shared value") &&
                                       Catch::Matchers::Contains("never_shared"));
  CHECK_THAT(st.message, Catch::Matchers::Contains("must be set inside build_items()"));
}

TEST_CASE("the logger gets every item with its worker - label and the handler's own lines", "[manager][log]") {
  NumberHandler h;
  h.count = 6;
  h.handle = [](int n, pfp::ItemContext& ctx) { ctx.log("item says " + std::to_string(n * n)); };
  const std::string out = run_capturing(h, [](pfp::ManagerOptions& o, int fd) { o.logger = pfp::fd_logger(fd); });
  INFO(out);
  CHECK(count_occurrences(out, ": done in ") == 6);
  CHECK(count_occurrences(out, "[worker ") == 12);
  CHECK(out.find("] 5: item says 25\n") != std::string::npos);
  CHECK(out.find("] 0: done in ") != std::string::npos);
}

TEST_CASE("the same handler on the threads and inline backends", "[manager][backends]") {
  for (pfp::Backend backend : {pfp::Backend::threads, pfp::Backend::inline_}) {
    NumberHandler h;
    h.count = 200;
    h.handle = [](int n, pfp::ItemContext& ctx) { ctx.stats.inc("sum", n); };
    pfp::ManagerOptions o = quiet(4);
    o.backend = backend;
    std::set<unsigned> workers;
    o.logger = [&workers](const pfp::ItemLog& l) { workers.insert(l.worker.value_or(99)); };
    pfp::Manager<NumberHandler> m(h, o);
    const pfp::ExitStatus st = m.run();
    INFO(describe(st));
    CHECK(st.ok());
    CHECK(st.stats.count("sum") == 200 * 199 / 2);
    CHECK(*workers.rbegin() < 4);
  }
}

namespace {
/// Counts the items its own copy handled and reports the count as a set value per worker slot.
struct CountsItsItems {
  int handled_here = 0;
  auto build_items() { return pfp::iota(0, 300); }
  void handle_item(int, pfp::ItemContext& ctx) {
    ++handled_here;
    ctx.stats.set("worker " + std::to_string(ctx.worker()), handled_here);
  }
};
}  // namespace

TEST_CASE("handler state is per worker on every backend", "[manager][backends]") {
  for (pfp::Backend backend : {pfp::Backend::processes, pfp::Backend::threads, pfp::Backend::inline_}) {
    pfp::ManagerOptions o = quiet(3);
    o.backend = backend;
    pfp::Manager<CountsItsItems> m(o);
    const pfp::ExitStatus st = m.run();
    INFO(describe(st));
    REQUIRE(st.ok());
    // A worker's results come back in the order it handled them, so the last value of each slot
    // is what its copy counted; copies that were not shared add up to the items.
    std::int64_t sum = 0;
    const pfp::Value counts = st.stats.to_object();
    for (const auto& [key, value] : counts.items()) sum += value.as<std::int64_t>();
    CHECK(sum == 300);
    CHECK(m.handler().handled_here == 0);  // the parent's prototype handled nothing
  }
}

namespace {
struct MoveOnly {
  MoveOnly() = default;
  MoveOnly(MoveOnly&&) = default;
  MoveOnly(const MoveOnly&) = delete;
  std::vector<int> build_items() { return {1, 2}; }
  void handle_item(int, pfp::ItemContext&) {}
};
}  // namespace

TEST_CASE("a move-only handler runs on processes and inline - threads refuse it saying why", "[manager][backends]") {
  pfp::Manager<MoveOnly> processes(quiet(2));
  CHECK(processes.run().ok());
  pfp::ManagerOptions o = quiet(2);
  o.backend = pfp::Backend::inline_;
  pfp::Manager<MoveOnly> inline_run(o);
  CHECK(inline_run.run().items_ok == 2);
  o.backend = pfp::Backend::threads;
  pfp::Manager<MoveOnly> threads(o);
  const pfp::ExitStatus st = threads.run();
  CHECK(st.code == 1);
  CHECK_THAT(st.message, Catch::Matchers::Contains("copy-constructible"));
}

// =================================================================================================
// Progress end to end

TEST_CASE("progress on a pseudo-terminal: a live line redrawn with CR - log lines above it", "[manager][progress]") {
  PtyChild c = start_on_pty([] {
    // stdin/stdout/stderr are the pty: the defaults (automatic progress and the stderr logger).
    NumberHandler h;
    h.count = 20;
    h.handle = [](int, pfp::ItemContext&) { sleep_ms(20); };
    pfp::ManagerOptions o;
    o.workers = 2;
    o.progress.refresh = ms(0);
    pfp::Manager<NumberHandler> m(h, o);
    return m.run().code;
  });
  std::string out;
  const int status = finish(c, out);
  INFO(out);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(out.find("\r\033[Kprogress: 0/20 (0%)") != std::string::npos);
  CHECK(out.find("\r\033[Kprogress: 20/20 (100%)") != std::string::npos);
  CHECK(out.find("items/s | ETA ") != std::string::npos);
  CHECK(count_occurrences(out, ": done in ") == 20);
  CHECK(out.find("\r\033[K[worker ") != std::string::npos);  // the live line is erased before a log line
}

TEST_CASE("progress elsewhere: plain lines - no carriage returns", "[manager][progress]") {
  NumberHandler h;
  h.count = 5;
  const std::string out = run_capturing(h, [](pfp::ManagerOptions& o, int fd) {
    o.progress.mode = pfp::ProgressMode::automatic;
    o.progress.fd = fd;
    o.progress.interval = ms(0);
  });
  INFO(out);
  CHECK(out.find('\r') == std::string::npos);
  CHECK(count_occurrences(out, "progress: ") == 6);  // one per item, one at the end
  CHECK(out.find("progress: 1/5 (20%)") != std::string::npos);
  CHECK(out.rfind("progress: 5/5 (100%)") != std::string::npos);
  CHECK(out.back() == '\n');
}
