#ifndef PFP_RESULT_HPP
#define PFP_RESULT_HPP

#include <pfp/value.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pfp {

/// How a function's run ended.
enum class Status : std::uint8_t {
  ok,         ///< returned normally; Result::result holds what it produced
  exception,  ///< threw; Result::error names the exception type and its what()
  crashed,    ///< its worker died (signal or exit); Result::error names the signal or exit code
  timed_out,  ///< ran past Options::timeout and was killed with its process group
  cancelled,  ///< never ran to completion because the run was stopped or could not start it
};

/// "ok", "exception", "crashed", "timed_out" or "cancelled".
constexpr std::string_view to_string(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::exception: return "exception";
    case Status::crashed: return "crashed";
    case Status::timed_out: return "timed_out";
    case Status::cancelled: return "cancelled";
  }
  return "unknown";
}

/// What one registered function produced. execute_parallel() returns exactly one per function.
struct Result {
  std::string function_name;            ///< the name given to register_function
  std::size_t index = 0;                ///< registration order, from 0
  Status status = Status::cancelled;
  Value result;                         ///< what the function produced (null if nothing)
  std::string error;                    ///< empty when ok; otherwise names the cause
  int pid = 0;                          ///< the worker process that ran it (0 if it never ran)
  /// How long the function itself ran, measured in the worker (for functions of a few nanoseconds
  /// run back to back, the few dozen nanoseconds pfp spends between two of them included).
  std::chrono::nanoseconds duration{};
  unsigned attempts = 0;                ///< times the function was started (more than 1 after retries)
  int rank = 0;                         ///< the MPI rank whose worker ran it (Backend::mpi; else 0)

  bool ok() const noexcept { return status == Status::ok; }
};

}  // namespace pfp

#endif  // PFP_RESULT_HPP
