// The pypfp original in C++: two counters over a shared context, each run in its own worker.
#include <pfp/pfp.hpp>

#include <iostream>
#include <string>
#include <vector>

enum class Operation { add, multiply };

struct Counter {
  std::string key;
  Operation op;
};

// The void form: fill the Result the library hands in (its name and index are already set).
void count(const pfp::Value& context, const Counter& args, pfp::Result& r) {
  auto numbers = context.at(args.key).as<std::vector<long>>();
  long answer = args.op == Operation::add ? 0 : 1;
  for (long n : numbers) answer = args.op == Operation::add ? answer + n : answer * n;
  r.result["Count"] = numbers.size();
  r.result["Answer"] = answer;
}

int main() {
  pfp::Value context{{"counter1", std::vector<int>{0, 9, 8, 7, 6, 5}}, {"counter2", std::vector<int>{2, 4, 6, 8}}};

  pfp::MultiProcessor<> m(context);
  m.register_function("counter1", count, Counter{"counter1", Operation::add});
  m.register_function("counter2", count, Counter{"counter2", Operation::multiply});

  for (const pfp::Result& r : m.execute_parallel()) {
    std::cout << r.function_name << " (" << pfp::to_string(r.status) << ", pid " << r.pid << "): " << r.result.to_json()
              << "\n";
    if (!r.ok()) std::cout << "  " << r.error << "\n";
  }
}
