// bench_common.hpp -- what the C++ benchmarks share: their output lines for bench/aggregate.py.
#ifndef PFP_BENCH_COMMON_HPP
#define PFP_BENCH_COMMON_HPP

#include <cstdio>
#include <string>

namespace bench {

inline int failures = 0;

/// One figure: `RESULT <key> <value> <unit>`, flushed at once (a run killed later keeps it).
inline void result(const std::string& key, double value, const char* unit) {
  std::printf("RESULT %s %.10g %s\n", key.c_str(), value, unit);
  std::fflush(stdout);
}

/// A wrong Result: a `FAIL` line (the first 20) and a non-zero exit status at the end.
inline void fail(const std::string& what) {
  ++failures;
  if (failures <= 20) std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
}

}  // namespace bench

#endif
