// libFuzzer target for Value::parse: whatever the text, it must parse or throw pfp::error, never
// crash, overread, overflow the stack or hang; and what parses must print (to_json, compact and
// indented) to text that parses back to an equal Value printing the same.
//
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include fuzz/fuzz_json.cpp -o fuzz_json
//   ./fuzz_json -max_total_time=60 -dict=fuzz/json.dict fuzz/corpus_json
#include <pfp/value.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  pfp::Value v;
  try {
    v = pfp::Value::parse(in);
  } catch (const pfp::error&) {
    return 0;
  }
  for (int indent : {-1, 2}) {
    std::string text = v.to_json(indent);
    pfp::Value back;
    try {
      back = pfp::Value::parse(text);
    } catch (const pfp::error&) {
      std::abort();  // to_json wrote text that Value::parse refuses
    }
    if (back != v || back.to_json(indent) != text) std::abort();
  }
  return 0;
}
