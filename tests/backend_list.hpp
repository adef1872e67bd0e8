// The backends a test runs its cases on, their names for DYNAMIC_SECTION, and small inputs.
#ifndef PFP_TESTS_BACKEND_LIST_HPP
#define PFP_TESTS_BACKEND_LIST_HPP

#include <pfp/map.hpp>
#include <pfp/options.hpp>

#include <vector>

namespace pfp_test {

inline const std::vector<pfp::Backend> kBackends = {pfp::Backend::processes, pfp::Backend::threads, pfp::Backend::inline_};

inline const char* name_of(pfp::Backend b) { return pfp::to_string(b).data(); }

/// MapOptions for `workers` workers on backend b.
inline pfp::MapOptions map_opts(pfp::Backend b, unsigned workers = 2) {
  pfp::MapOptions o;
  o.workers = workers;
  o.backend = b;
  o.threads = pfp::ThreadPolicy::allow;
  return o;
}

/// 0, 1, ..., n-1.
inline std::vector<int> numbers(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i);
  return v;
}

}  // namespace pfp_test

#endif  // PFP_TESTS_BACKEND_LIST_HPP
