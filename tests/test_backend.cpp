// The in-process backends (threads, inline) over test Feeds: every task delivered exactly once,
// exceptions with their type and what(), retries, cancel, fail-fast, a throwing source, streams
// that wait on a wake fd, real concurrency, worker slots -- and the Feed never called concurrently.
#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/detail/local_backends.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace backend_test {
struct custom_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace backend_test

namespace {

using namespace pfp_test;
using pfp::Backend;
using pfp::Result;
using pfp::Status;
using pfp::detail::Feed;
using pfp::detail::FeedRunner;
using pfp::detail::Task;
using pfp::detail::TaskView;

const char* backend_name(Backend b) {
  return b == Backend::threads ? "threads" : b == Backend::inline_ ? "inline" : "processes";
}

pfp::Options backend_opts(Backend b, unsigned workers) {
  pfp::Options o;
  o.backend = b;
  o.workers = workers;
  o.threads = pfp::ThreadPolicy::allow;
  return o;
}

void run_on(const FeedRunner& run, const pfp::Options& o, Feed& feed, pfp::detail::CancelState* cancel = nullptr) {
  pfp::detail::run_feed(run, o, feed, cancel);
}

/// Records what a backend does to a Feed: deliveries (in order), drops, and any two calls that
/// overlap in time (the backends promise to serialize every call).
class RecordingFeed : public Feed {
 public:
  void deliver(std::uint64_t seq, Result&& r) override {
    Enter e(*this);
    if (!r.ok()) failed_ = true;
    delivered_seq.push_back(seq);
    delivered.push_back(std::move(r));
    if (throw_on_deliver && seq == *throw_on_deliver) throw std::runtime_error("consumer broke at " + std::to_string(seq));
  }
  void drop_rest(const std::string& why) override {
    Enter e(*this);
    ++drops;
    drop_why = why;
    dropped += drop_remaining();
  }
  bool stop_requested() override {
    Enter e(*this);
    return stop_on_failure && failed_;
  }

  /// The Result delivered for seq; fails the test unless exactly one was.
  const Result& result_of(std::uint64_t seq) const {
    std::size_t found = delivered.size();
    int count = 0;
    for (std::size_t k = 0; k < delivered.size(); ++k)
      if (delivered_seq[k] == seq) {
        found = k;
        ++count;
      }
    INFO("seq " << seq);
    REQUIRE(count == 1);
    return delivered[found];
  }
  /// Every seq 0 .. n-1 delivered exactly once and nothing else.
  void require_each_once(std::size_t n) const {
    REQUIRE(delivered.size() == n);
    std::set<std::uint64_t> seen(delivered_seq.begin(), delivered_seq.end());
    REQUIRE(seen.size() == n);
    if (n) REQUIRE(*seen.rbegin() == n - 1);
  }

  bool stop_on_failure = false;
  std::optional<std::uint64_t> throw_on_deliver;  // deliver() of this seq throws (after recording it)
  std::vector<std::uint64_t> delivered_seq;
  std::vector<Result> delivered;
  int drops = 0;
  std::string drop_why;
  std::size_t dropped = 0;
  mutable std::atomic<bool> overlap{false};

 protected:
  virtual std::size_t drop_remaining() = 0;

  struct Enter {
    explicit Enter(const RecordingFeed& f) : feed(f) {
      if (feed.active_.fetch_add(1) != 0) feed.overlap = true;
    }
    ~Enter() { feed.active_.fetch_sub(1); }
    const RecordingFeed& feed;
  };

 private:
  bool failed_ = false;
  mutable std::atomic<int> active_{0};
};

/// A fixed list of tasks; pull() may be told to throw after some tasks.
class ListFeed : public RecordingFeed {
 public:
  explicit ListFeed(std::vector<Task> tasks) : tasks_(std::move(tasks)) {}
  /// n tasks of function fn with payloads "0", "1", ...
  ListFeed(std::size_t n, std::uint64_t fn) {
    for (std::size_t i = 0; i < n; ++i) tasks_.push_back(Task{fn, std::to_string(i)});
  }

  std::optional<Task> pull() override {
    Enter e(*this);
    if (throw_after && next_ == *throw_after) throw std::runtime_error("source broke after " + std::to_string(next_) + " tasks");
    if (next_ == tasks_.size()) return std::nullopt;
    return tasks_[next_++];
  }
  bool finished() override {
    Enter e(*this);
    return next_ == tasks_.size();
  }
  std::optional<std::size_t> size_hint() const override {
    Enter e(*this);
    return tasks_.size();
  }
  std::size_t pulled() const { return next_; }

  std::optional<std::size_t> throw_after;

 private:
  std::size_t drop_remaining() override {
    std::size_t n = tasks_.size() - next_;
    next_ = tasks_.size();
    return n;
  }
  std::vector<Task> tasks_;
  std::size_t next_ = 0;
};

/// Tasks pushed by another thread while the run goes on; wake_fd() is a self-pipe.
class StreamFeed : public RecordingFeed {
 public:
  StreamFeed() {
    int p[2];
    REQUIRE(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
    read_fd_ = p[0];
    write_fd_ = p[1];
  }
  ~StreamFeed() override {
    ::close(read_fd_);
    ::close(write_fd_);
  }
  StreamFeed(const StreamFeed&) = delete;
  StreamFeed& operator=(const StreamFeed&) = delete;

  void push(Task t) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(t));
    }
    ring();
  }
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
    }
    ring();
  }

  std::optional<Task> pull() override {
    Enter e(*this);
    char buf[64];
    while (::read(read_fd_, buf, sizeof buf) > 0) {
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.empty()) return std::nullopt;
    Task t = std::move(queue_.front());
    queue_.pop_front();
    return t;
  }
  bool finished() override {
    Enter e(*this);
    std::lock_guard<std::mutex> lock(mutex_);
    return closed_ && queue_.empty();
  }
  int wake_fd() const override {
    Enter e(*this);
    return read_fd_;
  }

 private:
  void ring() {
    const char byte = 1;
    (void)!::write(write_fd_, &byte, 1);
  }
  std::size_t drop_remaining() override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t n = queue_.size();
    queue_.clear();
    closed_ = true;
    return n;
  }
  std::mutex mutex_;
  std::deque<Task> queue_;
  bool closed_ = false;
  int read_fd_ = -1;
  int write_fd_ = -1;
};

// Functions of the test runner, chosen by Task::fn; the payload is the argument.
enum Fn : std::uint64_t { twice, out_of_range, throw_int, throw_custom, throw_cstr, nap, nap_then_throw, deep, big };

/// The runner most tests use. twice: {"n": 2*payload, "s": payload}; nap: sleeps payload ms;
/// nap_then_throw: sleeps payload ms, then throws; deep: arrays nested payload levels deep;
/// big: a string of payload bytes.
void basic_runner(const TaskView& t, Result& r) {
  const std::string arg(t.payload);
  switch (t.fn) {
    case twice: r.result = pfp::Value{{"n", 2 * std::stoi(arg)}, {"s", arg}}; return;
    case out_of_range: r.result = "set before the throw"; throw std::out_of_range("index " + arg);
    case throw_int: throw 42;
    case throw_custom: throw backend_test::custom_error("custom " + arg);
    case throw_cstr: throw "a C string";
    case nap: sleep_ms(std::stol(arg)); r.result = arg; return;
    case nap_then_throw: sleep_ms(std::stol(arg)); throw std::runtime_error("failed after " + arg + " ms");
    case deep: {
      pfp::Value v = 1;
      for (int i = std::stoi(arg); i > 0; --i) {
        pfp::Value outer = pfp::Value::array();
        outer.push_back(std::move(v));
        v = std::move(outer);
      }
      r.result = std::move(v);
      return;
    }
    case big: r.result = std::string(std::stoul(arg), 'x'); return;
    default: throw std::logic_error("unknown fn " + std::to_string(t.fn));
  }
}

const Backend in_process[] = {Backend::inline_, Backend::threads};

}  // namespace

TEST_CASE("backend: every task is delivered exactly once with its own Result", "[backend]") {
  for (Backend b : in_process) {
    for (unsigned workers : {1u, 2u, 4u, 7u}) {
      INFO(backend_name(b) << " workers=" << workers);
      ListFeed feed(40, twice);
      run_on(basic_runner, backend_opts(b, workers), feed);
      feed.require_each_once(40);
      for (std::uint64_t i = 0; i < 40; ++i) {
        const Result& r = feed.result_of(i);
        INFO(describe(r));
        CHECK(r.status == Status::ok);
        CHECK(r.error.empty());
        CHECK(r.index == i);
        CHECK(r.function_name.empty());
        CHECK(r.pid == getpid());
        CHECK(r.attempts == 1);
        CHECK(r.result == pfp::Value{{"n", 2 * static_cast<int>(i)}, {"s", std::to_string(i)}});
      }
      CHECK(feed.drops == 0);
      CHECK_FALSE(feed.overlap);
    }
  }
}

TEST_CASE("backend: an exception becomes Status::exception with its type and what()", "[backend]") {
  for (Backend b : in_process) {
    INFO(backend_name(b));
    ListFeed feed({Task{out_of_range, "7"}, Task{throw_int, ""}, Task{throw_custom, "x"}, Task{throw_cstr, ""},
                   Task{twice, "1"}});
    run_on(basic_runner, backend_opts(b, 3), feed);
    feed.require_each_once(5);
    for (std::uint64_t i = 0; i < 4; ++i) {
      INFO(describe(feed.result_of(i)));
      CHECK(feed.result_of(i).status == Status::exception);
      CHECK(feed.result_of(i).result.is_null());
      CHECK(feed.result_of(i).attempts == 1);
    }
    CHECK_THAT(feed.result_of(0).error, Catch::Matchers::Contains("std::out_of_range"));
    CHECK_THAT(feed.result_of(0).error, Catch::Matchers::Contains("index 7"));
    CHECK_THAT(feed.result_of(1).error, Catch::Matchers::Contains("int"));
    CHECK_THAT(feed.result_of(2).error, Catch::Matchers::Contains("backend_test::custom_error"));
    CHECK_THAT(feed.result_of(2).error, Catch::Matchers::Contains("custom x"));
    CHECK_THAT(feed.result_of(3).error, Catch::Matchers::Contains("a C string"));
    CHECK(feed.result_of(4).ok());
    CHECK_FALSE(feed.overlap);
  }
}

TEST_CASE("backend: a task's duration is measured", "[backend]") {
  for (Backend b : in_process) {
    INFO(backend_name(b));
    ListFeed feed({Task{nap, "60"}, Task{twice, "2"}});
    run_on(basic_runner, backend_opts(b, 2), feed);
    feed.require_each_once(2);
    CHECK(feed.result_of(0).duration >= std::chrono::milliseconds(60));
    CHECK(feed.result_of(0).duration < std::chrono::seconds(10));
    CHECK(feed.result_of(1).duration < feed.result_of(0).duration);
  }
}

TEST_CASE("backend: retries repeat a throwing task only with retry_exceptions", "[backend]") {
  struct Case {
    unsigned retries;
    bool retry_exceptions;
    int failures;  // the task throws on its first `failures` attempts
    Status status;
    unsigned attempts;
  };
  const Case cases[] = {
      {2, true, 2, Status::ok, 3},
      {2, false, 2, Status::exception, 1},
      {1, true, 2, Status::exception, 2},
      {5, true, 0, Status::ok, 1},
  };
  for (Backend b : in_process) {
    for (const Case& c : cases) {
      INFO(backend_name(b) << " retries=" << c.retries << " retry_exceptions=" << c.retry_exceptions
                           << " failures=" << c.failures);
      std::mutex m;
      std::map<std::uint64_t, int> calls;
      FeedRunner flaky = [&](const TaskView& t, Result& r) {
        int n;
        {
          std::lock_guard<std::mutex> lock(m);
          n = ++calls[t.seq];
        }
        if (n <= c.failures) throw std::runtime_error("attempt " + std::to_string(n) + " failed");
        r.result = n;
      };
      pfp::Options o = backend_opts(b, 2);
      o.retries = c.retries;
      o.retry_exceptions = c.retry_exceptions;
      ListFeed feed(3, 0);
      run_on(flaky, o, feed);
      feed.require_each_once(3);
      for (std::uint64_t i = 0; i < 3; ++i) {
        const Result& r = feed.result_of(i);
        INFO(describe(r));
        CHECK(r.status == c.status);
        CHECK(r.attempts == c.attempts);
        CHECK(calls[i] == static_cast<int>(c.attempts));
        if (c.status == Status::ok) CHECK(r.result == pfp::Value(static_cast<int>(c.attempts)));
        if (c.status != Status::ok) CHECK_THAT(r.error, Catch::Matchers::Contains("attempt " + std::to_string(c.attempts)));
      }
    }
  }
}

TEST_CASE("backend: a cancel stops the pulling and drops the rest", "[backend]") {
  SECTION("inline: nothing after the cancelling task runs") {
    pfp::detail::CancelState cancel;
    cancel.open();
    FeedRunner run = [&](const TaskView& t, Result& r) {
      if (t.seq == 2) cancel.request();
      r.result = static_cast<int>(t.seq);
    };
    ListFeed feed(10, 0);
    run_on(run, backend_opts(Backend::inline_, 1), feed, &cancel);
    cancel.close();
    feed.require_each_once(3);
    CHECK(feed.result_of(2).ok());  // a running task finishes: threads and the caller cannot be killed
    CHECK(feed.drops == 1);
    CHECK(feed.drop_why == "cancelled before it started");
    CHECK(feed.dropped == 7);
    CHECK(feed.pulled() == 10);  // drop_rest took the rest; nothing else was pulled
  }
  SECTION("threads: the tasks in flight are delivered, the rest dropped") {
    pfp::detail::CancelState cancel;
    cancel.open();
    FeedRunner run = [&](const TaskView& t, Result& r) {
      if (t.seq == 2) cancel.request();
      sleep_ms(20);
      r.result = static_cast<int>(t.seq);
    };
    ListFeed feed(30, 0);
    run_on(run, backend_opts(Backend::threads, 3), feed, &cancel);
    cancel.close();
    CHECK(feed.drops == 1);
    CHECK(feed.dropped > 0);
    CHECK(feed.delivered.size() + feed.dropped == 30);
    CHECK(feed.delivered.size() <= 6);
    feed.require_each_once(feed.delivered.size());
    for (const Result& r : feed.delivered) CHECK(r.ok());
    CHECK_FALSE(feed.overlap);
  }
}

TEST_CASE("backend: a cancel wakes a run that waits for a stream", "[backend]") {
  for (Backend b : in_process) {
    INFO(backend_name(b));
    pfp::detail::CancelState cancel;
    cancel.open();
    StreamFeed feed;
    feed.push(Task{twice, "1"});
    std::thread canceller([&] {
      sleep_ms(150);
      cancel.request();
    });
    const auto start = Clock::now();
    run_on(basic_runner, backend_opts(b, 3), feed, &cancel);
    const auto took = elapsed_ms(start);
    canceller.join();
    cancel.close();
    CHECK(took >= 100);
    CHECK(took < 5000);
    feed.require_each_once(1);
    CHECK(feed.drops == 1);
    CHECK_FALSE(feed.overlap);
  }
}

TEST_CASE("backend: stop_requested() after the first failure stops the run", "[backend]") {
  SECTION("inline") {
    ListFeed feed({Task{twice, "0"}, Task{throw_int, ""}, Task{twice, "2"}, Task{twice, "3"}, Task{twice, "4"}});
    feed.stop_on_failure = true;
    run_on(basic_runner, backend_opts(Backend::inline_, 1), feed);
    feed.require_each_once(2);
    CHECK(feed.result_of(1).status == Status::exception);
    CHECK(feed.drops == 1);
    CHECK(feed.dropped == 3);
  }
  SECTION("threads") {
    std::vector<Task> tasks{Task{nap, "30"}, Task{throw_int, ""}};
    for (int i = 0; i < 20; ++i) tasks.push_back(Task{nap, "30"});
    ListFeed feed(tasks);
    feed.stop_on_failure = true;
    run_on(basic_runner, backend_opts(Backend::threads, 2), feed);
    CHECK(feed.drops == 1);
    CHECK(feed.delivered.size() <= 4);
    CHECK(feed.delivered.size() + feed.dropped == 22);
    feed.require_each_once(feed.delivered.size());
    CHECK(feed.result_of(1).status == Status::exception);
    CHECK_FALSE(feed.overlap);
  }
  SECTION("threads, while other threads wait for a stream that never ends") {
    StreamFeed feed;
    feed.stop_on_failure = true;
    feed.push(Task{nap_then_throw, "100"});  // meanwhile the other threads settle down to wait
    const auto start = Clock::now();
    run_on(basic_runner, backend_opts(Backend::threads, 4), feed);
    CHECK(elapsed_ms(start) < 5000);
    feed.require_each_once(1);
    CHECK(feed.drops == 1);
    CHECK_FALSE(feed.overlap);
  }
}

TEST_CASE("backend: a pull() that throws is rethrown once the tasks that ran are delivered", "[backend]") {
  for (Backend b : in_process) {
    INFO(backend_name(b));
    ListFeed feed(10, nap);  // each task naps payload ms: 0, 1, 2
    feed.throw_after = 3;
    REQUIRE_THROWS_WITH(run_on(basic_runner, backend_opts(b, 4), feed), "source broke after 3 tasks");
    feed.require_each_once(3);
    for (std::uint64_t i = 0; i < 3; ++i) CHECK(feed.result_of(i).ok());
    CHECK(feed.drops == 0);
    CHECK_FALSE(feed.overlap);
  }
}

TEST_CASE("backend: a stream's tasks run as they arrive, until it is closed", "[backend]") {
  for (Backend b : in_process) {
    INFO(backend_name(b));
    StreamFeed feed;
    std::thread producer([&] {
      for (int i = 0; i < 20; ++i) {
        feed.push(Task{twice, std::to_string(i)});
        sleep_ms(i == 10 ? 100 : 2);  // a pause: every worker is idle and waiting
      }
      feed.close();
    });
    const auto start = Clock::now();
    run_on(basic_runner, backend_opts(b, 3), feed);
    const auto took = elapsed_ms(start);
    producer.join();
    feed.require_each_once(20);
    std::multiset<std::int64_t> values;
    for (const Result& r : feed.delivered) values.insert(r.result.at("n").as<std::int64_t>());
    for (int i = 0; i < 20; ++i) CHECK(values.count(2 * i) == 1);
    CHECK(took < 5000);
    CHECK(feed.drops == 0);
    CHECK_FALSE(feed.overlap);
  }
}

TEST_CASE("backend: threads run tasks concurrently", "[backend]") {
  // Each task waits (up to 10 s) for the other to arrive: only concurrent workers pass quickly.
  std::atomic<int> arrived{0};
  FeedRunner barrier = [&](const TaskView&, Result& r) {
    arrived.fetch_add(1);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (arrived.load() < 2 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    r.result = arrived.load() >= 2;
  };
  ListFeed feed(2, 0);
  const auto start = Clock::now();
  run_on(barrier, backend_opts(Backend::threads, 2), feed);
  CHECK(elapsed_ms(start) < 9000);
  feed.require_each_once(2);
  CHECK(feed.result_of(0).result == pfp::Value(true));
  CHECK(feed.result_of(1).result == pfp::Value(true));
}

TEST_CASE("backend: worker slots are within range and no more tasks run at once than workers", "[backend]") {
  struct Case {
    Backend backend;
    unsigned workers;
    std::size_t tasks;
    unsigned max_slots;  // slots must be below this
  };
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const Case cases[] = {
      {Backend::inline_, 4, 12, 1},
      {Backend::threads, 3, 30, 3},
      {Backend::threads, 8, 2, 2},  // never more threads than the feed has tasks (size_hint)
      {Backend::threads, 0, 12, hw},  // 0 = hardware concurrency
  };
  for (const Case& c : cases) {
    INFO(backend_name(c.backend) << " workers=" << c.workers << " tasks=" << c.tasks);
    std::atomic<int> active{0};
    std::atomic<int> most{0};
    FeedRunner run = [&](const TaskView& t, Result& r) {
      const int now = active.fetch_add(1) + 1;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      sleep_ms(15);
      active.fetch_sub(1);
      r.result = static_cast<int>(t.worker);
    };
    ListFeed feed(c.tasks, 0);
    run_on(run, backend_opts(c.backend, c.workers), feed);
    feed.require_each_once(c.tasks);
    std::set<int> slots;
    for (const Result& r : feed.delivered) slots.insert(r.result.as<int>());
    CHECK(*slots.rbegin() < static_cast<int>(c.max_slots));
    CHECK(most.load() <= static_cast<int>(c.max_slots));
    if (c.backend == Backend::threads && c.tasks >= 30) CHECK(slots.size() >= 2);
  }
}

TEST_CASE("backend: a result over Options::max_result_bytes is refused", "[backend]") {
  for (Backend b : in_process) {
    INFO(backend_name(b));
    FeedRunner big = [](const TaskView& t, Result& r) { r.result = std::string(t.fn ? 1000 : 10, 'x'); };
    pfp::Options o = backend_opts(b, 2);
    o.max_result_bytes = 100;
    ListFeed feed({Task{0, ""}, Task{1, ""}});
    run_on(big, o, feed);
    feed.require_each_once(2);
    CHECK(feed.result_of(0).ok());
    CHECK(feed.result_of(1).status == Status::exception);
    CHECK(feed.result_of(1).result.is_null());
    CHECK_THAT(feed.result_of(1).error, Catch::Matchers::Contains("max_result_bytes"));
  }
}

TEST_CASE("backend: a deliver() that throws stops the run as if cancelled and is rethrown", "[backend]") {
  for (Backend b : in_process) {
    INFO(backend_name(b));
    ListFeed feed(12, nap);  // naps 0 .. 11 ms
    feed.throw_on_deliver = 2;
    REQUIRE_THROWS_WITH(run_on(basic_runner, backend_opts(b, 3), feed), "consumer broke at 2");
    CHECK(feed.drops == 1);
    CHECK(feed.drop_why == "cancelled before it started");
    CHECK(feed.delivered.size() + feed.dropped == 12);
    CHECK(feed.delivered.size() < 12);
    feed.require_each_once(feed.delivered.size());
    if (b == Backend::inline_) CHECK(feed.delivered.size() == 3);
    CHECK_FALSE(feed.overlap);
  }
}

TEST_CASE("backend: run_feed refuses a value that is not a Backend", "[backend]") {
  ListFeed feed(3, twice);
  pfp::Options o = backend_opts(Backend::inline_, 1);
  o.backend = static_cast<Backend>(7);
  REQUIRE_THROWS_AS(run_on(basic_runner, o, feed), pfp::error);
  REQUIRE_THROWS_WITH(run_on(basic_runner, o, feed), Catch::Matchers::Contains("Options::backend"));
  CHECK(feed.delivered.empty());
}

TEST_CASE("backend: processes, threads and inline give the same Results", "[backend]") {
  // Everything a function does by returning or throwing (crashes and timeouts excepted: only
  // processes survive them). Exceptions are retried once, so attempts differ from 1 there.
  const std::vector<Task> tasks{
      Task{twice, "4"},        Task{out_of_range, "9"}, Task{throw_int, ""},  Task{throw_custom, "y"},
      Task{throw_cstr, ""},    Task{nap, "20"},         Task{twice, "-3"},    Task{deep, "2005"},
      Task{big, "1000"},       Task{big, "10"},
  };
  std::vector<std::vector<Result>> by_backend;
  for (Backend b : {Backend::processes, Backend::threads, Backend::inline_}) {
    INFO(backend_name(b));
    pfp::Options o = backend_opts(b, 3);
    o.retries = 1;
    o.retry_exceptions = true;
    o.max_result_bytes = 500;
    ListFeed feed(tasks);
    run_on(basic_runner, o, feed);
    feed.require_each_once(tasks.size());
    std::vector<Result> results;
    for (std::uint64_t i = 0; i < tasks.size(); ++i) results.push_back(feed.result_of(i));
    by_backend.push_back(std::move(results));
    CHECK_FALSE(feed.overlap);
  }
  const std::vector<Result>& processes = by_backend[0];
  for (std::size_t k = 1; k < by_backend.size(); ++k) {
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      const Result& want = processes[i];
      const Result& got = by_backend[k][i];
      INFO((k == 1 ? "threads" : "inline") << " task " << i << "\n processes: " << describe(want) << "\n this: " << describe(got));
      CHECK(got.status == want.status);
      CHECK(got.result == want.result);
      CHECK(got.attempts == want.attempts);
      CHECK(got.index == want.index);
      CHECK(got.function_name == want.function_name);
      if (tasks[i].fn == big && !want.ok()) {
        // the size in the message counts the process backend's frame header fields too
        CHECK_THAT(got.error, Catch::Matchers::Contains("exceeds Options::max_result_bytes (500 bytes)"));
        CHECK_THAT(want.error, Catch::Matchers::Contains("exceeds Options::max_result_bytes (500 bytes)"));
      } else {
        CHECK(got.error == want.error);
      }
      CHECK(got.pid == getpid());
      CHECK(want.pid != getpid());
    }
  }
  // The rows say what they should, whichever backend ran them.
  CHECK(processes[0].result == pfp::Value{{"n", 8}, {"s", "4"}});
  CHECK(processes[1].attempts == 2);
  CHECK_THAT(processes[1].error, Catch::Matchers::Contains("std::out_of_range: index 9"));
  CHECK_THAT(processes[3].error, Catch::Matchers::Contains("backend_test::custom_error: custom y"));
  CHECK_THAT(processes[7].error, Catch::Matchers::Contains("could not serialize the result"));
  CHECK(processes[8].status == Status::exception);
  CHECK(processes[9].ok());
}
