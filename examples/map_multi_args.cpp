// Mapping a function of several arguments over lists of items, as Python's
// executor.map(f, a, b), functools.partial and lambda do -- in worker processes.
#include <pfp/pfp.hpp>

#include <iostream>
#include <string>
#include <vector>

double price_with_tax(double net, int quantity, double tax_rate) { return net * quantity * (1.0 + tax_rate); }

int main() {
  const std::vector<double> net = {9.99, 4.50, 120.00, 0.99};
  const std::vector<int> quantity = {3, 10, 1, 100};

  pfp::MapOptions options;
  options.workers = 2;

  // 1. Several ranges zipped: f(net[i], quantity[i]). The ranges are inherited by the workers,
  //    never serialized. The lambda binds the third argument, like functools.partial.
  const double vat = 0.2;
  std::vector<double> totals =
      pfp::map(options, [vat](double n, int q) { return price_with_tax(n, q, vat); }, net, quantity);
  for (std::size_t i = 0; i < totals.size(); ++i)
    std::cout << "item " << i << ": " << quantity[i] << " x " << net[i] << " -> total " << totals[i] << "\n";

  // 2. Chunks: 1,000 items, 100 per task, one Result per item, in input order.
  std::vector<int> numbers(1000);
  for (int i = 0; i < 1000; ++i) numbers[static_cast<std::size_t>(i)] = i;
  options.chunksize = 100;
  std::vector<long long> squares = pfp::map(options, [](int n) { return static_cast<long long>(n) * n; }, numbers);
  long long sum = 0;
  for (long long s : squares) sum += s;
  std::cout << "sum of squares 0..999 = " << sum << "\n";

  // 3. Failures stay per item: map_results gives every item's Result, whatever happened.
  options.chunksize = 1;
  std::vector<pfp::Result> checked = pfp::map_results(
      options,
      [](double n, int q) {
        if (q > 50) throw std::invalid_argument("quantity " + std::to_string(q) + " needs approval");
        return n * q;
      },
      net, quantity);
  for (const pfp::Result& r : checked)
    std::cout << "check " << r.index << ": " << pfp::to_string(r.status) << (r.ok() ? "" : " (" + r.error + ")") << "\n";
  return 0;
}
