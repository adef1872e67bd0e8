#ifndef PFP_DETAIL_MPI_SHARE_HPP
#define PFP_DETAIL_MPI_SHARE_HPP

// One rank's share of a Backend::mpi run: pfp's own process backend (pool.hpp), run on a thread
// of the rank and fed from a queue that the rank's MPI loop fills. So on every rank a function
// that crashes, hangs or eats memory costs only its own Result, exactly as on one machine.
//
// Why forking here is safe although MPI runs threads of its own: the workers never call MPI and
// never touch MPI's memory; what they do need of the process (malloc, stdio) glibc makes
// fork-safe by taking those locks around fork(); the only other lock they could meet is the
// queue's below, which the worker side never takes (a worker runs its task and writes frames).
// With InfiniBand, RDMAV_FORK_SAFE=1 (set by pfp::mpi::Session before MPI_Init) keeps registered
// memory out of the children; pfp never hands a worker an MPI buffer (tasks are copied out).

#include <pfp/detail/feed.hpp>
#include <pfp/detail/pool.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/detail/wake_pipe.hpp>
#include <pfp/options.hpp>
#include <pfp/result.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <list>
#include <memory>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pfp {
namespace detail {

class RankShare final : public Feed {
 public:
  /// options: the run's, whose backend is replaced by the process backend here.
  RankShare(const FeedRunner& run, const Options& options, int rank) : run_(run), options_(options), rank_(rank) {
    options_.backend = Backend::processes;
    options_.threads = ThreadPolicy::allow;  // the MPI backend checked the caller's threads itself
    in_wake_.open();
    out_wake_.open();
    cancel_.open();
  }
  RankShare(const RankShare&) = delete;
  RankShare& operator=(const RankShare&) = delete;
  ~RankShare() override {
    cancel();
    finish();
    join();
    cancel_.close();
  }

  void start() {
    thread_ = std::thread([this] {
      try {
        run_feed_processes(run_, options_, *this, &cancel_);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      ended_ = true;
      drop_queue("not run: this rank's worker processes could not run it");
      out_wake_.ring();
    });
  }
  unsigned workers() const { return effective_workers(options_); }

  // ---- the rank's MPI loop (any one thread)

  /// Adds `count` tasks with consecutive seqs and fns (count 1: with `payload`).
  void add(std::uint64_t seq, std::uint64_t fn, std::uint64_t count, std::string payload = {}) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(Entry{seq, fn, count, std::move(payload)});
    queued_ += count;
    if (ended_) drop_queue("not run: this rank's pool had stopped");  // cancelled meanwhile
    in_wake_.ring();
  }
  /// No more tasks will be added: the pool ends once it has run what it has.
  void finish() {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    in_wake_.ring();
  }
  /// Stops the pool as MultiProcessor::cancel() does: running tasks are killed, the rest end as
  /// cancelled (every task added still gets its Result).
  void cancel() noexcept { cancel_.request(); }
  /// Moves every Result delivered since the last call into out (index = the run's seq, rank set).
  void take(std::vector<Result>& out) {
    out_wake_.drain();  // first: a Result filed after it rings again (see file())
    std::lock_guard<std::mutex> lock(mutex_);
    if (out.empty()) {
      out.swap(out_);
      return;
    }
    for (Result& r : out_) out.push_back(std::move(r));
    out_.clear();
  }
  /// Readable when take() may have something or the pool ended.
  int results_fd() const noexcept { return out_wake_.read_fd(); }
  /// Tasks added whose Results were not yet delivered.
  std::size_t outstanding() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<std::size_t>(queued_ - delivered_);
  }
  /// Whether the pool has returned (then every Result was delivered).
  bool ended() {
    std::lock_guard<std::mutex> lock(mutex_);
    return ended_ && out_.empty();
  }
  /// What made the pool fail, once it ended.
  std::exception_ptr error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  // ---- the Feed the pool runs (its thread)

  std::optional<Task> pull() override {
    in_wake_.drain();
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.empty()) return std::nullopt;
    Entry& e = queue_.front();
    Task t{e.fn, std::move(e.payload)};
    locals_.push_back(Local{e.seq, nullptr, blocks_.end()});
    ++e.seq;
    ++e.fn;
    if (--e.count == 0) queue_.pop_front();
    return t;
  }
  // Runs without payloads go to the pool as runs: their Results are made in blocks here, and
  // placed() streams each on as soon as it is final.
  std::size_t pull_run(std::size_t max, std::uint64_t& first_fn, Result*& places) override {
    in_wake_.drain();
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.empty() || !queue_.front().payload.empty()) return 0;
    Entry& e = queue_.front();
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(max, e.count));
    blocks_.push_back(Block{std::make_unique<Result[]>(n), n});
    const auto block = std::prev(blocks_.end());
    for (std::size_t k = 0; k < n; ++k) {
      block->results[k].index = locals_.size();
      locals_.push_back(Local{e.seq + k, &block->results[k], block});
    }
    first_fn = e.fn;
    places = block->results.get();
    e.seq += n;
    e.fn += n;
    e.count -= n;
    if (e.count == 0) queue_.pop_front();
    return n;
  }
  void placed(std::uint64_t local) override {
    std::lock_guard<std::mutex> lock(mutex_);
    Local& l = locals_[static_cast<std::size_t>(local)];
    file(l.seq, std::move(*l.place));
    if (--l.block->remaining == 0) blocks_.erase(l.block);
  }
  bool finished() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return finished_ && queue_.empty();
  }
  int wake_fd() const override { return in_wake_.read_fd(); }
  void deliver(std::uint64_t local, Result&& r) override {
    std::lock_guard<std::mutex> lock(mutex_);
    file(locals_[static_cast<std::size_t>(local)].seq, std::move(r));
  }
  void drop_rest(const std::string& why) override {
    std::lock_guard<std::mutex> lock(mutex_);
    drop_queue(why);
  }
  void workers_started() override {
    std::lock_guard<std::mutex> lock(mutex_);
    workers_started_ = true;
    out_wake_.ring();
  }
  /// True once, after the pool forked its first workers (or ended without).
  bool take_workers_started() {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool news = (workers_started_ || ended_) && !started_told_;
    started_told_ = started_told_ || news;
    return news && workers_started_;
  }

 private:
  struct Entry {
    std::uint64_t seq, fn, count;
    std::string payload;
  };
  struct Block {
    std::unique_ptr<Result[]> results;
    std::size_t remaining;  // not yet placed
  };
  struct Local {  // a task the pool pulled, by the pool's seq
    std::uint64_t seq;  // the run's
    Result* place;      // in a block (pull_run), or null (pull)
    std::list<Block>::iterator block;
  };
  // Hands r on as task seq's Result. The coordinator is woken when the first Result waits: it
  // takes them all at once. Called with the lock held.
  void file(std::uint64_t seq, Result&& r) {
    r.index = static_cast<std::size_t>(seq);
    r.rank = rank_;
    if (out_.empty()) out_wake_.ring();
    out_.push_back(std::move(r));
    ++delivered_;
  }
  // Every task still queued ends as cancelled with `why`. Called with the lock held.
  void drop_queue(const std::string& why) {
    for (Entry& e : queue_) {
      for (std::uint64_t k = 0; k < e.count; ++k) {
        Result r;
        r.status = Status::cancelled;
        r.error = why;
        file(e.seq + k, std::move(r));
      }
    }
    queue_.clear();
    out_wake_.ring();
  }

  const FeedRunner& run_;
  Options options_;
  int rank_;
  CancelState cancel_;
  WakePipe in_wake_, out_wake_;
  std::thread thread_;
  std::mutex mutex_;  // guards everything below
  std::deque<Entry> queue_;
  std::vector<Local> locals_;
  std::list<Block> blocks_;
  std::vector<Result> out_;
  std::uint64_t queued_ = 0, delivered_ = 0;
  bool finished_ = false, ended_ = false, workers_started_ = false, started_told_ = false;
  std::exception_ptr error_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_MPI_SHARE_HPP
