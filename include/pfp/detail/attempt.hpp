#ifndef PFP_DETAIL_ATTEMPT_HPP
#define PFP_DETAIL_ATTEMPT_HPP

// How one attempt of a task becomes its verdict, and whether a verdict is tried again: the same
// rules on every backend (worker processes, threads, the calling thread).

#include <pfp/detail/feed.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/options.hpp>
#include <pfp/result.hpp>
#include <pfp/value.hpp>

#include <cstddef>
#include <new>
#include <string>
#include <utility>

namespace pfp {
namespace detail {

/// Runs one attempt of `task` into r: Status::ok with what the runner put in r.result, or
/// Status::exception with "<demangled type>: what()" and a null result (a std::bad_alloc under
/// Options::memory_limit says so). Throws nothing the runner throws.
inline void run_attempt(const FeedRunner& run, const TaskView& task, const Options& opt, Result& r) {
  try {
    run(task, r);
    r.status = Status::ok;
    r.error.clear();
  } catch (const std::bad_alloc&) {
    r.status = Status::exception;
    r.error = describe_current_exception();
    if (opt.memory_limit)
      r.error += " (the worker's address space is limited to " + std::to_string(opt.memory_limit) +
                 " bytes by Options::memory_limit)";
    r.result = Value();
  } catch (...) {
    r.status = Status::exception;
    r.error = describe_current_exception();
    r.result = Value();
  }
}

/// Turns an attempt whose result pfp cannot hand over into Status::exception with `why`.
inline void refuse_result(Result& r, std::string why) {
  r.status = Status::exception;
  r.result = Value();
  r.error = std::move(why);
}

/// What a result of `size` encoded bytes gets when that is over Options::max_result_bytes.
inline std::string oversized(std::size_t size, const Options& opt) {
  return "pfp: the result of " + std::to_string(size) + " bytes exceeds Options::max_result_bytes (" +
         std::to_string(opt.max_result_bytes) + " bytes)";
}

/// What a result gets that could not be encoded (too deep, ...), from inside the catch block.
inline std::string unserializable() { return "pfp: could not serialize the result: " + describe_current_exception(); }

/// Whether a verdict reached after r.attempts attempts is tried again: a crash or a timeout (and
/// with Options::retry_exceptions an exception) while fewer than 1 + Options::retries were made.
inline bool retry_wanted(const Result& r, const Options& opt) noexcept {
  const bool retryable = r.status == Status::crashed || r.status == Status::timed_out ||
                         (r.status == Status::exception && opt.retry_exceptions);
  return retryable && r.attempts <= opt.retries;
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_ATTEMPT_HPP
