#ifndef PFP_MPI_HPP
#define PFP_MPI_HPP

// pfp across machines: Backend::mpi runs the same registrations on every rank of an MPI job
// (Open MPI, MPICH; started by mpirun or srun). The only pfp header that includes <mpi.h>; link
// the CMake target pfp::mpi. See README, "Across machines with MPI".
//
//   int main(int argc, char** argv) {
//     pfp::mpi::Session mpi(argc, argv);        // MPI_Init; every rank runs the same program
//     pfp::Options o;  o.backend = pfp::Backend::mpi;
//     pfp::MultiProcessor<> mp({}, o);
//     mp.register_function(...);               // the same on every rank
//     mp.execute_parallel();                   // collective: the Results are gathered on rank 0
//     if (mpi.rank() == 0) ...
//   }

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  // Open MPI's C++ bindings do not build warning-free
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <pfp/detail/mpi_run.hpp>
#include <pfp/detail/run_feed.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/error.hpp>
#include <pfp/executor.hpp>

#include <climits>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace pfp {
namespace mpi {

namespace detail {

inline void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw pfp::error(std::string("pfp::mpi: ") + what + " failed: " + std::string(text, static_cast<std::size_t>(len)));
}

// The Transport of pfp::detail over one communicator (a duplicate of MPI_COMM_WORLD, so pfp's
// messages never meet the program's own).
class CommTransport final : public pfp::detail::Transport {
 public:
  explicit CommTransport(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void allgather(const void* mine, std::size_t n, std::string& all) override {
    all.resize(n * static_cast<std::size_t>(size_));
    MPI_Request req;
    check(MPI_Iallgather(mine, static_cast<int>(n), MPI_BYTE, all.data(), static_cast<int>(n), MPI_BYTE, comm_, &req),
          "MPI_Iallgather");
    wait(req);
  }
  void send(int dest, int tag, const char* data, std::size_t n, std::shared_ptr<const void> keep) override {
    if (n > static_cast<std::size_t>(INT_MAX)) throw pfp::error("pfp::mpi: a message of " + std::to_string(n) + " bytes");
    Pending p{MPI_REQUEST_NULL, std::move(keep)};
    check(MPI_Isend(data, static_cast<int>(n), MPI_BYTE, dest, tag, comm_, &p.req), "MPI_Isend");
    pending_.push_back(std::move(p));
  }
  bool sending() override {
    std::size_t kept = 0;
    for (Pending& p : pending_) {
      int done = 0;
      check(MPI_Test(&p.req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (!done) pending_[kept++] = std::move(p);
    }
    pending_.resize(kept);
    return kept != 0;
  }
  bool probe(int& source, int& tag, std::size_t& bytes) override {
    int flag = 0;
    MPI_Status st;
    check(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st), "MPI_Iprobe");
    if (!flag) return false;
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    source = st.MPI_SOURCE;
    tag = st.MPI_TAG;
    bytes = static_cast<std::size_t>(count);
    return true;
  }
  // Blocking: the message has arrived (probed) or is being sent (bulk), so MPI's own wait is
  // the fastest way to take it, and brief.
  void recv(int source, int tag, char* into, std::size_t n) override {
    check(MPI_Recv(into, static_cast<int>(n), MPI_BYTE, source, tag, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
  }
  [[noreturn]] void abort(const std::string& why) override {
    const std::string line = "pfp::mpi: " + why + "; ending the job (MPI_Abort)\n";
    [[maybe_unused]] const bool written = pfp::detail::write_all(STDERR_FILENO, line.data(), line.size());
    MPI_Abort(comm_, 1);
    std::abort();  // MPI_Abort does not return; should it, nothing else may go on
  }
  void flush() override {
    for (Pending& p : pending_) check(MPI_Wait(&p.req, MPI_STATUS_IGNORE), "MPI_Wait");
    pending_.clear();
  }

 private:
  // Waits for req, asking MPI often at first, then more and more rarely (no spinning core).
  static void wait(MPI_Request& req) {
    pfp::detail::Idle idle;
    for (;;) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      idle.wait({});
    }
  }
  struct Pending {
    MPI_Request req;
    std::shared_ptr<const void> keep;
  };
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<Pending> pending_;
};

}  // namespace detail

/// The MPI side of pfp in one program: starts MPI (unless the program did), enables
/// Options::backend = Backend::mpi while it lives, and ends MPI when destroyed (if it started
/// it). Make one, at the start of main(), before any thread; every rank runs the same program.
class Session {
 public:
  /// MPI_Init_thread(MPI_THREAD_SERIALIZED) unless MPI is initialized already. Sets
  /// RDMAV_FORK_SAFE=1 first (pfp's workers are forked while MPI runs; see mpi_share.hpp).
  /// Throws pfp::error if MPI cannot start or another Session is alive.
  Session(int& argc, char**& argv) { start(&argc, &argv); }
  Session() { start(nullptr, nullptr); }
  ~Session() {
    pfp::detail::mpi_backend() = nullptr;
    current() = nullptr;
    MPI_Comm_free(&comm_);
    if (owns_) MPI_Finalize();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  int rank() const noexcept { return transport_->rank(); }
  int size() const noexcept { return transport_->size(); }
  /// pfp's own communicator (a duplicate of MPI_COMM_WORLD).
  MPI_Comm comm() const noexcept { return comm_; }
  /// Threads MPI started in this process (known to be safe around pfp's forks).
  std::size_t mpi_threads() const noexcept { return mpi_threads_; }

  /// For an Executor with Backend::mpi: on rank 0 returns false at once (submit there); on every
  /// other rank runs what rank 0 submits, in this rank's worker processes, until rank 0's
  /// Executor shuts down, then returns true:   if (mpi.serve(pool)) return 0;
  /// Declare the same functions on every rank first. Throws pfp::error if the declarations
  /// differ from rank 0's (on every rank), or if the Executor is not Backend::mpi or started.
  bool serve(Executor& pool) {
    if (pool.options_.backend != Backend::mpi)
      throw pfp::error("pfp::mpi::Session::serve: the Executor's Options::backend is not Backend::mpi");
    if (rank() == 0) return false;
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      if (pool.started_) throw pfp::error("pfp::mpi::Session::serve: the Executor was started on this rank; on ranks other than 0 call serve() instead of submit()");
      pool.started_ = pool.closed_ = true;  // this rank's Executor never runs a pool of its own
      pool.failure_ = "this rank serves rank 0's Executor (pfp::mpi::Session::serve); submit on rank 0";
    }
    Executor::QueueFeed feed(pool);
    pfp::detail::check_rank_threads(pool.options_, mpi_threads_);
    pfp::detail::serve_rank(*transport_, pool.task_runner(), pool.options_, feed);
    return true;
  }

 private:
  void start(int* argc, char*** argv) {
    if (current()) throw pfp::error("pfp::mpi::Session: one is alive already; make one per program");
    ::setenv("RDMAV_FORK_SAFE", "1", 0);
    ::setenv("IBV_FORK_SAFE", "1", 0);
    const std::size_t before = pfp::detail::thread_count();
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      detail::check(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided_), "MPI_Init_thread");
      owns_ = true;
    } else {
      MPI_Query_thread(&provided_);
    }
    const std::size_t after = pfp::detail::thread_count();
    mpi_threads_ = after > before ? after - before : 0;
    detail::check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    transport_ = std::make_unique<detail::CommTransport>(comm_);
    current() = this;
    pfp::detail::mpi_backend() = &run;
  }
  static Session*& current() noexcept {
    static Session* s = nullptr;
    return s;
  }
  static void run(const pfp::detail::FeedRunner& runner, const Options& options, pfp::detail::Feed& feed,
                  pfp::detail::CancelState* cancel) {
    Session* s = current();
    int main_thread = 1;
    MPI_Is_thread_main(&main_thread);
    if (!main_thread && s->provided_ < MPI_THREAD_SERIALIZED)
      throw pfp::error("pfp::mpi: this MPI library gives no MPI_THREAD_SERIALIZED, so Backend::mpi runs only in the "
                       "thread that started MPI (an Executor runs its pool in a thread of its own)");
    pfp::detail::check_rank_threads(options, s->mpi_threads_);
    pfp::detail::run_feed_ranks(*s->transport_, runner, options, feed, cancel);
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owns_ = false;
  int provided_ = MPI_THREAD_SINGLE;
  std::size_t mpi_threads_ = 0;
  std::unique_ptr<detail::CommTransport> transport_;
};

}  // namespace mpi
}  // namespace pfp

#endif  // PFP_MPI_HPP
