#ifndef PFP_DETAIL_MPI_RUN_HPP
#define PFP_DETAIL_MPI_RUN_HPP

// The two sides of a Backend::mpi run over an abstract Transport (the MPI one is in
// <pfp/mpi.hpp>): rank 0 pulls the front end's Feed, keeps every rank (itself included) a window
// of tasks ahead and files each Result; every other rank serves: runs what it is sent on its own
// process backend (mpi_share.hpp) and sends the Results back. Messages: mpi_protocol.hpp.
//
// No thread of pfp waits inside MPI: each side polls its descriptors with a timeout that grows
// from 20 us to 4 ms while nothing happens, and asks MPI for messages between two waits, so an
// idle rank costs a few hundred cheap wake-ups a second, not a spinning core.

#include <pfp/detail/feed.hpp>
#include <pfp/detail/mpi_protocol.hpp>
#include <pfp/detail/mpi_share.hpp>
#include <pfp/detail/remote.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/error.hpp>
#include <pfp/options.hpp>
#include <pfp/result.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <poll.h>
#include <time.h>

namespace pfp {
namespace detail {

/// What the two sides need of MPI. One thread calls it at a time.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Every rank's n bytes, rank by rank, into all; waits without spinning.
  virtual void allgather(const void* mine, std::size_t n, std::string& all) = 0;
  /// Starts sending n bytes at data; `keep` owns them and is released once the send is done.
  virtual void send(int dest, int tag, const char* data, std::size_t n, std::shared_ptr<const void> keep) = 0;
  /// Completes what sends it can; true while any is not done.
  virtual bool sending() = 0;
  /// A message that has arrived, if any: its source, tag and size.
  virtual bool probe(int& source, int& tag, std::size_t& bytes) = 0;
  /// Receives the message from source with tag (probed, or known to come) into n bytes at into.
  virtual void recv(int source, int tag, char* into, std::size_t n) = 0;
  /// Waits until every send is done (for bulk transfers, which progress only while MPI is asked).
  virtual void flush() = 0;
  /// Ends the whole job (MPI_Abort) after saying why on stderr: for a rank that cannot go on
  /// while the others wait for it (a protocol error, no memory), which must not become a hang.
  [[noreturn]] virtual void abort(const std::string& why) = 0;
};

/// Sends `bytes` (owned) to dest.
inline void send_owned(Transport& t, int dest, int tag, std::string bytes) {
  auto keep = std::make_shared<const std::string>(std::move(bytes));
  t.send(dest, tag, keep->data(), keep->size(), keep);
}

/// Sleeps until a descriptor is readable or the backoff's time passed.
class Idle {
 public:
  void busy() noexcept { micros_ = 0; }
  void wait(const std::vector<int>& fds) {
    micros_ = micros_ == 0 ? 20 : std::min<long>(micros_ * 2, 4000);
    pollfd p[4];
    nfds_t n = 0;
    for (int fd : fds)
      if (fd >= 0 && n < 4) p[n++] = pollfd{fd, POLLIN, 0};
    const timespec ts{0, micros_ * 1000};
    ::ppoll(p, n, &ts, nullptr);
  }

 private:
  long micros_ = 0;
};

/// Where a Reader gets the big strings of a result frame from rank `source`: the bulk messages
/// that follow its batch, received straight into the string that becomes part of the Result.
class BulkSource final : public RemoteSource {
 public:
  BulkSource(Transport& t, int source) : t_(t), source_(source) {}
  std::string fetch(std::uint64_t, std::size_t size) override {
    // No huge-page advice here (unlike the process backend's copy): measured with bench/mpi_run.sh,
    // the MPI transfer into an advised buffer took 1.5-2x as long (faults wait for compaction).
    return string_filled_by(
        size, [](char*) {},
        [&](char* p) {
          for (std::size_t at = 0; at < size; at += bulk_piece) t_.recv(source_, tag_bulk, p + at, std::min(bulk_piece, size - at));
        });
  }

 private:
  Transport& t_;
  int source_;
};

/// Sends Results to rank 0: one batch of records, then the bulk pieces of their big strings.
inline void send_results(Transport& t, std::vector<Result>&& results) {
  if (results.empty()) return;
  auto kept = std::make_shared<std::pair<std::string, std::vector<Result>>>();
  kept->second = std::move(results);
  std::vector<std::string_view> bulk;
  for (Result& r : kept->second) {
    if (add_result(kept->first, r, bulk)) continue;
    r.status = Status::exception;
    r.result = Value();
    r.error = "pfp::mpi: the result could not be encoded to travel to rank 0";
    add_result(kept->first, r, bulk);
  }
  t.send(0, tag_results, kept->first.data(), kept->first.size(), kept);
  for (std::string_view s : bulk)
    for (std::size_t at = 0; at < s.size(); at += bulk_piece)
      t.send(0, tag_bulk, s.data() + at, std::min(bulk_piece, s.size() - at), kept);
  // Rank 0 takes bulk pieces as soon as it sees their batch: waiting in MPI here is brief, and
  // it is what makes the transfer progress at MPI's speed.
  if (!bulk.empty()) t.flush();
}

/// Whether the run should go on with the threads this process has: MPI's own (counted when the
/// Session started MPI) are known to hold no lock a worker needs (mpi_share.hpp); others fall
/// under Options::threads as for the process backend.
inline void check_rank_threads(const Options& opt, std::size_t mpi_threads) {
  const std::size_t n = thread_count();
  if (opt.threads == ThreadPolicy::allow || n <= 1 + mpi_threads) return;
  Options counted = opt;
  check_threads(counted);
}

/// The hello of every rank, compared with rank 0's on every rank. Throws the same pfp::error
/// on every rank when one differs.
inline std::vector<HelloBlock> handshake(Transport& t, const Feed& feed, unsigned workers) {
  HelloBlock mine;
  mine.signature = feed.signature();
  const std::optional<std::size_t> hint = feed.size_hint();
  mine.tasks = hint ? *hint : unknown_tasks;
  mine.workers = workers;
  std::string all;
  t.allgather(&mine, sizeof mine, all);
  std::vector<HelloBlock> blocks(static_cast<std::size_t>(t.size()));
  std::memcpy(blocks.data(), all.data(), blocks.size() * sizeof(HelloBlock));
  for (std::size_t r = 1; r < blocks.size(); ++r) check_hello(blocks[0], blocks[r], static_cast<int>(r));
  return blocks;
}

/// A rank other than 0, until rank 0 ends the run: hands what it sends to the share, sends back
/// the Results.
inline void serve_loop(Transport& t, RankShare& share, Idle& idle) {
  bool end = false;
  std::string msg;
  std::vector<Result> out;
  for (;;) {
    bool active = false;
    int source, tag;
    std::size_t bytes;
    while (t.probe(source, tag, bytes)) {
      active = true;
      msg.resize(bytes);
      t.recv(source, tag, msg.data(), bytes);
      if (tag == tag_tasks) {
        for_each_task(msg, [&](std::uint64_t seq, std::uint64_t fn, std::uint64_t count, std::string_view payload) {
          share.add(seq, fn, count, std::string(payload));
        });
      } else if (tag == tag_control && bytes == 4) {
        std::uint32_t code;
        std::memcpy(&code, msg.data(), 4);
        if (code == control_cancel) share.cancel();
        if (code == control_end) end = true, share.finish();
      }
    }
    share.take(out);
    if (!out.empty()) active = true, send_results(t, std::move(out));
    out.clear();
    if (end && share.ended()) break;
    if (active) idle.busy();
    t.sending();
    idle.wait({share.results_fd()});
  }
}

/// A rank other than 0: runs the tasks rank 0 sends until it says the run ended.
inline void serve_rank(Transport& t, const FeedRunner& run, const Options& options, Feed& feed) {
  RankShare share(run, options, t.rank());
  handshake(t, feed, share.workers());
  share.start();
  Idle idle;
  try {
    serve_loop(t, share, idle);
  } catch (...) {  // rank 0 waits for this rank's Results: ending the job is better than a hang
    t.abort("rank " + std::to_string(t.rank()) + " cannot go on with the run: " + describe_current_exception());
  }
  share.join();
  std::string why;
  if (std::exception_ptr e = share.error()) try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      why = x.what();
    } catch (...) {
      why = "unknown exception";
    }
  send_owned(t, 0, tag_done, why);
  while (t.sending()) idle.wait({});
  feed.drop_rest("pfp::mpi: Results are gathered on rank 0; rank " + std::to_string(t.rank()) + " ran its share");
}

}  // namespace detail
}  // namespace pfp

#include <pfp/detail/mpi_root.hpp>  // IWYU pragma: export

#endif  // PFP_DETAIL_MPI_RUN_HPP
