// libFuzzer target for everything pfp decodes from a worker: the frame header check, the frame
// decoder and the Value decoder. Whatever the bytes, they must decode or throw pfp::error: never
// crash, overread, hang or allocate what a length field merely claims.
//
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include fuzz/fuzz_decode.cpp -o fuzz_decode
//   ./fuzz_decode -max_total_time=60 fuzz/corpus
#include <pfp/pfp.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

constexpr std::size_t max_frame = std::size_t{1} << 20;

void check_round_trip(const pfp::Value& v) {
  // What decodes must encode again to bytes that decode to the same encoding.
  std::string once = pfp::encode(v);
  std::string twice = pfp::encode(pfp::decode(once));
  if (once != twice) std::abort();
  (void)v.to_json();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  try {
    check_round_trip(pfp::decode(in));
  } catch (const pfp::error&) {
  }
  try {
    if (auto whole = pfp::detail::frame_size(in, max_frame)) {
      if (*whole <= in.size()) {
        pfp::Result r = pfp::detail::decode_result_frame(in.substr(0, *whole), max_frame);
        check_round_trip(r.result);
        std::string again = pfp::detail::encode_result_frame(r);
        if (pfp::detail::decode_result_frame(again, max_frame).result != r.result && r.result == r.result) std::abort();
      }
    }
  } catch (const pfp::error&) {
  }
  return 0;
}
