#ifndef PFP_MANAGER_HPP
#define PFP_MANAGER_HPP

// pfp::Manager: runs a handler over a lazy source of items with worker processes (the mp_manager
// original in C++). The handler builds the items in the parent; each item is serialized, handled
// by one worker's copy of the handler, and its stats deltas travel back with its result; the
// parent merges them, logs the item and draws the progress. The run ends with an ExitStatus.

#include <pfp/detail/manager_support.hpp>
#include <pfp/exit_status.hpp>
#include <pfp/handler_context.hpp>
#include <pfp/detail/run_feed.hpp>
#include <pfp/detail/wake_pipe.hpp>
#include <pfp/batch.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/error.hpp>
#include <pfp/detail/feed.hpp>
#include <pfp/multiprocessor.hpp>
#include <pfp/options.hpp>
#include <pfp/progress.hpp>
#include <pfp/result.hpp>
#include <pfp/serialization.hpp>
#include <pfp/stats.hpp>
#include <pfp/value.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pfp {

/// How a Manager runs. The Options part (workers, timeout, backend, limits, retries, ...) is
/// passed to the engine as it is.
struct ManagerOptions : Options {
  /// Options::progress on: a live line on a terminal, plain lines elsewhere (see ProgressOptions).
  ManagerOptions() { progress.mode = ProgressMode::automatic; }
  ErrorPolicy on_error = ErrorPolicy::fail_fast;
  /// Most items handed out and not yet finished (the bounded queue: the item source is not read
  /// while it is full). 0 = twice the number of workers.
  std::size_t max_in_flight = 0;
  /// Receives one ItemLog per finished item (stderr_logger() by default; silent_logger() for none),
  /// and with live_log one per ItemContext::log() line as it is written. Once it threw, it is not
  /// called again (the run stops with what it threw).
  Logger logger = stderr_logger();
  /// ItemContext::log() lines reach the logger as they are written (ItemLog::live), not only in
  /// the item's final record.
  bool live_log = true;
  /// Ctrl-C (SIGINT) during run() stops the run: no more items, the running ones killed, code 2
  /// "Keyboard interrupt". The previous SIGINT disposition is restored when run() returns. Not
  /// installed when SIGINT is ignored (SIG_IGN) when the run starts, or another Manager's run in
  /// this process already handles it.
  bool handle_sigint = true;
};


template <class Handler>
class Manager;


/// Runs a handler over its items with worker processes (Options::backend may choose threads or
/// the calling thread instead). See handler_traits for what a handler provides.
///
/// Guarantees: at most ManagerOptions::max_in_flight items are handed out and unfinished at any
/// time; each item is handled once, by one worker, with that worker's own copy of the handler (as
/// it was when the worker started); a worker that crashes or hangs (past Options::timeout) fails
/// only its item; run() always returns, with every worker reaped, and may be called again.
/// A Manager is not thread-safe, except cancel() and stats().
template <class Handler>
class Manager {
  using traits = handler_traits<Handler>;
  static_assert(traits::has_build_items,
                "pfp::Manager<Handler>: Handler needs a member `build_items(pfp::BuildContext&)` (or `build_items()`) "
                "that returns the items: a range or a generator callable returning std::optional<Item>");
  static_assert(!traits::has_build_items || traits::source_is_range || traits::source_is_generator,
                "pfp::Manager<Handler>: Handler::build_items() must return a range (begin()/end(), e.g. "
                "pfp::batches(...)) or a generator callable returning std::optional<Item> (std::nullopt ends the items)");
  static_assert(!traits::valid_source || traits::item_converts,
                "pfp::Manager<Handler>: the items build_items() produces must convert to pfp::Value (they are sent to "
                "the workers); define void to_value(pfp::Value&, const Item&) and "
                "void from_value(const pfp::Value&, Item&) in the item type's namespace");
  static_assert(!traits::valid_source || traits::has_handle_item,
                "pfp::Manager<Handler>: Handler needs a member `void handle_item(const Item&, pfp::ItemContext&)`, "
                "where Item is what build_items() produces");
  static_assert(traits::valid_log_item,
                "pfp::Manager<Handler>: Handler::log_item(const Item&) must return a std::string (or something "
                "convertible to one) or a number");

 public:
  using item_type = typename traits::item_type;

  /// Uses a default-constructed Handler. Throws pfp::error if options are invalid.
  explicit Manager(ManagerOptions options = ManagerOptions{}) : Manager(Handler{}, std::move(options)) {}

  /// Uses `handler` as the prototype every worker copies. Throws pfp::error if options are invalid.
  explicit Manager(Handler handler, ManagerOptions options = ManagerOptions{})
      : handler_(std::move(handler)), options_(std::move(options)), cancel_(std::make_unique<detail::CancelState>()) {
    detail::validate(options_);
  }

  /// Builds the items and handles every one of them in the workers (see the class comment), then
  /// returns how it went. Never throws for what items, the item builder, the logger or the engine
  /// do: every failure is an ExitStatus with code 1 (2 on SIGINT, 3 after cancel()).
  /// Throws pfp::error only when called while a run of this object is in progress.
  ExitStatus run() {
    if constexpr (!traits::valid) {
      return ExitStatus{};  // the static_asserts above say what is missing
    } else {
      if (running_) throw error("pfp::Manager::run: a run of this Manager is already in progress");
      running_ = true;
      struct Reset {
        bool& flag;
        ~Reset() { flag = false; }
      } reset{running_};
      return run_once();
    }
  }

  /// Stops the run in progress as Ctrl-C would, but with code 3 "Cancelled". Thread-safe and
  /// async-signal-safe; does nothing without a run in progress.
  void cancel() noexcept { cancel_->request(); }

  /// A copy of the run's stats so far (the last run's after it ended). Thread-safe.
  Stats stats() const {
    std::lock_guard<std::mutex> lock(state_.mu);
    return state_.totals;
  }

  /// The prototype handler (the parent's; workers handle items with their own copies).
  Handler& handler() noexcept { return handler_; }
  const Handler& handler() const noexcept { return handler_; }
  const ManagerOptions& options() const noexcept { return options_; }

 private:
  using Clock = std::chrono::steady_clock;
  using Source = typename traits::source_type;
  using Stream = detail::item_stream<Source>;

  /// The Feed of one run: items from the handler's source out, results in.
  class ItemFeed final : public detail::Feed {
    static constexpr std::size_t kMaxDrained = 100'000;  // see drop_rest()

   public:
    ItemFeed(Manager& m, Stream& items, std::size_t bound, detail::ProgressLine& progress)
        : m_(m), items_(items), bound_(bound), progress_(progress), logger_(m.options_.logger) {
      wake_.open();
    }

    std::optional<detail::Task> pull() override {
      drain();
      if (stopped_ || exhausted_) return std::nullopt;
      if (in_flight_ >= bound_) {
        waiting_ = true;
        return std::nullopt;
      }
      const std::uint64_t seq = pulled_;
      std::optional<item_type> item;
      try {
        item = items_.next();
      } catch (...) {
        source_failed("the item builder threw " + detail::describe_current_exception(), std::nullopt);
        return std::nullopt;
      }
      if (!item) {
        exhausted_ = true;
        return std::nullopt;
      }
      detail::Task task;
      std::string label = std::to_string(seq);
      try {
        label = m_.label_of(*item, seq);
        task.payload = encode(Value(*item));
      } catch (...) {
        source_failed("item " + label + " could not be prepared: " + detail::describe_current_exception(), label);
        return std::nullopt;
      }
      labels_.emplace(seq, std::move(label));
      ++pulled_;
      ++in_flight_;
      return task;
    }

    bool finished() override { return stopped_ || exhausted_; }
    int wake_fd() const override { return wake_.read_fd(); }
    std::optional<std::size_t> size_hint() const override { return items_.size(); }
    bool stop_requested() override {
      stop_heard_ = stop_heard_ || stopped_;
      return stopped_;
    }
    int side_fd() const override { return m_.state_.log_channel.fd(); }
    void side_ready() override { take_lines(); }

    // Not a stop the run asked for: the run cannot go on (no worker process can be started), so
    // every item left gets that verdict; a run with items left unhandled is no success.
    void drop_rest(const std::string& why) override {
      if (stop_heard_ || exhausted_ || m_.cancel_->requested() || logger_.threw()) return;
      exhausted_ = true;
      // Every item the source still has gets its verdict, but a source without a known end may
      // never end: past kMaxDrained items it is left unread (the run has failed either way).
      const std::size_t limit = m_.state_.expected ? std::numeric_limits<std::size_t>::max() : kMaxDrained;
      for (std::size_t drained = 0; !m_.cancel_->requested(); ++drained) {
        if (drained == limit) {
          source_failed(why + "; the item source was not read past " + std::to_string(kMaxDrained) +
                            " more items (it has no known end)", std::nullopt);
          return;
        }
        std::optional<item_type> item;
        try {
          item = items_.next();
        } catch (...) {
          source_failed("the item builder threw " + detail::describe_current_exception(), std::nullopt);
          return;
        }
        if (!item) return;
        ItemLog log;
        log.seq = pulled_++;
        log.label = std::to_string(log.seq);
        try {
          log.label = m_.label_of(*item, log.seq);
        } catch (...) {
        }
        log.status = Status::cancelled;
        log.error = why;
        record(log.seq, log);
      }
    }

    void deliver(std::uint64_t seq, Result&& r) override {
      take_lines();  // those written before the item's result came
      if (in_flight_ > 0) --in_flight_;
      if (waiting_) {
        waiting_ = false;
        wake_.ring();
      }
      std::string label = take_label(seq);
      ItemLog log;
      log.seq = seq;
      log.label = label;
      log.pid = r.pid;
      log.status = r.status;
      log.error = std::move(r.error);
      log.duration = r.duration;
      std::optional<unsigned> threw_in;  // the worker that reported the item threw
      if (auto it = lines_.find(seq); it != lines_.end()) {
        log.messages = std::move(it->second.lines);
        log.messages_shown = m_.options_.live_log ? log.messages.size() : 0;
        threw_in = it->second.threw_in;
        lines_.erase(it);
      }
      if (r.status == Status::ok) {
        try {
          const Value& v = r.result;
          log.worker = v.at("w").as<unsigned>();
          Stats delta = v.at("s").as<Stats>();
          if (const Value* m = v.find("m"))
            for (std::string& line : m->as<std::vector<std::string>>()) log.messages.push_back(std::move(line));
          std::lock_guard<std::mutex> lock(m_.state_.mu);
          m_.state_.totals.merge(delta);
        } catch (...) {
          log.status = Status::exception;
          log.error = "pfp::Manager: the item's stats could not be merged: " + detail::describe_current_exception();
        }
      } else if (r.status == Status::exception) {
        log.worker = threw_in;  // a live worker: only a dead one is known by its pid alone
      }
      record(seq, log);
    }

    void amend(std::uint64_t seq, Result&& r) override {
      // An item reported ok corrupted the result stream afterwards: it counts as failed now (the
      // stats it sent stay merged). One already reported failed (its result withheld) stays so.
      Recent* was = nullptr;
      for (Recent& d : recent_)
        if (d.seq == seq) was = &d;
      if (!was || !was->ok) return;
      was->ok = false;
      if (ok_ > 0) --ok_;
      ItemLog log;
      log.seq = seq;
      log.label = was->label;
      log.pid = r.pid;
      log.status = r.status;
      log.error = std::move(r.error);
      record(seq, log);
    }

    // The counts so far.
    std::size_t ok() const noexcept { return ok_; }
    std::size_t failed() const noexcept { return failed_; }
    std::size_t cancelled() const noexcept { return cancelled_; }
    std::size_t done() const noexcept { return ok_ + failed_ + cancelled_; }
    bool stopped() const noexcept { return stopped_; }
    std::vector<ItemFailure>& failures() noexcept { return failures_; }
    const std::optional<std::string>& source_error() const noexcept { return source_error_; }
    // The first failure (an item's or the source's): its message and target.
    const std::optional<std::pair<std::string, std::optional<std::string>>>& first() const noexcept { return first_; }

   private:
    void drain() noexcept { wake_.drain(); }

    // What the handlers logged so far: kept for each item's final record, and passed on live.
    void take_lines() {
      for (detail::ItemLogChannel::Record& rec : m_.state_.log_channel.take()) {
        Lines& kept = lines_[rec.seq];
        if (rec.kind == detail::ItemLogChannel::Kind::failed) {
          kept.threw_in = rec.worker;
          continue;
        }
        kept.lines.push_back(rec.text);
        if (!m_.options_.live_log) continue;
        ItemLog log;
        log.seq = rec.seq;
        auto label = labels_.find(rec.seq);
        log.label = label != labels_.end() ? label->second : std::to_string(rec.seq);
        log.worker = rec.worker;
        log.pid = rec.pid;
        log.live = true;
        log.messages.push_back(std::move(rec.text));
        call_logger(log);
      }
    }

    void call_logger(const ItemLog& log) {
      if (!m_.options_.logger || logger_.threw()) return;
      progress_.suspend();
      try {
        logger_(log);
      } catch (...) {
        stopped_ = true;  // the engine stops the run and rethrows: the items it cancels are no failures
        throw;
      }
      progress_.resume();
    }

    void source_failed(std::string message, std::optional<std::string> target) {
      exhausted_ = true;
      if (m_.options_.on_error == ErrorPolicy::fail_fast) stopped_ = true;
      if (!first_) first_.emplace(message, target);
      source_error_ = std::move(message);
    }

    std::string take_label(std::uint64_t seq) {
      auto it = labels_.find(seq);
      if (it == labels_.end()) return std::to_string(seq);
      std::string label = std::move(it->second);
      labels_.erase(it);
      if (recent_.size() >= 64) recent_.pop_front();
      recent_.push_back(Recent{seq, label, false});
      return label;
    }

    // Counts, lists and logs a finished item.
    void record(std::uint64_t seq, ItemLog& log) {
      // A cancelled item is a failure unless the run was being stopped (the engine also cancels
      // items it could not start because no worker process could be started).
      const bool stopping = stopped_ || m_.cancel_->requested();
      if (log.status == Status::ok) {
        ++ok_;
        if (!recent_.empty() && recent_.back().seq == seq) recent_.back().ok = true;
      } else if (log.status == Status::cancelled && stopping) {
        ++cancelled_;
      } else {
        ++failed_;
        failures_.push_back(ItemFailure{seq, log.label, log.status, log.error});
        if (!first_) first_.emplace(std::string(to_string(log.status)) + ": " + log.error, log.label);
        if (m_.options_.on_error == ErrorPolicy::fail_fast) stopped_ = true;
      }
      call_logger(log);
      if (m_.state_.expected) progress_.set_total(m_.state_.expected);
      progress_.update(ok_ + failed_, failed_, cancelled_);
    }

    struct Lines {
      std::vector<std::string> lines;
      std::optional<unsigned> threw_in;
    };

    Manager& m_;
    Stream& items_;
    const std::size_t bound_;
    detail::ProgressLine& progress_;
    detail::WakePipe wake_;
    std::uint64_t pulled_ = 0;
    std::size_t in_flight_ = 0;
    bool waiting_ = false;    // pull() said "not now" because the bound was reached
    bool exhausted_ = false;  // the source has no more items (or threw)
    bool stopped_ = false;    // fail-fast: a failure stops the run
    bool stop_heard_ = false;  // the engine saw stopped_: what it drops is that stop's
    detail::UserCallback<const Logger> logger_;
    std::unordered_map<std::uint64_t, Lines> lines_;  // of the items in flight
    std::unordered_map<std::uint64_t, std::string> labels_;  // of the items in flight
    struct Recent {
      std::uint64_t seq;
      std::string label;
      bool ok;  // counted as ok
    };
    std::deque<Recent> recent_;  // the last items delivered (for amend)
    std::size_t ok_ = 0;
    std::size_t failed_ = 0;
    std::size_t cancelled_ = 0;
    std::vector<ItemFailure> failures_;
    std::optional<std::string> source_error_;
    std::optional<std::pair<std::string, std::optional<std::string>>> first_;
  };

  template <class Item = item_type>  // a template: no reference to void when Handler is invalid
  std::string label_of(const Item& item, std::uint64_t seq) {
    if constexpr (traits::has_log_item) {
      if constexpr (std::is_convertible_v<typename traits::label_type, std::string>) {
        return std::string(handler_.log_item(item));
      } else {
        return std::to_string(handler_.log_item(item));
      }
    } else {
      return std::to_string(seq);
    }
  }

  // Runs in the worker: one item with the worker's handler.
  void handle(Handler& h, const detail::TaskView& task, Result& r) const {
    const item_type item = decode(task.payload).template as<item_type>();
    ItemContext ctx(state_.shared, task.worker, task.seq, &state_.log_channel);
    if constexpr (traits::has_reset_stats) h.reset_stats(ctx.stats);
    try {
      h.handle_item(item, ctx);
    } catch (...) {
      // The worker lives on: the parent logs the item as this worker's, with the lines it wrote.
      state_.log_channel.send(task.seq, task.worker, detail::ItemLogChannel::Kind::failed, {});
      for (const std::string& line : ctx.messages_) state_.log_channel.send(task.seq, task.worker, detail::ItemLogChannel::Kind::line, line);
      throw;
    }
    Value out = Value::object();
    out["w"] = task.worker;
    out["s"] = Value(ctx.stats);
    if (!ctx.messages_.empty()) out["m"] = Value(ctx.messages_);
    r.result = std::move(out);
  }

  ExitStatus run_once() {
    const auto start = Clock::now();
    ExitStatus st;
    {
      std::lock_guard<std::mutex> lock(state_.mu);
      state_.totals.clear();
    }
    state_.shared = Value::object();
    state_.frozen = false;
    state_.expected.reset();
    state_.workers = detail::effective_workers(options_);

    detail::SigintTarget target;
    target.cancel = cancel_.get();
    std::optional<std::string> run_error;
    std::optional<detail::ProgressLine> progress;
    std::optional<ItemFeed> feed;
    bool opened = false;
    try {
      cancel_->open();
      opened = true;
      state_.log_channel.open(detail::isolated_workers(options_));
    } catch (...) {
      run_error = "pfp::Manager: " + detail::describe_current_exception();
    }
    struct CloseCancel {
      detail::CancelState& state;
      detail::ItemLogChannel& channel;
      bool open;
      ~CloseCancel() {
        channel.close();
        if (open) state.close();
      }
    } close_cancel{*cancel_, state_.log_channel, opened};
    {
      detail::SigintScope sigint(&target, options_.handle_sigint && !run_error);
      BuildContext ctx(state_);
      std::optional<Stream> items;
      if (!run_error) {
        try {
          items.emplace(call_build(ctx));
        } catch (...) {
          run_error = "the item builder threw " + detail::describe_current_exception();
        }
      }
      state_.frozen = true;
      if (items) {
        try {
          std::vector<Handler> copies;  // empty: the workers are processes forked with handler_
          if (!detail::isolated_workers(options_)) copies = per_worker_copies();
          if (!state_.expected) state_.expected = items->size();
          progress.emplace(options_.progress, state_.expected, start);
          const std::size_t bound = options_.max_in_flight ? options_.max_in_flight : 2 * std::size_t{state_.workers};
          feed.emplace(*this, *items, bound, *progress);
          detail::FeedRunner runner = [this, &copies](const detail::TaskView& task, Result& r) {
            handle(copies.empty() ? handler_ : copies.at(task.worker), task, r);
          };
          Options engine = options_;
          engine.progress = ProgressOptions::none();  // the Manager draws its own
          detail::run_feed(runner, engine, *feed, cancel_.get());
        } catch (...) {
          run_error = "pfp::Manager: the run stopped: " + detail::describe_current_exception();
        }
      }
    }

    if (feed && progress) {
      try {
        progress->finish(feed->ok() + feed->failed(), feed->failed(), feed->cancelled(),
                         target.hit.load() || (opened && cancel_->requested()) || feed->stopped());
      } catch (...) {
        if (!run_error) run_error = "pfp::Manager: on_progress threw " + detail::describe_current_exception();
      }
    }
    verdict(st, feed ? &*feed : nullptr, target.hit.load(), opened, run_error);
    st.stats = stats();
    st.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return st;
  }

  // The run's exit status from what its feed counted and how it ended.
  void verdict(ExitStatus& st, ItemFeed* feed, bool interrupted, bool opened, const std::optional<std::string>& run_error) {
    if (feed) {
      st.items_ok = feed->ok();
      st.items_failed = feed->failed();
      st.items_cancelled = feed->cancelled();
      st.failures = std::move(feed->failures());
    }
    if (interrupted) {
      st.code = ExitStatus::interrupted;
      st.message = "Keyboard interrupt";
    } else if (opened && cancel_->requested()) {
      st.code = ExitStatus::cancelled;
      st.message = "Cancelled";
    } else if (feed && feed->first()) {
      st.code = ExitStatus::failure;
      if (options_.on_error == ErrorPolicy::fail_fast) {
        st.message = feed->first()->first;
        st.error_target = feed->first()->second;
      } else {
        std::vector<std::string> parts;
        if (!st.failures.empty()) {
          const ItemFailure& f = st.failures.front();
          parts.push_back(std::to_string(st.items_failed) + " of " + std::to_string(feed->done()) +
                          " items failed (first: " + std::string(to_string(f.status)) + ": " + f.error + ")");
          st.error_target = f.label;
        } else {
          st.error_target = feed->first()->second;
        }
        if (feed->source_error()) parts.push_back(*feed->source_error());
        st.message = parts.front();
        if (parts.size() > 1) st.message += "; " + parts.back();
      }
      if (run_error) st.message += "; then " + *run_error;
    } else if (run_error) {
      st.code = ExitStatus::failure;
      st.message = *run_error;
    }
  }

  auto call_build(BuildContext& ctx) {
    if constexpr (detail::builds_with_context<Handler>::value) {
      return Stream(handler_.build_items(ctx));
    } else {
      return Stream(handler_.build_items());
    }
  }

  // In-process backends: one copy of the prototype per worker slot, so that handler state is per
  // worker there too. The inline backend makes do with the prototype when it cannot be copied.
  std::vector<Handler> per_worker_copies() const {
    if constexpr (std::is_copy_constructible_v<Handler>) {
      return std::vector<Handler>(detail::runs_in_caller(options_) ? 1 : state_.workers, handler_);
    } else {
      if (detail::runs_in_caller(options_)) return {};
      throw error("pfp::Manager: Backend::threads gives every worker thread its own copy of the handler, so Handler must "
                  "be copy-constructible; use Backend::processes or Backend::inline_, or make it copyable");
    }
  }

  Handler handler_;
  ManagerOptions options_;
  std::unique_ptr<detail::CancelState> cancel_;
  mutable detail::ManagerRunState state_;
  bool running_ = false;
};

}  // namespace pfp

#endif  // PFP_MANAGER_HPP
