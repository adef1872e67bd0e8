// Writes the seed corpus for fuzz_decode: encodings of typical values and whole result frames.
//   c++ -std=c++17 -I include fuzz/make_corpus.cpp -o make_corpus && ./make_corpus fuzz/corpus
#include <pfp/pfp.hpp>

#include <cmath>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_corpus DIR\n";
    return 2;
  }
  std::string dir = argv[1];
  std::vector<pfp::Value> values = {
      pfp::Value(),
      pfp::Value(true),
      pfp::Value(-42),
      pfp::Value(std::numeric_limits<long long>::min()),
      pfp::Value(3.25),
      pfp::Value(std::nan("")),
      pfp::Value("text with \"quotes\"\n"),
      pfp::Value::bytes(std::string("\0\1\2\xff", 4)),
      pfp::Value(std::vector<int>{1, 2, 3, 4}),
      pfp::Value(std::vector<double>{0.5, -1.5}),
      pfp::Value::array({1, "two", 3.0, pfp::Value(), false}),
      pfp::Value{{"Count", 6}, {"Answer", 35}},
      pfp::Value{{"nested", pfp::Value{{"deeper", std::vector<std::string>{"a", "b"}}}}, {"m", std::map<std::string, int>{{"x", 1}}}},
  };
  int n = 0;
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
    ++n;
  };
  for (std::size_t i = 0; i < values.size(); ++i) {
    write("value_" + std::to_string(i), pfp::encode(values[i]));
    pfp::Result r;
    r.index = i;
    r.status = static_cast<pfp::Status>(i % 5);
    r.error = i % 2 ? "std::runtime_error: boom" : "";
    r.duration = std::chrono::nanoseconds(1000 * static_cast<long long>(i));
    r.result = values[i];
    write("frame_" + std::to_string(i), pfp::detail::encode_result_frame(r));
  }
  std::cout << "wrote " << n << " seeds to " << dir << "\n";
}
