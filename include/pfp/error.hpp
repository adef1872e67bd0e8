#ifndef PFP_ERROR_HPP
#define PFP_ERROR_HPP

#include <stdexcept>

namespace pfp {

/// The one exception type pfp throws for misuse, bad input and failed system calls.
/// Its what() says what went wrong and, where it can, what to do about it.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace pfp

#endif  // PFP_ERROR_HPP
