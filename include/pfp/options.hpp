#ifndef PFP_OPTIONS_HPP
#define PFP_OPTIONS_HPP

#include <chrono>
#include <cstddef>

namespace pfp {

/// How a run is carried out. Every field has a usable default.
struct Options {
  /// Worker processes that may exist at once; 0 = std::thread::hardware_concurrency().
  unsigned workers = 0;
  /// Per-function wall-clock limit; 0 = no limit. A function past it is killed with its whole
  /// process group and reported as Status::timed_out.
  std::chrono::milliseconds timeout{0};
  /// Functions one worker process runs before it is replaced; 0 = unlimited,
  /// 1 = a fresh process per function.
  unsigned max_tasks_per_worker = 0;
  /// Largest serialized result accepted, in bytes. A larger one is refused on that function
  /// (Status::exception) and never allocated by the parent.
  std::size_t max_result_bytes = std::size_t{4} << 30;
};

}  // namespace pfp

#endif  // PFP_OPTIONS_HPP
