// Helper program for test_parent_death: a parent process that is killed in the middle of a run.
//
//   helper_parent <pid-file>
//
// Starts a MultiProcessor with 3 workers and 6 functions; each function appends its worker's pid
// (one line) to <pid-file> and then sleeps 60 s. The test kills this process once 3 pids are there
// and checks that the workers end too. No signal handlers are installed.
#include <pfp/pfp.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <pid-file>\n", argc > 0 ? argv[0] : "helper_parent");
    return 2;
  }
  const std::string path = argv[1];

  pfp::Options options;
  options.workers = 3;
  pfp::MultiProcessor<> mp(pfp::Value(), options);
  for (int i = 0; i < 6; ++i) {
    mp.register_function("sleeper" + std::to_string(i), [path](const pfp::Value&, const pfp::Args&) {
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (fd < 0) return -1;
      const std::string line = std::to_string(::getpid()) + "\n";
      const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
      ::close(fd);
      if (!written) return -1;
      std::this_thread::sleep_for(std::chrono::seconds(60));
      return 0;
    });
  }
  mp.execute_parallel();
  return 0;
}
