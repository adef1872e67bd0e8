// Backend::mpi against the raw MPI floor, in one run under mpiexec (bench/mpi_run.sh runs it on 2
// and 4 ranks beside bench/mpi_futures.py). Prints RESULT lines:
//   RESULT raw_pingpong_us      <round trip of one byte, rank 0 <-> the last rank, MPI_Send/MPI_Recv>
//   RESULT raw_bulk_s           <256 MiB from the last rank into a freshly allocated buffer on rank 0>
//   RESULT pfp_per_task_us      <wall time / tasks, MultiProcessor of N trivial functions, no chunksize;
//                                the whole execute_parallel(), forking every rank's workers included>
//   RESULT pfp_per_task_us_10x  <the same with 10 N functions>
//   RESULT pfp_big_result_s     <execute_parallel() whose one big function (256 MiB) runs on the last rank>
//   RESULT pfp_big_transfer_s   <the same, minus the time the function took to make its string>
//   RESULT pfp_big_vs_raw       <raw_bulk_s / pfp_big_transfer_s: 1 = as fast as the raw transfer>
//
//   mpiexec -n 4 ./mpi_bench [--quick]
#include <pfp/mpi.hpp>
#include <pfp/pfp.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double raw_pingpong_us(MPI_Comm comm, int last, int rounds) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  char byte = 0;
  MPI_Barrier(comm);
  const auto t0 = Clock::now();
  for (int i = 0; i < rounds; ++i) {
    if (rank == 0) {
      MPI_Send(&byte, 1, MPI_BYTE, last, 1, comm);
      MPI_Recv(&byte, 1, MPI_BYTE, last, 1, comm, MPI_STATUS_IGNORE);
    } else if (rank == last) {
      MPI_Recv(&byte, 1, MPI_BYTE, 0, 1, comm, MPI_STATUS_IGNORE);
      MPI_Send(&byte, 1, MPI_BYTE, 0, 1, comm);
    }
  }
  return seconds_since(t0) * 1e6 / rounds;
}

// 256 MiB from the last rank into a buffer rank 0 allocates for it (what a result needs).
double raw_bulk_s(MPI_Comm comm, int last, std::size_t bytes) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  std::string src;
  if (rank == last) src.assign(bytes, 'r');
  MPI_Barrier(comm);
  const auto t0 = Clock::now();
  if (rank == 0) {
    std::unique_ptr<char[]> fresh(new char[bytes]);
    MPI_Recv(fresh.get(), static_cast<int>(bytes), MPI_BYTE, last, 2, comm, MPI_STATUS_IGNORE);
    if (fresh[bytes - 1] != 'r') std::printf("FAIL raw bulk transfer\n");
  } else if (rank == last) {
    MPI_Send(src.data(), static_cast<int>(bytes), MPI_BYTE, 0, 2, comm);
  }
  const double s = seconds_since(t0);
  MPI_Bcast(const_cast<double*>(&s), 1, MPI_DOUBLE, 0, comm);
  return s;
}

// Wall time per task of a MultiProcessor of `tasks` trivial functions over every rank (no
// chunksize: pfp sizes its batches itself). Checks every Result.
double pfp_per_task_us(int tasks, int rank) {
  pfp::Options o;
  o.backend = pfp::Backend::mpi;
  pfp::MultiProcessor<> mp({}, o);
  for (int i = 0; i < tasks; ++i) mp.register_function("t", [i](const pfp::Value&, const pfp::Args&) { return i; });
  const auto t0 = Clock::now();
  const auto& r = mp.execute_parallel();
  const double us = seconds_since(t0) * 1e6 / tasks;
  if (rank == 0)
    for (int i = 0; i < tasks; ++i)
      if (!(r[static_cast<std::size_t>(i)].result == pfp::Value(i))) {
        std::printf("FAIL pfp task %d: %s\n", i, r[static_cast<std::size_t>(i)].error.c_str());
        break;
      }
  return us;
}

// One run whose function 4 * (size - 1) runs on the last rank (its first window: two workers,
// two tasks each) and returns `bytes` bytes there (small elsewhere). Returns the run's wall time
// and, in made_s, how long the function took (making the string).
double pfp_big_run_s(std::size_t bytes, int rank, int size, double& made_s) {
  pfp::Options o;
  o.backend = pfp::Backend::mpi;
  o.workers = 2;
  pfp::MultiProcessor<> mp({}, o);
  const int target = 4 * (size - 1);
  for (int i = 0; i < 4 * size; ++i)
    mp.register_function("b", [i, rank, size, target, bytes](const pfp::Value&, const pfp::Args&) -> pfp::Value {
      if (i != target || rank != size - 1 || bytes == 0) return i;
      return std::string(bytes, 'p');
    });
  const auto t0 = Clock::now();
  const auto& r = mp.execute_parallel();
  const double s = seconds_since(t0);
  made_s = 0;
  if (rank == 0) {
    const pfp::Result& big = r.at(static_cast<std::size_t>(target));
    made_s = std::chrono::duration<double>(big.duration).count();
    if (bytes && (!big.ok() || big.rank != size - 1 || big.result.str().size() != bytes || big.result.str()[bytes - 1] != 'p'))
      std::printf("FAIL pfp big result: %s on rank %d\n", big.error.c_str(), big.rank);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  pfp::mpi::Session mpi(argc, argv);
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int rank = mpi.rank(), size = mpi.size(), last = size - 1;
  const int reps = quick ? 1 : 5;
  const int tasks = quick ? 2000 : 20000;
  const std::size_t big = std::size_t{256} << 20;
  std::vector<double> ping, bulk, per_task, per_task_10x, big_run, base_run, made;
  for (int k = 0; k < reps; ++k) {
    if (size > 1) ping.push_back(raw_pingpong_us(mpi.comm(), last, quick ? 1000 : 20000));
    if (size > 1) bulk.push_back(raw_bulk_s(mpi.comm(), last, big));
    per_task.push_back(pfp_per_task_us(tasks, rank));
    per_task_10x.push_back(pfp_per_task_us(10 * tasks, rank));
    double m = 0;
    base_run.push_back(pfp_big_run_s(0, rank, size, m));
    big_run.push_back(pfp_big_run_s(big, rank, size, m));
    made.push_back(m);
  }
  if (rank != 0) return 0;
  std::printf("RESULT ranks %d\n", size);
  std::printf("RESULT tasks %d\n", tasks);
  std::printf("RESULT pfp_per_task_us %.3f\n", median(per_task));
  std::printf("RESULT pfp_per_task_us_10x %.3f\n", median(per_task_10x));
  if (size > 1) {
    const double transfer = median(big_run) - median(base_run) - median(made);
    std::printf("RESULT raw_pingpong_us %.3f\n", median(ping));
    std::printf("RESULT raw_bulk_s %.4f\n", median(bulk));
    std::printf("RESULT pfp_big_result_s %.4f\n", median(big_run));
    std::printf("RESULT pfp_big_base_run_s %.4f\n", median(base_run));
    std::printf("RESULT pfp_big_make_s %.4f\n", median(made));
    std::printf("RESULT pfp_big_transfer_s %.4f\n", transfer);
    std::printf("RESULT pfp_big_vs_raw %.3f\n", median(bulk) / transfer);
  }
  return 0;
}
