// Tests for pfp::encode / pfp::decode (serialization.hpp) and the result frame codec in
// pfp::detail (result.hpp): round trips of every kind of value, compactness of packed arrays,
// and clean rejection (pfp::error, never a crash or a huge allocation) of malformed input.
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

using pfp::Value;

namespace {

constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kI64Min = std::numeric_limits<std::int64_t>::min();

// Outcome of feeding bytes to a decoder that must either succeed or throw pfp::error.
enum class Outcome { decoded, pfp_error, other_exception };

template <class F>
Outcome outcome_of(F&& f, std::string* what = nullptr) {
  try {
    f();
    return Outcome::decoded;
  } catch (const pfp::error& e) {
    if (what) *what = e.what();
    return Outcome::pfp_error;
  } catch (const std::exception& e) {
    if (what) *what = std::string("non-pfp exception: ") + e.what();
    return Outcome::other_exception;
  } catch (...) {
    if (what) *what = "non-std exception";
    return Outcome::other_exception;
  }
}

std::string hex(std::string_view s, std::size_t max = 64) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    out += digits[c >> 4];
    out += digits[c & 15];
    out += ' ';
  }
  if (s.size() > max) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

// Unsigned LEB128, the varint the header documents for lengths and counts.
std::string leb128(std::uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out += static_cast<char>(static_cast<unsigned char>(v | 0x80));
    v >>= 7;
  }
  out += static_cast<char>(static_cast<unsigned char>(v));
  return out;
}

// Tag bytes, taken from what encode() actually writes (so the tests follow the implementation's
// numbering rather than hard-coding it), and checked against the documented varint layout.
struct Tags {
  char null_, false_, true_, integer, floating, string, bytes, array, object, packed_ints, packed_doubles;
};
Tags tags() {
  Tags t{};
  t.null_ = pfp::encode(Value())[0];
  t.false_ = pfp::encode(Value(false))[0];
  t.true_ = pfp::encode(Value(true))[0];
  t.integer = pfp::encode(Value(1))[0];
  t.floating = pfp::encode(Value(1.5))[0];
  t.string = pfp::encode(Value("s"))[0];
  t.bytes = pfp::encode(Value::bytes(std::string_view("b")))[0];
  t.array = pfp::encode(Value::array())[0];
  t.object = pfp::encode(Value::object())[0];
  t.packed_ints = pfp::encode(Value(std::vector<int>{1, 2}))[0];
  t.packed_doubles = pfp::encode(Value(std::vector<double>{1.5, 2.5}))[0];
  return t;
}

Value round_trip(const Value& v) { return pfp::decode(pfp::encode(v)); }

// decode(s) must throw pfp::error (not another exception, not succeed).
#define REQUIRE_DECODE_REJECTS(...)                                         \
  do {                                                                      \
    const std::string rej_in_ = (__VA_ARGS__);                              \
    INFO("input: " << hex(rej_in_));                                        \
    REQUIRE_THROWS_AS(pfp::decode(rej_in_), pfp::error);                    \
  } while (0)

// A Result with every transported field set.
pfp::Result sample_result(pfp::Status st) {
  pfp::Result r;
  r.function_name = "compute_totals";
  r.index = 7;
  r.status = st;
  r.error = st == pfp::Status::ok ? "" : "std::runtime_error: boom \n\t\"quoted\" \xc3\xa9";
  r.pid = 4242;
  r.duration = std::chrono::nanoseconds(1234567891);
  r.result = Value{{"Count", 6},
                   {"nested", Value{{"list", std::vector<int>{1, 2, 3}}, {"mixed", Value::array({1, "x", 2.5})}}},
                   {"blob", Value::bytes(std::string_view("\x00\xff", 2))}};
  return r;
}

template <class T>
void put(std::string& frame, std::size_t offset, T value) {
  REQUIRE(offset + sizeof(T) <= frame.size());
  std::memcpy(&frame[offset], &value, sizeof(T));
}
template <class T>
T get(const std::string& frame, std::size_t offset) {
  T value;
  std::memcpy(&value, frame.data() + offset, sizeof(T));
  return value;
}

constexpr std::size_t kMaxFrame = std::size_t{1} << 30;
constexpr std::size_t kHeader = pfp::detail::frame_header_size;
constexpr std::size_t kOffMagic = offsetof(pfp::detail::FrameHeader, magic);
constexpr std::size_t kOffVersion = offsetof(pfp::detail::FrameHeader, version);
constexpr std::size_t kOffKind = offsetof(pfp::detail::FrameHeader, kind);
constexpr std::size_t kOffPayload = offsetof(pfp::detail::FrameHeader, payload_size);

}  // namespace

// =============================================================================================
// Round trips
// =============================================================================================

TEST_CASE("scalars round trip with their exact type", "[serialization]") {
  CHECK(round_trip(Value()).is_null());
  CHECK(round_trip(Value(true)) == Value(true));
  CHECK(round_trip(Value(false)) == Value(false));
  CHECK(round_trip(Value(false)).is_bool());
  CHECK(round_trip(Value(1)).is_integer());
  CHECK(round_trip(Value(1.0)).is_floating());
  CHECK(round_trip(Value("1")).is_string());
  CHECK(round_trip(Value::bytes(std::string_view("1"))).is_bytes());
  CHECK(round_trip(Value::bytes(std::string_view("1"))) != Value("1"));
  CHECK(round_trip(Value::object()).is_object());
  CHECK(round_trip(Value::array()).is_array());
  CHECK(round_trip(Value::object()) == Value::object());
  CHECK(round_trip(Value::array()) == Value::array());
}

TEST_CASE("integers round trip across every varint width and at the int64 extremes", "[serialization]") {
  std::vector<std::int64_t> values = {0, 1, -1, 2, -2, 63, -64, 64, -65, 127, 128, 255, 256, 300, -300,
                                      16383, 16384, -8192, -8193, 2147483647LL, -2147483648LL, 4294967295LL,
                                      4294967296LL, kI64Max, kI64Min, kI64Max - 1, kI64Min + 1};
  for (int shift = 0; shift < 63; ++shift) {
    std::int64_t p = std::int64_t{1} << shift;
    values.push_back(p);
    values.push_back(p - 1);
    values.push_back(-p);
    values.push_back(-p - 1);
  }
  for (std::int64_t x : values) {
    INFO(x);
    Value back = round_trip(Value(x));
    REQUIRE(back.is_integer());
    CHECK(back.as<std::int64_t>() == x);
  }
  // small magnitudes are compact (a varint, not 8 bytes)
  CHECK(pfp::encode(Value(0)).size() <= 2);
  CHECK(pfp::encode(Value(-1)).size() <= 2);
  CHECK(pfp::encode(Value(100)).size() <= 3);
  CHECK(pfp::encode(Value(kI64Min)).size() <= 11);
}

TEST_CASE("doubles round trip bit-exactly, including -0.0, NaN and infinities", "[serialization]") {
  const double values[] = {0.0,
                           1.5,
                           -2.25,
                           0.1,
                           1.0 / 3.0,
                           1e300,
                           -1e-300,
                           std::numeric_limits<double>::max(),
                           std::numeric_limits<double>::lowest(),
                           std::numeric_limits<double>::min(),
                           std::numeric_limits<double>::denorm_min(),
                           std::numeric_limits<double>::epsilon(),
                           std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity(),
                           9007199254740993.0};
  for (double d : values) {
    INFO(d);
    Value back = round_trip(Value(d));
    REQUIRE(back.is_floating());
    CHECK(back.as<double>() == d);
  }
  Value nz = round_trip(Value(-0.0));
  REQUIRE(nz.is_floating());
  CHECK(nz.as<double>() == 0.0);
  CHECK(std::signbit(nz.as<double>()));
  CHECK_FALSE(std::signbit(round_trip(Value(0.0)).as<double>()));

  Value nan = round_trip(Value(std::numeric_limits<double>::quiet_NaN()));
  REQUIRE(nan.is_floating());
  CHECK(std::isnan(nan.as<double>()));
  // a NaN payload with the sign bit set keeps its bits
  double neg_nan = -std::numeric_limits<double>::quiet_NaN();
  double back = round_trip(Value(neg_nan)).as<double>();
  CHECK(std::isnan(back));
  CHECK(std::memcmp(&back, &neg_nan, sizeof back) == 0);
}

TEST_CASE("strings and bytes round trip with every byte value", "[serialization]") {
  std::string all;
  for (int rep = 0; rep < 3; ++rep)
    for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));

  Value s = round_trip(Value(all));
  REQUIRE(s.is_string());
  CHECK(s.str() == all);
  Value b = round_trip(Value::bytes(all));
  REQUIRE(b.is_bytes());
  CHECK(b.str() == all);
  CHECK(b.str().size() == 768);

  CHECK(round_trip(Value("")).str().empty());
  CHECK(round_trip(Value("")).is_string());
  CHECK(round_trip(Value::bytes(std::string_view())).is_bytes());
  CHECK(round_trip(Value::bytes(std::string_view())).str().empty());
  CHECK(round_trip(Value(std::string("\0", 1))).str() == std::string("\0", 1));
  CHECK(round_trip(Value("h\xc3\xa9llo \xe2\x82\xac")).str() == "h\xc3\xa9llo \xe2\x82\xac");
  // lengths around varint boundaries
  for (std::size_t n : {127u, 128u, 129u, 16383u, 16384u, 16385u}) {
    std::string t(n, 'q');
    t.back() = 'z';
    CHECK(round_trip(Value(t)).str() == t);
    CHECK(round_trip(Value::bytes(t)).str() == t);
  }
}

TEST_CASE("a 10 MiB string and a 10 MiB byte blob round trip intact", "[serialization]") {
  const std::size_t n = std::size_t{10} << 20;
  std::string big(n, '\0');
  std::mt19937 rng(12345);
  for (std::size_t i = 0; i < n; ++i) big[i] = static_cast<char>(rng() & 0xFF);

  std::string enc = pfp::encode(Value(big));
  CHECK(enc.size() >= n);
  CHECK(enc.size() <= n + 16);
  Value back = pfp::decode(enc);
  REQUIRE(back.is_string());
  CHECK(back.str().size() == n);
  CHECK(back.str() == big);

  Value blob = round_trip(Value::bytes(big));
  REQUIRE(blob.is_bytes());
  CHECK(blob.str() == big);

  // inside a container too
  Value holder{{"payload", Value::bytes(big)}, {"tail", 1}};
  Value holder_back = round_trip(holder);
  CHECK(holder_back.at("payload").str() == big);
  CHECK(holder_back.at("tail").as<int>() == 1);
}

TEST_CASE("integer arrays are packed: at most 9 bytes per element", "[serialization]") {
  const std::size_t n = 100000;
  std::vector<std::int64_t> ints(n);
  std::mt19937_64 rng(7);
  for (std::size_t i = 0; i < n; ++i) ints[i] = static_cast<std::int64_t>(rng());
  ints[0] = kI64Min;
  ints[1] = kI64Max;
  ints[2] = 0;
  ints[3] = -1;
  Value v(ints);
  std::string enc = pfp::encode(v);
  INFO("encoded size " << enc.size());
  CHECK(enc.size() <= 9 * n + 16);
  Value back = pfp::decode(enc);
  REQUIRE(back.is_array());
  REQUIRE(back.size() == n);
  CHECK(back.at(std::size_t{0}).is_integer());
  CHECK(back.as<std::vector<std::int64_t>>() == ints);
  CHECK(back == v);

  std::vector<int> small(n);
  for (std::size_t i = 0; i < n; ++i) small[i] = static_cast<int>(i) - 50000;
  std::string enc_small = pfp::encode(Value(small));
  CHECK(enc_small.size() <= 9 * n + 16);
  CHECK(pfp::decode(enc_small).as<std::vector<int>>() == small);
}

TEST_CASE("double arrays are packed and keep every bit", "[serialization]") {
  const std::size_t n = 100000;
  std::vector<double> ds(n);
  std::mt19937_64 rng(8);
  std::uniform_real_distribution<double> dist(-1e6, 1e6);
  for (std::size_t i = 0; i < n; ++i) ds[i] = dist(rng);
  ds[0] = -0.0;
  ds[1] = std::numeric_limits<double>::infinity();
  ds[2] = -std::numeric_limits<double>::infinity();
  ds[3] = std::numeric_limits<double>::denorm_min();
  ds[4] = std::numeric_limits<double>::quiet_NaN();
  std::string enc = pfp::encode(Value(ds));
  INFO("encoded size " << enc.size());
  CHECK(enc.size() <= 9 * n + 16);
  Value back = pfp::decode(enc);
  REQUIRE(back.size() == n);
  CHECK(back.at(std::size_t{0}).is_floating());
  std::vector<double> got = back.as<std::vector<double>>();
  REQUIRE(got.size() == n);
  CHECK(std::signbit(got[0]));
  CHECK(got[1] == std::numeric_limits<double>::infinity());
  CHECK(got[2] == -std::numeric_limits<double>::infinity());
  CHECK(got[3] == std::numeric_limits<double>::denorm_min());
  CHECK(std::isnan(got[4]));
  CHECK(std::memcmp(got.data() + 5, ds.data() + 5, (n - 5) * sizeof(double)) == 0);
}

TEST_CASE("mixed and small arrays keep element types", "[serialization]") {
  // int and double mixed must not be packed into one numeric type
  Value mixed_num = Value::array({1, 2.5, 3, -0.0, kI64Max});
  Value back = round_trip(mixed_num);
  REQUIRE(back.size() == 5);
  CHECK(back.at(std::size_t{0}).is_integer());
  CHECK(back.at(std::size_t{1}).is_floating());
  CHECK(back.at(std::size_t{2}).is_integer());
  CHECK(back.at(std::size_t{3}).is_floating());
  CHECK(std::signbit(back.at(std::size_t{3}).as<double>()));
  CHECK(back.at(std::size_t{4}).as<std::int64_t>() == kI64Max);
  CHECK(back == mixed_num);

  // a whole double must stay a double inside a packed double array, and ints stay ints
  Value whole = Value(std::vector<double>{1.0, 2.0, 3.0});
  Value whole_back = round_trip(whole);
  for (const Value& e : whole_back.elements()) CHECK(e.is_floating());
  CHECK(whole_back.to_json() == "[1.0,2.0,3.0]");

  Value everything = Value::array({Value(), true, false, 0, -7, 1.25, "s", Value::bytes(std::string_view("\0b", 2)),
                                   Value::array({1, 2}), Value::array({1.5}), Value::array({1}),
                                   Value{{"k", Value::array()}}, Value::object()});
  CHECK(round_trip(everything) == everything);
  CHECK(round_trip(everything).to_json() == everything.to_json());

  CHECK(round_trip(Value::array({5})) == Value::array({5}));
  CHECK(round_trip(Value::array({5.5})) == Value::array({5.5}));
  CHECK(round_trip(Value::array({true, false})) == Value::array({true, false}));
  CHECK(round_trip(Value::array({1, true})).at(std::size_t{1}).is_bool());
  CHECK(round_trip(Value(std::vector<std::string>{"a", "", "c"})) == Value(std::vector<std::string>{"a", "", "c"}));
  // ints followed by a string, strings followed by ints
  CHECK(round_trip(Value::array({1, 2, 3, "x"})) == Value::array({1, 2, 3, "x"}));
  CHECK(round_trip(Value::array({"x", 1, 2, 3})) == Value::array({"x", 1, 2, 3}));
  CHECK(round_trip(Value::array({1.5, 2.5, Value()})) == Value::array({1.5, 2.5, Value()}));
}

TEST_CASE("nested objects round trip", "[serialization]") {
  Value v{{"name", "report"},
          {"", "empty key"},
          {std::string("nul\0key", 7), 1},
          {"k\xc3\xa9y", Value{{"a", Value{{"b", Value{{"c", std::vector<int>{1, 2, 3}}}}}}}},
          {"list", Value::array({Value{{"x", 1}}, Value{{"x", 2.5}}, Value::object()})},
          {"blob", Value::bytes(std::string_view("\x00\x01\x02", 3))},
          {"n", Value()}};
  Value back = round_trip(v);
  CHECK(back == v);
  CHECK(back.to_json() == v.to_json());
  CHECK(back.at("k\xc3\xa9y").at("a").at("b").at("c").as<std::vector<int>>() == std::vector<int>{1, 2, 3});
  CHECK(back.contains(std::string_view("nul\0key", 7)));
  CHECK(back.at("").as<std::string>() == "empty key");

  Value many;
  for (int i = 0; i < 5000; ++i) many["key" + std::to_string(i)] = i % 3 == 0 ? Value(i) : Value(std::to_string(i));
  CHECK(round_trip(many) == many);
  CHECK(round_trip(many).size() == 5000);
}

TEST_CASE("encoding is stable: encode(decode(encode(v))) == encode(v)", "[serialization]") {
  Value v{{"a", Value::array({1, 2, 3})},
          {"b", Value::array({1.5, -0.0})},
          {"c", Value{{"d", "e"}}},
          {"f", Value::bytes(std::string_view("xyz"))}};
  std::string e1 = pfp::encode(v);
  std::string e2 = pfp::encode(pfp::decode(e1));
  CHECK(e1 == e2);
}

TEST_CASE("1000 levels of nesting round trip", "[serialization]") {
  Value arr = Value::array();
  for (int i = 0; i < 1000; ++i) {
    Value outer = Value::array();
    outer.push_back(std::move(arr));
    arr = std::move(outer);
  }
  Value back = round_trip(arr);
  CHECK(back == arr);

  Value obj;
  Value* cur = &obj;
  for (int i = 0; i < 1000; ++i) cur = &(*cur)["k"];
  *cur = "leaf";
  CHECK(round_trip(obj) == obj);
}

// =============================================================================================
// Rejection of malformed input
// =============================================================================================

TEST_CASE("decode rejects empty input", "[serialization]") {
  REQUIRE_THROWS_AS(pfp::decode(std::string_view()), pfp::error);
  REQUIRE_THROWS_AS(pfp::decode(""), pfp::error);
}

TEST_CASE("decode rejects every truncation of a valid encoding", "[serialization]") {
  Value v{{"ints", std::vector<int>{1, 2, 300000}},
          {"doubles", std::vector<double>{1.5, -2.5}},
          {"mixed", Value::array({1, "two", 3.0, Value(), true, Value::array({Value::object()})})},
          {"str", "hello world"},
          {"big", kI64Min},
          {"f", 0.25},
          {"blob", Value::bytes(std::string_view("\x00\x01\x02\x03", 4))},
          {"nested", Value{{"a", Value{{"b", false}}}}}};
  const std::string enc = pfp::encode(v);
  REQUIRE(pfp::decode(enc) == v);
  REQUIRE(enc.size() > 50);
  for (std::size_t len = 0; len < enc.size(); ++len) {
    INFO("prefix length " << len << " of " << enc.size());
    std::string what;
    Outcome o = outcome_of([&] { (void)pfp::decode(std::string_view(enc.data(), len)); }, &what);
    INFO(what);
    CHECK(o == Outcome::pfp_error);
  }
  // and truncations of each scalar encoding
  for (const Value& s : {Value(kI64Max), Value(1.5), Value("abc"), Value::bytes(std::string_view("abc")),
                         Value(std::vector<int>{1, 2}), Value(std::vector<double>{1, 2})}) {
    std::string e = pfp::encode(s);
    for (std::size_t len = 0; len < e.size(); ++len) {
      INFO(s.to_json() << " prefix " << len);
      CHECK_THROWS_AS(pfp::decode(std::string_view(e.data(), len)), pfp::error);
    }
  }
}

TEST_CASE("decode rejects trailing bytes", "[serialization]") {
  const std::string enc = pfp::encode(Value{{"a", 1}});
  for (int b = 0; b < 256; ++b) {
    INFO("trailing byte " << b);
    CHECK_THROWS_AS(pfp::decode(enc + static_cast<char>(b)), pfp::error);
  }
  REQUIRE_DECODE_REJECTS(enc + enc);  // two valid values back to back
  REQUIRE_DECODE_REJECTS(pfp::encode(Value()) + pfp::encode(Value()));
  REQUIRE_DECODE_REJECTS(pfp::encode(Value(5)) + std::string(1, '\0'));
}

TEST_CASE("decode rejects unknown tags", "[serialization]") {
  const Tags t = tags();
  const std::string valid = {t.null_,  t.false_, t.true_,  t.integer,     t.floating,      t.string,
                             t.bytes,  t.array,  t.object, t.packed_ints, t.packed_doubles};
  // the eleven kinds use eleven distinct tags
  for (std::size_t i = 0; i < valid.size(); ++i)
    for (std::size_t j = i + 1; j < valid.size(); ++j) CHECK(valid[i] != valid[j]);

  int unknown = 0;
  for (int b = 0; b < 256; ++b) {
    char c = static_cast<char>(b);
    if (valid.find(c) != std::string::npos) continue;
    ++unknown;
    INFO("tag byte " << b);
    CHECK_THROWS_AS(pfp::decode(std::string(1, c)), pfp::error);
    CHECK_THROWS_AS(pfp::decode(std::string(1, c) + std::string(16, '\0')), pfp::error);
    // an unknown tag nested inside an array
    CHECK_THROWS_AS(pfp::decode(std::string{t.array, '\x01', c}), pfp::error);
    // an unknown tag as an object member value
    CHECK_THROWS_AS(pfp::decode(std::string{t.object, '\x01', '\x01', 'k', c}), pfp::error);
  }
  CHECK(unknown == 256 - 11);
}

TEST_CASE("decode rejects lengths larger than the remaining input", "[serialization]") {
  const Tags t = tags();
  // the documented layout: tag, LEB128 length, raw bytes
  REQUIRE(pfp::encode(Value(std::string(300, 'x'))).substr(0, 3) == std::string(1, t.string) + leb128(300));
  REQUIRE(pfp::encode(Value::bytes(std::string(200, 'x'))).substr(0, 3) == std::string(1, t.bytes) + leb128(200));

  for (char tag : {t.string, t.bytes}) {
    INFO("tag " << int(tag));
    REQUIRE_DECODE_REJECTS(tag + leb128(std::uint64_t{1} << 62) + "abc");
    REQUIRE_DECODE_REJECTS(tag + leb128(std::numeric_limits<std::uint64_t>::max()) + "abc");
    REQUIRE_DECODE_REJECTS(tag + leb128(std::numeric_limits<std::uint64_t>::max() - 2) + "abc");
    REQUIRE_DECODE_REJECTS(tag + leb128(4) + "abc");  // one byte short
    REQUIRE_DECODE_REJECTS(tag + leb128(1));
    CHECK(pfp::decode(tag + leb128(3) + "abc").str() == "abc");  // the exact length is fine
  }
  // an object key whose length exceeds the input
  REQUIRE_DECODE_REJECTS(t.object + leb128(1) + leb128(std::uint64_t{1} << 62) + "k" + t.null_);
  REQUIRE_DECODE_REJECTS(t.object + leb128(1) + leb128(5) + "k" + t.null_);
  // a floating value with fewer than 8 bytes
  REQUIRE_DECODE_REJECTS(std::string(1, t.floating) + std::string(7, '\0'));
}

TEST_CASE("decode rejects huge counts without allocating for them", "[serialization]") {
  // If the decoder reserved memory for the claimed count, these would throw std::bad_alloc /
  // std::length_error or abort under AddressSanitizer instead of throwing pfp::error.
  const Tags t = tags();
  REQUIRE(pfp::encode(Value::array({Value(), Value()})) == std::string{t.array, '\x02', t.null_, t.null_});
  for (std::uint64_t n : {std::uint64_t{1} << 60, std::uint64_t{1} << 62, std::uint64_t{1} << 61,
                          (std::uint64_t{1} << 61) + 1, std::numeric_limits<std::uint64_t>::max(),
                          std::uint64_t{1} << 32, std::uint64_t{1000}}) {
    INFO("count " << n);
    REQUIRE_DECODE_REJECTS(t.array + leb128(n) + std::string(8, t.null_));
    REQUIRE_DECODE_REJECTS(t.object + leb128(n) + std::string{'\x01', 'k', t.null_});
    REQUIRE_DECODE_REJECTS(t.packed_ints + leb128(n) + std::string(16, '\0'));
    REQUIRE_DECODE_REJECTS(t.packed_doubles + leb128(n) + std::string(16, '\0'));
  }
  // packed arrays whose byte count is not a whole number of elements
  REQUIRE_DECODE_REJECTS(t.packed_ints + leb128(2) + std::string(15, '\0'));
  REQUIRE_DECODE_REJECTS(t.packed_doubles + leb128(3) + std::string(16, '\0'));
  // exact ones decode
  CHECK(pfp::decode(t.packed_ints + leb128(2) + std::string(16, '\0')) == Value::array({0, 0}));
  CHECK(pfp::decode(t.array + leb128(2) + std::string(2, t.null_)) == Value::array({Value(), Value()}));
}

TEST_CASE("decode rejects malformed varints", "[serialization]") {
  const Tags t = tags();
  // 11 continuation bytes: longer than any 64-bit varint
  REQUIRE_DECODE_REJECTS(t.integer + std::string(11, '\x80') + '\x01');
  // 10 bytes whose last one carries bits beyond 64
  REQUIRE_DECODE_REJECTS(t.integer + std::string(9, '\xff') + '\x7f');
  REQUIRE_DECODE_REJECTS(t.integer + std::string(9, '\xff') + '\x02');
  // the largest valid 10-byte varint is accepted (zigzag of INT64_MIN is UINT64_MAX)
  REQUIRE(pfp::encode(Value(kI64Min)) == t.integer + leb128(std::numeric_limits<std::uint64_t>::max()));
  CHECK(pfp::decode(t.integer + std::string(9, '\xff') + '\x01').as<std::int64_t>() == kI64Min);
  // a varint cut off in the middle
  REQUIRE_DECODE_REJECTS(t.integer + std::string(3, '\x80'));
  REQUIRE_DECODE_REJECTS(t.string + std::string(2, '\xff'));
}

TEST_CASE("decode rejects absurd nesting instead of overflowing the stack", "[serialization]") {
  const Tags t = tags();
  // Build the prefix that wraps one more array level, and check that it composes.
  const std::string leaf = pfp::encode(Value::array());
  const std::string one = pfp::encode(Value::array({Value::array()}));
  REQUIRE(one.size() > leaf.size());
  REQUIRE(one.substr(one.size() - leaf.size()) == leaf);
  const std::string wrap = one.substr(0, one.size() - leaf.size());
  REQUIRE(pfp::encode(Value::array({Value::array({Value::array()})})) == wrap + wrap + leaf);

  const std::size_t depth = 100000;
  std::string deep;
  deep.reserve(depth * wrap.size() + leaf.size());
  for (std::size_t i = 0; i < depth; ++i) deep += wrap;
  deep += leaf;
  std::string what;
  CHECK(outcome_of([&] { (void)pfp::decode(deep); }, &what) == Outcome::pfp_error);
  INFO(what);

  // the same with objects: {"k": {"k": ...}}
  const std::string obj_leaf = pfp::encode(Value::object());
  const std::string obj_one = pfp::encode(Value{{"k", Value::object()}});
  const std::string obj_wrap = obj_one.substr(0, obj_one.size() - obj_leaf.size());
  REQUIRE(obj_wrap == std::string{t.object, '\x01', '\x01', 'k'});
  std::string deep_obj;
  for (std::size_t i = 0; i < depth; ++i) deep_obj += obj_wrap;
  deep_obj += obj_leaf;
  CHECK(outcome_of([&] { (void)pfp::decode(deep_obj); }) == Outcome::pfp_error);

  // deep nesting that is also truncated (no leaf at all)
  std::string deep_trunc;
  for (std::size_t i = 0; i < depth; ++i) deep_trunc += wrap;
  CHECK(outcome_of([&] { (void)pfp::decode(deep_trunc); }) == Outcome::pfp_error);

  // a moderate depth is still accepted
  std::string ok;
  for (int i = 0; i < 500; ++i) ok += wrap;
  ok += leaf;
  CHECK_NOTHROW(pfp::decode(ok));
}

TEST_CASE("20000 random byte strings never crash the decoder", "[serialization]") {
  std::mt19937 rng(20240521);
  const Tags t = tags();
  const std::string valid_tags = {t.null_,  t.false_, t.true_,  t.integer,     t.floating,      t.string,
                                  t.bytes,  t.array,  t.object, t.packed_ints, t.packed_doubles};
  int decoded = 0, rejected = 0, bad = 0;
  std::string first_bad, first_bad_what;
  for (int iter = 0; iter < 20000; ++iter) {
    std::size_t len = rng() % 48;
    std::string in(len, '\0');
    for (char& c : in) c = static_cast<char>(rng() & 0xFF);
    // half of the inputs start with a valid tag, and use small bytes, so that they get deeper
    if (iter % 2 == 0 && len > 0) {
      in[0] = valid_tags[rng() % valid_tags.size()];
      for (std::size_t i = 1; i < len; ++i)
        if (rng() % 2) in[i] = valid_tags[rng() % valid_tags.size()];
    }
    Value out;
    std::string what;
    Outcome o = outcome_of([&] { out = pfp::decode(in); }, &what);
    if (o == Outcome::decoded) {
      ++decoded;
      // whatever decodes must re-encode and decode to the same value (NaN compares unequal)
      if (out.to_json().find("NaN") == std::string::npos && pfp::decode(pfp::encode(out)) != out && bad++ == 0) {
        first_bad = in;
        first_bad_what = "re-encode mismatch";
      }
    } else if (o == Outcome::pfp_error) {
      ++rejected;
    } else if (bad++ == 0) {
      first_bad = in;
      first_bad_what = what;
    }
  }
  INFO("decoded " << decoded << ", rejected " << rejected);
  INFO("first bad input: " << hex(first_bad) << " -> " << first_bad_what);
  CHECK(bad == 0);
  CHECK(decoded > 0);
  CHECK(rejected > 0);
}

TEST_CASE("single-byte corruption of a valid encoding never crashes the decoder", "[serialization]") {
  Value v{{"ints", std::vector<int>{1, 2, 3}},
          {"ds", std::vector<double>{0.5, 1.5}},
          {"s", "text"},
          {"o", Value{{"x", Value::array({1, "y", Value()})}}}};
  const std::string enc = pfp::encode(v);
  std::mt19937 rng(99);
  int bad = 0;
  std::string first_bad;
  for (std::size_t pos = 0; pos < enc.size(); ++pos) {
    for (int k = 0; k < 64; ++k) {
      std::string m = enc;
      m[pos] = static_cast<char>(k < 8 ? (m[pos] ^ (1 << k)) : static_cast<int>(rng() & 0xFF));
      Outcome o = outcome_of([&] { (void)pfp::decode(m); });
      if (o == Outcome::other_exception && bad++ == 0) first_bad = m;
    }
  }
  INFO("first bad input: " << hex(first_bad));
  CHECK(bad == 0);
}

// =============================================================================================
// Result frames (pfp::detail, result.hpp)
// =============================================================================================

TEST_CASE("to_string(Status) names every status", "[serialization]") {
  CHECK(pfp::to_string(pfp::Status::ok) == "ok");
  CHECK(pfp::to_string(pfp::Status::exception) == "exception");
  CHECK(pfp::to_string(pfp::Status::crashed) == "crashed");
  CHECK(pfp::to_string(pfp::Status::timed_out) == "timed_out");
  CHECK(pfp::to_string(pfp::Status::cancelled) == "cancelled");
  pfp::Result r;
  CHECK(r.status == pfp::Status::cancelled);
  CHECK_FALSE(r.ok());
  r.status = pfp::Status::ok;
  CHECK(r.ok());
}

TEST_CASE("result frames round trip for every status", "[serialization]") {
  for (pfp::Status st : {pfp::Status::ok, pfp::Status::exception, pfp::Status::crashed, pfp::Status::timed_out,
                         pfp::Status::cancelled}) {
    INFO("status " << pfp::to_string(st));
    pfp::Result r = sample_result(st);
    std::string frame = pfp::detail::encode_result_frame(r);
    REQUIRE(frame.size() > kHeader);

    // frame_size: nothing until the 16-byte header is complete, then the whole size
    for (std::size_t k = 0; k < kHeader; ++k) {
      INFO("prefix " << k);
      CHECK_FALSE(pfp::detail::frame_size(std::string_view(frame.data(), k), kMaxFrame).has_value());
    }
    for (std::size_t k : {kHeader, kHeader + 1, frame.size() - 1, frame.size()}) {
      auto sz = pfp::detail::frame_size(std::string_view(frame.data(), k), kMaxFrame);
      REQUIRE(sz.has_value());
      CHECK(*sz == frame.size());
    }
    // more bytes than one frame (e.g. the start of the next frame) do not change the answer
    CHECK(pfp::detail::frame_size(frame + frame, kMaxFrame) == std::optional<std::size_t>(frame.size()));

    pfp::Result back = pfp::detail::decode_result_frame(frame, kMaxFrame);
    CHECK(back.status == st);
    CHECK(back.index == r.index);
    CHECK(back.error == r.error);
    CHECK(back.duration == r.duration);
    CHECK(back.result == r.result);
    CHECK(back.ok() == (st == pfp::Status::ok));
    // documented in result.hpp: function_name and pid do not travel in the frame
    CHECK(back.function_name.empty());
    CHECK(back.pid == 0);
  }
}

TEST_CASE("result frames carry edge-case fields", "[serialization]") {
  pfp::Result r;
  r.status = pfp::Status::ok;
  r.index = 0;
  r.duration = std::chrono::nanoseconds(0);
  std::string f = pfp::detail::encode_result_frame(r);
  pfp::Result back = pfp::detail::decode_result_frame(f, kMaxFrame);
  CHECK(back.result.is_null());
  CHECK(back.error.empty());
  CHECK(back.index == 0);
  CHECK(back.duration.count() == 0);

  r.index = std::numeric_limits<std::size_t>::max();
  r.duration = std::chrono::nanoseconds(std::numeric_limits<std::int64_t>::max());
  r.error = std::string("nul\0inside", 10);
  r.result = Value(std::string(100000, 'r'));
  back = pfp::detail::decode_result_frame(pfp::detail::encode_result_frame(r), kMaxFrame);
  CHECK(back.index == r.index);
  CHECK(back.duration == r.duration);
  CHECK(back.error == r.error);
  CHECK(back.result == r.result);

  r.duration = std::chrono::nanoseconds(-5);  // a clock oddity must not corrupt the frame
  back = pfp::detail::decode_result_frame(pfp::detail::encode_result_frame(r), kMaxFrame);
  CHECK(back.duration.count() == -5);
  r.duration = std::chrono::nanoseconds(std::numeric_limits<std::int64_t>::min());
  back = pfp::detail::decode_result_frame(pfp::detail::encode_result_frame(r), kMaxFrame);
  CHECK(back.duration == r.duration);
}

TEST_CASE("frame header fields are validated", "[serialization]") {
  const pfp::Result r = sample_result(pfp::Status::exception);
  const std::string frame = pfp::detail::encode_result_frame(r);
  const std::uint64_t payload = frame.size() - kHeader;
  REQUIRE(get<std::uint64_t>(frame, kOffPayload) == payload);
  REQUIRE(get<std::uint32_t>(frame, kOffMagic) == pfp::detail::frame_magic);
  REQUIRE(get<std::uint16_t>(frame, kOffVersion) == pfp::detail::frame_version);

  SECTION("wrong magic") {
    for (std::size_t i = 0; i < 4; ++i) {
      std::string f = frame;
      f[kOffMagic + i] = static_cast<char>(f[kOffMagic + i] ^ 0x20);
      CHECK_THROWS_AS(pfp::detail::frame_size(f, kMaxFrame), pfp::error);
      CHECK_THROWS_AS(pfp::detail::frame_size(std::string_view(f.data(), kHeader), kMaxFrame), pfp::error);
      CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, kMaxFrame), pfp::error);
    }
    // ordinary text written by a function to the result pipe is not a frame
    CHECK_THROWS_AS(pfp::detail::frame_size("hello from printf in a worker\n", kMaxFrame), pfp::error);
  }
  SECTION("wrong version") {
    for (std::uint16_t ver : {std::uint16_t(0), std::uint16_t(pfp::detail::frame_version + 1), std::uint16_t(0xFFFF)}) {
      std::string f = frame;
      put<std::uint16_t>(f, kOffVersion, ver);
      CHECK_THROWS_AS(pfp::detail::frame_size(f, kMaxFrame), pfp::error);
      CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, kMaxFrame), pfp::error);
    }
  }
  SECTION("unknown kind") {
    std::string f = frame;
    put<std::uint16_t>(f, kOffKind, 1);
    CHECK_THROWS_AS(pfp::detail::frame_size(f, kMaxFrame), pfp::error);
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, kMaxFrame), pfp::error);
  }
  SECTION("payload above max_frame") {
    CHECK(pfp::detail::frame_size(frame, payload) == std::optional<std::size_t>(frame.size()));  // boundary ok
    CHECK_NOTHROW(pfp::detail::decode_result_frame(frame, payload));
    CHECK_THROWS_AS(pfp::detail::frame_size(frame, payload - 1), pfp::error);
    CHECK_THROWS_AS(pfp::detail::frame_size(std::string_view(frame.data(), kHeader), payload - 1), pfp::error);
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(frame, payload - 1), pfp::error);
    CHECK_THROWS_AS(pfp::detail::frame_size(frame, 0), pfp::error);
    // a header announcing an enormous payload is refused from the header alone
    std::string f = frame.substr(0, kHeader);
    put<std::uint64_t>(f, kOffPayload, std::uint64_t{1} << 62);
    CHECK_THROWS_AS(pfp::detail::frame_size(f, kMaxFrame), pfp::error);
  }
  SECTION("truncated payload") {
    for (std::size_t len = 0; len < frame.size(); ++len) {
      INFO("length " << len);
      CHECK_THROWS_AS(pfp::detail::decode_result_frame(std::string_view(frame.data(), len), kMaxFrame), pfp::error);
    }
  }
  SECTION("payload_size larger than the bytes present") {
    std::string f = frame;
    put<std::uint64_t>(f, kOffPayload, payload + 1);
    CHECK(pfp::detail::frame_size(f, kMaxFrame) == std::optional<std::size_t>(frame.size() + 1));
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, kMaxFrame), pfp::error);
    put<std::uint64_t>(f, kOffPayload, payload + 1000);
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, kMaxFrame), pfp::error);
  }
  SECTION("payload_size smaller than the bytes present, or extra bytes") {
    std::string f = frame;
    put<std::uint64_t>(f, kOffPayload, payload - 1);
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, kMaxFrame), pfp::error);
    // consistent header, but the payload is cut short inside: the value decoder must notice
    std::string g = frame.substr(0, frame.size() - 1);
    put<std::uint64_t>(g, kOffPayload, payload - 1);
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(g, kMaxFrame), pfp::error);
    // consistent header, one extra byte of garbage inside the payload
    std::string h = frame + '\0';
    put<std::uint64_t>(h, kOffPayload, payload + 1);
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(h, kMaxFrame), pfp::error);
    // two frames handed over as one
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(frame + frame, kMaxFrame), pfp::error);
  }
  SECTION("invalid status byte") {
    // payload starts with the index in 8 native bytes (7), then the status byte
    REQUIRE(get<std::uint64_t>(frame, kHeader) == 7);
    REQUIRE(static_cast<unsigned char>(frame[kHeader + 8]) == static_cast<unsigned char>(pfp::Status::exception));
    for (int s : {5, 6, 100, 255}) {
      std::string f = frame;
      f[kHeader + 8] = static_cast<char>(s);
      INFO("status byte " << s);
      CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, kMaxFrame), pfp::error);
    }
  }
}

TEST_CASE("frame_size never reports a size smaller than the header", "[serialization]") {
  // With a generous max_frame (e.g. max_result_bytes = SIZE_MAX for "no limit"), a hostile
  // payload_size near 2^64 must not wrap header + payload around to a tiny number.
  pfp::Result r;
  r.status = pfp::Status::ok;
  std::string f = pfp::detail::encode_result_frame(r).substr(0, kHeader);
  for (std::uint64_t claimed : {std::numeric_limits<std::uint64_t>::max(), std::numeric_limits<std::uint64_t>::max() - 8,
                                std::numeric_limits<std::uint64_t>::max() - kHeader + 1}) {
    put<std::uint64_t>(f, kOffPayload, claimed);
    INFO("payload_size " << claimed);
    std::optional<std::size_t> sz;
    std::string what;
    Outcome o = outcome_of([&] { sz = pfp::detail::frame_size(f, std::numeric_limits<std::size_t>::max()); }, &what);
    INFO(what);
    CHECK(o != Outcome::other_exception);
    if (o == Outcome::decoded) {
      REQUIRE(sz.has_value());
      CHECK(*sz >= kHeader);
    }
    CHECK_THROWS_AS(pfp::detail::decode_result_frame(f, std::numeric_limits<std::size_t>::max()), pfp::error);
  }
}

TEST_CASE("random corruption of any single byte of a frame never crashes", "[serialization]") {
  const std::string frame = pfp::detail::encode_result_frame(sample_result(pfp::Status::timed_out));
  std::mt19937 rng(4711);
  int bad = 0, decoded = 0, rejected = 0;
  std::string first_bad, first_bad_what;
  for (std::size_t pos = 0; pos < frame.size(); ++pos) {
    for (int k = 0; k < 24; ++k) {
      std::string f = frame;
      f[pos] = static_cast<char>(k < 8 ? (f[pos] ^ (1 << k)) : static_cast<int>(rng() & 0xFF));
      std::string what;
      Outcome o = outcome_of(
          [&] {
            (void)pfp::detail::frame_size(f, kMaxFrame);
            (void)pfp::detail::decode_result_frame(f, kMaxFrame);
          },
          &what);
      if (o == Outcome::decoded) ++decoded;
      if (o == Outcome::pfp_error) ++rejected;
      if (o == Outcome::other_exception && bad++ == 0) {
        first_bad = f;
        first_bad_what = what;
      }
    }
  }
  INFO("decoded " << decoded << ", rejected " << rejected);
  INFO("first bad frame: " << hex(first_bad, 200) << " -> " << first_bad_what);
  CHECK(bad == 0);
  CHECK(rejected > 0);
}
