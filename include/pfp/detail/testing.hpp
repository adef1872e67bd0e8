#ifndef PFP_DETAIL_TESTING_HPP
#define PFP_DETAIL_TESTING_HPP

// Hooks for pfp's own fault-injection tests, in one place: each is null (or -1) unless a test sets
// it, and costs one load where it is looked at. Not for ordinary code.

#include <cstdint>

#include <sys/types.h>

namespace pfp {
namespace detail {

/// In a worker process: the descriptor its frames go to (-1 elsewhere), for tests that must write
/// broken frames the way a dying worker would.
inline int worker_result_fd = -1;
/// In a worker process: the index a frame for the running task must carry (its id).
inline std::uint64_t worker_current_ticket = 0;

namespace testing {
/// In the parent: called with the worker's pid when its result stream is found corrupt, before
/// the worker is killed (a test can make the parent slow to react, as a busy machine does).
inline void (*on_corrupt_stream)(pid_t) = nullptr;
/// In a worker: called after a function returned, before its result is handed over (a test can
/// make the hand-over slow, as a busy machine does).
inline void (*after_return)() = nullptr;
}  // namespace testing

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_TESTING_HPP
