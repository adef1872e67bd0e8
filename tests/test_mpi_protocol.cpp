// Backend::mpi without MPI: the refusal when no pfp::mpi::Session is alive, and the byte formats
// the ranks exchange (detail/mpi_protocol.hpp), which need no <mpi.h>. The runs across ranks are
// tested under mpiexec in tests/mpi/ (ctest label "mpi").
#include "pfp_catch.hpp"

#include <pfp/detail/mpi_protocol.hpp>
#include <pfp/pfp.hpp>

#include <string>
#include <vector>

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
