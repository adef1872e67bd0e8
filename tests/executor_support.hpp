// What the Executor's test files share: the sanitizer check, options per backend.
#ifndef PFP_TESTS_EXECUTOR_SUPPORT_HPP
#define PFP_TESTS_EXECUTOR_SUPPORT_HPP

#include <pfp/pfp.hpp>

// Sanitizer runtimes need descriptors of their own (UBSan's dynamic type checks, the symbolizer):
// a test that starves the process of them gets false reports there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PFP_TEST_SANITIZER_RUNTIME 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PFP_TEST_SANITIZER_RUNTIME 1
#endif
#endif

namespace pfp_test {

inline pfp::Options executor_options(unsigned workers, pfp::Backend backend = pfp::Backend::processes) {
  pfp::Options o;
  o.workers = workers;
  o.backend = backend;
  return o;
}

}  // namespace pfp_test

#endif  // PFP_TESTS_EXECUTOR_SUPPORT_HPP
