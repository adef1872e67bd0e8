// Runs against single_include/pfp/pfp.hpp alone (the only include path): every front end does real
// work in real worker processes, and the result is checked. Exit 0 on success, 1 with a message.
#include <pfp/pfp.hpp>

#include <cstdio>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "single_include smoke: FAILED: %s\n", what);
    ++failures;
  }
}

void sum(const pfp::Value& context, const pfp::Args& args, pfp::Result& r) {
  long total = 0;
  for (long n : context.at(args.at("key").as<std::string>()).as<std::vector<long>>()) total += n;
  r.result["sum"] = total;
  r.result["pid"] = static_cast<long>(getpid());
}

}  // namespace

int main() {
  pfp::Value context = pfp::Value::parse(R"({"a": [1, 2, 3], "b": [10, 20]})");
  pfp::MultiProcessor<> m(context);
  m.register_function("a", sum, pfp::Args{{"key", "a"}});
  m.register_function("b", sum, pfp::Args{{"key", "b"}});
  const std::vector<pfp::Result>& rs = m.execute_parallel();
  check(rs.size() == 2 && rs[0].ok() && rs[1].ok(), "MultiProcessor: both functions ok");
  if (rs.size() == 2 && rs[0].ok() && rs[1].ok()) {
    check(rs[0].result.at("sum").as<long>() == 6 && rs[1].result.at("sum").as<long>() == 30, "MultiProcessor: sums");
    check(rs[0].result.at("pid").as<long>() != getpid(), "MultiProcessor: ran in a worker process");
  }

  pfp::MapOptions map_opts;
  map_opts.workers = 2u;
  std::vector<int> xs{1, 2, 3, 4, 5};
  std::vector<int> squares = pfp::map(map_opts, [](int x) { return x * x; }, xs);
  check(squares == std::vector<int>({1, 4, 9, 16, 25}), "map: squares in input order");

  pfp::Options opts;
  opts.workers = 2u;
  pfp::Executor pool(opts);
  auto add = pool.declare("add", [](int a, int b) { return a + b; });
  pfp::Future<int> f = pool.submit(add, 2, 3);
  check(f.get() == 5, "Executor: 2 + 3");
  pool.shutdown();

  try {
    (void)pfp::Value::parse("[1, 2,]");
    check(false, "Value::parse refuses a trailing comma");
  } catch (const pfp::error& e) {
    check(std::string(e.what()).find("at 1:7") != std::string::npos, "Value::parse error names 1:7");
  }
  if (failures == 0) std::printf("single_include smoke: ok (pfp %d.%d.%d)\n", PFP_VERSION_MAJOR, PFP_VERSION_MINOR, PFP_VERSION_PATCH);
  return failures == 0 ? 0 : 1;
}
