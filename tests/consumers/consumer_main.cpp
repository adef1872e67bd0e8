// The program every consumer project (find_package, add_subdirectory, FetchContent) builds and runs:
// two functions in worker processes, results checked. Exit 0 and "pfp consumer OK" on success.
#include <pfp/pfp.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#ifndef PFP_CONSUMER_KIND
#define PFP_CONSUMER_KIND "unknown"
#endif

namespace {
int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "CHECK FAILED: " << what << '\n';
    ++failures;
  }
}

void count_words(const pfp::Value& ctx, const pfp::Args& args, pfp::Result& r) {
  const std::string text = ctx.at("text").as<std::string>();
  const std::string needle = args.at("word").as<std::string>();
  int n = 0;
  for (std::size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
  r.result["Count"] = n;
}

long long multiply(const pfp::Value& ctx, const std::vector<int>& xs) {
  long long product = ctx.at("factor").as<long long>();
  for (int x : xs) product *= x;
  return product;
}
}  // namespace

int main() {
  pfp::Options options;
  options.workers = 2;
  options.timeout = std::chrono::milliseconds(30000);

  pfp::Value context{{"text", "a b a c a"}, {"factor", 2}};
  pfp::MultiProcessor<> mp{context, options};
  mp.register_function("count", count_words, pfp::Args{{"word", "a"}});
  mp.register_function("multiply", multiply, std::vector<int>{3, 7});
  check(mp.size() == 2, "size() == 2");

  const std::vector<pfp::Result>& results = mp.execute_parallel();
  check(results.size() == 2, "two results");
  if (results.size() == 2) {
    const pfp::Result& a = results[0];
    const pfp::Result& b = results[1];
    check(a.ok(), "count ok (" + std::string(pfp::to_string(a.status)) + ": " + a.error + ")");
    check(b.ok(), "multiply ok (" + std::string(pfp::to_string(b.status)) + ": " + b.error + ")");
    check(a.function_name == "count" && a.index == 0, "count name/index");
    check(b.function_name == "multiply" && b.index == 1, "multiply name/index");
    if (a.ok()) check(a.result.at("Count").as<int>() == 3, "Count == 3, got " + a.result.to_json());
    if (b.ok()) check(b.result.as<long long>() == 42, "product == 42, got " + b.result.to_json());
    check(a.pid > 0 && a.pid != ::getpid(), "count ran in a worker process");
    check(b.pid > 0 && b.pid != ::getpid(), "multiply ran in a worker process");
  }

  if (failures != 0) {
    std::cerr << "pfp consumer (" << PFP_CONSUMER_KIND << "): " << failures << " check(s) failed\n";
    return EXIT_FAILURE;
  }
  std::cout << "pfp consumer OK (" << PFP_CONSUMER_KIND << ", C++ " << __cplusplus << ")\n";
  return EXIT_SUCCESS;
}
