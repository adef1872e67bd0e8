// A parameter sweep over every rank of an MPI job with Backend::mpi: the same program runs on
// every rank, registers the same functions, and execute_parallel() is collective. Each rank runs
// its share in pfp's own worker processes, so a function that crashes (here: one bad parameter)
// costs only its own Result, on whatever rank it ran.
//
//   mpirun -n 4 ./mpi_sweep            (Slurm: srun -n 4 ./mpi_sweep)
#include <pfp/mpi.hpp>
#include <pfp/pfp.hpp>

#include <csignal>
#include <cstdio>
#include <set>
#include <string>

int main(int argc, char** argv) {
  pfp::mpi::Session mpi(argc, argv);  // first: MPI_Init, before any thread

  pfp::Options options;
  options.backend = pfp::Backend::mpi;  // the one change from a single-machine program
  options.workers = 2;                   // worker processes per rank
  pfp::MultiProcessor<> sweep({}, options);
  for (int n = 1; n <= 24; ++n)
    sweep.register_function("collatz " + std::to_string(n * 1000), [n](const pfp::Value&, const pfp::Args&) {
      if (n == 13) std::raise(SIGSEGV);  // a bad parameter: only this Result says crashed
      long best = 0, longest = 0;
      for (long start = 1; start <= n * 1000; ++start) {
        long steps = 0;
        for (long x = start; x != 1; x = x % 2 ? 3 * x + 1 : x / 2) ++steps;
        if (steps > longest) longest = steps, best = start;
      }
      return pfp::Value{{"start", best}, {"steps", longest}};
    });

  const std::vector<pfp::Result>& results = sweep.execute_parallel();  // on every rank
  if (mpi.rank() != 0) return 0;  // the Results are gathered on rank 0

  std::set<int> ranks;
  for (const pfp::Result& r : results) {
    ranks.insert(r.rank);
    if (r.ok())
      std::printf("%-14s rank %d  longest chain from %lld: %lld steps\n", r.function_name.c_str(), r.rank,
                  r.result.at("start").as<long long>(), r.result.at("steps").as<long long>());
    else
      std::printf("%-14s rank %d  %s: %s\n", r.function_name.c_str(), r.rank, std::string(pfp::to_string(r.status)).c_str(),
                  r.error.c_str());
  }
  std::printf("%zu functions on %d ranks; every rank took part: %s\n", results.size(), mpi.size(),
              static_cast<int>(ranks.size()) == mpi.size() ? "yes" : "no");
  return 0;
}
