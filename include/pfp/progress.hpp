#ifndef PFP_PROGRESS_HPP
#define PFP_PROGRESS_HPP

// Logging and progress for the Manager: one log record per handled item, sent to a pluggable
// Logger (stderr by default), and a progress report: a live line redrawn in place on a terminal,
// plain lines now and then anywhere else.

#include <pfp/detail/posix.hpp>
#include <pfp/progress_options.hpp>
#include <pfp/result.hpp>

#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pfp {

/// What happened to one handled item, as a Logger sees it. Built in the parent after the item's
/// result came back.
struct ItemLog {
  std::uint64_t seq = 0;            ///< the item's number in the run, from 0, in the order it was handed out
  std::string label;                ///< the handler's log_item(item), or the seq when it has none
  std::optional<unsigned> worker;   ///< worker slot 0 .. workers-1; empty when the item's worker did not report back
  int pid = 0;                      ///< the worker process that ran it (0 if it never ran)
  Status status = Status::ok;
  std::string error;                ///< the cause when status is not ok
  std::chrono::nanoseconds duration{};
  std::vector<std::string> messages;  ///< what the handler wrote with ItemContext::log(), in order
  /// True for a line the handler wrote while the item runs (ItemContext::log): `messages` holds
  /// that one line, `status` and `duration` mean nothing yet. False for the item's final record.
  bool live = false;
  /// In the final record: how many of `messages` (the first ones) the Logger already received
  /// live.
  std::size_t messages_shown = 0;
};

/// Receives one ItemLog per handled item, in completion order, on the thread that runs the
/// Manager. Any callable; an empty Logger logs nothing.
using Logger = std::function<void(const ItemLog&)>;

/// The text stderr_logger() writes for `log`: one line per handler message not shown live yet,
/// then (in a final record) the verdict line, each starting with "[worker N] <label>: " ("[pid P]"
/// when the item's worker did not report back: it died), with a trailing newline.
inline std::string format_item_log(const ItemLog& log) {
  std::string prefix = log.worker ? "[worker " + std::to_string(*log.worker) + "] " : "[pid " + std::to_string(log.pid) + "] ";
  prefix += log.label + ": ";
  std::string out;
  for (std::size_t i = log.live ? 0 : log.messages_shown; i < log.messages.size(); ++i) out += prefix + log.messages[i] + "\n";
  if (log.live) return out;
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.3f s", std::chrono::duration<double>(log.duration).count());
  out += prefix;
  if (log.status == Status::ok) {
    out += std::string("done in ") + secs + "\n";
  } else {
    out += std::string(to_string(log.status)) + ": " + log.error + " (after " + secs + ")\n";
  }
  return out;
}

/// A Logger writing format_item_log() to descriptor `fd` with one write() per item, so lines of
/// different items never interleave. Write failures are ignored. `fd` must outlive the logger.
inline Logger fd_logger(int fd) {
  return [fd](const ItemLog& log) {
    const std::string text = format_item_log(log);
    (void)detail::write_all(fd, text.data(), text.size());
  };
}

/// The default Logger: fd_logger(2).
inline Logger stderr_logger() { return fd_logger(2); }

/// A Logger that logs nothing.
inline Logger silent_logger() { return Logger(); }

namespace detail {

/// "7s", "2m05s", "1h02m".
inline std::string format_duration(double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  const auto s = static_cast<unsigned long long>(seconds + 0.5);
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llus", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%llum%02llus", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lluh%02llum", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

}  // namespace detail

/// One progress line without line ending, e.g.
///   "progress: 37/100 (37%) | 12.3 items/s | ETA 5s | 0 failed | 3s elapsed"
/// or, when the total is unknown, "progress: 37 items | 12.3 items/s | 0 failed | 3s elapsed".
/// The ETA is "?" until an item has finished; a stopped run has none, and cancelled items show
/// as "| 3 cancelled" after the failures.
inline std::string format_progress(const ProgressSnapshot& s) {
  const double secs = std::chrono::duration<double>(s.elapsed).count();
  const double rate = secs > 0 ? static_cast<double>(s.done) / secs : 0.0;
  std::string out = "progress: " + std::to_string(s.done);
  if (s.total) {
    const std::size_t pct = *s.total ? (s.done >= *s.total ? 100 : s.done * 100 / *s.total) : 100;
    out += "/" + std::to_string(*s.total) + " (" + std::to_string(pct) + "%)";
  } else {
    out += " items";
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, " | %.1f items/s", rate);
  out += buf;
  if (s.total && !s.stopped) {
    out += " | ETA ";
    if (s.done >= *s.total) {
      out += "0s";
    } else if (rate > 0) {
      out += detail::format_duration(static_cast<double>(*s.total - s.done) / rate);
    } else {
      out += "?";
    }
  }
  out += " | " + std::to_string(s.failed) + " failed";
  if (s.cancelled) out += " | " + std::to_string(s.cancelled) + " cancelled";
  out += " | " + detail::format_duration(secs) + " elapsed";
  return out;
}

namespace detail {

/// Draws the progress of one run. Used from one thread.
class ProgressLine {
 public:
  using Clock = std::chrono::steady_clock;

  ProgressLine(const ProgressOptions& o, std::optional<std::size_t> total, Clock::time_point start)
      : opt_(o), total_(total), start_(start), last_(start) {
    mode_ = opt_.on_progress ? ProgressMode::off : opt_.mode;
    if (mode_ == ProgressMode::automatic) mode_ = ::isatty(opt_.fd) == 1 ? ProgressMode::terminal : ProgressMode::plain;
    if (mode_ == ProgressMode::terminal) draw(start);
  }

  ProgressMode mode() const noexcept { return mode_; }
  void set_total(std::optional<std::size_t> total) noexcept { total_ = total; }

  /// Counts changed: redraws (terminal) or prints a line (plain) if enough time has passed.
  void update(std::size_t done, std::size_t failed, std::size_t cancelled = 0) {
    done_ = done;
    failed_ = failed;
    cancelled_ = cancelled;
    const auto now = Clock::now();
    if (mode_ == ProgressMode::terminal && now - last_ >= opt_.refresh) draw(now);
    if (mode_ == ProgressMode::plain && now - last_ >= opt_.interval) line(now);
    if (opt_.on_progress && now - last_ >= opt_.refresh) report(now);
  }

  /// Before something else writes to the terminal: erase the live line.
  void suspend() {
    if (mode_ != ProgressMode::terminal || !drawn_) return;
    write("\r\033[K");
    drawn_ = false;
  }
  /// After that: draw it again.
  void resume() {
    if (mode_ == ProgressMode::terminal) draw(Clock::now());
  }

  /// The run ended (`stopped`: before its end): the final state, then a line end (terminal) or a
  /// last line (plain).
  void finish(std::size_t done, std::size_t failed, std::size_t cancelled = 0, bool stopped = false) {
    done_ = done;
    failed_ = failed;
    cancelled_ = cancelled;
    stopped_ = stopped;
    const auto now = Clock::now();
    if (mode_ == ProgressMode::terminal) {
      draw(now);
      write("\n");
      drawn_ = false;
    } else if (mode_ == ProgressMode::plain) {
      line(now);
    }
    if (opt_.on_progress) {
      final_ = true;
      report(now);
    }
  }

 private:
  ProgressSnapshot snapshot(Clock::time_point now) const {
    return ProgressSnapshot{done_,     failed_,  total_, std::chrono::duration_cast<std::chrono::nanoseconds>(now - start_),
                            cancelled_, stopped_, final_};
  }
  std::string text(Clock::time_point now) const { return format_progress(snapshot(now)); }
  // Once on_progress threw, it is not called again (the run stops with what it threw).
  void report(Clock::time_point now) {
    if (callback_threw_) return;
    last_ = now;
    try {
      opt_.on_progress(snapshot(now));
    } catch (...) {
      callback_threw_ = true;
      throw;
    }
  }
  void draw(Clock::time_point now) {
    write("\r\033[K" + text(now));
    drawn_ = true;
    last_ = now;
  }
  void line(Clock::time_point now) {
    write(text(now) + "\n");
    last_ = now;
  }
  void write(const std::string& s) const { (void)write_all(opt_.fd, s.data(), s.size()); }

  ProgressOptions opt_;
  ProgressMode mode_;
  std::optional<std::size_t> total_;
  Clock::time_point start_;
  Clock::time_point last_;
  std::size_t done_ = 0;
  std::size_t failed_ = 0;
  std::size_t cancelled_ = 0;
  bool stopped_ = false;
  bool final_ = false;
  bool callback_threw_ = false;
  bool drawn_ = false;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_PROGRESS_HPP
