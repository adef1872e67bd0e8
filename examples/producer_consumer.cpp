// A producer thread feeds work to a pool of worker processes through a bounded queue while the
// consumer takes each Result as it completes: no sentinel values, no heartbeat, and a producer
// error that reaches the consumer after the last result produced before it.
#include <pfp/pfp.hpp>

#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>

// Splits a list into pieces of at most `size` words and returns how many pieces it made.
int split_list(std::string text, int size) {
  int words = 0;
  for (std::size_t i = 0; i < text.size(); ++i)
    if (text[i] != ' ' && (i == 0 || text[i - 1] == ' ')) ++words;
  return (words + size - 1) / size;
}

int main() {
  pfp::Options options;
  options.workers = 2;
  pfp::ExecutorOptions queue;
  queue.max_queued = 4;         // the producer blocks when 4 lists are waiting or unconsumed
  queue.stream_results = true;  // completed Results go to next_completed()

  pfp::Executor pool(options, queue);
  auto split = pool.declare("split_list", split_list);
  pool.start();  // workers are forked now, before the producer thread exists

  std::thread producer([&] {
    try {
      for (int n = 1; n <= 12; ++n) {
        std::string text;
        for (int w = 0; w < n * 3; ++w) text += "word ";
        // Urgent lists (every fourth) jump the queue when the workers are busy.
        pool.submit_with_priority(n % 4 == 0 ? 10 : 0, split, text, 4);
      }
      throw std::runtime_error("the source of lists went away after 12 lists");
    } catch (...) {
      pool.close(std::current_exception());  // ends the stream; the consumer sees the error last
    }
  });

  int results = 0;
  int pieces = 0;
  try {
    while (auto r = pool.next_completed()) {
      ++results;
      pieces += r->result.as<int>();
    }
  } catch (const std::exception& e) {
    std::cout << "producer stopped: " << e.what() << "\n";
  }
  producer.join();
  std::cout << "consumed " << results << " results, " << pieces << " pieces in all\n";
  return results == 12 ? 0 : 1;
}
