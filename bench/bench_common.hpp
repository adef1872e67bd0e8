// bench_common.hpp -- what the C++ benchmarks share: their output lines for bench/aggregate.py,
// their command line, and the parent's resident memory.
#ifndef PFP_BENCH_COMMON_HPP
#define PFP_BENCH_COMMON_HPP

#include <algorithm>
#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

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

/// The command line every benchmark takes: [--quick] [--only name,name,...].
struct Args {
  bool quick = false;
  std::vector<std::string> only;
  bool ok = true;  // false: a usage error, printed
  bool want(const char* name) const { return only.empty() || std::find(only.begin(), only.end(), name) != only.end(); }
};

inline Args parse_args(int argc, char** argv, const char* usage) {
  Args args;
  for (int i = 1; i < argc && args.ok; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      args.quick = true;
    } else if (a == "--only" && i + 1 < argc) {
      std::stringstream ss(argv[++i]);
      std::string item;
      while (std::getline(ss, item, ',')) args.only.push_back(item);
    } else {
      std::fprintf(stderr, "usage: %s\n", usage);
      args.ok = false;
    }
  }
  return args;
}

/// Runs the wanted parts ({name, void (*)()}) in order; what one throws is a FAIL and the next runs.
template <class Parts>
void run_parts(const Args& args, const Parts& parts) {
  for (const auto& p : parts) {
    if (!args.want(p.name)) continue;
    try {
      p.run();
    } catch (const std::exception& e) {
      fail(std::string(p.name) + ": threw " + e.what());
    }
  }
}

/// Resident set size in bytes, after handing freed heap back to the system so it counts what is
/// live rather than what malloc keeps cached.
inline double rss_bytes() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
  long size = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

}  // namespace bench

#endif
