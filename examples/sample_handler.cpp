// The mp_manager original's SampleHandler in C++: 100 numbers in batches of 2, handled by 8 worker
// processes; each number sleeps a random fraction of an interval and then computes
// factorial(n) / cos(n), counting the positive and negative results. The counters travel back
// with each batch's result and are summed in the parent.
#include <pfp/pfp.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

struct SampleHandler {
  static constexpr int total = 100;
  static constexpr std::size_t batch_size = 2;
  // The original sleeps up to 1 s per number; a tenth of that keeps the example short.
  static constexpr std::chrono::milliseconds interval{100};

  using Item = std::pair<std::size_t, std::vector<int>>;  // (batch number, the batch)

  std::size_t batches_total = 0;        // set by build_items in the parent, inherited by every worker
  std::optional<std::mt19937> random;   // per worker: seeded in the worker on first use

  // Runs once, in the parent, before the workers start. The range it returns is read lazily.
  auto build_items(pfp::BuildContext& ctx) {
    batches_total = (total + batch_size - 1) / batch_size;
    ctx.set_stat("items_total", total);
    ctx.set_stat("batches_total", static_cast<long>(batches_total));
    ctx.share("shared_data", pfp::Value{{"somekey", "some value"}});
    return pfp::enumerate(pfp::batches(pfp::iota(0, total), batch_size));
  }

  // The label of a batch in the log (and in the exit status, should it fail).
  std::string log_item(const Item& item) const {
    return std::to_string(item.first) + " / " + std::to_string(batches_total);
  }

  // Every batch starts with these counters at 0, so they show up even if never incremented.
  void reset_stats(pfp::Stats& stats) {
    stats.inc("items_processed", 0).inc("items_positive", 0).inc("items_negative", 0);
  }

  void handle_item(const Item& item, pfp::ItemContext& ctx) {
    for (int n : item.second) process_number(n, ctx.stats);
    ctx.log("shared_data.somekey = " + ctx.shared("shared_data").at("somekey").as<std::string>());
  }

  void process_number(int n, pfp::Stats& stats) {
    if (!random) random.emplace(std::random_device{}());
    std::uniform_real_distribution<double> fraction(0.0, 1.0);
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(fraction(*random) * interval.count()));
    // factorial(n) = Gamma(n + 1) > 0, so the sign of the value is the sign of cos(n).
    const double value = std::exp(std::lgamma(n + 1.0)) / std::cos(static_cast<double>(n));
    stats.inc("items_processed");
    stats.inc(value > 0 ? "items_positive" : "items_negative");
  }
};

int main() {
  pfp::ManagerOptions options;
  options.workers = 8;
  pfp::Manager<SampleHandler> manager(options);
  const pfp::ExitStatus status = manager.run();

  std::cout << "stats: " << status.stats << "\n";
  for (const char* key : {"items_processed", "items_positive", "items_negative"})
    std::cout << key << " = " << status.stats.count(key) << "\n";
  std::cout << "status: " << status << "\n";
  return status.code;
}
