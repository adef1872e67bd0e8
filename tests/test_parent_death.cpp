// Guarantee 5: if the calling process dies (any signal, SIGKILL included), every worker ends
// within a second. The calling process is tests/helper_parent.cpp, run as a separate program.
// Linux only (uses /proc).
#include "pfp_catch.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef PFP_HELPER_PARENT_PATH
#error "PFP_HELPER_PARENT_PATH must name the helper_parent executable (tests/CMakeLists.txt defines it)"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Process state letter from /proc/<pid>/stat ('R', 'S', 'Z', ...), 0 if there is no such process.
char process_state(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!in || !std::getline(in, line)) return 0;
  const auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return 0;
  return line[close + 2];
}

/// The process can still run code. A zombie counts as dead: the worker has ended, and whoever
/// it was reparented to (init or a subreaper) reaps it in its own time.
bool alive(pid_t pid) {
  if (pid <= 0) return false;
  if (kill(pid, 0) == -1 && errno == ESRCH) return false;
  const char st = process_state(pid);
  return st != 0 && st != 'Z' && st != 'X' && st != 'x';
}

/// Distinct pids listed one per line in the file (only complete lines).
std::vector<pid_t> pids_in(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<pid_t> pids;
  std::set<pid_t> seen;
  std::size_t pos = 0;
  for (std::size_t nl; (nl = text.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    const long v = std::strtol(text.substr(pos, nl - pos).c_str(), nullptr, 10);
    if (v > 0 && seen.insert(static_cast<pid_t>(v)).second) pids.push_back(static_cast<pid_t>(v));
  }
  return pids;
}

std::string describe(const std::vector<pid_t>& pids) {
  std::string s;
  for (pid_t p : pids) {
    const char st = process_state(p);
    s += (s.empty() ? "" : " ") + std::to_string(p) + ":" + (st ? std::string(1, st) : std::string("gone"));
  }
  return s;
}

/// Starts helper_parent writing to pid_file, with default dispositions and an empty mask for
/// the signals the test sends (a shell may have left SIGINT ignored for a background job).
pid_t start_helper(const std::string& pid_file) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    const char* helper = PFP_HELPER_PARENT_PATH;
    execl(helper, helper, pid_file.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

/// Kills and reaps whatever is left, so a failing test does not leave sleepers behind.
struct Cleanup {
  pid_t helper = -1;
  std::vector<pid_t> workers;
  std::string file;
  ~Cleanup() {
    if (helper > 0) {
      kill(helper, SIGKILL);
      int status = 0;
      waitpid(helper, &status, 0);
    }
    for (pid_t p : workers)
      if (alive(p)) kill(p, SIGKILL);
    if (!file.empty()) std::remove(file.c_str());
  }
};

void check_workers_die_with_parent(int sig) {
  Cleanup cleanup;
  cleanup.file = "/tmp/pfp_test_parent_death_" + std::to_string(getpid()) + "_" + std::to_string(sig);
  std::remove(cleanup.file.c_str());

  const pid_t helper = start_helper(cleanup.file);
  REQUIRE(helper > 0);
  cleanup.helper = helper;

  // Wait until the three workers have each started a function.
  std::vector<pid_t> workers;
  const auto deadline = Clock::now() + milliseconds(10000);
  for (;;) {
    workers = pids_in(cleanup.file);
    if (workers.size() >= 3 || Clock::now() >= deadline) break;
    int status = 0;
    if (waitpid(helper, &status, WNOHANG) == helper) {
      cleanup.helper = -1;
      FAIL("helper_parent ended early with status " << status);
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  cleanup.workers = workers;
  INFO("workers: " << describe(workers));
  REQUIRE(workers.size() == 3);
  for (pid_t w : workers) {
    CHECK(w != helper);
    CHECK(alive(w));
  }

  REQUIRE(kill(helper, sig) == 0);
  int status = 0;
  REQUIRE(waitpid(helper, &status, 0) == helper);
  cleanup.helper = -1;
  // No handler: the signal itself ended the helper.
  CHECK(WIFSIGNALED(status));
  if (WIFSIGNALED(status)) CHECK(WTERMSIG(status) == sig);

  const auto killed = Clock::now();
  bool all_dead = false;
  while (!all_dead && Clock::now() - killed < milliseconds(2000)) {
    all_dead = true;
    for (pid_t w : workers) all_dead = all_dead && !alive(w);
    if (!all_dead) std::this_thread::sleep_for(milliseconds(10));
  }
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - killed).count();
  INFO("after " << took << " ms the workers are: " << describe(workers));
  CHECK(all_dead);
}

}  // namespace

TEST_CASE("workers end when their parent dies", "[parent_death]") {
  SECTION("SIGKILL") { check_workers_die_with_parent(SIGKILL); }
  SECTION("SIGTERM") { check_workers_die_with_parent(SIGTERM); }
  SECTION("SIGINT") { check_workers_die_with_parent(SIGINT); }
}
