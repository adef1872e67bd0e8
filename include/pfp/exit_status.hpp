#ifndef PFP_EXIT_STATUS_HPP
#define PFP_EXIT_STATUS_HPP

// How a pfp::Manager run ended: pfp::ExitStatus and the failed items it lists, and what a
// failure does to the run (ErrorPolicy).

#include <pfp/result.hpp>
#include <pfp/stats.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace pfp {

/// What a Manager does when an item fails (throws, crashes its worker or times out).
enum class ErrorPolicy {
  fail_fast,          ///< stop at the first failure: no more items are handed out, those running are
                      ///< killed, and run() returns promptly with that item's error
  continue_on_error,  ///< handle every item; the failures are counted and listed in the ExitStatus
};

/// One failed item.
struct ItemFailure {
  std::uint64_t seq = 0;  ///< the item's number in the run, from 0
  std::string label;      ///< its log label (log_item), or its seq
  Status status = Status::exception;
  std::string error;      ///< the cause: exception type and what(), signal, time limit
};

/// How a Manager run ended.
struct ExitStatus {
  static constexpr int success = 0;      ///< every item handled
  static constexpr int failure = 1;      ///< an item failed, the item source threw, or the run could not go on
  static constexpr int interrupted = 2;  ///< SIGINT (Ctrl-C)
  static constexpr int cancelled = 3;    ///< Manager::cancel()

  int code = success;
  /// "Success"; "Keyboard interrupt"; "Cancelled"; for a failed item "<status>: <cause>", e.g.
  /// "exception: std::runtime_error: no such file"; "the item builder threw <type>: <what>".
  std::string message = "Success";
  /// The label of the item the failure is about (the first failure under continue_on_error).
  /// Set whenever there is one -- "0" included -- and empty when the failure is not an item's.
  std::optional<std::string> error_target;
  double seconds = 0;  ///< wall time of the run

  std::size_t items_ok = 0;         ///< items handled without failure
  std::size_t items_failed = 0;     ///< items that threw, crashed or timed out
  std::size_t items_cancelled = 0;  ///< items stopped by fail-fast, an interrupt or cancel()
  std::vector<ItemFailure> failures;  ///< every failed item, in the order they finished
  Stats stats;                      ///< the run's final stats

  bool ok() const noexcept { return code == success; }
};

/// "code 0 (Success) in 1.234 s", "code 1 (exception: std::runtime_error: boom) target 0 in 0.100 s".
inline std::string to_string(const ExitStatus& s) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.3f s", s.seconds);
  std::string out = "code " + std::to_string(s.code) + " (" + s.message + ")";
  if (s.error_target) out += " target " + *s.error_target;
  return out + " in " + secs;
}

inline std::ostream& operator<<(std::ostream& os, const ExitStatus& s) { return os << to_string(s); }

}  // namespace pfp

#endif  // PFP_EXIT_STATUS_HPP
