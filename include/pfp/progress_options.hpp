#ifndef PFP_PROGRESS_OPTIONS_HPP
#define PFP_PROGRESS_OPTIONS_HPP

// How the progress of a run is shown (Options::progress, for every front end): the kinds of
// report, where they go, and what a report says. The drawing is in <pfp/progress.hpp>.

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>

namespace pfp {

/// How the progress of a run is shown.
enum class ProgressMode {
  automatic,  ///< terminal if ProgressOptions::fd is a terminal (isatty), plain otherwise
  terminal,   ///< one line redrawn in place with '\r' (at most every ProgressOptions::refresh)
  plain,      ///< a full line every ProgressOptions::interval, and one at the end
  off,        ///< nothing
};

struct ProgressSnapshot;

/// How a run's progress is reported (Options::progress; ManagerOptions turns it on by default).
struct ProgressOptions {
  ProgressMode mode = ProgressMode::automatic;
  /// Where the progress goes (stderr by default). Must stay open during the run.
  int fd = 2;
  /// Terminal mode: shortest time between two redraws.
  std::chrono::milliseconds refresh{100};
  /// Plain mode: time between two lines (0: a line after every item).
  std::chrono::milliseconds interval{std::chrono::seconds(10)};
  /// For drawing your own: when set, called with the counts instead of drawing anything (mode
  /// and fd are ignored), at most every `refresh` as tasks finish and once when the run ends
  /// (ProgressSnapshot::last), in the thread that receives the Results. What it throws stops
  /// the run like a throwing on_result and is rethrown.
  std::function<void(const ProgressSnapshot&)> on_progress;

  /// No progress at all (what Options has by default).
  static ProgressOptions none() {
    ProgressOptions o;
    o.mode = ProgressMode::off;
    return o;
  }
};

/// What a progress line says.
struct ProgressSnapshot {
  std::size_t done = 0;                ///< items finished (succeeded or failed)
  std::size_t failed = 0;              ///< of them, failed
  std::optional<std::size_t> total;    ///< items in the run, when known
  std::chrono::nanoseconds elapsed{};  ///< since the run started
  std::size_t cancelled = 0;           ///< items stopped before they finished (not in `done`)
  bool stopped = false;                ///< the run was stopped early: there is no ETA
  bool last = false;                   ///< the last report of the run
};

}  // namespace pfp

#endif  // PFP_PROGRESS_OPTIONS_HPP
