// Backend::mpi, run under mpiexec -n 1, 2 and 4 (tests/mpi/CMakeLists.txt registers each tag
// with each rank count and transport). Every rank runs every TEST_CASE, in the same order: the
// runs are collective. Checks use CHECK, not REQUIRE, after a run, so that a failure on one rank
// never makes it skip a collective the others wait in.
#include "pfp_catch.hpp"

#include <pfp/mpi.hpp>
#include <pfp/pfp.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

pfp::mpi::Session& session() {
  static pfp::mpi::Session s;
  return s;
}

pfp::Options mpi_options(unsigned workers = 2) {
  pfp::Options o;
  o.backend = pfp::Backend::mpi;
  o.workers = workers;
  return o;
}

// An error text without the worker's pid, which differs from run to run.
std::string without_pid(const std::string& e) {
  std::string out;
  for (std::size_t i = 0; i < e.size(); ++i) {
    out += e[i];
    if (e.compare(i, 8, "process ") == 0) {
      out += "rocess N";
      for (i += 8; i < e.size() && e[i] >= '0' && e[i] <= '9';) ++i;
      --i;
    }
  }
  return out;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

enum Kind { ok, throws, crashes, hangs, kinds };

// The fault matrix: copy c of the four kinds, in this order. Each rank's first window is four
// tasks (two workers, two tasks each), so copy r starts on rank r: every rank gets every kind.
// Even copies crash by SIGSEGV, odd ones by _Exit(7).
void register_matrix(pfp::MultiProcessor<>& mp, int copies) {
  for (int c = 0; c < copies; ++c)
    for (int k = 0; k < kinds; ++k)
      mp.register_function("kind" + std::to_string(k) + "." + std::to_string(c), [k, c](const pfp::Value&, const pfp::Args&) {
        switch (k) {
          case ok: return pfp::Value{{"copy", c}, {"text", std::string(100, 'x')}};
          case throws: throw std::runtime_error("no " + std::to_string(c));
          case crashes:
            if (c % 2 == 0) std::raise(SIGSEGV);
            std::_Exit(7);
          case hangs: std::this_thread::sleep_for(std::chrono::seconds(20)); break;
        }
        return pfp::Value();
      });
}

}  // namespace

TEST_CASE("fault matrix: the same Results as the local process backend, on every rank", "[core]") {
  const int size = session().size();
  pfp::Options o = mpi_options();
  o.timeout = std::chrono::milliseconds(400);
  pfp::MultiProcessor<> mp({}, o);
  register_matrix(mp, 2 * size);
  const std::vector<pfp::Result> got = mp.execute_parallel();
  REQUIRE(got.size() == mp.size());
  if (session().rank() != 0) {
    for (const pfp::Result& r : got) {
      CHECK(r.status == pfp::Status::cancelled);
      CHECK_THAT(r.error, Catch::Matchers::Contains("gathered on rank 0"));
    }
    return;
  }
  pfp::Options local = o;
  local.backend = pfp::Backend::processes;
  local.threads = pfp::ThreadPolicy::allow;  // MPI's own threads
  pfp::MultiProcessor<> ref({}, local);
  register_matrix(ref, 2 * size);
  const std::vector<pfp::Result> want = ref.execute_parallel();
  std::map<int, std::set<pfp::Status>> seen;  // by rank
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("function " << got[i].function_name << " on rank " << got[i].rank << ": " << got[i].error);
    CHECK(got[i].function_name == want[i].function_name);
    CHECK(got[i].index == i);
    CHECK(got[i].status == want[i].status);
    CHECK(without_pid(got[i].error) == without_pid(want[i].error));
    CHECK(got[i].result == want[i].result);
    CHECK(got[i].attempts == want[i].attempts);
    CHECK(got[i].pid != 0);
    seen[got[i].rank].insert(got[i].status);
  }
  const std::set<pfp::Status> all{pfp::Status::ok, pfp::Status::exception, pfp::Status::crashed, pfp::Status::timed_out};
  for (int r = 0; r < size; ++r) {
    INFO("rank " << r);
    CHECK(seen[r] == all);
  }
}

TEST_CASE("a registration mismatch fails on every rank within 5 s", "[core]") {
  const int size = session().size();
  pfp::MultiProcessor<> mp({}, mpi_options());
  for (int i = 0; i < 6; ++i) mp.register_function("f" + std::to_string(i), [](const pfp::Value&, const pfp::Args&) { return 1; });
  if (session().rank() == size - 1 && size > 1) mp.register_function("only_here", [](const pfp::Value&, const pfp::Args&) { return 2; });
  const auto t0 = Clock::now();
  if (size == 1) {
    CHECK(mp.execute_parallel().size() == 6);
    return;
  }
  CHECK_THROWS_WITH(mp.execute_parallel(), Catch::Matchers::Contains("registered other functions than rank 0"));
  std::printf("rank %d: the mismatch was an error after %.3f s\n", session().rank(), seconds_since(t0));
  CHECK(seconds_since(t0) < 5.0);
  // The ranks are still in step: the next run works.
  pfp::MultiProcessor<> again({}, mpi_options());
  again.register_function("g", [](const pfp::Value&, const pfp::Args&) { return 3; });
  const auto& r = again.execute_parallel();
  if (session().rank() == 0) CHECK(r.at(0).result == pfp::Value(3));
}

TEST_CASE("cancel() on rank 0 stops running functions on every rank within 1 s", "[core]") {
  const int size = session().size();
  pfp::Options o = mpi_options();
  o.threads = pfp::ThreadPolicy::allow;  // the canceller thread on rank 0
  pfp::MultiProcessor<> mp({}, o);
  for (int i = 0; i < 6 * size; ++i)
    mp.register_function("sleep" + std::to_string(i), [](const pfp::Value&, const pfp::Args&) {
      std::this_thread::sleep_for(std::chrono::seconds(30));
      return 0;
    });
  std::thread canceller;
  Clock::time_point cancelled_at{};
  if (session().rank() == 0)
    canceller = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      cancelled_at = Clock::now();
      mp.cancel();
    });
  const auto t0 = Clock::now();
  const std::vector<pfp::Result> got = mp.execute_parallel();
  const double took = seconds_since(t0);
  CHECK(took < 10.0);
  if (session().rank() != 0) return;
  canceller.join();
  std::printf("cancel() to the last Result of %d ranks: %.3f s\n", size, seconds_since(cancelled_at));
  CHECK(seconds_since(cancelled_at) < 1.0);
  std::set<int> killed_on;  // ranks where a running function was stopped
  for (const pfp::Result& r : got) {
    CHECK(r.status == pfp::Status::cancelled);
    if (r.pid != 0) killed_on.insert(r.rank);
  }
  CHECK(static_cast<int>(killed_on.size()) == size);
}

TEST_CASE("10,000 mixed functions: one Result each, in order, spread over every rank", "[order]") {
  const int size = session().size();
  pfp::MultiProcessor<> mp({}, mpi_options());
  const int n = 10000;
  for (int i = 0; i < n; ++i)
    mp.register_function("m" + std::to_string(i), [i](const pfp::Value&, const pfp::Args&) -> pfp::Value {
      if (i % 1000 == 999) std::raise(SIGSEGV);
      if (i % 7 == 3) throw std::invalid_argument("seven " + std::to_string(i));
      if (i % 5 == 1) return std::string(static_cast<std::size_t>(i % 300), 'a');
      return i;
    });
  const std::vector<pfp::Result> got = mp.execute_parallel();
  REQUIRE(got.size() == static_cast<std::size_t>(n));
  if (session().rank() != 0) return;
  std::map<int, int> per_rank;
  for (int i = 0; i < n; ++i) {
    const pfp::Result& r = got[static_cast<std::size_t>(i)];
    INFO("function " << i << " " << pfp::to_string(r.status) << " " << r.error);
    CHECK(r.index == static_cast<std::size_t>(i));
    CHECK(r.function_name == "m" + std::to_string(i));
    if (i % 1000 == 999) {
      CHECK(r.status == pfp::Status::crashed);
      CHECK_THAT(r.error, Catch::Matchers::Contains("SIGSEGV"));
    } else if (i % 7 == 3) {
      CHECK(r.status == pfp::Status::exception);
      CHECK(r.error == "std::invalid_argument: seven " + std::to_string(i));
    } else if (i % 5 == 1) {
      CHECK(r.result == pfp::Value(std::string(static_cast<std::size_t>(i % 300), 'a')));
    } else {
      CHECK(r.result == pfp::Value(i));
    }
    ++per_rank[r.rank];
  }
  for (int r = 0; r < size; ++r) {
    INFO("rank " << r << " ran " << per_rank[r]);
    CHECK(per_rank[r] > 0);
  }
}

TEST_CASE("a 1 GiB result arrives intact from the last rank", "[big]") {
  const int size = session().size();
  const int me = session().rank();
  // 1 GiB unless PFP_MPI_BIG_MIB says otherwise (the TCP run sends less: the path is the same).
  const char* mib = std::getenv("PFP_MPI_BIG_MIB");
  const std::size_t big = (mib ? std::strtoull(mib, nullptr, 10) : 1024) << 20;
  pfp::MultiProcessor<> mp({}, mpi_options());
  // Rank k's first window is tasks 4k .. 4k+3 (two workers, two tasks each): task 4(size-1) runs on
  // the last rank; only that rank's copy of it makes the big string.
  const int target = 4 * (size - 1);
  for (int i = 0; i < 4 * size; ++i)
    mp.register_function("b" + std::to_string(i), [i, me, target, size, big](const pfp::Value&, const pfp::Args&) -> pfp::Value {
      if (i != target || me != size - 1) return i;
      std::string s(big, '\0');
      for (std::size_t j = 0; j < big; j += 4096) s[j] = static_cast<char>((j >> 12) * 131u);
      s[big - 1] = 'z';
      return s;
    });
  const auto t0 = Clock::now();
  const std::vector<pfp::Result> got = mp.execute_parallel();
  if (me != 0) return;
  std::printf("%zu MiB result from rank %d: run took %.2f s\n", big >> 20, size - 1, seconds_since(t0));
  const pfp::Result& r = got.at(static_cast<std::size_t>(target));
  INFO(r.error);
  REQUIRE(r.status == pfp::Status::ok);
  CHECK(r.rank == size - 1);
  const std::string& s = r.result.str();
  REQUIRE(s.size() == big);
  std::size_t wrong = 0;
  for (std::size_t j = 0; j < big; ++j) {
    const char want = j == big - 1 ? 'z' : (j % 4096 == 0 ? static_cast<char>((j >> 12) * 131u) : '\0');
    wrong += s[j] != want;
  }
  CHECK(wrong == 0);
  for (int i = 0; i < 4 * size; ++i)
    if (i != target) CHECK(got.at(static_cast<std::size_t>(i)).result == pfp::Value(i));
}

TEST_CASE("ranks waiting for long functions use under 5 % CPU", "[idle]") {
  const int size = session().size();
  pfp::MultiProcessor<> mp({}, mpi_options());
  for (int i = 0; i < size; ++i)
    mp.register_function("nap" + std::to_string(i), [](const pfp::Value&, const pfp::Args&) {
      std::this_thread::sleep_for(std::chrono::seconds(2));
      return 1;
    });
  rusage before{}, after{};
  ::getrusage(RUSAGE_SELF, &before);
  const auto t0 = Clock::now();
  mp.execute_parallel();
  const double wall = seconds_since(t0);
  ::getrusage(RUSAGE_SELF, &after);
  auto secs = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; };
  const double cpu = secs(after.ru_utime) - secs(before.ru_utime) + secs(after.ru_stime) - secs(before.ru_stime);
  INFO("rank " << session().rank() << ": " << cpu << " s CPU in " << wall << " s");
  std::printf("rank %d idle waiting: %.3f s CPU in %.3f s (%.2f %%)\n", session().rank(), cpu, wall, 100 * cpu / wall);
  CHECK(wall >= 1.9);
  CHECK(cpu < 0.05 * wall);
}

TEST_CASE("Executor: rank 0 submits, the other ranks serve and are released at shutdown", "[core]") {
  const int size = session().size();
  pfp::Executor pool(mpi_options());
  auto square = pool.declare("square", [](int x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return x * x;
  });
  auto crash = pool.declare("crash", [](int) {
    std::raise(SIGSEGV);
    return 0;
  });
  if (session().serve(pool)) {  // ranks 1..: back here once rank 0's pool shut down
    CHECK_THROWS_WITH(pool.submit(square, 2), Catch::Matchers::Contains("serves rank 0's Executor"));
    return;
  }
  std::vector<pfp::Future<int>> futures;
  for (int i = 0; i < 40 * size; ++i) futures.push_back(pool.submit(square, i));
  auto crashed = pool.submit(crash, 1);
  std::set<int> ranks;
  for (int i = 0; i < 40 * size; ++i) {
    CHECK(futures[static_cast<std::size_t>(i)].get() == i * i);
    ranks.insert(futures[static_cast<std::size_t>(i)].result().rank);
  }
  CHECK(crashed.result().status == pfp::Status::crashed);
  CHECK(static_cast<int>(ranks.size()) == size);
  const auto t0 = Clock::now();
  pool.shutdown();  // returns once every rank has ended its share
  CHECK(seconds_since(t0) < 5.0);
}

namespace {
struct FourItems {
  auto build_items() { return pfp::iota(0, 4); }
  void handle_item(int, pfp::ItemContext&) {}
};
}  // namespace

TEST_CASE("the batch Manager is refused with Backend::mpi, on every rank alike", "[core]") {
  session();
  pfp::ManagerOptions o;
  o.backend = pfp::Backend::mpi;
  o.workers = 2;
  o.logger = pfp::silent_logger();
  o.progress.mode = pfp::ProgressMode::off;
  pfp::Manager<FourItems> m(FourItems{}, o);
  std::string what;
  try {
    const pfp::ExitStatus st = m.run();
    what = pfp::to_string(st) + ": " + st.message;
  } catch (const pfp::error& e) {
    what = e.what();
  }
  CHECK_THAT(what, Catch::Matchers::Contains("the batch Manager"));
}
