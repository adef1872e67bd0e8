// The same work on each backend -- worker processes, threads, and inline in the caller -- switched
// by one option, as Python switches ProcessPoolExecutor for ThreadPoolExecutor by one reference.
#include <pfp/pfp.hpp>

#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <vector>

// CPU-bound: a slow series for pi with n terms.
double leibniz_pi(long terms) {
  double sum = 0;
  for (long k = 0; k < terms; ++k) sum += (k % 2 ? -4.0 : 4.0) / static_cast<double>(2 * k + 1);
  return sum;
}

int main() {
  const std::vector<long> work(8, 20'000'000);
  const std::pair<pfp::Backend, const char*> backends[] = {
      {pfp::Backend::processes, "processes"}, {pfp::Backend::threads, "threads"}, {pfp::Backend::inline_, "inline"}};
  double first = 0;
  for (const auto& [backend, name] : backends) {
    pfp::MapOptions options;
    options.workers = 2;
    options.backend = backend;
    auto start = std::chrono::steady_clock::now();
    std::vector<double> pis = pfp::map(options, leibniz_pi, work);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (first == 0) first = pis[0];
    bool same = true;
    for (double p : pis) same = same && p == first;
    std::cout << std::left << std::setw(10) << name << " " << pis.size() << " tasks in " << std::fixed
              << std::setprecision(3) << seconds << " s, pi ~ " << std::setprecision(6) << pis[0]
              << (same ? " (same results)" : " (DIFFERENT results)") << "\n";
  }
  return 0;
}
