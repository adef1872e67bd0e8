// Backend::mpi without MPI: the refusal when no pfp::mpi::Session is alive, and the byte formats
// the ranks exchange (detail/mpi_protocol.hpp), which need no <mpi.h>. The runs across ranks are
// tested under mpiexec in tests/mpi/ (ctest label "mpi").
#include "pfp_catch.hpp"

#include <pfp/detail/mpi_protocol.hpp>
#include <pfp/pfp.hpp>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>

using pfp::detail::HelloBlock;

TEST_CASE("Backend::mpi without a Session says what to do, and runs nothing") {
  pfp::Options o;
  o.backend = pfp::Backend::mpi;
  pfp::MultiProcessor<> mp({}, o);
  mp.register_function("f", [](const pfp::Value&, const pfp::Args&) { return 1; });
  REQUIRE_THROWS_WITH(mp.execute_parallel(), Catch::Matchers::Contains("no pfp::mpi::Session is alive"));
  pfp::MapOptions mo;
  mo.backend = pfp::Backend::mpi;
  const std::vector<int> items{1, 2};
  REQUIRE_THROWS_WITH(pfp::map_results(mo, [](int x) { return x; }, items),
                      Catch::Matchers::Contains("#include <pfp/mpi.hpp>"));
}

TEST_CASE("the feed's signature tells registrations apart") {
  std::vector<pfp::Result> a, b;
  a.reserve(2);
  b.reserve(2);
  auto ab = [](std::size_t i) { return std::string(i == 0 ? "a" : "b"); };
  auto ba = [](std::size_t i) { return std::string(i == 0 ? "b" : "a"); };
  auto a_b = [](std::size_t i) { return std::string(i == 0 ? "a" : ""); };
  pfp::detail::ListFeed<decltype(ab)> f1(a, 2, ab), f1_again(a, 2, ab);
  pfp::detail::ListFeed<decltype(ba)> f2(b, 2, ba);
  pfp::detail::ListFeed<decltype(a_b)> f3(b, 2, a_b);
  pfp::detail::ListFeed<decltype(ab)> f4(b, 1, ab);
  CHECK(f1.signature() == f1_again.signature());
  CHECK(f1.signature() != f2.signature());
  CHECK(f1.signature() != f3.signature());
  CHECK(f1.signature() != f4.signature());
}

TEST_CASE("hello blocks: a difference in byte order, version or registrations is named") {
  HelloBlock root;
  root.signature = 42;
  root.tasks = 3;
  HelloBlock same = root;
  same.workers = 7;  // may differ
  CHECK_NOTHROW(pfp::detail::check_hello(root, same, 1));
  HelloBlock swapped = root;
  swapped.byte_order = 0x0807060504030201ull;
  CHECK_THROWS_WITH(pfp::detail::check_hello(root, swapped, 2), Catch::Matchers::Contains("rank 2 has another byte order"));
  HelloBlock old = root;
  old.version = 1;
  CHECK_THROWS_WITH(pfp::detail::check_hello(root, old, 1), Catch::Matchers::Contains("another pfp version"));
  HelloBlock other = root;
  other.signature = 43;
  CHECK_THROWS_WITH(pfp::detail::check_hello(root, other, 3),
                    Catch::Matchers::Contains("rank 3 registered other functions than rank 0 (3 tasks"));
  other = root;
  other.tasks = pfp::detail::unknown_tasks;
  CHECK_THROWS_WITH(pfp::detail::check_hello(root, other, 1), Catch::Matchers::Contains("a stream of tasks"));
}

TEST_CASE("task batches round-trip, runs and payloads alike; truncation is refused") {
  std::string batch;
  pfp::detail::add_task(batch, 5, 9, "payload");
  pfp::detail::add_task_run(batch, 6, 10, 1000);
  pfp::detail::add_task(batch, 1006, 3, "");
  std::vector<std::string> seen;
  pfp::detail::for_each_task(batch, [&](std::uint64_t seq, std::uint64_t fn, std::uint64_t count, std::string_view p) {
    seen.push_back(std::to_string(seq) + "/" + std::to_string(fn) + "/" + std::to_string(count) + "/" + std::string(p));
  });
  CHECK(seen == std::vector<std::string>{"5/9/1/payload", "6/10/1000/", "1006/3/1/"});
  for (std::size_t cut : {std::size_t{3}, std::size_t{24 + 3}}) {
    INFO("cut at " << cut);
    CHECK_THROWS_WITH(pfp::detail::for_each_task(std::string_view(batch).substr(0, cut), [](auto...) {}),
                      Catch::Matchers::Contains("truncated"));
  }
}

TEST_CASE("result batches carry every field but the name; big strings stay out as bulk") {
  pfp::Result small;
  small.index = 12;
  small.status = pfp::Status::exception;
  small.error = "std::runtime_error: no";
  small.pid = 4321;
  small.attempts = 2;
  small.duration = std::chrono::nanoseconds(777);
  pfp::Result big;
  big.index = 13;
  big.status = pfp::Status::ok;
  big.result = pfp::Value{{"blob", pfp::Value::bytes(std::string(pfp::detail::remote_min_size, 'q'))}, {"n", 1}};
  std::string batch;
  std::vector<std::string_view> bulk;
  REQUIRE(pfp::detail::add_result(batch, small, bulk));
  REQUIRE(pfp::detail::add_result(batch, big, bulk));
  REQUIRE(bulk.size() == 1);
  CHECK(bulk[0].data() == big.result.at("blob").str().data());  // sent from where it is, not copied
  CHECK(batch.size() < 200);
  struct Bulk final : pfp::detail::RemoteSource {
    std::string_view from;
    std::string fetch(std::uint64_t, std::size_t size) override { return std::string(from.substr(0, size)); }
  } source;
  source.from = bulk[0];
  std::vector<pfp::Result> got;
  pfp::detail::for_each_result(batch, 1 << 20, [&](std::uint64_t seq, std::int32_t pid, std::uint32_t attempts, std::string_view frame) {
    pfp::Result r;
    pfp::detail::decode_result_frame_into(frame, 1 << 20, r, &source);
    r.index = static_cast<std::size_t>(seq);
    r.pid = pid;
    r.attempts = attempts;
    got.push_back(r);
  });
  REQUIRE(got.size() == 2);
  CHECK(got[0].index == 12);
  CHECK(got[0].status == pfp::Status::exception);
  CHECK(got[0].error == small.error);
  CHECK(got[0].pid == 4321);
  CHECK(got[0].attempts == 2);
  CHECK(got[0].duration.count() == 777);
  CHECK(got[1].index == 13);
  CHECK(got[1].result == big.result);
  CHECK_THROWS_WITH(pfp::detail::for_each_result(std::string_view(batch).substr(0, batch.size() - 1), 1 << 20, [](auto...) {}),
                    Catch::Matchers::Contains("truncated"));
}

// ---- one rank's side without MPI: the pool thread fed from a queue, and rank 0 alone

#include <pfp/detail/mpi_run.hpp>

namespace {

// A Transport of one rank: the handshake sees only itself, and no message ever travels.
struct Alone final : pfp::detail::Transport {
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allgather(const void* mine, std::size_t n, std::string& all) override { all.assign(static_cast<const char*>(mine), n); }
  void send(int, int, const char*, std::size_t, std::shared_ptr<const void>) override { throw pfp::error("no peer"); }
  bool sending() override { return false; }
  bool probe(int&, int&, std::size_t&) override { return false; }
  void recv(int, int, char*, std::size_t) override { throw pfp::error("no peer"); }
  void flush() override {}
  [[noreturn]] void abort(const std::string& why) override { throw pfp::error(why); }
};

}  // namespace

TEST_CASE("a rank's share: runs and single tasks with payloads each get one Result, with the run's seq") {
  pfp::detail::FeedRunner run = [](const pfp::detail::TaskView& t, pfp::Result& r) {
    if (t.payload == "xyz") throw std::runtime_error("xyz");
    r.result = pfp::Value(static_cast<long long>(t.fn) * 10 + static_cast<long long>(t.payload.size()));
  };
  pfp::Options o;
  o.workers = 2;
  pfp::detail::RankShare share(run, o, 3);
  share.start();
  share.add(100, 0, 500);          // a run: seqs 100..599, fns 0..499
  share.add(600, 7, 1, "xyz");     // one task with a payload
  share.add(601, 2, 1, "ab");
  share.finish();
  std::vector<pfp::Result> got;
  while (!share.ended()) {
    ::poll(nullptr, 0, 1);
    share.take(got);
  }
  share.take(got);
  share.join();
  REQUIRE(got.size() == 502);
  std::map<std::size_t, pfp::Result> by_seq;
  for (pfp::Result& r : got) by_seq[r.index] = std::move(r);
  REQUIRE(by_seq.size() == 502);
  for (std::size_t seq = 100; seq < 600; ++seq) {
    CHECK(by_seq[seq].result == pfp::Value(static_cast<long long>(seq - 100) * 10));
    CHECK(by_seq[seq].rank == 3);
  }
  CHECK(by_seq[600].status == pfp::Status::exception);
  CHECK(by_seq[601].result == pfp::Value(22));
  CHECK(share.outstanding() == 0);
}

TEST_CASE("rank 0 alone runs a MultiProcessor's list like the process backend, cancel included") {
  Alone alone;
  std::vector<pfp::Result> results;
  const std::size_t n = 3000;
  results.reserve(n);
  auto name_of = [](std::size_t i) { return "f" + std::to_string(i); };
  pfp::detail::ListFeed<decltype(name_of)> feed(results, n, name_of);
  pfp::detail::FeedRunner run = [](const pfp::detail::TaskView& t, pfp::Result& r) {
    if (t.fn % 100 == 5) throw std::invalid_argument("no");
    r.result = pfp::Value(static_cast<long long>(t.fn));
  };
  pfp::Options o;
  o.workers = 2;
  pfp::detail::run_feed_ranks(alone, run, o, feed, nullptr);
  REQUIRE(results.size() == n);
  for (std::size_t i = 0; i < n; ++i) {
    INFO(i << ": " << results[i].error);
    CHECK(results[i].function_name == name_of(i));
    CHECK(results[i].status == (i % 100 == 5 ? pfp::Status::exception : pfp::Status::ok));
    if (i % 100 != 5) CHECK(results[i].result == pfp::Value(static_cast<long long>(i)));
    CHECK(results[i].pid != 0);
  }

  // cancelled mid-run: running tasks are killed, the rest never start; every Result is there
  std::vector<pfp::Result> slow;
  slow.reserve(20);
  pfp::detail::ListFeed<decltype(name_of)> slow_feed(slow, 20, name_of);
  pfp::detail::FeedRunner sleeper = [](const pfp::detail::TaskView&, pfp::Result&) { ::poll(nullptr, 0, 30000); };
  pfp::detail::CancelState cancel;
  cancel.open();
  std::thread stop([&] {
    ::poll(nullptr, 0, 300);
    cancel.request();
  });
  const auto t0 = std::chrono::steady_clock::now();
  pfp::detail::run_feed_ranks(alone, sleeper, o, slow_feed, &cancel);
  stop.join();
  cancel.close();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
  REQUIRE(slow.size() == 20);
  for (const pfp::Result& r : slow) CHECK(r.status == pfp::Status::cancelled);
}

TEST_CASE("rank 0 refuses the batch Manager's feed (a side channel) before any handshake") {
  struct Side final : pfp::detail::Feed {
    std::optional<pfp::detail::Task> pull() override { return std::nullopt; }
    bool finished() override { return true; }
    void deliver(std::uint64_t, pfp::Result&&) override {}
    int side_fd() const override { return 0; }
  } side;
  Alone alone;
  pfp::Options o;
  CHECK_THROWS_WITH(pfp::detail::run_feed_ranks(alone, [](const pfp::detail::TaskView&, pfp::Result&) {}, o, side, nullptr),
                    Catch::Matchers::Contains("the batch Manager"));
}

TEST_CASE("a rank that cannot go on (a protocol error) ends the job through Transport::abort, not a hang") {
  struct Bogus final : pfp::detail::Transport {
    bool sent = false;
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void allgather(const void* mine, std::size_t n, std::string& all) override { all.assign(static_cast<const char*>(mine), n); }
    void send(int, int, const char*, std::size_t, std::shared_ptr<const void>) override {}
    bool sending() override { return false; }
    bool probe(int& source, int& tag, std::size_t& bytes) override {
      if (sent) return false;
      sent = true;
      source = 0, tag = 12345, bytes = 3;
      return true;
    }
    void recv(int, int, char* into, std::size_t n) override { std::memset(into, 'x', n); }
    void flush() override {}
    [[noreturn]] void abort(const std::string& why) override { throw pfp::error("aborted: " + why); }
  } bogus;
  std::vector<pfp::Result> results;
  results.reserve(4);
  auto name_of = [](std::size_t) { return std::string("f"); };
  pfp::detail::ListFeed<decltype(name_of)> feed(results, 4, name_of);
  pfp::Options o;
  o.workers = 1;
  CHECK_THROWS_WITH(pfp::detail::run_feed_ranks(bogus, [](const pfp::detail::TaskView&, pfp::Result&) {}, o, feed, nullptr),
                    Catch::Matchers::Contains("aborted: rank 0 cannot go on with the run: pfp::error: pfp::mpi: protocol error: rank 0 sent message tag 12345"));
}
