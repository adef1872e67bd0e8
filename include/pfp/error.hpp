#ifndef PFP_ERROR_HPP
#define PFP_ERROR_HPP

#include <stdexcept>

// Marks the paths that only build error messages: kept out of line, so the checks before them
// stay small enough to inline where pfp handles every function's result.
#if defined(__GNUC__) || defined(__clang__)
#define PFP_DETAIL_COLD __attribute__((cold, noinline))
#else
#define PFP_DETAIL_COLD
#endif

namespace pfp {

/// The one exception type pfp throws for misuse, bad input and failed system calls.
/// Its what() says what went wrong and, where it can, what to do about it.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace pfp

#endif  // PFP_ERROR_HPP
