// Resource limits and option checks: Options::memory_limit, cpu_limit, max_result_bytes, invalid
// options, and Options::threads. Linux only (uses /proc).
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

// RLIMIT_AS cannot coexist with the shadow memory of AddressSanitizer / ThreadSanitizer /
// MemorySanitizer (they reserve terabytes of address space up front).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PFP_TEST_SHADOW_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define PFP_TEST_SHADOW_SANITIZER 1
#endif
#endif

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Catch::Matchers::Contains;

long long elapsed_ms(Clock::time_point since) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - since).count();
}

std::string describe(const pfp::Result& r) {
  return "'" + r.function_name + "' status " + std::string(pfp::to_string(r.status)) + " pid " + std::to_string(r.pid) +
         " attempts " + std::to_string(r.attempts) + " error '" + r.error + "'";
}

/// Every process (zombies included) whose parent is this process.
std::vector<pid_t> child_pids() {
  std::vector<pid_t> kids;
  const std::string self = std::to_string(getpid());
  DIR* d = opendir("/proc");
  if (!d) return kids;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != 0) continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/stat");
    std::string line;
    if (!std::getline(in, line)) continue;
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 1));
    std::string state, ppid;
    rest >> state >> ppid;
    if (ppid == self) kids.push_back(static_cast<pid_t>(pid));
  }
  closedir(d);
  return kids;
}

std::size_t thread_count() {
  std::size_t n = 0;
  DIR* d = opendir("/proc/self/task");
  if (!d) return 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

// Keeps the compiler from eliding an allocation (clang removes unobservable new/delete pairs).
[[maybe_unused]] char* volatile g_sink = nullptr;

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

/// Burns `seconds` of CPU time in the calling thread.
void spin_cpu(double seconds) {
  volatile unsigned long sink = 0;
  const double start = thread_cpu_seconds();
  while (thread_cpu_seconds() - start < seconds)
    for (int i = 0; i < 100000; ++i) sink = sink + 1;
}

[[noreturn]] void spin_forever() {
  volatile unsigned long sink = 0;
  for (;;) sink = sink + 1;
}

/// A std::thread that waits on a condition variable until the guard is destroyed.
class BlockedThread {
 public:
  BlockedThread() : thread_([this] {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] { return release_; });
    }) {}
  ~BlockedThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      release_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  BlockedThread(const BlockedThread&) = delete;
  BlockedThread& operator=(const BlockedThread&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool release_ = false;
  std::thread thread_;
};

/// Sends this process's fd 2 to a file for the scope; the text is read back with text().
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(nullptr);
    char name[] = "/tmp/pfp_test_limits_stderr_XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    path_ = name;
    saved_ = dup(2);
    REQUIRE(saved_ >= 0);
    dup2(fd, 2);
    close(fd);
  }
  ~StderrCapture() {
    restore();
    std::remove(path_.c_str());
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  std::string text() {
    restore();
    std::ifstream in(path_);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(nullptr);
    dup2(saved_, 2);
    close(saved_);
    saved_ = -1;
  }
  std::string path_;
  int saved_ = -1;
};

int return_seven(const pfp::Value&, const pfp::Args&) { return 7; }

}  // namespace

TEST_CASE("Options::memory_limit turns a huge allocation into std::bad_alloc", "[limits]") {
#if defined(PFP_TEST_SHADOW_SANITIZER)
  PFP_SKIP("RLIMIT_AS breaks the shadow memory of AddressSanitizer/ThreadSanitizer builds");
#else
  pfp::Options o;
  o.workers = 1;
  o.memory_limit = std::size_t{512} << 20;
  o.timeout = milliseconds(60000);  // only against hangs
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  mp.register_function("two_gib", [](const pfp::Value&, const pfp::Args&) {
    const std::size_t n = std::size_t{2} << 30;
    char* p = new char[n];
    std::memset(p, 1, n);
    g_sink = p;
    const int sum = p[0] + p[n - 1];
    delete[] g_sink;
    return sum;
  });
  mp.register_function("ten_mib", [](const pfp::Value&, const pfp::Args&) {
    const std::size_t n = std::size_t{10} << 20;
    char* p = new char[n];
    std::memset(p, 1, n);
    g_sink = p;
    long long sum = 0;
    for (std::size_t i = 0; i < n; i += 4096) sum += g_sink[i];
    delete[] g_sink;
    return sum;
  });

  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 2);
  INFO(describe(rs[0]));
  CHECK(rs[0].status == pfp::Status::exception);
  CHECK_THAT(rs[0].error, Contains("bad_alloc"));
  CHECK_THAT(rs[0].error, Contains("memory_limit"));
  CHECK(rs[0].result.is_null());
  INFO(describe(rs[1]));
  CHECK(rs[1].ok());
  CHECK(rs[1].result.as<long long>() == static_cast<long long>((std::size_t{10} << 20) / 4096));
  CHECK(child_pids().empty());
#endif
}

TEST_CASE("Options::cpu_limit kills a function that spins and the next one still runs", "[limits]") {
  pfp::Options o;
  o.workers = 1;
  o.cpu_limit = std::chrono::seconds(1);
  // Only against hangs: on a loaded machine the spinner may get a few % of a CPU (seen: less than
  // 1 s of CPU in 30 s), so the wall-clock guard stays well short of ctest's 120 s and no shorter.
  o.timeout = milliseconds(100000);
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  mp.register_function("spins", [](const pfp::Value&, const pfp::Args&) -> int { spin_forever(); });
  mp.register_function("after", return_seven);

  const auto start = Clock::now();
  const auto& rs = mp.execute_parallel();
  INFO("run took " << elapsed_ms(start) << " ms");
  REQUIRE(rs.size() == 2);
  INFO(describe(rs[0]));
  CHECK(rs[0].status == pfp::Status::crashed);
  CHECK_THAT(rs[0].error, Contains("SIGXCPU"));
  CHECK_THAT(rs[0].error, Contains("cpu_limit"));
  CHECK(rs[0].pid > 0);
  INFO(describe(rs[1]));
  CHECK(rs[1].ok());
  CHECK(rs[1].result.as<int>() == 7);
  CHECK(child_pids().empty());
}

TEST_CASE("Options::cpu_limit applies to each function, not to the worker's total", "[limits]") {
  // One worker runs three functions of ~0.6 s CPU each: 1.8 s in all, but each stays under 1 s.
  pfp::Options o;
  o.workers = 1;
  o.cpu_limit = std::chrono::seconds(1);
  o.timeout = milliseconds(100000);  // only against hangs (see the test above)
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  for (int i = 0; i < 3; ++i)
    mp.register_function("spin_0.6s_" + std::to_string(i), [](const pfp::Value&, const pfp::Args&) {
      spin_cpu(0.6);
      return static_cast<int>(getpid());
    });

  const auto start = Clock::now();
  const auto& rs = mp.execute_parallel();
  INFO("run took " << elapsed_ms(start) << " ms");
  REQUIRE(rs.size() == 3);
  for (const auto& r : rs) {
    INFO(describe(r));
    CHECK(r.ok());
  }
  // They ran one after another in the same worker process (else the test proves nothing).
  CHECK(rs[0].pid == rs[1].pid);
  CHECK(rs[1].pid == rs[2].pid);
  CHECK(child_pids().empty());
}

TEST_CASE("Options::max_result_bytes refuses a larger result", "[limits]") {
  pfp::Options o;
  o.workers = 2;
  o.max_result_bytes = std::size_t{1} << 20;
  pfp::MultiProcessor<> mp(pfp::Value(), o);
  mp.register_function("two_mib", [](const pfp::Value&, const pfp::Args&) { return std::string(std::size_t{2} << 20, 'x'); });
  mp.register_function("hundred_kib", [](const pfp::Value&, const pfp::Args&) { return std::string(100 * 1024, 'y'); });
  mp.register_function("two_mib_bytes", [](const pfp::Value&, const pfp::Args&) {
    return pfp::Value::bytes(std::string(std::size_t{2} << 20, '\0'));
  });

  const auto& rs = mp.execute_parallel();
  REQUIRE(rs.size() == 3);
  INFO(describe(rs[0]));
  CHECK(rs[0].status == pfp::Status::exception);
  CHECK_THAT(rs[0].error, Contains("max_result_bytes"));
  CHECK(rs[0].result.is_null());
  INFO(describe(rs[1]));
  CHECK(rs[1].ok());
  CHECK(rs[1].result.as<std::string>() == std::string(100 * 1024, 'y'));
  INFO(describe(rs[2]));
  CHECK(rs[2].status == pfp::Status::exception);
  CHECK_THAT(rs[2].error, Contains("max_result_bytes"));
  CHECK(child_pids().empty());
}

TEST_CASE("invalid Options throw pfp::error at construction", "[limits]") {
  SECTION("negative timeout") {
    pfp::Options o;
    o.timeout = milliseconds(-1);
    REQUIRE_THROWS_AS(pfp::MultiProcessor<>(pfp::Value(), o), pfp::error);
    REQUIRE_THROWS_WITH(pfp::MultiProcessor<>(pfp::Value(), o), Contains("timeout"));
  }
  SECTION("max_result_bytes 0") {
    pfp::Options o;
    o.max_result_bytes = 0;
    REQUIRE_THROWS_AS(pfp::MultiProcessor<>(pfp::Value(), o), pfp::error);
    REQUIRE_THROWS_WITH(pfp::MultiProcessor<>(pfp::Value(), o), Contains("max_result_bytes"));
  }
  SECTION("the boundary values are accepted") {
    pfp::Options o;
    o.timeout = milliseconds(0);
    o.max_result_bytes = 1;
    REQUIRE_NOTHROW(pfp::MultiProcessor<>(pfp::Value(), o));
  }
}

TEST_CASE("Options::threads decides what happens when the process runs other threads", "[limits]") {
  SECTION("refuse throws pfp::error naming threads, and starts no worker") {
    pfp::Options o;
    o.workers = 2;
    o.threads = pfp::ThreadPolicy::refuse;
    pfp::MultiProcessor<> mp(pfp::Value(), o);
    mp.register_function("seven", return_seven);
    {
      BlockedThread other;
      REQUIRE_THROWS_AS(mp.execute_parallel(), pfp::error);
      REQUIRE_THROWS_WITH(mp.execute_parallel(), Contains("thread"));
      CHECK(child_pids().empty());
      CHECK(mp.results().empty());
    }
    // Without the other thread the same object runs (unless a sanitizer runtime keeps its own thread).
    if (thread_count() == 1) {
      const auto& rs = mp.execute_parallel();
      REQUIRE(rs.size() == 1);
      INFO(describe(rs[0]));
      CHECK(rs[0].ok());
    }
  }
  SECTION("allow runs silently") {
    pfp::Options o;
    o.workers = 2;
    o.threads = pfp::ThreadPolicy::allow;
    pfp::MultiProcessor<> mp(pfp::Value(), o);
    for (int i = 0; i < 4; ++i) mp.register_function("seven", return_seven);
    BlockedThread other;
    std::string err;
    std::vector<pfp::Result> rs;
    {
      StderrCapture capture;
      rs = mp.execute_parallel();
      err = capture.text();
    }
    REQUIRE(rs.size() == 4);
    for (const auto& r : rs) {
      INFO(describe(r));
      CHECK(r.ok());
      CHECK(r.result.as<int>() == 7);
    }
    CHECK(err.empty());
    CHECK(child_pids().empty());
  }
}
