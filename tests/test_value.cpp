// Tests for pfp::Value: construction, predicates, conversions (as<T>) and the key paths in their
// errors, object/array access, iteration, equality, JSON text output and parsing (Value::parse),
// user types through ADL, copying, moving and deep nesting.
#include "pfp_catch.hpp"

#include <pfp/pfp.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

using pfp::Value;

namespace {

// Runs f, requires that it throws pfp::error (and nothing else), and returns what().
template <class F>
std::string pfp_error_text(F&& f) {
  try {
    f();
  } catch (const pfp::error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected pfp::error, got another std::exception: " << e.what());
  } catch (...) {
    FAIL("expected pfp::error, got a non-std exception");
  }
  FAIL("expected pfp::error, nothing was thrown");
  return {};
}

// Requires that f throws pfp::error whose message is not empty.
#define REQUIRE_PFP_ERROR(expr)                                      \
  do {                                                               \
    std::string pfp_msg_ = pfp_error_text([&] { (void)(expr); });    \
    INFO("pfp::error message: " << pfp_msg_);                        \
    CHECK_FALSE(pfp_msg_.empty());                                   \
  } while (0)

constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kI64Min = std::numeric_limits<std::int64_t>::min();

}  // namespace

// ---------------------------------------------------------------------------------------------
// User types (converted through ADL to_value / from_value in their own namespace).
namespace shop {
struct Item {
  std::string name;
  double price = 0;
  int qty = 0;
};
inline bool operator==(const Item& a, const Item& b) {
  return a.name == b.name && a.price == b.price && a.qty == b.qty;
}
void to_value(pfp::Value& v, const Item& i) {
  v = pfp::Value{{"name", i.name}, {"price", i.price}, {"qty", i.qty}};
}
void from_value(const pfp::Value& v, Item& i) {
  i.name = v.at("name").as<std::string>();
  i.price = v.at("price").as<double>();
  i.qty = v.at("qty").as<int>();
}

struct Order {
  long long id = 0;
  std::vector<Item> items;
  std::map<std::string, std::string> notes;
};
inline bool operator==(const Order& a, const Order& b) {
  return a.id == b.id && a.items == b.items && a.notes == b.notes;
}
void to_value(pfp::Value& v, const Order& o) {
  v = pfp::Value{{"id", o.id}, {"items", o.items}, {"notes", o.notes}};
}
void from_value(const pfp::Value& v, Order& o) {
  o.id = v.at("id").as<long long>();
  o.items = v.at("items").as<std::vector<Item>>();
  o.notes = v.at("notes").as<std::map<std::string, std::string>>();
}
}  // namespace shop

// Compile-time checks of the public shape.
static_assert(std::is_same_v<pfp::Args, pfp::Value>, "pfp::Args is an alias of pfp::Value");
static_assert(std::is_base_of_v<std::runtime_error, pfp::error>, "pfp::error derives from std::runtime_error");
static_assert(std::is_copy_constructible_v<Value> && std::is_nothrow_move_constructible_v<Value>,
              "Value is copyable and nothrow-movable");
// Converting a type that has neither a built-in conversion nor ADL to_value/from_value is rejected
// at compile time, in include/pfp/value.hpp: `v.as<NoConv>()` hits the static_assert in the final
// `else` branch of Value::as<T>() ("T cannot be converted from pfp::Value; define from_value ..."),
// `Value(std::vector<NoConv>{})` / `Value(std::map<std::string, NoConv>{})` hit the static_asserts in
// the vector constructor and Value::assign_map, and `Value v = NoConv{};` finds no viable constructor
// (the user-type constructor is SFINAE-constrained on detail::has_to_value). Compile-time failures
// cannot be exercised by a run-time test, so they are deliberately not tested here.

// =============================================================================================
TEST_CASE("default Value is null and every predicate agrees", "[value]") {
  Value v;
  CHECK(v.is_null());
  CHECK_FALSE(v.is_bool());
  CHECK_FALSE(v.is_integer());
  CHECK_FALSE(v.is_floating());
  CHECK_FALSE(v.is_string());
  CHECK_FALSE(v.is_bytes());
  CHECK_FALSE(v.is_array());
  CHECK_FALSE(v.is_object());
  CHECK(v.type() == Value::Type::null);
  CHECK(v.size() == 0);
  CHECK(v.empty());
  CHECK(v.to_json() == "null");
  CHECK(v.to_json(4) == "null");
  CHECK(v == Value());
}

TEST_CASE("type predicates are exclusive for every kind", "[value]") {
  struct Case {
    Value v;
    Value::Type t;
  };
  std::vector<Case> cases = {
      {Value(), Value::Type::null},
      {Value(true), Value::Type::boolean},
      {Value(1), Value::Type::integer},
      {Value(1.0), Value::Type::floating},
      {Value("s"), Value::Type::string},
      {Value::bytes(std::string_view("b")), Value::Type::bytes},
      {Value::array(), Value::Type::array},
      {Value::object(), Value::Type::object},
  };
  for (const auto& c : cases) {
    INFO(c.v.to_json());
    CHECK(c.v.type() == c.t);
    int n = int(c.v.is_null()) + int(c.v.is_bool()) + int(c.v.is_integer()) + int(c.v.is_floating()) +
            int(c.v.is_string()) + int(c.v.is_bytes()) + int(c.v.is_array()) + int(c.v.is_object());
    CHECK(n == 1);
    CHECK(c.v.is_null() == (c.t == Value::Type::null));
    CHECK(c.v.is_bool() == (c.t == Value::Type::boolean));
    CHECK(c.v.is_integer() == (c.t == Value::Type::integer));
    CHECK(c.v.is_floating() == (c.t == Value::Type::floating));
    CHECK(c.v.is_string() == (c.t == Value::Type::string));
    CHECK(c.v.is_bytes() == (c.t == Value::Type::bytes));
    CHECK(c.v.is_array() == (c.t == Value::Type::array));
    CHECK(c.v.is_object() == (c.t == Value::Type::object));
  }
}

TEST_CASE("bool construction stays boolean", "[value]") {
  Value t(true), f(false);
  CHECK(t.is_bool());
  CHECK(f.is_bool());
  CHECK(t.as<bool>() == true);
  CHECK(f.as<bool>() == false);
  CHECK(t.to_json() == "true");
  CHECK(f.to_json() == "false");
  CHECK(t != f);
  // A string literal must never decay to bool.
  Value s("true");
  CHECK(s.is_string());
  CHECK(s.as<std::string>() == "true");
}

TEST_CASE("construction from every integer type yields an integer", "[value]") {
  CHECK(Value(int(-7)).is_integer());
  CHECK(Value(int(-7)).as<int>() == -7);
  CHECK(Value(long(-8)).as<long>() == -8);
  CHECK(Value(-9LL).as<long long>() == -9);
  CHECK(Value(10u).as<unsigned>() == 10u);
  CHECK(Value(11ul).as<unsigned long>() == 11ul);
  CHECK(Value(12ull).as<unsigned long long>() == 12ull);
  CHECK(Value(short(-13)).as<short>() == -13);
  CHECK(Value(static_cast<unsigned short>(14)).as<unsigned short>() == 14);
  CHECK(Value(std::int8_t(-15)).as<std::int8_t>() == -15);
  CHECK(Value(std::uint8_t(250)).as<std::uint8_t>() == 250);
  CHECK(Value(std::int16_t(-30000)).as<std::int16_t>() == -30000);
  CHECK(Value(std::uint16_t(60000)).as<std::uint16_t>() == 60000);
  CHECK(Value(std::int32_t(-2000000000)).as<std::int32_t>() == -2000000000);
  CHECK(Value(std::uint32_t(4000000000u)).as<std::uint32_t>() == 4000000000u);
  CHECK(Value(std::int64_t(kI64Min)).as<std::int64_t>() == kI64Min);
  CHECK(Value(std::size_t(12345)).as<std::size_t>() == 12345);

  for (const Value& v : {Value(int(1)), Value(long(1)), Value(1LL), Value(1u), Value(1ul), Value(1ull),
                         Value(short(1)), Value(std::int8_t(1)), Value(std::uint8_t(1)), Value(std::uint16_t(1)),
                         Value(std::uint32_t(1)), Value(std::uint64_t(1)), Value(std::size_t(1))}) {
    CHECK(v.is_integer());
    CHECK(v == Value(1));
    CHECK(v.to_json() == "1");
  }
}

TEST_CASE("int64 limits are exact and unsigned above INT64_MAX is rejected", "[value]") {
  Value mx(kI64Max), mn(kI64Min);
  CHECK(mx.as<std::int64_t>() == kI64Max);
  CHECK(mn.as<std::int64_t>() == kI64Min);
  CHECK(mx.to_json() == "9223372036854775807");
  CHECK(mn.to_json() == "-9223372036854775808");
  CHECK(mx.as<std::uint64_t>() == std::uint64_t(kI64Max));

  const std::uint64_t edge = std::uint64_t(kI64Max);
  REQUIRE_NOTHROW(Value(edge));
  CHECK(Value(edge).as<std::int64_t>() == kI64Max);
  REQUIRE_PFP_ERROR(Value(edge + 1));
  REQUIRE_PFP_ERROR(Value(std::numeric_limits<std::uint64_t>::max()));
  REQUIRE_PFP_ERROR(Value(std::numeric_limits<unsigned long long>::max()));
  REQUIRE_PFP_ERROR(Value(std::numeric_limits<std::size_t>::max()));
}

TEST_CASE("as<integer> is range checked", "[value]") {
  // int8_t
  CHECK(Value(127).as<std::int8_t>() == 127);
  CHECK(Value(-128).as<std::int8_t>() == -128);
  REQUIRE_PFP_ERROR(Value(300).as<std::int8_t>());
  REQUIRE_PFP_ERROR(Value(128).as<std::int8_t>());
  REQUIRE_PFP_ERROR(Value(-129).as<std::int8_t>());
  // uint8_t
  CHECK(Value(255).as<std::uint8_t>() == 255);
  REQUIRE_PFP_ERROR(Value(256).as<std::uint8_t>());
  REQUIRE_PFP_ERROR(Value(-1).as<std::uint8_t>());
  // 16 bit
  CHECK(Value(32767).as<std::int16_t>() == 32767);
  REQUIRE_PFP_ERROR(Value(32768).as<std::int16_t>());
  REQUIRE_PFP_ERROR(Value(-32769).as<short>());
  CHECK(Value(65535).as<std::uint16_t>() == 65535);
  REQUIRE_PFP_ERROR(Value(65536).as<std::uint16_t>());
  // 32 bit
  CHECK(Value(2147483647LL).as<int>() == 2147483647);
  CHECK(Value(-2147483648LL).as<int>() == std::numeric_limits<int>::min());
  REQUIRE_PFP_ERROR(Value(2147483648LL).as<int>());
  REQUIRE_PFP_ERROR(Value(-2147483649LL).as<int>());
  CHECK(Value(4294967295LL).as<unsigned>() == 4294967295u);
  REQUIRE_PFP_ERROR(Value(4294967296LL).as<unsigned>());
  REQUIRE_PFP_ERROR(Value(-1).as<unsigned>());
  // 64 bit
  REQUIRE_PFP_ERROR(Value(-1).as<std::uint64_t>());
  REQUIRE_PFP_ERROR(Value(kI64Min).as<std::uint64_t>());
  REQUIRE_PFP_ERROR(Value(-1).as<std::size_t>());
  REQUIRE_PFP_ERROR(Value(kI64Max).as<int>());
  REQUIRE_PFP_ERROR(Value(kI64Min).as<int>());
  CHECK(Value(kI64Max).as<long long>() == kI64Max);
  CHECK(Value(0).as<unsigned>() == 0u);
}

TEST_CASE("floating point construction", "[value]") {
  Value d(2.5);
  CHECK(d.is_floating());
  CHECK(d.as<double>() == 2.5);
  Value f(1.5f);
  CHECK(f.is_floating());
  CHECK(f.as<double>() == 1.5);
  CHECK(f.as<float>() == 1.5f);
  CHECK(Value(0.1f).as<float>() == 0.1f);
  Value whole(3.0);
  CHECK(whole.is_floating());
  CHECK_FALSE(whole.is_integer());
}

TEST_CASE("integers read as double and other numeric mismatches throw", "[value]") {
  CHECK(Value(3).as<double>() == 3.0);
  CHECK(Value(-3).as<double>() == -3.0);
  CHECK(Value(kI64Max).as<double>() == static_cast<double>(kI64Max));
  CHECK(Value(7).as<float>() == 7.0f);
  // a floating value never silently reads as an integer, even when it is whole
  REQUIRE_PFP_ERROR(Value(3.0).as<int>());
  REQUIRE_PFP_ERROR(Value(3.5).as<long long>());
  REQUIRE_PFP_ERROR(Value(3.0).as<unsigned>());
  // bool and integer do not convert into each other
  REQUIRE_PFP_ERROR(Value(1).as<bool>());
  REQUIRE_PFP_ERROR(Value(0).as<bool>());
  REQUIRE_PFP_ERROR(Value(true).as<int>());
  REQUIRE_PFP_ERROR(Value(true).as<double>());
  // strings are not numbers
  REQUIRE_PFP_ERROR(Value("12").as<int>());
  REQUIRE_PFP_ERROR(Value("1.5").as<double>());
  REQUIRE_PFP_ERROR(Value("true").as<bool>());
  // null is not a number
  REQUIRE_PFP_ERROR(Value().as<int>());
  REQUIRE_PFP_ERROR(Value().as<double>());
  REQUIRE_PFP_ERROR(Value().as<bool>());
  // containers are not scalars
  REQUIRE_PFP_ERROR(Value::array().as<int>());
  REQUIRE_PFP_ERROR(Value::object().as<double>());
}

TEST_CASE("mismatch errors carry a message", "[value]") {
  std::string m1 = pfp_error_text([] { (void)Value("abc").as<int>(); });
  std::string m2 = pfp_error_text([] { (void)Value(1.25).as<int>(); });
  std::string m3 = pfp_error_text([] { (void)Value(1).as<bool>(); });
  std::string m4 = pfp_error_text([] { (void)Value(300).as<std::int8_t>(); });
  CHECK_FALSE(m1.empty());
  CHECK_FALSE(m2.empty());
  CHECK_FALSE(m3.empty());
  CHECK_FALSE(m4.empty());
}

TEST_CASE("strings: const char*, std::string, embedded NULs, nullptr", "[value]") {
  Value a("hello");
  CHECK(a.is_string());
  CHECK(a.as<std::string>() == "hello");
  CHECK(a.str() == "hello");
  Value b(std::string("world"));
  CHECK(b.is_string());
  CHECK(b.as<std::string>() == "world");
  Value empty_s("");
  CHECK(empty_s.is_string());
  CHECK(empty_s.as<std::string>().empty());
  CHECK(empty_s.to_json() == "\"\"");
  CHECK(empty_s.size() == 0);  // size() counts elements of arrays/objects only

  std::string with_nul("a\0b\0c", 5);
  Value n(with_nul);
  CHECK(n.as<std::string>().size() == 5);
  CHECK(n.as<std::string>() == with_nul);

  const char* null_ptr = nullptr;
  REQUIRE_PFP_ERROR(Value(null_ptr));

  REQUIRE_PFP_ERROR(Value(1).as<std::string>());
  REQUIRE_PFP_ERROR(Value().as<std::string>());
  REQUIRE_PFP_ERROR(Value(true).as<std::string>());
  REQUIRE_PFP_ERROR(Value(1).str());
  REQUIRE_PFP_ERROR(Value::array().str());
}

TEST_CASE("bytes keep every byte including NULs and are distinct from strings", "[value]") {
  std::string raw;
  for (int i = 0; i < 256; ++i) raw.push_back(static_cast<char>(i));
  raw += std::string("\0\0\0", 3);
  Value b = Value::bytes(raw);
  CHECK(b.is_bytes());
  CHECK_FALSE(b.is_string());
  CHECK(b.type() == Value::Type::bytes);
  CHECK(b.str().size() == raw.size());
  CHECK(b.str() == raw);
  CHECK(b.as<std::string>() == raw);
  CHECK(b.size() == 0);
  CHECK(b == Value::bytes(raw));
  CHECK(b != Value::bytes(raw.substr(1)));
  CHECK(Value::bytes(std::string_view("abc")) != Value("abc"));

  Value e = Value::bytes(std::string_view());
  CHECK(e.is_bytes());
  CHECK(e.str().empty());

  // bytes print as a base64 JSON string
  CHECK(Value::bytes(std::string_view("\x00\x01\xff" "ab", 5)).to_json() == "\"AAH/YWI=\"");
  CHECK(Value::bytes(std::string_view("")).to_json() == "\"\"");
  CHECK(Value::bytes(std::string_view("f")).to_json() == "\"Zg==\"");
  CHECK(Value::bytes(std::string_view("fo")).to_json() == "\"Zm8=\"");
  CHECK(Value::bytes(std::string_view("foo")).to_json() == "\"Zm9v\"");
  CHECK(Value::bytes(std::string_view("foobar")).to_json() == "\"Zm9vYmFy\"");
}

// Value::bytes is declared in the contract as bytes(std::string_view); every argument that converts
// to std::string_view (string literal, const char*, std::string) must therefore be accepted. The check
// is done through SFINAE so that an overload ambiguity in the header shows up as a failed test
// instead of breaking the compilation of this whole file.
namespace {
template <class S, class = void>
struct bytes_callable_with : std::false_type {};
template <class S>
struct bytes_callable_with<S, std::void_t<decltype(Value::bytes(std::declval<S>()))>> : std::true_type {};

template <class S>
Value bytes_from(S&& s) {
  if constexpr (bytes_callable_with<S&&>::value) {
    return Value::bytes(std::forward<S>(s));
  } else {
    return Value();
  }
}
}  // namespace

TEST_CASE("Value::bytes accepts anything that converts to std::string_view", "[value]") {
  CHECK(bytes_callable_with<const char (&)[4]>::value);  // Value::bytes("abc")
  CHECK(bytes_callable_with<const char*>::value);
  CHECK(bytes_callable_with<const std::string&>::value);
  CHECK(bytes_callable_with<std::string&&>::value);
  CHECK(bytes_callable_with<std::string_view>::value);
  CHECK(bytes_from("abc") == Value::bytes(std::string_view("abc")));
  const char* p = "xy";
  CHECK(bytes_from(p) == Value::bytes(std::string_view("xy")));
  std::string s("q\0r", 3);
  CHECK(bytes_from(s).str() == s);
  CHECK(bytes_from(std::string(s)).str() == s);
}

TEST_CASE("std::vector<T> converts to an array and back", "[value]") {
  Value vi(std::vector<int>{1, 2, 3});
  REQUIRE(vi.is_array());
  CHECK(vi.size() == 3);
  CHECK(vi.at(0).as<int>() == 1);
  CHECK(vi.at(2).as<int>() == 3);
  CHECK(vi.as<std::vector<int>>() == std::vector<int>{1, 2, 3});
  CHECK(vi.as<std::vector<long long>>() == std::vector<long long>{1, 2, 3});
  CHECK(vi.as<std::vector<double>>() == std::vector<double>{1.0, 2.0, 3.0});
  CHECK(vi.to_json() == "[1,2,3]");

  Value vs(std::vector<std::string>{"a", "b"});
  CHECK(vs.as<std::vector<std::string>>() == std::vector<std::string>{"a", "b"});
  CHECK(vs.to_json() == "[\"a\",\"b\"]");

  Value vd(std::vector<double>{0.5, -1.25});
  CHECK(vd.at(0).is_floating());
  CHECK(vd.as<std::vector<double>>() == std::vector<double>{0.5, -1.25});

  Value vb(std::vector<bool>{true, false, true});
  CHECK(vb.to_json() == "[true,false,true]");
  CHECK(vb.as<std::vector<bool>>() == std::vector<bool>{true, false, true});

  Value vv(std::vector<std::vector<int>>{{1}, {}, {2, 3}});
  CHECK(vv.to_json() == "[[1],[],[2,3]]");
  CHECK(vv.as<std::vector<std::vector<int>>>() == std::vector<std::vector<int>>{{1}, {}, {2, 3}});

  Value vval(std::vector<Value>{Value(1), Value("x"), Value()});
  CHECK(vval.to_json() == "[1,\"x\",null]");
  CHECK(vval.as<std::vector<Value>>().size() == 3);

  Value ve(std::vector<int>{});
  CHECK(ve.is_array());
  CHECK(ve.size() == 0);
  CHECK(ve.to_json() == "[]");
  CHECK(ve.as<std::vector<int>>().empty());

  // element of the wrong type, element out of range, wrong container
  Value mixed(std::vector<Value>{Value(1), Value("two"), Value(3)});
  REQUIRE_PFP_ERROR(mixed.as<std::vector<int>>());
  REQUIRE_PFP_ERROR(Value(std::vector<int>{1, 300}).as<std::vector<std::uint8_t>>());
  REQUIRE_PFP_ERROR(Value(std::vector<double>{1.5}).as<std::vector<int>>());
  REQUIRE_PFP_ERROR(Value::object().as<std::vector<int>>());
  REQUIRE_PFP_ERROR(Value(1).as<std::vector<int>>());
  REQUIRE_PFP_ERROR(Value("abc").as<std::vector<std::string>>());
}

TEST_CASE("std::map<std::string,T> converts to an object and back", "[value]") {
  std::map<std::string, int> m{{"b", 2}, {"a", 1}};
  Value v(m);
  REQUIRE(v.is_object());
  CHECK(v.size() == 2);
  CHECK(v.at("a").as<int>() == 1);
  CHECK(v.at("b").as<int>() == 2);
  CHECK(v.to_json() == "{\"a\":1,\"b\":2}");
  CHECK(v.as<std::map<std::string, int>>() == m);
  CHECK(v.as<std::map<std::string, double>>() == std::map<std::string, double>{{"a", 1.0}, {"b", 2.0}});
  auto um = v.as<std::unordered_map<std::string, int>>();
  CHECK(um.size() == 2);
  CHECK(um.at("a") == 1);
  CHECK(um.at("b") == 2);

  std::map<std::string, std::vector<std::string>> mv{{"k", {"x", "y"}}, {"e", {}}};
  Value v2(mv);
  CHECK(v2.to_json() == "{\"e\":[],\"k\":[\"x\",\"y\"]}");
  CHECK((v2.as<std::map<std::string, std::vector<std::string>>>() == mv));

  std::map<std::string, Value> mval{{"n", Value()}, {"o", Value::object()}};
  CHECK(Value(mval).to_json() == "{\"n\":null,\"o\":{}}");

  CHECK(Value(std::map<std::string, int>{}).is_object());
  CHECK(Value(std::map<std::string, int>{}).to_json() == "{}");

  Value bad{{"a", 1}, {"b", "x"}};
  REQUIRE_PFP_ERROR((bad.as<std::map<std::string, int>>()));
  REQUIRE_PFP_ERROR((Value::array().as<std::map<std::string, int>>()));
  REQUIRE_PFP_ERROR((Value(3).as<std::map<std::string, int>>()));
}

TEST_CASE("initializer-list objects, including nested ones", "[value]") {
  Value v{{"k", 1}, {"j", "x"}, {"d", 2.5}, {"b", false}, {"n", Value()}};
  REQUIRE(v.is_object());
  CHECK(v.size() == 5);
  CHECK(v.at("k").as<int>() == 1);
  CHECK(v.at("j").as<std::string>() == "x");
  CHECK(v.at("d").as<double>() == 2.5);
  CHECK(v.at("b").as<bool>() == false);
  CHECK(v.at("n").is_null());
  CHECK(v.to_json() == "{\"b\":false,\"d\":2.5,\"j\":\"x\",\"k\":1,\"n\":null}");

  Value nested{{"outer", Value{{"inner", Value{{"leaf", 42}}}}}, {"list", std::vector<int>{1, 2}}};
  CHECK(nested.at("outer").at("inner").at("leaf").as<int>() == 42);
  CHECK(nested.to_json() == "{\"list\":[1,2],\"outer\":{\"inner\":{\"leaf\":42}}}");

  // Value::array(initializer_list)
  Value arr = Value::array({1, "two", 3.5, Value{{"k", true}}, Value::array()});
  REQUIRE(arr.is_array());
  CHECK(arr.size() == 5);
  CHECK(arr.to_json() == "[1,\"two\",3.5,{\"k\":true},[]]");
}

TEST_CASE("object() and array() are empty containers", "[value]") {
  Value o = Value::object();
  Value a = Value::array();
  CHECK(o.is_object());
  CHECK(a.is_array());
  CHECK(o.size() == 0);
  CHECK(a.size() == 0);
  CHECK(o.empty());
  CHECK(a.empty());
  CHECK(o.to_json() == "{}");
  CHECK(a.to_json() == "[]");
  CHECK(o.to_json(4) == "{}");
  CHECK(a.to_json(4) == "[]");
  CHECK(o != a);
  CHECK(o != Value());
  CHECK(a != Value());
  CHECK(o.items().empty());
  CHECK(a.elements().empty());
}

TEST_CASE("as<Value>, std::optional and std::pair", "[value]") {
  Value v{{"a", 1}};
  Value copy = v.as<Value>();
  CHECK(copy == v);

  CHECK(Value().as<std::optional<int>>() == std::nullopt);
  CHECK(Value(5).as<std::optional<int>>() == std::optional<int>(5));
  CHECK(Value("s").as<std::optional<std::string>>() == std::optional<std::string>("s"));
  REQUIRE_PFP_ERROR(Value("s").as<std::optional<int>>());

  Value from_none(std::optional<int>{});
  CHECK(from_none.is_null());
  Value from_some(std::optional<int>{7});
  CHECK(from_some.is_integer());
  CHECK(from_some.as<int>() == 7);

  Value p = Value::array({1, "x"});
  auto pr = p.as<std::pair<int, std::string>>();
  CHECK(pr.first == 1);
  CHECK(pr.second == "x");
  REQUIRE_PFP_ERROR((Value::array({1}).as<std::pair<int, int>>()));
  REQUIRE_PFP_ERROR((Value::array({1, 2, 3}).as<std::pair<int, int>>()));
}

TEST_CASE("operator[] on null makes an object and inserts null", "[value]") {
  Value v;
  Value& slot = v["a"];
  CHECK(slot.is_null());
  CHECK(v.is_object());
  CHECK(v.size() == 1);
  CHECK(v.contains("a"));
  CHECK(v.at("a").is_null());

  v["b"] = 2;
  v["c"]["d"]["e"] = "deep";  // chained creation
  CHECK(v.size() == 3);
  CHECK(v.at("b").as<int>() == 2);
  CHECK(v.at("c").at("d").at("e").as<std::string>() == "deep");
  CHECK(v.to_json() == "{\"a\":null,\"b\":2,\"c\":{\"d\":{\"e\":\"deep\"}}}");

  // existing key: no new entry, same slot
  v["b"] = 3;
  CHECK(v.size() == 3);
  CHECK(v.at("b").as<int>() == 3);

  // string_view keys that are not NUL-terminated use only the viewed characters
  std::string backing = "keyXYZ";
  v[std::string_view(backing.data(), 3)] = 1;
  CHECK(v.contains("key"));
  CHECK_FALSE(v.contains("keyXYZ"));

  // non-null, non-object values reject operator[]
  Value i(1), s("x"), a = Value::array(), b(true), d(1.5), by = Value::bytes(std::string_view("x"));
  REQUIRE_PFP_ERROR(i["a"]);
  REQUIRE_PFP_ERROR(s["a"]);
  REQUIRE_PFP_ERROR(a["a"]);
  REQUIRE_PFP_ERROR(b["a"]);
  REQUIRE_PFP_ERROR(d["a"]);
  REQUIRE_PFP_ERROR(by["a"]);
  CHECK(i.as<int>() == 1);  // unchanged after the failed access
  CHECK(a.is_array());
}

TEST_CASE("at(key) and at(i) throw on absent keys, out-of-range indexes and wrong kinds", "[value]") {
  const Value o{{"x", 1}};
  CHECK(o.at("x").as<int>() == 1);
  REQUIRE_PFP_ERROR(o.at("y"));
  REQUIRE_PFP_ERROR(o.at(""));
  REQUIRE_PFP_ERROR(Value().at("x"));
  REQUIRE_PFP_ERROR(Value(1).at("x"));
  REQUIRE_PFP_ERROR(Value::array({1}).at("x"));

  const Value a = Value::array({10, 20});
  CHECK(a.at(std::size_t{0}).as<int>() == 10);
  CHECK(a.at(std::size_t{1}).as<int>() == 20);
  REQUIRE_PFP_ERROR(a.at(std::size_t{2}));
  REQUIRE_PFP_ERROR(a.at(std::numeric_limits<std::size_t>::max()));
  REQUIRE_PFP_ERROR(Value::array().at(std::size_t{0}));
  REQUIRE_PFP_ERROR(Value().at(std::size_t{0}));
  REQUIRE_PFP_ERROR(o.at(std::size_t{0}));

  // non-const at allows modification in place
  Value m{{"x", 1}};
  m.at("x") = "changed";
  CHECK(m.at("x").as<std::string>() == "changed");
  Value arr = Value::array({1, 2});
  arr.at(std::size_t{1}) = 5;
  CHECK(arr.to_json() == "[1,5]");
  REQUIRE_PFP_ERROR(m.at("nope"));
  CHECK(m.size() == 1);  // a failed non-const at() did not insert
  REQUIRE_PFP_ERROR(arr.at(std::size_t{2}));

  // at() error text names something (not empty)
  std::string msg = pfp_error_text([&] { (void)o.at("missing_key_name"); });
  CHECK_FALSE(msg.empty());
}

TEST_CASE("find returns a pointer or nullptr", "[value]") {
  const Value o{{"x", 1}};
  REQUIRE(o.find("x") != nullptr);
  CHECK(o.find("x")->as<int>() == 1);
  CHECK(o.find("y") == nullptr);
  CHECK(Value().find("x") == nullptr);
  CHECK(Value(1).find("x") == nullptr);
}

TEST_CASE("push_back on null makes an array and on a scalar or object it throws", "[value]") {
  Value v;
  v.push_back(1);
  CHECK(v.is_array());
  CHECK(v.size() == 1);
  v.push_back("two");
  v.push_back(Value{{"k", 3}});
  v.push_back(Value());
  CHECK(v.size() == 4);
  CHECK(v.to_json() == "[1,\"two\",{\"k\":3},null]");

  Value a = Value::array();
  a.push_back(Value::array());
  CHECK(a.to_json() == "[[]]");

  Value i(1), o = Value::object(), s("s");
  REQUIRE_PFP_ERROR(i.push_back(2));
  REQUIRE_PFP_ERROR(o.push_back(2));
  REQUIRE_PFP_ERROR(s.push_back(2));
  CHECK(o.is_object());
  CHECK(o.size() == 0);
}

TEST_CASE("size() counts elements of arrays and objects, else 0", "[value]") {
  CHECK(Value().size() == 0);
  CHECK(Value(true).size() == 0);
  CHECK(Value(12345).size() == 0);
  CHECK(Value(1.5).size() == 0);
  CHECK(Value("abcdef").size() == 0);
  CHECK(Value::bytes(std::string_view("abcdef")).size() == 0);
  CHECK(Value(std::vector<int>(17, 0)).size() == 17);
  Value o;
  for (int i = 0; i < 9; ++i) o[std::to_string(i)] = i;
  CHECK(o.size() == 9);
  o["3"] = "again";
  CHECK(o.size() == 9);
}

TEST_CASE("contains() on objects and on other kinds", "[value]") {
  Value o{{"a", Value()}, {"b", 0}};
  CHECK(o.contains("a"));  // present even though its value is null
  CHECK(o.contains("b"));
  CHECK_FALSE(o.contains("c"));
  CHECK_FALSE(o.contains(""));
  CHECK_FALSE(Value().contains("a"));
  CHECK_FALSE(Value(1).contains("a"));
  CHECK_FALSE(Value::array({"a"}).contains("a"));
  CHECK_FALSE(Value("a").contains("a"));
  Value n;
  (void)n.contains("a");
  CHECK(n.is_null());  // contains() never creates anything
}

TEST_CASE("items() iterates in sorted key order with structured bindings", "[value]") {
  Value v;
  const char* keys[] = {"zeta", "alpha", "Mid", "beta", "", "alpha2", "10", "9"};
  int n = 0;
  for (const char* k : keys) v[k] = n++;
  std::vector<std::string> seen;
  std::vector<int> values;
  for (const auto& [key, value] : v.items()) {
    seen.push_back(key);
    values.push_back(value.as<int>());
  }
  std::vector<std::string> expected{"", "10", "9", "Mid", "alpha", "alpha2", "beta", "zeta"};
  CHECK(seen == expected);
  CHECK(values == std::vector<int>{4, 6, 7, 2, 1, 5, 3, 0});

  CHECK(Value().items().empty());
  REQUIRE_PFP_ERROR(Value::array().items());
  REQUIRE_PFP_ERROR(Value(1).items());
  REQUIRE_PFP_ERROR(Value("s").items());
}

TEST_CASE("items() and elements() on a null value read as empty and leave it null", "[value]") {
  // The layout notes document items()/elements() as read accessors returning empty for null.
  // Iterating a (non-const) null result must not silently turn it into {} or [].
  Value n;
  int count = 0;
  for (const auto& [k, v] : n.items()) {
    (void)k;
    (void)v;
    ++count;
  }
  CHECK(count == 0);
  CHECK(n.is_null());
  CHECK(n.to_json() == "null");

  Value m;
  for (const Value& e : m.elements()) {
    (void)e;
    ++count;
  }
  CHECK(count == 0);
  CHECK(m.is_null());
  CHECK(m.to_json() == "null");
}

TEST_CASE("elements() iterates an array in order", "[value]") {
  Value a = Value::array({3, "b", 1.5, true, Value()});
  std::vector<std::string> j;
  for (const Value& e : a.elements()) j.push_back(e.to_json());
  CHECK(j == std::vector<std::string>{"3", "\"b\"", "1.5", "true", "null"});
  CHECK(Value().elements().empty());
  REQUIRE_PFP_ERROR(Value::object().elements());
  REQUIRE_PFP_ERROR(Value(1).elements());
  REQUIRE_PFP_ERROR(Value("s").elements());
}

TEST_CASE("equality is deep and type aware", "[value]") {
  Value a{{"x", std::vector<int>{1, 2}}, {"y", Value{{"z", "s"}}}};
  Value b;
  b["y"]["z"] = "s";  // different insertion order
  b["x"] = std::vector<int>{1, 2};
  CHECK(a == b);
  CHECK_FALSE(a != b);
  b["y"]["z"] = "t";
  CHECK(a != b);
  CHECK_FALSE(a == b);

  CHECK(Value(std::vector<int>{1, 2}) != Value(std::vector<int>{2, 1}));
  CHECK(Value(std::vector<int>{1, 2}) != Value(std::vector<int>{1, 2, 3}));
  CHECK(Value{{"a", 1}} != Value{{"a", 1}, {"b", 1}});
  CHECK(Value{{"a", 1}} != Value{{"b", 1}});
  CHECK(Value(1) != Value(2));
  CHECK(Value(1) != Value(true));
  CHECK(Value(0) != Value());
  CHECK(Value("") != Value());
  CHECK(Value(false) != Value());
  CHECK(Value("1") != Value(1));
  CHECK(Value(1.5) == Value(1.5));
  CHECK(Value(1.5) != Value(2.5));
  CHECK(Value("abc") == Value(std::string("abc")));
}

TEST_CASE("to_json compact and indented match Python json.dumps(sort_keys=True)", "[value]") {
  Value v{{"b", 1},
          {"a", Value{{"z", true}, {"y", Value()}}},
          {"l", std::vector<int>{1, 2}},
          {"e", Value::object()},
          {"ea", Value::array()},
          {"f", 1.5},
          {"g", 3.0}};
  // python3: json.dumps(obj, sort_keys=True, separators=(",", ":"))
  CHECK(v.to_json() == R"({"a":{"y":null,"z":true},"b":1,"e":{},"ea":[],"f":1.5,"g":3.0,"l":[1,2]})");
  CHECK(v.to_json(-1) == v.to_json());
  CHECK(v.to_json(-7) == v.to_json());
  // python3: json.dumps(obj, indent=4, sort_keys=True)
  const std::string expected4 =
      "{\n"
      "    \"a\": {\n"
      "        \"y\": null,\n"
      "        \"z\": true\n"
      "    },\n"
      "    \"b\": 1,\n"
      "    \"e\": {},\n"
      "    \"ea\": [],\n"
      "    \"f\": 1.5,\n"
      "    \"g\": 3.0,\n"
      "    \"l\": [\n"
      "        1,\n"
      "        2\n"
      "    ]\n"
      "}";
  CHECK(v.to_json(4) == expected4);
  // python3: json.dumps(obj, indent=0, sort_keys=True)
  const std::string expected0 =
      "{\n\"a\": {\n\"y\": null,\n\"z\": true\n},\n\"b\": 1,\n\"e\": {},\n\"ea\": [],\n\"f\": 1.5,\n"
      "\"g\": 3.0,\n\"l\": [\n1,\n2\n]\n}";
  CHECK(v.to_json(0) == expected0);

  // python3: json.dumps([[[]], {"a": [{}]}], indent=2)
  Value w = Value::array({Value::array({Value::array()}), Value{{"a", Value::array({Value::object()})}}});
  CHECK(w.to_json(2) == "[\n  [\n    []\n  ],\n  {\n    \"a\": [\n      {}\n    ]\n  }\n]");
  CHECK(w.to_json() == "[[[]],{\"a\":[{}]}]");

  // scalars ignore indentation
  CHECK(Value(5).to_json(4) == "5");
  CHECK(Value("s").to_json(4) == "\"s\"");
}

TEST_CASE("operator<< prints the same text as to_json(4)", "[value]") {
  Value v{{"k", Value{{"n", std::vector<std::string>{"x", "y"}}}}, {"a", 1}};
  std::ostringstream os;
  os << v;
  CHECK(os.str() == v.to_json(4));
  CHECK(os.str() == "{\n    \"a\": 1,\n    \"k\": {\n        \"n\": [\n            \"x\",\n            \"y\"\n"
                    "        ]\n    }\n}");
  std::ostringstream os2;
  os2 << Value() << ' ' << Value(3);
  CHECK(os2.str() == "null 3");
}

TEST_CASE("string escaping in values and keys", "[value]") {
  std::string s = "q\"b\\n\nt\tr\rc\x01" "d\x1f" "e";
  // python3: json.dumps(s, ensure_ascii=False)
  CHECK(Value(s).to_json() == R"("q\"b\\n\nt\tr\rc\u0001d\u001fe")");
  Value k;
  k["a\"b\n"] = 1;
  CHECK(k.to_json() == R"({"a\"b\n":1})");
  CHECK(k.to_json(4) == "{\n    \"a\\\"b\\n\": 1\n}");
  // UTF-8 passes through untouched
  CHECK(Value("h\xc3\xa9llo \xe2\x82\xac").to_json() == "\"h\xc3\xa9llo \xe2\x82\xac\"");
  // every control character below 0x20 is escaped, never raw
  for (int c = 0; c < 0x20; ++c) {
    std::string one(1, static_cast<char>(c));
    std::string j = Value(one).to_json();
    INFO("control char " << c << " -> " << j);
    CHECK(j.size() > 3);
    CHECK(j.find(static_cast<char>(c)) == std::string::npos);
    CHECK(j.front() == '"');
    CHECK(j.back() == '"');
    CHECK(j[1] == '\\');
  }
  // embedded NUL is escaped, not truncated
  CHECK(Value(std::string("a\0b", 3)).to_json() == R"("a\u0000b")");
}

TEST_CASE("doubles print shortest round-trip and always look like floats", "[value]") {
  CHECK(Value(1.5).to_json() == "1.5");
  CHECK(Value(3.0).to_json() == "3.0");
  CHECK(Value(-2.0).to_json() == "-2.0");
  CHECK(Value(0.0).to_json() == "0.0");
  CHECK(Value(-0.0).to_json() == "-0.0");
  CHECK(Value(0.1).to_json() == "0.1");
  CHECK(Value(1e16).to_json() == "1e+16");
  CHECK(Value(1e300).to_json() == "1e+300");
  CHECK(Value(123456789.0).to_json() == "123456789.0");
  CHECK(Value(0.30000000000000004).to_json() == "0.30000000000000004");

  for (double d : {1e15, 1e-7, 2.5e-5, 5e-324, 1.7976931348623157e308, -3.14159, 1.0 / 3.0, 100.0, 1e22,
                   123.456e-200}) {
    std::string j = Value(d).to_json();
    INFO(j);
    CHECK(j.find_first_of(".e") != std::string::npos);
    CHECK(std::strtod(j.c_str(), nullptr) == d);
  }
}

TEST_CASE("NaN and infinities", "[value]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  Value n(nan), pi(inf), ni(-inf);
  CHECK(n.is_floating());
  CHECK(std::isnan(n.as<double>()));
  CHECK(pi.as<double>() == inf);
  CHECK(ni.as<double>() == -inf);
  CHECK(n.to_json() == "NaN");
  CHECK(pi.to_json() == "Infinity");
  CHECK(ni.to_json() == "-Infinity");
  CHECK(Value::array({nan, inf, -inf}).to_json() == "[NaN,Infinity,-Infinity]");
  CHECK(Value::array({nan, inf}).to_json(1) == "[\n NaN,\n Infinity\n]");
  REQUIRE_PFP_ERROR(n.as<int>());
  REQUIRE_PFP_ERROR(pi.as<long long>());
}

TEST_CASE("user types convert through ADL to_value/from_value", "[value]") {
  shop::Order order{42, {{"apple", 0.5, 3}, {"pear", 1.25, 1}}, {{"gift", "yes"}}};
  Value v = order;  // implicit conversion via to_value
  REQUIRE(v.is_object());
  CHECK(v.at("id").as<int>() == 42);
  CHECK(v.at("items").is_array());
  CHECK(v.at("items").size() == 2);
  CHECK(v.at("items").at(std::size_t{1}).at("name").as<std::string>() == "pear");
  CHECK(v.to_json() ==
        R"({"id":42,"items":[{"name":"apple","price":0.5,"qty":3},{"name":"pear","price":1.25,"qty":1}],)"
        R"("notes":{"gift":"yes"}})");
  shop::Order back = v.as<shop::Order>();
  CHECK(back == order);

  // assignment into an object slot
  Value holder;
  holder["order"] = order;
  CHECK(holder.at("order").as<shop::Order>() == order);

  // containers of user types
  std::vector<shop::Item> items{{"a", 1.0, 1}, {"b", 2.0, 2}};
  Value vi(items);
  CHECK(vi.is_array());
  CHECK(vi.as<std::vector<shop::Item>>() == items);
  std::map<std::string, shop::Item> mi{{"x", {"a", 1.0, 1}}, {"y", {"b", 2.5, 2}}};
  Value vm(mi);
  CHECK(vm.is_object());
  CHECK(vm.at("y").at("price").as<double>() == 2.5);
  CHECK((vm.as<std::map<std::string, shop::Item>>() == mi));
  std::optional<shop::Item> oi = Value().as<std::optional<shop::Item>>();
  CHECK_FALSE(oi.has_value());

  // a from_value that finds the wrong shape surfaces pfp::error
  REQUIRE_PFP_ERROR((Value{{"id", "not a number"}}.as<shop::Order>()));
  REQUIRE_PFP_ERROR(Value(1).as<shop::Item>());
  REQUIRE_PFP_ERROR(Value::array({1}).as<std::vector<shop::Item>>());
}

TEST_CASE("copying values is deep and moving leaves a usable source", "[value]") {
  Value orig{{"list", std::vector<int>{1, 2, 3}}, {"obj", Value{{"k", "v"}}}};
  Value copy = orig;
  CHECK(copy == orig);
  copy["list"].push_back(4);
  copy["obj"]["k"] = "changed";
  CHECK(copy != orig);
  CHECK(orig.at("list").size() == 3);
  CHECK(orig.at("obj").at("k").as<std::string>() == "v");

  Value assigned;
  assigned = orig;
  CHECK(assigned == orig);
  assigned["new"] = 1;
  CHECK_FALSE(orig.contains("new"));

  // self assignment through an alias
  Value& alias = assigned;
  assigned = alias;
  CHECK(assigned.contains("new"));
  CHECK(assigned.at("list").size() == 3);

  const std::string before = orig.to_json();
  Value moved = std::move(orig);
  CHECK(moved.to_json() == before);
  orig = Value("reused");  // moved-from value can be assigned and used again
  CHECK(orig.as<std::string>() == "reused");

  Value target(5);
  target = std::move(moved);
  CHECK(target.to_json() == before);

  // reassigning changes the type completely
  Value t = 5;
  t = "now a string";
  CHECK(t.is_string());
  t = Value::array();
  CHECK(t.is_array());
  t = Value();
  CHECK(t.is_null());
}

TEST_CASE("deep nesting: 1000 levels copy, compare, print and destroy", "[value]") {
  constexpr int depth = 1000;
  Value arr = Value::array();
  for (int i = 0; i < depth; ++i) {
    Value outer = Value::array();
    outer.push_back(std::move(arr));
    arr = std::move(outer);
  }
  std::string expected = std::string(depth + 1, '[') + std::string(depth + 1, ']');
  CHECK(arr.to_json() == expected);
  Value arr_copy = arr;
  CHECK(arr_copy == arr);
  CHECK(arr_copy.to_json() == expected);
  std::string pretty = arr.to_json(1);
  CHECK(pretty.size() > expected.size());

  Value obj;
  Value* cur = &obj;
  for (int i = 0; i < depth; ++i) cur = &(*cur)["k"];
  *cur = 1;
  Value obj_copy = obj;
  CHECK(obj_copy == obj);
  (*cur) = 2;  // change the innermost leaf of the original only
  CHECK(obj_copy != obj);
  std::string j = obj.to_json();
  CHECK(j.size() == std::size_t(depth) * 5 + 1 + std::size_t(depth));
  CHECK(j.substr(0, 10) == "{\"k\":{\"k\":");
  std::ostringstream os;
  os << obj_copy;
  CHECK(os.str().size() > j.size());
}

// =============================================================================================
// Value::parse: JSON text (RFC 8259) into a Value.
namespace {

// The message of the pfp::error that Value::parse(text) throws; fails the test when it parses.
std::string parse_error(std::string_view text) {
  return pfp_error_text([&] { (void)Value::parse(text); });
}

// Requires Value::parse(text) to fail at line:column with a message containing `what`.
void check_parse_error(std::string_view text, const std::string& at, const std::string& what) {
  std::string msg = parse_error(text);
  INFO("input: " << std::string(text) << "\nmessage: " << msg);
  CHECK_THAT(msg, Catch::Matchers::StartsWith("pfp::Value::parse: at " + at + ": "));
  CHECK_THAT(msg, Catch::Matchers::Contains(what));
}

std::string nested(char open, char close, std::size_t depth, const std::string& inner = "") {
  return std::string(depth, open) + inner + std::string(depth, close);
}

std::string nested_objects(std::size_t depth) {
  std::string s;
  for (std::size_t i = 0; i < depth; ++i) s += "{\"k\":";
  return s + "1" + std::string(depth, '}');
}

}  // namespace

TEST_CASE("Value::parse reads every kind of JSON value", "[value][parse]") {
  CHECK(Value::parse("null").is_null());
  CHECK(Value::parse("true") == Value(true));
  CHECK(Value::parse("false") == Value(false));
  CHECK(Value::parse("0") == Value(0));
  CHECK(Value::parse("\"\"") == Value(""));
  CHECK(Value::parse("[]") == Value::array());
  CHECK(Value::parse("{}") == Value::object());
  CHECK(Value::parse("  \t\r\n 42 \n\t\r ") == Value(42));  // the four JSON whitespace characters
  Value v = Value::parse(R"( { "b" : [ 1 , 2.5 , "x" , true , false , null , [ ] , { } ] , "a" : { "c" : -7 } } )");
  REQUIRE(v.is_object());
  CHECK(v.size() == 2);
  const Value& b = v.at("b");
  REQUIRE(b.size() == 8);
  CHECK(b.at(std::size_t{0}).is_integer());
  CHECK(b.at(std::size_t{1}).is_floating());
  CHECK(b.at(std::size_t{1}).as<double>() == 2.5);
  CHECK(b.at(std::size_t{2}).as<std::string>() == "x");
  CHECK(b.at(std::size_t{3}) == Value(true));
  CHECK(b.at(std::size_t{4}) == Value(false));
  CHECK(b.at(std::size_t{5}).is_null());
  CHECK(b.at(std::size_t{6}) == Value::array());
  CHECK(b.at(std::size_t{7}) == Value::object());
  CHECK(v.at("a").at("c").as<int>() == -7);
  CHECK(v.to_json() == R"({"a":{"c":-7},"b":[1,2.5,"x",true,false,null,[],{}]})");
  // Keys in any order end up sorted, like every Value object.
  CHECK(Value::parse(R"({"z":1,"a":2,"m":3})").to_json() == R"({"a":2,"m":3,"z":1})");
}

TEST_CASE("Value::parse: integers that fit int64 stay integers, other numbers are doubles", "[value][parse]") {
  CHECK(Value::parse("9223372036854775807") == Value(kI64Max));
  CHECK(Value::parse("-9223372036854775808") == Value(kI64Min));
  Value above = Value::parse("9223372036854775808");
  REQUIRE(above.is_floating());
  CHECK(above.as<double>() == 9223372036854775808.0);
  Value below = Value::parse("-9223372036854775809");
  REQUIRE(below.is_floating());
  CHECK(below.as<double>() == -9223372036854775808.0);
  Value huge = Value::parse("123456789012345678901234567890");
  REQUIRE(huge.is_floating());
  CHECK(huge.as<double>() == 1.2345678901234568e29);
  CHECK(Value::parse("-0") == Value(0));  // an integer, as in Python's json.loads
  CHECK(Value::parse("-0").is_integer());
  Value neg_zero = Value::parse("-0.0");
  REQUIRE(neg_zero.is_floating());
  CHECK(std::signbit(neg_zero.as<double>()));
  // A fraction or an exponent makes a double even when the value is whole.
  CHECK(Value::parse("1.0").is_floating());
  CHECK(Value::parse("1e2") == Value(100.0));
  CHECK(Value::parse("1E+2") == Value(100.0));
  CHECK(Value::parse("25e-2") == Value(0.25));
  CHECK(Value::parse("0e5") == Value(0.0));
  CHECK(Value::parse("-1.5E3") == Value(-1500.0));
  CHECK(Value::parse("0.1") == Value(0.1));  // correctly rounded
  CHECK(Value::parse("1.7976931348623157e308") == Value(std::numeric_limits<double>::max()));
  CHECK(Value::parse("4.9e-324") == Value(std::numeric_limits<double>::denorm_min()));
  CHECK(Value::parse("2.2250738585072014e-308") == Value(std::numeric_limits<double>::min()));
  CHECK(Value::parse("1e0000000000000000000001") == Value(10.0));
  // Too small for a double rounds to zero (keeping the sign), as strtod and Python do.
  CHECK(Value::parse("1e-400") == Value(0.0));
  CHECK(Value::parse("2e-324") == Value(0.0));
  CHECK(Value::parse("0.00001e-99999999999999999999") == Value(0.0));
  Value tiny_neg = Value::parse("-1e-400");
  REQUIRE(tiny_neg.is_floating());
  CHECK(tiny_neg.as<double>() == 0.0);
  CHECK(std::signbit(tiny_neg.as<double>()));
  // Too large for a double is an error, not infinity.
  check_parse_error("1e400", "1:1", "the number 1e400 is beyond the range of a double");
  check_parse_error("[0, -1.8e308]", "1:5", "the number -1.8e308 is beyond the range of a double");
  check_parse_error("0.1e310", "1:1", "beyond the range of a double");
  check_parse_error("1e99999999999999999999", "1:1", "beyond the range of a double");
  check_parse_error(std::string(400, '9'), "1:1", "beyond the range of a double");
}

TEST_CASE("Value::parse: numbers outside the JSON grammar are refused", "[value][parse]") {
  check_parse_error("01", "1:1", "a number with a leading zero");
  check_parse_error("-012", "1:1", "a number with a leading zero");
  check_parse_error("[00]", "1:2", "a number with a leading zero");
  check_parse_error("-", "1:2", "expected a digit after '-', found the end of the input");
  check_parse_error("-a", "1:2", "expected a digit after '-', found 'a'");
  check_parse_error("- 1", "1:2", "expected a digit after '-', found ' '");
  check_parse_error("1.", "1:3", "expected a digit after the decimal point, found the end of the input");
  check_parse_error("1.e5", "1:3", "expected a digit after the decimal point, found 'e5'");
  check_parse_error("1e", "1:3", "expected a digit in the exponent, found the end of the input");
  check_parse_error("1e+", "1:4", "expected a digit in the exponent");
  check_parse_error("1E-x", "1:4", "expected a digit in the exponent, found 'x'");
  check_parse_error("+1", "1:1", "expected a JSON value (object, array, string, number, true, false or null), found '+'");
  check_parse_error(".5", "1:1", "expected a JSON value");
  check_parse_error("0x10", "1:2", "expected the end of the input after the JSON value, found 'x10'");
  check_parse_error("1.5.2", "1:4", "expected the end of the input after the JSON value, found '.'");
  check_parse_error("NaN", "1:1", "NaN and Infinity are not JSON numbers");
  check_parse_error("Infinity", "1:1", "NaN and Infinity are not JSON numbers");
  check_parse_error("[1,-Infinity]", "1:5", "NaN and Infinity are not JSON numbers");
  // to_json writes non-finite doubles as Python does; parsing them back says why it cannot.
  std::string nan_text = Value(std::nan("")).to_json();
  CHECK_THAT(parse_error(nan_text), Catch::Matchers::Contains("NaN and Infinity are not JSON"));
}

TEST_CASE("Value::parse: string escapes and \\u escapes, surrogate pairs included, become UTF-8", "[value][parse]") {
  CHECK(Value::parse(R"("\" \\ \/ \b \f \n \r \t")").as<std::string>() == "\" \\ / \b \f \n \r \t");
  CHECK(Value::parse(R"("\u0041\u00e9\u20AC")").as<std::string>() == "A\xC3\xA9\xE2\x82\xAC");  // A é €
  CHECK(Value::parse(R"("\u007f\u0080\u07ff\u0800\uffff")").as<std::string>() ==
        "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF");  // each UTF-8 length at its edges
  CHECK(Value::parse(R"("\ud83d\ude00")").as<std::string>() == "\xF0\x9F\x98\x80");  // U+1F600
  CHECK(Value::parse(R"("\uD800\uDC00")").as<std::string>() == "\xF0\x90\x80\x80");  // U+10000
  CHECK(Value::parse(R"("\uDBFF\uDFFF")").as<std::string>() == "\xF4\x8F\xBF\xBF");  // U+10FFFF
  Value nul = Value::parse(R"("a\u0000b")");
  CHECK(nul.as<std::string>() == std::string("a\0b", 3));
  // Raw UTF-8 passes through unchanged, in strings and keys.
  std::string raw = "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"";
  CHECK(Value::parse(raw).as<std::string>() == raw.substr(1, raw.size() - 2));
  Value keyed = Value::parse("{\"\xC3\xA9t\xC3\xA9\":1,\"\\u00e9\":2}");
  CHECK(keyed.at("\xC3\xA9t\xC3\xA9").as<int>() == 1);
  CHECK(keyed.at("\xC3\xA9").as<int>() == 2);
  CHECK(Value::parse("\"\x7F\"").as<std::string>() == "\x7F");  // DEL needs no escape

  check_parse_error(R"("\x")", "1:3", "expected an escape after '\\' (one of");
  check_parse_error(R"("\U0041")", "1:3", "found 'U0041'");
  check_parse_error("\"\\", "1:3", "expected an escape after '\\'");
  check_parse_error(R"("\u12")", "1:6", "expected 4 hex digits after \\u, found '\"'");
  check_parse_error(R"("\u12G4")", "1:6", "expected 4 hex digits after \\u, found 'G4'");
  check_parse_error(R"("\u)", "1:4", "expected 4 hex digits after \\u, found the end of the input");
  check_parse_error(R"("\ud800")", "1:2", "a UTF-16 high surrogate \\ud800 without a low one");
  check_parse_error(R"("\ud800x")", "1:2", "without a low one");
  check_parse_error(R"("\uDBFF\u0041")", "1:8", "\\u0041 after the high surrogate \\uDBFF is not a low surrogate");
  check_parse_error(R"("\ud800\ud800")", "1:8", "is not a low surrogate");
  check_parse_error(R"("\ud800\u00")", "1:12", "expected 4 hex digits after \\u");
  check_parse_error(R"("\udc00")", "1:2", "a lone UTF-16 low surrogate \\udc00");
  check_parse_error(R"("ab\uDFFFcd")", "1:4", "a lone UTF-16 low surrogate");
}

TEST_CASE("Value::parse: unterminated strings and raw control characters are refused", "[value][parse]") {
  check_parse_error("\"abc", "1:5", "the string that starts at 1:1 has no closing '\"'");
  check_parse_error("[\"a\", \"b", "1:9", "the string that starts at 1:7 has no closing '\"'");
  check_parse_error("\"", "1:2", "has no closing");
  check_parse_error("\"a\\\"", "1:5", "has no closing");  // the escaped quote does not close it
  check_parse_error("\"a\tb\"", "1:3", "a raw control character (byte 0x09) in a string: JSON needs it escaped, as \\u0009");
  check_parse_error("\"a\nb\"", "1:3", "(byte 0x0A)");
  check_parse_error(std::string("\"a\0b\"", 5), "1:3", "(byte 0x00)");
  check_parse_error("\"\x1F\"", "1:2", "as \\u001F");
}

TEST_CASE("Value::parse: JSON text must be valid UTF-8", "[value][parse]") {
  const char* bad[] = {
      "\"\x80\"",              // a continuation byte with no lead
      "\"\xBF\"",              //
      "\"\xC0\x80\"",          // overlong NUL
      "\"\xC1\xBF\"",          // overlong U+007F
      "\"\xE0\x80\x80\"",      // overlong (3 bytes)
      "\"\xE0\x9F\xBF\"",      // overlong U+07FF
      "\"\xED\xA0\x80\"",      // U+D800: a surrogate in UTF-8
      "\"\xED\xBF\xBF\"",      // U+DFFF
      "\"\xF0\x80\x80\x80\"",  // overlong (4 bytes)
      "\"\xF0\x8F\xBF\xBF\"",  // overlong U+FFFF
      "\"\xF4\x90\x80\x80\"",  // U+110000, beyond Unicode
      "\"\xF5\x80\x80\x80\"",  // no such lead byte
      "\"\xFF\"",              //
      "\"\xC3\"",              // truncated by the quote
      "\"\xE2\x82\"",          // truncated
      "\"\xF0\x9F\x98\"",      // truncated
      "\"\xC3x\"",             // a lead byte followed by ASCII
  };
  for (const char* text : bad) {
    INFO("input bytes: " << text);
    check_parse_error(text, "1:2", "invalid UTF-8 in a string");
  }
  check_parse_error("\"\xE2\x82", "1:2", "invalid UTF-8 in a string (at byte 0xE2)");  // truncated by the end
  check_parse_error("\"ok\xC3\xA9\xFF\"", "1:5", "invalid UTF-8");  // the column counts é as one character
  // The edges that are valid.
  CHECK(Value::parse("\"\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xF0\x90\x80\x80\xF4\x8F\xBF\xBF\"")
            .as<std::string>()
            .size() == 21);
  // Outside strings, any byte that is not JSON is refused and named.
  check_parse_error("\xC3\xA9", "1:1", "found byte 0xC3");
}

TEST_CASE("Value::parse: malformed structure says line:column, what was expected and what was found", "[value][parse]") {
  check_parse_error("", "1:1", "expected a JSON value (object, array, string, number, true, false or null), found the end of the input");
  check_parse_error(" \n\t ", "2:3", "expected a JSON value");
  check_parse_error("[", "1:2", "expected a JSON value");
  check_parse_error("[1", "1:3", "expected ',' or ']' after an array element, found the end of the input");
  check_parse_error("[1 2]", "1:4", "expected ',' or ']' after an array element, found '2'");
  check_parse_error("[1,]", "1:4", "expected a value after ',' (JSON has no trailing commas), found ']'");
  check_parse_error("[,1]", "1:2", "expected a JSON value");
  check_parse_error("[1}", "1:3", "expected ',' or ']' after an array element, found '}'");
  check_parse_error("{", "1:2", "expected a string key or '}', found the end of the input");
  check_parse_error("{,}", "1:2", "expected a string key or '}', found ','");
  check_parse_error("{a:1}", "1:2", "expected a string key or '}', found 'a'");
  check_parse_error("{'a':1}", "1:2", "found '''");
  check_parse_error("{\"a\"}", "1:5", "expected ':' after the key, found '}'");
  check_parse_error("{\"a\" 1}", "1:6", "expected ':' after the key, found '1'");
  check_parse_error("{\"a\":}", "1:6", "expected a JSON value");
  check_parse_error("{\"a\":1", "1:7", "expected ',' or '}' after an object member, found the end of the input");
  check_parse_error("{\"a\":1 \"b\":2}", "1:8", "expected ',' or '}' after an object member, found '\"'");
  check_parse_error("{\"a\":1,}", "1:8", "expected a string key after ',' (JSON has no trailing commas), found '}'");
  check_parse_error("{\"a\":1]", "1:7", "expected ',' or '}' after an object member, found ']'");
  check_parse_error("{1:2}", "1:2", "expected a string key or '}', found '1'");
  check_parse_error("tru", "1:1", "expected true, found 'tru'");
  check_parse_error("trUe", "1:1", "expected true, found 'trUe'");
  check_parse_error("fals", "1:1", "expected false, found 'fals'");
  check_parse_error("nul", "1:1", "expected null, found 'nul'");
  check_parse_error("None", "1:1", "expected a JSON value (object, array, string, number, true, false or null), found 'None'");
  check_parse_error("True", "1:1", "found 'True'");
  check_parse_error("nullx", "1:5", "expected the end of the input after the JSON value, found 'x'");
  check_parse_error("{} {}", "1:4", "expected the end of the input after the JSON value, found '{'");
  check_parse_error("1 2", "1:3", "expected the end of the input after the JSON value, found '2'");
  check_parse_error("[1]\x01", "1:4", "found byte 0x01");
  check_parse_error("/* c */ 1", "1:1", "found '/'");  // no comments in JSON
  check_parse_error("\xEF\xBB\xBF", "1:2", "expected a JSON value");  // the mark is one character
  check_parse_error("[\xEF\xBB\xBF" "1]", "1:2", "found byte 0xEF");  // a byte order mark only at the start
  CHECK(Value::parse("\xEF\xBB\xBF[1]") == Value::array({1}));  // RFC 8259 lets a parser skip it
  // A very long word is named by its first 20 characters.
  std::string long_word = "x" + std::string(100, 'y');
  check_parse_error(long_word, "1:1", "found '" + long_word.substr(0, 20) + "'");
}

TEST_CASE("Value::parse: lines and columns count from 1, columns in characters", "[value][parse]") {
  check_parse_error("{\n  \"a\": 1,\n  \"b\": [1, 2,, 3]\n}", "3:14", "expected a JSON value (object, array, string, number, true, false or null), found ','");
  check_parse_error("[\r\n1,\r\n x]", "3:2", "found 'x'");  // \r is a column, \n ends the line
  check_parse_error("[\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\", x]", "1:9", "found 'x'");  // three characters, nine bytes
  check_parse_error("\n\n\n", "4:1", "found the end of the input");
}

TEST_CASE("Value::parse: a duplicate key is an error naming the key", "[value][parse]") {
  check_parse_error(R"({"a":1,"a":2})", "1:8", "duplicate key \"a\" in an object");
  check_parse_error(R"({"a":1,"b":{"x":1,"x":[]}})", "1:19", "duplicate key \"x\"");
  check_parse_error(R"({"\u0061":1,"a":2})", "1:13", "duplicate key \"a\"");  // the same key once unescaped
  check_parse_error("{\"q\\\"\":1,\"q\\\"\":2}", "1:10", "duplicate key \"q\\\"\"");
  CHECK(Value::parse(R"({"a":1,"A":2,"a ":3})").size() == 3);  // keys differ by case or space
  CHECK(Value::parse(R"([{"a":1},{"a":2}])").size() == 2);   // the same key in sibling objects
}

TEST_CASE("Value::parse: arrays and objects nest up to 512 deep; deeper is an error, not a crash", "[value][parse]") {
  Value arrays = Value::parse(nested('[', ']', 512, "7"));
  const Value* cur = &arrays;
  for (int i = 0; i < 512; ++i) {
    REQUIRE(cur->is_array());
    cur = &cur->at(std::size_t{0});
  }
  CHECK(*cur == Value(7));
  CHECK(Value::parse(nested_objects(512)).is_object());
  CHECK(Value::parse(nested('[', ']', 256, nested_objects(256))).is_array());  // mixed

  check_parse_error(nested('[', ']', 513), "1:513", "arrays and objects nested over 512 deep");
  check_parse_error(nested_objects(513), "1:" + std::to_string(512 * 5 + 1), "nested over 512 deep");
  check_parse_error(nested('[', ']', 256, nested_objects(257)), "1:" + std::to_string(256 + 256 * 5 + 1), "nested over 512 deep");
  // A hostile input far deeper than any stack: refused at the limit, without recursing further.
  check_parse_error(std::string(1000000, '['), "1:513", "nested over 512 deep");
  check_parse_error(std::string(1000000, '{'), "1:2", "expected a string key or '}'");
  // Long flat input is not nesting.
  std::string flat = "[0";
  for (int i = 1; i < 50000; ++i) flat += ",0";
  flat += "]";
  Value many = Value::parse(flat);
  CHECK(many.size() == 50000);
}

TEST_CASE("Value::parse reads back what to_json writes", "[value][parse]") {
  Value v{{"ints", Value::array({0, 1, -1, kI64Max, kI64Min, 1000000})},
          {"doubles", Value::array({0.0, -0.0, 0.1, -2.5, 1e-5, 1.5e-300, 3.0, 1e16, 1e300, 4.9e-324,
                                    std::numeric_limits<double>::max(), 123456.789, 1.0 / 3.0})},
          {"text", Value::array({"", "plain", "quote \" backslash \\ slash /", "\b\f\n\r\t", std::string("nul\0in", 6),
                                 "\x01\x1F\x7F", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"})},
          {"flags", Value::array({true, false, Value()})},
          {"nested", Value{{"empty_a", Value::array()}, {"empty_o", Value::object()},
                           {"deep", Value::parse(nested('[', ']', 100, "{\"k\":[1,{\"z\":null}]}"))}}},
          {"key with \"quotes\"\n", 1},
          {"", "empty key"}};
  for (int indent : {-1, 0, 1, 2, 4}) {
    INFO("indent " << indent);
    std::string text = v.to_json(indent);
    Value back = Value::parse(text);
    CHECK(back == v);
    CHECK(back.to_json(indent) == text);
  }
  // Every double survives, its type kept: to_json writes the shortest text that reads back exact.
  std::uint64_t x = 0x9E3779B97F4A7C15u;
  for (int i = 0; i < 2000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    double d;
    std::memcpy(&d, &x, sizeof d);
    if (!std::isfinite(d)) continue;
    Value back = Value::parse(Value(d).to_json());
    REQUIRE(back.is_floating());
    double got = back.as<double>();
    std::uint64_t got_bits;
    std::memcpy(&got_bits, &got, sizeof got);
    CHECK(got_bits == x);
    Value i64 = Value::parse(Value(static_cast<std::int64_t>(x)).to_json());
    CHECK(i64 == Value(static_cast<std::int64_t>(x)));
  }
  // Bytes print as base64 strings and come back as those strings (JSON has no bytes).
  CHECK(Value::parse(Value::bytes(std::string("\x00\xFF", 2)).to_json()) == Value("AP8="));
  // operator<< writes to_json(4), which parses too.
  std::ostringstream os;
  os << v;
  CHECK(Value::parse(os.str()) == v);
}

// ---------------------------------------------------------------------------------------------
// Key paths in conversion errors: where in the tree as<T>() failed.
namespace {
struct Row {
  std::string name;
  int qty = 0;
};
void from_value(const Value& v, Row& r) {
  r.name = v.at("name").as<std::string>();
  r.qty = v.at("qty").as<int>();
}
struct Table {
  std::vector<Row> rows;
};
void from_value(const Value& v, Table& t) { t.rows = v.at("rows").as<std::vector<Row>>(); }
// Reads through a copy: the failing value is not in the tree the caller converts.
struct CopyReader {
  int n = 0;
};
void from_value(const Value& v, CopyReader& c) {
  Value copy = v;
  c.n = copy.at("n").as<int>();
}
}  // namespace

TEST_CASE("as<T>() says where in the tree a conversion failed", "[value][path]") {
  Value doc = Value::parse(R"({"rows":[{"name":"a","qty":1},{"name":"b","qty":2},{"name":"c","qty":3},
                              {"name":"d","qty":"x"}]})");
  CHECK(pfp_error_text([&] { (void)doc.as<Table>(); }) ==
        "pfp::Value: at \"rows\"[3].\"qty\": expected integer, but the value is a string (\"x\")");
  CHECK(pfp_error_text([&] { (void)doc.at("rows").as<std::vector<Row>>(); }) ==
        "pfp::Value: at [3].\"qty\": expected integer, but the value is a string (\"x\")");
  CHECK(pfp_error_text([&] { (void)doc.at("rows").at(std::size_t{3}).as<Row>(); }) ==
        "pfp::Value: at \"qty\": expected integer, but the value is a string (\"x\")");
  // At the top there is no path, as before.
  CHECK(pfp_error_text([&] { (void)Value("x").as<int>(); }) == "pfp::Value: expected integer, but the value is a string (\"x\")");
  CHECK(pfp_error_text([&] { (void)doc.as<std::vector<int>>(); }) ==
        "pfp::Value: std::vector needs an array, but the value is an object");
  // A missing key and an index out of range are placed the same way.
  Value no_qty = Value::parse(R"({"rows":[{"name":"a","qty":1},{"name":"b"}]})");
  CHECK(pfp_error_text([&] { (void)no_qty.as<Table>(); }) == "pfp::Value: at \"rows\"[1]: no key \"qty\" in the object");
  CHECK(pfp_error_text([&] { (void)Value::parse(R"({"rows":[7]})").as<Table>(); }) ==
        "pfp::Value: at \"rows\"[0]: no key \"name\": the value is an integer, not an object");
  CHECK(pfp_error_text([&] { (void)Value::parse(R"({"rows":{}})").as<Table>(); }) ==
        "pfp::Value: at \"rows\": std::vector needs an array, but the value is an object");
}

TEST_CASE("as<T>() key paths through every container kind", "[value][path]") {
  using Nested = std::map<std::string, std::vector<std::map<std::string, std::int8_t>>>;
  CHECK(pfp_error_text([] { (void)Value::parse(R"({"a":[{"x":1},{"y":300}]})").as<Nested>(); }) ==
        "pfp::Value: at \"a\"[1].\"y\": integer 300 is out of range for the requested type (-128 to 127)");
  using Grid = std::vector<std::vector<double>>;
  CHECK(pfp_error_text([] { (void)Value::parse(R"([[1,2],[3,true]])").as<Grid>(); }) ==
        "pfp::Value: at [1][1]: expected floating, but the value is a bool (true)");
  using Pairs = std::unordered_map<std::string, std::pair<int, std::optional<std::string>>>;
  CHECK(pfp_error_text([] { (void)Value::parse(R"({"k":[1,"ok"],"m":[2,3]})").as<Pairs>(); }) ==
        "pfp::Value: at \"m\"[1]: expected string, but the value is an integer (3)");
  CHECK(pfp_error_text([] { (void)Value::parse(R"({"k":[1,2,3]})").as<Pairs>(); }) ==
        "pfp::Value: at \"k\": a std::pair needs an array of 2 elements, found 3");
  CHECK(pfp_error_text([] { (void)Value::parse(R"([null,[1,"x"]])").as<std::vector<std::optional<std::vector<int>>>>(); }) ==
        "pfp::Value: at [1][1]: expected integer, but the value is a string (\"x\")");
  // Keys are written as JSON strings, so any key reads unambiguously.
  CHECK(pfp_error_text([] { (void)Value::parse(R"({"a.b":{"\"q\"":{"":false}}})").as<std::map<std::string, std::map<std::string, std::map<std::string, int>>>>(); }) ==
        "pfp::Value: at \"a.b\".\"\\\"q\\\"\".\"\": expected integer, but the value is a bool (false)");
  // Containers of user types, user types holding containers.
  using Shelves = std::map<std::string, std::vector<shop::Item>>;
  Value shelves = Value::parse(R"({"fruit":[{"name":"apple","price":0.5,"qty":3},{"name":"pear","price":"cheap","qty":1}]})");
  CHECK(pfp_error_text([&] { (void)shelves.as<Shelves>(); }) ==
        "pfp::Value: at \"fruit\"[1].\"price\": expected floating, but the value is a string (\"cheap\")");
  Value order = Value::parse(R"({"id":1,"items":[{"name":"a","price":1,"qty":1}],"notes":{"x":"y","z":5}})");
  CHECK(pfp_error_text([&] { (void)order.as<shop::Order>(); }) == "pfp::Value: at \"notes\".\"z\": expected string, but the value is an integer (5)");
  // The same message when the tree was built in code, not parsed.
  Value built;
  built["rows"].push_back(Value{{"name", "a"}, {"qty", 2.5}});
  CHECK(pfp_error_text([&] { (void)built.as<Table>(); }) == "pfp::Value: at \"rows\"[0].\"qty\": expected integer, but the value is a floating (2.5)");
  // Success paths are unaffected.
  Table t = Value::parse(R"({"rows":[{"name":"a","qty":1},{"name":"b","qty":2}]})").as<Table>();
  REQUIRE(t.rows.size() == 2);
  CHECK(t.rows[1].name == "b");
  CHECK(t.rows[1].qty == 2);
}

TEST_CASE("as<T>() key paths: a from_value that reads a copy still reports the failure", "[value][path]") {
  // The failing value lives in the copy, not in the tree being converted: the message says what
  // failed, without a path that would be wrong.
  Value v = Value::parse(R"({"list":[{"n":1},{"n":"two"}]})");
  CHECK(pfp_error_text([&] { (void)v.at("list").as<std::vector<CopyReader>>(); }) ==
        "pfp::Value: expected integer, but the value is a string (\"two\")");
  // A pfp::error that is not about a value passes through unchanged.
  CHECK(pfp_error_text([&] { (void)Value::parse(R"({"list":"x"})").at("list").as<CopyReader>(); }) ==
        "pfp::Value: no key \"n\": the value is a string, not an object");
  // The caught error is a pfp::error, by value too (no slicing of the message).
  try {
    (void)v.as<std::map<std::string, std::vector<std::map<std::string, int>>>>();
    FAIL("no error");
  } catch (const pfp::error& e) {
    pfp::error sliced = e;  // a plain pfp::error copy keeps the whole message
    CHECK(std::string(sliced.what()) == "pfp::Value: at \"list\"[1].\"n\": expected integer, but the value is a string (\"two\")");
  }
}

// Kept last in the file: if Value's copy assignment mishandles a source that lives inside the
// destination, AddressSanitizer aborts the process here, after every other test case has run.
TEST_CASE("assigning a value into one of its own members is safe", "[value]") {
  Value v{{"a", 1}};
  v["self"] = v;  // the right-hand side aliases the object being modified
  REQUIRE(v.at("self").is_object());
  CHECK(v.at("self").at("a").as<int>() == 1);
  CHECK(v.at("a").as<int>() == 1);
  Value arr = Value::array({1, 2});
  arr.push_back(arr);
  CHECK(arr.to_json() == "[1,2,[1,2]]");
  Value list = Value::array({Value::array({7}), 8, 9});
  list = list.at(std::size_t{0});  // walk down into a child array (capacity already sufficient)
  CHECK(list.to_json() == "[7]");
  Value inner{{"x", Value{{"y", 5}}}};
  inner = inner.at("x");  // walk down into a child object: `node = node["child"]`
  CHECK(inner.to_json() == "{\"y\":5}");
  Value tree{{"a", Value{{"b", Value{{"c", "leaf"}}}}}};
  const Value& sub = tree.at("a").at("b");
  tree = sub;
  CHECK(tree.to_json() == "{\"c\":\"leaf\"}");
}
