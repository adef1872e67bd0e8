// Run by killed_rank.py under mpiexec: every rank records its pid, every function the pid of the
// worker that runs it, then sleeps; the driver kills one rank from outside and checks that the
// job ends with a non-zero code and leaves no process behind.
#include <pfp/mpi.hpp>
#include <pfp/pfp.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <unistd.h>

int main(int argc, char** argv) {
  pfp::mpi::Session mpi(argc, argv);
  const char* dir = std::getenv("PFP_KILL_DIR");
  if (!dir) return 2;
  const std::string base(dir);
  if (FILE* f = std::fopen((base + "/rank" + std::to_string(mpi.rank()) + ".pid").c_str(), "w")) {
    std::fprintf(f, "%d\n", static_cast<int>(::getpid()));
    std::fclose(f);
  }
  pfp::Options o;
  o.backend = pfp::Backend::mpi;
  o.workers = 2;
  pfp::MultiProcessor<> mp({}, o);
  for (int i = 0; i < 4 * mpi.size(); ++i)
    mp.register_function("sleeper", [base](const pfp::Value&, const pfp::Args&) {
      if (FILE* f = std::fopen((base + "/workers").c_str(), "a")) {
        std::fprintf(f, "%d\n", static_cast<int>(::getpid()));
        std::fclose(f);
      }
      std::this_thread::sleep_for(std::chrono::seconds(120));
      return 0;
    });
  mp.execute_parallel();
  return 0;
}
