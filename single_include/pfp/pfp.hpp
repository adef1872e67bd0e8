// pfp: run functions in parallel worker processes -- single-header edition.
//
// GENERATED from include/ by scripts/make_single_include.py: do not edit; change the headers in
// include/pfp/ and run `python3 scripts/make_single_include.py`. Everything <pfp/pfp.hpp> offers, in one file: copy it into
// your project and `#include "pfp.hpp"` (or put its directory on the include path and use
// <pfp/pfp.hpp>). C++17, POSIX; link with -pthread. Backend::mpi is not in it (<pfp/mpi.hpp>).
// License: see the LICENSE file of pfp, which covers this file too.

// ---- begin <pfp/pfp.hpp> ----
#ifndef PFP_PFP_HPP
#define PFP_PFP_HPP

// pfp: run functions in parallel worker processes. A crash, a hang or a leak in one function
// costs that function's Result and nothing else.

// ---- begin <pfp/batch.hpp> ----
#ifndef PFP_BATCH_HPP
#define PFP_BATCH_HPP

// Lazy, single-pass item sources for the Manager (and anything else): batches(range, size),
// enumerate(range), iota(first, last) and generate(callable). Each one produces its elements one at
// a time as it is iterated, so a source of millions of items never sits in memory at once; each
// works over input iterators (it calls begin() of the range it wraps once, when it is first read).

// ---- begin <pfp/value.hpp> ----
#ifndef PFP_VALUE_HPP
#define PFP_VALUE_HPP

// pfp::Value: the JSON-like dynamic value that carries results (and, by default, context and
// arguments). User types convert through ADL to_value/from_value, as in nlohmann/json.

// ---- begin <pfp/detail/json_write.hpp> ----
#ifndef PFP_DETAIL_JSON_WRITE_HPP
#define PFP_DETAIL_JSON_WRITE_HPP

// The pieces of JSON text Value::to_json writes: escaped strings, base64 bytes, doubles.

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pfp::detail {

inline void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out += hex[(static_cast<unsigned char>(c) >> 4) & 0xF];
          out += hex[static_cast<unsigned char>(c) & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

inline void append_base64(std::string& out, std::string_view raw) {
  static constexpr char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return static_cast<std::uint32_t>(static_cast<unsigned char>(raw[k])); };
  for (; i + 2 < raw.size(); i += 3) {
    std::uint32_t n = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += table[(n >> 6) & 63];
    out += table[n & 63];
  }
  if (std::size_t rest = raw.size() - i) {
    std::uint32_t n = byte(i) << 16;
    if (rest == 2) n |= byte(i + 1) << 8;
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += rest == 2 ? table[(n >> 6) & 63] : '=';
    out += '=';
  }
}

// Python's repr(float): shortest round-trip digits, scientific below 1e-4 and from 1e16 on,
// and always recognisable as a float ("3.0").
inline void append_json_double(std::string& out, double d) {
  if (std::isnan(d)) { out += "NaN"; return; }
  if (std::isinf(d)) { out += d < 0 ? "-Infinity" : "Infinity"; return; }
  char buf[64];
  double mag = std::fabs(d);
  bool scientific = mag != 0.0 && (mag < 1e-4 || mag >= 1e16);
  auto res = std::to_chars(buf, buf + sizeof buf, d, scientific ? std::chars_format::scientific : std::chars_format::fixed);
  std::string_view text(buf, static_cast<std::size_t>(res.ptr - buf));
  out += text;
  if (!scientific && text.find('.') == std::string_view::npos) out += ".0";
}

}  // namespace pfp::detail

#endif  // PFP_DETAIL_JSON_WRITE_HPP
// ---- end <pfp/detail/json_write.hpp> ----
// ---- begin <pfp/error.hpp> ----
#ifndef PFP_ERROR_HPP
#define PFP_ERROR_HPP

#include <stdexcept>

// Marks the paths that only build error messages: kept out of line, so the checks before them
// stay small enough to inline where pfp handles every function's result.
#if defined(__GNUC__) || defined(__clang__)
#define PFP_DETAIL_COLD __attribute__((cold, noinline))
#else
#define PFP_DETAIL_COLD
#endif

namespace pfp {

/// The one exception type pfp throws for misuse, bad input and failed system calls.
/// Its what() says what went wrong and, where it can, what to do about it.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace pfp

#endif  // PFP_ERROR_HPP
// ---- end <pfp/error.hpp> ----

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <new>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace pfp {

class Value;

namespace detail {
class Reader;

template <class>
inline constexpr bool dependent_false = false;

// What Value throws about one value (a type mismatch, a missing key, an index out of range). It
// remembers which value, so that an enclosing as<T>() can say where that value sits in the tree
// it converts (at "rows"[3]."qty": ...); that path is worked out only once something throws.
class value_error : public error {
 public:
  value_error(const void* node, std::string detail, const std::string& path = {})
      : error("pfp::Value: " + (path.empty() ? std::string() : "at " + path + ": ") + detail),
        node_(node),
        detail_(std::move(detail)) {}
  const void* node() const noexcept { return node_; }
  const std::string& detail() const noexcept { return detail_; }

 private:
  const void* node_;  // compared, never dereferenced: it may be gone by the time it is caught
  std::string detail_;
};

template <class T>
struct is_vector : std::false_type {};
template <class T, class A>
struct is_vector<std::vector<T, A>> : std::true_type {};

template <class T>
struct is_string_map : std::false_type {};
template <class T, class C, class A>
struct is_string_map<std::map<std::string, T, C, A>> : std::true_type {};
template <class T, class H, class E, class A>
struct is_string_map<std::unordered_map<std::string, T, H, E, A>> : std::true_type {};

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

template <class T>
struct is_pair : std::false_type {};
template <class A, class B>
struct is_pair<std::pair<A, B>> : std::true_type {};

// Found by argument-dependent lookup in the user type's namespace.
template <class T, class = void>
struct has_to_value : std::false_type {};
template <class T>
struct has_to_value<T, std::void_t<decltype(to_value(std::declval<Value&>(), std::declval<const T&>()))>>
    : std::true_type {};

template <class T, class = void>
struct has_from_value : std::false_type {};
template <class T>
struct has_from_value<T, std::void_t<decltype(from_value(std::declval<const Value&>(), std::declval<T&>()))>>
    : std::true_type {};

template <class T>
inline constexpr bool is_integer_v = std::is_integral_v<T> && !std::is_same_v<T, bool>;

}  // namespace detail

/// A JSON-like dynamic value: null, bool, integer (int64), floating (double), string, bytes,
/// array or object (string keys, iterated in sorted order).
/// Conversions that cannot succeed throw pfp::error with a message naming both types.
class Value {
 public:
  enum class Type : std::uint8_t { null, boolean, integer, floating, string, bytes, array, object };
  using Array = std::vector<Value>;
  using Object = std::map<std::string, Value, std::less<>>;

  /// null
  Value() noexcept = default;
  Value(const Value&) = default;
  Value(Value&&) noexcept = default;
  // Assigning a value its own descendant (node = node["child"]) must work: the source is
  // taken out of the tree before the old content is destroyed.
  Value& operator=(const Value& other) {
    if (this != &other) {
      Value copy(other);
      data_ = std::move(copy.data_);
    }
    return *this;
  }
  Value& operator=(Value&& other) noexcept {
    if (this == &other) {
    } else if (holds_scalar() && other.holds_scalar()) {
      set_scalar(other);
    } else if (holds_scalar()) {
      data_ = std::move(other.data_);  // null or a scalar: other cannot live inside it
    } else {
      take(other);
    }
    return *this;
  }
  ~Value() = default;
  Value(std::nullptr_t) noexcept {}

  template <class T, std::enable_if_t<std::is_same_v<T, bool>, int> = 0>
  Value(T b) noexcept : data_(b) {}

  /// Any integer type. Throws pfp::error for an unsigned value above INT64_MAX.
  template <class T, std::enable_if_t<detail::is_integer_v<T>, int> = 0>
  Value(T i) : data_(checked_int64(i)) {}

  template <class T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
  Value(T d) noexcept : data_(static_cast<double>(d)) {}

  /// Text. Throws pfp::error for a null pointer.
  Value(const char* s) : data_(std::string(s ? s : throw error("pfp::Value: constructed from a null const char*"))) {}
  Value(std::string s) noexcept : data_(std::move(s)) {}
  Value(std::string_view s) : data_(std::string(s)) {}

  Value(Array a) noexcept : data_(std::move(a)) {}
  Value(Object o) noexcept : data_(std::move(o)) {}

  /// An array; each element converts to Value.
  template <class T, class A>
  Value(const std::vector<T, A>& v) : data_(Array{}) {
    static_assert(std::is_convertible_v<const T&, Value>,
                  "pfp::Value: the vector's element type cannot be converted to pfp::Value; define "
                  "void to_value(pfp::Value&, const T&) in the element type's namespace");
    auto& arr = std::get<Array>(data_);
    arr.reserve(v.size());
    for (const auto& e : v) arr.emplace_back(static_cast<const T&>(e));
  }

  /// An object; each mapped value converts to Value.
  template <class T, class C, class A>
  Value(const std::map<std::string, T, C, A>& m) : data_(Object{}) {
    assign_map(m);
  }
  template <class T, class H, class E, class A>
  Value(const std::unordered_map<std::string, T, H, E, A>& m) : data_(Object{}) {
    assign_map(m);
  }

  /// nullopt becomes null.
  template <class T>
  Value(const std::optional<T>& o) : Value() {
    if (o) *this = Value(*o);
  }

  /// A two-element array.
  template <class A, class B>
  Value(const std::pair<A, B>& p) : data_(Array{Value(p.first), Value(p.second)}) {}

  /// An object: Value{{"k", 1}, {"j", "x"}}.
  Value(std::initializer_list<std::pair<const std::string, Value>> init) : data_(Object(init.begin(), init.end())) {}

  /// A user type with `void to_value(pfp::Value&, const T&)` in its namespace.
  template <class T, std::enable_if_t<detail::has_to_value<T>::value && !std::is_same_v<T, Value>, int> = 0>
  Value(const T& t) : Value() {
    to_value(*this, t);
  }

  static Value object() { return Value(Object{}); }
  static Value array() { return Value(Array{}); }
  static Value array(std::initializer_list<Value> elements) { return Value(Array(elements)); }
  /// A byte blob (not text); to_json prints it as a base64 string.
  static Value bytes(std::string_view raw) {
    Value v;
    v.data_ = Bytes{std::string(raw)};
    return v;
  }
  /// A byte blob taken over from a std::string rvalue, without a copy.
  template <class S, std::enable_if_t<std::is_same_v<S, std::string>, int> = 0>
  static Value bytes(S&& raw) noexcept {
    Value v;
    v.data_ = Bytes{std::move(raw)};
    return v;
  }

  Type type() const noexcept { return static_cast<Type>(data_.index()); }
  bool is_null() const noexcept { return type() == Type::null; }
  bool is_bool() const noexcept { return type() == Type::boolean; }
  bool is_integer() const noexcept { return type() == Type::integer; }
  bool is_floating() const noexcept { return type() == Type::floating; }
  bool is_number() const noexcept { return is_integer() || is_floating(); }
  bool is_string() const noexcept { return type() == Type::string; }
  bool is_bytes() const noexcept { return type() == Type::bytes; }
  bool is_array() const noexcept { return type() == Type::array; }
  bool is_object() const noexcept { return type() == Type::object; }

  static std::string_view type_name(Type t) noexcept {
    switch (t) {
      case Type::null: return "null";
      case Type::boolean: return "bool";
      case Type::integer: return "integer";
      case Type::floating: return "floating";
      case Type::string: return "string";
      case Type::bytes: return "bytes";
      case Type::array: return "array";
      case Type::object: return "object";
    }
    return "unknown";
  }

  /// Converts to T: bool, any integer (range-checked), float/double (integers too), std::string
  /// (string or bytes), std::vector, std::map/unordered_map with string keys, std::optional,
  /// std::pair, Value, and user types with `from_value(const pfp::Value&, T&)` in their namespace.
  /// Throws pfp::error when the value does not match or an integer is out of T's range; inside a
  /// container or a user type the message says where, e.g.
  /// `pfp::Value: at "rows"[3]."qty": expected integer, but the value is a string ("x")`.
  template <class T>
  T as() const {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, Value> || std::is_arithmetic_v<U> || std::is_same_v<U, std::string>) {
      return convert<U>();  // no members below it to name
    } else {
      try {
        return convert<U>();
      } catch (const detail::value_error& e) {
        throw located(e);
      }
    }
  }

  /// Parses JSON text (RFC 8259, strictly): integers that fit int64 become integers, other numbers
  /// doubles; \u escapes (surrogate pairs too) become UTF-8; a UTF-8 byte order mark is skipped.
  /// Parses what to_json() writes back to an equal Value, except bytes (they come back as their
  /// base64 strings) and NaN / Infinity (not JSON). Throws pfp::error saying where (line:column)
  /// and what was expected: for malformed text, invalid UTF-8, a duplicate key, a number beyond
  /// double's range, or arrays and objects nested over 512 deep (a guard for the stack).
  static Value parse(std::string_view json);

  /// The text of a string or the payload of a bytes value. Throws pfp::error otherwise.
  const std::string& str() const {
    if (auto* s = std::get_if<std::string>(&data_)) return *s;
    if (auto* b = std::get_if<Bytes>(&data_)) return b->data;
    throw mismatch("string");
  }

  bool contains(std::string_view key) const { return find(key) != nullptr; }

  /// The member named key, or nullptr when absent or not an object.
  const Value* find(std::string_view key) const {
    auto* obj = std::get_if<Object>(&data_);
    if (!obj) return nullptr;
    auto it = obj->find(key);
    return it == obj->end() ? nullptr : &it->second;
  }

  /// Object access: turns null into an object and inserts null for a new key.
  /// Throws pfp::error on any other type.
  Value& operator[](std::string_view key) {
    if (is_null()) data_ = Object{};
    auto* obj = std::get_if<Object>(&data_);
    if (!obj) throw error("pfp::Value::operator[](\"" + std::string(key) + "\"): the value is " + article_type() + ", not an object");
    auto it = obj->find(key);
    if (it == obj->end()) it = obj->emplace(std::string(key), Value()).first;
    return it->second;
  }
  /// Array access. Throws pfp::error when not an array or out of range.
  Value& operator[](std::size_t i) { return at(i); }
  const Value& operator[](std::size_t i) const { return at(i); }

  /// Throws pfp::error when the key is absent or the value is not an object.
  const Value& at(std::string_view key) const {
    const Value* v = find(key);
    if (!v) throw missing_key(key);
    return *v;
  }
  Value& at(std::string_view key) { return const_cast<Value&>(static_cast<const Value&>(*this).at(key)); }

  /// Throws pfp::error when not an array or i is out of range.
  const Value& at(std::size_t i) const {
    const Array& arr = elements_or_throw("an array element");
    if (i >= arr.size()) throw detail::value_error(this, "index " + std::to_string(i) + " is out of range for an array of " + std::to_string(arr.size()));
    return arr[i];
  }
  Value& at(std::size_t i) { return const_cast<Value&>(static_cast<const Value&>(*this).at(i)); }

  /// Appends to an array; turns null into an array. Throws pfp::error on any other type.
  void push_back(Value v) {
    if (is_null()) data_ = Array{};
    auto* arr = std::get_if<Array>(&data_);
    if (!arr) throw error("pfp::Value::push_back: the value is " + article_type() + ", not an array");
    arr->push_back(std::move(v));
  }

  /// Elements of an array or members of an object; 0 for anything else.
  std::size_t size() const noexcept {
    if (auto* a = std::get_if<Array>(&data_)) return a->size();
    if (auto* o = std::get_if<Object>(&data_)) return o->size();
    return 0;
  }
  bool empty() const noexcept { return size() == 0; }

  /// The members of an object in key order (empty for null). Throws pfp::error on other types.
  const Object& items() const {
    if (is_null()) return empty_object();
    if (auto* o = std::get_if<Object>(&data_)) return *o;
    throw error("pfp::Value::items(): the value is " + article_type() + ", not an object");
  }
  /// The elements of an array (empty for null). Throws pfp::error on other types.
  const Array& elements() const { return is_null() ? empty_array() : elements_or_throw("elements()"); }

  /// JSON text with sorted keys. indent < 0: compact, no spaces. indent >= 0: one member per line,
  /// indented like Python's json.dumps(indent=N, sort_keys=True). Bytes print as base64 strings,
  /// non-finite doubles as NaN / Infinity / -Infinity (as Python does).
  std::string to_json(int indent = -1) const {
    std::string out;
    dump(out, indent, 0);
    return out;
  }

  friend bool operator==(const Value& a, const Value& b) { return a.data_ == b.data_; }
  friend class detail::Reader;  // decodes scalars in place
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

  struct Bytes {
    std::string data;
    friend bool operator==(const Bytes& a, const Bytes& b) { return a.data == b.data; }
  };

 private:
  using Data = std::variant<std::monostate, bool, std::int64_t, double, std::string, Bytes, Array, Object>;
  Data data_;

  // null, a bool, an integer or a double: alternatives with trivial destructors.
  bool holds_scalar() const noexcept { return data_.index() <= 3; }
  // Both hold scalars: the storage is reused without the variant's destructor and assignment,
  // which dispatch through tables (a worker and the parent do this for every function). Ending the
  // old alternative's lifetime without its destructor is allowed: a trivial one does nothing.
  void set_scalar(const Value& other) noexcept {
    switch (other.data_.index()) {
      case 1: ::new (static_cast<void*>(&data_)) Data(std::in_place_index<1>, *std::get_if<1>(&other.data_)); break;
      case 2: ::new (static_cast<void*>(&data_)) Data(std::in_place_index<2>, *std::get_if<2>(&other.data_)); break;
      case 3: ::new (static_cast<void*>(&data_)) Data(std::in_place_index<3>, *std::get_if<3>(&other.data_)); break;
      default: ::new (static_cast<void*>(&data_)) Data(); break;
    }
  }
  // other may live inside this value (node = std::move(node["child"])): its content is moved out
  // first, then the old content (other with it) is destroyed. One alternative at a time, not the
  // variant's move assignment, whose every-alternative table GCC 12 at -O3 warns about
  // (-Wmaybe-uninitialized on a freshly moved temporary).
  void take(Value& other) noexcept {
    switch (other.data_.index()) {
      case 1: take_alternative<1>(other); break;
      case 2: take_alternative<2>(other); break;
      case 3: take_alternative<3>(other); break;
      case 4: take_alternative<4>(other); break;
      case 5: take_alternative<5>(other); break;
      case 6: take_alternative<6>(other); break;
      case 7: take_alternative<7>(other); break;
      default: data_.template emplace<0>(); break;
    }
  }
  template <std::size_t I>
  void take_alternative(Value& other) noexcept {
    std::variant_alternative_t<I, Data> content(std::move(*std::get_if<I>(&other.data_)));
    data_.template emplace<I>(std::move(content));
  }

  // Sets null (I = 0) or an integer (I = 2), the same way when it holds a scalar.
  template <std::size_t I, class... A>
  void set_trivial(A... a) noexcept {
    if (holds_scalar())
      ::new (static_cast<void*>(&data_)) Data(std::in_place_index<I>, a...);
    else
      data_.template emplace<I>(a...);
  }

  // Never destroyed (like every static of pfp): nothing runs in a worker that leaves by exit().
  static const Object& empty_object() {
    static const Object* const o = new Object;
    return *o;
  }
  static const Array& empty_array() {
    static const Array* const a = new Array;
    return *a;
  }

  // as<T>() without naming where a failure is (as<T>() does that, once, when it throws).
  template <class U>
  U convert() const {
    if constexpr (std::is_same_v<U, Value>) {
      return *this;
    } else if constexpr (std::is_same_v<U, bool>) {
      if (!is_bool()) throw mismatch("bool");
      return std::get<bool>(data_);
    } else if constexpr (detail::is_integer_v<U>) {
      if (!is_integer()) throw mismatch("integer");
      return range_checked<U>(std::get<std::int64_t>(data_));
    } else if constexpr (std::is_floating_point_v<U>) {
      if (is_integer()) return static_cast<U>(std::get<std::int64_t>(data_));
      if (!is_floating()) throw mismatch("floating");
      return static_cast<U>(std::get<double>(data_));
    } else if constexpr (std::is_same_v<U, std::string>) {
      return str();
    } else if constexpr (detail::is_vector<U>::value) {
      const Array& arr = elements_or_throw("std::vector");
      U out;
      out.reserve(arr.size());
      for (std::size_t i = 0; i < arr.size(); ++i) out.push_back(arr[i].template as<typename U::value_type>());
      return out;
    } else if constexpr (detail::is_string_map<U>::value) {
      if (!is_object()) throw mismatch("object");
      U out;
      for (const auto& [k, v] : std::get<Object>(data_)) out.emplace(k, v.template as<typename U::mapped_type>());
      return out;
    } else if constexpr (detail::is_optional<U>::value) {
      if (is_null()) return U{};
      return U{as<typename U::value_type>()};
    } else if constexpr (detail::is_pair<U>::value) {
      const Array& arr = elements_or_throw("std::pair");
      if (arr.size() != 2) throw detail::value_error(this, "a std::pair needs an array of 2 elements, found " + std::to_string(arr.size()));
      return U{arr[0].template as<typename U::first_type>(), arr[1].template as<typename U::second_type>()};
    } else if constexpr (detail::has_from_value<U>::value) {
      static_assert(std::is_default_constructible_v<U>,
                    "pfp::Value::as<T>: T must be default-constructible to be filled by from_value");
      U out{};
      from_value(*this, out);
      return out;
    } else {
      static_assert(detail::dependent_false<U>,
                    "pfp::Value::as<T>: T cannot be converted from pfp::Value; define "
                    "void from_value(const pfp::Value&, T&) in T's namespace");
    }
  }

  template <class T>
  static std::int64_t checked_int64(T i) {
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(std::int64_t)) {
      if (i > static_cast<std::make_unsigned_t<std::int64_t>>(std::numeric_limits<std::int64_t>::max()))
        throw error("pfp::Value: unsigned integer " + std::to_string(i) + " does not fit the int64 range of pfp::Value");
    }
    return static_cast<std::int64_t>(i);
  }

  template <class U>
  U range_checked(std::int64_t i) const {
    bool fits;
    if constexpr (std::is_unsigned_v<U>) {
      fits = i >= 0 && static_cast<std::uint64_t>(i) <= static_cast<std::uint64_t>(std::numeric_limits<U>::max());
    } else {
      fits = i >= static_cast<std::int64_t>(std::numeric_limits<U>::min()) &&
             i <= static_cast<std::int64_t>(std::numeric_limits<U>::max());
    }
    if (!fits)
      throw detail::value_error(this, "integer " + std::to_string(i) + " is out of range for the requested type (" +
                                          std::to_string(+std::numeric_limits<U>::min()) + " to " +
                                          std::to_string(+std::numeric_limits<U>::max()) + ")");
    return static_cast<U>(i);
  }

  template <class M>
  void assign_map(const M& m) {
    static_assert(std::is_convertible_v<const typename M::mapped_type&, Value>,
                  "pfp::Value: the map's mapped type cannot be converted to pfp::Value; define "
                  "void to_value(pfp::Value&, const T&) in its namespace");
    auto& obj = std::get<Object>(data_);
    for (const auto& [k, v] : m) obj.emplace(k, Value(v));
  }

  const Array& elements_or_throw(const char* what) const {
    if (auto* a = std::get_if<Array>(&data_)) return *a;
    throw detail::value_error(this, std::string(what) + " needs an array, but the value is " + article_type());
  }

  std::string article_type() const {
    std::string_view n = type_name(type());
    bool vowel = n[0] == 'a' || n[0] == 'i' || n[0] == 'o';
    return std::string(is_null() ? "" : (vowel ? "an " : "a ")) + std::string(n);
  }

  PFP_DETAIL_COLD detail::value_error mismatch(const char* wanted) const {
    return detail::value_error(this, std::string("expected ") + wanted + ", but the value is " + article_type() +
                                         (is_null() ? "" : " (" + to_json().substr(0, 60) + ")"));
  }

  PFP_DETAIL_COLD detail::value_error missing_key(std::string_view key) const {
    std::string k;
    detail::append_json_string(k, key);
    if (!is_object()) return detail::value_error(this, "no key " + k + ": the value is " + article_type() + ", not an object");
    return detail::value_error(this, "no key " + k + " in the object");
  }

  // e named a value somewhere below this one: the same error, saying where that value is.
  PFP_DETAIL_COLD detail::value_error located(const detail::value_error& e) const {
    std::string path;
    if (e.node() == this || !path_to(e.node(), path)) return e;
    return detail::value_error(e.node(), e.detail(), path);
  }

  // Appends the way from this value down to target ("rows"[3]."qty"); false when it is not below.
  bool path_to(const void* target, std::string& path) const {
    if (target == this) return true;
    std::size_t mark = path.size();
    if (auto* arr = std::get_if<Array>(&data_)) {
      for (std::size_t i = 0; i < arr->size(); ++i) {
        path += '[' + std::to_string(i) + ']';
        if ((*arr)[i].path_to(target, path)) return true;
        path.resize(mark);
      }
    } else if (auto* obj = std::get_if<Object>(&data_)) {
      for (const auto& [k, v] : *obj) {
        if (mark) path += '.';
        detail::append_json_string(path, k);
        if (v.path_to(target, path)) return true;
        path.resize(mark);
      }
    }
    return false;
  }

  static void newline(std::string& out, int indent, int depth) {
    out += '\n';
    out.append(static_cast<std::size_t>(indent) * static_cast<std::size_t>(depth), ' ');
  }

  void dump(std::string& out, int indent, int depth) const {
    switch (type()) {
      case Type::null: out += "null"; break;
      case Type::boolean: out += std::get<bool>(data_) ? "true" : "false"; break;
      case Type::integer: out += std::to_string(std::get<std::int64_t>(data_)); break;
      case Type::floating: detail::append_json_double(out, std::get<double>(data_)); break;
      case Type::string: detail::append_json_string(out, std::get<std::string>(data_)); break;
      case Type::bytes:
        out += '"';
        detail::append_base64(out, std::get<Bytes>(data_).data);
        out += '"';
        break;
      case Type::array: {
        const Array& arr = std::get<Array>(data_);
        if (arr.empty()) { out += "[]"; break; }
        out += '[';
        bool first = true;
        for (const Value& e : arr) {
          if (!first) out += ',';
          first = false;
          if (indent >= 0) newline(out, indent, depth + 1);
          e.dump(out, indent, depth + 1);
        }
        if (indent >= 0) newline(out, indent, depth);
        out += ']';
        break;
      }
      case Type::object: {
        const Object& obj = std::get<Object>(data_);
        if (obj.empty()) { out += "{}"; break; }
        out += '{';
        bool first = true;
        for (const auto& [k, v] : obj) {
          if (!first) out += ',';
          first = false;
          if (indent >= 0) newline(out, indent, depth + 1);
          detail::append_json_string(out, k);
          out += indent >= 0 ? ": " : ":";
          v.dump(out, indent, depth + 1);
        }
        if (indent >= 0) newline(out, indent, depth);
        out += '}';
        break;
      }
    }
  }
};

/// Per-function arguments, in the dict style of the Python original.
using Args = Value;

/// The same text as v.to_json(4): sorted keys, 4 spaces per level.
inline std::ostream& operator<<(std::ostream& os, const Value& v) { return os << v.to_json(4); }

}  // namespace pfp

// ---- begin <pfp/detail/json_parse.hpp> ----
#ifndef PFP_DETAIL_JSON_PARSE_HPP
#define PFP_DETAIL_JSON_PARSE_HPP

// Value::parse: a strict RFC 8259 parser, recursive descent over the text in one pass. The
// error paths (line and column, what was found) are worked out only once something is wrong.


#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace pfp {
namespace detail {

// Deep enough for any document a person writes, shallow enough that the recursion (two frames a
// level) stays well inside a thread's stack, even with sanitizers.
inline constexpr std::size_t max_parse_depth = 512;

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) noexcept : text_(text) {}

  Value document() {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // a UTF-8 byte order mark: RFC 8259 allows skipping it
    Value v = value(0);
    skip_space();
    if (pos_ < text_.size()) expected(pos_, "the end of the input after the JSON value");
    return v;
  }

 private:
  std::string_view text_;
  std::size_t pos_ = 0;

  bool at_end() const noexcept { return pos_ >= text_.size(); }
  char peek() const noexcept { return at_end() ? '\0' : text_[pos_]; }
  static bool digit(char c) noexcept { return c >= '0' && c <= '9'; }
  unsigned char byte(std::size_t i) const noexcept { return static_cast<unsigned char>(text_[i]); }

  void skip_space() noexcept {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t' || text_[pos_] == '\r')) ++pos_;
  }

  Value value(std::size_t depth) {
    skip_space();
    switch (peek()) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': return Value(string());
      case 't': literal("true"); return Value(true);
      case 'f': literal("false"); return Value(false);
      case 'n': literal("null"); return Value();
      default:
        if (peek() == '-' || digit(peek())) return number();
        if (text_.substr(pos_, 3) == "NaN" || text_.substr(pos_, 8) == "Infinity") not_a_json_number();
        expected(pos_, "a JSON value (object, array, string, number, true, false or null)");
    }
  }

  // Steps over the '[' or '{' and the space after it; true when the container closes right there.
  bool open(std::size_t depth, char close) {
    if (depth > max_parse_depth)
      fail(pos_, "arrays and objects nested over " + std::to_string(max_parse_depth) + " deep (the most Value::parse accepts)");
    ++pos_;
    skip_space();
    return peek() == close ? (++pos_, true) : false;
  }

  // After an element or member: true when close ends the container, false after a ','.
  bool closes(char close, const char* after) {
    skip_space();
    char c = peek();
    if (c != ',' && c != close) expected(pos_, std::string("',' or '") + close + "' after " + after);
    ++pos_;
    return c == close;
  }

  Value array(std::size_t depth) {
    Value::Array arr;
    if (!open(depth, ']')) {
      do {
        skip_space();
        if (peek() == ']') expected(pos_, "a value after ',' (JSON has no trailing commas)");
        arr.push_back(value(depth));
      } while (!closes(']', "an array element"));
    }
    return Value(std::move(arr));
  }

  Value object(std::size_t depth) {
    Value::Object obj;
    if (!open(depth, '}')) {
      do {
        skip_space();
        if (peek() != '"')
          expected(pos_, obj.empty() ? "a string key or '}'" : "a string key after ',' (JSON has no trailing commas)");
        std::size_t key_at = pos_;
        std::string key = string();
        skip_space();
        if (peek() != ':') expected(pos_, "':' after the key");
        ++pos_;
        std::size_t before = obj.size();
        // Keys in order (as to_json writes them) go in at the end without a search.
        auto it = obj.try_emplace(obj.end(), std::move(key), value(depth));
        if (obj.size() == before) duplicate_key(key_at, it->first);
      } while (!closes('}', "an object member"));
    }
    return Value(std::move(obj));
  }

  void literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) expected(pos_, std::string(word));
    pos_ += word.size();
  }

  Value number() {
    std::size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (!digit(peek())) {
      if (text_.substr(pos_, 8) == "Infinity") not_a_json_number();
      expected(pos_, "a digit after '-'");
    }
    if (peek() == '0' && pos_ + 1 < text_.size() && digit(text_[pos_ + 1]))
      fail(start, "a number with a leading zero (JSON numbers have none; 0 alone is fine)");
    bool integral = true;
    digits();
    if (peek() == '.') {
      ++pos_;
      integral = false;
      if (!digit(peek())) expected(pos_, "a digit after the decimal point");
      digits();
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      integral = false;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!digit(peek())) expected(pos_, "a digit in the exponent");
      digits();
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integral) {
      std::int64_t i = 0;
      if (std::from_chars(first, last, i).ec == std::errc()) return Value(i);
    }
    double d = 0;
    if (std::from_chars(first, last, d).ec == std::errc()) return Value(d);
    // Out of range either way: too small a magnitude rounds to zero, as strtod and Python do.
    if (!underflows(std::string_view(first, pos_ - start)))
      fail(start, "the number " + std::string(first, pos_ - start > 40 ? 40 : pos_ - start) +
                      " is beyond the range of a double (about 1.8e308)");
    return Value(*first == '-' ? -0.0 : 0.0);
  }

  void digits() noexcept {
    while (digit(peek())) ++pos_;
  }

  // A number from_chars called out of range: whether its magnitude is below 1 (so under the
  // smallest double rather than over the largest). It has a nonzero digit, or it would be 0.
  static bool underflows(std::string_view num) noexcept {
    std::size_t i = num[0] == '-' ? 1 : 0;
    long long lead = 0;  // the power of ten of the first nonzero digit, before the exponent
    if (num[i] != '0') {
      while (i + 1 < num.size() && digit(num[i + 1])) ++i, ++lead;
    } else {
      i += 2;  // "0."
      lead = -1;
      while (i < num.size() && num[i] == '0') ++i, --lead;
    }
    std::size_t e = num.find_first_of("eE");
    if (e == std::string_view::npos) return lead < 0;
    long long exp = 0;
    bool negative = e + 1 < num.size() && num[e + 1] == '-';
    for (std::size_t k = e + 1; k < num.size(); ++k)
        if (digit(num[k]) && exp < 1000000) exp = exp * 10 + (num[k] - '0');
    return lead + (negative ? -exp : exp) < 0;
  }

  std::string string() {
    std::size_t open = pos_++;
    std::string out;
    for (;;) {
      std::size_t run = pos_;
      while (!at_end() && byte(pos_) >= 0x20 && byte(pos_) < 0x80 && text_[pos_] != '"' && text_[pos_] != '\\') ++pos_;
      out.append(text_.data() + run, pos_ - run);
      if (at_end()) fail(pos_, "the string that starts at " + where(open) + " has no closing '\"'");
      unsigned char c = byte(pos_);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c == '\\') {
        escape(out);
      } else if (c < 0x20) {
        fail(pos_, "a raw control character (byte " + hex_byte(c) + ") in a string: JSON needs it escaped, as \\u00" +
                       hex_byte(c).substr(2));
      } else {
        utf8(out);
      }
    }
  }

  void escape(std::string& out) {
    std::size_t at = pos_++;  // the backslash
    char c = peek();
    ++pos_;
    switch (c) {
      case '"': out += '"'; return;
      case '\\': out += '\\'; return;
      case '/': out += '/'; return;
      case 'b': out += '\b'; return;
      case 'f': out += '\f'; return;
      case 'n': out += '\n'; return;
      case 'r': out += '\r'; return;
      case 't': out += '\t'; return;
      case 'u': break;
      default:
        --pos_;
        expected(pos_, "an escape after '\\' (one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
    }
    std::uint32_t cp = hex4();
    if (cp >= 0xDC00 && cp <= 0xDFFF) fail(at, "a lone UTF-16 low surrogate \\u" + hex_text(at) + " (it must follow a high one, \\uD800-\\uDBFF)");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (text_.substr(pos_, 2) != "\\u")
        fail(at, "a UTF-16 high surrogate \\u" + hex_text(at) + " without a low one (\\uDC00-\\uDFFF) right after it");
      std::size_t low_at = pos_;
      pos_ += 2;
      std::uint32_t low = hex4();
      if (low < 0xDC00 || low > 0xDFFF)
        fail(low_at, "\\u" + hex_text(low_at) + " after the high surrogate \\u" + hex_text(at) + " is not a low surrogate (\\uDC00-\\uDFFF)");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    append_utf8(out, cp);
  }

  std::uint32_t hex4() {
    std::uint32_t cp = 0;
    for (int k = 0; k < 4; ++k, ++pos_) {
      char c = peek();
      int v = digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (v < 0) expected(pos_, "4 hex digits after \\u");
      cp = cp * 16 + static_cast<std::uint32_t>(v);
    }
    return cp;
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
    auto put = [&](std::uint32_t b) { out += static_cast<char>(b); };
    if (cp < 0x80) {
      put(cp);
    } else if (cp < 0x800) {
      put(0xC0 | (cp >> 6));
      put(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      put(0xE0 | (cp >> 12));
      put(0x80 | ((cp >> 6) & 0x3F));
      put(0x80 | (cp & 0x3F));
    } else {
      put(0xF0 | (cp >> 18));
      put(0x80 | ((cp >> 12) & 0x3F));
      put(0x80 | ((cp >> 6) & 0x3F));
      put(0x80 | (cp & 0x3F));
    }
  }

  // One multi-byte UTF-8 sequence (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF).
  void utf8(std::string& out) {
    unsigned char lead = byte(pos_);
    std::size_t n = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3 : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
    unsigned char lo = lead == 0xE0 ? 0xA0 : lead == 0xF0 ? 0x90 : 0x80;
    unsigned char hi = lead == 0xED ? 0x9F : lead == 0xF4 ? 0x8F : 0xBF;
    bool ok = n != 0 && pos_ + n <= text_.size();
    for (std::size_t k = 1; ok && k < n; ++k) {
      unsigned char b = byte(pos_ + k);
      ok = b >= (k == 1 ? lo : 0x80) && b <= (k == 1 ? hi : 0xBF);
    }
    if (!ok) fail(pos_, "invalid UTF-8 in a string (at byte " + hex_byte(lead) + "): JSON text must be UTF-8");
    out.append(text_.data() + pos_, n);
    pos_ += n;
  }

  // --- errors: built only when the text is wrong ----------------------------------------------
  [[noreturn]] PFP_DETAIL_COLD void fail(std::size_t at, const std::string& what) const {
    throw error("pfp::Value::parse: at " + where(at) + ": " + what);
  }

  [[noreturn]] PFP_DETAIL_COLD void expected(std::size_t at, const std::string& what) const {
    fail(at, "expected " + what + ", found " + found(at));
  }

  [[noreturn]] PFP_DETAIL_COLD void not_a_json_number() const {
    fail(pos_, "NaN and Infinity are not JSON numbers (to_json writes them for non-finite doubles, as Python does; "
               "JSON itself has no way to write them)");
  }

  [[noreturn]] PFP_DETAIL_COLD void duplicate_key(std::size_t at, const std::string& key) const {
    std::string quoted;
    append_json_string(quoted, key);
    fail(at, "duplicate key " + quoted + " in an object (each key may appear once)");
  }

  // line:column, both from 1; the column counts characters (UTF-8 sequences), not bytes.
  std::string where(std::size_t at) const {
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else if ((byte(i) & 0xC0) != 0x80) {
        ++column;
      }
    }
    return std::to_string(line) + ":" + std::to_string(column);
  }

  std::string found(std::size_t at) const {
    if (at >= text_.size()) return "the end of the input";
    auto word_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || digit(c) || c == '_'; };
    unsigned char c = byte(at);
    if (c < 0x20 || c >= 0x7F) return "byte " + hex_byte(c);
    std::size_t end = at + 1;
    if (word_char(text_[at]))
      while (end < text_.size() && end - at < 20 && word_char(text_[end])) ++end;
    return "'" + std::string(text_.substr(at, end - at)) + "'";
  }

  std::string hex_text(std::size_t backslash) const { return std::string(text_.substr(backslash + 2, 4)); }

  static std::string hex_byte(unsigned char c) {
    static constexpr char hex[] = "0123456789ABCDEF";
    return std::string("0x") + hex[c >> 4] + hex[c & 0xF];
  }
};

}  // namespace detail

inline Value Value::parse(std::string_view json) { return detail::JsonParser(json).document(); }

}  // namespace pfp

#endif  // PFP_DETAIL_JSON_PARSE_HPP
// ---- end <pfp/detail/json_parse.hpp> ----

#endif  // PFP_VALUE_HPP
// ---- end <pfp/value.hpp> ----

#include <cstddef>
#include <iterator>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace pfp {

namespace detail {

/// A single-pass (input) range over a source: an object with `std::optional<value_type> next()`
/// (nullopt at the end) and, if the number of elements is known up front, `std::size_t size() const`.
/// The range must stay where it is while it is iterated (its iterators point at it).
template <class Source>
class pull_range {
 public:
  using value_type = typename Source::value_type;

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = typename Source::value_type;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    iterator() = default;
    explicit iterator(pull_range* r) noexcept : r_(r) {}
    reference operator*() const { return *r_->current_; }
    pointer operator->() const { return &*r_->current_; }
    iterator& operator++() {
      r_->advance();
      if (!r_->current_) r_ = nullptr;
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& a, const iterator& b) noexcept { return a.r_ == b.r_; }
    friend bool operator!=(const iterator& a, const iterator& b) noexcept { return a.r_ != b.r_; }

   private:
    pull_range* r_ = nullptr;  // null: the end
  };

  explicit pull_range(Source source) : source_(std::move(source)) {}

  /// Produces the first element on the first call; later calls resume where iteration stands.
  iterator begin() {
    if (!started_) {
      started_ = true;
      advance();
    }
    return current_ ? iterator(this) : iterator();
  }
  iterator end() noexcept { return iterator(); }

  /// Number of elements, when the source knows it (only then does this member exist).
  template <class S = Source, class = decltype(std::declval<const S&>().size())>
  std::size_t size() const {
    return source_.size();
  }

 private:
  void advance() {
    current_.reset();
    current_ = source_.next();
  }

  Source source_;
  std::optional<value_type> current_;
  bool started_ = false;
};

template <class R, class = void>
struct has_size : std::false_type {};
template <class R>
struct has_size<R, std::void_t<decltype(std::size(std::declval<const std::remove_reference_t<R>&>()))>>
    : std::true_type {};

/// Walks a range it holds (by value for an rvalue, by reference for an lvalue), calling the
/// range's begin() only when the first element is asked for.
template <class R>
class cursor {
 public:
  using stored = std::conditional_t<std::is_lvalue_reference_v<R>, R, std::remove_cv_t<std::remove_reference_t<R>>>;
  using iter = decltype(std::begin(std::declval<std::remove_reference_t<stored>&>()));
  using sentinel = decltype(std::end(std::declval<std::remove_reference_t<stored>&>()));
  using element = std::decay_t<decltype(*std::declval<iter&>())>;

  explicit cursor(R&& r) : range_(std::forward<R>(r)) {}

  /// True when the range is exhausted. Steps past the element take() returned only now, so an
  /// element is never read from the range before it is needed.
  bool done() {
    if (!it_) {
      it_.emplace(std::begin(range_));
      end_.emplace(std::end(range_));
    } else if (step_) {
      step_ = false;
      ++(*it_);
    }
    return !(*it_ != *end_);
  }
  /// The current element (call only when done() just returned false).
  element take() {
    step_ = true;
    return *(*it_);
  }
  /// Elements in the range, if it knows (std::size works on it); 0 otherwise.
  std::size_t size() const {
    if constexpr (has_size<stored>::value) {
      return static_cast<std::size_t>(std::size(range_));
    } else {
      return 0;
    }
  }

 private:
  stored range_;
  std::optional<iter> it_;
  std::optional<sentinel> end_;
  bool step_ = false;  // take() gave the current element: step before looking again
};

template <class R>
class batch_source {
 public:
  using value_type = std::vector<typename cursor<R>::element>;

  batch_source(R&& r, std::size_t size) : cursor_(std::forward<R>(r)), size_(size) {}

  std::optional<value_type> next() {
    if (cursor_.done()) return std::nullopt;
    value_type batch;
    if (size_) batch.reserve(size_ < 4096 ? size_ : 4096);
    while ((size_ == 0 || batch.size() < size_) && !cursor_.done()) batch.push_back(cursor_.take());
    return batch;
  }

  template <class Q = R, std::enable_if_t<has_size<typename cursor<Q>::stored>::value, int> = 0>
  std::size_t size() const {
    const std::size_t n = cursor_.size();
    if (size_ == 0) return n ? 1 : 0;
    return n / size_ + (n % size_ ? 1 : 0);
  }

 private:
  cursor<R> cursor_;
  std::size_t size_;
};

template <class R>
class enumerate_source {
 public:
  using value_type = std::pair<std::size_t, typename cursor<R>::element>;

  explicit enumerate_source(R&& r) : cursor_(std::forward<R>(r)) {}

  std::optional<value_type> next() {
    if (cursor_.done()) return std::nullopt;
    return value_type(index_++, cursor_.take());
  }

  template <class Q = R, std::enable_if_t<has_size<typename cursor<Q>::stored>::value, int> = 0>
  std::size_t size() const {
    return cursor_.size();
  }

 private:
  cursor<R> cursor_;
  std::size_t index_ = 0;
};

template <class T>
class iota_source {
 public:
  using value_type = T;
  iota_source(T first, T last) : next_(first), count_(first < last ? static_cast<std::size_t>(last) - static_cast<std::size_t>(first) : 0) {}
  std::optional<T> next() {
    if (produced_ == count_) return std::nullopt;
    ++produced_;
    return next_++;
  }
  std::size_t size() const noexcept { return count_; }

 private:
  T next_;
  std::size_t count_;
  std::size_t produced_ = 0;
};

template <class F>
class generate_source {
 public:
  using result = std::invoke_result_t<F&>;
  static_assert(is_optional<result>::value,
                "pfp::generate(f): f() must return std::optional<T>: the next element, or std::nullopt at the end");
  using value_type = typename result::value_type;

  explicit generate_source(F f) : f_(std::move(f)) {}
  std::optional<value_type> next() {
    if (ended_) return std::nullopt;
    std::optional<value_type> v = f_();
    if (!v) ended_ = true;
    return v;
  }

 private:
  F f_;
  bool ended_ = false;
};

}  // namespace detail

/// Groups the elements of `range` into std::vector batches of `size` elements, the last one
/// shorter; `size` 0 means one batch with every element (and no batch for an empty range).
/// Lazy and single-pass: each batch is read from the range when it is asked for, so the whole
/// range is never in memory; input iterators suffice. An rvalue range is moved into the result,
/// an lvalue one is referred to (it must outlive the result). The result has size() (the number
/// of batches) when the range's size is known. Throws whatever reading the range throws.
template <class R>
auto batches(R&& range, std::size_t size) {
  return detail::pull_range<detail::batch_source<R>>(detail::batch_source<R>(std::forward<R>(range), size));
}

/// Pairs each element of `range` with its position from 0: (0, a), (1, b), ... Lazy and
/// single-pass like batches(); same ownership rules; size() when the range's size is known.
template <class R>
auto enumerate(R&& range) {
  return detail::pull_range<detail::enumerate_source<R>>(detail::enumerate_source<R>(std::forward<R>(range)));
}

/// The integers first, first+1, ..., last-1 (nothing if last <= first), produced one at a time.
/// Has size().
template <class T>
auto iota(T first, T last) {
  static_assert(std::is_integral_v<T>, "pfp::iota(first, last): first and last must be integers of one type");
  return detail::pull_range<detail::iota_source<T>>(detail::iota_source<T>(first, last));
}

/// A range over what `f` produces: f() returns std::optional<T>, the next element or std::nullopt
/// at the end (f is not called again after that). For sources that are easiest written as a loop
/// with state: a file read line by line, a database cursor, a paginated API.
template <class F>
auto generate(F f) {
  return detail::pull_range<detail::generate_source<F>>(detail::generate_source<F>(std::move(f)));
}

}  // namespace pfp

#endif  // PFP_BATCH_HPP
// ---- end <pfp/batch.hpp> ----
// ---- begin <pfp/executor.hpp> ----
#ifndef PFP_EXECUTOR_HPP
#define PFP_EXECUTOR_HPP

// pfp::Executor: a pool that keeps running while you submit work to it, like Python's
// concurrent.futures executors. Functions are declared before the pool starts (the workers are
// forked then and inherit them); each submit() serializes its arguments, returns a Future, and may
// carry a priority. Futures wait, time out, and hand back the full Result on failure;
// as_completed(), wait_any() and wait_all() work over sets of them; next_completed() streams
// Results to a consumer while a producer is still submitting, with a bounded queue between them.

// ---- begin <pfp/detail/callable.hpp> ----
#ifndef PFP_DETAIL_CALLABLE_HPP
#define PFP_DETAIL_CALLABLE_HPP

// What the Executor reads from a declared function's type: its parameter and return types, and how
// to call it with the elements of a Value array.


#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace pfp {
namespace detail {

// The parameter and return types of a callable with exactly one operator() (not a generic lambda).
template <class T, class = void>
struct has_single_call_operator : std::false_type {};
template <class T>
struct has_single_call_operator<T, std::void_t<decltype(&T::operator())>> : std::true_type {};

template <class T, class = void>
struct callable_traits {
  static constexpr bool known = false;
};
template <class R, class... A>
struct callable_traits<R (*)(A...), void> {
  static constexpr bool known = true;
  using result = R;
  using args = std::tuple<std::decay_t<A>...>;
};
template <class R, class... A>
struct callable_traits<R(A...), void> : callable_traits<R (*)(A...)> {};
template <class C, class R, class... A>
struct callable_traits<R (C::*)(A...) const, void> : callable_traits<R (*)(A...)> {};
template <class C, class R, class... A>
struct callable_traits<R (C::*)(A...), void> : callable_traits<R (*)(A...)> {};
template <class T>
struct callable_traits<T, std::enable_if_t<std::is_class_v<T> && has_single_call_operator<T>::value>>
    : callable_traits<decltype(&T::operator())> {};

// Calls f with the elements of the Value array `args`, each read as the parameter's type.
template <class R, class Tuple, class F, std::size_t... I>
Value call_with_value_args(F& f, const Value& args, std::index_sequence<I...>) {
  if (args.size() != sizeof...(I))
    throw error("pfp: the task got " + std::to_string(args.size()) + " arguments; its function takes " +
                std::to_string(sizeof...(I)));
  if constexpr (std::is_void_v<R>) {
    f(args.at(I).template as<std::tuple_element_t<I, Tuple>>()...);
    return Value();
  } else {
    return Value(f(args.at(I).template as<std::tuple_element_t<I, Tuple>>()...));
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_CALLABLE_HPP
// ---- end <pfp/detail/callable.hpp> ----
// ---- begin <pfp/detail/run_feed.hpp> ----
#ifndef PFP_DETAIL_RUN_FEED_HPP
#define PFP_DETAIL_RUN_FEED_HPP

// The one seam between front ends and backends: a front end describes its work as a Feed
// (feed.hpp) and hands it to run_feed(), which checks the Options once and runs the Feed on the
// backend Options::backend names. Front ends that must adapt to a backend ask what it is like
// (isolated_workers, runs_in_caller), never which one it is.

// ---- begin <pfp/detail/feed.hpp> ----
#ifndef PFP_DETAIL_FEED_HPP
#define PFP_DETAIL_FEED_HPP

// The seam between what a run does (a fixed list of functions, a stream of submissions, a lazy
// source of items) and how it is carried out (worker processes, threads, or the calling thread).
// Every front end (MultiProcessor, Executor, map, Manager) describes its work as a Feed; every
// backend runs a Feed to the end and hands back exactly one Result per task it took.

// ---- begin <pfp/options.hpp> ----
#ifndef PFP_OPTIONS_HPP
#define PFP_OPTIONS_HPP

// ---- begin <pfp/worker.hpp> ----
#ifndef PFP_WORKER_HPP
#define PFP_WORKER_HPP

// Per-worker set-up and tear-down (Options::initializer, Options::finalizer), the worker's own
// typed state (pfp::worker_state<State>()) and who the worker is (pfp::this_worker()).
//
// A worker is one slot of a run's pool: a worker process (Backend::processes), a thread
// (Backend::threads) or the calling thread (Backend::inline_). Its initializer runs in it once
// before its first function; its finalizer once when it leaves normally (the run or the Executor
// ends, or it is replaced after Options::max_tasks_per_worker), then its state is destroyed.

// ---- begin <pfp/detail/posix.hpp> ----
#ifndef PFP_DETAIL_POSIX_HPP
#define PFP_DETAIL_POSIX_HPP

// Thin, EINTR-safe wrappers over the POSIX calls pfp makes, and the text it derives from them.


#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>
#include <utility>

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace pfp {
namespace detail {

/// A hint that memory at p will be read soon; never faults, whatever p is.
inline void prefetch(const void* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

/// Fresh memory the parent is about to fill: transparent huge pages mean 512 times fewer page
/// faults (and, for memory a fork shares, 512 times fewer entries to copy). A hint, for buffers of
/// min_bytes or more; kernels without huge pages ignore it.
inline void advise_huge_pages(void* p, std::size_t n, std::size_t min_bytes = std::size_t{32} << 20) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t huge = std::uintptr_t{2} << 20;
  if (n < min_bytes) return;
  const auto begin = reinterpret_cast<std::uintptr_t>(p), end = begin + n;
  const std::uintptr_t hb = (begin + huge - 1) & ~(huge - 1), he = end & ~(huge - 1);
  if (he > hb) ::madvise(reinterpret_cast<void*>(hb), he - hb, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
  (void)min_bytes;
#endif
}

/// Keeps the whole pages of a buffer out of the processes forked while it lives (MADV_DONTFORK):
/// memory only the parent writes during a run then costs no copy-on-write fault per page, and no
/// page-table copy per fork. The pages are handed back to fork (MADV_DOFORK) when this ends, before
/// the buffer can be freed and its pages reused for something a child needs. Children must never
/// touch the buffer. A no-op where the advice does not exist, and for small buffers.
class HiddenFromForks {
 public:
  HiddenFromForks(void* p, std::size_t n) noexcept {
#if defined(__linux__) && defined(MADV_DONTFORK) && defined(MADV_DOFORK)
    constexpr std::size_t min_bytes = std::size_t{256} << 10;
    const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = reinterpret_cast<std::uintptr_t>(p), end = begin + n;
    const std::uintptr_t pb = (begin + page - 1) & ~(page - 1), pe = end & ~(page - 1);
    if (n >= min_bytes && pe > pb && ::madvise(reinterpret_cast<void*>(pb), pe - pb, MADV_DONTFORK) == 0) {
      begin_ = reinterpret_cast<void*>(pb);
      size_ = pe - pb;
    }
#else
    (void)p;
    (void)n;
#endif
  }
  HiddenFromForks(const HiddenFromForks&) = delete;
  HiddenFromForks& operator=(const HiddenFromForks&) = delete;
  ~HiddenFromForks() { reveal(); }
  /// Forks copy the pages again from now on.
  void reveal() noexcept {
#if defined(__linux__) && defined(MADV_DONTFORK) && defined(MADV_DOFORK)
    if (begin_) ::madvise(begin_, size_, MADV_DOFORK);
#endif
    begin_ = nullptr;
  }

 private:
  void* begin_ = nullptr;
  std::size_t size_ = 0;
};

inline std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

/// errno of the last system call throw_errno() reported in this thread, so a caller can tell a
/// shortage the system may soon relieve (EAGAIN, EMFILE, ...) from a permanent failure.
inline thread_local int last_failed_errno = 0;

[[noreturn]] inline void throw_errno(const std::string& what, int err = errno) {
  last_failed_errno = err;
  throw error("pfp: " + what + " failed: " + errno_text(err));
}

/// Owns one file descriptor; closes it once.
class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    // close() is not retried on EINTR: on Linux the descriptor is released either way.
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

/// A close-on-exec pipe, both ends non-blocking if asked. Throws pfp::error when the system is out
/// of descriptors.
inline Pipe make_pipe(bool nonblocking = false) {
  int fds[2];
#if defined(__linux__)
  if (::pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)) != 0) throw_errno("pipe2");
#else
  if (::pipe(fds) != 0) throw_errno("pipe");
  for (int fd : fds) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (nonblocking) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
#endif
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

inline void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw_errno("fcntl(O_NONBLOCK)");
}

/// Writes all n bytes, retrying on EINTR and short writes. Returns false with errno set on failure.
inline bool write_all(int fd, const void* data, std::size_t n) noexcept {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

/// Reads up to n bytes, retrying on EINTR. Returns what read() returns.
inline ssize_t read_some(int fd, void* data, std::size_t n) noexcept {
  for (;;) {
    ssize_t r = ::read(fd, data, n);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/// waitpid() retried on EINTR.
/// poll(), also when the descriptors watched outnumber RLIMIT_NOFILE (then poll() itself refuses
/// with EINVAL, e.g. after the program lowered the limit mid-run): the set is then looked at in
/// slices the limit allows, every millisecond until one is ready or timeout_ms passed. Returns
/// poll()'s count, or -1 with errno for any other failure (EINTR included).
inline int poll_fds(pollfd* fds, std::size_t n, int timeout_ms) noexcept {
  int rc = ::poll(fds, static_cast<nfds_t>(n), timeout_ms);
  if (rc >= 0 || errno != EINVAL || n == 0) return rc;
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= n || lim.rlim_cur == 0) return rc;
  const std::size_t slice = static_cast<std::size_t>(lim.rlim_cur);
  for (int waited = 0;; ++waited) {
    int ready = 0;
    for (std::size_t at = 0; at < n; at += slice) {
      const std::size_t len = n - at < slice ? n - at : slice;
      const int r = ::poll(fds + at, static_cast<nfds_t>(len), 0);
      if (r < 0) return r;
      ready += r;
    }
    if (ready > 0 || (timeout_ms >= 0 && waited >= timeout_ms)) return ready;
    timespec pause{0, 1'000'000L};
    ::nanosleep(&pause, nullptr);
  }
}

inline pid_t wait_pid(pid_t pid, int* status, int flags) noexcept {
  for (;;) {
    pid_t r = ::waitpid(pid, status, flags);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/// "SIGSEGV", "SIGKILL", ... or "signal N" for one without a portable name.
inline std::string signal_name(int sig) {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGCHLD: return "SIGCHLD";
    case SIGCONT: return "SIGCONT";
    case SIGSTOP: return "SIGSTOP";
    case SIGTSTP: return "SIGTSTP";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    case SIGURG: return "SIGURG";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGVTALRM: return "SIGVTALRM";
    case SIGPROF: return "SIGPROF";
    case SIGSYS: return "SIGSYS";
    default: return "signal " + std::to_string(sig);
  }
}

/// What a wait status means, in the words a Result's error uses.
inline std::string describe_wait_status(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* text = ::strsignal(sig);
    return "killed by signal " + signal_name(sig) + (text ? std::string(" (") + text + ")" : std::string());
  }
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  return "stopped with wait status " + std::to_string(status);
}

inline std::string demangle(const char* name) {
  int rc = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &rc), std::free);
  return rc == 0 && out ? std::string(out.get()) : std::string(name);
}

/// The type and message of the exception being handled, e.g. "std::runtime_error: boom".
/// Call only inside a catch block.
inline std::string describe_current_exception() {
  std::type_info* type = abi::__cxa_current_exception_type();
  std::string name = type ? demangle(type->name()) : std::string("unknown exception");
  try {
    throw;
  } catch (const error& e) {
    // pfp's internal refinements of pfp::error are no part of the API: name the public type.
    if (name.rfind("pfp::detail::", 0) == 0) name = "pfp::error";
    return name + ": " + e.what();
  } catch (const std::exception& e) {
    return name + ": " + e.what();
  } catch (const std::string& s) {
    return "std::string: " + s;
  } catch (const char* s) {
    return std::string("const char*: ") + (s ? s : "(null)");
  } catch (...) {
    return name + " (not derived from std::exception)";
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POSIX_HPP
// ---- end <pfp/detail/posix.hpp> ----

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace pfp {

/// Who a worker is: given to Options::initializer and Options::finalizer, and to every function
/// through pfp::this_worker().
struct WorkerInfo {
  /// The worker's slot, 0 .. workers-1. Stable: a worker that replaces one (after
  /// Options::max_tasks_per_worker, a crash or a timeout) takes the number of the one it replaces.
  unsigned number = 0;
  /// How many slots the run has (Options::workers, or fewer when there are fewer tasks; 1 inline).
  unsigned workers = 1;
  /// How many workers held this number before in this run (0 for the first): with number, it
  /// tells replacements apart, e.g. std::seed_seq{base, number, generation} for a random engine.
  unsigned generation = 0;
};

namespace detail {

// A distinct address per type, with or without RTTI-based comparison across libraries.
template <class T>
struct state_tag {
  static constexpr char id = 0;
};

template <class T>
std::string state_type_name() {
  return demangle(typeid(T).name());
}

// What the initializer's return value keeps: the State itself, or what a smart pointer owns.
template <class R>
struct state_of {
  using type = R;
};
template <class T, class D>
struct state_of<std::unique_ptr<T, D>> {
  using type = T;
};
template <class T>
struct state_of<std::shared_ptr<T>> {
  using type = T;
};

/// The worker the calling thread is, while pfp runs one in it (null otherwise).
struct CurrentWorker {
  WorkerInfo info;
  std::shared_ptr<void> state;     // what the initializer returned (null: nothing, or not yet)
  const void* state_type = nullptr;
  std::string (*state_name)() = nullptr;
  bool has_initializer = false;
  bool initialized = false;
};
inline thread_local CurrentWorker* current_worker = nullptr;

}  // namespace detail

/// Options::initializer: a callable run once in each worker before its first function, as
///   void  f(const pfp::WorkerInfo&)        -- set-up only (seed a generator, set up a logger), or
///   State f(const pfp::WorkerInfo&)        -- the worker's state (a database connection, ...),
/// where State may also come as std::unique_ptr<State> or std::shared_ptr<State> (for a State that
/// cannot be moved). The state lives until the worker leaves, after the finalizer, and functions
/// reach it with pfp::worker_state<State>(). What the initializer throws (or a crash in it) fails
/// that worker's start; see Options::initializer.
class WorkerInitializer {
 public:
  WorkerInitializer() = default;
  WorkerInitializer(std::nullptr_t) noexcept {}  // NOLINT: none, as with std::function

  template <class F, std::enable_if_t<!std::is_same_v<std::decay_t<F>, WorkerInitializer> &&
                                          !std::is_same_v<std::decay_t<F>, std::nullptr_t>,
                                      int> = 0>
  WorkerInitializer(F f) {  // NOLINT: implicit, so that `options.initializer = [](...) {...};` reads naturally
    using Fn = std::decay_t<F>;
    static_assert(std::is_invocable_v<const Fn&, const WorkerInfo&>,
                  "pfp::Options::initializer takes a callable f(const pfp::WorkerInfo&) that returns nothing or the "
                  "worker's state");
    if constexpr (std::is_invocable_v<const Fn&, const WorkerInfo&>) {
      if constexpr (std::is_pointer_v<Fn> || std::is_member_pointer_v<Fn>) {
        if (!f) return;
      }
      using R = std::invoke_result_t<const Fn&, const WorkerInfo&>;
      if constexpr (std::is_void_v<R>) {
        make_ = [f = std::move(f)](const WorkerInfo& w) -> std::shared_ptr<void> {
          std::invoke(f, w);
          return nullptr;
        };
      } else {
        using Returned = std::decay_t<R>;
        using State = typename detail::state_of<Returned>::type;
        state_type_ = &detail::state_tag<State>::id;
        state_name_ = &detail::state_type_name<State>;
        make_ = [f = std::move(f)](const WorkerInfo& w) -> std::shared_ptr<void> {
          if constexpr (std::is_same_v<State, Returned>) {
            return std::make_shared<State>(std::invoke(f, w));
          } else {
            std::shared_ptr<State> p(std::invoke(f, w));
            if (!p)
              throw error("pfp::Options::initializer returned a null pointer to " + detail::state_type_name<State>() +
                          "; return the state, or throw to fail the worker's start");
            return p;
          }
        };
      }
    }
  }

  /// Whether there is an initializer.
  explicit operator bool() const noexcept { return static_cast<bool>(make_); }

  /// Runs it for the worker `w`: its state (null if it returns nothing). Throws what it throws.
  std::shared_ptr<void> operator()(const WorkerInfo& w) const { return make_(w); }
  const void* state_type() const noexcept { return state_type_; }
  std::string (*state_name() const noexcept)() { return state_name_; }

 private:
  std::function<std::shared_ptr<void>(const WorkerInfo&)> make_;
  const void* state_type_ = nullptr;
  std::string (*state_name_)() = nullptr;
};

/// Options::finalizer: run once in each worker when it leaves normally, before its state (see
/// WorkerInitializer) is destroyed, so it may still use pfp::worker_state<State>().
using WorkerFinalizer = std::function<void(const WorkerInfo&)>;

namespace detail {
[[noreturn]] PFP_DETAIL_COLD inline void worker_state_refused(const CurrentWorker* w, const std::string& asked_type) {
  const std::string asked = "pfp::worker_state<" + asked_type + ">: ";
  if (!w)
    throw error(asked + "called outside a pfp worker; call it from a function or finalizer that pfp runs, in the "
                        "thread that pfp runs it in");
  if (!w->state_type)
    throw error(asked + (w->has_initializer ? "this worker's Options::initializer returns nothing; return the state from it"
                                            : "no Options::initializer is set; set one that returns the worker's state"));
  if (!w->initialized || !w->state)
    throw error(asked + "the worker's state is not made yet: Options::initializer has not returned");
  throw error(asked + "the worker's state is a " + w->state_name() + "; ask for worker_state<" + w->state_name() + ">()");
}
}  // namespace detail

/// The worker that runs the calling function (or initializer, or finalizer): its number, 0 ..
/// workers-1, for per-worker files or seeds. Throws pfp::error when called outside a worker (in
/// the parent, or in a thread the function started).
inline const WorkerInfo& this_worker() {
  const detail::CurrentWorker* w = detail::current_worker;
  if (!w)
    throw error("pfp::this_worker: called outside a pfp worker; call it from a function, initializer or finalizer "
                "that pfp runs, in the thread that pfp runs it in");
  return w->info;
}

/// The state this worker's Options::initializer returned, as a State&: valid in the worker's
/// functions and its finalizer, until the worker leaves. State is the type the initializer
/// returned (or that its smart pointer owns), optionally const.
/// Throws pfp::error, saying what to fix, outside a worker, when no initializer returned a state,
/// before it has returned (in the initializer itself), or when State is not the state's type.
template <class State>
State& worker_state() {
  using Plain = std::remove_cv_t<std::remove_reference_t<State>>;
  const detail::CurrentWorker* w = detail::current_worker;
  if (!w || !w->initialized || !w->state || w->state_type != &detail::state_tag<Plain>::id)
    detail::worker_state_refused(w, detail::state_type_name<Plain>());
  return *static_cast<Plain*>(w->state.get());
}

}  // namespace pfp

#endif  // PFP_WORKER_HPP
// ---- end <pfp/worker.hpp> ----

// ---- begin <pfp/progress_options.hpp> ----
#ifndef PFP_PROGRESS_OPTIONS_HPP
#define PFP_PROGRESS_OPTIONS_HPP

// How the progress of a run is shown (Options::progress, for every front end): the kinds of
// report, where they go, and what a report says. The drawing is in <pfp/progress.hpp>.

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>

namespace pfp {

/// How the progress of a run is shown.
enum class ProgressMode {
  automatic,  ///< terminal if ProgressOptions::fd is a terminal (isatty), plain otherwise
  terminal,   ///< one line redrawn in place with '\r' (at most every ProgressOptions::refresh)
  plain,      ///< a full line every ProgressOptions::interval, and one at the end
  off,        ///< nothing
};

struct ProgressSnapshot;

/// How a run's progress is reported (Options::progress; ManagerOptions turns it on by default).
struct ProgressOptions {
  ProgressMode mode = ProgressMode::automatic;
  /// Where the progress goes (stderr by default). Must stay open during the run.
  int fd = 2;
  /// Terminal mode: shortest time between two redraws.
  std::chrono::milliseconds refresh{100};
  /// Plain mode: time between two lines (0: a line after every item).
  std::chrono::milliseconds interval{std::chrono::seconds(10)};
  /// For drawing your own: when set, called with the counts instead of drawing anything (mode
  /// and fd are ignored), at most every `refresh` as tasks finish and once when the run ends
  /// (ProgressSnapshot::last), in the thread that receives the Results. What it throws stops
  /// the run like a throwing on_result and is rethrown.
  std::function<void(const ProgressSnapshot&)> on_progress;

  /// No progress at all (what Options has by default).
  static ProgressOptions none() {
    ProgressOptions o;
    o.mode = ProgressMode::off;
    return o;
  }
};

/// What a progress line says.
struct ProgressSnapshot {
  std::size_t done = 0;                ///< items finished (succeeded or failed)
  std::size_t failed = 0;              ///< of them, failed
  std::optional<std::size_t> total;    ///< items in the run, when known
  std::chrono::nanoseconds elapsed{};  ///< since the run started
  std::size_t cancelled = 0;           ///< items stopped before they finished (not in `done`)
  bool stopped = false;                ///< the run was stopped early: there is no ETA
  bool last = false;                   ///< the last report of the run
};

}  // namespace pfp

#endif  // PFP_PROGRESS_OPTIONS_HPP
// ---- end <pfp/progress_options.hpp> ----

#include <chrono>
#include <cstddef>
#include <string_view>

namespace pfp {

/// What execute_parallel() does when the calling process already runs other threads. fork()
/// copies only the calling thread: a lock another thread holds at that moment (in malloc, a
/// logger, ...) stays locked forever in the worker.
enum class ThreadPolicy {
  warn,    ///< print one warning to stderr per process, then go on
  refuse,  ///< throw pfp::error
  allow,   ///< go on silently (you know the other threads hold no locks the functions need)
};

/// Where the functions of a run execute. Switching is one option; the Results are the same
/// except where isolation is the difference (see README, "Backends").
enum class Backend {
  processes,  ///< forked worker processes (default): crashes, hangs and memory are isolated
  threads,    ///< a thread pool in this process: lower overhead, no isolation (a crash ends the program)
  inline_,    ///< one after another in the calling thread: for debuggers, sanitizers and profilers
  mpi,        ///< worker processes on every MPI rank (needs <pfp/mpi.hpp> and a live pfp::mpi::Session)
};

/// The backend's name as written in the enum ("processes", "threads", "inline", "mpi").
constexpr std::string_view to_string(Backend b) noexcept {
  switch (b) {
    case Backend::processes: return "processes";
    case Backend::threads: return "threads";
    case Backend::inline_: return "inline";
    case Backend::mpi: return "mpi";
  }
  return "?";
}

/// How a run is carried out. Every field has a usable default.
struct Options {
  /// Worker processes that may exist at once; 0 = std::thread::hardware_concurrency().
  unsigned workers = 0;
  /// Per-function wall-clock limit; 0 = no limit. A function past it is killed with its whole
  /// process group and reported as Status::timed_out.
  std::chrono::milliseconds timeout{0};
  /// Functions one worker process runs before it is replaced; 0 = unlimited,
  /// 1 = a fresh process per function.
  unsigned max_tasks_per_worker = 0;
  /// Largest serialized result accepted, in bytes. A larger one is refused on that function
  /// (Status::exception) and never allocated by the parent.
  std::size_t max_result_bytes = std::size_t{4} << 30;
  /// Extra attempts for a function that crashed or timed out (and, with retry_exceptions, threw).
  /// Result::attempts tells how many were made.
  unsigned retries = 0;
  /// Also retry functions that threw.
  bool retry_exceptions = false;
  /// Address-space limit of each worker in bytes (RLIMIT_AS); 0 = none. An allocation past it
  /// fails in the function: std::bad_alloc, reported as Status::exception.
  std::size_t memory_limit = 0;
  /// CPU time one function may use (RLIMIT_CPU, whole seconds, so up to one second more); 0 = none. A function past it
  /// gets SIGXCPU and is reported as Status::crashed with a message that names the limit.
  std::chrono::seconds cpu_limit{0};
  /// What to do when the calling process already runs other threads.
  ThreadPolicy threads = ThreadPolicy::warn;
  /// A progress report as functions finish (ProgressOptions: a live line on a terminal, plain
  /// lines elsewhere, or your own callback), for every front end; off by default (the Manager
  /// turns it on).
  ProgressOptions progress = ProgressOptions::none();
  /// Where the functions run: worker processes (default), threads of this process, or inline.
  Backend backend = Backend::processes;
  /// Runs once in each worker before its first function: a callable f(const pfp::WorkerInfo&)
  /// that returns nothing, or the worker's state (then reached with pfp::worker_state<State>();
  /// see pfp::WorkerInitializer). Open per-worker resources here (connections, files, seeded
  /// generators), not before the fork. With Backend::threads it runs in each thread, concurrently.
  /// A start fails when it throws, crashes the worker or runs past Options::timeout: the worker's
  /// tasks go to another worker, and once 3 starts in a row of one worker number failed, the run
  /// (or Executor) is broken: every function not yet begun gets Status::cancelled with an error
  /// that says the initializer failed and what it threw.
  WorkerInitializer initializer;
  /// Runs once in each worker that started when it leaves normally (the run or the Executor ends,
  /// or it is replaced after max_tasks_per_worker), before its state is destroyed; not after a
  /// crash, a timeout or a cancel (the process is killed). A worker process has 10 s for it.
  /// What it throws is printed to stderr.
  WorkerFinalizer finalizer;
};

}  // namespace pfp

#endif  // PFP_OPTIONS_HPP
// ---- end <pfp/options.hpp> ----
// ---- begin <pfp/result.hpp> ----
#ifndef PFP_RESULT_HPP
#define PFP_RESULT_HPP


#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pfp {

/// How a function's run ended.
enum class Status : std::uint8_t {
  ok,         ///< returned normally; Result::result holds what it produced
  exception,  ///< threw; Result::error names the exception type and its what()
  crashed,    ///< its worker died (signal or exit); Result::error names the signal or exit code
  timed_out,  ///< ran past Options::timeout and was killed with its process group
  cancelled,  ///< never ran to completion because the run was stopped or could not start it
};

/// "ok", "exception", "crashed", "timed_out" or "cancelled".
constexpr std::string_view to_string(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::exception: return "exception";
    case Status::crashed: return "crashed";
    case Status::timed_out: return "timed_out";
    case Status::cancelled: return "cancelled";
  }
  return "unknown";
}

/// What one registered function produced. execute_parallel() returns exactly one per function.
struct Result {
  std::string function_name;            ///< the name given to register_function
  std::size_t index = 0;                ///< registration order, from 0
  Status status = Status::cancelled;
  Value result;                         ///< what the function produced (null if nothing)
  std::string error;                    ///< empty when ok; otherwise names the cause
  int pid = 0;                          ///< the worker process that ran it (0 if it never ran)
  /// How long the function itself ran, measured in the worker (for functions of a few nanoseconds
  /// run back to back, the few dozen nanoseconds pfp spends between two of them included).
  std::chrono::nanoseconds duration{};
  unsigned attempts = 0;                ///< times the function was started (more than 1 after retries)
  int rank = 0;                         ///< the MPI rank whose worker ran it (Backend::mpi; else 0)

  bool ok() const noexcept { return status == Status::ok; }
};

}  // namespace pfp

#endif  // PFP_RESULT_HPP
// ---- end <pfp/result.hpp> ----

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <functional>
#include <thread>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pfp {

namespace detail {

/// One unit of work: which function (the front end's own numbering) and its serialized input.
/// Front ends whose inputs are inherited by fork leave payload empty.
struct Task {
  std::uint64_t fn = 0;
  std::string payload;
  int priority = 0;  ///< higher begins first among tasks that have not begun (see Feed::next_priority)
  /// This task's wall-clock limit in place of Options::timeout (0: the Options' one). Enforced by
  /// the process backend only, like Options::timeout.
  std::chrono::milliseconds timeout{0};
};

/// What one worker of the process backend is doing, for Feed::report().
struct WorkerView {
  int pid = 0;
  unsigned slot = 0;                             ///< as TaskView::worker
  std::optional<std::uint64_t> running;          ///< the seq of the task it runs, if it runs one
  std::chrono::steady_clock::time_point since{};  ///< when that task began
  std::size_t held = 0;                          ///< tasks it holds, the running one included
};

/// What a worker is given to run one task.
struct TaskView {
  std::uint64_t seq = 0;         ///< the task's number in the run, from 0, in the order it was pulled
  std::uint64_t fn = 0;
  std::string_view payload;
  unsigned worker = 0;           ///< which worker slot runs it, 0 .. workers-1 (stable per slot)
};

/// Runs one task inside a worker (process, thread or the caller), filling r.result. Throwing is
/// how a task fails: the backend turns the exception into Status::exception.
using FeedRunner = std::function<void(const TaskView& task, Result& r)>;

/// A run's source of tasks and sink of results. Backends call it one call at a time, never
/// concurrently (the threads backend from several threads, under one mutex).
class Feed {
 public:
  virtual ~Feed() = default;

  /// The next task, or nullopt if none is ready now. May throw: the backend stops pulling, lets
  /// the tasks it holds finish (delivering them), and rethrows from its run function.
  virtual std::optional<Task> pull() = 0;

  /// Optional fast path for many small tasks: up to `max` tasks at once, whose fns are
  /// first_fn, first_fn + 1, ... and whose payloads are empty, with their Results kept by the feed
  /// in places[0 .. n) (function_name and index already set, status cancelled, attempts 0). The
  /// backend writes each verdict there in place of calling deliver(), and may send the n tasks to a
  /// worker as one message. Returns n; 0 means none this way: call pull(). The default never
  /// gives any.
  virtual std::size_t pull_run(std::size_t /*max*/, std::uint64_t& /*first_fn*/, Result*& /*places*/) { return 0; }

  /// After pull_run(): the verdict of task `seq` is final in its place (for a feed that streams
  /// them on, e.g. to another MPI rank). Called once per task, in completion order.
  virtual void placed(std::uint64_t /*seq*/) {}

  /// After pull() returned nullopt: true if no task will ever come again (the run ends once the
  /// tasks in flight are delivered); false if more may come later (see wake_fd).
  virtual bool finished() = 0;

  /// A descriptor that becomes readable when pull() may have something new, or -1 if the feed
  /// never waits (finished() is true whenever pull() returns nullopt). pull() drains it.
  virtual int wake_fd() const { return -1; }

  /// The process backend has forked the workers it starts with (called once per run; not when it
  /// could start none: the run then fails). A feed fed from other threads can hold them back until
  /// then: a fork while another thread holds a lock leaves that lock held in the worker.
  virtual void workers_started() {}

  /// The priority of the task pull() would give next, if the feed orders its tasks by priority
  /// (nullopt: it gives none now, or all its tasks are equal). A backend that holds tasks of lower
  /// priority that have not begun takes them back, so the higher one begins first.
  virtual std::optional<int> next_priority() { return std::nullopt; }

  /// What every process of a distributed run (Backend::mpi) must have alike for the same fn to
  /// mean the same function there: a hash of the functions' names and count, or of the items'
  /// count; 0 = nothing to compare. Compared between ranks before any task is sent.
  virtual std::uint64_t signature() const { return 0; }

  /// Tasks the feed knows it will give, if known (used to start no more workers than needed).
  virtual std::optional<std::size_t> size_hint() const { return std::nullopt; }

  /// The final verdict of task `seq` (after retries), in completion order. r.index == seq,
  /// r.function_name is empty (the feed names its tasks), r.pid is the process that ran it.
  /// May throw: the backend then stops the run as if cancelled and rethrows.
  virtual void deliver(std::uint64_t seq, Result&& r) = 0;

  /// A verdict already delivered turned out wrong: the task corrupted pfp's result stream after
  /// its result was sent, so it is reported as Status::crashed. A feed that can still change what
  /// it reported takes the new Result; a stream keeps the first (the default).
  virtual void amend(std::uint64_t /*seq*/, Result&& /*r*/) {}

  /// The run stopped early (cancelled, or no worker could be started): tasks never pulled will
  /// not run. A feed with a known list of tasks reports them (Status::cancelled, error `why`);
  /// a stream just stops.
  virtual void drop_rest(const std::string& /*why*/) {}

  /// Polled by the backend between tasks: true asks it to stop as if cancelled (fail-fast).
  virtual bool stop_requested() { return false; }

  /// A descriptor the process backend watches for the whole run (-1: none), for what tasks send
  /// the parent while they run besides their results (the Manager's log lines); side_ready() is
  /// called when it is readable. May throw: the backend then stops the run as if cancelled and
  /// rethrows.
  virtual int side_fd() const { return -1; }
  virtual void side_ready() {}

  /// Asked by the process backend after each side_ready(): tasks the front end wants stopped
  /// (their seqs, appended to `out`). One that has not begun never runs and is delivered
  /// Status::cancelled; a running one is killed with its worker and delivered cancelled; one
  /// already delivered is ignored. The threads and inline backends never ask (they cannot stop
  /// a running task; a front end withdraws what it has not given itself).
  virtual void withdrawn(std::vector<std::uint64_t>& /*out*/) {}

  /// Asked by the process backend after each side_ready(): whether the front end wants to know
  /// what the workers do now; if so report() gets one WorkerView per live worker, at once.
  virtual bool wants_report() { return false; }
  virtual void report(const std::vector<WorkerView>& /*workers*/) {}
  // A new member here is forwarded by ProgressFeed (progress_feed.hpp) too.
};

/// A user's callback that a feed hands results to (on_result, a Manager's logger). What it throws
/// stops the run and is rethrown by the backend; from then on it is never called again, whatever
/// the stop still delivers (tasks killed or never started, tasks of other threads finishing).
template <class F>
class UserCallback {
 public:
  explicit UserCallback(F& f) noexcept : f_(&f) {}
  /// Calls the callback unless it threw before; false if it was not called.
  template <class... Args>
  bool operator()(Args&&... args) {
    if (threw_) return false;
    try {
      (*f_)(std::forward<Args>(args)...);
    } catch (...) {
      threw_ = true;
      throw;
    }
    return true;
  }
  bool threw() const noexcept { return threw_; }

 private:
  F* f_;
  bool threw_ = false;
};


/// FNV-1a over `bytes`, continuing from h (for Feed::signature()).
inline std::uint64_t hash_bytes(std::uint64_t h, std::string_view bytes) noexcept {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
inline constexpr std::uint64_t hash_seed = 0xcbf29ce484222325ull;

/// Workers for a run of `tasks` tasks (unknown: as many as the options allow).
inline unsigned effective_workers(const Options& o, std::optional<std::size_t> tasks = std::nullopt) {
  unsigned n = o.workers ? o.workers : std::thread::hardware_concurrency();
  if (n == 0) n = 1;
  return tasks ? static_cast<unsigned>(std::min<std::size_t>(n, std::max<std::size_t>(*tasks, 1))) : n;
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_FEED_HPP
// ---- end <pfp/detail/feed.hpp> ----
// ---- begin <pfp/detail/local_backends.hpp> ----
#ifndef PFP_DETAIL_LOCAL_BACKENDS_HPP
#define PFP_DETAIL_LOCAL_BACKENDS_HPP

// The backends that run a Feed (feed.hpp) inside this process: a pool of threads, or the calling
// thread alone.
//
// In-process backends give the same Results as the process backend for everything a function
// does by returning or throwing: the same status, result, error text ("<demangled type>: what()"),
// attempts and retries of exceptions (Options::retries with Options::retry_exceptions), the same
// Options::max_result_bytes verdict. What they cannot give is isolation:
//   - a crash (a signal, abort(), exit()) in a function ends the whole program, the caller included;
//   - Options::timeout is not enforced: a thread cannot be killed, so a function runs to its end
//     and keeps the verdict it reaches (a hang hangs the run);
//   - Options::memory_limit, Options::cpu_limit, Options::max_tasks_per_worker and
//     Options::threads do not apply (they are properties of worker processes);
//   - cancel (CancelState) and Feed::stop_requested() stop the pulling of new tasks; tasks already
//     running finish and are delivered with their own verdict (the process backend kills them);
//   - functions share the process: what one changes in globals, the context or its args is seen
//     by the others and by the caller. With threads they run concurrently and must be thread-safe.
// Result::pid is this process's pid. Each worker (a thread, or the calling thread inline) runs
// Options::initializer before its first task and Options::finalizer when the run ends (see
// worker_life.hpp); one whose initializer throws start_attempts times in a row breaks the run.

// ---- begin <pfp/detail/attempt.hpp> ----
#ifndef PFP_DETAIL_ATTEMPT_HPP
#define PFP_DETAIL_ATTEMPT_HPP

// How one attempt of a task becomes its verdict, and whether a verdict is tried again: the same
// rules on every backend (worker processes, threads, the calling thread).


#include <cstddef>
#include <new>
#include <string>
#include <utility>

namespace pfp {
namespace detail {

/// Runs one attempt of `task` into r: Status::ok with what the runner put in r.result, or
/// Status::exception with "<demangled type>: what()" and a null result (a std::bad_alloc under
/// Options::memory_limit says so). Throws nothing the runner throws.
inline void run_attempt(const FeedRunner& run, const TaskView& task, const Options& opt, Result& r) {
  try {
    run(task, r);
    r.status = Status::ok;
    r.error.clear();
  } catch (const std::bad_alloc&) {
    r.status = Status::exception;
    r.error = describe_current_exception();
    if (opt.memory_limit)
      r.error += " (the worker's address space is limited to " + std::to_string(opt.memory_limit) +
                 " bytes by Options::memory_limit)";
    r.result = Value();
  } catch (...) {
    r.status = Status::exception;
    r.error = describe_current_exception();
    r.result = Value();
  }
}

/// Turns an attempt whose result pfp cannot hand over into Status::exception with `why`.
inline void refuse_result(Result& r, std::string why) {
  r.status = Status::exception;
  r.result = Value();
  r.error = std::move(why);
}

/// What a result of `size` encoded bytes gets when that is over Options::max_result_bytes.
inline std::string oversized(std::size_t size, const Options& opt) {
  return "pfp: the result of " + std::to_string(size) + " bytes exceeds Options::max_result_bytes (" +
         std::to_string(opt.max_result_bytes) + " bytes)";
}

/// What a result gets that could not be encoded (too deep, ...), from inside the catch block.
inline std::string unserializable() { return "pfp: could not serialize the result: " + describe_current_exception(); }

/// Whether a verdict reached after r.attempts attempts is tried again: a crash or a timeout (and
/// with Options::retry_exceptions an exception) while fewer than 1 + Options::retries were made.
inline bool retry_wanted(const Result& r, const Options& opt) noexcept {
  const bool retryable = r.status == Status::crashed || r.status == Status::timed_out ||
                         (r.status == Status::exception && opt.retry_exceptions);
  return retryable && r.attempts <= opt.retries;
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_ATTEMPT_HPP
// ---- end <pfp/detail/attempt.hpp> ----
// ---- begin <pfp/detail/wake_pipe.hpp> ----
#ifndef PFP_DETAIL_WAKE_PIPE_HPP
#define PFP_DETAIL_WAKE_PIPE_HPP

// The self-pipe wake-up: a thread (or a signal handler) rings it, a poll() loop sleeping on its
// read end wakes up and drains it. Both ends non-blocking and close-on-exec: a full pipe already
// holds a wake-up, so ringing never blocks, and draining never waits.


#include <cerrno>
#include <utility>

#include <unistd.h>

namespace pfp {
namespace detail {

class WakePipe {
 public:
  WakePipe() = default;
  /// Makes the pipe. Throws pfp::error when out of descriptors.
  void open() {
    pipe_ = make_pipe(true);
  }
  bool is_open() const noexcept { return static_cast<bool>(pipe_.read); }
  /// The descriptor to poll for POLLIN (-1 before open()).
  int read_fd() const noexcept { return pipe_.read.get(); }
  /// Async-signal-safe: one write(), errno kept.
  void ring() const noexcept { ring_fd(pipe_.write.get()); }
  /// Takes every pending wake-up.
  void drain() const noexcept {
    char buf[256];
    while (::read(pipe_.read.get(), buf, sizeof buf) > 0) {
    }
  }
  /// ring() for a write end held elsewhere (an atomic, say); nothing for -1.
  static void ring_fd(int fd) noexcept {
    if (fd < 0) return;
    const int saved = errno;
    const char byte = 1;
    [[maybe_unused]] const ssize_t ignored = ::write(fd, &byte, 1);
    errno = saved;
  }
  /// Gives up the write end (for a holder that must close it itself, under its own rules).
  int release_write() noexcept { return pipe_.write.release(); }
  void close() noexcept { pipe_ = Pipe(); }

 private:
  Pipe pipe_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WAKE_PIPE_HPP
// ---- end <pfp/detail/wake_pipe.hpp> ----
// ---- begin <pfp/detail/worker_life.hpp> ----
#ifndef PFP_DETAIL_WORKER_LIFE_HPP
#define PFP_DETAIL_WORKER_LIFE_HPP

// One worker's life on every backend: Options::initializer before its first function,
// Options::finalizer when it leaves normally, its state in between (worker.hpp), and what a run
// does when workers cannot be started: after start_attempts failed starts in a row of one worker
// number the run is broken, and every task not begun gets broken_reason() as its verdict.


#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

// Coverage runtimes write their data at exit(), which a worker never calls (it leaves by _exit):
// when the program is built with coverage, these exist and a worker calls them before it leaves.
extern "C" void __gcov_dump(void) __attribute__((weak));               // gcc/clang --coverage
extern "C" int __llvm_profile_write_file(void) __attribute__((weak));  // clang -fprofile-instr-generate

namespace pfp {
namespace detail {

/// Failed starts in a row of one worker number after which a run is broken.
inline constexpr unsigned start_attempts = 3;

/// Writes the coverage data of this process, when it is built with coverage (else nothing).
inline void flush_coverage() noexcept {
  if (__gcov_dump) __gcov_dump();
  if (__llvm_profile_write_file) __llvm_profile_write_file();
}

/// The verdict text of the tasks of a broken run.
inline std::string broken_reason(unsigned number, const std::string& last_error) {
  return "not run: the worker initializer failed " + std::to_string(start_attempts) + " times in a row (worker " +
         std::to_string(number) + "): " + last_error;
}

/// Makes `w` the calling thread's worker (pfp::this_worker(), pfp::worker_state()) for the scope.
class CurrentScope {
 public:
  explicit CurrentScope(CurrentWorker& w) noexcept : previous_(std::exchange(current_worker, &w)) {}
  ~CurrentScope() { current_worker = previous_; }
  CurrentScope(const CurrentScope&) = delete;
  CurrentScope& operator=(const CurrentScope&) = delete;

 private:
  CurrentWorker* previous_;
};

/// One worker's set-up and tear-down, in the thread (or process) that is the worker. The caller
/// keeps a CurrentScope on current() while the worker runs anything.
class WorkerLife {
 public:
  WorkerLife(const Options& o, WorkerInfo info) : opt_(o) {
    me_.info = info;
    me_.has_initializer = static_cast<bool>(o.initializer);
    me_.state_type = o.initializer.state_type();
    me_.state_name = o.initializer.state_name();
  }
  WorkerLife(const WorkerLife&) = delete;
  WorkerLife& operator=(const WorkerLife&) = delete;

  CurrentWorker& current() noexcept { return me_; }
  bool started() const noexcept { return me_.initialized; }

  /// Runs the initializer (if any). True once it returned; false with `why` (the exception's type
  /// and what()) when it threw.
  bool begin(std::string& why) noexcept {
    try {
      if (opt_.initializer) me_.state = opt_.initializer(me_.info);
      me_.initialized = true;
      return true;
    } catch (...) {
      why = "the initializer threw " + describe_current_exception();
      return false;
    }
  }

  /// begin() up to start_attempts times, each with the next generation. nullopt once it
  /// succeeded, else the run's broken_reason().
  std::optional<std::string> begin_here() {
    std::string why;
    for (unsigned k = 0; k < start_attempts; ++k, ++me_.info.generation)
      if (begin(why)) return std::nullopt;
    return broken_reason(me_.info.number, why);
  }

  /// If it started: runs the finalizer, then destroys the state. What either throws is printed to
  /// stderr (the worker is leaving: there is nobody else to tell). Idempotent.
  void end() noexcept {
    if (!me_.initialized) return;
    try {
      if (opt_.finalizer) opt_.finalizer(me_.info);
    } catch (...) {
      complain("the finalizer threw");
    }
    try {
      me_.state.reset();
    } catch (...) {
      complain("destroying the worker's state threw");
    }
    me_.initialized = false;
  }

 private:
  void complain(const char* what) noexcept {
    try {
      std::fprintf(stderr, "pfp: worker %u: %s %s\n", me_.info.number, what, describe_current_exception().c_str());
    } catch (...) {
    }
  }

  const Options& opt_;
  CurrentWorker me_;
};

/// The inline backend's worker kept across runs: the Executor runs its inline backend once per
/// submission, and its worker lives from the first submission to shutdown.
class KeptWorker {
 public:
  explicit KeptWorker(const Options& o) : life_(o, WorkerInfo{}) {}

  /// Starts it in the calling thread on first use; the broken_reason() if it cannot start.
  std::optional<std::string> enter() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!tried_) {
      tried_ = true;
      CurrentScope scope(life_.current());
      broken_ = life_.begin_here();
    }
    return broken_;
  }
  CurrentWorker& current() noexcept { return life_.current(); }
  /// The worker leaves (finalizer, state destroyed), if it started.
  void end() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    CurrentScope scope(life_.current());
    life_.end();
  }
  ~KeptWorker() { end(); }

 private:
  std::mutex mutex_;
  WorkerLife life_;
  bool tried_ = false;
  std::optional<std::string> broken_;
};

/// The process backend's record of each worker number's starts.
class SlotStarts {
 public:
  using Clock = std::chrono::steady_clock;

  /// A worker of this number is being forked: its WorkerInfo.
  WorkerInfo forking(unsigned number, unsigned workers) {
    Slot& s = at(number);
    s.waiting = true;
    s.since = Clock::now();
    return WorkerInfo{number, workers, s.generation++};
  }
  /// Whether a worker of this number was forked and has not yet been seen started or failed.
  bool waiting(unsigned number) const { return number < slots_.size() && slots_[number].waiting; }
  Clock::time_point since(unsigned number) const { return slots_[number].since; }
  /// Its initializer returned.
  void started(unsigned number) {
    at(number).waiting = false;
    at(number).failures = 0;
  }
  /// Its start failed: true when that makes start_attempts in a row (the run is then broken).
  bool failed(unsigned number) {
    at(number).waiting = false;
    return ++at(number).failures >= start_attempts;
  }

 private:
  struct Slot {
    unsigned generation = 0;
    unsigned failures = 0;  // in a row
    bool waiting = false;
    Clock::time_point since{};
  };
  Slot& at(unsigned number) {
    if (number >= slots_.size()) slots_.resize(number + 1);
    return slots_[number];
  }
  std::vector<Slot> slots_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WORKER_LIFE_HPP
// ---- end <pfp/detail/worker_life.hpp> ----
// ---- begin <pfp/detail/run_guards.hpp> ----
#ifndef PFP_DETAIL_RUN_GUARDS_HPP
#define PFP_DETAIL_RUN_GUARDS_HPP

// What the calling thread holds while a process run is in progress: the cancel line, the check
// for other threads before forking, SIGPIPE blocked, and SIGCHLD at its default disposition.


#include <atomic>
#include <cerrno>
#include <string>

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

namespace pfp {
namespace detail {


/// The wake-up line between MultiProcessor::cancel() and the pool's poll() loop: an atomic flag
/// and a self-pipe that exists only while a run is in progress, so a cancel from another thread
/// or a signal handler is seen at once and no descriptor outlives the run.
class CancelState {
 public:
  /// Called when a run starts. Throws pfp::error when out of descriptors.
  void open() {
    requested_.store(false);
    wake_.open();
    write_fd_.store(wake_.release_write());
  }
  /// Called when the run ends; waits out a request() that is writing right now.
  void close() noexcept {
    int fd = write_fd_.exchange(-1);
    while (writers_.load() != 0) sched_yield();
    if (fd >= 0) ::close(fd);
    wake_.close();
  }
  /// Async-signal-safe and thread-safe: atomic operations and at most one write().
  void request() noexcept {
    writers_.fetch_add(1);
    requested_.store(true);
    WakePipe::ring_fd(write_fd_.load());
    writers_.fetch_sub(1);
  }
  bool requested() const noexcept { return requested_.load(); }
  int wake_fd() const noexcept { return wake_.read_fd(); }

 private:
  std::atomic<bool> requested_{false};
  std::atomic<int> write_fd_{-1};
  std::atomic<int> writers_{0};
  WakePipe wake_;  // its write end is write_fd_, closed by close() once no request() uses it
};

/// Threads of this process, or 0 where that cannot be told.
inline std::size_t thread_count() noexcept {
  DIR* dir = ::opendir("/proc/self/task");
  if (!dir) return 0;
  std::size_t n = 0;
  while (dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n;
}

inline void check_threads(const Options& opt) {
  if (opt.threads == ThreadPolicy::allow) return;
  std::size_t n = thread_count();
  if (n <= 1) return;
  std::string msg = "pfp: execute_parallel() was called while this process runs " + std::to_string(n) +
                    " threads. fork() copies only the calling thread, so a lock another thread holds (in malloc, a "
                    "logger, ...) can deadlock a worker. Start the run before creating threads, or set "
                    "Options::threads = pfp::ThreadPolicy::allow if the other threads hold no such locks.";
  if (opt.threads == ThreadPolicy::refuse) throw error(msg);
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    msg += " (warning shown once)\n";
    [[maybe_unused]] bool ignored = write_all(STDERR_FILENO, msg.data(), msg.size());
  }
}

// SIGPIPE is blocked in the calling thread while the pool runs, so writing to a dead worker's
// task pipe yields EPIPE instead of killing the user's process; the pending signal is consumed.
class SigpipeBlock {
 public:
  SigpipeBlock() noexcept {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old_);
  }
  ~SigpipeBlock() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

  static void consume_pending() noexcept {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    timespec zero{0, 0};
#if defined(__linux__)
    while (sigtimedwait(&pipe_only, nullptr, &zero) == SIGPIPE) {
    }
#else
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE)) {
      int sig;
      sigwait(&pipe_only, &sig);
    }
#endif
  }

 private:
  sigset_t old_{};
};

// With SIGCHLD ignored the kernel reaps children itself and waitpid() cannot report how a worker
// died (and blocks until every child is gone). The default disposition is restored for the run.
class SigchldDefault {
 public:
  SigchldDefault() noexcept {
    struct sigaction current {};
    if (::sigaction(SIGCHLD, nullptr, &current) == 0 &&
        (current.sa_handler == SIG_IGN || (current.sa_flags & SA_NOCLDWAIT))) {
      old_ = current;
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      changed_ = ::sigaction(SIGCHLD, &dfl, nullptr) == 0;
    }
  }
  ~SigchldDefault() {
    if (changed_) ::sigaction(SIGCHLD, &old_, nullptr);
  }
  SigchldDefault(const SigchldDefault&) = delete;
  SigchldDefault& operator=(const SigchldDefault&) = delete;

 private:
  struct sigaction old_ {};
  bool changed_ = false;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_RUN_GUARDS_HPP
// ---- end <pfp/detail/run_guards.hpp> ----
// ---- begin <pfp/serialization.hpp> ----
#ifndef PFP_SERIALIZATION_HPP
#define PFP_SERIALIZATION_HPP

// Compact binary encoding of pfp::Value, used to carry results from workers to the parent.
// Strings and byte blobs are copied in one piece; arrays whose elements are all integers or
// all doubles are written as packed 8-byte arrays. Byte order is the host's: the encoding is
// meant for processes on one machine, not for storage.


#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace pfp {
namespace detail {

enum class Tag : std::uint8_t {
  null = 0,
  false_ = 1,
  true_ = 2,
  integer = 3,
  floating = 4,
  string = 5,
  bytes = 6,
  array = 7,
  object = 8,
  packed_integers = 9,
  packed_doubles = 10,
  // Only inside a worker's remote frame (wire.hpp): a string or blob left in the worker's memory,
  // as varint size + 8-byte address, for the parent to copy with process_vm_readv (remote.hpp).
  remote_string = 11,
  remote_bytes = 12,
};

/// Strings and blobs of at least this many bytes may be left in a worker's memory for the parent
/// to copy directly (see remote.hpp) instead of being serialized into the frame.
inline constexpr std::size_t remote_min_size = std::size_t{1} << 20;
/// "Never leave a string in place": the encoding pfp::encode() uses.
inline constexpr std::size_t no_remote = static_cast<std::size_t>(-1);

/// Where a Reader gets the bytes of a remote_string / remote_bytes reference.
class RemoteSource {
 public:
  /// The `size` bytes at `address` in the other process. Throws pfp::error if they cannot be had.
  virtual std::string fetch(std::uint64_t address, std::size_t size) = 0;

 protected:
  ~RemoteSource() = default;
};

/// Nesting deeper than this is refused by the decoder, so hostile input cannot exhaust the stack.
inline constexpr std::size_t max_decode_depth = 2000;

inline std::size_t varint_size(std::uint64_t v) noexcept {
  std::size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

inline std::uint64_t zigzag(std::int64_t v) noexcept {
  return (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63);
}
inline std::int64_t unzigzag(std::uint64_t v) noexcept {
  return static_cast<std::int64_t>(v >> 1) ^ -static_cast<std::int64_t>(v & 1);
}

// Which packed form an array can take, if any.
inline Tag array_tag(const Value::Array& arr) noexcept {
  if (arr.size() < 2) return Tag::array;
  Value::Type t = arr.front().type();
  if (t != Value::Type::integer && t != Value::Type::floating) return Tag::array;
  for (const Value& e : arr)
    if (e.type() != t) return Tag::array;
  return t == Value::Type::integer ? Tag::packed_integers : Tag::packed_doubles;
}

// Bytes of the encoding of a remote reference to a string of n bytes.
inline std::size_t remote_ref_size(std::size_t n) noexcept { return 1 + varint_size(n) + 8; }

/// The strings an encoding leaves in place as remote references.
struct RemoteTally {
  std::size_t strings = 0;
  std::size_t bytes = 0;
  /// How much bigger the encoding would be with those strings in it.
  std::size_t extra() const noexcept { return bytes - 8 * strings; }
};

// Throws pfp::error for a value nested deeper than the decoder accepts, so the limit is met on
// the sending side, where it can be reported as the function's own error.
// Strings of remote_min (>= 8) bytes or more count as remote references, which *tally (if given)
// counts.
inline std::size_t encoded_size(const Value& v, std::size_t depth = 0, std::size_t remote_min = no_remote,
                                RemoteTally* tally = nullptr) {
  if (depth > max_decode_depth)
    throw error("pfp: the value nests deeper than " + std::to_string(max_decode_depth) + " levels, the most pfp encodes");
  switch (v.type()) {
    case Value::Type::null:
    case Value::Type::boolean: return 1;
    case Value::Type::integer: return 1 + varint_size(zigzag(v.as<std::int64_t>()));
    case Value::Type::floating: return 1 + 8;
    case Value::Type::string:
    case Value::Type::bytes: {
      const std::size_t n = v.str().size();
      if (n >= remote_min) {
        if (tally) {
          ++tally->strings;
          tally->bytes += n;
        }
        return remote_ref_size(n);
      }
      return 1 + varint_size(n) + n;
    }
    case Value::Type::array: {
      const auto& arr = v.elements();
      std::size_t n = 1 + varint_size(arr.size());
      if (array_tag(arr) != Tag::array) return n + 8 * arr.size();
      for (const Value& e : arr) n += encoded_size(e, depth + 1, remote_min, tally);
      return n;
    }
    case Value::Type::object: {
      const auto& obj = v.items();
      std::size_t n = 1 + varint_size(obj.size());
      for (const auto& [k, e] : obj) n += varint_size(k.size()) + k.size() + encoded_size(e, depth + 1, remote_min, tally);
      return n;
    }
  }
  return 0;
}

class Writer {
 public:
  /// Strings of remote_min bytes or more are written as references to this process's memory,
  /// which must then stay untouched until the reader has copied them.
  explicit Writer(char* out, std::size_t remote_min = no_remote) noexcept : p_(out), remote_min_(remote_min) {}
  char* position() const noexcept { return p_; }

  void byte(std::uint8_t b) noexcept { *p_++ = static_cast<char>(b); }
  void varint(std::uint64_t v) noexcept {
    while (v >= 0x80) {
      byte(static_cast<std::uint8_t>(v | 0x80));
      v >>= 7;
    }
    byte(static_cast<std::uint8_t>(v));
  }
  void raw(const void* data, std::size_t n) noexcept {
    if (n) std::memcpy(p_, data, n);
    p_ += n;
  }
  void text(std::string_view s) noexcept {
    varint(s.size());
    raw(s.data(), s.size());
  }

  void value(const Value& v) {
    switch (v.type()) {
      case Value::Type::null: byte(static_cast<std::uint8_t>(Tag::null)); break;
      case Value::Type::boolean: byte(static_cast<std::uint8_t>(v.as<bool>() ? Tag::true_ : Tag::false_)); break;
      case Value::Type::integer:
        byte(static_cast<std::uint8_t>(Tag::integer));
        varint(zigzag(v.as<std::int64_t>()));
        break;
      case Value::Type::floating: {
        byte(static_cast<std::uint8_t>(Tag::floating));
        double d = v.as<double>();
        raw(&d, 8);
        break;
      }
      case Value::Type::string:
      case Value::Type::bytes: {
        const std::string& s = v.str();
        if (s.size() >= remote_min_) {
          byte(static_cast<std::uint8_t>(v.is_string() ? Tag::remote_string : Tag::remote_bytes));
          varint(s.size());
          const auto address = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(s.data()));
          raw(&address, 8);
        } else {
          byte(static_cast<std::uint8_t>(v.is_string() ? Tag::string : Tag::bytes));
          text(s);
        }
        break;
      }
      case Value::Type::array: {
        const auto& arr = v.elements();
        Tag tag = array_tag(arr);
        byte(static_cast<std::uint8_t>(tag));
        varint(arr.size());
        if (tag == Tag::packed_integers) {
          for (const Value& e : arr) {
            std::int64_t i = e.as<std::int64_t>();
            raw(&i, 8);
          }
        } else if (tag == Tag::packed_doubles) {
          for (const Value& e : arr) {
            double d = e.as<double>();
            raw(&d, 8);
          }
        } else {
          for (const Value& e : arr) value(e);
        }
        break;
      }
      case Value::Type::object: {
        const auto& obj = v.items();
        byte(static_cast<std::uint8_t>(Tag::object));
        varint(obj.size());
        for (const auto& [k, e] : obj) {
          text(k);
          value(e);
        }
        break;
      }
    }
  }

 private:
  char* p_;
  std::size_t remote_min_;
};

/// Bounds-checked reader: every length is checked against the bytes that remain before anything
/// is allocated, so a hostile or truncated buffer ends in pfp::error, never an overread.
class Reader {
 public:
  /// remote: where remote references are fetched from; without one they are malformed input.
  explicit Reader(std::string_view in, RemoteSource* remote = nullptr) noexcept
      : p_(in.data()), end_(in.data() + in.size()), remote_(remote) {}
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - p_); }

  [[noreturn]] PFP_DETAIL_COLD static void fail(const std::string& why) { throw error("pfp: malformed encoded data: " + why); }
  [[noreturn]] PFP_DETAIL_COLD static void fail(const char* why) { fail(std::string(why)); }

  // The checks are inline, what they say when they fail is not: decoding a frame is on the
  // parent's path for every function.
  std::uint8_t byte() {
    if (p_ == end_) fail("unexpected end of input");
    return static_cast<std::uint8_t>(*p_++);
  }
  std::uint64_t varint() {
    if (p_ != end_ && static_cast<std::uint8_t>(*p_) < 0x80) return static_cast<std::uint8_t>(*p_++);  // most are one byte
    return long_varint();
  }
  std::uint64_t long_varint() {
    const auto* q = reinterpret_cast<const std::uint8_t*>(p_);
    const std::size_t left = remaining();
    // Two or three bytes without a loop.
    if (left >= 2 && q[1] < 0x80) {
      p_ += 2;
      return (q[0] & 0x7Fu) | std::uint64_t{q[1]} << 7;
    }
    if (left >= 3 && q[2] < 0x80) {
      p_ += 3;
      return (q[0] & 0x7Fu) | std::uint64_t{q[1] & 0x7Fu} << 7 | std::uint64_t{q[2]} << 14;
    }
    // Bounds checked once: at most the 10 bytes a varint can take, or what is left.
    const std::size_t n = left < 10 ? left : 10;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t b = q[i];
      v |= (b & 0x7F) << (7 * i);
      if (b < 0x80) {
        if (i == 9 && b > 1) fail("varint overflows 64 bits");
        p_ += i + 1;
        return v;
      }
    }
    fail(n == 10 ? "varint overflows 64 bits" : "unexpected end of input");  // a 10th byte that says more follow, or the end
  }
  const char* take(std::uint64_t n) {
    if (n > remaining()) too_long(n);
    const char* p = p_;
    p_ += n;
    return p;
  }
  [[noreturn]] PFP_DETAIL_COLD void too_long(std::uint64_t n) const {
    fail("a length of " + std::to_string(n) + " exceeds the " + std::to_string(remaining()) + " bytes left");
  }
  std::string_view text() {
    std::uint64_t n = varint();
    const char* p = take(n);
    return {p, static_cast<std::size_t>(n)};
  }
  // A count of items that each need at least min_bytes.
  std::size_t count(std::size_t min_bytes) {
    std::uint64_t n = varint();
    if (n > remaining() / min_bytes)
      fail("a count of " + std::to_string(n) + " items cannot fit in the " + std::to_string(remaining()) + " bytes left");
    return static_cast<std::size_t>(n);
  }

  /// Decodes a value into out: scalars in place (no temporary Value), the rest through value().
  void value_into(Value& out) {
    if (p_ != end_) {
      switch (static_cast<Tag>(*p_)) {
        case Tag::null:
          ++p_;
          out.set_trivial<0>();
          return;
        case Tag::integer:
          ++p_;
          out.set_trivial<2>(unzigzag(varint()));
          return;
        default: break;
      }
    }
    out = value();
  }

  Value value(std::size_t depth = 0) {
    if (depth > max_decode_depth) fail("nesting deeper than " + std::to_string(max_decode_depth) + " levels");
    std::uint8_t tag = byte();
    switch (static_cast<Tag>(tag)) {
      case Tag::null: return Value();
      case Tag::false_: return Value(false);
      case Tag::true_: return Value(true);
      case Tag::integer: return Value(unzigzag(varint()));
      case Tag::floating: {
        double d;
        std::memcpy(&d, take(8), 8);
        return Value(d);
      }
      case Tag::string: return Value(std::string(text()));
      case Tag::bytes: return Value::bytes(text());
      case Tag::remote_string:
      case Tag::remote_bytes: {
        if (!remote_) fail("a reference to another process's memory outside a worker's remote frame");
        const std::uint64_t n = varint();
        std::uint64_t address;
        std::memcpy(&address, take(8), 8);
        if (n > static_cast<std::uint64_t>(static_cast<std::size_t>(-1) / 2)) fail("a remote string of " + std::to_string(n) + " bytes");
        std::string s = remote_->fetch(address, static_cast<std::size_t>(n));
        if (static_cast<Tag>(tag) == Tag::remote_bytes) return Value::bytes(std::move(s));
        return Value(std::move(s));
      }
      case Tag::array: {
        std::size_t n = count(1);
        Value::Array arr;
        arr.reserve(n);
        for (std::size_t i = 0; i < n; ++i) arr.push_back(value(depth + 1));
        return Value(std::move(arr));
      }
      case Tag::packed_integers:
      case Tag::packed_doubles: {
        std::size_t n = count(8);
        const char* p = take(n * 8);
        Value::Array arr;
        arr.reserve(n);
        for (std::size_t i = 0; i < n; ++i, p += 8) {
          if (static_cast<Tag>(tag) == Tag::packed_integers) {
            std::int64_t x;
            std::memcpy(&x, p, 8);
            arr.emplace_back(x);
          } else {
            double x;
            std::memcpy(&x, p, 8);
            arr.emplace_back(x);
          }
        }
        return Value(std::move(arr));
      }
      case Tag::object: {
        std::size_t n = count(2);
        Value::Object obj;
        for (std::size_t i = 0; i < n; ++i) {
          std::string key(text());
          Value v = value(depth + 1);
          obj.insert_or_assign(std::move(key), std::move(v));
        }
        return Value(std::move(obj));
      }
    }
    fail("unknown tag " + std::to_string(tag));
  }

 private:
  const char* p_;
  const char* end_;
  RemoteSource* remote_;
};

}  // namespace detail

/// Encodes v in pfp's compact binary form (host byte order). Never throws but std::bad_alloc.
inline std::string encode(const Value& v) {
  std::string out(detail::encoded_size(v), '\0');
  detail::Writer w(out.data());
  w.value(v);
  return out;
}

/// Decodes what encode() produced. The whole input must be one value.
/// Throws pfp::error on truncated, oversized, deeply nested or otherwise malformed input.
inline Value decode(std::string_view in) {
  detail::Reader r(in);
  Value v = r.value();
  if (r.remaining() != 0) detail::Reader::fail(std::to_string(r.remaining()) + " trailing bytes after the value");
  return v;
}

}  // namespace pfp

#endif  // PFP_SERIALIZATION_HPP
// ---- end <pfp/serialization.hpp> ----

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>
#include <unistd.h>

namespace pfp {
namespace detail {

/// The error of a task a stopped run never began (Status::cancelled), on every backend here.
inline constexpr const char* not_started_reason = "cancelled before it started";

/// Like the process backend, an ok result that pfp could not send (too deep to encode, or larger
/// than Options::max_result_bytes once encoded) becomes Status::exception.
inline void refuse_unsendable(Result& r, const Options& opt) {
  if (r.status != Status::ok) return;
  constexpr std::size_t scalar_max = 1 + 10;  // the type byte and a varint or a double
  if ((r.result.is_null() || r.result.is_bool() || r.result.is_number()) && opt.max_result_bytes >= scalar_max) return;
  try {
    const std::size_t size = encoded_size(r.result);
    if (size > opt.max_result_bytes) refuse_result(r, oversized(size, opt));
  } catch (...) {
    refuse_result(r, unserializable());
  }
}

/// Runs one attempt of `task` in the calling thread and returns its verdict: Status::ok with what
/// the runner put in r.result, or Status::exception with "<demangled type>: what()" and a null
/// result. Like the process backend, an ok result that pfp could not send (too deep to encode, or
/// larger than Options::max_result_bytes once encoded) becomes Status::exception. Never throws
/// except std::bad_alloc.
inline Result run_attempt_here(const FeedRunner& run, const Options& opt, const TaskView& task) {
  Result r;
  const auto start = std::chrono::steady_clock::now();
  run_attempt(run, task, opt, r);
  r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
  refuse_unsendable(r, opt);
  return r;
}

/// Runs `task` in the calling thread to its final verdict: attempts are repeated while the
/// function throws, Options::retry_exceptions is set and fewer than 1 + Options::retries were
/// made. The Result is ready for Feed::deliver: index = task.seq, empty function_name, pid =
/// `pid` (0: getpid()), attempts = attempts made, duration = the last attempt's.
inline Result run_task_here(const FeedRunner& run, const Options& opt, const TaskView& task, int pid = 0) {
  Result r;
  for (unsigned attempts = 1;; ++attempts) {
    r = run_attempt_here(run, opt, task);
    r.attempts = attempts;
    if (!retry_wanted(r, opt)) break;
  }
  r.function_name.clear();
  r.index = static_cast<std::size_t>(task.seq);
  r.pid = pid ? pid : static_cast<int>(::getpid());
  return r;
}

/// Runs the tasks first_fn, first_fn + 1, ... of a run (Feed::pull_run) one after another in the
/// calling thread, each to its final verdict as run_task_here does, written into places[k] (name
/// and index are the feed's). One clock reading per task: a duration runs from the end of the
/// task before (as in a process worker's run). Between tasks it stops once `cancel` is requested:
/// the tasks not begun keep Status::cancelled with the reason drop_rest gives. Returns the tasks
/// that ran. Never throws except std::bad_alloc.
inline std::size_t run_tasks_in_place(const FeedRunner& run, const Options& opt, TaskView view, std::size_t n,
                                      Result* places, int pid, const CancelState* cancel) {
  auto t = std::chrono::steady_clock::now();
  std::size_t k = 0;
  for (; k < n; ++k, ++view.seq, ++view.fn) {
    if (cancel && cancel->requested()) break;
    Result& r = places[k];
    for (unsigned attempts = 1;; ++attempts) {
      run_attempt(run, view, opt, r);
      const auto end = std::chrono::steady_clock::now();
      r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(end - t);
      t = end;
      refuse_unsendable(r, opt);
      r.attempts = attempts;
      if (!retry_wanted(r, opt)) break;
    }
    r.pid = pid;
  }
  for (std::size_t rest = k; rest < n; ++rest) places[rest].error = not_started_reason;
  return k;
}

/// Waits until one of the descriptors is readable (-1 = none). A feed that has no wake_fd() but
/// may still give tasks breaks the Feed contract; it is looked at again every 10 ms instead of
/// hanging the run. A signal ends the wait early: callers look again anyway.
inline void wait_readable(int feed_fd, int cancel_fd, int interrupt_fd = -1) noexcept {
  pollfd fds[3];
  nfds_t n = 0;
  for (int fd : {feed_fd, cancel_fd, interrupt_fd})
    if (fd >= 0) fds[n++] = pollfd{fd, POLLIN, 0};
  const int rc = ::poll(fds, n, feed_fd >= 0 ? -1 : 10);
  if (rc > 0 && feed_fd >= 0 && (fds[0].revents & POLLNVAL)) ::poll(nullptr, 0, 10);  // a closed wake_fd: no busy loop
}

/// Whether the run must stop pulling: cancelled, or the feed asks for it (fail-fast).
inline bool stop_wanted(Feed& feed, const CancelState* cancel) {
  return (cancel && cancel->requested()) || feed.stop_requested();
}

/// Tells the feed that the tasks it has not given will not run, as the process backend does when
/// a run is stopped. What drop_rest() throws is kept in `error` unless an earlier exception is.
inline void drop_rest_noexcept(Feed& feed, std::exception_ptr& error, const char* why = not_started_reason) noexcept {
  try {
    feed.drop_rest(why);
  } catch (...) {
    if (!error) error = std::current_exception();
  }
}

/// The inline backend: pulls and runs the tasks of `feed` one after another in the calling
/// thread (TaskView::worker = 0), delivering each Result as soon as its task ends. Between tasks
/// it stops when cancel->requested() or feed.stop_requested(), calling feed.drop_rest(). When the
/// feed has nothing now but is not finished it sleeps in poll() on feed.wake_fd() (and
/// cancel->wake_fd()). Returns when the feed is finished or the run stopped.
/// Throws what feed.pull() throws (every task that ran was delivered by then), and what
/// deliver() or stop_requested() throws (after stopping the run as if cancelled).
/// Options::timeout, memory_limit, cpu_limit, max_tasks_per_worker are not enforced (see top of file).
/// The calling thread is worker 0: its initializer runs before the first task and its finalizer
/// when the run returns, or, with `kept`, once for all the runs given the same KeptWorker.
inline void run_feed_inline(const FeedRunner& run, const Options& opt, Feed& feed, CancelState* cancel,
                            KeptWorker* kept = nullptr) {
  std::optional<WorkerLife> own;
  if (!kept) own.emplace(opt, WorkerInfo{});
  CurrentScope scope(kept ? kept->current() : own->current());
  const std::optional<std::string> broken = kept ? kept->enter() : own->begin_here();
  struct End {
    std::optional<WorkerLife>& life;
    ~End() {
      if (life) life->end();
    }
  } end{own};
  std::exception_ptr error;  // what deliver() or stop_requested() threw: the run stops
  if (broken) {  // the worker could not start: nothing runs, and the feed hears why
    drop_rest_noexcept(feed, error, broken->c_str());
    if (error) std::rethrow_exception(error);
    return;
  }
  for (std::uint64_t seq = 0;;) {
    try {
      if (stop_wanted(feed, cancel)) break;
    } catch (...) {
      error = std::current_exception();
      break;
    }
    std::optional<Task> task = feed.pull();  // a throw goes straight out: no task is in flight
    if (!task) {
      if (feed.finished()) return;
      wait_readable(feed.wake_fd(), cancel ? cancel->wake_fd() : -1);
      continue;
    }
    TaskView view;
    view.seq = seq++;
    view.fn = task->fn;
    view.payload = task->payload;
    view.worker = 0;
    try {
      feed.deliver(view.seq, run_task_here(run, opt, view));
    } catch (...) {
      error = std::current_exception();
      break;
    }
  }
  drop_rest_noexcept(feed, error);
  if (error) std::rethrow_exception(error);
}

/// The threads backend's state for one run: worker threads share the Feed under one mutex, and
/// write the Results of runs (Feed::pull_run) in place without it.
class ThreadRun {
 public:
  ThreadRun(const FeedRunner& run, const Options& opt, Feed& feed, CancelState* cancel)
      : run_(run), opt_(opt), feed_(feed), cancel_(cancel) {}
  ThreadRun(const ThreadRun&) = delete;
  ThreadRun& operator=(const ThreadRun&) = delete;

  void run() {
    hint_ = feed_.size_hint();
    const unsigned n = effective_workers(opt_, hint_);
    workers_ = n;
    std::vector<std::thread> threads;
    threads.reserve(n > 0 ? n - 1 : 0);
    for (unsigned slot = 1; slot < n; ++slot) {
      try {
        threads.emplace_back([this, slot] { work(slot); });
      } catch (const std::system_error&) {
        break;  // the system refuses more threads: the ones that exist share the work
      }
    }
    work(0);  // the calling thread is worker slot 0
    for (std::thread& t : threads) t.join();
    if (consumer_error_) std::rethrow_exception(consumer_error_);
    if (source_error_) std::rethrow_exception(source_error_);
  }

 private:
  // One worker thread: start (Options::initializer), then pull, run (unlocked), deliver, until the
  // feed has nothing more for it; then its finalizer. A thread that could not start breaks the
  // run: nothing more is pulled, and the feed hears why (Feed::drop_rest).
  void work(unsigned slot) noexcept {
    WorkerLife life(opt_, WorkerInfo{slot, workers_, 0});
    CurrentScope scope(life.current());
    struct End {
      WorkerLife& life;
      ~End() { life.end(); }  // not under the lock: the finalizer may take its time
    } end{life};
    std::optional<std::string> broken;
    try {
      broken = life.begin_here();
    } catch (...) {  // out of memory for the reason's text
      broken = "not run: the worker initializer could not be run";
    }
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken && broken_.empty()) {
      broken_ = std::move(*broken);
      close(true, broken_.c_str());
    }
    if (broken) return;
    try {
      for (;;) {
        if (run_in_place(lock, slot)) continue;
        std::optional<Task> task = next(lock);
        if (!task) return;
        TaskView view;
        view.seq = next_seq_++;
        view.fn = task->fn;
        view.payload = task->payload;
        view.worker = slot;
        lock.unlock();
        Result r = run_task_here(run_, opt_, view, pid_);
        lock.lock();
        deliver_locked(view.seq, std::move(r));
      }
    } catch (...) {  // out of memory outside a task: the run stops
      if (!lock.owns_lock()) lock.lock();
      consumer_failed();
    }
  }

  // The batched path (Feed::pull_run): takes a run of tasks whose Results the feed keeps, runs
  // them unlocked straight into their places, and returns true; false when the feed gives no run
  // (then next() pulls one task) or the run takes no more. Called and returns with the lock held.
  // A run holds about run_budget of work, measured, and at most a quarter of each thread's share
  // of what is left: it starts at one task and at most doubles, so long tasks are not hoarded.
  bool run_in_place(std::unique_lock<std::mutex>& lock, unsigned slot) {
    if (closed_ || !runs_) return false;
    try {
      if (stop_wanted(feed_, cancel_)) return false;  // next() stops the run
    } catch (...) {
      consumer_failed();
      return false;
    }
    TaskView view;
    Result* places = nullptr;
    const std::size_t n = feed_.pull_run(run_size(), view.fn, places);
    if (n == 0) {
      runs_ = false;  // a feed gives runs from the start or never
      return false;
    }
    view.seq = next_seq_;
    next_seq_ += n;
    view.worker = slot;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    std::size_t ran = 0;
    try {
      ran = run_tasks_in_place(run_, opt_, view, n, places, pid_, cancel_);
    } catch (...) {  // out of memory: the rest of the run keeps Status::cancelled
      lock.lock();
      consumer_failed();
      return true;
    }
    const auto took = std::chrono::steady_clock::now() - t0;
    lock.lock();
    if (ran) learn(took / ran, n);
    if (ran < n) close(true);  // cancelled
    return true;
  }

  std::size_t run_size() const noexcept {
    std::size_t size = last_run_ * 2;
    if (mean_task_.count() > 0) size = std::min<std::size_t>(size, std::max<std::int64_t>(1, run_budget / mean_task_));
    if (hint_) {
      const std::size_t left = *hint_ > next_seq_ ? static_cast<std::size_t>(*hint_ - next_seq_) : 0;
      size = std::min<std::size_t>(size, left / (4 * std::size_t{workers_}));
    }
    return std::max<std::size_t>(1, std::min<std::size_t>(size, max_run));
  }

  void learn(std::chrono::steady_clock::duration per_task, std::size_t n) noexcept {
    const auto d = std::chrono::duration_cast<std::chrono::nanoseconds>(per_task);
    mean_task_ = mean_task_.count() ? (mean_task_ * 3 + d) / 4 : d;
    last_run_ = n;
  }

  void deliver_locked(std::uint64_t seq, Result&& r) noexcept {
    try {
      feed_.deliver(seq, std::move(r));
    } catch (...) {
      consumer_failed();
    }
  }

  // The next task for this thread, or nullopt when the run takes no more (finished, stopped, or
  // failed). Called and returns with the lock held.
  std::optional<Task> next(std::unique_lock<std::mutex>& lock) {
    for (;;) {
      if (closed_) return std::nullopt;
      try {
        if (stop_wanted(feed_, cancel_)) {
          close(true);
          return std::nullopt;
        }
      } catch (...) {
        consumer_failed();
        return std::nullopt;
      }
      try {
        std::optional<Task> task = feed_.pull();
        if (task) return task;
        if (feed_.finished()) {
          close(false);
          return std::nullopt;
        }
        if (polling_) {
          cv_.wait(lock);  // another thread waits on the descriptors for all
          continue;
        }
        wait_for_more(lock);
      } catch (...) {  // no more tasks; the ones given finish and are delivered
        if (!source_error_) source_error_ = std::current_exception();
        close(false);
        return std::nullopt;
      }
    }
  }

  // Sleeps in poll() on the feed's and the cancel's descriptors, and on interrupt_ (close()
  // writes to it), with the lock released; then lets the threads on the condition variable look.
  void wait_for_more(std::unique_lock<std::mutex>& lock) {
    if (!interrupt_.is_open()) interrupt_.open();
    const int feed_fd = feed_.wake_fd();
    const int cancel_fd = cancel_ ? cancel_->wake_fd() : -1;
    polling_ = true;
    lock.unlock();
    wait_readable(feed_fd, cancel_fd, interrupt_.read_fd());
    lock.lock();
    polling_ = false;
    cv_.notify_all();
  }

  // deliver(), stop_requested() or drop_rest() threw: the run stops as if cancelled.
  void consumer_failed() noexcept {
    if (!consumer_error_) consumer_error_ = std::current_exception();
    close(true);
  }

  // No more pulls; with `drop`, the feed hears that what it has not given will not run. Wakes
  // every waiting thread. Called with the lock held.
  void close(bool drop, const char* why = not_started_reason) noexcept {
    if (closed_) return;
    closed_ = true;
    if (drop) drop_rest_noexcept(feed_, consumer_error_, why);
    interrupt_.ring();
    cv_.notify_all();
  }

  static constexpr std::chrono::nanoseconds run_budget{std::chrono::microseconds(200)};
  static constexpr std::size_t max_run = 1024;

  const FeedRunner& run_;
  const Options& opt_;
  Feed& feed_;
  CancelState* cancel_;
  const int pid_ = static_cast<int>(::getpid());
  std::mutex mutex_;               // guards every member below and every call to feed_
  std::optional<std::size_t> hint_;  // feed_.size_hint(), read once
  unsigned workers_ = 1;           // threads of the run (WorkerInfo::workers)
  bool runs_ = true;               // the feed may give runs (pull_run)
  std::size_t last_run_ = 0;       // tasks in the last run taken (the next may be twice that)
  std::chrono::nanoseconds mean_task_{0};  // per task in recent runs, the threads' overhead included
  std::condition_variable cv_;
  std::uint64_t next_seq_ = 0;
  std::string broken_;             // why the run is broken (a thread could not start), or empty
  bool closed_ = false;            // no thread pulls again
  bool polling_ = false;           // one thread is in wait_for_more()
  std::exception_ptr source_error_;    // pull(), finished() or wake_fd() threw
  std::exception_ptr consumer_error_;  // deliver(), stop_requested() or drop_rest() threw
  WakePipe interrupt_;                 // wakes the polling thread when the run closes
};

/// The threads backend: runs the tasks of `feed` on Options::workers threads of this process
/// (0 = std::thread::hardware_concurrency(); never more than feed.size_hint()), the calling
/// thread being one of them; TaskView::worker is the thread's slot, 0 .. workers-1. Every call to
/// the Feed is made under one mutex, so the Feed needs no locking of its own; the runner is called
/// concurrently and must be thread-safe. A feed that gives runs (Feed::pull_run) is taken a run at
/// a time per thread, the verdicts written in place without a lock (about 200 µs of work a run,
/// from one task up). Between tasks each thread stops when cancel->requested() or -- between
/// runs -- feed.stop_requested() (then feed.drop_rest() is called once); tasks already running
/// finish and are delivered. With nothing ready in a feed that is not finished, one thread sleeps in
/// poll() on feed.wake_fd() and cancel->wake_fd(), the others on a condition variable.
/// Returns when every pulled task was delivered and no more will be pulled. Throws, once every
/// task pulled was delivered: what deliver(), stop_requested() or drop_rest() threw (the run
/// stops as if cancelled), else what pull() or finished() threw (the run stops pulling), or
/// pfp::error when no descriptor is left for its internal wake-up pipe.
/// Options::timeout, memory_limit, cpu_limit, max_tasks_per_worker are not enforced (see top of file).
inline void run_feed_threads(const FeedRunner& run, const Options& opt, Feed& feed, CancelState* cancel) {
  ThreadRun(run, opt, feed, cancel).run();
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_LOCAL_BACKENDS_HPP
// ---- end <pfp/detail/local_backends.hpp> ----
// ---- begin <pfp/detail/pool.hpp> ----
#ifndef PFP_DETAIL_POOL_HPP
#define PFP_DETAIL_POOL_HPP

// The process backend: runs a Feed (feed.hpp) on a pool of forked workers, each with a private
// task pipe (parent -> worker: task messages), a result pipe and a shared-memory ring
// (worker -> parent: framed Results, see channel.hpp), driven by one poll() loop in the parent.
// The parent always knows which tasks each worker holds, in order, and which one it began, so a
// worker that dies or hangs costs exactly the task it was running.
//
// A task message is four native u64 words -- id, seq, fn, payload size -- then the payload; or,
// for a run of tasks with consecutive ids, seqs and fns and no payloads (Feed::pull_run), the same
// words for the first task with run_flag | count in place of the size. The id names the task on
// the wire (it picks the parent's slot and is never reused within a run); the frame a worker sends
// back carries it as its index.

// ---- begin <pfp/detail/channel.hpp> ----
#ifndef PFP_DETAIL_CHANNEL_HPP
#define PFP_DETAIL_CHANNEL_HPP

// The shared-memory half of a worker's result channel. Each worker has one MAP_SHARED region,
// created before fork, holding:
//   - `started`: 1 + the index of the function the worker last began, and when it began. A store
//     costs no system call and survives the worker's death, so the parent can tell the function
//     a dead worker was running from the ones it never started, and time it exactly.
//   - a single-producer / single-consumer byte ring for result frames. Small frames go there
//     instead of through the pipe; the worker writes one doorbell frame to its pipe when it runs
//     out of work, so a batch of results costs one system call. Frames in the ring survive the
//     worker, so a crash never loses a result that was already produced.
// Frames that do not fit (large results, or a full ring) go through the pipe. Each stream stays
// in execution order, and the parent takes from whichever holds the function it expects next.

// ---- begin <pfp/detail/wire.hpp> ----
#ifndef PFP_DETAIL_WIRE_HPP
#define PFP_DETAIL_WIRE_HPP

// Every byte layout between the parent and a worker process, in one place. Both ends are the same
// program on the same machine: integers travel in native byte order and width.
//
// Parent -> worker, on the worker's task pipe: task messages.
//   4 x u64: id, seq, fn, size  then `size` payload bytes          (one task)
//   4 x u64: id, seq, fn, run_flag | count                         (a run: `count` tasks with
//            consecutive ids, seqs and fns and no payloads, see Feed::pull_run)
//   id names the task on the wire (the parent's slot and ticket, never reused within a run), seq
//   is TaskView::seq, fn is TaskView::fn. The worker numbers the tasks it is sent from 0 (their
//   ordinals) and claims each before it begins it (claim_task, in the SharedBlock below).
//
// Worker -> parent: result frames, in the worker's shared ring (small ones) or on its result pipe
// (large ones, and frames that do not fit the ring now), each stream in the order the tasks ran.
//   16-byte header: u32 frame_magic, u16 frame_version, u16 kind, u64 payload size
//   kind result:   u64 index (the task's id), status byte, zigzag varint duration in ns,
//                  error text (varint length + bytes), the Value (serialization.hpp)
//   kind remote:   the same, with strings of remote_min_size bytes or more left in the worker's
//                  memory and named by address (remote.hpp); the parent copies and acknowledges
//   kind doorbell: no payload; "look at the ring" (sent when the worker runs out of work)
//   function_name and pid do not travel: the parent knows both.
//
// Shared by both, one page per worker (SharedBlock): what the worker began and when, what it saw
// return, the task claims, the ring's counters, the pipe's byte count, the remote-transfer answer.


#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace pfp {
namespace detail {

// ---- task messages

/// Most tasks one worker holds at once.
inline constexpr unsigned max_pipeline_depth = 512;
/// Task message header: id, seq, fn, payload size (or run_flag | count).
inline constexpr std::size_t task_header_size = 4 * sizeof(std::uint64_t);
/// A task's id on the wire is its slot's ticket shifted left by run_bits plus its place in the
/// slot's run, so one message can carry up to max_run consecutive tasks.
inline constexpr unsigned run_bits = 10;
inline constexpr std::uint64_t max_run = std::uint64_t{1} << run_bits;
/// Most tasks one worker holds at once when they come in runs (Feed::pull_run): a few runs, so a
/// worker always has the next one while the parent takes the results of the last.
inline constexpr unsigned max_run_pipeline_depth = 4 * max_run;
/// Set in a task message's fourth word when the message is a run of `count` tasks with
/// consecutive ids, seqs and fns and no payloads.
inline constexpr std::uint64_t run_flag = std::uint64_t{1} << 63;

// ---- result frames

// A frame: 16-byte header (magic, version, kind, payload size), then the payload: the index as
// 8 native bytes (read without decoding: the parent checks it on every frame), status byte,
// zigzag varint duration in ns, error text, encoded Value. function_name and pid do not travel:
// the parent knows both. Both ends are the same program on the same machine.
inline constexpr std::uint32_t frame_magic = 0x31504650;  // "PFP1" in little-endian memory
inline constexpr std::uint16_t frame_version = 2;
inline constexpr std::size_t frame_index_size = 8;
inline constexpr std::size_t frame_header_size = 16;
inline constexpr std::uint16_t frame_kind_result = 0;
// A header with no payload that only says "look at the shared ring": see channel.hpp.
inline constexpr std::uint16_t frame_kind_doorbell = 1;
// A result frame whose Value refers to strings left in the worker's memory (Tag::remote_*): the
// parent copies them with process_vm_readv, then acknowledges (remote.hpp); only then may the
// worker touch that memory again. Only ever sent through the pipe.
inline constexpr std::uint16_t frame_kind_remote = 2;

struct FrameHeader {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t kind;
  std::uint64_t payload_size;
};
static_assert(sizeof(FrameHeader) == frame_header_size, "FrameHeader must be 16 bytes");

/// The shape of r's frame, worked out before writing it (encode_result_frame_into does both).
struct FramePlan {
  std::size_t size = 0;       ///< the whole frame, header included
  std::size_t full_size = 0;  ///< its payload with every string in it (what the result limit applies to)
  std::uint64_t duration = 0;
  std::size_t remote_min = no_remote;  ///< no_remote unless strings stay in this process's memory
  std::uint16_t kind = frame_kind_result;
};

/// Sizes r's frame. Strings of remote_min (>= 8) bytes or more are to be left in place as remote
/// references, which makes it a frame_kind_remote frame. Throws pfp::error if r.result cannot be
/// encoded (nested too deep).
inline FramePlan plan_result_frame(const Result& r, std::size_t remote_min = no_remote) {
  FramePlan p;
  p.duration = zigzag(static_cast<std::int64_t>(r.duration.count()));
  RemoteTally remote;
  std::size_t value_size;
  switch (r.result.type()) {  // the usual results without a call
    case Value::Type::null: value_size = 1; break;
    case Value::Type::integer: value_size = 1 + varint_size(zigzag(r.result.as<std::int64_t>())); break;
    default: value_size = encoded_size(r.result, 0, remote_min, &remote);
  }
  const std::size_t payload =
      frame_index_size + 1 + varint_size(p.duration) + varint_size(r.error.size()) + r.error.size() + value_size;
  p.size = frame_header_size + payload;
  p.full_size = payload + remote.extra();
  if (remote.strings) {
    p.kind = frame_kind_remote;
    p.remote_min = remote_min;
  }
  return p;
}

/// Writes r's frame, planned by plan_result_frame, at out (plan.size bytes).
inline void write_result_frame(const Result& r, const FramePlan& plan, char* out) {
  const FrameHeader h{frame_magic, frame_version, plan.kind, plan.size - frame_header_size};
  std::memcpy(out, &h, sizeof h);
  const std::uint64_t index = r.index;
  std::memcpy(out + frame_header_size, &index, sizeof index);
  Writer w(out + frame_header_size + sizeof index, plan.remote_min);
  w.byte(static_cast<std::uint8_t>(r.status));
  w.varint(plan.duration);
  w.text(r.error);
  switch (r.result.type()) {
    case Value::Type::null: w.byte(static_cast<std::uint8_t>(Tag::null)); break;
    case Value::Type::integer:
      w.byte(static_cast<std::uint8_t>(Tag::integer));
      w.varint(zigzag(r.result.as<std::int64_t>()));
      break;
    default: w.value(r.result);
  }
}

/// Encodes r as a frame into out (resized to fit; its capacity is reused). Strings of remote_min
/// (>= 8) bytes or more are left in place as remote references, which makes it a frame_kind_remote
/// frame. Returns the payload size of the frame with every string in it (what the limit applies to).
inline std::size_t encode_result_frame_into(const Result& r, std::string& out, std::size_t remote_min = no_remote) {
  const FramePlan plan = plan_result_frame(r, remote_min);
  out.resize(plan.size);
  write_result_frame(r, plan, out.data());
  return plan.full_size;
}

inline std::string encode_result_frame(const Result& r) {
  std::string frame;
  encode_result_frame_into(r, frame);
  return frame;
}

inline std::string_view doorbell_frame() noexcept {
  static const FrameHeader bell{frame_magic, frame_version, frame_kind_doorbell, 0};
  return {reinterpret_cast<const char*>(&bell), sizeof bell};
}

inline std::uint16_t frame_kind(std::string_view header) noexcept {
  std::uint16_t kind;
  std::memcpy(&kind, header.data() + 6, sizeof kind);
  return kind;
}

/// The function index a whole, size-checked frame is for. Throws pfp::error if it is too short to
/// hold one.
inline std::uint64_t frame_index(std::string_view frame) {
  if (frame.size() < frame_header_size + frame_index_size) throw error("pfp: protocol error: a frame too short to name its function");
  std::uint64_t index;
  std::memcpy(&index, frame.data() + frame_header_size, sizeof index);
  return index;
}

/// Throws the pfp::error that says what is wrong with a frame header frame_size() refused.
[[noreturn]] inline void bad_frame_header(const FrameHeader& h, std::size_t max_frame) {
  if (h.magic != frame_magic) throw error("pfp: protocol error: bad frame magic (the worker wrote something that is not a pfp frame)");
  if (h.version != frame_version)
    throw error("pfp: protocol error: frame version " + std::to_string(h.version) + ", expected " + std::to_string(frame_version));
  if (h.kind != frame_kind_result && h.kind != frame_kind_remote && !(h.kind == frame_kind_doorbell && h.payload_size == 0))
    throw error("pfp: protocol error: unknown frame kind " + std::to_string(h.kind));
  throw error("pfp: result of " + std::to_string(h.payload_size) + " bytes exceeds the limit of " + std::to_string(max_frame) +
              " bytes (Options::max_result_bytes)");
}

/// The whole size of the frame at the start of buf once its header has arrived, nullopt before.
/// Throws pfp::error on a bad magic or version, or a frame larger than max_frame.
inline std::optional<std::size_t> frame_size(std::string_view buf, std::size_t max_frame) {
  if (buf.size() < frame_header_size) return std::nullopt;
  FrameHeader h;
  std::memcpy(&h, buf.data(), sizeof h);
  const bool known = h.kind == frame_kind_result || h.kind == frame_kind_remote || (h.kind == frame_kind_doorbell && h.payload_size == 0);
  if (h.magic != frame_magic || h.version != frame_version || !known || h.payload_size > max_frame ||
      h.payload_size > std::numeric_limits<std::size_t>::max() - frame_header_size)
    bad_frame_header(h, max_frame);
  return frame_header_size + static_cast<std::size_t>(h.payload_size);
}

/// Checks a frame's header and size (and that it is a result frame, or a remote one when
/// `remote` is given) and returns a Reader of its payload. Throws pfp::error if malformed.
inline Reader open_result_frame(std::string_view frame, std::size_t max_frame, RemoteSource* remote = nullptr) {
  std::optional<std::size_t> size = frame_size(frame, max_frame);
  if (!size) throw error("pfp: protocol error: truncated frame header");
  const std::uint16_t kind = frame_kind(frame);
  if (kind != frame_kind_result && !(kind == frame_kind_remote && remote))
    throw error("pfp: protocol error: not a result frame");
  if (*size != frame.size())
    throw error("pfp: protocol error: frame says " + std::to_string(*size) + " bytes, got " + std::to_string(frame.size()));
  return Reader(frame.substr(frame_header_size), kind == frame_kind_remote ? remote : nullptr);
}

/// Reads what follows the index in a result frame's payload into r: status, duration, error and
/// result (function_name, index, pid and attempts are left as they are). Throws pfp::error if
/// malformed (r may then hold part of it).
inline void decode_verdict(Reader& rd, Result& r) {
  std::uint8_t status = rd.byte();
  if (status > static_cast<std::uint8_t>(Status::cancelled)) Reader::fail("unknown status " + std::to_string(status));
  r.status = static_cast<Status>(status);
  r.duration = std::chrono::nanoseconds(unzigzag(rd.varint()));
  const std::string_view error_text = rd.text();
  if (error_text.empty())
    r.error.clear();
  else
    r.error.assign(error_text.data(), error_text.size());
  rd.value_into(r.result);
  if (rd.remaining() != 0) Reader::fail(std::to_string(rd.remaining()) + " trailing bytes in the frame");
}

/// Decodes one whole frame into r (see decode_verdict) and returns the index it carries. A
/// frame_kind_remote frame needs the worker's memory as `remote`. Throws pfp::error on anything
/// malformed.
inline std::uint64_t decode_result_frame_into(std::string_view frame, std::size_t max_frame, Result& r,
                                              RemoteSource* remote = nullptr) {
  Reader rd = open_result_frame(frame, max_frame, remote);
  std::uint64_t index;
  std::memcpy(&index, rd.take(frame_index_size), sizeof index);
  decode_verdict(rd, r);
  return index;
}

/// Decodes one whole frame into a new Result (index from the frame). Throws like
/// decode_result_frame_into.
inline Result decode_result_frame(std::string_view frame, std::size_t max_frame, RemoteSource* remote = nullptr) {
  Result r;
  r.index = static_cast<std::size_t>(decode_result_frame_into(frame, max_frame, r, remote));
  return r;
}

// ---- the shared block

// Each side's frequently written words have cache lines of their own: a worker writes `started`
// and `produced` for every function, the parent `consumed` and the pipe counts for every batch.
struct SharedBlock {
  std::atomic<std::uint64_t> started{0};
  std::atomic<std::int64_t> started_at_ns{0};  // steady_clock time the function began
  // 1 + the index of the function the worker last saw return: from then on only the hand-over of
  // its result remains, which Options::timeout does not cover.
  std::atomic<std::uint64_t> returned{0};
  // Who owns each task sent to this worker and not yet begun (see claim_task / take_back_from):
  // low 32 bits, the ordinal of the next task the worker will look at; high 32 bits, the ordinal
  // below which the parent has taken the tasks back. One word, so exactly one side wins a task.
  std::atomic<std::uint64_t> claim{0};
  // 1 + the index of the first function during which bytes the worker did not write appeared on
  // its result pipe: who corrupted the stream, when the parent finds it corrupt.
  std::atomic<std::uint64_t> corrupted_by{0};
  // Bytes the parent has read from the result pipe, under a sequence count that is odd while a
  // read is in progress: with FIONREAD it gives the worker every byte ever written to the pipe.
  alignas(64) std::atomic<std::uint64_t> pipe_read_seq{0};
  std::atomic<std::uint64_t> pipe_read_total{0};
  alignas(64) std::atomic<std::uint64_t> produced{0};  // bytes ever written to the ring
  alignas(64) std::atomic<std::uint64_t> consumed{0};  // bytes ever taken by the parent
  // Big results left in the worker's memory (remote.hpp): whether the worker may send them that way
  // (set by the parent), and the futex word the parent answers a remote frame on.
  alignas(64) std::atomic<std::uint32_t> remote_allowed{0};
  std::atomic<std::uint32_t> remote_ack{0};
  // The worker's start (Options::initializer): worker_starting until it returned (worker_ready), or
  // worker_start_failed with what it threw in start_error (NUL-terminated).
  alignas(64) std::atomic<std::uint32_t> start_state{0};
  char start_error[1024] = {};
};
inline constexpr std::uint32_t worker_starting = 0, worker_ready = 1, worker_start_failed = 2;
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "pfp needs lock-free 64-bit atomics in shared memory");

/// Worker side: decides whether the worker may begin the task with ordinal `ord` (tasks are
/// numbered per worker in the order they were sent, from 0, modulo 2^32), or the parent took it
/// back. Called for every task in order; the compare-exchange makes the race with take_back()
/// have exactly one winner.
inline bool claim_task(SharedBlock& b, std::uint32_t ord) noexcept {
  std::uint64_t cur = b.claim.load(std::memory_order_acquire);
  for (;;) {
    const auto taken_below = static_cast<std::uint32_t>(cur >> 32);
    const std::uint64_t next = (cur & ~std::uint64_t{0xffffffff}) | static_cast<std::uint32_t>(ord + 1u);
    if (b.claim.compare_exchange_weak(cur, next, std::memory_order_acq_rel, std::memory_order_acquire))
      return static_cast<std::int32_t>(ord - taken_below) >= 0;
  }
}

/// Parent side: takes back every task of ordinal below `sent` that the worker has not begun.
/// Returns the ordinal of the first task taken back: those from it up to `sent` will never run in
/// this worker (it skips them); those below it it has begun or finished.
inline std::uint32_t take_back(SharedBlock& b, std::uint32_t sent) noexcept {
  std::uint64_t cur = b.claim.load(std::memory_order_acquire);
  for (;;) {
    const std::uint64_t want = (std::uint64_t{sent} << 32) | (cur & 0xffffffff);
    if (b.claim.compare_exchange_weak(cur, want, std::memory_order_acq_rel, std::memory_order_acquire))
      return static_cast<std::uint32_t>(cur);
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WIRE_HPP
// ---- end <pfp/detail/wire.hpp> ----

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>

#include <sys/mman.h>

namespace pfp {
namespace detail {

inline constexpr std::size_t ring_capacity = std::size_t{1} << 20;  // a power of two
/// Frames larger than this always take the pipe, so one big result cannot monopolise the ring.
inline constexpr std::size_t ring_frame_limit = ring_capacity / 4;

/// Owns one worker's shared region.
class SharedRegion {
 public:
  static constexpr std::size_t header_bytes = 4096;
  static_assert(sizeof(SharedBlock) <= header_bytes, "SharedBlock must fit its page");

  SharedRegion() = default;
  /// Maps a fresh region. Throws pfp::error if mmap fails.
  static SharedRegion create() {
    SharedRegion r;
    void* p = ::mmap(nullptr, header_bytes + ring_capacity, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw_errno("mmap of a worker's shared region");
    r.base_ = static_cast<char*>(p);
    new (r.base_) SharedBlock();
    return r;
  }
  SharedRegion(SharedRegion&& o) noexcept : base_(std::exchange(o.base_, nullptr)) {}
  SharedRegion& operator=(SharedRegion&& o) noexcept {
    if (this != &o) {
      reset();
      base_ = std::exchange(o.base_, nullptr);
    }
    return *this;
  }
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;
  ~SharedRegion() { reset(); }

  void reset() noexcept {
    if (base_) ::munmap(base_, header_bytes + ring_capacity);
    base_ = nullptr;
  }
  explicit operator bool() const noexcept { return base_ != nullptr; }
  /// Makes a region whose worker is gone (reaped) fit for a new one: fresh counters. The pages stay
  /// mapped, so the parent takes no page fault on them after the next fork.
  void renew() noexcept { new (base_) SharedBlock(); }
  SharedBlock* block() const noexcept { return reinterpret_cast<SharedBlock*>(base_); }
  char* ring() const noexcept { return base_ + header_bytes; }

 private:
  char* base_ = nullptr;
};

inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Worker side: appends whole frames; never blocks.
class RingWriter {
 public:
  RingWriter(SharedBlock* block, char* ring) noexcept : block_(block), ring_(ring) {}

  /// Room for n contiguous bytes at the ring's head, or nullptr when there is none right now (or
  /// n is over ring_frame_limit). What is written there is published by commit(n).
  char* reserve(std::size_t n) noexcept {
    const std::uint64_t head = block_->produced.load(std::memory_order_relaxed);
    const std::uint64_t tail = block_->consumed.load(std::memory_order_acquire);
    const std::size_t at = static_cast<std::size_t>(head & (ring_capacity - 1));
    if (n > ring_frame_limit || n > ring_capacity - (head - tail) || n > ring_capacity - at) return nullptr;
    return ring_ + at;
  }
  void commit(std::size_t n) noexcept {
    block_->produced.store(block_->produced.load(std::memory_order_relaxed) + n, std::memory_order_release);
  }

  /// Copies frame into the ring and publishes it. False when it does not fit right now.
  bool put(std::string_view frame) noexcept {
    const std::uint64_t head = block_->produced.load(std::memory_order_relaxed);
    const std::uint64_t tail = block_->consumed.load(std::memory_order_acquire);
    if (frame.size() > ring_frame_limit || frame.size() > ring_capacity - (head - tail)) return false;
    const std::size_t at = static_cast<std::size_t>(head & (ring_capacity - 1));
    const std::size_t first = std::min(frame.size(), ring_capacity - at);
    std::memcpy(ring_ + at, frame.data(), first);
    std::memcpy(ring_, frame.data() + first, frame.size() - first);
    block_->produced.store(head + frame.size(), std::memory_order_release);
    return true;
  }

 private:
  SharedBlock* block_;
  char* ring_;
};

/// Parent side: reads what the worker published, checking every number it finds there (a buggy
/// function can scribble on the region) before using it.
class RingReader {
 public:
  RingReader() = default;
  RingReader(SharedBlock* block, const char* ring) noexcept : block_(block), ring_(ring) {}

  /// Bytes published and not yet taken. Throws pfp::error if the counters are impossible.
  std::size_t available() const {
    const std::uint64_t head = block_->produced.load(std::memory_order_acquire);
    const std::uint64_t unread = head - pos_;
    if (head < pos_ || unread > ring_capacity) throw error("pfp: protocol error: the worker's shared ring counters are corrupt");
    return static_cast<std::size_t>(unread);
  }
  /// The next n bytes (n <= available()), contiguous: in place, or copied into scratch at the wrap.
  std::string_view peek(std::size_t n, std::string& scratch) const {
    const std::size_t at = static_cast<std::size_t>(pos_ & (ring_capacity - 1));
    if (at + n <= ring_capacity) return {ring_ + at, n};
    scratch.resize(n);
    const std::size_t first = ring_capacity - at;
    std::memcpy(scratch.data(), ring_ + at, first);
    std::memcpy(scratch.data() + first, ring_, n - first);
    return scratch;
  }
  void advance(std::size_t n) noexcept { pos_ += n; }
  /// Hands the space taken so far back to the worker.
  void publish() noexcept {
    if (block_) block_->consumed.store(pos_, std::memory_order_release);
  }

 private:
  SharedBlock* block_ = nullptr;
  const char* ring_ = nullptr;
  std::uint64_t pos_ = 0;
};

/// Parent side: bytes read from a worker's result pipe. Grown without zero-filling, copying only the
/// bytes still unparsed: after every fork each page the parent writes costs it a copy-on-write
/// fault, so only what read() fills is ever touched.
class ReadBuffer {
 public:
  char* data() noexcept { return data_.get(); }
  const char* data() const noexcept { return data_.get(); }
  /// Bytes it can hold.
  std::size_t capacity() const noexcept { return capacity_; }
  /// Makes room for at least n bytes, keeping the bytes in [from, to) (moved to the start: the
  /// caller's offsets change by -from when this returns true).
  bool make_room(std::size_t from, std::size_t to, std::size_t n) {
    if (n <= capacity_ && from == 0) return false;
    if (n <= capacity_) {
      std::memmove(data_.get(), data_.get() + from, to - from);
      return true;
    }
    std::unique_ptr<char[]> bigger(new char[n]);
    if (to > from) std::memcpy(bigger.get(), data_.get() + from, to - from);
    data_ = std::move(bigger);
    capacity_ = n;
    return true;
  }
  void release() noexcept {
    data_.reset();
    capacity_ = 0;
  }
  ReadBuffer() = default;
  ReadBuffer(ReadBuffer&& o) noexcept : data_(std::move(o.data_)), capacity_(std::exchange(o.capacity_, 0)) {}
  ReadBuffer& operator=(ReadBuffer&& o) noexcept {
    data_ = std::move(o.data_);
    capacity_ = std::exchange(o.capacity_, 0);
    return *this;
  }

 private:
  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_CHANNEL_HPP
// ---- end <pfp/detail/channel.hpp> ----
// ---- begin <pfp/detail/process.hpp> ----
#ifndef PFP_DETAIL_PROCESS_HPP
#define PFP_DETAIL_PROCESS_HPP

// Starting and ending worker processes. Fork hygiene lives here: the parent flushes stdio
// before fork; the child resets signal dispositions and mask, becomes its own process-group
// leader, dies with the parent, and never returns into the caller's stack.

// ---- begin <pfp/detail/descendants.hpp> ----
#ifndef PFP_DETAIL_DESCENDANTS_HPP
#define PFP_DETAIL_DESCENDANTS_HPP

// Finding and signalling what a worker started, and the workers themselves, without ever hitting
// an unrelated process. Two dangers: a worker that died has left its children to init, where /proc
// no longer tells they were its (the fork registry below remembers them); and a pid that someone
// else reaped (a SIGCHLD handler of the caller's calling waitpid(-1)) may name another process by
// now (pidfds name a process, not a number; without them only pids pfp still owns are signalled).


#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <new>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

namespace pfp {
namespace detail {

/// Test hook: false makes open_pidfd() fail, as on kernels before 5.3.
inline bool use_pidfds = true;

/// A descriptor that names pid for as long as it is open, even once the process is reaped and its
/// number reused (Linux 5.3+); it becomes readable when the process has exited. -1 without.
inline int open_pidfd(pid_t pid) noexcept {
  if (!use_pidfds || pid <= 0) return -1;
#if defined(__linux__)
#if defined(SYS_pidfd_open)
  const long nr = SYS_pidfd_open;
#else
  const long nr = 434;  // the same on every architecture
#endif
  const long fd = ::syscall(nr, pid, 0);  // close-on-exec by definition
  if (fd >= 0) return static_cast<int>(fd);
#endif
  return -1;
}

/// Sends sig to the process pidfd names (nothing if it has been reaped). False if the kernel has no
/// pidfd_send_signal (then the caller falls back to the pid).
inline bool pidfd_signal(int pidfd, int sig) noexcept {
#if defined(__linux__)
#if defined(SYS_pidfd_send_signal)
  const long nr = SYS_pidfd_send_signal;
#else
  const long nr = 424;  // the same on every architecture
#endif
  return ::syscall(nr, pidfd, sig, nullptr, 0) == 0 || errno != ENOSYS;
#else
  (void)pidfd;
  (void)sig;
  return false;
#endif
}

/// waitid() on the child pidfd names (P_PIDFD, Linux 5.4+), or on pid where there is no pidfd or
/// the kernel does not know P_PIDFD. Retried on EINTR.
inline int wait_child(pid_t pid, int pidfd, siginfo_t& info, int flags) noexcept {
  for (;;) {
    info = siginfo_t{};
    int r = pidfd >= 0 ? ::waitid(static_cast<idtype_t>(3 /* P_PIDFD */), static_cast<id_t>(pidfd), &info, flags) : -1;
    if (pidfd < 0 || (r < 0 && errno == EINVAL)) r = ::waitid(P_PID, static_cast<id_t>(pid), &info, flags);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/// Whether this process still owns the child (nobody has reaped it yet): until then neither its
/// pid nor its process-group id can name another process.
inline bool still_ours(pid_t pid, int pidfd) noexcept {
  siginfo_t info;
  return pid > 0 && wait_child(pid, pidfd, info, WEXITED | WNOHANG | WNOWAIT) == 0;
}

/// Sends sig to a child of this process through its pidfd, or by pid only while it is still ours.
inline void signal_child(pid_t pid, int pidfd, int sig) noexcept {
  if (pidfd >= 0 && pidfd_signal(pidfd, sig)) return;
  if (still_ours(pid, -1)) ::kill(pid, sig);
}

/// SIGKILL to a worker and its process group (it leads one of its own). The group is signalled
/// only while the worker is still ours: once someone else reaped it, the number may lead another
/// group (a newer worker's, say).
inline void kill_group(pid_t pid, int pidfd) noexcept {
  if (still_ours(pid, pidfd)) ::kill(-pid, SIGKILL);
  signal_child(pid, pidfd, SIGKILL);
}

/// What /proc/<pid>/stat says of a process.
struct ProcStat {
  pid_t ppid = 0;
  char state = 0;
  unsigned long long start = 0;  // clock ticks after boot: with the pid, names one process
};

/// Parses /proc/<pid>/stat (or /proc/self/stat for pid 0) with async-signal-safe calls only.
inline bool read_proc_stat(pid_t pid, ProcStat& out) noexcept {
#if defined(__linux__)
  char path[64] = "/proc/self/stat";
  if (pid > 0) {
    // "/proc/<pid>/stat" without snprintf (not async-signal-safe)
    char digits[16];
    int n = 0;
    for (unsigned long v = static_cast<unsigned long>(pid); v && n < 15; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
    char* p = path + 6;
    while (n) *p++ = digits[--n];
    std::memcpy(p, "/stat", 6);
  }
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  const ssize_t n = read_some(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  // "pid (comm) state ppid pgrp ... starttime(22nd) ...": comm may hold spaces and parentheses.
  const char* p = std::strrchr(buf, ')');
  if (!p || p[1] != ' ') return false;
  p += 2;
  out.state = *p;
  auto number = [](const char*& q) {
    unsigned long long v = 0;
    bool negative = *q == '-';
    if (negative) ++q;
    while (*q >= '0' && *q <= '9') v = v * 10 + static_cast<unsigned long long>(*q++ - '0');
    return negative ? 0ULL : v;
  };
  for (int field = 3; field <= 22; ++field) {  // p is at field `field`
    if (field == 4) {
      out.ppid = static_cast<pid_t>(number(p));
    } else if (field == 22) {
      out.start = number(p);
      return true;
    } else {
      while (*p && *p != ' ') ++p;
    }
    if (*p != ' ') return false;
    ++p;
  }
  return false;
#else
  (void)pid;
  (void)out;
  return false;
#endif
}

/// The processes forked inside workers and their descendants, noted by each in the one table the
/// parent and all of them share (an anonymous shared mapping made before the first worker). When a
/// worker dies its children go to init, and /proc no longer says they descend from it; this table
/// still does, so that a crashed worker can take them with it. What fork() starts is noted (a
/// pthread_atfork handler in the child); posix_spawn() and exec'd programs run no such handler.
class ForkRegistry {
 public:
  struct Noted {
    pid_t pid;
    unsigned long long start;
  };

  /// In the parent, before it forks a worker. Without the mapping nothing is noted.
  static void prepare() noexcept {
    static std::atomic<bool> done{false};
    if (done.exchange(true)) return;  // (in a worker: the table it inherited stays in use)
    void* p = ::mmap(nullptr, sizeof(Table), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    table() = new (p) Table();
    ::pthread_atfork(nullptr, nullptr, &note_child);
  }

  /// In a new worker: what it forks from now on is noted as its own.
  static void enter_worker() noexcept { self() = ::getpid(); }

  /// In the parent: the processes noted for worker, and those entries freed.
  static std::vector<Noted> take(pid_t worker) {
    std::vector<Noted> found;
    Table* t = table();
    if (!t || t->used.load(std::memory_order_acquire) == 0) return found;
    for (Entry& e : t->entries) {
      if (e.worker.load(std::memory_order_acquire) != worker) continue;
      const pid_t pid = e.pid.load(std::memory_order_acquire);
      if (pid > 0) found.push_back(Noted{pid, e.start.load(std::memory_order_relaxed)});
      e.pid.store(0, std::memory_order_relaxed);
      e.worker.store(0, std::memory_order_release);
      t->used.fetch_sub(1, std::memory_order_acq_rel);
    }
    return found;
  }

  /// In the parent, once worker is reaped: its entries are freed, so a later worker that gets
  /// the same pid does not inherit them.
  static void forget(pid_t worker) noexcept {
    Table* t = table();
    if (!t || t->used.load(std::memory_order_acquire) == 0) return;  // no worker forked anything
    try {
      take(worker);
    } catch (...) {
    }
  }

 private:
  static constexpr std::size_t capacity = 1024;
  struct Entry {
    std::atomic<std::int32_t> worker{0};  // 0: free
    std::atomic<std::int32_t> pid{0};     // 0: being written
    std::atomic<unsigned long long> start{0};
  };
  struct Table {
    std::atomic<std::uint32_t> used{0};
    Entry entries[capacity];
  };
  static_assert(std::atomic<std::int32_t>::is_always_lock_free && std::atomic<unsigned long long>::is_always_lock_free,
                "shared between processes: only lock-free atomics are address-free");

  static Table*& table() noexcept {
    static Table* t = nullptr;
    return t;
  }
  static pid_t& self() noexcept {
    static pid_t worker = 0;  // 0: not in a worker
    return worker;
  }

  // The child side of every fork(): async-signal-safe calls only (the parent may have threads).
  static void note_child() noexcept {
    Table* t = table();
    const pid_t worker = self();
    if (!t || worker == 0) return;
    ProcStat st;
    if (!read_proc_stat(0, st)) return;
    for (Entry& e : t->entries) {
      std::int32_t expected = 0;
      if (e.worker.load(std::memory_order_relaxed) != 0 ||
          !e.worker.compare_exchange_strong(expected, worker, std::memory_order_acq_rel))
        continue;
      t->used.fetch_add(1, std::memory_order_acq_rel);
      e.start.store(st.start, std::memory_order_relaxed);
      e.pid.store(::getpid(), std::memory_order_release);
      return;
    }
    // Full: entries of this worker's processes that are gone make room.
    for (Entry& e : t->entries) {
      const pid_t pid = e.pid.load(std::memory_order_acquire);
      if (e.worker.load(std::memory_order_acquire) != worker || pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
      e.pid.store(0, std::memory_order_relaxed);
      e.start.store(st.start, std::memory_order_relaxed);
      e.pid.store(::getpid(), std::memory_order_release);
      return;
    }
  }
};

/// A process and its parent, as /proc showed them.
struct ProcLink {
  pid_t pid;
  pid_t ppid;
};

/// The live (non-zombie) descendants of root, from /proc. Empty where /proc is unavailable.
inline std::vector<ProcLink> live_descendants(pid_t root) {
  std::vector<ProcLink> found;
#if defined(__linux__)
  std::unordered_map<pid_t, std::vector<pid_t>> children;
  DIR* proc = ::opendir("/proc");
  if (!proc) return found;
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end) continue;
    ProcStat st;
    if (!read_proc_stat(static_cast<pid_t>(pid), st) || st.state == 'Z' || st.state == 'X') continue;
    children[st.ppid].push_back(static_cast<pid_t>(pid));
  }
  ::closedir(proc);
  std::vector<pid_t> todo{root};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    auto it = children.find(p);
    if (it == children.end()) continue;
    for (pid_t c : it->second) {
      found.push_back(ProcLink{c, p});
      todo.push_back(c);
    }
  }
#else
  (void)root;
#endif
  return found;
}

/// SIGKILL to pid if it is still the process /proc described (its parent is `parent`, or it
/// started at `start`). With a pidfd opened first the check is exact: if the process it names is
/// alive when signalled, it was alive when its stat was read, so that stat was its own.
inline void kill_if_still(pid_t pid, pid_t parent, unsigned long long start = 0) noexcept {
  UniqueFd fd(open_pidfd(pid));
  ProcStat st;
  if (!read_proc_stat(pid, st) || (start ? st.start != start : st.ppid != parent)) return;
  if (fd && pidfd_signal(fd.get(), SIGKILL)) return;
  ::kill(pid, SIGKILL);
}

/// Kills every descendant of root that /proc shows (not root itself), repeated while new ones
/// appear: descendants first, while root still holds them as their (sub)reaper.
inline void kill_descendants(pid_t root) noexcept {
  try {
    for (int round = 0; round < 8; ++round) {
      std::vector<ProcLink> procs = live_descendants(root);
      if (procs.empty()) break;
      for (const ProcLink& p : procs) kill_if_still(p.pid, p.ppid);
    }
  } catch (...) {  // out of memory while listing
  }
}

/// Kills the processes the fork registry noted for worker (each only if it is still the process
/// noted) with their descendants.
inline void kill_noted(pid_t worker) noexcept {
  try {
    for (const ForkRegistry::Noted& n : ForkRegistry::take(worker)) {
      ProcStat st;
      if (!read_proc_stat(n.pid, st) || st.start != n.start) continue;  // gone; the number may be another's now
      kill_descendants(n.pid);
      kill_if_still(n.pid, 0, n.start);
    }
  } catch (...) {
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_DESCENDANTS_HPP
// ---- end <pfp/detail/descendants.hpp> ----

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <streambuf>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <stdio_ext.h>
#include <sys/ioctl.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include <poll.h>
#include <time.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

namespace pfp {
namespace detail {

/// Whether a stream buffer holds output it has not handed on yet (its put area is not empty).
/// Naming the protected pptr()/pbase() through a derived class is what C++ allows.
struct PutArea : std::streambuf {
  static bool pending(std::streambuf* b) noexcept {
    using Pointer = char* (std::streambuf::*)() const;
    const Pointer next = &PutArea::pptr, base = &PutArea::pbase;
    return b && (b->*next)() != (b->*base)();
  }
};

/// Flushes what a function printed to stdout and stderr, cheaply when there is nothing to flush
/// (it runs after every function in a worker). Returns whether there was anything to flush.
inline bool flush_standard_streams() noexcept {
  bool flushed = false;
#if defined(__GLIBC__)
  // __fpending() without the call for byte-oriented streams (this runs after every function):
  // glibc's FILE is public; wide-oriented ones keep their buffer elsewhere.
  auto pending = [](FILE* f) { return f->_mode > 0 ? __fpending(f) != 0 : f->_IO_write_ptr != f->_IO_write_base; };
  for (FILE* f : {stdout, stderr})
    if (pending(f)) {
      std::fflush(f);
      flushed = true;
    }
#elif defined(__linux__)
  for (FILE* f : {stdout, stderr})
    if (__fpending(f)) {
      std::fflush(f);
      flushed = true;
    }
#else
  std::fflush(stdout);
  std::fflush(stderr);
  flushed = true;
#endif
  try {
    // std::cout has its own buffer only after std::ios::sync_with_stdio(false) (or with a
    // buffer of the program's own put in): flushing an empty one costs a virtual call and more.
    if (PutArea::pending(std::cout.rdbuf())) {
      std::cout.flush();
      flushed = true;
    }
  } catch (...) {
  }
  return flushed;
}

/// Flushes every stdio and iostream buffer so a forked child cannot print them a second time.
inline void flush_stdio() noexcept {
  std::fflush(nullptr);
  try {
    // Only those with a buffer of their own that holds something: with sync_with_stdio(true) they
    // write straight through stdio, flushed just above.
    if (PutArea::pending(std::cout.rdbuf())) std::cout.flush();
    if (PutArea::pending(std::clog.rdbuf())) std::clog.flush();
    if (PutArea::pending(std::cerr.rdbuf())) std::cerr.flush();
  } catch (...) {
  }
}

/// What a forked child has to undo of the parent's signal state. Learned in the parent once per
/// run (64 queries), so that each child makes one system call per signal the parent actually
/// handles or ignores instead of one per signal number: those calls are most of a child's start-up.
struct SignalPlan {
  std::vector<int> reset;  // signals whose disposition (or flags) is not the default
  bool altstack = false;   // the calling thread has an alternate signal stack

  /// The calling thread's current signal state. Handlers installed after this call (by another
  /// thread, during the run) are not seen.
  static SignalPlan learn() {
    SignalPlan plan;
#if defined(NSIG)
    const int last = NSIG;
#else
    const int last = 65;
#endif
#if defined(SA_RESTORER)
    const auto internal = static_cast<decltype(sigaction::sa_flags)>(SA_RESTORER);
#elif defined(__linux__)
    // SA_RESTORER (from <asm/signal.h>, not <signal.h>): glibc sets it on every sigaction().
    const decltype(sigaction::sa_flags) internal = 0x04000000;
#else
    const decltype(sigaction::sa_flags) internal = 0;
#endif
    plan.reset.reserve(8);
    for (int sig = 1; sig < last; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      struct sigaction current {};
      if (::sigaction(sig, nullptr, &current) != 0) continue;  // not a signal number
      if (current.sa_handler != SIG_DFL || (current.sa_flags & ~internal) != 0) plan.reset.push_back(sig);
    }
    stack_t ss{};
    plan.altstack = ::sigaltstack(nullptr, &ss) == 0 && !(ss.ss_flags & SS_DISABLE);
    return plan;
  }
};

/// Ends a worker process at once, like _exit(), through a function bind_worker_calls() has bound.
[[noreturn]] inline void leave(int code) noexcept {
#if defined(__linux__)
  ::syscall(SYS_exit_group, code);
#endif
  ::_exit(code);
}

/// Binds, in the parent, the library functions every new worker calls, once per process. With lazy
/// binding (the default), a function the parent never called is looked up by the dynamic linker in
/// each child on first use: a walk over the libraries' symbol tables that costs every worker a few
/// microseconds and a dozen page faults. Each call below fails or does nothing.
inline void bind_worker_calls() noexcept {
  static std::atomic<bool> bound{false};
  if (bound.exchange(true)) return;
  sigset_t mask;
  ::sigprocmask(SIG_BLOCK, nullptr, &mask);
  [[maybe_unused]] pid_t parent = ::getppid();
#if defined(__linux__)
  int deathsig = 0;
  ::prctl(PR_GET_PDEATHSIG, &deathsig);
#endif
  int n = 0;
  [[maybe_unused]] int r = ::ioctl(-1, FIONREAD, &n);
  char c = 0;
  [[maybe_unused]] ssize_t io = ::read(-1, &c, 0);
  io = ::write(-1, &c, 0);
  r = ::close(-1);
  r = ::fcntl(-1, F_GETFL);
#if defined(__linux__)
  [[maybe_unused]] long id = ::syscall(SYS_getppid);  // leave() exits through syscall()
#endif
#if defined(__GLIBC__) || defined(__linux__)
  [[maybe_unused]] std::size_t pending = __fpending(stdout);
#endif
  try {
    char* volatile block = new char[1];  // volatile: not elided
    delete[] block;
    std::string grown;
    grown.resize(1, 'x');
    grown.resize(64, 'x');  // past the small-string buffer: allocation, mutate, fill
  } catch (...) {
  }
}

/// In a freshly forked child: default dispositions for every signal (for those in plan only, when
/// given), an empty mask, no alternate signal stack (the caller's belongs to the parent's memory
/// layout, not ours).
inline void reset_signals_in_child(const SignalPlan* plan = nullptr) noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  if (plan) {
    for (int sig : plan->reset) ::sigaction(sig, &dfl, nullptr);
  } else {
#if defined(NSIG)
    const int last = NSIG;
#else
    const int last = 65;
#endif
    for (int sig = 1; sig < last; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      ::sigaction(sig, &dfl, nullptr);  // fails harmlessly for numbers that are not signals
    }
  }
  if (!plan || plan->altstack) {
    stack_t ss{};
    ss.ss_flags = SS_DISABLE;
    ::sigaltstack(&ss, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

/// Forks a child that runs body() and then leaves through _exit. In the child the descriptors
/// in close_in_child are closed first, and the signal state is reset (what `signals` names, or
/// everything). Returns the child's pid and sets *pidfd to a pidfd naming it (-1 where the kernel
/// has none); throws pfp::error if fork fails.
template <class Body>
pid_t fork_worker(Body&& body, const std::vector<int>& close_in_child, const SignalPlan* signals, UniqueFd* pidfd) {
  flush_stdio();
  ForkRegistry::prepare();
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    ForkRegistry::enter_worker();
    reset_signals_in_child(signals);
    ::setpgid(0, 0);
#if defined(__linux__)
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    // Orphans of the function's processes (a daemonising double fork, say) are reparented to the
    // worker instead of init, so the parent can still find and kill them: see kill_tree().
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
#endif
    if (::getppid() != parent) ::_exit(127);  // the parent died before PDEATHSIG was armed
    for (int fd : close_in_child) ::close(fd);
    try {
      body();
    } catch (...) {
      flush_stdio();
      leave(126);
    }
    flush_stdio();
    leave(0);
  }
  // Opened before anything can reap the child (it has not run a function yet, so it cannot have
  // ended but by a signal from outside): from here on it is signalled through this, not its pid.
  *pidfd = UniqueFd(open_pidfd(pid));
  // Also set from the parent, so a kill of the group right after fork cannot miss the child.
  ::setpgid(pid, pid);
  return pid;
}

/// Kills a worker with everything it started: its descendants, those /proc shows while it lives
/// (descendants first, while it still holds them as their subreaper) and those the fork registry
/// noted (found even once it died and left them to init), its process group and itself. Nothing is
/// signalled by number once someone else has reaped the worker (its pid may be another's by then).
inline void kill_tree(pid_t root, int pidfd) noexcept {
  if (still_ours(root, pidfd)) kill_descendants(root);
  kill_noted(root);
  kill_group(root, pidfd);
}

/// Whether the child has ended, without reaping it (so its pid and group id stay reserved).
inline bool has_exited(pid_t pid, int pidfd) noexcept {
  siginfo_t info;
  if (wait_child(pid, pidfd, info, WEXITED | WNOHANG | WNOWAIT) < 0) return errno == ECHILD;  // reaped elsewhere
  return info.si_pid != 0;
}

/// Reaps the child (waits for it unless flags has WNOHANG) and frees its fork-registry entries.
/// Returns pid with *status set as waitpid() would, 0 if it is still running, or -1 if someone else
/// reaped it (e.g. a SIGCHLD handler of the caller's).
inline pid_t reap_child(pid_t pid, int pidfd, int* status, int flags = 0) noexcept {
  siginfo_t info;
  if (wait_child(pid, pidfd, info, WEXITED | flags) != 0) {
    ForkRegistry::forget(pid);
    return -1;
  }
  if (info.si_pid == 0) return 0;
  *status = info.si_code == CLD_EXITED ? (info.si_status & 0xff) << 8
                                       : (info.si_status & 0x7f) | (info.si_code == CLD_DUMPED ? 0x80 : 0);
  ForkRegistry::forget(pid);
  return pid;
}

/// Reaps pid. If it has not ended within grace, kills its process group and reaps it then.
/// Returns the wait status, or -1 when it was reaped elsewhere (e.g. a SIGCHLD handler).
inline int reap(pid_t pid, std::chrono::milliseconds grace, int pidfd) noexcept {
  int status = 0;
  auto start = std::chrono::steady_clock::now();
  for (;;) {
    pid_t r = reap_child(pid, pidfd, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    auto waited = std::chrono::steady_clock::now() - start;
    if (waited >= grace) break;
    // A worker that is leaving normally is gone within microseconds: poll finely at first, so a
    // process-per-function run does not pay a millisecond per process.
    timespec pause{0, waited < std::chrono::milliseconds(2) ? 20'000L : 1'000'000L};
    ::nanosleep(&pause, nullptr);
  }
  kill_group(pid, pidfd);
  if (reap_child(pid, pidfd, &status) == pid) return status;
  return -1;
}

/// Processes that are leaving on their own (a worker that has run its allowance): reaped once they
/// are gone, instead of waited for, so the parent goes on with the others meanwhile. Each holds
/// `Keep` (what must outlive the process) until it is reaped, then hands it to the caller. Each has
/// a pidfd to poll for its exit where the kernel has them; otherwise the caller polls briefly.
template <class Keep>
class Leaving {
 public:
  Leaving() = default;
  Leaving(const Leaving&) = delete;
  Leaving& operator=(const Leaving&) = delete;
  ~Leaving() { kill_all(); }

  /// pid (named by pidfd, if it is open) has `grace` to exit before its process group is killed.
  void add(pid_t pid, UniqueFd pidfd, Keep keep, std::chrono::milliseconds grace) {
    entries_.push_back(Entry{pid, std::chrono::steady_clock::now() + grace, std::move(pidfd), std::move(keep)});
  }
  bool empty() const noexcept { return entries_.empty(); }
  /// Processes not reaped yet (some may already have exited).
  std::size_t size() const noexcept { return entries_.size(); }
  /// Whether every one of them can be waited for with poll() (see append_poll_fds).
  bool pollable() const noexcept {
    for (const Entry& e : entries_)
      if (!e.pidfd) return false;
    return true;
  }
  /// Adds a POLLIN entry per pidfd: readable once that process has exited.
  void append_poll_fds(std::vector<pollfd>& fds) const {
    for (const Entry& e : entries_)
      if (e.pidfd) fds.push_back(pollfd{e.pidfd.get(), POLLIN, 0});
  }
  /// Adds this object's own descriptors (the pidfds) and visits each Keep (for the caller's).
  template <class Visit>
  void list_descriptors(std::vector<int>& fds, Visit&& visit) const {
    for (const Entry& e : entries_) {
      if (e.pidfd) fds.push_back(e.pidfd.get());
      visit(e.keep);
    }
  }
  /// The earliest deadline, if any.
  std::optional<std::chrono::steady_clock::time_point> next_deadline() const noexcept {
    std::optional<std::chrono::steady_clock::time_point> first;
    for (const Entry& e : entries_)
      if (!first || e.deadline < *first) first = e.deadline;
    return first;
  }

  /// Reaps those that have exited, and kills and reaps those past their grace; done(keep) for each.
  template <class Done>
  void collect(Done&& done) {
    const auto now = std::chrono::steady_clock::now();
    for (std::size_t k = 0; k < entries_.size();) {
      Entry& e = entries_[k];
      int status = 0;
      pid_t r = reap_child(e.pid, e.pidfd.get(), &status, WNOHANG);
      if (r == 0 && now >= e.deadline) {
        kill_group(e.pid, e.pidfd.get());
        r = reap_child(e.pid, e.pidfd.get(), &status);
      }
      if (r == 0) {
        ++k;
        continue;
      }
      done(std::move(e.keep));
      e = std::move(entries_.back());
      entries_.pop_back();
    }
  }

  /// Waits for all of them, each within what is left of its grace.
  template <class Done>
  void finish(Done&& done) {
    for (Entry& e : entries_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(e.deadline - std::chrono::steady_clock::now());
      reap(e.pid, std::max(left, std::chrono::milliseconds(0)), e.pidfd.get());
      done(std::move(e.keep));
    }
    entries_.clear();
  }

  /// Kills and reaps them all (a run left by an exception).
  void kill_all() noexcept {
    for (Entry& e : entries_) {
      kill_group(e.pid, e.pidfd.get());
      int ignored = 0;
      reap_child(e.pid, e.pidfd.get(), &ignored);
    }
    entries_.clear();
  }

 private:
  struct Entry {
    pid_t pid;
    std::chrono::steady_clock::time_point deadline;
    UniqueFd pidfd;
    Keep keep;
  };
  std::vector<Entry> entries_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_PROCESS_HPP
// ---- end <pfp/detail/process.hpp> ----
// ---- begin <pfp/detail/remote.hpp> ----
#ifndef PFP_DETAIL_REMOTE_HPP
#define PFP_DETAIL_REMOTE_HPP

// Big results without the pipe: a worker leaves every string or blob of remote_min_size bytes or
// more where it is, in its own memory, and sends a small frame_kind_remote frame naming their
// addresses (serialization.hpp). The parent copies each one with process_vm_readv straight into
// the std::string that becomes part of the Result -- one copy, instead of the pipe's two plus the
// encode and decode copies -- and then acknowledges through the worker's SharedBlock, which lets the
// worker free its memory and go on. Where the kernel refuses the copy (Yama ptrace_scope 2+,
// seccomp, a kernel without CONFIG_CROSS_MEMORY_ATTACH, a worker made non-dumpable), the parent
// answers "refused" instead; the worker then sends the same result the ordinary way, and no worker
// of this process tries the fast path again.


#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <sys/types.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#endif

namespace pfp {
namespace detail {

#if defined(__linux__)
inline constexpr bool remote_transfer_supported = true;
#else
inline constexpr bool remote_transfer_supported = false;
#endif

/// What the parent answers a remote frame with (SharedBlock::remote_ack).
enum : std::uint32_t {
  remote_ack_waiting = 0,  ///< the worker has sent a remote frame and waits
  remote_ack_copied = 1,   ///< the parent has what it needs; the memory is the worker's again
  remote_ack_refused = 2,  ///< the parent cannot read the worker's memory: send the result through the pipe
};

/// In this process (the parent): 0 while direct reads of workers' memory have not failed, 1 once
/// the kernel refused one. Workers forked later are told not to try (SharedBlock::remote_allowed).
inline std::atomic<int> remote_reads_refused{0};

/// Test hooks, set in the parent before a run. remote_read_fault: pretend process_vm_readv failed
/// with this errno (0: do not pretend). before_remote_read: called with the worker's pid just
/// before its memory is read.
inline int remote_read_fault = 0;
inline void (*before_remote_read)(pid_t) = nullptr;
/// Bytes the parent has copied out of workers' memory so far (for tests and benchmarks).
inline std::atomic<std::uint64_t> remote_bytes_read{0};

/// Thrown by RemoteReader::fetch when the worker's memory cannot be read: `gone` when the worker has
/// died (its result is lost with it), otherwise the kernel refused (the result comes again through
/// the pipe). Not a pfp::error: it is no protocol error.
class remote_unavailable : public std::exception {
 public:
  remote_unavailable(int err, bool gone) noexcept : err_(err), gone_(gone) {}
  const char* what() const noexcept override { return gone_ ? "pfp: the worker died" : "pfp: process_vm_readv refused"; }
  int err() const noexcept { return err_; }
  bool gone() const noexcept { return gone_; }

 private:
  int err_;
  bool gone_;
};

// ---------------------------------------------------------------- a string filled in place

#if defined(__GLIBCXX__) && _GLIBCXX_USE_CXX11_ABI && !defined(__cpp_lib_string_resize_and_overwrite)
// libstdc++ before C++23 has no way to size a std::string without writing every byte, which for a
// 1 GiB result costs a pass over memory. Its private _M_set_length(n) sets the size and the
// terminator of a string whose capacity is at least n; explicit instantiation is the one place
// C++ allows naming a private member, and it is how the pointer to it is obtained here.
struct StringSetLength {
  using type = void (std::string::*)(std::string::size_type);
  friend type string_set_length(StringSetLength) noexcept;
};
template <class Tag, typename Tag::type Member>
struct PrivateMember {
  friend typename Tag::type string_set_length(Tag) noexcept { return Member; }
};
template struct PrivateMember<StringSetLength, &std::string::_M_set_length>;
#define PFP_HAVE_STRING_SET_LENGTH 1
#endif

/// A std::string of n bytes written by fill(char* data) (which must write all n), without first
/// zero-filling them where the standard library allows it. prepare(char* data) sees the fresh
/// buffer before anything has touched it (beyond its first byte).
template <class Prepare, class Fill>
std::string string_filled_by(std::size_t n, Prepare&& prepare, Fill&& fill) {
  std::string s;
#if defined(__cpp_lib_string_resize_and_overwrite)
  s.resize_and_overwrite(n, [&](char* p, std::size_t) {
    prepare(p);
    fill(p);
    return n;
  });
#elif defined(PFP_HAVE_STRING_SET_LENGTH)
  s.reserve(n);
  prepare(s.data());
  fill(s.data());
  (s.*string_set_length(StringSetLength{}))(n);
#else
  s.reserve(n);
  prepare(s.data());
  s.resize(n);
  fill(s.data());
#endif
  return s;
}

template <class Fill>
std::string string_filled_by(std::size_t n, Fill&& fill) {
  return string_filled_by(n, [](char*) {}, std::forward<Fill>(fill));
}

// ---------------------------------------------------------------- parent side

#if defined(__linux__)
/// CPUs this process may run on.
inline unsigned usable_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return static_cast<unsigned>(CPU_COUNT(&set));
}
#endif

/// Reads the strings a worker's remote frame refers to, within what is left of the result limit.
class RemoteReader final : public RemoteSource {
 public:
  /// Strings at least this big are copied by two threads when there are two CPUs: the copy is
  /// bound by faulting in and zeroing the fresh pages as much as by the copy itself, and the
  /// worker's CPU is idle meanwhile (it waits for the answer).
  static constexpr std::size_t parallel_min = std::size_t{64} << 20;
  static constexpr std::size_t chunk = std::size_t{16} << 20;

  /// budget: bytes the strings may add up to (Options::max_result_bytes minus the frame's own).
  RemoteReader(pid_t pid, std::size_t budget) noexcept : pid_(pid), budget_(budget) {}

  std::string fetch(std::uint64_t address, std::size_t size) override {
    if (size > budget_)
      throw error("pfp: the result's strings add up to more than the limit of Options::max_result_bytes");
    budget_ -= size;
#if defined(__linux__)
    if (before_remote_read) before_remote_read(pid_);
    std::string out = string_filled_by(
        size, [&](char* dst) { advise_huge_pages(dst, size); }, [&](char* dst) { copy_in(dst, address, size); });
    remote_bytes_read.fetch_add(size, std::memory_order_relaxed);
    return out;
#else
    (void)address;
    throw remote_unavailable(ENOSYS, false);
#endif
  }

 private:
  pid_t pid_;
  std::size_t budget_;

#if defined(__linux__)
  // Copies n bytes from address in the worker to dst. Returns 0 or the errno that stopped it.
  int copy_range(char* dst, std::uint64_t address, std::size_t n) const noexcept {
    std::size_t done = 0;
    while (done < n) {
      iovec local{dst + done, n - done};
      iovec remote{reinterpret_cast<void*>(static_cast<std::uintptr_t>(address + done)), n - done};
      ssize_t got = remote_read_fault ? (errno = remote_read_fault, -1) : ::process_vm_readv(pid_, &local, 1, &remote, 1, 0);
      if (got > 0) {
        done += static_cast<std::size_t>(got);
        continue;
      }
      if (got < 0 && errno == EINTR) continue;
      return got < 0 ? errno : EFAULT;
    }
    return 0;
  }

  void copy_in(char* dst, std::uint64_t address, std::size_t size) const {
    int err = 0;
    if (size < parallel_min || usable_cpus() < 2) {
      err = copy_range(dst, address, size);
    } else {
      std::atomic<std::size_t> next{0};
      std::atomic<int> first_error{0};
      auto work = [&]() noexcept {
        for (;;) {
          const std::size_t at = next.fetch_add(chunk);
          if (at >= size || first_error.load(std::memory_order_relaxed) != 0) return;
          if (int e = copy_range(dst + at, address + at, std::min(chunk, size - at))) {
            int none = 0;
            first_error.compare_exchange_strong(none, e);
          }
        }
      };
      try {
        std::thread helper(work);
        work();
        helper.join();
      } catch (const std::system_error&) {  // no thread to be had: copy alone
        work();
      }
      err = first_error.load();
    }
    if (err == 0) return;
    if (err == ESRCH) throw remote_unavailable(err, true);
    if (err == EPERM || err == EACCES || err == ENOSYS || err == ENOMEM) throw remote_unavailable(err, false);
    // EFAULT and the like: the worker named memory it does not have, which it never does.
    throw error("pfp: protocol error: the worker's remote frame names memory that cannot be read: " + errno_text(err));
  }
#endif
};

// ---------------------------------------------------------------- the acknowledgement

/// Parent: answers the worker waiting on `word`.
inline void remote_answer(std::atomic<std::uint32_t>& word, std::uint32_t answer) noexcept {
  word.store(answer, std::memory_order_release);
#if defined(__linux__)
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, 1, nullptr, nullptr, 0);
#endif
}

/// Worker: waits for the parent's answer (the parent's death kills the worker: PR_SET_PDEATHSIG).
inline std::uint32_t remote_wait(std::atomic<std::uint32_t>& word) noexcept {
  for (;;) {
    const std::uint32_t v = word.load(std::memory_order_acquire);
    if (v != remote_ack_waiting) return v;
#if defined(__linux__)
    // Shared (not FUTEX_PRIVATE): the word lives in memory both processes map.
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, remote_ack_waiting, nullptr, nullptr, 0);
#else
    ::usleep(50);
#endif
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_REMOTE_HPP
// ---- end <pfp/detail/remote.hpp> ----
// ---- begin <pfp/detail/task_clock.hpp> ----
#ifndef PFP_DETAIL_TASK_CLOCK_HPP
#define PFP_DETAIL_TASK_CLOCK_HPP

// How a worker times its tasks. Every task is timed (Result::duration, the start the parent's
// timeouts count from, and whether it ran long enough to have written on pfp's result pipe), so
// for tasks of a few nanoseconds the clock is most of the cost: steady_clock::now() takes 25-35 ns
// on a virtual machine, the CPU's time-stamp counter half that. Where the counter ticks at a
// constant rate (x86-64 with an invariant TSC), tasks are timed with it, scaled to steady_clock
// nanoseconds by a rate measured in this process over at least a few milliseconds, and re-anchored
// to steady_clock after every long task; until the rate is known, and elsewhere, steady_clock.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// <cpuid.h> is small; the counter is read with the compiler's builtin rather than <x86intrin.h>,
// which alone costs every translation unit that includes pfp about 0.3 s of compile time.
#include <cpuid.h>
#define PFP_DETAIL_HAVE_TSC 1
#else
#define PFP_DETAIL_HAVE_TSC 0
#endif

namespace pfp {
namespace detail {

inline std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class TaskClock {
 public:
  /// In the parent, before forking workers (they inherit what it measured): the first call
  /// measures how long a task must take before it could have written to a pipe; a later call,
  /// once enough time has passed, the counter's rate.
  static void prepare() noexcept { learn_rate(calibration()); }

  /// Called before each batch of tasks: picks the counter up once its rate is known.
  TaskClock() noexcept { refresh(); }
  void refresh() noexcept {
    chained_ = false;
    Calibration& c = calibration();
    learn_rate(c);
    ns_per_tick_ = c.ns_per_tick.load(std::memory_order_relaxed);
    if (ns_per_tick_ > 0) reanchor();
  }

  /// A task starts now: returns when, in steady_clock nanoseconds. With the counter, a task that
  /// follows another with nothing but pfp's own steps in between (see chain()) starts where that
  /// one stopped: one reading per task instead of two, and pfp's few steps counted in its time.
  std::int64_t start() noexcept {
    if (ns_per_tick_ > 0) {
      start_ticks_ = chained_ ? last_stop_ticks_ : ticks();
      if (start_ticks_ - anchor_ticks_ > span_ticks_) reanchor();  // scaled over at most 1 ms
      start_ns_ = anchor_ns_ + scaled(start_ticks_, anchor_ticks_);
    } else {
      start_ns_ = steady_ns();
    }
    return start_ns_;
  }

  /// The task started last ends now: returns how long it took, in nanoseconds.
  std::int64_t stop() noexcept {
    const Calibration& c = calibration();
    if (ns_per_tick_ > 0) {
      const std::uint64_t now = ticks();
      last_stop_ticks_ = now;
      const std::uint64_t took = now - start_ticks_;
      could_write_ = now < start_ticks_ || took >= c.write_floor_ticks;
      if (now < start_ticks_ || took >= long_ticks_) {  // a long task: back to steady_clock's own count
        reanchor();
        return std::max<std::int64_t>(0, anchor_ns_ - start_ns_);
      }
      return static_cast<std::int64_t>(static_cast<double>(took) * ns_per_tick_);
    }
    const std::int64_t took = steady_ns() - start_ns_;
    could_write_ = took >= c.write_floor_ns;
    return took;
  }

  /// Whether the next start() may begin where the last stop() ended: only if what happened in
  /// between was pfp's own work without system calls (false: it reads the clock again).
  void chain(bool chained) noexcept { chained_ = chained; }

  /// Whether the task last stopped took long enough to have written to a pipe. One that took
  /// less did not: the clock's own cost plus half the quickest one-byte pipe write measured here
  /// (half, for a margin against clock-speed changes).
  bool could_have_written() const noexcept { return could_write_; }

 private:
  struct Calibration {
    Calibration() noexcept { measure(*this); }
    std::int64_t write_floor_ns = 0;
    std::uint64_t write_floor_ticks = 0;
    bool counter = false;  // an invariant time-stamp counter
    std::int64_t anchor_ns = 0;
    std::uint64_t anchor_ticks = 0;
    std::atomic<double> ns_per_tick{0};
  };
  static Calibration& calibration() noexcept {
    static Calibration c;  // measured on first use, once per process
    return c;
  }

  static std::uint64_t ticks() noexcept {
#if PFP_DETAIL_HAVE_TSC
    return __builtin_ia32_rdtsc();
#else
    return 0;
#endif
  }

  static bool invariant_counter() noexcept {
#if PFP_DETAIL_HAVE_TSC
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8)) != 0;
#else
    return false;
#endif
  }

  // The quickest of 32 one-byte writes to a pipe, and of 32 clock reads, in both units.
  static void measure(Calibration& c) noexcept {
    c.counter = invariant_counter();
    int fds[2];
    if (::pipe(fds) != 0) return;  // floors stay 0: every task counts as one that could have written
    constexpr std::int64_t never_ns = std::numeric_limits<std::int64_t>::max();
    constexpr std::uint64_t never_ticks = std::numeric_limits<std::uint64_t>::max();
    std::int64_t read_ns = never_ns, write_ns = never_ns;
    std::uint64_t read_ticks = never_ticks, write_ticks = never_ticks;
    for (int i = 0; i < 32; ++i) {
      std::int64_t t0 = steady_ns();
      read_ns = std::min(read_ns, steady_ns() - t0);
      std::uint64_t k0 = ticks();
      read_ticks = std::min(read_ticks, ticks() - k0);
      char byte = 0;
      t0 = steady_ns();
      k0 = ticks();
      const bool wrote = ::write(fds[1], &byte, 1) == 1;
      const std::uint64_t k1 = ticks();
      const std::int64_t t1 = steady_ns();
      if (wrote) {
        write_ns = std::min(write_ns, t1 - t0);
        write_ticks = std::min(write_ticks, k1 - k0);
      }
      [[maybe_unused]] ssize_t drained = ::read(fds[0], &byte, 1);
    }
    ::close(fds[0]);
    ::close(fds[1]);
    if (write_ns == never_ns) return;
    c.write_floor_ns = read_ns + (write_ns - std::min(read_ns, write_ns)) / 2;
    c.write_floor_ticks = read_ticks + (write_ticks - std::min(read_ticks, write_ticks)) / 2;
    read_pair(c.anchor_ns, c.anchor_ticks);
  }

  // A steady_clock reading and the counter's reading at the same moment: of four tries, the one
  // whose two counter readings around it are closest (a preemption between the two clocks would
  // skew the rate and every time scaled with it).
  static void read_pair(std::int64_t& ns, std::uint64_t& at) noexcept {
    std::uint64_t best = std::numeric_limits<std::uint64_t>::max();
    for (int i = 0; i < 4; ++i) {
      const std::uint64_t k0 = ticks();
      const std::int64_t t = steady_ns();
      const std::uint64_t k1 = ticks();
      if (k1 >= k0 && k1 - k0 < best) {
        best = k1 - k0;
        ns = t;
        at = k0 + best / 2;
      }
    }
    if (best == std::numeric_limits<std::uint64_t>::max()) {  // the counter went back: take what there is
      ns = steady_ns();
      at = ticks();
    }
  }

  // The counter's rate, from the anchor to now, once they are 2 ms apart or more.
  static void learn_rate(Calibration& c) noexcept {
    if (!c.counter || c.ns_per_tick.load(std::memory_order_relaxed) > 0 || c.anchor_ns == 0) return;
    if (steady_ns() - c.anchor_ns < 2'000'000) return;
    std::int64_t t;
    std::uint64_t k;
    read_pair(t, k);
    if (k <= c.anchor_ticks) return;
    c.ns_per_tick.store(static_cast<double>(t - c.anchor_ns) / static_cast<double>(k - c.anchor_ticks), std::memory_order_relaxed);
  }

  void reanchor() noexcept {
    read_pair(anchor_ns_, anchor_ticks_);
    long_ticks_ = static_cast<std::uint64_t>(10'000.0 / ns_per_tick_);      // 10 us
    span_ticks_ = static_cast<std::uint64_t>(1'000'000.0 / ns_per_tick_);  // 1 ms
  }

  // Nanoseconds from `from` to `to` (either may come first: the anchor is read after the start of
  // a task that follows another).
  std::int64_t scaled(std::uint64_t to, std::uint64_t from) const noexcept {
    const double d = to >= from ? static_cast<double>(to - from) : -static_cast<double>(from - to);
    return static_cast<std::int64_t>(d * ns_per_tick_);
  }

  double ns_per_tick_ = 0;
  std::int64_t anchor_ns_ = 0;
  std::uint64_t anchor_ticks_ = 0;
  std::uint64_t long_ticks_ = 0;
  std::uint64_t span_ticks_ = 0;
  std::uint64_t start_ticks_ = 0;
  std::int64_t start_ns_ = 0;
  std::uint64_t last_stop_ticks_ = 0;
  bool chained_ = false;
  bool could_write_ = true;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_TASK_CLOCK_HPP
// ---- end <pfp/detail/task_clock.hpp> ----
// ---- begin <pfp/detail/task_table.hpp> ----
#ifndef PFP_DETAIL_TASK_TABLE_HPP
#define PFP_DETAIL_TASK_TABLE_HPP

// The process pool's record of the tasks of a run: every task pulled from the feed and not yet
// delivered, by id, with its Result; and the pending ones (in no worker's queue: retried, taken
// back, or left by a worker that died before it began them) in the order they are to begin.


#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <vector>

namespace pfp {
namespace detail {

class TaskTable {
 public:
  // A task pulled from the feed, or a run of them (Feed::pull_run), not yet all delivered; slots
  // are reused, tickets are not. Task k of a slot has id (ticket << run_bits) | k.
  struct Slot {
    Task task;                  // the first task's fn, and the payload of a single task
    Result result;              // a single task's Result, unless the feed keeps it (places)
    Result* places = nullptr;   // where the feed keeps the Results of a run
    std::uint64_t seq = 0;      // the first task's
    std::uint32_t generation = 0;
    std::uint32_t count = 1;        // tasks in it
    std::uint32_t outstanding = 0;  // tasks of it not yet delivered
  };

  // A ticket is (generation << slot_bits) | slot, never reused within a run; a task's id is its
  // slot's ticket shifted by run_bits plus its place in the slot's run.
  static constexpr unsigned slot_bits = 20;
  static constexpr std::uint64_t slot_mask = (std::uint64_t{1} << slot_bits) - 1;

  std::deque<std::uint64_t> pending;  ///< ids in no worker's queue, in the order they are to begin
  std::size_t live = 0;               ///< tasks pulled and not yet delivered
  std::uint64_t next_seq = 0;         ///< the seq of the next task pulled

  // A fresh slot for count tasks starting at seq next_seq; returns its ticket.
  std::uint64_t new_slot(std::uint32_t count) {
    std::uint32_t index;
    if (!free_slots_.empty()) {
      index = free_slots_.back();
      free_slots_.pop_back();
    } else {
      index = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    live += count;
    Slot& slot = slots_[index];
    slot.seq = next_seq;
    next_seq += count;
    slot.count = slot.outstanding = count;
    slot.places = nullptr;
    ++slot.generation;
    return (std::uint64_t{slot.generation} << slot_bits) | index;
  }

  /// Whether a new slot can be made (ids must stay unique within a run).
  bool has_room() const noexcept { return !free_slots_.empty() || slots_.size() <= slot_mask; }

  /// A task of `id` is delivered: its slot is free once every task of it is.
  void release(std::uint64_t id) {
    --live;
    Slot& slot = slot_of(id);
    if (--slot.outstanding == 0) free_slots_.push_back(static_cast<std::uint32_t>((id >> run_bits) & slot_mask));
  }

  Slot& slot_of(std::uint64_t id) { return slots_[static_cast<std::size_t>((id >> run_bits) & slot_mask)]; }
  const Slot& slot_of(std::uint64_t id) const { return slots_[static_cast<std::size_t>((id >> run_bits) & slot_mask)]; }
  static std::uint32_t place_of(std::uint64_t id) noexcept { return static_cast<std::uint32_t>(id & (max_run - 1)); }
  std::uint64_t seq_of(std::uint64_t id) { return slot_of(id).seq + place_of(id); }
  Result& result_of(std::uint64_t id) {
    Slot& slot = slot_of(id);
    return slot.places ? slot.places[place_of(id)] : slot.result;
  }

  int priority_of(std::uint64_t id) { return slot_of(id).task.priority; }

  // Whether pending task a goes before b: higher priority first, then the order they were pulled.
  bool goes_before(std::uint64_t a, std::uint64_t b) {
    const int pa = priority_of(a), pb = priority_of(b);
    return pa != pb ? pa > pb : seq_of(a) < seq_of(b);
  }

  // Puts tasks that are in no worker's queue (retried, taken back, or held by a worker that
  // died before it began them) with the pending ones, in the order they are to begin.
  void hand_back(std::uint64_t id) {
    pending.insert(std::upper_bound(pending.begin(), pending.end(), id,
                                     [this](std::uint64_t a, std::uint64_t b) { return goes_before(a, b); }),
                    id);
  }
  void hand_back(std::vector<std::uint64_t>& ids) {
    if (ids.empty()) return;
    auto before = [this](std::uint64_t a, std::uint64_t b) { return goes_before(a, b); };
    std::stable_sort(ids.begin(), ids.end(), before);
    if (pending.empty() || goes_before(pending.back(), ids.front())) {
      pending.insert(pending.end(), ids.begin(), ids.end());
      return;
    }
    std::deque<std::uint64_t> merged;
    std::merge(pending.begin(), pending.end(), ids.begin(), ids.end(), std::back_inserter(merged), before);
    pending.swap(merged);
  }

 private:
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_slots_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_TASK_TABLE_HPP
// ---- end <pfp/detail/task_table.hpp> ----
// ---- begin <pfp/detail/testing.hpp> ----
#ifndef PFP_DETAIL_TESTING_HPP
#define PFP_DETAIL_TESTING_HPP

// Hooks for pfp's own fault-injection tests, in one place: each is null (or -1) unless a test sets
// it, and costs one load where it is looked at. Not for ordinary code.

#include <cstdint>

#include <sys/types.h>

namespace pfp {
namespace detail {

/// In a worker process: the descriptor its frames go to (-1 elsewhere), for tests that must write
/// broken frames the way a dying worker would.
inline int worker_result_fd = -1;
/// In a worker process: the index a frame for the running task must carry (its id).
inline std::uint64_t worker_current_ticket = 0;

namespace testing {
/// In the parent: called with the worker's pid when its result stream is found corrupt, before
/// the worker is killed (a test can make the parent slow to react, as a busy machine does).
inline void (*on_corrupt_stream)(pid_t) = nullptr;
/// In a worker: called after a function returned, before its result is handed over (a test can
/// make the hand-over slow, as a busy machine does).
inline void (*after_return)() = nullptr;
}  // namespace testing

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_TESTING_HPP
// ---- end <pfp/detail/testing.hpp> ----
// ---- begin <pfp/detail/worker_end.hpp> ----
#ifndef PFP_DETAIL_WORKER_END_HPP
#define PFP_DETAIL_WORKER_END_HPP

// The parent's end of one worker process: its pipes, its shared region and ring, the bytes read
// and not yet parsed, the task messages not yet written, and the tasks it holds in the order it
// runs them. What it knows of its worker (which task began, when) it reads from the shared block.


#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/types.h>
#include <unistd.h>

namespace pfp {
namespace detail {

/// A task in a worker's queue: its id, and its ordinal among the tasks sent to that worker.
struct QueuedTask {
  std::uint64_t id;
  std::uint32_t ord;
};

struct WorkerEnd {
  using Clock = std::chrono::steady_clock;
  static constexpr std::size_t answered_kept = 64;
  static constexpr std::size_t read_chunk = std::size_t{1} << 16;
  static constexpr std::size_t out_limit = std::size_t{1} << 20;  // payload bytes queued per worker


    pid_t pid = -1;
    UniqueFd pidfd;     // names the process even once someone else reaped it (-1: no pidfds)
    unsigned slot = 0;  // TaskView::worker
    UniqueFd task_w;
    UniqueFd result_r;
    SharedRegion shared;
    RingReader ring;
    std::deque<QueuedTask> queue;  // tasks sent and not yet answered, in the order the worker runs them
    // (id, seq) of the last tasks it answered, oldest first from answered_at once full
    std::array<std::pair<std::uint64_t, std::uint64_t>, answered_kept> answered{};
    std::size_t answered_at = 0;
    Clock::time_point head_since{};  // when the front of the queue became the front
    unsigned sent = 0;         // tasks sent (the next one's ordinal, modulo 2^32)
    int floor_priority = 0;    // lowest priority among the queue's tasks (or lower)
    std::string out;           // task messages not yet written to the task pipe
    std::size_t out_at = 0;    // bytes of out already written
    ReadBuffer buf;            // bytes from the result pipe
    std::size_t have = 0;      // bytes in buf
    std::size_t consumed = 0;  // bytes of buf already parsed

  // Takes back every task it holds and has not begun (see take_back() in wire.hpp), appending
  // their ids to `into` in the order they were sent.
  void take_back_unbegun(std::vector<std::uint64_t>& into) {
    if (pid <= 0 || !shared || queue.empty()) return;
    const std::uint32_t first = take_back(*shared.block(), sent);
    const std::size_t from = into.size();
    while (!queue.empty() && static_cast<std::int32_t>(queue.back().ord - first) >= 0) {
      into.push_back(queue.back().id);
      queue.pop_back();
    }
    std::reverse(into.begin() + static_cast<std::ptrdiff_t>(from), into.end());
  }

  // Writes what the task pipe takes now; the rest waits for POLLOUT.
  void flush_out() {
    while (out_at < out.size()) {
      ssize_t n = ::write(task_w.get(), out.data() + out_at, out.size() - out_at);
      if (n > 0) {
        out_at += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // The worker is gone; its death is noticed on its result pipe and its queue handed back.
      SigpipeBlock::consume_pending();
      out_at = out.size();
      break;
    }
    out.clear();
    out_at = 0;
    if (out.capacity() > out_limit * 4) std::string().swap(out);
  }

  // Reads the pipe once. Returns the bytes read, 0 at EOF, -1 when nothing is there now.
  ssize_t read_pipe(ReadBuffer& spare, std::size_t max_frame) {
    std::size_t want = read_chunk;
    if (have - consumed >= frame_header_size) {
      // Grow towards the frame's size as its bytes arrive, never to what a header merely claims.
      std::uint64_t claimed = 0;
      std::memcpy(&claimed, buf.data() + consumed + 8, sizeof claimed);
      std::size_t held = have - consumed;
      std::size_t missing = claimed > held - frame_header_size ? static_cast<std::size_t>(std::min<std::uint64_t>(
                                                                     claimed - (held - frame_header_size), max_frame))
                                                               : 0;
      want = std::max(want, std::min(missing, std::max(held, read_chunk)));
    }
    if (buf.capacity() == 0 && spare.capacity() >= want) buf = std::move(spare);  // see recycle()
    if (buf.capacity() - have < want && buf.make_room(consumed, have, have - consumed + want)) {
      have -= consumed;
      consumed = 0;
    }
    SharedBlock* block = shared ? shared.block() : nullptr;
    if (block) block->pipe_read_seq.fetch_add(1, std::memory_order_acq_rel);
    ssize_t got = read_some(result_r.get(), buf.data() + have, buf.capacity() - have);
    if (block) {
      if (got > 0) block->pipe_read_total.fetch_add(static_cast<std::uint64_t>(got), std::memory_order_acq_rel);
      block->pipe_read_seq.fetch_add(1, std::memory_order_acq_rel);
    }
    if (got > 0) {
      have += static_cast<std::size_t>(got);
      return got;
    }
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return 0;  // EOF, or an error that means the same
  }

  // The next whole frame in the worker's ring, or an empty view.
  std::string_view ring_frame(std::string& scratch, std::size_t max_frame) {
    return ring_frame(scratch, max_frame, ring.available());
  }
  // ... of the `avail` bytes known to be there.
  std::string_view ring_frame(std::string& scratch, std::size_t max_frame, std::size_t avail) {
    if (avail < frame_header_size) return {};
    std::string_view head = ring.peek(frame_header_size, scratch);
    std::optional<std::size_t> size = frame_size(head, max_frame);
    if (frame_kind(head) != frame_kind_result || *size > avail)
      throw error("pfp: protocol error: a malformed frame in the worker's shared ring");
    return ring.peek(*size, scratch);
  }

  // The next whole frame in the pipe buffer, or an empty view.
  std::string_view pipe_frame(std::size_t max_frame) const {
    std::string_view rest(buf.data() + consumed, have - consumed);
    std::optional<std::size_t> size = frame_size(rest, max_frame);
    return size && rest.size() >= *size ? rest.substr(0, *size) : std::string_view();
  }

  // Doorbells only say "look at the ring".
  void skip_doorbells(std::size_t max_frame) {
    while (have - consumed >= frame_header_size &&
           frame_kind({buf.data() + consumed, frame_header_size}) == frame_kind_doorbell) {
      frame_size({buf.data() + consumed, have - consumed}, max_frame);  // validates the header
      consumed += frame_header_size;
    }
  }

  bool holds(std::uint64_t id) const {
    return std::any_of(queue.begin(), queue.end(), [id](const QueuedTask& q) { return q.id == id; });
  }

  // Whether the worker began the function at the front of its queue, and when.
  std::optional<Clock::time_point> head_began() const {
    if (queue.empty() || !shared) return std::nullopt;
    const SharedBlock* b = shared.block();
    if (b->started.load(std::memory_order_acquire) != queue.front().id + 1) return std::nullopt;
    return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
        std::chrono::nanoseconds(b->started_at_ns.load(std::memory_order_relaxed))));
  }

  // When the front of the queue started running, as well as the parent can tell.
  Clock::time_point head_start() const {
    std::optional<Clock::time_point> began = head_began();
    return began ? std::max(*began, head_since) : head_since;
  }

  // Used when the run is left by an exception: nothing may outlive it.
  void abandon() noexcept {
    if (pid > 0) {
      kill_tree(pid, pidfd.get());
      int ignored = 0;
      reap_child(pid, pidfd.get(), &ignored);
    }
    pidfd.reset();
    shared.reset();
    task_w.reset();
    result_r.reset();
    pid = -1;
  }
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WORKER_END_HPP
// ---- end <pfp/detail/worker_end.hpp> ----
// ---- begin <pfp/detail/worker_process.hpp> ----
#ifndef PFP_DETAIL_WORKER_PROCESS_HPP
#define PFP_DETAIL_WORKER_PROCESS_HPP

// The child side of the process backend: what a forked worker does until it leaves. It reads task
// messages from its inbox (the task pipe), claims each task before it begins it (the parent may
// have taken it back), runs it, and sends its result frame through the shared ring or the result
// pipe (wire.hpp). It runs Options::initializer first and tells the parent how that went in its
// shared block. It leaves only through _exit (after its finalizer and a coverage flush, see
// exit_normally()): when the parent closes the pipe, when it has run Options::max_tasks_per_worker
// tasks, after a task that wrote on pfp's result pipe, or when its initializer failed.


#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace pfp {
namespace detail {


inline void apply_memory_limit(const Options& opt) noexcept {
  if (opt.memory_limit == 0) return;
  rlimit rl{static_cast<rlim_t>(opt.memory_limit), static_cast<rlim_t>(opt.memory_limit)};
  ::setrlimit(RLIMIT_AS, &rl);
}

// RLIMIT_CPU counts the whole process, and a worker runs many functions: before each one the soft
// limit is moved to what the worker has used so far plus the allowance.
inline void arm_cpu_limit(const Options& opt) noexcept {
  if (opt.cpu_limit.count() <= 0) return;
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  rlimit rl{};
  ::getrlimit(RLIMIT_CPU, &rl);
  // Rounded up: the kernel counts whole seconds, so a function gets at least its allowance and at
  // most one second more.
  long usec = static_cast<long>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  rlim_t used = static_cast<rlim_t>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + usec / 1000000 + (usec % 1000000 ? 1 : 0));
  rl.rlim_cur = used + static_cast<rlim_t>(opt.cpu_limit.count());
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max) rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_CPU, &rl);
}


// Runs one task into r (timed by `clock`, started by the caller) and encodes its frame: straight
// into `ring` (reserved there, not yet published) when it fits and is an ordinary frame, else into
// `frame`. Returns how many bytes of the frame wait in the ring for RingWriter::commit (0: the
// frame is in `frame`). Strings of remote_min bytes or more are left in r (a frame_kind_remote
// frame), which must then stay untouched until the parent has answered. r is reused from task to
// task.
inline std::size_t run_one(std::uint64_t id, const TaskView& task, const FeedRunner& run, const Options& opt,
                           std::string& frame, Result& r, TaskClock& clock, std::size_t remote_min = no_remote,
                           RingWriter* ring = nullptr, std::atomic<std::uint64_t>* returned = nullptr) {
  const std::size_t index = static_cast<std::size_t>(id);
  r.function_name.clear();
  if (!r.result.is_null()) r.result = Value();
  r.error.clear();
  r.pid = 0;
  r.attempts = 0;
  r.index = index;
  run_attempt(run, task, opt, r);
  r.duration = std::chrono::nanoseconds(clock.stop());
  if (returned) {
    returned->store(id + 1, std::memory_order_release);
    if (testing::after_return) testing::after_return();
  }
  r.index = index;  // whatever the function did to its Result, the frame names the right task
  try {
    const FramePlan plan = plan_result_frame(r, remote_min);
    if (plan.full_size > opt.max_result_bytes) {
      std::string().swap(frame);
      refuse_result(r, oversized(plan.full_size, opt));
      encode_result_frame_into(r, frame);
      return 0;
    }
    if (ring && plan.kind == frame_kind_result) {
      if (char* at = ring->reserve(plan.size)) {
        write_result_frame(r, plan, at);
        frame.clear();
        return plan.size;
      }
    }
    frame.resize(plan.size);
    write_result_frame(r, plan, frame.data());
  } catch (...) {
    refuse_result(r, unserializable());
    std::string().swap(frame);
    encode_result_frame_into(r, frame);
  }
  return 0;
}

// Every byte ever written to the result pipe: what the parent has read plus what is still queued.
inline std::uint64_t bytes_ever_written(int result_fd, SharedBlock* shared) noexcept {
  for (;;) {
    std::uint64_t seq = shared->pipe_read_seq.load(std::memory_order_acquire);
    if (seq & 1) {  // the parent is in the middle of a read
      sched_yield();
      continue;
    }
    std::uint64_t total = shared->pipe_read_total.load(std::memory_order_acquire);
    int queued = 0;
    if (::ioctl(result_fd, FIONREAD, &queued) != 0) queued = 0;
    if (shared->pipe_read_seq.load(std::memory_order_acquire) == seq) return total + static_cast<std::uint64_t>(queued);
  }
}

// A worker process's life after fork: serve() reads task messages, claims and runs each task,
// and sends its frame, until the parent closes the inbox.
class WorkerProcess {
 public:
  WorkerProcess(int task_fd, int result_fd, SharedBlock* shared, char* ring, const FeedRunner& run, const Options& opt,
                WorkerInfo info)
      : task_fd_(task_fd), result_fd_(result_fd), shared_(shared), ring_out_(shared, ring), run_(run), opt_(opt),
        slot_(info.number), life_(opt, info) {}

  [[noreturn]] void serve() {
    // The parent made both pipes non-blocking; this worker's ends block.
    ::fcntl(task_fd_, F_SETFL, 0);
    ::fcntl(result_fd_, F_SETFL, 0);
#if defined(__linux__) && defined(F_SETPIPE_SZ)
    ::fcntl(result_fd_, F_SETPIPE_SZ, 1 << 20);  // fewer wake-ups for large results
#endif
    worker_result_fd = result_fd_;
    apply_memory_limit(opt_);
    current_worker = &life_.current();  // for the whole life of this process
    start();
    pipe_bytes_ = bytes_ever_written(result_fd_, shared_);
    for (;;) {
      run_messages();
      read_more();
    }
  }

 private:
  // Runs every whole message in the inbox buffer.
  void run_messages() {
    while (have_ - at_ >= task_header_size) {
      const std::uint64_t first_id = word(0), first_seq = word(1), first_fn = word(2), size_word = word(3);
      const bool is_run = (size_word & run_flag) != 0;
      const std::uint64_t payload_size = is_run ? 0 : size_word;
      const std::uint64_t count = is_run ? size_word & ~run_flag : 1;
      if (have_ - at_ - task_header_size < payload_size) return;
      TaskView task;
      task.payload = std::string_view(in_.get() + at_ + task_header_size, static_cast<std::size_t>(payload_size));
      task.worker = slot_;
      at_ += task_header_size + static_cast<std::size_t>(payload_size);  // the payload stays until read_more()
      clock_.refresh();
      for (std::uint64_t k = 0; k < count; ++k) {
        if (!claim_task(*shared_, ordinal_++)) continue;  // the parent took it back: it runs elsewhere
        task.seq = first_seq + k;
        task.fn = first_fn + k;
        run_task(first_id + k, task);
      }
      if (count > 1) ring_bell();  // the parent collects a run's results while the next one runs
    }
  }

  // Runs one claimed task and sends its frame; leaves after it when it must.
  void run_task(std::uint64_t id, const TaskView& task) {
    arm_cpu_limit(opt_);
    shared_->started_at_ns.store(clock_.start(), std::memory_order_relaxed);
    shared_->started.store(id + 1, std::memory_order_release);
    worker_current_ticket = id;
    const bool remote = !remote_refused_ && shared_->remote_allowed.load(std::memory_order_relaxed) != 0;
    const std::size_t in_ring = run_one(id, task, run_, opt_, frame_, r_, clock_, remote ? remote_min_size : no_remote,
                                        &ring_out_, &shared_->returned);
    // A task that took less time than a write to a pipe takes cannot have written there: trivial
    // tasks skip the look (itself a system call).
    const bool look = clock_.could_have_written();
    const bool wrote_on_pipe = look && wrote_on_result_pipe(id);
    // What the function printed appears even though the worker leaves by _exit.
    bool quiet = !flush_standard_streams() && !look;
    quiet = send_frame(in_ring) && quiet;
    ++done_;
    if (wrote_on_pipe || (opt_.max_tasks_per_worker && done_ >= opt_.max_tasks_per_worker)) {
      ring_bell();
      exit_normally();
    }
    clock_.chain(quiet && opt_.cpu_limit.count() <= 0);  // what pfp's system calls in between take is nobody's run time
  }

  // Only the parent reads the result pipe, so its byte count can grow during a task only if the
  // task (or something it started) wrote to it. Such a task is the culprit of whatever the parent
  // finds on the pipe: the worker then leaves after that task's frame instead of starting another,
  // so however late the parent looks, the task it finds running is the culprit or one that never
  // began (and runs elsewhere, once), never an innocent one caught half-way.
  bool wrote_on_result_pipe(std::uint64_t id) {
    const std::uint64_t now_written = bytes_ever_written(result_fd_, shared_);
    const bool wrote = now_written > pipe_bytes_;
    if (wrote) {
      std::uint64_t none = 0;
      shared_->corrupted_by.compare_exchange_strong(none, id + 1);
    }
    pipe_bytes_ = now_written;
    return wrote;
  }

  // Sends the frame run_one() made: published in the ring already (in_ring bytes), or a remote
  // frame the parent copies from, or into the ring, or through the pipe. Returns true if it took
  // no system call.
  bool send_frame(std::size_t in_ring) {
    bool quiet = true;
    if (in_ring) {
      ring_out_.commit(in_ring);
      bell_owed_ = true;
    } else if (frame_kind(frame_) == frame_kind_remote) {
      quiet = false;
      // The big strings stay in r_ until the parent has copied them.
      shared_->remote_ack.store(remote_ack_waiting, std::memory_order_relaxed);
      send(frame_.data(), frame_.size());
      if (remote_wait(shared_->remote_ack) == remote_ack_refused) {
        remote_refused_ = true;
        encode_result_frame_into(r_, frame_);  // within the limit: it was checked with the strings counted
      } else {
        frame_.clear();
      }
    }
    if (!r_.result.is_null()) r_.result = Value();
    if (in_ring || frame_.empty()) {
      // published above, or delivered from the worker's memory
    } else if (ring_out_.put(frame_)) {
      bell_owed_ = true;
    } else {
      quiet = false;
      send(frame_.data(), frame_.size());
    }
    if (frame_.capacity() > ring_frame_limit) std::string().swap(frame_);  // do not sit on a big result's memory
    return quiet;
  }

  // Keeps the partial message, makes room for the rest of it, and waits for more; leaves when
  // the parent closed the inbox (or died).
  void read_more() {
    if (at_ > 0) {
      std::memmove(in_.get(), in_.get() + at_, have_ - at_);
      have_ -= at_;
      at_ = 0;
    }
    std::size_t want = std::size_t{1} << 16;
    if (have_ >= task_header_size) want = std::max<std::size_t>(want, static_cast<std::size_t>(task_header_size + word(3) - have_));
    // Fit the buffer to what is needed: grown for a big payload, given back after one.
    if (in_size_ - have_ < want || (in_size_ > (std::size_t{4} << 20) && have_ + want < in_size_ / 4)) {
      std::unique_ptr<char[]> bigger(new char[have_ + want]);
      std::memcpy(bigger.get(), in_.get(), have_);
      in_ = std::move(bigger);
      in_size_ = have_ + want;
    }
    ring_bell();  // about to wait for work: let the parent collect what is in the ring
    const ssize_t got = read_some(task_fd_, in_.get() + have_, in_size_ - have_);
    if (got <= 0) exit_normally();
    have_ += static_cast<std::size_t>(got);
  }

  void send(const char* data, std::size_t n) {
    if (!write_all(result_fd_, data, n)) exit_normally();  // the parent is gone
    pipe_bytes_ += n;
  }

  // Runs the initializer. If it throws, the parent reads why in the shared block, and the worker
  // leaves without running anything (nor the finalizer: it never started).
  void start() {
    std::string why;
    if (life_.begin(why)) {
      shared_->start_state.store(worker_ready, std::memory_order_release);
      return;
    }
    const std::size_t n = std::min(why.size(), sizeof shared_->start_error - 1);
    std::memcpy(shared_->start_error, why.data(), n);
    shared_->start_error[n] = '\0';
    shared_->start_state.store(worker_start_failed, std::memory_order_release);
    flush_coverage();
    flush_stdio();
    leave(0);
  }

  // Every way a worker leaves on its own: finalizer (with the worker's state), coverage data,
  // buffered output, then _exit.
  [[noreturn]] void exit_normally() noexcept {
    life_.end();
    flush_coverage();
    flush_stdio();
    leave(0);
  }

  void ring_bell() {
    if (!bell_owed_) return;
    bell_owed_ = false;
    const std::string_view bell = doorbell_frame();
    send(bell.data(), bell.size());
  }

  std::uint64_t word(std::size_t k) const {
    std::uint64_t v;
    std::memcpy(&v, in_.get() + at_ + k * sizeof v, sizeof v);
    return v;
  }

  const int task_fd_;
  const int result_fd_;
  SharedBlock* const shared_;
  RingWriter ring_out_;
  const FeedRunner& run_;
  const Options& opt_;
  const unsigned slot_;
  WorkerLife life_;
  std::size_t in_size_ = std::size_t{1} << 16;
  std::unique_ptr<char[]> in_{new char[in_size_]};  // grown without zero-filling: only bytes read are touched
  std::size_t have_ = 0;        // bytes in in_
  std::size_t at_ = 0;          // bytes of in_ already run
  unsigned done_ = 0;           // tasks run
  std::uint32_t ordinal_ = 0;   // of the next task in the inbox (see claim_task)
  bool bell_owed_ = false;      // frames in the ring the parent has not been told about
  bool remote_refused_ = false;  // the parent could not read this worker's memory
  // Every byte ever written to the result pipe, as of the last look, plus what this worker wrote
  // since: more than that after a task means the task (or something it started) wrote there.
  std::uint64_t pipe_bytes_ = 0;
  std::string frame_;
  Result r_;  // reused from task to task
  TaskClock clock_;
};

[[noreturn]] inline void worker_loop(int task_fd, int result_fd, SharedBlock* shared, char* ring, const FeedRunner& run,
                                     const Options& opt, WorkerInfo info) {
  WorkerProcess(task_fd, result_fd, shared, ring, run, opt, info).serve();
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_WORKER_PROCESS_HPP
// ---- end <pfp/detail/worker_process.hpp> ----

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

namespace pfp {
namespace detail {

using Clock = std::chrono::steady_clock;

class Pool {
 public:
  Pool(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel = nullptr)
      : run_(run), options_(options), feed_(feed), cancel_(cancel) {}

  ~Pool() {
    for (auto& w : workers_) w->abandon();
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Runs the feed to its end: every task pulled gets exactly one delivered Result.
  /// Throws pfp::error if no worker process can be started at all, and rethrows what the feed's
  /// pull() or deliver() threw (after every task it had given was delivered or cancelled).
  void run() {
    check_threads(options_);
    SigpipeBlock sigpipe_block;
    SigchldDefault sigchld_default;
    signal_plan_ = SignalPlan::learn();
    bind_worker_calls();
    TaskClock::prepare();  // measured here, not in every worker
    target_workers_ = effective_workers(options_, feed_.size_hint());
    if (feed_.size_hint() && *feed_.size_hint() == 0) return;

    spawn_missing();
    if (!workers_.empty()) {
      try {
        feed_.workers_started();
      } catch (...) {
        consumer_failed();
      }
    }
    if (workers_.empty()) {
      feed_.drop_rest("not run: could not start a worker process: " + last_spawn_error_);
      throw error("pfp: could not start any worker process: " + last_spawn_error_);
    }

    while (turn()) {
    }
    shutdown();
    if (consumer_error_) std::rethrow_exception(consumer_error_);
    if (source_error_) std::rethrow_exception(source_error_);
  }

 private:
  using Worker = WorkerEnd;
  using Queued = QueuedTask;

  // One turn of the main loop: hand out work, wait for something to happen, and act on it.
  // Returns false once the run is over (every task delivered, or the run stopped).
  bool turn() {
    if ((cancel_ && cancel_->requested()) || consumer_error_ || stop_requested()) {
      cancel_everything();
      return false;
    }
    feed_waiting_ = false;
    dispatch();
    if (tasks_.live == 0 && tasks_.pending.empty() && feed_exhausted()) return false;
    const int ready = wait_for_events();
    serve_ready(ready);
    serve_side();
    look_into_busy_rings();
    const auto now = Clock::now();
    enforce_timeouts(now);
    if (ready == 0 || now - last_sweep_ >= sweep_interval) sweep_exited(now);
    remove_dead();
    leaving_.collect([this](Retired&& r) { recycle(std::move(r.shared)); });
    spawn_missing();
    if (workers_.empty() && leaving_.empty() && (!tasks_.pending.empty() || !feed_exhausted())) give_up();
    return true;
  }

  // Sleeps in poll() until a worker sends, a task pipe takes more, the feed or the cancel line
  // wakes it, a retired worker exits, or the next deadline. Returns poll()'s count.
  int wait_for_events() {
    poll_fds_.clear();
    polled_.clear();
    if (cancel_ && cancel_->wake_fd() >= 0) poll_fds_.push_back(pollfd{cancel_->wake_fd(), POLLIN, 0});
    if (feed_waiting_ && feed_.wake_fd() >= 0) poll_fds_.push_back(pollfd{feed_.wake_fd(), POLLIN, 0});
    side_at_ = feed_.side_fd() >= 0 ? poll_fds_.size() : std::numeric_limits<std::size_t>::max();
    if (feed_.side_fd() >= 0) poll_fds_.push_back(pollfd{feed_.side_fd(), POLLIN, 0});
    leaving_.append_poll_fds(poll_fds_);  // wake-ups only: a retired worker has exited
    polled_.resize(poll_fds_.size(), nullptr);
    for (auto& w : workers_) {
      if (!w->result_r) continue;
      poll_fds_.push_back(pollfd{w->result_r.get(), POLLIN, 0});
      polled_.push_back(w.get());
      if (w->out_at < w->out.size() && w->task_w) {
        poll_fds_.push_back(pollfd{w->task_w.get(), POLLOUT, 0});
        polled_.push_back(w.get());
      }
    }
    const int rc = poll_fds(poll_fds_.data(), poll_fds_.size(), poll_timeout_ms());
    if (rc < 0 && errno != EINTR) throw_errno("poll");
    return rc;
  }

  // Reads the result pipes that have something and writes to the task pipes that take more.
  void serve_ready(int ready) {
    if (ready <= 0) return;
    for (std::size_t k = 0; k < poll_fds_.size(); ++k) {
      if (!poll_fds_[k].revents || !polled_[k]) continue;
      if (poll_fds_[k].events == POLLOUT) {
        if (polled_[k]->pid > 0) polled_[k]->flush_out();
      } else {
        read_from(*polled_[k]);
      }
    }
  }

  // What tasks sent besides their results (Feed::side_fd) goes to the feed as it comes; then the
  // feed's requests about tasks it gave (pool_control.hpp).
  void serve_side() {
    if (side_at_ >= poll_fds_.size() || !poll_fds_[side_at_].revents) {
      if (!withdrawing_.empty()) serve_requests();
      return;
    }
    try {
      feed_.side_ready();
      serve_requests();
    } catch (...) {
      consumer_failed();
    }
  }

  // ---- requests of the feed about tasks it gave (pool_control.hpp)

  void serve_requests();
  // Stops task `seq` if this run still holds it; false while it cannot tell yet.
  bool withdraw(std::uint64_t seq);
  // Delivers pending task `id` cancelled, by request, without it having run.
  void deliver_withdrawn(std::uint64_t id);
  void report_workers();

  // A worker rings its doorbell only when it runs out of work, so results it finished before a
  // long task it holds would wait for that task: look into the rings of busy workers too.
  void look_into_busy_rings() {
    for (auto& w : workers_)
      if (w->pid > 0 && w->queue.size() > 1 && w->ring.available() >= frame_header_size) collect(*w);
  }

  // Workers that exited without closing their pipe first (their descendants hold it open).
  void sweep_exited(Clock::time_point now) {
    last_sweep_ = now;
    for (auto& w : workers_)
      if (w->pid > 0 && has_exited(w->pid, w->pidfd.get())) worker_ended(*w);
  }

  static constexpr std::size_t read_chunk = WorkerEnd::read_chunk;
  static constexpr std::size_t out_limit = WorkerEnd::out_limit;
  static constexpr std::size_t answered_kept = WorkerEnd::answered_kept;

  static constexpr auto sweep_interval = std::chrono::milliseconds(50);
  static constexpr auto ring_check_interval = std::chrono::milliseconds(2);
  // A task that has run this long (or four times the mean, if longer) no longer holds others back.
  static constexpr auto stuck_after = std::chrono::milliseconds(1);
  // Once a function returned within Options::timeout, the hand-over of its result gets this long
  // (or ten times the timeout, if longer) before the worker is killed.
  static constexpr auto handover_guard = std::chrono::seconds(10);
  const FeedRunner& run_;
  const Options& options_;
  Feed& feed_;
  CancelState* cancel_;
  std::vector<std::unique_ptr<Worker>> workers_;
  TaskTable tasks_;
  std::vector<std::uint64_t> struck_;  // ids of tasks already run again once after a corrupt stream
  bool task_timeouts_ = false;  // some task has a time limit of its own (Task::timeout)
  std::vector<std::uint64_t> withdrawing_;  // seqs the feed wants stopped, not yet settled (pool_control.hpp)
  std::vector<WorkerView> views_;           // kept: what Feed::report() is given
  bool feed_done_ = false;     // pull() gave nothing and finished() said so
  bool feed_waiting_ = false;  // pull() gave nothing for now
  std::exception_ptr source_error_;    // pull() threw: no more tasks; those given finish
  std::exception_ptr consumer_error_;  // deliver(), amend() or stop_requested() threw: the run stops
  unsigned target_workers_ = 1;
  double mean_duration_ns_ = -1;  // running mean of what workers report, to size the pipeline
  std::int64_t durations_ns_ = 0;  // durations reported since the mean was last updated ...
  std::size_t durations_ = 0;      // ... and how many
  bool runs_seen_ = false;        // the feed gives runs of tasks
  std::string last_spawn_error_;
  int last_spawn_errno_ = 0;  // of the last failed start, 0 if it was no system call's
  SlotStarts starts_;    // each worker number's starts (Options::initializer)
  std::string broken_;   // why the run is broken (no worker can start), or empty
  SignalPlan signal_plan_;               // what a new worker resets of this thread's signal state
  std::vector<int> close_in_child_;      // descriptors a new worker closes
  std::vector<SharedRegion> spare_regions_;  // regions of gone workers, for new ones
  ReadBuffer spare_buf_;                     // a gone worker's read buffer, for a new one
  struct Retired {
    SharedRegion shared;
    UniqueFd result_r;
  };
  Leaving<Retired> leaving_;             // retired workers not yet reaped
  std::string scratch_;  // a ring frame that wraps around the end of the ring
  std::vector<std::uint64_t> taken_back_;  // kept: no allocation per take-back
  std::vector<Worker*> dispatch_order_;    // kept: no allocation per dispatch ...
  std::vector<Worker*> dispatched_;        // ... nor per message
  std::vector<pollfd> poll_fds_;           // what wait_for_events() polls ...
  std::vector<Worker*> polled_;            // ... and whose each is (null: not a worker's)
  std::size_t side_at_ = 0;                // where in poll_fds_ Feed::side_fd is (SIZE_MAX: not there)
  Clock::time_point last_sweep_ = Clock::now();

  bool feed_exhausted() const noexcept { return feed_done_ || source_error_; }

  void consumer_failed() noexcept {
    if (!consumer_error_) consumer_error_ = std::current_exception();
  }

  bool stop_requested() {
    try {
      return feed_.stop_requested();
    } catch (...) {
      consumer_failed();
      return true;
    }
  }

  // ---- the feed

  bool may_pull() const noexcept {
    return !feed_exhausted() && !feed_waiting_ && tasks_.has_room();
  }

  // Pulls one task from the feed into a new slot; returns its id, or nullopt.
  std::optional<std::uint64_t> pull_one() {
    if (!may_pull()) return std::nullopt;
    std::optional<Task> task;
    try {
      task = feed_.pull();
      if (!task) {
        if (feed_.finished())
          feed_done_ = true;
        else
          feed_waiting_ = true;
        return std::nullopt;
      }
    } catch (...) {
      source_error_ = std::current_exception();
      return std::nullopt;
    }
    const std::uint64_t ticket = tasks_.new_slot(1);
    TaskTable::Slot& slot = tasks_.slot_of(ticket << run_bits);
    slot.task = std::move(*task);
    task_timeouts_ = task_timeouts_ || slot.task.timeout.count() > 0;
    // A reused slot's Result was moved out by deliver(): put back only what a move may leave.
    Result& r = slot.result;
    r.index = static_cast<std::size_t>(slot.seq);
    r.status = Status::cancelled;
    if (!r.result.is_null()) r.result = Value();
    r.error.clear();
    r.pid = 0;
    r.duration = {};
    r.attempts = 0;
    return ticket << run_bits;
  }

  // Pulls up to max tasks as one run (Feed::pull_run) into a new slot; returns the first id, or
  // nullopt when the feed gives none that way.
  std::optional<std::uint64_t> pull_run(std::size_t max) {
    if (!may_pull() || max < 2) return std::nullopt;
    std::uint64_t first_fn = 0;
    Result* places = nullptr;
    std::size_t n = 0;
    try {
      n = feed_.pull_run(static_cast<std::size_t>(std::min<std::uint64_t>(max, max_run)), first_fn, places);
    } catch (...) {
      source_error_ = std::current_exception();
      return std::nullopt;
    }
    if (n == 0) return std::nullopt;
    runs_seen_ = true;
    const std::uint64_t ticket = tasks_.new_slot(static_cast<std::uint32_t>(n));
    TaskTable::Slot& slot = tasks_.slot_of(ticket << run_bits);
    slot.task.fn = first_fn;
    slot.task.priority = 0;
    slot.places = places;
    return ticket << run_bits;
  }

  void deliver(std::uint64_t id) {
    TaskTable::Slot& slot = tasks_.slot_of(id);
    if (!slot.places) {
      try {
        feed_.deliver(slot.seq, std::move(slot.result));
      } catch (...) {
        consumer_failed();
      }
      if (slot.task.payload.capacity() > 4096)
        std::string().swap(slot.task.payload);
      else
        slot.task.payload.clear();
    } else {
      try {
        feed_.placed(slot.seq + TaskTable::place_of(id));
      } catch (...) {
        consumer_failed();
      }
    }
    tasks_.release(id);
  }

  // ---- starting workers

  void spawn_missing();

  unsigned free_slot() const;

  bool spawn_one();

  // Every worker failed to start or died and none can be started again: the tasks that never
  // ran say why instead of hanging the run.
  void give_up();

  // Workers whose initializer still runs (see pool_starts.hpp).
  bool starting(const Worker& w) const;
  void watch_starts();
  bool start_failed(Worker& w);
  void note_started(const Worker& w);
  void start_lost(Worker& w, const std::string& why);
  void fail_rest(const std::string& why);
  std::chrono::milliseconds leave_grace() const;

  // ---- handing out work

  // How many tasks a worker may hold at once: enough work in flight (about 4 ms) that the worker
  // never waits for the parent between two tasks, which looks at busy workers every 2 ms, at least
  // two so the next task is there when one ends, and never more than a fair share of what is known
  // to be left. Deep queues cost nothing when a task runs long: the tasks behind it are taken back
  // (rebalance()).
  unsigned depth() const {
    if (mean_duration_ns_ < 0) return 1;
    double d = 4'000'000.0 / std::max(mean_duration_ns_, 1.0);
    const unsigned most = runs_seen_ ? max_run_pipeline_depth : max_pipeline_depth;
    auto depth = static_cast<std::size_t>(std::clamp(d, 2.0, static_cast<double>(most)));
    if (std::optional<std::size_t> hint = feed_.size_hint()) {
      std::size_t left = tasks_.pending.size() + (*hint > tasks_.next_seq ? *hint - static_cast<std::size_t>(tasks_.next_seq) : 0);
      std::size_t live = std::max<std::size_t>(workers_.size(), 1);
      std::size_t fair = (left + live - 1) / live;
      depth = std::max<std::size_t>(1, std::min(depth, fair + 1));
    }
    return static_cast<unsigned>(depth);
  }

  // Folds the durations reported since the last call into the running mean (each one weighing
  // 1/8, as if added one by one): once per batch of results, not once per result.
  void update_mean_duration() {
    if (durations_ == 0) return;
    const double batch = static_cast<double>(durations_ns_) / static_cast<double>(durations_);
    const double kept = durations_ >= 64 ? 0.0 : std::pow(0.875, static_cast<double>(durations_));
    mean_duration_ns_ = mean_duration_ns_ < 0 ? batch : mean_duration_ns_ * kept + batch * (1 - kept);
    durations_ns_ = 0;
    durations_ = 0;
  }

  // A worker is stuck when the task it runs has run much longer than tasks usually do: it gets no
  // more work, and what it holds that has not begun goes to the others.
  bool stuck(const Worker& w, Clock::time_point now) const {
    if (w.queue.empty()) return false;
    const std::optional<Clock::time_point> began = w.head_began();
    if (!began) return false;
    const auto usual = std::chrono::nanoseconds(static_cast<std::int64_t>(4 * std::max(mean_duration_ns_, 0.0)));
    return now - *began > std::max<Clock::duration>(stuck_after, usual);
  }

  // Takes back every task w holds and has not begun (the worker skips them when it comes to them)
  // and puts them with the pending ones. Exactly one side wins each task: see take_back().
  std::size_t take_back_from(Worker& w) {
    std::vector<std::uint64_t>& back = taken_back_;
    back.clear();
    w.take_back_unbegun(back);
    w.floor_priority = std::numeric_limits<int>::max();
    for (const Queued& q : w.queue) w.floor_priority = std::min(w.floor_priority, tasks_.slot_of(q.id).task.priority);
    tasks_.hand_back(back);
    return back.size();
  }

  // Moves work that waits where it should not: behind a task that runs long while another worker
  // could begin it, in a busy worker while another one is idle, or ahead of a higher priority.
  void rebalance(Clock::time_point now) {
    std::optional<int> wanted = feed_.next_priority();
    if (!tasks_.pending.empty() && (!wanted || tasks_.priority_of(tasks_.pending.front()) > *wanted)) wanted = tasks_.priority_of(tasks_.pending.front());
    if (workers_.size() < 2 && !wanted) return;
    std::size_t idle = 0, free_to_work = 0;
    for (auto& w : workers_) {
      if (!may_receive(*w)) continue;
      idle += w->queue.empty();
      free_to_work += !stuck(*w, now);
    }
    const bool nothing_else = tasks_.pending.empty() && (feed_exhausted() || feed_waiting_);
    for (auto& w : workers_) {
      if (w->pid <= 0 || w->queue.empty() || (w->queue.size() == 1 && w->head_began())) continue;
      const bool blocks = free_to_work > 0 && stuck(*w, now);
      const bool starves = idle > 0 && nothing_else && w->queue.size() > 1;
      const bool outranked = wanted && *wanted > w->floor_priority;
      if (blocks || starves || outranked) take_back_from(*w);
    }
  }

  // Whether w may be sent more tasks (alive, and below Options::max_tasks_per_worker).
  bool may_receive(const Worker& w) const {
    return w.pid > 0 && w.task_w && (!options_.max_tasks_per_worker || w.sent < options_.max_tasks_per_worker);
  }

  // Hands out work one message at a time, always to the least loaded worker that may take more,
  // so a new task goes where it begins soonest; nothing to a stuck worker.
  void dispatch() {
    update_mean_duration();
    const auto now = Clock::now();
    rebalance(now);
    const unsigned limit = depth();
    std::vector<Worker*>& open = dispatch_order_;
    open.clear();
    for (auto& w : workers_)
      if (may_receive(*w) && !stuck(*w, now)) open.push_back(w.get());
    std::vector<Worker*>& given = dispatched_;
    given.clear();
    while (!open.empty()) {
      const auto least = std::min_element(open.begin(), open.end(),
                                          [](const Worker* a, const Worker* b) { return a->queue.size() < b->queue.size(); });
      Worker& w = **least;
      const std::size_t room = room_in(w, limit);
      if (room == 0) {
        open.erase(least);
        continue;
      }
      if (!hand_one(w, room)) break;  // nothing to hand out now
      if (std::find(given.begin(), given.end(), &w) == given.end()) given.push_back(&w);
    }
    for (Worker* w : given) w->flush_out();
  }

  // How many more tasks w may be given now.
  std::size_t room_in(const Worker& w, unsigned limit) const {
    if (w.queue.size() >= limit || w.out.size() - w.out_at >= out_limit) return 0;
    std::size_t room = limit - w.queue.size();
    if (options_.max_tasks_per_worker)
      room = w.sent >= options_.max_tasks_per_worker ? 0 : std::min<std::size_t>(room, options_.max_tasks_per_worker - w.sent);
    return room;
  }

  // Queues for w the next task (or run of up to `room` tasks): a pending one or one from the
  // feed, whichever has the higher priority (pending first on a tie). False if there is none.
  bool hand_one(Worker& w, std::size_t room) {
    const std::optional<int> feed_priority = tasks_.pending.empty() ? std::nullopt : feed_.next_priority();
    if (!tasks_.pending.empty() && !(feed_priority && *feed_priority > tasks_.priority_of(tasks_.pending.front()))) {
      send_pending(w);
    } else if (std::optional<std::uint64_t> run = pull_run(room)) {
      send_tasks(w, *run, tasks_.slot_of(*run).count);
    } else if (std::optional<std::uint64_t> id = pull_one()) {
      send_tasks(w, *id, 1);
    } else if (!tasks_.pending.empty()) {
      send_pending(w);
    } else {
      return false;
    }
    return true;
  }

  void send_pending(Worker& w) {
    const std::uint64_t id = tasks_.pending.front();
    tasks_.pending.pop_front();
    send_tasks(w, id, 1);
  }

  // Queues one message for w: the task `first_id`, or the `count` tasks of a run from it.
  void send_tasks(Worker& w, std::uint64_t first_id, std::uint32_t count) {
    const TaskTable::Slot& slot = tasks_.slot_of(first_id);
    const std::uint32_t k = TaskTable::place_of(first_id);
    if (w.queue.empty()) w.head_since = Clock::now();
    if (w.queue.empty() || slot.task.priority < w.floor_priority) w.floor_priority = slot.task.priority;
    for (std::uint32_t i = 0; i < count; ++i) w.queue.push_back(Queued{first_id + i, w.sent + i});
    w.sent += count;
    const std::uint64_t header[4] = {first_id, slot.seq + k, slot.task.fn + k,
                                     count > 1 ? run_flag | count : slot.task.payload.size()};
    w.out.append(reinterpret_cast<const char*>(header), sizeof header);
    if (count == 1) w.out.append(slot.task.payload);
  }

  // ---- receiving results

  // A frame carries a little more than its Value; saturate so "no limit" (SIZE_MAX) stays that.
  std::size_t max_frame() const noexcept;

  void read_from(Worker& w);

  // Reads what a worker left before it is declared dead, so no finished result is lost.
  void drain(Worker& w);

  // Takes every complete frame, from the ring or the pipe, in the order the worker ran them.
  // Returns false if the worker is gone (killed for a protocol error, or retired).
  bool collect(Worker& w);

  // A result whose big strings are still in the worker's memory: copy them, then let the worker go
  // on. If the kernel will not let this process read the worker's memory, the worker is told to
  // send the result through the pipe instead (and no worker tries again). If the worker died before
  // its memory was read, the result is lost with it: its death is noticed on its pipe, and the task
  // it was running is reported as crashed.
  void take_remote(Worker& w, std::string_view frame);

  // The worker's stream is corrupt: something wrote on its result pipe that the worker did not
  // (a function writing to descriptors it does not own, a process it left behind), or its ring was
  // overwritten. The worker is killed; every whole frame in its ring was written by the worker
  // itself and is kept. The worker notes which function wrote on its pipe; if that was not the
  // one it was running when killed, the running one is innocent and runs again elsewhere.
  void protocol_failure(Worker& w, const std::string& why);

  bool retire_if_done(Worker& w);

  // The whole frame for the task at the front of w's queue: its verdict, decoded in place.
  // Throws pfp::error if the frame is malformed (the caller declares the stream corrupt).
  void accept(Worker& w, std::string_view frame, RemoteSource* remote = nullptr);

  // The task at the front of w's queue has its verdict in its Result (but for the pid).
  void accepted(Worker& w);

  std::uint64_t tainted_task(const Worker& w) const noexcept;
  void withhold_if_tainted(const Worker& w, Result& r) const;
  static constexpr const char* tainted_suffix = " (this function wrote to pfp's result pipe)";
  static constexpr const char* tainted_why =
      "pfp: protocol error: bytes pfp did not write appeared on the worker's result pipe while this function ran, "
      "so its result was withheld (this function wrote to pfp's result pipe)";

  // One attempt of a task reached a verdict: it is final unless the options ask to try again.
  void conclude(std::uint64_t id);

  // Stops the run: running functions are killed with their workers, the rest never start.
  void cancel_everything();

  // ---- ending workers

  // Hands a dead or killed worker's unfinished functions back: the one it was running gets the
  // verdict; the ones queued behind it never started and go back to the front of the line.
  void settle_queue(Worker& w, Status status, const std::string& why);

  // A gone worker's shared region serves the next one (see SharedRegion::renew).
  void recycle(SharedRegion&& region);

  // Called once the worker's process is gone (reaped), or its region moved out.
  void close_pipes(Worker& w);

  // The worker died on its own (EOF on its pipe, or found exited by the sweep).
  void worker_ended(Worker& w);

  void kill_worker(Worker& w, Status status, const std::string& why);

  // A worker that has run its allowance of functions leaves right after its last frame. It is
  // reaped once it has exited (Leaving, woken by its pidfd), not waited for: the parent serves the
  // other workers meanwhile, and starts the successor as soon as it is gone. Its region and result
  // pipe are kept until then (it may still ring its doorbell).
  void retire(Worker& w);

  std::chrono::milliseconds time_limit(std::uint64_t id) const;

  // When the function at the front of w's queue is out of time: Options::timeout after it began,
  // plus the hand-over guard once it has returned (then only the parent's reading remains).
  Clock::time_point deadline(const Worker& w) const;

  void enforce_timeouts(Clock::time_point now);

  int poll_timeout_ms() const;

  void remove_dead();

  void shutdown();

};

/// Runs `feed` on worker processes (the Backend::processes backend). See Pool::run().
inline void run_feed_processes(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel) {
  Pool pool(run, options, feed, cancel);
  pool.run();
}

}  // namespace detail
}  // namespace pfp

// ---- begin <pfp/detail/pool_endings.hpp> ----
#ifndef PFP_DETAIL_POOL_ENDINGS_HPP
#define PFP_DETAIL_POOL_ENDINGS_HPP

// The process pool, continued: how workers end. A worker that died, hung past its deadline, ran
// its allowance or was cancelled is reaped with everything it started; the task it was running
// gets the verdict, the ones it held and never began go back to the pending ones. Part of
// pool.hpp, which includes it at its end.


namespace pfp {
namespace detail {

// Hands a dead or killed worker's unfinished functions back: the one it was running gets the
// verdict; the ones queued behind it never started and go back to the front of the line.
inline void Pool::settle_queue(Worker& w, Status status, const std::string& why) {
  if (w.queue.empty()) return;
  // A head that never began is innocent even of a timeout: the worker was stuck in a task
  // that had already delivered its result (or in flushing its output), not in this one.
  const bool began = w.head_began().has_value();
  if (began) {
    const std::uint64_t id = w.queue.front().id;
    Result& r = tasks_.result_of(id);
    r.status = status;
    r.error = why;
    r.result = Value();
    r.pid = static_cast<int>(w.pid);
    if (status == Status::timed_out || status == Status::cancelled)
      r.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - w.head_start());
    w.queue.pop_front();
    if (status == Status::cancelled) {
      ++r.attempts;
      deliver(id);
    } else {
      conclude(id);
    }
  }
  // Otherwise it died between tasks: nothing it held had started.
  std::vector<std::uint64_t> never_began;
  for (const Queued& q : w.queue) never_began.push_back(q.id);
  w.queue.clear();
  tasks_.hand_back(never_began);
}

// A gone worker's shared region serves the next one (see SharedRegion::renew).
inline void Pool::recycle(SharedRegion&& region) {
  if (region && spare_regions_.size() < target_workers_) spare_regions_.push_back(std::move(region));
  region.reset();
}

// Called once the worker's process is gone (reaped), or its region moved out.
inline void Pool::close_pipes(Worker& w) {
  note_started(w);
  recycle(std::move(w.shared));
  if (w.buf.capacity() == read_chunk && spare_buf_.capacity() == 0) spare_buf_ = std::move(w.buf);  // for the next worker
  w.ring = RingReader();
  w.task_w.reset();
  w.result_r.reset();
  w.buf.release();
  std::string().swap(w.out);
  w.have = w.consumed = w.out_at = 0;
  w.pid = -1;
  w.pidfd.reset();
}

// The worker died on its own (EOF on its pipe, or found exited by the sweep).
inline void Pool::worker_ended(Worker& w) {
  if (w.pid <= 0) return;
  drain(w);
  if (w.pid <= 0 || start_failed(w)) return;
  if (w.queue.empty()) {
    w.task_w.reset();
    reap(w.pid, leave_grace(), w.pidfd.get());
    close_pipes(w);
    return;
  }
  // Wait briefly for the exit to complete (EOF can come a moment before the exit status),
  // then take its group down with it: processes the function started must not outlive it.
  auto deadline = Clock::now() + std::chrono::milliseconds(100);
  while (!has_exited(w.pid, w.pidfd.get()) && Clock::now() < deadline) ::poll(nullptr, 0, 1);
  kill_tree(w.pid, w.pidfd.get());
  int status = 0;
  std::string why = reap_child(w.pid, w.pidfd.get(), &status) != w.pid
                        ? "ended, but its exit status was collected elsewhere (a SIGCHLD handler calling waitpid?)"
                        : (WIFSIGNALED(status) ? "was " : "exited with ") + describe_wait_status(status);
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGXCPU && options_.cpu_limit.count() > 0)
    why += " after using its CPU time limit of " + std::to_string(options_.cpu_limit.count()) + " s (Options::cpu_limit)";
  settle_queue(w, Status::crashed, "worker process " + std::to_string(w.pid) + " " + why + " while running the function");
  close_pipes(w);
}

inline void Pool::kill_worker(Worker& w, Status status, const std::string& why) {
  kill_tree(w.pid, w.pidfd.get());
  int ignored = 0;
  reap_child(w.pid, w.pidfd.get(), &ignored);
  settle_queue(w, status, why);
  close_pipes(w);
}

// A worker that has run its allowance of functions leaves right after its last frame. It is
// reaped once it has exited (Leaving, woken by its pidfd), not waited for: the parent serves the
// other workers meanwhile, and starts the successor as soon as it is gone. Its region and result
// pipe are kept until then (it may still ring its doorbell).
inline void Pool::retire(Worker& w) {
  note_started(w);
  w.task_w.reset();
  w.ring.publish();
  leaving_.add(w.pid, std::move(w.pidfd), Retired{std::move(w.shared), std::move(w.result_r)}, leave_grace());
  close_pipes(w);
}

// The wall-clock limit of task `id`: its own (Task::timeout), else Options::timeout; 0 = none.
inline std::chrono::milliseconds Pool::time_limit(std::uint64_t id) const {
  const std::chrono::milliseconds own = tasks_.slot_of(id).task.timeout;
  return own.count() > 0 ? own : options_.timeout;
}

// When the function at the front of w's queue is out of time: its time limit after it began,
// plus the hand-over guard once it has returned (then only the parent's reading remains).
inline Clock::time_point Pool::deadline(const Worker& w) const {
  const std::chrono::milliseconds limit = time_limit(w.queue.front().id);
  if (limit.count() <= 0) return Clock::time_point::max();
  Clock::time_point at = w.head_start() + limit;
  if (w.shared && w.shared.block()->returned.load(std::memory_order_acquire) == w.queue.front().id + 1)
    at += std::max<Clock::duration>(handover_guard, 10 * limit);
  return at;
}

inline void Pool::enforce_timeouts(Clock::time_point now) {
  if (options_.timeout.count() <= 0 && !task_timeouts_) return;
  for (auto& w : workers_) {
    if (w->pid <= 0 || w->queue.empty() || starting(*w) || now < deadline(*w)) continue;
    const std::uint64_t head = w->queue.front().id;
    drain(*w);  // it may have finished just now
    if (w->pid <= 0 || w->queue.empty() || w->queue.front().id != head) continue;
    const bool returned = w->shared.block()->returned.load(std::memory_order_acquire) == head + 1;
    const std::string limit = std::to_string(time_limit(head).count());
    kill_worker(*w, Status::timed_out,
                returned ? "returned within the timeout of " + limit +
                               " ms, but its result was not handed over in time; the worker was killed"
                         : "exceeded the timeout of " + limit + " ms and was killed");
  }
}

inline int Pool::poll_timeout_ms() const {
  auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(sweep_interval);
  if (!leaving_.empty()) {
    // Without pidfds, look again soon; with them, by the earliest grace at the latest.
    if (!leaving_.pollable()) wait = std::min(wait, std::chrono::milliseconds(1));
    auto left = std::chrono::ceil<std::chrono::milliseconds>(*leaving_.next_deadline() - Clock::now());
    wait = std::min(wait, std::max(left, std::chrono::milliseconds(0)));
  }
  for (auto& w : workers_)
    if (w->queue.size() > 1) wait = std::min(wait, ring_check_interval);  // see the ring check in run()
  if (!withdrawing_.empty()) wait = std::min(wait, std::chrono::milliseconds(1));  // a task to stop begins any moment
  if (options_.timeout.count() > 0 || task_timeouts_) {
    auto now = Clock::now();
    for (auto& w : workers_) {
      if (w->queue.empty()) continue;
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline(*w) - now);
      wait = std::min(wait, std::max(left, std::chrono::milliseconds(0)));
    }
  }
  return static_cast<int>(wait.count());
}

inline void Pool::remove_dead() {
  workers_.erase(std::remove_if(workers_.begin(), workers_.end(), [](const auto& w) { return w->pid <= 0; }),
                 workers_.end());
}

inline void Pool::shutdown() {
  for (auto& w : workers_) w->task_w.reset();  // every idle worker sees EOF and leaves
  for (auto& w : workers_) {
    if (w->pid > 0) reap(w->pid, leave_grace(), w->pidfd.get());
    close_pipes(*w);
  }
  workers_.clear();
  leaving_.finish([](Retired&&) {});
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_ENDINGS_HPP
// ---- end <pfp/detail/pool_endings.hpp> ----
// ---- begin <pfp/detail/pool_starts.hpp> ----
#ifndef PFP_DETAIL_POOL_STARTS_HPP
#define PFP_DETAIL_POOL_STARTS_HPP

// The process pool, continued: how workers start. Up to Options::workers processes (a retired one
// counts until it has exited), each forked with its pipes and a shared region (reused from a gone
// worker where one is spare) and given work at once; when none can be started for a while, the
// tasks that never ran say why. Each worker runs Options::initializer before its first task (see
// worker_life.hpp): a start that fails (the initializer threw, crashed or ran past
// Options::timeout) costs no task, and start_attempts of them in a row for one worker number break
// the run: every task not begun then gets the reason as its verdict, and no worker is started
// again. Part of pool.hpp, which includes it at its end.


namespace pfp {
namespace detail {

inline void Pool::spawn_missing() {
  watch_starts();
  if (!broken_.empty()) {
    fail_rest(broken_);
    return;
  }
  // A retired worker counts until it has exited: never more processes than Options::workers. None
  // for a feed whose every task is already out (a start may cost an initializer).
  const std::optional<std::size_t> hint = feed_.size_hint();
  bool all_out = hint && tasks_.next_seq >= *hint;
  if (all_out && tasks_.pending.empty() && !feed_exhausted()) {
    if (std::optional<std::uint64_t> id = pull_one()) tasks_.hand_back(*id);  // the hint was short
    all_out = false;  // the feed says for itself now
  }
  while (workers_.size() + leaving_.size() < target_workers_ && (!tasks_.pending.empty() || (!feed_exhausted() && !all_out))) {
    if (!spawn_one()) break;
    dispatch();  // the new worker gets its work now, not after its siblings have been forked
  }
}

inline unsigned Pool::free_slot() const {
  for (unsigned s = 0;; ++s) {
    bool used = false;
    for (auto& w : workers_) used = used || w->slot == s;
    if (!used) return s;
  }
}

inline bool Pool::spawn_one() {
  auto w = std::make_unique<Worker>();
  last_failed_errno = 0;
  w->slot = free_slot();
  std::vector<int>& close_in_child = close_in_child_;  // kept: no allocation per process
  close_in_child.clear();
  for (auto& other : workers_) {
    if (other->task_w) close_in_child.push_back(other->task_w.get());
    if (other->result_r) close_in_child.push_back(other->result_r.get());
    if (other->pidfd) close_in_child.push_back(other->pidfd.get());
  }
  if (cancel_ && cancel_->wake_fd() >= 0) close_in_child.push_back(cancel_->wake_fd());
  leaving_.list_descriptors(close_in_child, [&](const Retired& r) {
    if (r.result_r) close_in_child.push_back(r.result_r.get());
  });
  try {
    // Non-blocking from the start (the parent's ends must be); the worker makes its own ends
    // blocking again, and sizes its result pipe: fewer system calls in the parent per process.
    Pipe tasks = make_pipe(true);
    Pipe results = make_pipe(true);
    if (spare_regions_.empty()) {
      w->shared = SharedRegion::create();
    } else {
      w->shared = std::move(spare_regions_.back());
      spare_regions_.pop_back();
      w->shared.renew();
    }
    w->shared.block()->remote_allowed.store(remote_transfer_supported && !remote_reads_refused.load(), std::memory_order_relaxed);
    close_in_child.push_back(tasks.write.get());
    close_in_child.push_back(results.read.get());
    const int task_fd = tasks.read.get();
    const int result_fd = results.write.get();
    SharedBlock* block = w->shared.block();
    char* ring = w->shared.ring();
    const FeedRunner& run = run_;
    const Options& opt = options_;
    const WorkerInfo info = starts_.forking(w->slot, target_workers_);
    w->pid = fork_worker([&] { worker_loop(task_fd, result_fd, block, ring, run, opt, info); }, close_in_child,
                         &signal_plan_, &w->pidfd);
    w->ring = RingReader(block, ring);
    w->task_w = std::move(tasks.write);
    w->result_r = std::move(results.read);
  } catch (const error& e) {
    last_spawn_error_ = e.what();
    last_spawn_errno_ = last_failed_errno;
    return false;
  }
  workers_.push_back(std::move(w));
  return true;
}

// Every worker failed to start or died and none can be started again. A shortage the system may
// soon relieve (EAGAIN: the process limit; EMFILE, ENFILE: descriptors; ENOMEM) is waited out
// with a doubling back-off, about six seconds in all; any other failure gets a few quick tries.
// A cancel ends the wait at once (turn() then cancels the run). After that the tasks that never
// ran, and every task the feed would still give, say why instead of hanging.
inline void Pool::give_up() {
  if (!broken_.empty()) {
    fail_rest(broken_);
    return;
  }
  const int e = last_spawn_errno_;
  const bool transient = e == EAGAIN || e == EMFILE || e == ENFILE || e == ENOMEM;
  const auto until = Clock::now() + (transient ? std::chrono::milliseconds(6000) : std::chrono::milliseconds(300));
  for (int pause_ms = 10; workers_.empty(); pause_ms = std::min(2 * pause_ms, 1000)) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left <= 0) break;
    pollfd wake{cancel_ ? cancel_->wake_fd() : -1, POLLIN, 0};
    ::poll(&wake, 1, static_cast<int>(std::min<long long>(pause_ms, left)));
    if (cancel_ && cancel_->requested()) return;
    spawn_missing();
  }
  if (!workers_.empty()) return;
  fail_rest("not run: could not start a worker process: " + last_spawn_error_);
}

// Every task not begun -- pending, or still in the feed (Feed::drop_rest) -- gets `why`.
inline void Pool::fail_rest(const std::string& why) {
  while (!tasks_.pending.empty()) {
    std::uint64_t id = tasks_.pending.front();
    tasks_.pending.pop_front();
    Result& r = tasks_.result_of(id);
    r.status = Status::cancelled;
    r.error = why;
    deliver(id);
  }
  if (!feed_exhausted()) {
    feed_done_ = true;
    try {
      feed_.drop_rest(why);
    } catch (...) {
      consumer_failed();
    }
  }
}

inline bool Pool::starting(const Worker& w) const {
  return options_.initializer && w.shared &&
         w.shared.block()->start_state.load(std::memory_order_acquire) == worker_starting;
}

// Notes the workers whose initializer returned (their tasks' time begins now), and kills the ones
// whose initializer has run past Options::timeout.
inline void Pool::watch_starts() {
  if (!options_.initializer) return;
  const auto now = Clock::now();
  for (auto& w : workers_) {
    if (w->pid <= 0 || !w->shared || !starts_.waiting(w->slot)) continue;
    const std::uint32_t state = w->shared.block()->start_state.load(std::memory_order_acquire);
    if (state == worker_ready) {
      starts_.started(w->slot);
      if (!w->queue.empty() && !w->head_began()) w->head_since = now;
    } else if (state == worker_starting && options_.timeout.count() > 0 && now - starts_.since(w->slot) > options_.timeout) {
      kill_tree(w->pid, w->pidfd.get());
      int ignored = 0;
      reap_child(w->pid, w->pidfd.get(), &ignored);
      start_lost(*w, "the initializer ran past Options::timeout (" + std::to_string(options_.timeout.count()) +
                         " ms) and its worker process was killed");
    }
  }
}

// A worker that started and is going away before watch_starts() saw it start.
inline void Pool::note_started(const Worker& w) {
  if (w.shared && starts_.waiting(w.slot) && w.shared.block()->start_state.load(std::memory_order_acquire) == worker_ready)
    starts_.started(w.slot);
}

// A worker ended before its initializer returned (it threw, or the process died): true if so,
// once the worker is reaped and its start counted as failed.
inline bool Pool::start_failed(Worker& w) {
  if (!options_.initializer || !w.shared) return false;
  const SharedBlock* block = w.shared.block();
  const std::uint32_t state = block->start_state.load(std::memory_order_acquire);
  if (state == worker_ready) return false;
  // As in worker_ended(): the exit status can come a moment after EOF; take its group down.
  const auto deadline = Clock::now() + std::chrono::milliseconds(100);
  while (!has_exited(w.pid, w.pidfd.get()) && Clock::now() < deadline) ::poll(nullptr, 0, 1);
  kill_tree(w.pid, w.pidfd.get());
  int status = 0;
  const bool reaped = reap_child(w.pid, w.pidfd.get(), &status) == w.pid;
  std::string why;
  if (state == worker_start_failed)
    why.assign(block->start_error, ::strnlen(block->start_error, sizeof block->start_error));
  else
    why = "its worker process " + std::to_string(w.pid) +
          (reaped ? (WIFSIGNALED(status) ? " was " : " exited with ") + describe_wait_status(status) : std::string(" ended")) +
          " while running the initializer";
  start_lost(w, why);
  return true;
}

// w (reaped) never started: the tasks it holds go back (none began); the run is broken when that
// makes start_attempts failed starts in a row for its number.
inline void Pool::start_lost(Worker& w, const std::string& why) {
  std::vector<std::uint64_t> never_began;
  for (const Queued& q : w.queue) never_began.push_back(q.id);
  w.queue.clear();
  tasks_.hand_back(never_began);
  const unsigned number = w.slot;
  close_pipes(w);
  if (!starts_.failed(number) || !broken_.empty()) return;
  broken_ = broken_reason(number, why);
  // The workers that did start finish what they began and leave; nothing else begins.
  for (auto& other : workers_) {
    if (other->pid <= 0) continue;
    take_back_from(*other);
    other->task_w.reset();
  }
  fail_rest(broken_);
}

// How long a worker told to leave has before it is killed: its finalizer and its state's
// destructor may have work to do.
inline std::chrono::milliseconds Pool::leave_grace() const {
  return options_.finalizer || options_.initializer.state_type() ? std::chrono::milliseconds(10'000)
                                                                 : std::chrono::milliseconds(1000);
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_STARTS_HPP
// ---- end <pfp/detail/pool_starts.hpp> ----
// ---- begin <pfp/detail/pool_results.hpp> ----
#ifndef PFP_DETAIL_POOL_RESULTS_HPP
#define PFP_DETAIL_POOL_RESULTS_HPP

// The process pool, continued: how results come in. Frames are taken from a worker's ring and
// result pipe in the order it ran its tasks, decoded in place into each task's Result, and
// concluded (final, or tried again). A stream found corrupt kills its worker and costs the task it
// was running (or the one that wrote on the pipe); big results are copied out of the worker's
// memory. Part of pool.hpp, which includes it at its end.


namespace pfp {
namespace detail {

// A frame carries a little more than its Value; saturate so "no limit" (SIZE_MAX) stays that.
inline std::size_t Pool::max_frame() const noexcept {
  constexpr std::size_t slack = 4096;
  return options_.max_result_bytes > std::numeric_limits<std::size_t>::max() - slack ? std::numeric_limits<std::size_t>::max()
                                                                                   : options_.max_result_bytes + slack;
}

inline void Pool::read_from(Worker& w) {
  for (int rounds = 0; rounds < 1024 && w.result_r; ++rounds) {
    ssize_t got = w.read_pipe(spare_buf_, max_frame());
    if (got == 0) {
      worker_ended(w);  // EOF: the worker is gone or has closed its end
      return;
    }
    if (!collect(w)) return;
    if (got < 0) return;
  }
}

// Reads what a worker left before it is declared dead, so no finished result is lost.
inline void Pool::drain(Worker& w) {
  while (w.result_r && w.read_pipe(spare_buf_, max_frame()) > 0) {
  }
  if (w.result_r) collect(w);
}

// Takes every complete frame, from the ring or the pipe, in the order the worker ran them.
// Returns false if the worker is gone (killed for a protocol error, or retired).
inline bool Pool::collect(Worker& w) {
  bool pipe_fresh = false;
  bool took = false;
  try {
    for (;;) {
      std::string_view from_ring = w.ring_frame(scratch_, max_frame());
      if (!from_ring.empty() && !pipe_fresh) {
        // Whatever reached the pipe before this ring frame is readable now: read it first, so
        // the two streams are merged in the order they were written.
        pipe_fresh = true;
        if (w.result_r) w.read_pipe(spare_buf_, max_frame());
      }
      w.skip_doorbells(max_frame());
      // The common case, taken without the checks below: nothing waiting from the pipe, and the
      // ring holding the frames of the tasks at the front of the queue, in order.
      // The worker's counter of bytes written is read once for all the frames it covers: the
      // worker moves it after every function, so each look would wait for the other core.
      if (pipe_fresh && w.have == w.consumed && !from_ring.empty()) {
        std::size_t avail = w.ring.available();
        const std::uint64_t culprit = tainted_task(w);  // once for every frame `avail` covers
        while (!from_ring.empty() && !w.queue.empty()) {
          prefetch(from_ring.data() + 512);  // frames written on another core: ask for them early
          if (frame_index(from_ring) != w.queue.front().id || culprit == w.queue.front().id + 1) break;
          Reader rd(from_ring.substr(frame_header_size + frame_index_size));
          decode_verdict(rd, tasks_.result_of(w.queue.front().id));
          w.ring.advance(from_ring.size());
          avail -= from_ring.size();
          accepted(w);
          took = true;
          if (retire_if_done(w)) return false;
          from_ring = w.ring_frame(scratch_, max_frame(), avail);
        }
        if (from_ring.empty()) from_ring = w.ring_frame(scratch_, max_frame());
      }
      std::string_view from_pipe = w.pipe_frame(max_frame());
      if (from_ring.empty() && from_pipe.empty()) break;
      const bool has_expected = !w.queue.empty();
      const std::uint64_t expected = has_expected ? w.queue.front().id : 0;
      if (has_expected && !from_pipe.empty() && frame_index(from_pipe) == expected) {
        if (frame_kind(from_pipe) == frame_kind_remote) {
          take_remote(w, from_pipe);
        } else {
          accept(w, from_pipe);
          w.consumed += from_pipe.size();
        }
        took = true;
      } else if (has_expected && !from_ring.empty() && frame_index(from_ring) == expected) {
        accept(w, from_ring);
        w.ring.advance(from_ring.size());
        took = true;
      } else if (!from_ring.empty() && !w.holds(frame_index(from_ring))) {
        // The worker's own frame for a function whose result already came through the pipe
        // (written there by the function itself): the first one delivered stands.
        w.ring.advance(from_ring.size());
      } else if (!from_pipe.empty()) {
        // The worker sends in the order it runs: the expected frame would already be readable.
        throw error("pfp: protocol error: a frame for function " + std::to_string(frame_index(from_pipe)) +
                    (has_expected ? " arrived while function " + std::to_string(expected) + " was running"
                                  : " arrived from a worker that holds no function"));
      } else {
        break;  // the expected frame is still on its way through the pipe
      }
      if (retire_if_done(w)) return false;
    }
  } catch (const error& e) {
    protocol_failure(w, e.what());
    return false;
  }
  w.ring.publish();
  if (took) w.head_since = Clock::now();  // when the task now at the front became the front, near enough
  if (w.consumed == w.have) {
    w.consumed = w.have = 0;
    if (w.buf.capacity() > (std::size_t{4} << 20)) w.buf.release();  // give back a big result's buffer
  } else if (w.consumed > 0 && w.consumed >= w.have / 2) {
    std::memmove(w.buf.data(), w.buf.data() + w.consumed, w.have - w.consumed);
    w.have -= w.consumed;
    w.consumed = 0;
  }
  return true;
}

// A result whose big strings are still in the worker's memory: copy them, then let the worker go
// on. If the kernel will not let this process read the worker's memory, the worker is told to
// send the result through the pipe instead (and no worker tries again). If the worker died before
// its memory was read, the result is lost with it: its death is noticed on its pipe, and the task
// it was running is reported as crashed.
inline void Pool::take_remote(Worker& w, std::string_view frame) {
  std::atomic<std::uint32_t>& ack = w.shared.block()->remote_ack;
  const std::size_t own = frame.size() - frame_header_size;
  RemoteReader reader(w.pid, max_frame() > own ? max_frame() - own : 0);
  Result& r = tasks_.result_of(w.queue.front().id);
  try {
    decode_result_frame_into(frame, max_frame(), r, &reader);
  } catch (const remote_unavailable& e) {
    w.consumed += frame.size();
    if (!e.gone()) {
      remote_reads_refused.store(1);
      remote_answer(ack, remote_ack_refused);
    }
    return;
  } catch (const std::bad_alloc&) {
    r.status = Status::exception;
    r.result = Value();
    r.error = "pfp: the parent could not allocate memory for the result (std::bad_alloc)";
  }
  remote_answer(ack, remote_ack_copied);
  w.consumed += frame.size();
  withhold_if_tainted(w, r);
  accepted(w);
}

// The worker's stream is corrupt: something wrote on its result pipe that the worker did not
// (a function writing to descriptors it does not own, a process it left behind), or its ring was
// overwritten. The worker is killed; every whole frame in its ring was written by the worker
// itself and is kept. The worker notes which function wrote on its pipe; if that was not the
// one it was running when killed, the running one is innocent and runs again elsewhere.
inline void Pool::protocol_failure(Worker& w, const std::string& why) {
  if (testing::on_corrupt_stream) testing::on_corrupt_stream(w.pid);
  kill_tree(w.pid, w.pidfd.get());
  int ignored = 0;
  reap_child(w.pid, w.pidfd.get(), &ignored);
  try {
    while (!w.queue.empty()) {
      std::string_view frame = w.ring_frame(scratch_, max_frame());
      if (frame.empty()) break;
      const std::uint64_t id = frame_index(frame);
      if (id == w.queue.front().id) {
        accept(w, frame);
      } else if (w.holds(id)) {
        break;
      }
      w.ring.advance(frame.size());
    }
  } catch (const error&) {
  }
  const std::uint64_t culprit = w.shared.block()->corrupted_by.load(std::memory_order_acquire);
  // A culprit that already has its verdict from this worker loses it: what it sent cannot be
  // trusted. Feeds that can still change what they reported are told.
  auto answered = std::find_if(w.answered.begin(), w.answered.end(), [&](const auto& a) { return a.first + 1 == culprit; });
  // (ids are never 0, so the unused entries match no culprit)
  if (culprit != 0 && answered != w.answered.end()) {
    const std::uint64_t seq = answered->second;
    Result r;
    r.index = static_cast<std::size_t>(seq);
    r.status = Status::crashed;
    r.error = why + tainted_suffix;
    r.pid = static_cast<int>(w.pid);
    r.attempts = 1;
    try {
      feed_.amend(seq, std::move(r));
    } catch (...) {
      consumer_failed();
    }
  }
  if (!w.queue.empty() && w.head_began() && culprit != 0 && culprit != w.queue.front().id + 1 &&
      std::find(struck_.begin(), struck_.end(), w.queue.front().id) == struck_.end()) {
    std::uint64_t again = w.queue.front().id;
    struck_.push_back(again);
    w.queue.pop_front();
    settle_queue(w, Status::crashed, why);  // the rest never started
    tasks_.hand_back(again);
  } else {
    const bool head_wrote = !w.queue.empty() && culprit == w.queue.front().id + 1;
    settle_queue(w, Status::crashed, head_wrote ? why + tainted_suffix : why);
  }
  close_pipes(w);
}

inline bool Pool::retire_if_done(Worker& w) {
  if (!options_.max_tasks_per_worker || !w.queue.empty() || w.sent < options_.max_tasks_per_worker) return false;
  retire(w);
  return true;
}

// The whole frame for the task at the front of w's queue: its verdict, decoded in place.
// Throws pfp::error if the frame is malformed (the caller declares the stream corrupt).
inline void Pool::accept(Worker& w, std::string_view frame, RemoteSource* remote) {
  Result& r = tasks_.result_of(w.queue.front().id);
  decode_result_frame_into(frame, max_frame(), r, remote);
  withhold_if_tainted(w, r);
  accepted(w);
}

// 1 + the id of the task during which bytes the worker did not write appeared on its result pipe
// (0: none). The worker marks the task before it sends that task's frame, so a frame seen before
// this load is looked at is covered by it.
inline std::uint64_t Pool::tainted_task(const Worker& w) const noexcept {
  return w.shared ? w.shared.block()->corrupted_by.load(std::memory_order_acquire) : 0;
}

// The result of a task that wrote on pfp's result pipe cannot be trusted, whatever its frame
// says: it is withheld and the task reported crashed, before any feed sees it (a stream cannot
// take back a verdict it has handed out).
inline void Pool::withhold_if_tainted(const Worker& w, Result& r) const {
  if (tainted_task(w) != w.queue.front().id + 1) return;
  r.status = Status::crashed;
  r.result = Value();
  r.error = tainted_why;
}

// The task at the front of w's queue has its verdict in its Result (but for the pid).
inline void Pool::accepted(Worker& w) {
  const std::uint64_t id = w.queue.front().id;
  w.queue.pop_front();
  w.answered[w.answered_at++ % answered_kept] = {id, tasks_.seq_of(id)};
  Result& r = tasks_.result_of(id);
  r.pid = static_cast<int>(w.pid);
  durations_ns_ += r.duration.count();
  ++durations_;
  conclude(id);
}

// One attempt of a task reached a verdict: it is final unless the options ask to try again.
inline void Pool::conclude(std::uint64_t id) {
  Result& r = tasks_.result_of(id);
  ++r.attempts;
  if (retry_wanted(r, options_)) {
    tasks_.hand_back(id);
    return;
  }
  deliver(id);
}

// Stops the run: running functions are killed with their workers, the rest never start.
inline void Pool::cancel_everything() {
  for (auto& w : workers_) {
    if (w->pid <= 0 || w->queue.empty()) continue;
    drain(*w);  // results that made it are kept
    if (w->pid <= 0 || w->queue.empty()) continue;
    std::vector<std::uint64_t> waiting;
    for (auto it = w->queue.begin() + 1; it != w->queue.end(); ++it) waiting.push_back(it->id);
    w->queue.resize(1);
    kill_worker(*w, Status::cancelled, "cancelled while running: the worker was killed with everything it started");
    tasks_.hand_back(waiting);
  }
  while (!tasks_.pending.empty()) {
    std::uint64_t id = tasks_.pending.front();
    tasks_.pending.pop_front();
    Result& r = tasks_.result_of(id);
    r.status = Status::cancelled;
    r.error = "cancelled before it started";
    r.result = Value();
    deliver(id);
  }
  if (!feed_done_) {
    feed_done_ = true;
    try {
      feed_.drop_rest("cancelled before it started");
    } catch (...) {
      consumer_failed();
    }
  }
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_RESULTS_HPP
// ---- end <pfp/detail/pool_results.hpp> ----
// ---- begin <pfp/detail/pool_control.hpp> ----
#ifndef PFP_DETAIL_POOL_CONTROL_HPP
#define PFP_DETAIL_POOL_CONTROL_HPP

// The process pool, continued: what a feed asks about the tasks it gave while they are in the
// pool (Feed::withdrawn, Feed::wants_report): stopping one task -- never run if it has not begun,
// killed with its worker if it runs -- and saying what each worker runs. Asked only after the
// feed's side descriptor was readable (or while a request waits to be settled), so a run that asks
// nothing pays nothing. Part of pool.hpp, which includes it at its end.


namespace pfp {
namespace detail {

inline void Pool::serve_requests() {
  feed_.withdrawn(withdrawing_);
  for (std::size_t i = 0; i < withdrawing_.size();) {
    if (withdraw(withdrawing_[i])) {
      withdrawing_[i] = withdrawing_.back();
      withdrawing_.pop_back();
    } else {
      ++i;
    }
  }
  if (feed_.wants_report()) report_workers();
}

// Stops task `seq` if this run still holds it. False when it cannot tell yet: the worker that
// holds it claimed it a moment ago (it runs by the next turn, and is killed then).
inline bool Pool::withdraw(std::uint64_t seq) {
  auto is = [&](std::uint64_t id) { return tasks_.slot_of(id).count == 1 && tasks_.seq_of(id) == seq; };
  auto from_pending = [&] {
    const auto it = std::find_if(tasks_.pending.begin(), tasks_.pending.end(), is);
    if (it == tasks_.pending.end()) return false;
    const std::uint64_t id = *it;
    tasks_.pending.erase(it);
    deliver_withdrawn(id);
    return true;
  };
  if (from_pending()) return true;
  for (auto& w : workers_) {
    if (w->pid <= 0) continue;
    const auto at = std::find_if(w->queue.begin(), w->queue.end(), [&](const Queued& q) { return is(q.id); });
    if (at == w->queue.end()) continue;
    if (at == w->queue.begin() && w->head_began()) {
      const std::uint64_t id = at->id;
      drain(*w);  // it may have finished just now: then its verdict stands
      if (w->pid > 0 && !w->queue.empty() && w->queue.front().id == id)
        kill_worker(*w, Status::cancelled, "cancelled while running: the worker was killed with everything it started");
      return true;
    }
    take_back_from(*w);    // what it has not begun comes back at once ...
    return from_pending();  // ... unless it began this one just now
  }
  return true;  // delivered already
}

inline void Pool::deliver_withdrawn(std::uint64_t id) {
  Result& r = tasks_.result_of(id);
  r.status = Status::cancelled;
  r.error = "cancelled before it started";
  r.result = Value();
  deliver(id);
}

inline void Pool::report_workers() {
  views_.clear();
  for (auto& w : workers_) {
    if (w->pid <= 0) continue;
    WorkerView v;
    v.pid = static_cast<int>(w->pid);
    v.slot = w->slot;
    v.held = w->queue.size();
    if (!w->queue.empty()) {
      if (std::optional<Clock::time_point> began = w->head_began()) {
        v.running = tasks_.seq_of(w->queue.front().id);
        v.since = *began;
      }
    }
    views_.push_back(v);
  }
  feed_.report(views_);
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_POOL_CONTROL_HPP
// ---- end <pfp/detail/pool_control.hpp> ----

#endif  // PFP_DETAIL_POOL_HPP
// ---- end <pfp/detail/pool.hpp> ----
// ---- begin <pfp/detail/progress_feed.hpp> ----
#ifndef PFP_DETAIL_PROGRESS_FEED_HPP
#define PFP_DETAIL_PROGRESS_FEED_HPP

// Options::progress for every front end at the one seam (run_feed): the front end's Feed wrapped
// in one that counts each Result as it is delivered and draws the progress (progress.hpp).

// ---- begin <pfp/progress.hpp> ----
#ifndef PFP_PROGRESS_HPP
#define PFP_PROGRESS_HPP

// Logging and progress for the Manager: one log record per handled item, sent to a pluggable
// Logger (stderr by default), and a progress report: a live line redrawn in place on a terminal,
// plain lines now and then anywhere else.


#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pfp {

/// What happened to one handled item, as a Logger sees it. Built in the parent after the item's
/// result came back.
struct ItemLog {
  std::uint64_t seq = 0;            ///< the item's number in the run, from 0, in the order it was handed out
  std::string label;                ///< the handler's log_item(item), or the seq when it has none
  std::optional<unsigned> worker;   ///< worker slot 0 .. workers-1; empty when the item's worker did not report back
  int pid = 0;                      ///< the worker process that ran it (0 if it never ran)
  Status status = Status::ok;
  std::string error;                ///< the cause when status is not ok
  std::chrono::nanoseconds duration{};
  std::vector<std::string> messages;  ///< what the handler wrote with ItemContext::log(), in order
  /// True for a line the handler wrote while the item runs (ItemContext::log): `messages` holds
  /// that one line, `status` and `duration` mean nothing yet. False for the item's final record.
  bool live = false;
  /// In the final record: how many of `messages` (the first ones) the Logger already received
  /// live.
  std::size_t messages_shown = 0;
};

/// Receives one ItemLog per handled item, in completion order, on the thread that runs the
/// Manager. Any callable; an empty Logger logs nothing.
using Logger = std::function<void(const ItemLog&)>;

/// The text stderr_logger() writes for `log`: one line per handler message not shown live yet,
/// then (in a final record) the verdict line, each starting with "[worker N] <label>: " ("[pid P]"
/// when the item's worker did not report back: it died), with a trailing newline.
inline std::string format_item_log(const ItemLog& log) {
  std::string prefix = log.worker ? "[worker " + std::to_string(*log.worker) + "] " : "[pid " + std::to_string(log.pid) + "] ";
  prefix += log.label + ": ";
  std::string out;
  for (std::size_t i = log.live ? 0 : log.messages_shown; i < log.messages.size(); ++i) out += prefix + log.messages[i] + "\n";
  if (log.live) return out;
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.3f s", std::chrono::duration<double>(log.duration).count());
  out += prefix;
  if (log.status == Status::ok) {
    out += std::string("done in ") + secs + "\n";
  } else {
    out += std::string(to_string(log.status)) + ": " + log.error + " (after " + secs + ")\n";
  }
  return out;
}

/// A Logger writing format_item_log() to descriptor `fd` with one write() per item, so lines of
/// different items never interleave. Write failures are ignored. `fd` must outlive the logger.
inline Logger fd_logger(int fd) {
  return [fd](const ItemLog& log) {
    const std::string text = format_item_log(log);
    (void)detail::write_all(fd, text.data(), text.size());
  };
}

/// The default Logger: fd_logger(2).
inline Logger stderr_logger() { return fd_logger(2); }

/// A Logger that logs nothing.
inline Logger silent_logger() { return Logger(); }

namespace detail {

/// "7s", "2m05s", "1h02m".
inline std::string format_duration(double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  const auto s = static_cast<unsigned long long>(seconds + 0.5);
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llus", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%llum%02llus", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lluh%02llum", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

}  // namespace detail

/// One progress line without line ending, e.g.
///   "progress: 37/100 (37%) | 12.3 items/s | ETA 5s | 0 failed | 3s elapsed"
/// or, when the total is unknown, "progress: 37 items | 12.3 items/s | 0 failed | 3s elapsed".
/// The ETA is "?" until an item has finished; a stopped run has none, and cancelled items show
/// as "| 3 cancelled" after the failures.
inline std::string format_progress(const ProgressSnapshot& s) {
  const double secs = std::chrono::duration<double>(s.elapsed).count();
  const double rate = secs > 0 ? static_cast<double>(s.done) / secs : 0.0;
  std::string out = "progress: " + std::to_string(s.done);
  if (s.total) {
    const std::size_t pct = *s.total ? (s.done >= *s.total ? 100 : s.done * 100 / *s.total) : 100;
    out += "/" + std::to_string(*s.total) + " (" + std::to_string(pct) + "%)";
  } else {
    out += " items";
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, " | %.1f items/s", rate);
  out += buf;
  if (s.total && !s.stopped) {
    out += " | ETA ";
    if (s.done >= *s.total) {
      out += "0s";
    } else if (rate > 0) {
      out += detail::format_duration(static_cast<double>(*s.total - s.done) / rate);
    } else {
      out += "?";
    }
  }
  out += " | " + std::to_string(s.failed) + " failed";
  if (s.cancelled) out += " | " + std::to_string(s.cancelled) + " cancelled";
  out += " | " + detail::format_duration(secs) + " elapsed";
  return out;
}

namespace detail {

/// Draws the progress of one run. Used from one thread.
class ProgressLine {
 public:
  using Clock = std::chrono::steady_clock;

  ProgressLine(const ProgressOptions& o, std::optional<std::size_t> total, Clock::time_point start)
      : opt_(o), total_(total), start_(start), last_(start) {
    mode_ = opt_.on_progress ? ProgressMode::off : opt_.mode;
    if (mode_ == ProgressMode::automatic) mode_ = ::isatty(opt_.fd) == 1 ? ProgressMode::terminal : ProgressMode::plain;
    if (mode_ == ProgressMode::terminal) draw(start);
  }

  ProgressMode mode() const noexcept { return mode_; }
  void set_total(std::optional<std::size_t> total) noexcept { total_ = total; }

  /// Counts changed: redraws (terminal) or prints a line (plain) if enough time has passed.
  void update(std::size_t done, std::size_t failed, std::size_t cancelled = 0) {
    done_ = done;
    failed_ = failed;
    cancelled_ = cancelled;
    const auto now = Clock::now();
    if (mode_ == ProgressMode::terminal && now - last_ >= opt_.refresh) draw(now);
    if (mode_ == ProgressMode::plain && now - last_ >= opt_.interval) line(now);
    if (opt_.on_progress && now - last_ >= opt_.refresh) report(now);
  }

  /// Before something else writes to the terminal: erase the live line.
  void suspend() {
    if (mode_ != ProgressMode::terminal || !drawn_) return;
    write("\r\033[K");
    drawn_ = false;
  }
  /// After that: draw it again.
  void resume() {
    if (mode_ == ProgressMode::terminal) draw(Clock::now());
  }

  /// The run ended (`stopped`: before its end): the final state, then a line end (terminal) or a
  /// last line (plain).
  void finish(std::size_t done, std::size_t failed, std::size_t cancelled = 0, bool stopped = false) {
    done_ = done;
    failed_ = failed;
    cancelled_ = cancelled;
    stopped_ = stopped;
    const auto now = Clock::now();
    if (mode_ == ProgressMode::terminal) {
      draw(now);
      write("\n");
      drawn_ = false;
    } else if (mode_ == ProgressMode::plain) {
      line(now);
    }
    if (opt_.on_progress) {
      final_ = true;
      report(now);
    }
  }

 private:
  ProgressSnapshot snapshot(Clock::time_point now) const {
    return ProgressSnapshot{done_,     failed_,  total_, std::chrono::duration_cast<std::chrono::nanoseconds>(now - start_),
                            cancelled_, stopped_, final_};
  }
  std::string text(Clock::time_point now) const { return format_progress(snapshot(now)); }
  // Once on_progress threw, it is not called again (the run stops with what it threw).
  void report(Clock::time_point now) {
    if (callback_threw_) return;
    last_ = now;
    try {
      opt_.on_progress(snapshot(now));
    } catch (...) {
      callback_threw_ = true;
      throw;
    }
  }
  void draw(Clock::time_point now) {
    write("\r\033[K" + text(now));
    drawn_ = true;
    last_ = now;
  }
  void line(Clock::time_point now) {
    write(text(now) + "\n");
    last_ = now;
  }
  void write(const std::string& s) const { (void)write_all(opt_.fd, s.data(), s.size()); }

  ProgressOptions opt_;
  ProgressMode mode_;
  std::optional<std::size_t> total_;
  Clock::time_point start_;
  Clock::time_point last_;
  std::size_t done_ = 0;
  std::size_t failed_ = 0;
  std::size_t cancelled_ = 0;
  bool stopped_ = false;
  bool final_ = false;
  bool callback_threw_ = false;
  bool drawn_ = false;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_PROGRESS_HPP
// ---- end <pfp/progress.hpp> ----

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pfp {
namespace detail {

/// Whether o asks for progress (a mode other than off, or a callback).
inline bool wants_progress(const ProgressOptions& o) noexcept {
  return o.mode != ProgressMode::off || static_cast<bool>(o.on_progress);
}

/// Forwards everything to the feed it wraps (a new Feed member must be forwarded here too) and
/// counts what is delivered. It gives no runs (pull_run): every task is delivered, and so counted,
/// on every backend.
class ProgressFeed final : public Feed {
 public:
  ProgressFeed(Feed& inner, const ProgressOptions& o)
      : inner_(inner), line_(o, inner.size_hint(), std::chrono::steady_clock::now()) {}

  std::optional<Task> pull() override { return inner_.pull(); }
  bool finished() override { return inner_.finished(); }
  int wake_fd() const override { return inner_.wake_fd(); }
  void workers_started() override { inner_.workers_started(); }
  std::optional<int> next_priority() override { return inner_.next_priority(); }
  std::uint64_t signature() const override { return inner_.signature(); }
  std::optional<std::size_t> size_hint() const override { return inner_.size_hint(); }
  void deliver(std::uint64_t seq, Result&& r) override {
    const Status status = r.status;
    inner_.deliver(seq, std::move(r));
    count(status);
  }
  void amend(std::uint64_t seq, Result&& r) override { inner_.amend(seq, std::move(r)); }
  void drop_rest(const std::string& why) override { inner_.drop_rest(why); }
  bool stop_requested() override { return inner_.stop_requested(); }
  int side_fd() const override { return inner_.side_fd(); }
  void side_ready() override { inner_.side_ready(); }
  void withdrawn(std::vector<std::uint64_t>& out) override { inner_.withdrawn(out); }
  bool wants_report() override { return inner_.wants_report(); }
  void report(const std::vector<WorkerView>& workers) override { inner_.report(workers); }

  /// The run ended (`stopped`: before its end): the last line, or the last call of the callback.
  void finish(bool stopped) {
    line_.set_total(inner_.size_hint());
    line_.finish(done_, failed_, cancelled_, stopped);
  }

 private:
  void count(Status status) {
    if (status == Status::ok) {
      ++done_;
    } else if (status == Status::cancelled) {
      ++cancelled_;
    } else {
      ++done_;
      ++failed_;
    }
    line_.update(done_, failed_, cancelled_);
  }

  Feed& inner_;
  ProgressLine line_;
  std::size_t done_ = 0;
  std::size_t failed_ = 0;
  std::size_t cancelled_ = 0;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_PROGRESS_FEED_HPP
// ---- end <pfp/detail/progress_feed.hpp> ----

#include <string>

namespace pfp {
namespace detail {

/// Throws pfp::error, saying what to change, for Options no run can honour.
inline void validate(const Options& o) {
  if (o.timeout.count() < 0)
    throw error("pfp::Options::timeout is negative (" + std::to_string(o.timeout.count()) + " ms); use 0 for no limit");
  if (o.max_result_bytes == 0) throw error("pfp::Options::max_result_bytes is 0; every result would be refused");
  if (o.cpu_limit.count() < 0)
    throw error("pfp::Options::cpu_limit is negative (" + std::to_string(o.cpu_limit.count()) + " s); use 0 for no limit");
  switch (o.backend) {
    case Backend::processes:
    case Backend::threads:
    case Backend::inline_:
    case Backend::mpi: return;
  }
  throw error("pfp: Options::backend holds " + std::to_string(static_cast<int>(o.backend)) +
              ", which is not a pfp::Backend; use Backend::processes, Backend::threads, Backend::inline_ or Backend::mpi");
}

/// A backend that runs a Feed across processes of a distributed job. Backend::mpi's is set by a
/// pfp::mpi::Session (<pfp/mpi.hpp>) while it lives, so no core header needs <mpi.h>.
using DistributedBackend = void (*)(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel);
inline DistributedBackend& mpi_backend() noexcept {
  static DistributedBackend backend = nullptr;
  return backend;
}

/// Whether each task runs in a worker process of its own (forked: isolated, killable, inheriting
/// the program as it was at the fork).
inline bool isolated_workers(const Options& o) noexcept {
  return o.backend == Backend::processes || o.backend == Backend::mpi;
}
/// Whether the backend serves a feed's requests about tasks it holds (Feed::withdrawn: stop one,
/// Feed::wants_report: what each worker runs): the process pool does.
inline bool serves_requests(const Options& o) noexcept { return o.backend == Backend::processes; }
/// Whether tasks run one after another in the thread that runs the Feed.
inline bool runs_in_caller(const Options& o) noexcept { return o.backend == Backend::inline_; }

/// run_feed() on the backend itself, without progress.
inline void run_feed_on(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel,
                        KeptWorker* inline_worker) {
  switch (options.backend) {
    case Backend::processes: run_feed_processes(run, options, feed, cancel); return;
    case Backend::threads: run_feed_threads(run, options, feed, cancel); return;
    case Backend::inline_: run_feed_inline(run, options, feed, cancel, inline_worker); return;
    case Backend::mpi:
      if (!mpi_backend())
        throw error("pfp: Options::backend is Backend::mpi but no pfp::mpi::Session is alive; #include <pfp/mpi.hpp>, "
                    "create a pfp::mpi::Session at the start of main() and run the program with mpirun or srun");
      mpi_backend()(run, options, feed, cancel);
      return;
  }
}

/// Runs `feed` to its end on the backend options.backend names: worker processes
/// (run_feed_processes, pool.hpp), threads of this process (run_feed_threads) or the calling
/// thread (run_feed_inline), with the progress Options::progress asks for (ProgressFeed). Every
/// task pulled gets exactly one delivered Result; what each backend enforces and what it throws
/// is said at each of them. Throws pfp::error for invalid Options (validate()). `inline_worker`
/// keeps the inline backend's worker (Options::initializer's state) across runs; see
/// run_feed_inline.
inline void run_feed(const FeedRunner& run, const Options& options, Feed& feed, CancelState* cancel,
                     KeptWorker* inline_worker = nullptr) {
  validate(options);
  if (!wants_progress(options.progress)) {
    run_feed_on(run, options, feed, cancel, inline_worker);
    return;
  }
  ProgressFeed counted(feed, options.progress);
  try {
    run_feed_on(run, options, counted, cancel, inline_worker);
  } catch (...) {
    try {
      counted.finish(true);
    } catch (...) {  // the run's own exception says more
    }
    throw;
  }
  counted.finish(cancel && cancel->requested());
}

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_RUN_FEED_HPP
// ---- end <pfp/detail/run_feed.hpp> ----
// ---- begin <pfp/future.hpp> ----
#ifndef PFP_FUTURE_HPP
#define PFP_FUTURE_HPP

// pfp::Future: the outcome of a task submitted to an Executor, and waiting on sets of them
// (wait_any, wait_all, as_completed), like concurrent.futures.


#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pfp {

/// Thrown by Future::get() (and pfp::map()) when a task did not return normally. Carries the
/// task's full Result: status, error text, pid, duration, attempts.
class task_error : public error {
 public:
  explicit task_error(Result r) : error(describe(r)), result_(std::move(r)) {}
  const Result& result() const noexcept { return result_; }

 private:
  static std::string describe(const Result& r) {
    return "pfp: task " + (r.function_name.empty() ? std::to_string(r.index) : r.function_name) + " " +
           std::string(to_string(r.status)) + ": " + r.error;
  }
  Result result_;
};

template <class T>
class Future;
class Executor;

namespace detail {
struct FutureAccess;

// One mutex and condition variable for every future in the process: a completion wakes whoever
// waits on any set of futures, whichever executors they came from. Never destroyed: a worker
// forked while a thread waited here inherits a condition variable that counts that waiter, and a
// function that calls exit() there would block for good in its destructor.
struct FutureHub {
  std::mutex mutex;
  std::condition_variable done;
  static FutureHub& instance() {
    static FutureHub* const hub = new FutureHub;
    return *hub;
  }
};

struct FutureState;

// What a Future asks of the executor it came from (implemented by Executor).
class FutureOwner {
 public:
  // True if the task will end cancelled; `settle` gets the verdict when it is known now (the
  // caller fulfils the future with it, outside every lock).
  virtual bool cancel(FutureState& s, std::optional<Result>& settle) = 0;
  virtual bool running(const FutureState& s) = 0;
  virtual void callback_failed(std::exception_ptr e) noexcept = 0;

 protected:
  ~FutureOwner() = default;
};

// Shared by an executor and its futures, which may outlive it: calls reach the executor only
// while it exists (the executor clears `owner`, under an exclusive lock, once it has shut down;
// calls hold a shared one, so they never wait for each other).
struct FutureLink {
  std::shared_mutex mutex;
  FutureOwner* owner = nullptr;
};

struct FutureState {
  static constexpr std::uint64_t not_pulled = ~std::uint64_t{0};
  std::optional<Result> result;                  // guarded by FutureHub::mutex
  std::vector<std::function<void()>> callbacks;  // guarded by FutureHub::mutex; run once result is set
  std::shared_ptr<FutureLink> link;              // set before the Future is handed out
  // Set before the Future is handed out, then guarded by the executor's mutex:
  bool submitted = false;  // a submission of the executor's own (not a then() future)
  bool withdrawn = false;  // cancelled while it waited in the executor: never pulled
  std::uint64_t fn = 0;
  std::uint64_t order = 0;                       // the submission's number
  std::uint64_t pulled_as = not_pulled;          // the executor's count of pulls when it was pulled
};

// What a callback threw goes to the executor the future came from (which keeps it for
// shutdown()), or to stderr once that executor is gone.
inline void callback_failed(const FutureState& state, std::exception_ptr e) noexcept {
  if (state.link) {
    std::shared_lock<std::shared_mutex> lock(state.link->mutex);
    if (state.link->owner) {
      state.link->owner->callback_failed(e);
      return;
    }
  }
  try {
    std::rethrow_exception(e);
  } catch (...) {
    const std::string msg = "pfp: a future's done callback threw after its executor was gone: " + describe_current_exception() + "\n";
    [[maybe_unused]] bool ignored = write_all(2, msg.data(), msg.size());
  }
}

// Sets the verdict, wakes every waiter, then runs the callbacks in this thread (outside every
// lock of pfp's: a callback may submit, or add callbacks).
inline void fulfil(FutureState& state, Result&& r) {
  FutureHub& hub = FutureHub::instance();
  std::vector<std::function<void()>> callbacks;
  {
    std::lock_guard<std::mutex> lock(hub.mutex);
    state.result = std::move(r);
    callbacks.swap(state.callbacks);
  }
  hub.done.notify_all();
  for (auto& callback : callbacks) {
    try {
      callback();
    } catch (...) {
      callback_failed(state, std::current_exception());
    }
  }
}

// Runs `callback` once `state` has its verdict: now, in this thread (what it throws goes to the
// caller), or later in the thread that fulfils it.
inline void when_done(FutureState& state, std::function<void()> callback) {
  {
    std::lock_guard<std::mutex> lock(FutureHub::instance().mutex);
    if (!state.result) {
      state.callbacks.push_back(std::move(callback));
      return;
    }
  }
  callback();
}

}  // namespace detail

/// The outcome of a submitted task, available once it completes. Copies share the same outcome.
/// T is what get() returns: the function's return type (pfp::Value for untyped functions).
template <class T = Value>
class Future {
 public:
  Future() = default;

  /// False for a default-constructed Future.
  bool valid() const noexcept { return state_ != nullptr; }

  /// True once the task has a verdict (whatever it is). Never blocks.
  bool ready() const {
    check();
    std::lock_guard<std::mutex> lock(detail::FutureHub::instance().mutex);
    return state_->result.has_value();
  }

  /// Blocks until the task has a verdict.
  void wait() const {
    check();
    detail::FutureHub& hub = detail::FutureHub::instance();
    std::unique_lock<std::mutex> lock(hub.mutex);
    hub.done.wait(lock, [&] { return state_->result.has_value(); });
  }

  /// Blocks until the task has a verdict or `timeout` passes. Returns ready().
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    check();
    detail::FutureHub& hub = detail::FutureHub::instance();
    std::unique_lock<std::mutex> lock(hub.mutex);
    return hub.done.wait_for(lock, timeout, [&] { return state_->result.has_value(); });
  }

  /// Waits, then returns the task's full Result (whatever its status).
  const Result& result() const {
    wait();
    return *state_->result;  // never changes once set
  }

  /// Waits, then returns what the function returned, converted to T. Throws pfp::task_error
  /// (carrying the Result) if the task threw, crashed, timed out or was cancelled, and
  /// pfp::error if the value does not convert to T.
  T get() const {
    const Result& r = result();
    if (!r.ok()) throw task_error(r);
    if constexpr (std::is_void_v<T>) {
      return;
    } else {
      return r.result.template as<T>();
    }
  }

  /// Cancels this one task. One that has not begun never runs: its Result is Status::cancelled
  /// ("cancelled before it started") at once, or, with Backend::processes when a worker held it
  /// already, within a turn of the pool. With Backend::processes one that runs is killed with its
  /// worker and everything it started, Status::cancelled. Returns true when the task ends so (a
  /// running one may still finish first: see result()); false when it has a verdict already, is
  /// running on the threads or inline backend (a thread cannot be stopped), or came from then().
  /// Thread-safe.
  bool cancel() const {
    check();
    if (!state_->link) return false;
    std::optional<Result> settle;
    bool taken = false;
    {
      std::shared_lock<std::shared_mutex> lock(state_->link->mutex);
      taken = state_->link->owner && state_->link->owner->cancel(*state_, settle);
    }
    if (settle) detail::fulfil(*state_, std::move(*settle));
    return taken;
  }

  /// True while the task runs: it has begun and has no verdict yet. With Backend::processes
  /// this asks the pool's thread (a round trip of a few microseconds when it is idle).
  bool running() const {
    check();
    if (!state_->link) return false;
    std::shared_lock<std::shared_mutex> lock(state_->link->mutex);
    return state_->link->owner && state_->link->owner->running(*state_);
  }

  /// Calls f(future) (f takes a const Future<T>&) once the task has its verdict, whatever it is.
  /// Where f runs: at once in this thread if the verdict is there (what f throws then goes to the
  /// caller); else in the thread that gives the verdict -- the pool's thread (processes), the
  /// thread that ran the task (threads), the thread that submitted it (inline), or the thread
  /// that cancelled it (cancel(), shutdown(true)). What f throws there is never lost: the
  /// Executor keeps the first such exception and shutdown() rethrows it (its destructor, which
  /// cannot throw, writes it to stderr). f must be quick and must not wait for the executor (a
  /// submit() into a full queue, get() of a future that is not ready): the pool waits for f.
  template <class F>
  void add_done_callback(F f) const {
    check();
    detail::when_done(*state_, [self = *this, f = std::move(f)]() mutable { f(self); });
  }

  /// A Future of what f(future) returns (f takes a const Future<T>&; its return type U must
  /// convert to pfp::Value, or be void), completed when f has run, where add_done_callback()'s
  /// f would. What f throws is that Future's Result (Status::exception, "<type>: what()"):
  /// never lost. The Result keeps this task's function_name and index.
  template <class F>
  auto then(F f) const {
    check();
    using U = std::invoke_result_t<F&, const Future<T>&>;
    auto next = std::make_shared<detail::FutureState>();
    next->link = state_->link;
    detail::when_done(*state_, [self = *this, next, f = std::move(f)]() mutable {
      Result r;
      r.function_name = self.state_->result->function_name;
      r.index = self.state_->result->index;
      try {
        if constexpr (std::is_void_v<U>) {
          f(self);
        } else {
          r.result = Value(f(self));
        }
        r.status = Status::ok;
      } catch (...) {
        r.status = Status::exception;
        r.result = Value();
        r.error = detail::describe_current_exception();
      }
      detail::fulfil(*next, std::move(r));
    });
    return Future<U>(std::move(next));
  }

 private:
  template <class>
  friend class Future;
  friend class Executor;
  friend struct detail::FutureAccess;
  explicit Future(std::shared_ptr<detail::FutureState> s) : state_(std::move(s)) {}
  void check() const {
    if (!state_) throw error("pfp::Future: this future is empty (default-constructed); use one returned by submit()");
  }
  std::shared_ptr<detail::FutureState> state_;

 public:
  /// A Future of another type over the same outcome (e.g. to mix them in one wait_any()).
  template <class U>
  Future<U> as() const {
    return Future<U>(state_);
  }
};

namespace detail {
struct FutureAccess {
  template <class T>
  static const FutureState* state(const Future<T>& f) {
    if (!f.state_) throw error("pfp: an empty (default-constructed) future was given; use ones returned by submit()");
    return f.state_.get();
  }
};

// Under the hub lock: the first position in `states` that is ready and not yet taken, waiting
// until `deadline` (if any).
inline std::optional<std::size_t> wait_first_ready(const std::vector<const FutureState*>& states, const std::vector<bool>* taken,
                                                   std::optional<std::chrono::steady_clock::time_point> deadline) {
  FutureHub& hub = FutureHub::instance();
  std::unique_lock<std::mutex> lock(hub.mutex);
  std::optional<std::size_t> found;
  auto scan = [&] {
    for (std::size_t i = 0; i < states.size(); ++i)
      if ((!taken || !(*taken)[i]) && states[i]->result) return (found = i).has_value();
    return false;
  };
  if (deadline)
    hub.done.wait_until(lock, *deadline, scan);
  else
    hub.done.wait(lock, scan);
  return found;
}

template <class T>
std::vector<const FutureState*> states_of(const std::vector<Future<T>>& futures) {
  std::vector<const FutureState*> states;
  states.reserve(futures.size());
  for (const auto& f : futures) states.push_back(FutureAccess::state(f));
  return states;
}

inline std::optional<std::chrono::steady_clock::time_point> deadline_after(std::optional<std::chrono::milliseconds> timeout) {
  if (!timeout) return std::nullopt;
  return std::chrono::steady_clock::now() + *timeout;
}
}  // namespace detail

/// Blocks until one of `futures` is ready and returns its position; std::nullopt if `futures` is
/// empty or `timeout` (if given) passes first. Throws pfp::error if a future is empty.
template <class T>
std::optional<std::size_t> wait_any(const std::vector<Future<T>>& futures,
                                    std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  if (futures.empty()) return std::nullopt;
  return detail::wait_first_ready(detail::states_of(futures), nullptr, detail::deadline_after(timeout));
}

/// Blocks until every one of `futures` is ready. Returns false if `timeout` (if given) passed
/// first. Throws pfp::error if a future is empty.
template <class T>
bool wait_all(const std::vector<Future<T>>& futures, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  std::vector<const detail::FutureState*> states = detail::states_of(futures);
  detail::FutureHub& hub = detail::FutureHub::instance();
  std::unique_lock<std::mutex> lock(hub.mutex);
  auto all = [&] {
    for (const auto* s : states)
      if (!s->result) return false;
    return true;
  };
  if (!timeout) {
    hub.done.wait(lock, all);
    return true;
  }
  return hub.done.wait_for(lock, *timeout, all);
}

/// The futures in the order they complete, as a range: `for (auto& f : pfp::as_completed(fs))`.
/// Each step blocks until the next one is ready; with a timeout, a step that waits past the
/// deadline (counted from the call) throws pfp::error, like concurrent.futures.as_completed.
template <class T>
class AsCompleted {
 public:
  AsCompleted(std::vector<Future<T>> futures, std::optional<std::chrono::milliseconds> timeout)
      : futures_(std::move(futures)),
        states_(detail::states_of(futures_)),
        taken_(futures_.size(), false),
        deadline_(detail::deadline_after(timeout)) {}

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Future<T>;
    using difference_type = std::ptrdiff_t;
    using pointer = Future<T>*;
    using reference = Future<T>&;
    reference operator*() const { return owner_->futures_[at_]; }
    pointer operator->() const { return &owner_->futures_[at_]; }
    iterator& operator++() {
      at_ = owner_->next();
      return *this;
    }
    bool operator==(const iterator& o) const { return at_ == o.at_; }
    bool operator!=(const iterator& o) const { return at_ != o.at_; }

   private:
    friend class AsCompleted;
    iterator(AsCompleted* owner, std::size_t at) : owner_(owner), at_(at) {}
    AsCompleted* owner_;
    std::size_t at_;
  };

  iterator begin() { return iterator(this, next()); }
  iterator end() { return iterator(this, futures_.size()); }

 private:
  std::size_t next() {
    if (yielded_ == futures_.size()) return futures_.size();
    std::optional<std::size_t> i = detail::wait_first_ready(states_, &taken_, deadline_);
    if (!i)
      throw error("pfp::as_completed: the timeout passed with " + std::to_string(futures_.size() - yielded_) + " of " +
                  std::to_string(futures_.size()) + " futures not ready");
    taken_[*i] = true;
    ++yielded_;
    return *i;
  }
  std::vector<Future<T>> futures_;
  std::vector<const detail::FutureState*> states_;
  std::vector<bool> taken_;
  std::size_t yielded_ = 0;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
};

/// Iterates `futures` in completion order (see AsCompleted).
template <class T>
AsCompleted<T> as_completed(std::vector<Future<T>> futures, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  return AsCompleted<T>(std::move(futures), timeout);
}

}  // namespace pfp

#endif  // PFP_FUTURE_HPP
// ---- end <pfp/future.hpp> ----

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <shared_mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

namespace pfp {

namespace mpi {
class Session;  // serves an Executor's submissions on the ranks other than 0 (<pfp/mpi.hpp>)
}

/// A declared function: what Executor::submit() takes. R is its return type, A its parameters.
template <class R, class... A>
struct Function {
  std::uint64_t id = 0;
  std::string name;
};

/// How an Executor queues work, beyond the run Options.
struct ExecutorOptions {
  /// Submissions that may wait to start before submit() blocks (backpressure on a producer);
  /// 0 = unbounded. A submission waits from submit() until a worker can begin it: beyond the one
  /// task per worker that runs, tasks handed to workers ahead of time still count as waiting.
  /// With stream_results, a submission counts until next_completed() takes it.
  std::size_t max_queued = 0;
  /// Keep every completed Result for next_completed(), in completion order.
  bool stream_results = false;
};

/// Per-submission settings (Executor::submit_with).
struct Submission {
  /// Higher starts first when every worker is busy (as submit_with_priority()).
  int priority = 0;
  /// This task's wall-clock limit in place of Options::timeout (0: the Options' one), like
  /// pebble's schedule(timeout=): past it the task is killed with its process group and reported
  /// Status::timed_out. Backend::processes only: the threads and inline backends enforce no
  /// timeout (a thread cannot be killed).
  std::chrono::milliseconds timeout{0};
};

/// One worker, as Executor::status() sees it.
struct ExecutorWorker {
  int pid = 0;                                    ///< its process (threads and inline: this process)
  std::optional<std::size_t> task;                ///< the index (Result::index) of the submission it runs
  std::string function;                           ///< the name of that submission's function
  std::chrono::steady_clock::time_point since{};  ///< when that submission began
};

/// A moment's view of an Executor (Executor::status()).
struct ExecutorStatus {
  std::size_t queued = 0;   ///< submitted and not begun (with processes: held by a worker ahead of time included)
  std::size_t running = 0;  ///< begun, without a verdict yet
  /// Processes: every live worker, an idle one without a task. Threads and inline: one entry per
  /// running submission (the pool's threads are not told apart).
  std::vector<ExecutorWorker> workers;
};

/// A pool of workers that runs submitted tasks until shut down, like concurrent.futures'
/// ProcessPoolExecutor (Options::backend picks processes, threads or inline).
///
/// declare() every function first; the workers start at start() (or the first submit()) and
/// inherit them, so functions may capture anything. Only the arguments of each submission are
/// serialized (to pfp::Value, see to_value/from_value). Priorities: with every worker busy, the
/// highest priority waiting submission starts first; equal priorities start in submission order.
/// submit(), next_completed(), close() and the Future calls are thread-safe; declare(), start(),
/// shutdown() and the destructor are for the owning thread. The destructor shuts down and waits:
/// no worker process outlives the Executor.
///
/// With Backend::processes the pool runs a background thread of this process, which forks the
/// workers at start() and replaces dead or retired ones later: start the Executor before other
/// threads that hold locks a function needs (see Options::threads).
class Executor : private detail::FutureOwner {
 public:
  /// Throws pfp::error if options are invalid.
  explicit Executor(Options options = Options{}, ExecutorOptions queue = ExecutorOptions{})
      : options_(options), queue_options_(queue), link_(std::make_shared<detail::FutureLink>()) {
    detail::validate(options_);
    options_.threads = ThreadPolicy::allow;  // the pool's own thread is the one that forks
    link_->owner = this;
  }

  /// Shuts down and waits. A done callback's exception that shutdown() did not rethrow is
  /// written to stderr (a destructor cannot throw).
  ~Executor() {
    try {
      shutdown();
    } catch (...) {
      report_lost(std::current_exception());
    }
    std::unique_lock<std::shared_mutex> lock(link_->mutex);
    link_->owner = nullptr;
  }
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  /// Declares f (any callable with one non-template operator(): a function, a lambda without auto
  /// parameters, ...) for submit(). Parameters are read from the submitted Values with as<T>()
  /// and the return value converted with pfp::Value(r). Throws pfp::error after start().
  template <class F>
  auto declare(std::string name, F f) {
    using Fn = std::decay_t<F>;
    using Traits = detail::callable_traits<Fn>;
    static_assert(Traits::known,
                  "pfp::Executor::declare: f must have exactly one call signature (a function, or a lambda "
                  "without auto parameters) so that its parameter types can be read from the submitted values");
    if constexpr (Traits::known) {
      using R = typename Traits::result;
      using Params = typename Traits::args;
      static_assert(std::is_void_v<R> || std::is_constructible_v<Value, R>,
                    "pfp::Executor::declare: the function's return type cannot be converted to pfp::Value; define "
                    "void to_value(pfp::Value&, const T&) in the type's namespace");
      std::lock_guard<std::mutex> lock(mutex_);
      if (started_) throw error("pfp::Executor::declare: declare every function before start() or the first submit()");
      const std::uint64_t id = functions_.size();
      functions_.push_back(Declared{name, [f = Fn(std::move(f))](const Value& args) mutable {
                                       return detail::call_with_value_args<R, Params>(
                                           f, args, std::make_index_sequence<std::tuple_size_v<Params>>{});
                                     }});
      return make_function<R>(id, std::move(name), static_cast<Params*>(nullptr));
    }
  }

  /// Starts the workers. Called by the first submit() if not before. With the processes backend
  /// it returns once the workers are forked, so threads created after start() never run while
  /// one is (a lock such a thread held at that moment would stay locked in the worker). Workers
  /// started later (to replace one that died or left) are forked while other threads run.
  /// Throws pfp::error if no worker can be started (processes) or after shutdown().
  void start() {
    std::unique_lock<std::mutex> lock(mutex_);
    start_locked(lock);
  }

  /// Queues f(args...) and returns its Future. Blocks while ExecutorOptions::max_queued
  /// submissions wait. Throws pfp::error after close()/shutdown() or if the pool has failed, and
  /// pfp::error from the conversion of an argument to pfp::Value.
  template <class R, class... A, class... Given>
  Future<R> submit(const Function<R, A...>& fn, Given&&... args) {
    return submit_with_priority(0, fn, std::forward<Given>(args)...);
  }

  /// submit() with a priority: higher starts first when workers are busy.
  template <class R, class... A, class... Given>
  Future<R> submit_with_priority(int priority, const Function<R, A...>& fn, Given&&... args) {
    Submission how;
    how.priority = priority;
    return submit_with(how, fn, std::forward<Given>(args)...);
  }

  /// submit() with per-submission settings: a priority, a timeout of its own (see Submission).
  /// Throws like submit(), and pfp::error for a negative timeout.
  template <class R, class... A, class... Given>
  Future<R> submit_with(const Submission& how, const Function<R, A...>& fn, Given&&... args) {
    static_assert(sizeof...(A) == sizeof...(Given), "pfp::Executor::submit: wrong number of arguments for this function");
    if (how.timeout.count() < 0)
      throw error("pfp::Submission::timeout is negative (" + std::to_string(how.timeout.count()) +
                  " ms); use 0 for Options::timeout");
    Value packed = Value::array();
    (packed.push_back(pack_argument<A>(std::forward<Given>(args))), ...);
    return Future<R>(enqueue(fn.id, how, encode(packed)));
  }

  /// Like concurrent.futures.Executor.map: submits fn for every item of `items` (the argument,
  /// or a std::tuple of the arguments for a function of several), then returns what each
  /// returned, in input order. `timeout`, counted from the call, bounds the whole. Throws
  /// pfp::task_error for the first item, in input order, that did not return normally, and
  /// pfp::error once the timeout passes before every value is there; either way the
  /// submissions still without a verdict are cancelled first (Future::cancel()).
  template <class R, class... A, class Range>
  std::vector<R> map(const Function<R, A...>& fn, const Range& items, std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  /// Queued and running counts and what each worker runs, since when (see ExecutorStatus).
  /// With Backend::processes it asks the pool's thread (a round trip); from a done callback that
  /// runs in that thread it reports no workers. Thread-safe.
  ExecutorStatus status();

  /// The next completed Result, in completion order; blocks until one is there. Returns nullopt
  /// once close() was called and every submission's Result was taken; then rethrows the error
  /// given to close(), if any. Needs ExecutorOptions::stream_results (else throws pfp::error).
  std::optional<Result> next_completed() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!queue_options_.stream_results)
      throw error("pfp::Executor::next_completed: set ExecutorOptions::stream_results to receive completed results");
    completed_cv_.wait(lock, [&] { return !completed_.empty() || (closed_ && taken_ == submitted_); });
    if (completed_.empty()) {
      if (producer_error_) std::rethrow_exception(std::exchange(producer_error_, nullptr));
      return std::nullopt;
    }
    Result r = std::move(completed_.front());
    completed_.pop_front();
    ++taken_;
    space_cv_.notify_all();
    return r;
  }

  /// Ends the stream of submissions: submit() then throws, queued tasks still run, and
  /// next_completed() returns nullopt after the last Result (rethrowing producer_error, if given).
  void close(std::exception_ptr producer_error = nullptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!closed_) {
        closed_ = true;
        producer_error_ = producer_error;
      }
    }
    wake();
    space_cv_.notify_all();
    completed_cv_.notify_all();
  }

  /// Stops taking work and waits for the pool to end. With cancel_pending, tasks that have not
  /// started end as Status::cancelled; otherwise they run first. Running tasks finish. Returns
  /// once every worker has been reaped. Idempotent. Then rethrows the first exception a done
  /// callback (Future::add_done_callback) threw in another thread, if any.
  void shutdown(bool cancel_pending = false) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cancel_pending) cancel_queued_locked("cancelled before it started: the executor was shut down");
    }
    settle_set_aside();
    close();
    if (runner_.joinable()) runner_.join();
    inline_worker_.end();  // Backend::inline_: its finalizer (the pool's workers ran theirs)
    settle_set_aside();
    std::exception_ptr failed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      failed = std::exchange(callback_error_, nullptr);
    }
    if (failed) std::rethrow_exception(failed);
  }

  /// Stops everything now: queued tasks are cancelled, running ones killed (processes) with their
  /// process groups, all as Status::cancelled. Async-signal-unsafe; thread-safe.
  void cancel() {
    {
      // Closed under the same lock that cancels the queue: nothing submitted in between waits for
      // a pool that has stopped pulling.
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      cancel_queued_locked("cancelled before it started");
    }
    settle_set_aside();
    cancel_state_.request();
    close();
  }

  const Options& options() const noexcept { return options_; }

 private:
  friend class mpi::Session;
  struct Declared {
    std::string name;
    std::function<Value(const Value&)> run;
  };
  struct Waiting {
    int priority;
    std::chrono::milliseconds timeout;
    std::uint64_t order;
    std::uint64_t fn;
    std::shared_ptr<std::string> payload;
    std::shared_ptr<detail::FutureState> state;
    bool operator<(const Waiting& o) const {  // std::priority_queue keeps the largest on top
      return priority != o.priority ? priority < o.priority : order > o.order;
    }
  };
  struct Pulled {
    std::uint64_t fn;
    std::shared_ptr<detail::FutureState> state;
    std::uint64_t order;  // the submission's number: its Result's index
    std::chrono::steady_clock::time_point since{};  // when it was pulled (threads, inline: when it began)
  };

  // As given when it converts to a Value (the worker's as<A>() then checks ranges), else as A.
  template <class A, class G>
  static Value pack_argument(G&& given) {
    if constexpr (std::is_constructible_v<Value, G&&>) {
      return Value(std::forward<G>(given));
    } else {
      static_assert(std::is_constructible_v<A, G&&>, "pfp::Executor::submit: an argument does not convert to the parameter's type");
      return Value(A(std::forward<G>(given)));
    }
  }

  template <class R, class... A>
  static Function<R, A...> make_function(std::uint64_t id, std::string name, std::tuple<A...>*) {
    return Function<R, A...>{id, std::move(name)};
  }

  // The Feed the backend pulls from: every call comes from the backend's thread (see
  // detail/executor_control.hpp).
  class QueueFeed;
  friend class QueueFeed;

  void start_locked(std::unique_lock<std::mutex>& lock) {
    if (started_) {
      if (failure_) throw error("pfp::Executor: the pool has failed: " + *failure_);
      if (closed_) throw error("pfp::Executor: the executor was shut down or closed; create a new one");
      return;
    }
    started_ = true;
    try {
      wake_.open();
      if (detail::runs_in_caller(options_)) return;  // runs in submit()
      if (detail::serves_requests(options_)) control_.open();
      cancel_state_.open();
      runner_ = std::thread([this] { run_pool(); });
      pool_thread_ = runner_.get_id();
      pool_running_ = true;
    } catch (...) {
      // Without its pipes or its thread no pool will ever answer: refuse every submission.
      cancel_state_.close();
      fail_locked("could not start: " + detail::describe_current_exception());
      throw error("pfp::Executor: the pool has failed: " + *failure_);
    }
    if (!detail::isolated_workers(options_)) return;
    forked_cv_.wait(lock, [&] { return workers_forked_ || failure_; });
    if (failure_) throw error("pfp::Executor: the pool has failed: " + *failure_);
  }

  void run_pool();

  // The declared names, hashed: what every rank of a Backend::mpi pool must have alike.
  std::uint64_t signature() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::uint64_t h = detail::hash_bytes(detail::hash_seed, "executor " + std::to_string(functions_.size()));
    for (const Declared& d : functions_) h = detail::hash_bytes(detail::hash_bytes(h, d.name), std::string_view("\0", 1));
    return h;
  }

  detail::FeedRunner task_runner() {
    return [this](const detail::TaskView& task, Result& r) {
      if (task.fn >= functions_.size()) throw error("pfp: unknown function id " + std::to_string(task.fn));
      r.result = functions_[static_cast<std::size_t>(task.fn)].run(decode(task.payload));
    };
  }

  std::shared_ptr<detail::FutureState> enqueue(std::uint64_t fn, const Submission& how, std::string payload) {
    auto state = std::make_shared<detail::FutureState>();
    state->link = link_;
    state->submitted = true;
    state->fn = fn;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (closed_ && started_) start_locked(lock);  // throws the reason
      if (closed_) throw error("pfp::Executor::submit: the executor was closed; no more submissions are taken");
      start_locked(lock);
      if (queue_options_.max_queued) {
        space_cv_.wait(lock, [&] { return closed_ || outstanding_locked() < queue_options_.max_queued; });
        if (closed_) throw error("pfp::Executor::submit: the executor was closed while this submission waited for room");
      }
      ++submitted_;
      state->order = order_;
      waiting_.push(Waiting{how.priority, how.timeout, order_++, fn, std::make_shared<std::string>(std::move(payload)), state});
    }
    if (detail::runs_in_caller(options_)) {
      run_inline_now();
    } else {
      wake();
    }
    return state;
  }

  // Inline backend: the caller runs what is queued, now.
  void run_inline_now();

  std::size_t outstanding_locked() const {
    if (queue_options_.stream_results) return submitted_ - taken_;
    // Pulled by the pool: at most one per worker runs, the rest wait in the workers' queues.
    const std::size_t running = std::min(pulled_.size(), static_cast<std::size_t>(detail::effective_workers(options_)));
    return waiting_.size() - withdrawn_waiting_ + pulled_.size() - running;
  }

  void complete(detail::FutureState& state, Result&& r) {
    if (queue_options_.stream_results) {
      Result copy = r;
      detail::fulfil(state, std::move(r));
      std::lock_guard<std::mutex> lock(mutex_);
      completed_.push_back(std::move(copy));
      completed_cv_.notify_all();
    } else {
      detail::fulfil(state, std::move(r));
    }
  }

  // The pool cannot go on: unless the executor was closed first (then it just ends), the reason
  // is kept for every later submit() and start().
  void fail_locked(const std::string& why) {
    if (!closed_ && !failure_) failure_ = why;
    closed_ = true;
  }

  Result cancelled_result(std::uint64_t fn, std::uint64_t order, const std::string& why) const {
    Result r;
    r.function_name = functions_[fn].name;
    r.index = static_cast<std::size_t>(order);
    r.status = Status::cancelled;
    r.error = why;
    return r;
  }

  // Every waiting submission is cancelled; their futures are fulfilled by settle_set_aside(),
  // once the lock is released (their callbacks may call the executor).
  void cancel_queued_locked(const std::string& why);
  void settle_set_aside();

  // detail::FutureOwner: what a Future asks (detail/executor_control.hpp).
  bool cancel(detail::FutureState& s, std::optional<Result>& settle) override;
  bool running(const detail::FutureState& s) override;
  void callback_failed(std::exception_ptr e) noexcept override;
  static void report_lost(std::exception_ptr e) noexcept;
  bool ready_locked(const detail::FutureState& s) const;
  // What the pool's workers do now (processes), asked through the control pipe; nullopt if the
  // pool does not answer (not running, or busy starting workers for seconds).
  std::optional<std::vector<detail::WorkerView>> ask_pool(std::unique_lock<std::mutex>& lock);

  template <class R, class... A, class Item>
  Future<R> submit_item(const Function<R, A...>& fn, const Item& item) {
    if constexpr (sizeof...(A) == 1) {
      return submit(fn, item);
    } else {
      return std::apply([&](const auto&... args) { return submit(fn, args...); }, item);
    }
  }

  void wake() noexcept { wake_.ring(); }
  void drain_wake() noexcept { wake_.drain(); }

  Options options_;
  ExecutorOptions queue_options_;
  std::shared_ptr<detail::FutureLink> link_;  // shared with every Future handed out
  std::vector<Declared> functions_;  // fixed once started
  std::mutex mutex_;
  std::condition_variable space_cv_;      // room in the queue
  std::condition_variable completed_cv_;  // a Result for next_completed(), or the end
  std::condition_variable forked_cv_;     // the pool forked its first workers (or failed)
  std::condition_variable report_cv_;     // the pool reported its workers (or ended)
  bool workers_forked_ = false;
  std::priority_queue<Waiting> waiting_;
  std::size_t withdrawn_waiting_ = 0;  // entries of waiting_ cancelled by Future::cancel(), skipped when pulled
  std::unordered_map<std::uint64_t, Pulled> pulled_;
  std::vector<std::pair<std::shared_ptr<detail::FutureState>, Result>> set_aside_;  // see cancel_queued_locked()
  std::deque<Result> completed_;
  std::uint64_t order_ = 0;
  std::uint64_t pulls_ = 0;
  std::uint64_t feed_base_ = 0;  // pulls_ when the backend's current run began: its seq 0
  std::size_t submitted_ = 0;
  std::size_t taken_ = 0;
  bool started_ = false;
  bool closed_ = false;
  bool draining_inline_ = false;
  bool pool_running_ = false;  // the pool's thread runs the backend
  std::thread::id pool_thread_;  // runner_'s, kept apart from it (join() changes runner_)
  std::vector<std::uint64_t> cancel_requests_;  // pulls_ numbers of running tasks to stop (processes)
  bool report_wanted_ = false;
  std::uint64_t report_count_ = 0;  // reports the pool gave
  std::vector<detail::WorkerView> report_;
  std::optional<std::string> failure_;
  std::exception_ptr producer_error_;
  std::exception_ptr callback_error_;  // the first a done callback threw in another thread
  detail::WakePipe wake_;     // rung by submit(), close() and shutdown(): the pool's feed has news
  detail::WakePipe control_;  // rung by Future::cancel(), running() and status(): requests for the pool (processes)
  detail::CancelState cancel_state_;
  std::thread runner_;
  detail::KeptWorker inline_worker_{options_};  // Backend::inline_: one worker from the first submit() to shutdown
};

}  // namespace pfp

// ---- begin <pfp/detail/executor_control.hpp> ----
#ifndef PFP_DETAIL_EXECUTOR_CONTROL_HPP
#define PFP_DETAIL_EXECUTOR_CONTROL_HPP

// pfp::Executor, continued: the Feed its backend pulls from, how the pool's thread ends, and what
// a Future or a caller asks while tasks run -- cancel one task, whether it runs, what every
// worker runs (status()), map(). Requests for the process pool go through the control pipe, which
// the pool watches as the feed's side descriptor: a run that asks nothing pays nothing per task.
// Part of executor.hpp, which includes it at its end.


namespace pfp {

// Every call comes from the backend's thread (the threads backend: one at a time, under its lock).
class Executor::QueueFeed final : public detail::Feed {
 public:
  // Each run of a backend numbers its tasks from 0; the executor's count goes on across runs
  // (the inline backend runs once per submit()).
  explicit QueueFeed(Executor& ex) : ex_(ex) {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    base_ = ex_.feed_base_ = ex_.pulls_;
  }
  std::optional<detail::Task> pull() override {
    ex_.drain_wake();
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    if (!skip_withdrawn()) return std::nullopt;
    Waiting w = ex_.waiting_.top();
    ex_.waiting_.pop();
    w.state->pulled_as = ex_.pulls_;
    Pulled pulled{w.fn, std::move(w.state), w.order};
    if (!detail::serves_requests(ex_.options_)) pulled.since = std::chrono::steady_clock::now();  // handed out now
    ex_.pulled_.emplace(ex_.pulls_++, std::move(pulled));
    if (!ex_.queue_options_.stream_results) ex_.space_cv_.notify_all();
    return detail::Task{w.fn, std::move(*w.payload), w.priority, w.timeout};
  }
  std::optional<int> next_priority() override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    if (!skip_withdrawn()) return std::nullopt;
    return ex_.waiting_.top().priority;
  }
  bool finished() override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    return ex_.waiting_.empty() && (ex_.closed_ || ex_.draining_inline_);
  }
  int wake_fd() const override { return ex_.wake_.read_fd(); }
  std::uint64_t signature() const override { return ex_.signature(); }
  void workers_started() override {
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      ex_.workers_forked_ = true;
    }
    ex_.forked_cv_.notify_all();
  }
  void deliver(std::uint64_t seq, Result&& r) override {
    std::shared_ptr<detail::FutureState> state;
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      auto it = ex_.pulled_.find(base_ + seq);
      state = std::move(it->second.state);
      r.function_name = ex_.functions_[it->second.fn].name;
      r.index = static_cast<std::size_t>(it->second.order);
      ex_.pulled_.erase(it);
    }
    if (!ex_.queue_options_.stream_results) ex_.space_cv_.notify_all();
    ex_.complete(*state, std::move(r));
  }
  // The backend stops pulling for good (cancelled, or it cannot start a worker): what waits is
  // cancelled, and an executor nobody closed has failed, so later submissions are refused.
  void drop_rest(const std::string& why) override {
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      ex_.fail_locked(why);
      ex_.cancel_queued_locked(why);
    }
    ex_.settle_set_aside();
  }
  int side_fd() const override { return ex_.control_.read_fd(); }
  void side_ready() override { ex_.control_.drain(); }
  void withdrawn(std::vector<std::uint64_t>& out) override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    for (std::uint64_t pulled_as : ex_.cancel_requests_) out.push_back(pulled_as - base_);
    ex_.cancel_requests_.clear();
  }
  bool wants_report() override {
    std::lock_guard<std::mutex> lock(ex_.mutex_);
    return ex_.report_wanted_;
  }
  void report(const std::vector<detail::WorkerView>& workers) override {
    {
      std::lock_guard<std::mutex> lock(ex_.mutex_);
      ex_.report_ = workers;
      ex_.report_wanted_ = false;
      ++ex_.report_count_;
    }
    ex_.report_cv_.notify_all();
  }

 private:
  // Drops the cancelled entries at the top of the queue; false if nothing is left.
  bool skip_withdrawn() {
    while (!ex_.waiting_.empty() && ex_.waiting_.top().state->withdrawn) {
      ex_.waiting_.pop();
      --ex_.withdrawn_waiting_;
    }
    return !ex_.waiting_.empty();
  }
  Executor& ex_;
  std::uint64_t base_ = 0;
};

inline void Executor::run_pool() {
  QueueFeed feed(*this);
  try {
    detail::run_feed(task_runner(), options_, feed, &cancel_state_);
  } catch (...) {
    const std::string why = detail::describe_current_exception();
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = why;  // what the backend threw says most (over what its drop_rest() said)
    closed_ = true;
    cancel_queued_locked("not run: the pool failed: " + why);
  }
  {
    // However the backend ended, nothing may wait for it now.
    std::lock_guard<std::mutex> lock(mutex_);
    fail_locked("the pool ended");
    cancel_queued_locked("not run: the pool has ended");
    pool_running_ = false;
  }
  settle_set_aside();
  cancel_state_.close();
  completed_cv_.notify_all();
  space_cv_.notify_all();
  forked_cv_.notify_all();
  report_cv_.notify_all();
}

inline void Executor::run_inline_now() {
  QueueFeed feed(*this);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    draining_inline_ = true;
  }
  struct Done {
    Executor& ex;
    ~Done() {
      std::lock_guard<std::mutex> lock(ex.mutex_);
      ex.draining_inline_ = false;
    }
  } done{*this};
  detail::run_feed(task_runner(), options_, feed, nullptr, &inline_worker_);
}

inline void Executor::cancel_queued_locked(const std::string& why) {
  while (!waiting_.empty()) {
    Waiting w = waiting_.top();
    waiting_.pop();
    if (w.state->withdrawn) {  // has its verdict already
      --withdrawn_waiting_;
      continue;
    }
    Result r = cancelled_result(w.fn, w.order, why);
    if (queue_options_.stream_results) {
      completed_.push_back(r);
      completed_cv_.notify_all();
    }
    set_aside_.emplace_back(std::move(w.state), std::move(r));
  }
  space_cv_.notify_all();
}

inline void Executor::settle_set_aside() {
  std::vector<std::pair<std::shared_ptr<detail::FutureState>, Result>> now;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    now.swap(set_aside_);
  }
  for (auto& [state, r] : now) detail::fulfil(*state, std::move(r));
}

inline bool Executor::ready_locked(const detail::FutureState& s) const {
  std::lock_guard<std::mutex> hub(detail::FutureHub::instance().mutex);
  return s.result.has_value();
}

inline bool Executor::cancel(detail::FutureState& s, std::optional<Result>& settle) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!s.submitted || s.withdrawn || ready_locked(s)) return false;
  if (s.pulled_as == detail::FutureState::not_pulled) {
    // Still in the queue: it stays there, skipped when it comes to the top.
    s.withdrawn = true;
    ++withdrawn_waiting_;
    Result r = cancelled_result(s.fn, s.order, "cancelled before it started (Future::cancel())");
    if (queue_options_.stream_results) {
      completed_.push_back(r);
      completed_cv_.notify_all();
    }
    settle = std::move(r);
    space_cv_.notify_all();
    return true;
  }
  // Pulled: with threads or inline it runs and cannot be stopped; a worker process can.
  if (!detail::serves_requests(options_) || !pool_running_) return false;
  cancel_requests_.push_back(s.pulled_as);
  control_.ring();
  return true;
}

inline std::optional<std::vector<detail::WorkerView>> Executor::ask_pool(std::unique_lock<std::mutex>& lock) {
  // The pool's own thread (a done callback) would wait for itself.
  if (!pool_running_ || !control_.is_open() || std::this_thread::get_id() == pool_thread_) return std::nullopt;
  const std::uint64_t asked = report_count_;
  report_wanted_ = true;
  control_.ring();
  report_cv_.wait_for(lock, std::chrono::seconds(5), [&] { return report_count_ != asked || !pool_running_; });
  if (report_count_ == asked) return std::nullopt;
  return report_;
}

inline bool Executor::running(const detail::FutureState& s) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!s.submitted || s.pulled_as == detail::FutureState::not_pulled || ready_locked(s)) return false;
  // A thread pulls a task when it begins it; a backend that does not report (Backend::mpi) says
  // no more than that it was handed out.
  if (!detail::serves_requests(options_)) return true;
  const std::uint64_t pulled_as = s.pulled_as;
  std::optional<std::vector<detail::WorkerView>> views = ask_pool(lock);
  if (!views) return false;
  for (const detail::WorkerView& v : *views)
    if (v.running && *v.running + feed_base_ == pulled_as) return !ready_locked(s);
  return false;
}

inline ExecutorStatus Executor::status() {
  std::unique_lock<std::mutex> lock(mutex_);
  ExecutorStatus st;
  auto add = [&](int pid, const Pulled& p, std::chrono::steady_clock::time_point since) {
    ExecutorWorker w;
    w.pid = pid;
    w.task = static_cast<std::size_t>(p.order);
    w.function = functions_[p.fn].name;
    w.since = since;
    st.workers.push_back(std::move(w));
    ++st.running;
  };
  if (detail::serves_requests(options_)) {
    if (std::optional<std::vector<detail::WorkerView>> views = ask_pool(lock)) {
      for (const detail::WorkerView& v : *views) {
        auto it = v.running ? pulled_.find(*v.running + feed_base_) : pulled_.end();
        if (it != pulled_.end()) {
          add(v.pid, it->second, v.since);
        } else {
          ExecutorWorker idle;
          idle.pid = v.pid;
          st.workers.push_back(std::move(idle));
        }
      }
    }
  } else {
    const int pid = detail::isolated_workers(options_) ? 0 : static_cast<int>(::getpid());  // 0: unknown
    for (const auto& entry : pulled_) add(pid, entry.second, entry.second.since);
  }
  st.queued = waiting_.size() - withdrawn_waiting_ + pulled_.size() - std::min(st.running, pulled_.size());
  return st;
}

inline void Executor::callback_failed(std::exception_ptr e) noexcept {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!callback_error_) {
      callback_error_ = e;
      return;
    }
  }
  report_lost(e);  // only the first is rethrown
}

inline void Executor::report_lost(std::exception_ptr e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (...) {
    const std::string msg = "pfp::Executor: a done callback threw, and no shutdown() rethrew it: " +
                            detail::describe_current_exception() + "\n";
    [[maybe_unused]] bool ignored = detail::write_all(STDERR_FILENO, msg.data(), msg.size());
  }
}

template <class R, class... A, class Range>
std::vector<R> Executor::map(const Function<R, A...>& fn, const Range& items, std::optional<std::chrono::milliseconds> timeout) {
  static_assert(!std::is_void_v<R>, "pfp::Executor::map: the function returns nothing; use submit()");
  const auto deadline = detail::deadline_after(timeout);
  std::vector<Future<R>> fs;
  auto cancel_from = [&](std::size_t i) {
    for (; i < fs.size(); ++i) fs[i].cancel();
  };
  try {
    for (const auto& item : items) fs.push_back(submit_item(fn, item));
  } catch (...) {
    cancel_from(0);
    throw;
  }
  std::vector<R> out;
  out.reserve(fs.size());
  for (std::size_t i = 0; i < fs.size(); ++i) {
    if (deadline && !fs[i].wait_for(std::max(*deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero()))) {
      std::size_t late = 0;
      for (std::size_t k = i; k < fs.size(); ++k) late += !fs[k].ready();
      cancel_from(i);
      throw error("pfp::Executor::map: the timeout of " + std::to_string(timeout->count()) + " ms passed with " +
                  std::to_string(late) + " of " + std::to_string(fs.size()) + " results not ready; they were cancelled");
    }
    if (!fs[i].result().ok()) cancel_from(i + 1);
    out.push_back(fs[i].get());  // throws task_error for a failed one
  }
  return out;
}

}  // namespace pfp

#endif  // PFP_DETAIL_EXECUTOR_CONTROL_HPP
// ---- end <pfp/detail/executor_control.hpp> ----

#endif  // PFP_EXECUTOR_HPP
// ---- end <pfp/executor.hpp> ----
// ---- begin <pfp/exit_status.hpp> ----
#ifndef PFP_EXIT_STATUS_HPP
#define PFP_EXIT_STATUS_HPP

// How a pfp::Manager run ended: pfp::ExitStatus and the failed items it lists, and what a
// failure does to the run (ErrorPolicy).

// ---- begin <pfp/stats.hpp> ----
#ifndef PFP_STATS_HPP
#define PFP_STATS_HPP

// pfp::Stats: named counters and set values. A Manager gives each handled item a fresh Stats for
// its deltas, sends it back with the item's result, and merges it into the run's totals in the
// parent: exact, and with no lock a dying worker could leave held.


#include <cstddef>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace pfp {

/// Named counters (64-bit integers that add up when merged) and set values (any pfp::Value; the
/// last one merged wins). A key is either a counter or a set value, never both. Not thread-safe
/// by itself: a Manager merges into its totals under its own lock and hands out copies.
class Stats {
 public:
  /// Adds `by` (may be negative) to counter `key`, creating it at 0. Returns *this.
  /// Throws pfp::error if `key` holds a set value or the sum leaves the int64 range.
  Stats& inc(std::string_view key, std::int64_t by = 1) {
    Entry& e = slot(key, true, "inc");
    e.count = checked_add(key, e.count, by);
    return *this;
  }

  /// Sets value `key` (replacing an earlier set value). Returns *this.
  /// Throws pfp::error if `key` is a counter.
  Stats& set(std::string_view key, Value v) {
    slot(key, false, "set").value = std::move(v);
    return *this;
  }

  /// Counter `key`, 0 if absent. Throws pfp::error if `key` holds a set value.
  std::int64_t count(std::string_view key) const {
    auto it = entries_.find(key);
    if (it == entries_.end()) return 0;
    if (!it->second.counter) throw error(kind_clash(key, "count", true));
    return it->second.count;
  }

  /// Counter `key` as an integer Value, set value `key` as it is, or null when absent.
  Value get(std::string_view key) const {
    auto it = entries_.find(key);
    if (it == entries_.end()) return Value();
    return it->second.counter ? Value(it->second.count) : it->second.value;
  }

  bool contains(std::string_view key) const { return entries_.find(key) != entries_.end(); }
  /// True if `key` is a counter (false for a set value or an absent key).
  bool is_counter(std::string_view key) const {
    auto it = entries_.find(key);
    return it != entries_.end() && it->second.counter;
  }
  std::size_t size() const noexcept { return entries_.size(); }
  bool empty() const noexcept { return entries_.empty(); }
  void clear() noexcept { entries_.clear(); }

  /// Adds `delta`'s counters to these and takes its set values. All or nothing: throws pfp::error
  /// (and changes nothing) if a key is a counter on one side and a set value on the other, or a
  /// sum leaves the int64 range.
  void merge(const Stats& delta) {
    for (const auto& [key, d] : delta.entries_) {
      auto it = entries_.find(key);
      if (it == entries_.end()) continue;
      if (it->second.counter != d.counter) throw error(kind_clash(key, "merge", d.counter));
      if (d.counter) checked_add(key, it->second.count, d.count);
    }
    for (const auto& [key, d] : delta.entries_) {
      Entry& e = entries_[key];
      e.counter = d.counter;
      if (d.counter) {
        e.count += d.count;
      } else {
        e.value = d.value;
      }
    }
  }

  /// Every key with its value in one flat object, e.g. {"items_processed": 100, "items_total": 100}.
  Value to_object() const {
    Value out = Value::object();
    for (const auto& [key, e] : entries_) out[key] = e.counter ? Value(e.count) : e.value;
    return out;
  }

  friend bool operator==(const Stats& a, const Stats& b) { return a.entries_ == b.entries_; }
  friend bool operator!=(const Stats& a, const Stats& b) { return !(a == b); }

  /// Compact JSON of to_object(): {"items_negative":50,"items_positive":50}.
  friend std::ostream& operator<<(std::ostream& os, const Stats& s) { return os << s.to_object().to_json(); }

  /// Wire form, kinds kept: {"c": {counters}, "v": {set values}}. Value(stats).as<Stats>() == stats.
  friend void to_value(Value& v, const Stats& s) {
    Value counters = Value::object();
    Value values = Value::object();
    for (const auto& [key, e] : s.entries_) {
      if (e.counter) {
        counters[key] = e.count;
      } else {
        values[key] = e.value;
      }
    }
    v = Value{{"c", std::move(counters)}, {"v", std::move(values)}};
  }
  /// Reads the wire form. Throws pfp::error on anything else.
  friend void from_value(const Value& v, Stats& s) {
    if (!v.is_object() || v.size() != 2 || !v.contains("c") || !v.contains("v"))
      throw error("pfp::Stats: expected {\"c\": {counters}, \"v\": {values}}, got " + v.to_json());
    Stats out;
    for (const auto& [key, n] : v.at("c").items()) out.entries_[key] = Entry{true, n.as<std::int64_t>(), Value()};
    for (const auto& [key, val] : v.at("v").items()) {
      if (out.entries_.count(key)) throw error("pfp::Stats: key \"" + key + "\" is both a counter and a set value");
      out.entries_[key] = Entry{false, 0, val};
    }
    s = std::move(out);
  }

 private:
  struct Entry {
    bool counter = true;
    std::int64_t count = 0;
    Value value;
    bool operator==(const Entry& o) const { return counter == o.counter && count == o.count && value == o.value; }
  };

  Entry& slot(std::string_view key, bool counter, const char* op) {
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      Entry e;
      e.counter = counter;
      return entries_.emplace(std::string(key), std::move(e)).first->second;
    }
    if (it->second.counter != counter) throw error(kind_clash(key, op, counter));
    return it->second;
  }

  static std::int64_t checked_add(std::string_view key, std::int64_t a, std::int64_t b) {
    std::int64_t sum = 0;
    if (__builtin_add_overflow(a, b, &sum))
      throw error("pfp::Stats: counter \"" + std::string(key) + "\" overflows int64 (" + std::to_string(a) + " + " +
                  std::to_string(b) + ")");
    return sum;
  }

  // `wanted_counter`: what the operation needs the key to be.
  static std::string kind_clash(std::string_view key, const char* op, bool wanted_counter) {
    return std::string("pfp::Stats::") + op + ": key \"" + std::string(key) + "\" is " +
           (wanted_counter ? "a set value, not a counter" : "a counter, not a set value") +
           "; use one key per kind (inc/count for counters, set/get for values)";
  }

  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace pfp

#endif  // PFP_STATS_HPP
// ---- end <pfp/stats.hpp> ----

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace pfp {

/// What a Manager does when an item fails (throws, crashes its worker or times out).
enum class ErrorPolicy {
  fail_fast,          ///< stop at the first failure: no more items are handed out, those running are
                      ///< killed, and run() returns promptly with that item's error
  continue_on_error,  ///< handle every item; the failures are counted and listed in the ExitStatus
};

/// One failed item.
struct ItemFailure {
  std::uint64_t seq = 0;  ///< the item's number in the run, from 0
  std::string label;      ///< its log label (log_item), or its seq
  Status status = Status::exception;
  std::string error;      ///< the cause: exception type and what(), signal, time limit
};

/// How a Manager run ended.
struct ExitStatus {
  static constexpr int success = 0;      ///< every item handled
  static constexpr int failure = 1;      ///< an item failed, the item source threw, or the run could not go on
  static constexpr int interrupted = 2;  ///< SIGINT (Ctrl-C)
  static constexpr int cancelled = 3;    ///< Manager::cancel()

  int code = success;
  /// "Success"; "Keyboard interrupt"; "Cancelled"; for a failed item "<status>: <cause>", e.g.
  /// "exception: std::runtime_error: no such file"; "the item builder threw <type>: <what>".
  std::string message = "Success";
  /// The label of the item the failure is about (the first failure under continue_on_error).
  /// Set whenever there is one -- "0" included -- and empty when the failure is not an item's.
  std::optional<std::string> error_target;
  double seconds = 0;  ///< wall time of the run

  std::size_t items_ok = 0;         ///< items handled without failure
  std::size_t items_failed = 0;     ///< items that threw, crashed or timed out
  std::size_t items_cancelled = 0;  ///< items stopped by fail-fast, an interrupt or cancel()
  std::vector<ItemFailure> failures;  ///< every failed item, in the order they finished
  Stats stats;                      ///< the run's final stats

  bool ok() const noexcept { return code == success; }
};

/// "code 0 (Success) in 1.234 s", "code 1 (exception: std::runtime_error: boom) target 0 in 0.100 s".
inline std::string to_string(const ExitStatus& s) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.3f s", s.seconds);
  std::string out = "code " + std::to_string(s.code) + " (" + s.message + ")";
  if (s.error_target) out += " target " + *s.error_target;
  return out + " in " + secs;
}

inline std::ostream& operator<<(std::ostream& os, const ExitStatus& s) { return os << to_string(s); }

}  // namespace pfp

#endif  // PFP_EXIT_STATUS_HPP
// ---- end <pfp/exit_status.hpp> ----
// ---- begin <pfp/manager.hpp> ----
#ifndef PFP_MANAGER_HPP
#define PFP_MANAGER_HPP

// pfp::Manager: runs a handler over a lazy source of items with worker processes (the mp_manager
// original in C++). The handler builds the items in the parent; each item is serialized, handled
// by one worker's copy of the handler, and its stats deltas travel back with its result; the
// parent merges them, logs the item and draws the progress. The run ends with an ExitStatus.

// ---- begin <pfp/detail/manager_support.hpp> ----
#ifndef PFP_DETAIL_MANAGER_SUPPORT_HPP
#define PFP_DETAIL_MANAGER_SUPPORT_HPP

// What pfp::Manager needs besides its run: what a handler provides (build_items with or without a
// context, handle_item, log_item, reset_stats), the items as a stream whatever their source, and
// Ctrl-C turned into a cancel for the duration of a run.


#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <type_traits>
#include <utility>

#include <signal.h>

namespace pfp {

class BuildContext;
class ItemContext;

namespace detail {

template <class H, class = void>
struct builds_with_context : std::false_type {};
template <class H>
struct builds_with_context<H, std::void_t<decltype(std::declval<H&>().build_items(std::declval<BuildContext&>()))>>
    : std::true_type {};

template <class H, class = void>
struct builds_plain : std::false_type {};
template <class H>
struct builds_plain<H, std::void_t<decltype(std::declval<H&>().build_items())>> : std::true_type {};

template <class H, bool WithContext = builds_with_context<H>::value, bool Plain = builds_plain<H>::value>
struct build_result {
  using type = void;
};
template <class H, bool Plain>
struct build_result<H, true, Plain> {
  using type = std::decay_t<decltype(std::declval<H&>().build_items(std::declval<BuildContext&>()))>;
};
template <class H>
struct build_result<H, false, true> {
  using type = std::decay_t<decltype(std::declval<H&>().build_items())>;
};

template <class S, class = void>
struct is_range_source : std::false_type {};
template <class S>
struct is_range_source<S, std::void_t<decltype(std::begin(std::declval<S&>()) != std::end(std::declval<S&>())),
                                      decltype(*std::begin(std::declval<S&>()))>> : std::true_type {};

template <class S, class = void>
struct is_generator_source : std::false_type {};
template <class S>
struct is_generator_source<S, std::void_t<std::invoke_result_t<S&>>> : is_optional<std::invoke_result_t<S&>> {};

template <class S, class = void>
struct item_of {
  using type = void;
};
template <class S>
struct item_of<S, std::enable_if_t<is_range_source<S>::value>> {
  using type = std::decay_t<decltype(*std::begin(std::declval<S&>()))>;
};
template <class S>
struct item_of<S, std::enable_if_t<!is_range_source<S>::value && is_generator_source<S>::value>> {
  using type = typename std::invoke_result_t<S&>::value_type;
};

template <class I>
struct converts_to_value : std::is_constructible<Value, const I&> {};
template <>
struct converts_to_value<void> : std::false_type {};

template <class H, class I, class = void>
struct has_handle_item : std::false_type {};
template <class H, class I>
struct has_handle_item<H, I,
                       std::void_t<decltype(std::declval<H&>().handle_item(std::declval<const I&>(),
                                                                           std::declval<ItemContext&>()))>>
    : std::true_type {};

template <class H, class I, class = void>
struct log_item_result {
  using type = void;
  static constexpr bool present = false;
};
template <class H, class I>
struct log_item_result<H, I, std::void_t<decltype(std::declval<H&>().log_item(std::declval<const I&>()))>> {
  using type = std::decay_t<decltype(std::declval<H&>().log_item(std::declval<const I&>()))>;
  static constexpr bool present = true;
};

template <class H, class = void>
struct has_reset_stats : std::false_type {};
template <class H>
struct has_reset_stats<H, std::void_t<decltype(std::declval<H&>().reset_stats(std::declval<Stats&>()))>>
    : std::true_type {};

/// The items of one run, one at a time: a range walked once, or a generator called until nullopt.
template <class S>
class item_stream {
 public:
  using item = typename item_of<S>::type;

  explicit item_stream(S s) : impl_(std::move(s)) {}

  std::optional<item> next() {
    if constexpr (is_range_source<S>::value) {
      if (impl_.done()) return std::nullopt;
      return impl_.take();
    } else {
      return impl_.next();
    }
  }
  std::optional<std::size_t> size() const {
    if constexpr (is_range_source<S>::value) {
      if constexpr (has_size<S>::value) return impl_.size();
    }
    return std::nullopt;
  }

 private:
  std::conditional_t<is_range_source<S>::value, cursor<S>, generate_source<S>> impl_;
};

/// The SIGINT handler of the Manager run in progress.
struct SigintTarget {
  CancelState* cancel = nullptr;
  std::atomic<bool> hit{false};
};
inline std::atomic<SigintTarget*> sigint_target{nullptr};

extern "C" inline void manager_on_sigint(int) {
  if (SigintTarget* t = sigint_target.load()) {
    t->hit.store(true);
    t->cancel->request();
  }
}

/// Routes SIGINT to `target` for its lifetime (see ManagerOptions::handle_sigint).
class SigintScope {
 public:
  SigintScope(SigintTarget* target, bool wanted) {
    if (!wanted) return;
    struct sigaction current {};
    if (::sigaction(SIGINT, nullptr, &current) != 0) return;
    if (!(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_IGN) return;
    SigintTarget* expected = nullptr;
    if (!sigint_target.compare_exchange_strong(expected, target)) return;  // another run has it
    struct sigaction act {};
    act.sa_handler = manager_on_sigint;
    sigemptyset(&act.sa_mask);
    act.sa_flags = SA_RESTART;
    if (::sigaction(SIGINT, &act, &old_) != 0) {
      sigint_target.store(nullptr);
      return;
    }
    installed_ = true;
  }
  ~SigintScope() {
    if (!installed_) return;
    ::sigaction(SIGINT, &old_, nullptr);
    sigint_target.store(nullptr);
  }
  SigintScope(const SigintScope&) = delete;
  SigintScope& operator=(const SigintScope&) = delete;

 private:
  struct sigaction old_ {};
  bool installed_ = false;
};

}  // namespace detail

}  // namespace pfp

#endif  // PFP_DETAIL_MANAGER_SUPPORT_HPP
// ---- end <pfp/detail/manager_support.hpp> ----
// ---- begin <pfp/handler_context.hpp> ----
#ifndef PFP_HANDLER_CONTEXT_HPP
#define PFP_HANDLER_CONTEXT_HPP

// What a pfp::Manager hands its handler: BuildContext to build_items() in the parent, ItemContext
// to handle_item() in a worker (shared values, stats, the worker's number, log lines).

// ---- begin <pfp/detail/item_log_channel.hpp> ----
#ifndef PFP_DETAIL_ITEM_LOG_CHANNEL_HPP
#define PFP_DETAIL_ITEM_LOG_CHANNEL_HPP

// How what a Manager's handler writes with ItemContext::log() reaches the parent while the item
// runs, and how the parent learns which worker ran an item that threw: records of
// [seq u64][worker u32][pid i32][kind u8][text]. Worker processes send each record on a
// SOCK_SEQPACKET socket pair made before they are forked (one send() per record: records of
// different workers never interleave, a worker waits while the parent's queue is full); the
// in-process backends put them in a queue under a mutex. The parent takes what has arrived
// whenever it looks (the process backend watches the socket: Feed::side_fd).


#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/socket.h>
#include <unistd.h>

namespace pfp {
namespace detail {

class ItemLogChannel {
 public:
  enum class Kind : std::uint8_t {
    line,    ///< a line the handler wrote
    failed,  ///< the handler threw (the worker lives on): text is empty
  };
  struct Record {
    std::uint64_t seq = 0;
    unsigned worker = 0;
    int pid = 0;
    Kind kind = Kind::line;
    std::string text;
  };
  /// Longest line sent as it is written; a longer one is cut, saying how much was cut.
  static constexpr std::size_t max_line = 60 * 1024;

  /// Before a run: a socket pair for worker processes, else the in-process queue.
  /// Throws pfp::error when out of descriptors.
  void open(bool processes) {
    close();
    if (!processes) {
      queued_ = true;
      return;
    }
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
    read_.reset();
    read_ = UniqueFd(sv[0]);
    write_ = UniqueFd(sv[1]);
    int size = 1 << 18;  // room for a longest line and then some
    (void)::setsockopt(write_.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    set_nonblocking(read_.get());
  }
  /// After the run (in the parent).
  void close() noexcept {
    read_.reset();
    write_.reset();
    queued_ = false;
    std::lock_guard<std::mutex> lock(mu_);
    queue_.clear();
  }
  bool is_open() const noexcept { return queued_ || write_; }

  /// In the worker: sends one record. False if it could not (the caller keeps the line itself).
  bool send(std::uint64_t seq, unsigned worker, Kind kind, std::string_view text) {
    std::string cut;
    if (text.size() > max_line) {
      cut = std::string(text.substr(0, max_line)) + "... (" + std::to_string(text.size() - max_line) + " more bytes cut)";
      text = cut;
    }
    const int pid = static_cast<int>(::getpid());
    if (queued_) {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(Record{seq, worker, pid, kind, std::string(text)});
      return true;
    }
    if (!write_) return false;
    std::string buf(header_size + text.size(), '\0');
    const auto w = static_cast<std::uint32_t>(worker);
    const auto k = static_cast<std::uint8_t>(kind);
    std::memcpy(&buf[0], &seq, 8);
    std::memcpy(&buf[8], &w, 4);
    std::memcpy(&buf[12], &pid, 4);
    std::memcpy(&buf[16], &k, 1);
    if (!text.empty()) std::memcpy(&buf[header_size], text.data(), text.size());
    for (;;) {
      const ssize_t n = ::send(write_.get(), buf.data(), buf.size(), MSG_NOSIGNAL);
      if (n >= 0) return true;
      if (errno != EINTR) return false;
    }
  }

  /// In the parent: the socket to watch (-1 for the in-process queue, or when closed).
  int fd() const noexcept { return read_.get(); }

  /// In the parent: every record that has arrived, in the order each worker sent them.
  std::vector<Record> take() {
    std::vector<Record> out;
    if (queued_) {
      std::lock_guard<std::mutex> lock(mu_);
      out.swap(queue_);
      return out;
    }
    if (!read_) return out;
    buffer_.resize(header_size + max_line + 128);
    for (;;) {
      const ssize_t n = ::recv(read_.get(), &buffer_[0], buffer_.size(), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < static_cast<ssize_t>(header_size)) break;  // nothing more now (or a record no worker sends)
      Record r;
      std::uint32_t w = 0;
      std::uint8_t k = 0;
      std::memcpy(&r.seq, &buffer_[0], 8);
      std::memcpy(&w, &buffer_[8], 4);
      std::memcpy(&r.pid, &buffer_[12], 4);
      std::memcpy(&k, &buffer_[16], 1);
      r.worker = w;
      r.kind = k == static_cast<std::uint8_t>(Kind::failed) ? Kind::failed : Kind::line;
      r.text.assign(&buffer_[header_size], static_cast<std::size_t>(n) - header_size);
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  static constexpr std::size_t header_size = 17;
  UniqueFd read_;
  UniqueFd write_;
  bool queued_ = false;
  std::mutex mu_;  // guards queue_ (the threads backend's workers log concurrently)
  std::vector<Record> queue_;
  std::string buffer_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_ITEM_LOG_CHANNEL_HPP
// ---- end <pfp/detail/item_log_channel.hpp> ----

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pfp {

template <class Handler>
class Manager;

namespace detail {

/// The parent's side of one Manager run that the handler's item builder may touch.
struct ManagerRunState {
  std::mutex mu;
  Stats totals;  // guarded by mu
  Value shared = Value::object();
  bool frozen = false;
  std::optional<std::size_t> expected;
  unsigned workers = 1;
  ItemLogChannel log_channel;  // the handlers' ctx.log() lines, as they are written
};

}  // namespace detail

/// Given to the handler's build_items(). Valid until run() returns, so an item source may keep a
/// reference to it and use it while it produces items (in the parent).
class BuildContext {
 public:
  /// Adds `key` to the read-only data every worker's handler sees (ItemContext::shared). Only
  /// while build_items() runs: the workers start after it returns.
  /// Throws pfp::error when called later.
  void share(std::string key, Value value) {
    if (state_.frozen)
      throw error("pfp::BuildContext::share(\"" + key + "\"): shared data must be set inside build_items(), before it "
                  "returns; the workers have already started with the data as it was then");
    state_.shared[key] = std::move(value);
  }
  /// The shared data so far (an object).
  const Value& shared() const noexcept { return state_.shared; }

  /// Sets value `key` in the run's stats (e.g. "items_total"). Any time during the run.
  /// Throws pfp::error if `key` is a counter.
  void set_stat(std::string_view key, Value value) {
    std::lock_guard<std::mutex> lock(state_.mu);
    state_.totals.set(key, std::move(value));
  }
  /// Adds to counter `key` of the run's stats. Any time during the run.
  /// Throws pfp::error if `key` holds a set value or the counter overflows.
  void inc_stat(std::string_view key, std::int64_t by = 1) {
    std::lock_guard<std::mutex> lock(state_.mu);
    state_.totals.inc(key, by);
  }

  /// Tells how many items the source will produce, for the progress report (a range with size()
  /// tells it by itself). Any time during the run, from the thread that runs it.
  void expect(std::size_t items) noexcept { state_.expected = items; }

  /// Worker processes (or threads) the run uses at most.
  unsigned workers() const noexcept { return state_.workers; }

 private:
  template <class H>
  friend class Manager;
  explicit BuildContext(detail::ManagerRunState& s) noexcept : state_(s) {}
  detail::ManagerRunState& state_;
};

/// Given to the handler's handle_item() for one item, in the worker.
class ItemContext {
 public:
  /// This item's stats: fresh (empty) for every item, or what reset_stats() made it. Counters
  /// added here are summed into the run's totals, set values replace theirs, when the item
  /// succeeds; a failed item's stats are dropped.
  Stats stats;

  /// The data build_items() shared (an object; read-only).
  const Value& shared() const noexcept { return *shared_; }
  /// Shared value `key`. Throws pfp::error if build_items() did not share it.
  const Value& shared(std::string_view key) const {
    const Value* v = shared_->find(key);
    if (!v)
      throw error("pfp::ItemContext::shared(\"" + std::string(key) +
                  "\"): no such shared value; add it with BuildContext::share() in build_items()");
    return *v;
  }

  /// Adds a line to this item's log. The Logger receives it in the parent as it is written (an
  /// ItemLog with `live` set; worker processes send it at once, the threads and inline backends
  /// by the item's verdict at the latest), and again in the item's final ItemLog::messages: lines of different
  /// workers never interleave, and lines written before the item threw, crashed or timed out
  /// are kept. A line over 60 KiB is cut, saying how much was cut.
  void log(std::string line) {
    if (channel_ && channel_->send(seq_, worker_, detail::ItemLogChannel::Kind::line, line)) return;
    messages_.push_back(std::move(line));  // goes with the item's result
  }

  /// The worker slot running this item, 0 .. workers-1.
  unsigned worker() const noexcept { return worker_; }
  /// The item's number in the run, from 0, in the order the items were produced.
  std::uint64_t seq() const noexcept { return seq_; }

 private:
  template <class H>
  friend class Manager;
  ItemContext(const Value& shared, unsigned worker, std::uint64_t seq, detail::ItemLogChannel* channel) noexcept
      : shared_(&shared), worker_(worker), seq_(seq), channel_(channel) {}
  const Value* shared_;
  unsigned worker_;
  std::uint64_t seq_;
  detail::ItemLogChannel* channel_;
  std::vector<std::string> messages_;
};

/// What a Manager needs from Handler, checked with readable static_assert messages by Manager.
/// A handler is any class with
///   required  auto build_items(pfp::BuildContext&)  (or build_items()): the items, as a range
///             (begin/end; input iterators suffice, e.g. pfp::batches(...)) or a generator
///             callable returning std::optional<Item> (std::nullopt ends the items). Called once
///             per run, in the parent, before any worker starts; the range is read lazily during
///             the run. Item must convert to and from pfp::Value (to_value/from_value for your
///             own types).
///   required  void handle_item(const Item&, pfp::ItemContext&): handles one item, in a worker.
///             Throwing fails the item.
///   optional  log_item(const Item&) -> std::string or a number: the item's label in logs and in
///             ExitStatus::error_target (default: the item's seq). Called in the parent when the
///             item is handed out, so a crashed item still has its label.
///   optional  void reset_stats(pfp::Stats&): called on each item's fresh stats before
///             handle_item (e.g. to list counters at 0 so they appear in the totals).
template <class Handler>
struct handler_traits {
  static constexpr bool has_build_items = detail::builds_with_context<Handler>::value || detail::builds_plain<Handler>::value;
  using source_type = typename detail::build_result<Handler>::type;
  static constexpr bool source_is_range = detail::is_range_source<source_type>::value;
  static constexpr bool source_is_generator = detail::is_generator_source<source_type>::value;
  static constexpr bool valid_source = has_build_items && (source_is_range || source_is_generator);
  using item_type = typename detail::item_of<source_type>::type;
  static constexpr bool item_converts = valid_source && detail::converts_to_value<item_type>::value;
  static constexpr bool has_handle_item = valid_source && detail::has_handle_item<Handler, item_type>::value;
  using label_type = typename detail::log_item_result<Handler, item_type>::type;
  static constexpr bool has_log_item = valid_source && detail::log_item_result<Handler, item_type>::present;
  static constexpr bool valid_log_item =
      !has_log_item || std::is_convertible_v<label_type, std::string> || std::is_arithmetic_v<label_type>;
  static constexpr bool has_reset_stats = detail::has_reset_stats<Handler>::value;
  static constexpr bool valid = valid_source && item_converts && has_handle_item && valid_log_item;
};

/// True if Handler satisfies handler_traits (what Manager<Handler> requires).
template <class Handler>
inline constexpr bool is_handler_v = handler_traits<Handler>::valid;

}  // namespace pfp

#endif  // PFP_HANDLER_CONTEXT_HPP
// ---- end <pfp/handler_context.hpp> ----
// ---- begin <pfp/multiprocessor.hpp> ----
#ifndef PFP_MULTIPROCESSOR_HPP
#define PFP_MULTIPROCESSOR_HPP

// ---- begin <pfp/detail/list_feed.hpp> ----
#ifndef PFP_DETAIL_LIST_FEED_HPP
#define PFP_DETAIL_LIST_FEED_HPP


#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pfp {
namespace detail {

// Feeds tasks 0..n-1 that the workers inherit (fn == seq, nothing serialized: registered
// functions, or the items of a random-access range) and files each Result at its index. The
// Results are made as their tasks are handed out, so making them overlaps with the workers' first
// runs instead of delaying them.
template <class NameOf>
class ListFeed final : public Feed {
 public:
  /// results is empty, with room reserved for n; name_of(i) is function i's name.
  ListFeed(std::vector<Result>& results, std::size_t n, NameOf name_of) : results_(results), n_(n), name_of_(name_of) {}
  std::optional<Task> pull() override {
    if (next_ >= n_) return std::nullopt;
    make_results(next_ + 1);
    return Task{next_++, {}};
  }
  std::size_t pull_run(std::size_t max, std::uint64_t& first_fn, Result*& places) override {
    const std::size_t n = std::min<std::size_t>(max, n_ - static_cast<std::size_t>(next_));
    make_results(next_ + n);
    first_fn = next_;
    places = results_.data() + next_;
    next_ += n;
    return n;
  }
  bool finished() override { return true; }
  std::optional<std::size_t> size_hint() const override { return n_; }
  std::uint64_t signature() const override {
    std::uint64_t h = hash_bytes(hash_seed, std::to_string(n_));
    for (std::size_t i = 0; i < n_; ++i) {
      const std::string& name = name_of_(i);
      h = hash_bytes(hash_bytes(h, name), std::string_view("\0", 1));
    }
    return h;
  }
  void deliver(std::uint64_t seq, Result&& r) override { file(seq, std::move(r)); }
  void amend(std::uint64_t seq, Result&& r) override { file(seq, std::move(r)); }
  void drop_rest(const std::string& why) override {
    make_results(n_);
    for (; next_ < n_; ++next_) {
      results_[next_].status = Status::cancelled;
      results_[next_].error = why;
    }
  }

 private:
  // Results up to function `upto` (exclusive) exist, named and numbered. Within the reserved room:
  // places handed out stay where they are.
  void make_results(std::uint64_t upto) {
    while (results_.size() < upto) {
      const std::size_t i = results_.size();
      Result& r = results_.emplace_back();
      r.function_name = name_of_(i);
      r.index = i;
    }
  }
  // Everything but the name and index, which the slot already has.
  void file(std::uint64_t seq, Result&& r) {
    Result& slot = results_[static_cast<std::size_t>(seq)];
    slot.status = r.status;
    if (!r.result.is_null() || !slot.result.is_null()) slot.result = std::move(r.result);
    if (!r.error.empty() || !slot.error.empty()) slot.error = std::move(r.error);
    slot.pid = r.pid;
    slot.duration = r.duration;
    slot.attempts = r.attempts;
  }
  std::vector<Result>& results_;
  std::size_t n_;
  NameOf name_of_;
  std::uint64_t next_ = 0;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_LIST_FEED_HPP
// ---- end <pfp/detail/list_feed.hpp> ----

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pfp {

namespace detail {

// What a registered function becomes: a move-only std::function<void(const Context&, Result&)>
// that keeps callables of up to inline_size bytes in place, so registering costs no allocation
// (a registration is a callable plus its args, and a MultiProcessor may hold millions).
template <class Context>
class TaskCallable {
 public:
  static constexpr std::size_t inline_size = 80;

  TaskCallable() noexcept = default;
  template <class F, std::enable_if_t<!std::is_same_v<std::decay_t<F>, TaskCallable>, int> = 0>
  explicit TaskCallable(F&& f) : TaskCallable(std::in_place_type<std::decay_t<F>>, std::forward<F>(f)) {}
  /// Makes a T from a... in place.
  template <class T, class... A>
  explicit TaskCallable(std::in_place_type_t<T>, A&&... a) {
    if constexpr (sizeof(T) <= inline_size && alignof(T) <= alignof(std::max_align_t) &&
                  std::is_nothrow_move_constructible_v<T>) {
      ::new (static_cast<void*>(storage_)) T{std::forward<A>(a)...};
      ops_ = &inline_ops<T>;
    } else {
      *reinterpret_cast<T**>(storage_) = new T{std::forward<A>(a)...};
      ops_ = &heap_ops<T>;
    }
  }
  TaskCallable(TaskCallable&& other) noexcept : ops_(std::exchange(other.ops_, nullptr)) {
    if (ops_) ops_->relocate(other.storage_, storage_);
  }
  TaskCallable& operator=(TaskCallable&& other) noexcept {
    if (this != &other) {
      reset();
      ops_ = std::exchange(other.ops_, nullptr);
      if (ops_) ops_->relocate(other.storage_, storage_);
    }
    return *this;
  }
  TaskCallable(const TaskCallable&) = delete;
  TaskCallable& operator=(const TaskCallable&) = delete;
  ~TaskCallable() { reset(); }

  void operator()(const Context& context, Result& r) { ops_->call(storage_, context, r); }

 private:
  struct Ops {
    void (*call)(void* self, const Context& context, Result& r);
    void (*relocate)(void* from, void* to) noexcept;  // moves into `to` and destroys `from`
    void (*destroy)(void* self) noexcept;
  };
  template <class T>
  static inline const Ops inline_ops{
      [](void* self, const Context& c, Result& r) { (*static_cast<T*>(self))(c, r); },
      [](void* from, void* to) noexcept {
        ::new (to) T(std::move(*static_cast<T*>(from)));
        static_cast<T*>(from)->~T();
      },
      [](void* self) noexcept { static_cast<T*>(self)->~T(); }};
  template <class T>
  static inline const Ops heap_ops{
      [](void* self, const Context& c, Result& r) { (**static_cast<T**>(self))(c, r); },
      [](void* from, void* to) noexcept { *static_cast<T**>(to) = *static_cast<T**>(from); },
      [](void* self) noexcept { delete *static_cast<T**>(self); }};

  void reset() noexcept {
    if (ops_) ops_->destroy(storage_);
    ops_ = nullptr;
  }

  const Ops* ops_ = nullptr;  // first: a worker reads it and the callable together
  alignas(std::max_align_t) unsigned char storage_[inline_size];
};

// An append-only sequence whose elements never move: chunks of 16, 16, 32, 64, ... elements, so
// growing costs no relocation of what is already there (a registered function is not cheap to move).
template <class T>
class ChunkedList {
 public:
  ChunkedList() = default;
  ChunkedList(const ChunkedList&) = delete;
  ChunkedList& operator=(const ChunkedList&) = delete;
  ~ChunkedList() {
    for (std::size_t i = size_; i > 0; --i) (*this)[i - 1].~T();
    for (std::size_t k = 0; k < chunks_.size(); ++k) release(chunks_[k], chunk_size(k));
  }

  template <class... A>
  T& emplace_back(A&&... args) {
    const std::size_t k = chunk_of(size_);
    if (k == chunks_.size()) {
      chunks_.reserve(k + 1);
      chunks_.push_back(acquire(chunk_size(k)));
    }
    T* at = chunks_[k] + (size_ - chunk_start(k));
    ::new (static_cast<void*>(at)) T(std::forward<A>(args)...);
    ++size_;
    return *at;
  }
  T& operator[](std::size_t i) noexcept {
    const std::size_t k = chunk_of(i);
    return chunks_[k][i - chunk_start(k)];
  }
  const T& operator[](std::size_t i) const noexcept { return const_cast<ChunkedList&>(*this)[i]; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

 private:
  static constexpr std::size_t first = 16;
  // Chunks of 2 MiB or more are aligned to 2 MiB and advised into huge pages: filling them then
  // costs one page fault per 2 MiB, and forking a copy of one page-table entry.
  static constexpr std::size_t huge = std::size_t{2} << 20;
  static T* acquire(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < huge) return std::allocator<T>().allocate(n);
    void* p = ::operator new(bytes, std::align_val_t{huge});
    advise_huge_pages(p, bytes, huge);
    return static_cast<T*>(p);
  }
  static void release(T* p, std::size_t n) noexcept {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < huge)
      std::allocator<T>().deallocate(p, n);
    else
      ::operator delete(p, std::align_val_t{huge});
  }
  static std::size_t chunk_of(std::size_t i) noexcept {
    const unsigned long long n = i / first;
#if defined(__GNUC__) || defined(__clang__)
    return n ? static_cast<std::size_t>(std::numeric_limits<unsigned long long>::digits - __builtin_clzll(n)) : 0;
#else
    std::size_t k = 0;
    for (unsigned long long m = n; m; m >>= 1) ++k;
    return k;
#endif
  }
  static std::size_t chunk_start(std::size_t k) noexcept { return k == 0 ? 0 : first << (k - 1); }
  static std::size_t chunk_size(std::size_t k) noexcept { return k == 0 ? first : first << (k - 1); }

  std::vector<T*> chunks_;
  std::size_t size_ = 0;
};

template <class T>
struct is_std_function : std::false_type {};
template <class S>
struct is_std_function<std::function<S>> : std::true_type {};

}  // namespace detail

/// Runs registered functions in parallel worker processes and collects one Result per function.
///
/// Workers are forked by execute_parallel(), so they inherit the functions, the context and the
/// arguments as they are at that moment: none of them is ever serialized, and any copyable type
/// works. Only results travel back, as pfp::Value. A MultiProcessor is not thread-safe: use one
/// from one thread at a time.
template <class Context = Value>
class MultiProcessor {
 public:
  /// Throws pfp::error if options are invalid (a negative timeout, a zero result limit).
  explicit MultiProcessor(Context context = Context{}, Options options = Options{})
      : context_(std::move(context)), options_(options), cancel_(std::make_unique<detail::CancelState>()) {
    detail::validate(options_);
  }

  /// Registers f under name with its own args. f is one of
  ///   void f(const Context&, const A&, pfp::Result&)  -- fills r.result (name and index are set)
  ///   R    f(const Context&, const A&)               -- the returned R becomes r.result
  /// where A is any copyable type (pfp::Args by default) and R converts to pfp::Value.
  /// The same function may be registered several times. Returns *this for chaining.
  template <class F, class A = Args>
  MultiProcessor& register_function(std::string name, F f, A args = A{}) {
    using Fn = std::decay_t<F>;
    using Arg = std::decay_t<A>;
    constexpr bool fills_result = std::is_invocable_v<Fn&, const Context&, const Arg&, Result&>;
    constexpr bool returns_value = std::is_invocable_v<Fn&, const Context&, const Arg&>;
    static_assert(fills_result || returns_value,
                  "pfp::MultiProcessor::register_function: f must be callable as "
                  "void f(const Context&, const A&, pfp::Result&) or R f(const Context&, const A&), "
                  "where Context is the MultiProcessor's context type and A the type of args");
    if constexpr (fills_result) {
      tasks_.emplace_back(std::move(name), true, std::in_place_type<FillsResult<Fn, Arg>>, std::move(f), std::move(args));
    } else {
      using R = std::invoke_result_t<Fn&, const Context&, const Arg&>;
      static_assert(std::is_void_v<R> || std::is_constructible_v<Value, R>,
                    "pfp::MultiProcessor::register_function: the function's return type cannot be converted to "
                    "pfp::Value; define void to_value(pfp::Value&, const T&) in the type's namespace");
      tasks_.emplace_back(std::move(name), false, std::in_place_type<ReturnsValue<Fn, Arg>>, std::move(f), std::move(args));
    }
    return *this;
  }

  /// Registers f and args like the three-argument overload, together with a result processor:
  /// process_results(config) calls processor(result, config) in this process after a run, with
  /// f's Result and the caller's config object (the two-phase pattern: gather in parallel, then
  /// process single-threaded). processor is callable as
  ///   void processor(const pfp::Result& result, pfp::Value& config)
  /// (any return value is ignored). Throws pfp::error if processor is an empty std::function or a
  /// null function pointer. Returns *this for chaining.
  template <class F, class A, class P>
  MultiProcessor& register_function(std::string name, F f, A args, P processor) {
    using Proc = std::decay_t<P>;
    static_assert(std::is_invocable_v<Proc&, const Result&, Value&>,
                  "pfp::MultiProcessor::register_function: the result processor (4th argument) must be callable as "
                  "void processor(const pfp::Result& result, pfp::Value& config)");
    if constexpr (std::is_pointer_v<Proc> || detail::is_std_function<Proc>::value) {
      if (!processor)
        throw error("pfp::MultiProcessor::register_function: the result processor of '" + name +
                    "' is empty; pass a callable, or use the three-argument overload for no processor");
    }
    register_function(std::move(name), std::move(f), std::move(args));
    processors_.resize(tasks_.size());
    processors_.back() = [p = Proc(std::move(processor))](const Result& r, Value& config) mutable { p(r, config); };
    return *this;
  }

  /// Phase two of the two-phase pattern: calls each registered result processor, in this process,
  /// one after another in registration order, with its function's Result of the last run and
  /// `config` (typically a pfp::Value object the processors fill with config["key"] = value).
  /// Functions registered without a processor are skipped. A processor runs whatever its
  /// function's status, so it sees failures (check result.ok(), result.status, result.error).
  /// A processor that throws does not stop the others: once all ran, one pfp::error is thrown that
  /// names every processor that threw (function name, index, exception type and what()); what the
  /// processors wrote to config stays there. May be called again (e.g. with another config).
  /// Throws pfp::error without calling any processor when there is no complete last run: before
  /// the first execute_parallel(), during one, or after functions were registered since.
  void process_results(Value& config) {
    if (running_) throw error("pfp::MultiProcessor::process_results: a run is in progress; call it after execute_parallel() returned");
    if (results_.size() != tasks_.size())
      throw error("pfp::MultiProcessor::process_results: " +
                  std::string(results_.empty() && !tasks_.empty() ? "there is no run yet"
                                                                  : "functions were registered after the last run") +
                  "; call execute_parallel() first");
    std::string failures;
    std::size_t failed = 0, ran = 0;
    for (std::size_t i = 0; i < processors_.size(); ++i) {
      if (!processors_[i]) continue;
      ++ran;
      try {
        processors_[i](results_[i], config);
      } catch (...) {
        ++failed;
        failures += (failures.empty() ? "" : "; ") + ("'" + tasks_[i].name + "' (#" + std::to_string(i) + "): ") +
                    detail::describe_current_exception();
      }
    }
    if (failed)
      throw error("pfp::MultiProcessor::process_results: " + std::to_string(failed) + " of " + std::to_string(ran) +
                  " result processors threw: " + failures);
  }

  /// Wall-clock time of the last execute_parallel(), from its start to its return (zero before
  /// the first run): the run's total, next to each Result's own duration.
  std::chrono::nanoseconds last_run_duration() const noexcept { return last_run_duration_; }

  /// Runs every registered function in worker processes and returns one Result per registration,
  /// in registration order, whatever the functions do (return, throw, crash, exit, hang, print).
  /// May be called again; each call runs everything anew. When it returns, every worker has been
  /// reaped and every pipe closed.
  /// Throws pfp::error only if no worker process can be started at all (or if called while a
  /// run of this object is already in progress).
  const std::vector<Result>& execute_parallel() {
    if (running_) throw error("pfp::MultiProcessor::execute_parallel: a run of this object is already in progress");
    running_ = true;
    struct Reset {
      bool& flag;
      ~Reset() { flag = false; }
    } reset{running_};
    const auto run_started = std::chrono::steady_clock::now();

    // Only this process writes the Results during the run: kept out of the workers, they cost
    // no copy-on-write fault per page; in huge pages, fewer faults still.
    std::vector<Result> fresh;
    fresh.reserve(tasks_.size());
    detail::advise_huge_pages(fresh.data(), tasks_.size() * sizeof(Result), std::size_t{4} << 20);
    detail::HiddenFromForks hidden(fresh.data(), tasks_.size() * sizeof(Result));
    detail::FeedRunner runner = [this](const detail::TaskView& task, Result& r) {
      const std::size_t i = static_cast<std::size_t>(task.fn);
      if (i >= tasks_.size()) throw error("pfp: worker was sent function index " + std::to_string(i) + " of " + std::to_string(tasks_.size()));
      if (i + 8 < tasks_.size()) {  // runs go through the functions in order
        const char* ahead = reinterpret_cast<const char*>(&tasks_[i + 8]);
        detail::prefetch(ahead);
        detail::prefetch(ahead + 64);
      }
      if (tasks_[i].fills_result) r.function_name = tasks_[i].name;  // the others never see their Result
      r.index = i;
      tasks_[i].run(context_, r);
    };
    cancel_->open();
    struct CloseCancel {
      detail::CancelState& state;
      ~CloseCancel() { state.close(); }
    } close_cancel{*cancel_};
    auto name_of = [this](std::size_t i) -> const std::string& { return tasks_[i].name; };
    detail::ListFeed<decltype(name_of)> feed(fresh, tasks_.size(), name_of);
    detail::run_feed(runner, options_, feed, cancel_.get());
    hidden.reveal();  // results_ lives on, and a later run's workers may read it
    results_ = std::move(fresh);
    last_run_duration_ = std::chrono::steady_clock::now() - run_started;
    return results_;
  }

  /// Stops the run in progress: functions not yet started end as Status::cancelled, running ones
  /// are killed (with their process groups) and end as Status::cancelled, and execute_parallel()
  /// returns promptly. Thread-safe and async-signal-safe (an atomic store and one write()), so it
  /// may be called from another thread or a signal handler. Without a run in progress it does
  /// nothing: a later run is not affected.
  void cancel() noexcept {
    cancel_->request();
  }

  /// The Results of the last run (empty before the first).
  const std::vector<Result>& results() const noexcept { return results_; }
  const Context& context() const noexcept { return context_; }
  const Options& options() const noexcept { return options_; }
  /// Number of registered functions.
  std::size_t size() const noexcept { return tasks_.size(); }

 private:
  // What a registration keeps: the function and its arguments, made in place in the Task (a
  // registration moves them once).
  template <class Fn, class Arg>
  struct FillsResult {
    Fn f;
    Arg a;
    void operator()(const Context& ctx, Result& r) { f(ctx, a, r); }
  };
  template <class Fn, class Arg>
  struct ReturnsValue {
    Fn f;
    Arg a;
    void operator()(const Context& ctx, Result& r) {
      if constexpr (std::is_void_v<std::invoke_result_t<Fn&, const Context&, const Arg&>>)
        f(ctx, a);
      else
        r.result = Value(f(ctx, a));
    }
  };

  struct Task {
    template <class T, class... A>
    Task(std::string&& n, bool fills, std::in_place_type_t<T> callable, A&&... a)
        : run(callable, std::forward<A>(a)...), fills_result(fills), name(std::move(n)) {}
    // What a worker reads of a Task first, within its first two cache lines.
    detail::TaskCallable<Context> run;
    bool fills_result = false;  // takes the Result itself: it may read its name
    std::string name;
  };

  Context context_;
  Options options_;
  detail::ChunkedList<Task> tasks_;
  std::vector<Result> results_;
  std::vector<std::function<void(const Result&, Value&)>> processors_;  // by function index; empty = none
  std::chrono::nanoseconds last_run_duration_{0};
  std::unique_ptr<detail::CancelState> cancel_;
  bool running_ = false;
};

}  // namespace pfp

#endif  // PFP_MULTIPROCESSOR_HPP
// ---- end <pfp/multiprocessor.hpp> ----

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pfp {

/// How a Manager runs. The Options part (workers, timeout, backend, limits, retries, ...) is
/// passed to the engine as it is.
struct ManagerOptions : Options {
  /// Options::progress on: a live line on a terminal, plain lines elsewhere (see ProgressOptions).
  ManagerOptions() { progress.mode = ProgressMode::automatic; }
  ErrorPolicy on_error = ErrorPolicy::fail_fast;
  /// Most items handed out and not yet finished (the bounded queue: the item source is not read
  /// while it is full). 0 = twice the number of workers.
  std::size_t max_in_flight = 0;
  /// Receives one ItemLog per finished item (stderr_logger() by default; silent_logger() for none),
  /// and with live_log one per ItemContext::log() line as it is written. Once it threw, it is not
  /// called again (the run stops with what it threw).
  Logger logger = stderr_logger();
  /// ItemContext::log() lines reach the logger as they are written (ItemLog::live), not only in
  /// the item's final record.
  bool live_log = true;
  /// Ctrl-C (SIGINT) during run() stops the run: no more items, the running ones killed, code 2
  /// "Keyboard interrupt". The previous SIGINT disposition is restored when run() returns. Not
  /// installed when SIGINT is ignored (SIG_IGN) when the run starts, or another Manager's run in
  /// this process already handles it.
  bool handle_sigint = true;
};


template <class Handler>
class Manager;


/// Runs a handler over its items with worker processes (Options::backend may choose threads or
/// the calling thread instead). See handler_traits for what a handler provides.
///
/// Guarantees: at most ManagerOptions::max_in_flight items are handed out and unfinished at any
/// time; each item is handled once, by one worker, with that worker's own copy of the handler (as
/// it was when the worker started); a worker that crashes or hangs (past Options::timeout) fails
/// only its item; run() always returns, with every worker reaped, and may be called again.
/// A Manager is not thread-safe, except cancel() and stats().
template <class Handler>
class Manager {
  using traits = handler_traits<Handler>;
  static_assert(traits::has_build_items,
                "pfp::Manager<Handler>: Handler needs a member `build_items(pfp::BuildContext&)` (or `build_items()`) "
                "that returns the items: a range or a generator callable returning std::optional<Item>");
  static_assert(!traits::has_build_items || traits::source_is_range || traits::source_is_generator,
                "pfp::Manager<Handler>: Handler::build_items() must return a range (begin()/end(), e.g. "
                "pfp::batches(...)) or a generator callable returning std::optional<Item> (std::nullopt ends the items)");
  static_assert(!traits::valid_source || traits::item_converts,
                "pfp::Manager<Handler>: the items build_items() produces must convert to pfp::Value (they are sent to "
                "the workers); define void to_value(pfp::Value&, const Item&) and "
                "void from_value(const pfp::Value&, Item&) in the item type's namespace");
  static_assert(!traits::valid_source || traits::has_handle_item,
                "pfp::Manager<Handler>: Handler needs a member `void handle_item(const Item&, pfp::ItemContext&)`, "
                "where Item is what build_items() produces");
  static_assert(traits::valid_log_item,
                "pfp::Manager<Handler>: Handler::log_item(const Item&) must return a std::string (or something "
                "convertible to one) or a number");

 public:
  using item_type = typename traits::item_type;

  /// Uses a default-constructed Handler. Throws pfp::error if options are invalid.
  explicit Manager(ManagerOptions options = ManagerOptions{}) : Manager(Handler{}, std::move(options)) {}

  /// Uses `handler` as the prototype every worker copies. Throws pfp::error if options are invalid.
  explicit Manager(Handler handler, ManagerOptions options = ManagerOptions{})
      : handler_(std::move(handler)), options_(std::move(options)), cancel_(std::make_unique<detail::CancelState>()) {
    detail::validate(options_);
  }

  /// Builds the items and handles every one of them in the workers (see the class comment), then
  /// returns how it went. Never throws for what items, the item builder, the logger or the engine
  /// do: every failure is an ExitStatus with code 1 (2 on SIGINT, 3 after cancel()).
  /// Throws pfp::error only when called while a run of this object is in progress.
  ExitStatus run() {
    if constexpr (!traits::valid) {
      return ExitStatus{};  // the static_asserts above say what is missing
    } else {
      if (running_) throw error("pfp::Manager::run: a run of this Manager is already in progress");
      running_ = true;
      struct Reset {
        bool& flag;
        ~Reset() { flag = false; }
      } reset{running_};
      return run_once();
    }
  }

  /// Stops the run in progress as Ctrl-C would, but with code 3 "Cancelled". Thread-safe and
  /// async-signal-safe; does nothing without a run in progress.
  void cancel() noexcept { cancel_->request(); }

  /// A copy of the run's stats so far (the last run's after it ended). Thread-safe.
  Stats stats() const {
    std::lock_guard<std::mutex> lock(state_.mu);
    return state_.totals;
  }

  /// The prototype handler (the parent's; workers handle items with their own copies).
  Handler& handler() noexcept { return handler_; }
  const Handler& handler() const noexcept { return handler_; }
  const ManagerOptions& options() const noexcept { return options_; }

 private:
  using Clock = std::chrono::steady_clock;
  using Source = typename traits::source_type;
  using Stream = detail::item_stream<Source>;

  /// The Feed of one run: items from the handler's source out, results in.
  class ItemFeed final : public detail::Feed {
    static constexpr std::size_t kMaxDrained = 100'000;  // see drop_rest()

   public:
    ItemFeed(Manager& m, Stream& items, std::size_t bound, detail::ProgressLine& progress)
        : m_(m), items_(items), bound_(bound), progress_(progress), logger_(m.options_.logger) {
      wake_.open();
    }

    std::optional<detail::Task> pull() override {
      drain();
      if (stopped_ || exhausted_) return std::nullopt;
      if (in_flight_ >= bound_) {
        waiting_ = true;
        return std::nullopt;
      }
      const std::uint64_t seq = pulled_;
      std::optional<item_type> item;
      try {
        item = items_.next();
      } catch (...) {
        source_failed("the item builder threw " + detail::describe_current_exception(), std::nullopt);
        return std::nullopt;
      }
      if (!item) {
        exhausted_ = true;
        return std::nullopt;
      }
      detail::Task task;
      std::string label = std::to_string(seq);
      try {
        label = m_.label_of(*item, seq);
        task.payload = encode(Value(*item));
      } catch (...) {
        source_failed("item " + label + " could not be prepared: " + detail::describe_current_exception(), label);
        return std::nullopt;
      }
      labels_.emplace(seq, std::move(label));
      ++pulled_;
      ++in_flight_;
      return task;
    }

    bool finished() override { return stopped_ || exhausted_; }
    int wake_fd() const override { return wake_.read_fd(); }
    std::optional<std::size_t> size_hint() const override { return items_.size(); }
    bool stop_requested() override {
      stop_heard_ = stop_heard_ || stopped_;
      return stopped_;
    }
    int side_fd() const override { return m_.state_.log_channel.fd(); }
    void side_ready() override { take_lines(); }

    // Not a stop the run asked for: the run cannot go on (no worker process can be started), so
    // every item left gets that verdict; a run with items left unhandled is no success.
    void drop_rest(const std::string& why) override {
      if (stop_heard_ || exhausted_ || m_.cancel_->requested() || logger_.threw()) return;
      exhausted_ = true;
      // Every item the source still has gets its verdict, but a source without a known end may
      // never end: past kMaxDrained items it is left unread (the run has failed either way).
      const std::size_t limit = m_.state_.expected ? std::numeric_limits<std::size_t>::max() : kMaxDrained;
      for (std::size_t drained = 0; !m_.cancel_->requested(); ++drained) {
        if (drained == limit) {
          source_failed(why + "; the item source was not read past " + std::to_string(kMaxDrained) +
                            " more items (it has no known end)", std::nullopt);
          return;
        }
        std::optional<item_type> item;
        try {
          item = items_.next();
        } catch (...) {
          source_failed("the item builder threw " + detail::describe_current_exception(), std::nullopt);
          return;
        }
        if (!item) return;
        ItemLog log;
        log.seq = pulled_++;
        log.label = std::to_string(log.seq);
        try {
          log.label = m_.label_of(*item, log.seq);
        } catch (...) {
        }
        log.status = Status::cancelled;
        log.error = why;
        record(log.seq, log);
      }
    }

    void deliver(std::uint64_t seq, Result&& r) override {
      take_lines();  // those written before the item's result came
      if (in_flight_ > 0) --in_flight_;
      if (waiting_) {
        waiting_ = false;
        wake_.ring();
      }
      std::string label = take_label(seq);
      ItemLog log;
      log.seq = seq;
      log.label = label;
      log.pid = r.pid;
      log.status = r.status;
      log.error = std::move(r.error);
      log.duration = r.duration;
      std::optional<unsigned> threw_in;  // the worker that reported the item threw
      if (auto it = lines_.find(seq); it != lines_.end()) {
        log.messages = std::move(it->second.lines);
        log.messages_shown = m_.options_.live_log ? log.messages.size() : 0;
        threw_in = it->second.threw_in;
        lines_.erase(it);
      }
      if (r.status == Status::ok) {
        try {
          const Value& v = r.result;
          log.worker = v.at("w").as<unsigned>();
          Stats delta = v.at("s").as<Stats>();
          if (const Value* m = v.find("m"))
            for (std::string& line : m->as<std::vector<std::string>>()) log.messages.push_back(std::move(line));
          std::lock_guard<std::mutex> lock(m_.state_.mu);
          m_.state_.totals.merge(delta);
        } catch (...) {
          log.status = Status::exception;
          log.error = "pfp::Manager: the item's stats could not be merged: " + detail::describe_current_exception();
        }
      } else if (r.status == Status::exception) {
        log.worker = threw_in;  // a live worker: only a dead one is known by its pid alone
      }
      record(seq, log);
    }

    void amend(std::uint64_t seq, Result&& r) override {
      // An item reported ok corrupted the result stream afterwards: it counts as failed now (the
      // stats it sent stay merged). One already reported failed (its result withheld) stays so.
      Recent* was = nullptr;
      for (Recent& d : recent_)
        if (d.seq == seq) was = &d;
      if (!was || !was->ok) return;
      was->ok = false;
      if (ok_ > 0) --ok_;
      ItemLog log;
      log.seq = seq;
      log.label = was->label;
      log.pid = r.pid;
      log.status = r.status;
      log.error = std::move(r.error);
      record(seq, log);
    }

    // The counts so far.
    std::size_t ok() const noexcept { return ok_; }
    std::size_t failed() const noexcept { return failed_; }
    std::size_t cancelled() const noexcept { return cancelled_; }
    std::size_t done() const noexcept { return ok_ + failed_ + cancelled_; }
    bool stopped() const noexcept { return stopped_; }
    std::vector<ItemFailure>& failures() noexcept { return failures_; }
    const std::optional<std::string>& source_error() const noexcept { return source_error_; }
    // The first failure (an item's or the source's): its message and target.
    const std::optional<std::pair<std::string, std::optional<std::string>>>& first() const noexcept { return first_; }

   private:
    void drain() noexcept { wake_.drain(); }

    // What the handlers logged so far: kept for each item's final record, and passed on live.
    void take_lines() {
      for (detail::ItemLogChannel::Record& rec : m_.state_.log_channel.take()) {
        Lines& kept = lines_[rec.seq];
        if (rec.kind == detail::ItemLogChannel::Kind::failed) {
          kept.threw_in = rec.worker;
          continue;
        }
        kept.lines.push_back(rec.text);
        if (!m_.options_.live_log) continue;
        ItemLog log;
        log.seq = rec.seq;
        auto label = labels_.find(rec.seq);
        log.label = label != labels_.end() ? label->second : std::to_string(rec.seq);
        log.worker = rec.worker;
        log.pid = rec.pid;
        log.live = true;
        log.messages.push_back(std::move(rec.text));
        call_logger(log);
      }
    }

    void call_logger(const ItemLog& log) {
      if (!m_.options_.logger || logger_.threw()) return;
      progress_.suspend();
      try {
        logger_(log);
      } catch (...) {
        stopped_ = true;  // the engine stops the run and rethrows: the items it cancels are no failures
        throw;
      }
      progress_.resume();
    }

    void source_failed(std::string message, std::optional<std::string> target) {
      exhausted_ = true;
      if (m_.options_.on_error == ErrorPolicy::fail_fast) stopped_ = true;
      if (!first_) first_.emplace(message, target);
      source_error_ = std::move(message);
    }

    std::string take_label(std::uint64_t seq) {
      auto it = labels_.find(seq);
      if (it == labels_.end()) return std::to_string(seq);
      std::string label = std::move(it->second);
      labels_.erase(it);
      if (recent_.size() >= 64) recent_.pop_front();
      recent_.push_back(Recent{seq, label, false});
      return label;
    }

    // Counts, lists and logs a finished item.
    void record(std::uint64_t seq, ItemLog& log) {
      // A cancelled item is a failure unless the run was being stopped (the engine also cancels
      // items it could not start because no worker process could be started).
      const bool stopping = stopped_ || m_.cancel_->requested();
      if (log.status == Status::ok) {
        ++ok_;
        if (!recent_.empty() && recent_.back().seq == seq) recent_.back().ok = true;
      } else if (log.status == Status::cancelled && stopping) {
        ++cancelled_;
      } else {
        ++failed_;
        failures_.push_back(ItemFailure{seq, log.label, log.status, log.error});
        if (!first_) first_.emplace(std::string(to_string(log.status)) + ": " + log.error, log.label);
        if (m_.options_.on_error == ErrorPolicy::fail_fast) stopped_ = true;
      }
      call_logger(log);
      if (m_.state_.expected) progress_.set_total(m_.state_.expected);
      progress_.update(ok_ + failed_, failed_, cancelled_);
    }

    struct Lines {
      std::vector<std::string> lines;
      std::optional<unsigned> threw_in;
    };

    Manager& m_;
    Stream& items_;
    const std::size_t bound_;
    detail::ProgressLine& progress_;
    detail::WakePipe wake_;
    std::uint64_t pulled_ = 0;
    std::size_t in_flight_ = 0;
    bool waiting_ = false;    // pull() said "not now" because the bound was reached
    bool exhausted_ = false;  // the source has no more items (or threw)
    bool stopped_ = false;    // fail-fast: a failure stops the run
    bool stop_heard_ = false;  // the engine saw stopped_: what it drops is that stop's
    detail::UserCallback<const Logger> logger_;
    std::unordered_map<std::uint64_t, Lines> lines_;  // of the items in flight
    std::unordered_map<std::uint64_t, std::string> labels_;  // of the items in flight
    struct Recent {
      std::uint64_t seq;
      std::string label;
      bool ok;  // counted as ok
    };
    std::deque<Recent> recent_;  // the last items delivered (for amend)
    std::size_t ok_ = 0;
    std::size_t failed_ = 0;
    std::size_t cancelled_ = 0;
    std::vector<ItemFailure> failures_;
    std::optional<std::string> source_error_;
    std::optional<std::pair<std::string, std::optional<std::string>>> first_;
  };

  template <class Item = item_type>  // a template: no reference to void when Handler is invalid
  std::string label_of(const Item& item, std::uint64_t seq) {
    if constexpr (traits::has_log_item) {
      if constexpr (std::is_convertible_v<typename traits::label_type, std::string>) {
        return std::string(handler_.log_item(item));
      } else {
        return std::to_string(handler_.log_item(item));
      }
    } else {
      return std::to_string(seq);
    }
  }

  // Runs in the worker: one item with the worker's handler.
  void handle(Handler& h, const detail::TaskView& task, Result& r) const {
    const item_type item = decode(task.payload).template as<item_type>();
    ItemContext ctx(state_.shared, task.worker, task.seq, &state_.log_channel);
    if constexpr (traits::has_reset_stats) h.reset_stats(ctx.stats);
    try {
      h.handle_item(item, ctx);
    } catch (...) {
      // The worker lives on: the parent logs the item as this worker's, with the lines it wrote.
      state_.log_channel.send(task.seq, task.worker, detail::ItemLogChannel::Kind::failed, {});
      for (const std::string& line : ctx.messages_) state_.log_channel.send(task.seq, task.worker, detail::ItemLogChannel::Kind::line, line);
      throw;
    }
    Value out = Value::object();
    out["w"] = task.worker;
    out["s"] = Value(ctx.stats);
    if (!ctx.messages_.empty()) out["m"] = Value(ctx.messages_);
    r.result = std::move(out);
  }

  ExitStatus run_once() {
    const auto start = Clock::now();
    ExitStatus st;
    {
      std::lock_guard<std::mutex> lock(state_.mu);
      state_.totals.clear();
    }
    state_.shared = Value::object();
    state_.frozen = false;
    state_.expected.reset();
    state_.workers = detail::effective_workers(options_);

    detail::SigintTarget target;
    target.cancel = cancel_.get();
    std::optional<std::string> run_error;
    std::optional<detail::ProgressLine> progress;
    std::optional<ItemFeed> feed;
    bool opened = false;
    try {
      cancel_->open();
      opened = true;
      state_.log_channel.open(detail::isolated_workers(options_));
    } catch (...) {
      run_error = "pfp::Manager: " + detail::describe_current_exception();
    }
    struct CloseCancel {
      detail::CancelState& state;
      detail::ItemLogChannel& channel;
      bool open;
      ~CloseCancel() {
        channel.close();
        if (open) state.close();
      }
    } close_cancel{*cancel_, state_.log_channel, opened};
    {
      detail::SigintScope sigint(&target, options_.handle_sigint && !run_error);
      BuildContext ctx(state_);
      std::optional<Stream> items;
      if (!run_error) {
        try {
          items.emplace(call_build(ctx));
        } catch (...) {
          run_error = "the item builder threw " + detail::describe_current_exception();
        }
      }
      state_.frozen = true;
      if (items) {
        try {
          std::vector<Handler> copies;  // empty: the workers are processes forked with handler_
          if (!detail::isolated_workers(options_)) copies = per_worker_copies();
          if (!state_.expected) state_.expected = items->size();
          progress.emplace(options_.progress, state_.expected, start);
          const std::size_t bound = options_.max_in_flight ? options_.max_in_flight : 2 * std::size_t{state_.workers};
          feed.emplace(*this, *items, bound, *progress);
          detail::FeedRunner runner = [this, &copies](const detail::TaskView& task, Result& r) {
            handle(copies.empty() ? handler_ : copies.at(task.worker), task, r);
          };
          Options engine = options_;
          engine.progress = ProgressOptions::none();  // the Manager draws its own
          detail::run_feed(runner, engine, *feed, cancel_.get());
        } catch (...) {
          run_error = "pfp::Manager: the run stopped: " + detail::describe_current_exception();
        }
      }
    }

    if (feed && progress) {
      try {
        progress->finish(feed->ok() + feed->failed(), feed->failed(), feed->cancelled(),
                         target.hit.load() || (opened && cancel_->requested()) || feed->stopped());
      } catch (...) {
        if (!run_error) run_error = "pfp::Manager: on_progress threw " + detail::describe_current_exception();
      }
    }
    verdict(st, feed ? &*feed : nullptr, target.hit.load(), opened, run_error);
    st.stats = stats();
    st.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return st;
  }

  // The run's exit status from what its feed counted and how it ended.
  void verdict(ExitStatus& st, ItemFeed* feed, bool interrupted, bool opened, const std::optional<std::string>& run_error) {
    if (feed) {
      st.items_ok = feed->ok();
      st.items_failed = feed->failed();
      st.items_cancelled = feed->cancelled();
      st.failures = std::move(feed->failures());
    }
    if (interrupted) {
      st.code = ExitStatus::interrupted;
      st.message = "Keyboard interrupt";
    } else if (opened && cancel_->requested()) {
      st.code = ExitStatus::cancelled;
      st.message = "Cancelled";
    } else if (feed && feed->first()) {
      st.code = ExitStatus::failure;
      if (options_.on_error == ErrorPolicy::fail_fast) {
        st.message = feed->first()->first;
        st.error_target = feed->first()->second;
      } else {
        std::vector<std::string> parts;
        if (!st.failures.empty()) {
          const ItemFailure& f = st.failures.front();
          parts.push_back(std::to_string(st.items_failed) + " of " + std::to_string(feed->done()) +
                          " items failed (first: " + std::string(to_string(f.status)) + ": " + f.error + ")");
          st.error_target = f.label;
        } else {
          st.error_target = feed->first()->second;
        }
        if (feed->source_error()) parts.push_back(*feed->source_error());
        st.message = parts.front();
        if (parts.size() > 1) st.message += "; " + parts.back();
      }
      if (run_error) st.message += "; then " + *run_error;
    } else if (run_error) {
      st.code = ExitStatus::failure;
      st.message = *run_error;
    }
  }

  auto call_build(BuildContext& ctx) {
    if constexpr (detail::builds_with_context<Handler>::value) {
      return Stream(handler_.build_items(ctx));
    } else {
      return Stream(handler_.build_items());
    }
  }

  // In-process backends: one copy of the prototype per worker slot, so that handler state is per
  // worker there too. The inline backend makes do with the prototype when it cannot be copied.
  std::vector<Handler> per_worker_copies() const {
    if constexpr (std::is_copy_constructible_v<Handler>) {
      return std::vector<Handler>(detail::runs_in_caller(options_) ? 1 : state_.workers, handler_);
    } else {
      if (detail::runs_in_caller(options_)) return {};
      throw error("pfp::Manager: Backend::threads gives every worker thread its own copy of the handler, so Handler must "
                  "be copy-constructible; use Backend::processes or Backend::inline_, or make it copyable");
    }
  }

  Handler handler_;
  ManagerOptions options_;
  std::unique_ptr<detail::CancelState> cancel_;
  mutable detail::ManagerRunState state_;
  bool running_ = false;
};

}  // namespace pfp

#endif  // PFP_MANAGER_HPP
// ---- end <pfp/manager.hpp> ----
// ---- begin <pfp/map.hpp> ----
#ifndef PFP_MAP_HPP
#define PFP_MAP_HPP

// pfp::map and friends: one function applied to every item, in worker processes.
//
//   map / map_results / map_unordered  -- items that exist before the run (containers with
//       random access, several zipped like Python's map(f, a, b)): the workers inherit them by
//       fork, each item is a task of its own, nothing is serialized but the results.
//   imap / imap_unordered              -- a lazy source (an input range, or a callable returning
//       std::optional<T>, of any length, even endless): items are serialized as they are pulled,
//       and at most `max_in_flight` are pulled and not yet handed to you, so memory stays flat.
//
// Every item gets exactly one Result (index = its position in the input). An item that throws is
// Status::exception on its own; a crash or timeout costs its item only (with imap's chunksize > 1,
// the items of its chunk).

// ---- begin <pfp/detail/result_handoff.hpp> ----
#ifndef PFP_DETAIL_RESULT_HANDOFF_HPP
#define PFP_DETAIL_RESULT_HANDOFF_HPP

// How a run driven by callbacks (imap's on_result) becomes a range a caller pulls from: the run
// goes on in a helper thread, which hands each Result over and then waits until the caller asks
// for the next one. The two take turns, never running at once: the run forks its workers only
// while the caller waits inside pfp, holding no lock of its own, and the caller's code between
// two Results runs while the run stands still (as it does while a callback runs).


#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <utility>

namespace pfp {
namespace detail {

/// What put() throws once the caller has left: the run stops as it does when on_result throws.
struct ConsumerLeft {};

class ResultHandoff {
 public:
  /// In the run's thread, before it starts: waits until the caller first asks for a Result.
  /// False if the caller left instead.
  bool wait_for_first() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return wanted_ || left_; });
    return !left_;
  }
  /// In the run's thread (its on_result): hands r over and waits until the caller wants the next.
  /// Throws ConsumerLeft when the caller has gone.
  void put(Result&& r) {
    std::unique_lock<std::mutex> lock(mu_);
    if (left_) throw ConsumerLeft{};
    slot_.emplace(std::move(r));
    wanted_ = false;
    cv_.notify_all();
    cv_.wait(lock, [&] { return wanted_ || left_; });
    if (left_) throw ConsumerLeft{};
  }
  /// In the run's thread, last: the run ended (error: what it threw, if anything but ConsumerLeft).
  void finish(std::exception_ptr error) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = std::move(error);
    cv_.notify_all();
  }

  /// In the caller's thread: the next Result, or nullopt when the run has ended; rethrows what
  /// the run threw (once).
  std::optional<Result> next() {
    std::unique_lock<std::mutex> lock(mu_);
    slot_.reset();
    wanted_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return slot_.has_value() || done_; });
    if (slot_) {
      std::optional<Result> r = std::move(slot_);
      slot_.reset();
      return r;
    }
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return std::nullopt;
  }
  /// In the caller's thread: it takes no more; the run stops at its next hand-over.
  void leave() noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    left_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Result> slot_;  // handed over, not yet taken
  bool wanted_ = false;         // the caller waits for a Result
  bool left_ = false;           // the caller takes no more
  bool done_ = false;           // the run ended
  std::exception_ptr error_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_RESULT_HANDOFF_HPP
// ---- end <pfp/detail/result_handoff.hpp> ----

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

namespace pfp {

/// Options of map() and imap(): the run's Options plus how items are grouped and bounded.
struct MapOptions : Options {
  /// imap(): items serialized and sent as one task (0 or 1: each item on its own). Larger chunks
  /// cost fewer round trips; a crash or timeout then costs the whole chunk, and exceptions are
  /// not retried. map() ignores it: its items are inherited, and each is a task of its own.
  std::size_t chunksize = 1;
  /// imap(): items pulled from the source and not yet handed to on_result; 0 = 64 per worker.
  std::size_t max_in_flight = 0;
};

namespace detail {

// An item's verdict inside a chunk's Value: [status, value or error text, duration in ns].
inline Value item_entry(Status status, Value v, std::chrono::nanoseconds d) {
  Value e = Value::array();
  e.push_back(static_cast<int>(status));
  e.push_back(std::move(v));
  e.push_back(static_cast<long long>(d.count()));
  return e;
}

// Runs f on one item inside a worker; an exception is the item's own verdict.
template <class Call>
Value run_item(Call&& call) {
  auto start = std::chrono::steady_clock::now();
  try {
    Value v = call();
    return item_entry(Status::ok, std::move(v), std::chrono::steady_clock::now() - start);
  } catch (...) {
    return item_entry(Status::exception, Value(describe_current_exception()), std::chrono::steady_clock::now() - start);
  }
}

template <class F, class... Items>
Value call_item(F& f, Items&&... items) {
  using R = std::invoke_result_t<F&, Items...>;
  static_assert(std::is_void_v<R> || std::is_constructible_v<Value, R>,
                "pfp::map: the function's return type cannot be converted to pfp::Value; define "
                "void to_value(pfp::Value&, const T&) in the type's namespace");
  if constexpr (std::is_void_v<R>) {
    f(std::forward<Items>(items)...);
    return Value();
  } else {
    return Value(f(std::forward<Items>(items)...));
  }
}

// Splits a chunk's Result into one Result per item and hands each to `emit(index, Result&&)`.
template <class Emit>
void split_chunk(const Result& chunk, std::size_t first, std::size_t count, Emit&& emit) {
  const bool whole = chunk.ok() && chunk.result.is_array() && chunk.result.size() == count;
  for (std::size_t k = 0; k < count; ++k) {
    Result r;
    r.index = first + k;
    r.pid = chunk.pid;
    r.attempts = chunk.attempts;
    if (whole) {
      const Value& e = chunk.result.at(k);
      r.status = static_cast<Status>(e.at(0).as<int>());
      if (r.status == Status::ok)
        r.result = e.at(1);
      else
        r.error = e.at(1).as<std::string>();
      r.duration = std::chrono::nanoseconds(e.at(2).as<long long>());
    } else {
      r.status = chunk.ok() ? Status::exception : chunk.status;
      r.error = chunk.ok() ? "pfp: a chunk's result was malformed" : chunk.error;
      r.duration = chunk.duration;
    }
    emit(first + k, std::move(r));
  }
}

inline std::size_t map_workers(const Options& o) { return effective_workers(o); }

// map_unordered(): item i is task i (fn == seq, nothing serialized), each Result handed on as it
// completes.
template <class OnItem>
class ItemFeed final : public Feed {
 public:
  ItemFeed(std::size_t items, OnItem& on_item) : items_(items), on_item_(on_item) {}
  std::optional<Task> pull() override {
    if (next_ >= items_) return std::nullopt;
    return Task{next_++, {}};
  }
  bool finished() override { return true; }
  std::optional<std::size_t> size_hint() const override { return items_; }
  void deliver(std::uint64_t seq, Result&& r) override { on_item_(static_cast<std::size_t>(seq), std::move(r)); }
  void drop_rest(const std::string& why) override {
    if (on_item_.threw()) return;  // the run stops for what it threw: it hears of nothing more
    for (; next_ < items_; ++next_) {
      Result r;
      r.index = static_cast<std::size_t>(next_);
      r.status = Status::cancelled;
      r.error = why;
      on_item_(r.index, std::move(r));
    }
  }

 private:
  std::uint64_t items_;
  UserCallback<OnItem> on_item_;
  std::uint64_t next_ = 0;
};

template <class Range>
std::size_t range_size(const Range& r) {
  using It = decltype(std::begin(r));
  static_assert(std::is_base_of_v<std::random_access_iterator_tag, typename std::iterator_traits<It>::iterator_category>,
                "pfp::map: every range must have random access (a vector, array, deque, string, ...); "
                "for a lazy or single-pass source use pfp::imap");
  return static_cast<std::size_t>(std::distance(std::begin(r), std::end(r)));
}

// The size of the zipped ranges (the shortest decides) and the runner of item i: f(a[i], b[i], ...)
// into the Result; what f throws is the item's verdict, as for any task.
template <class F, class... Ranges>
std::pair<std::size_t, FeedRunner> item_runner(F& f, const Ranges&... ranges) {
  static_assert(sizeof...(Ranges) > 0, "pfp::map: give at least one range of items");
  static_assert(std::is_invocable_v<F&, decltype(*std::begin(ranges))...>,
                "pfp::map: f must be callable with one item of each range, in order");
  const std::size_t n = std::min({range_size(ranges)...});
  FeedRunner runner = [&f, &ranges...](const TaskView& task, Result& r) {
    r.result = call_item(f, std::begin(ranges)[static_cast<std::ptrdiff_t>(task.fn)]...);
  };
  return {n, std::move(runner)};
}

// map_results(): every item's Result, in input order, made in place (a run of items is one message).
template <class F, class... Ranges>
std::vector<Result> run_map_results(const MapOptions& o, F& f, const Ranges&... ranges) {
  auto [n, runner] = item_runner(f, ranges...);
  std::vector<Result> out;
  if (n == 0) return out;
  out.reserve(n);
  auto no_name = [](std::size_t) { return std::string(); };
  ListFeed<decltype(no_name)> feed(out, n, no_name);
  run_feed(runner, o, feed, nullptr);
  return out;
}

// map_unordered(): each item's Result handed to on_item(index, Result&&) as it completes.
template <class F, class OnItem, class... Ranges>
void run_map(const MapOptions& o, F& f, OnItem& on_item, const Ranges&... ranges) {
  auto [n, runner] = item_runner(f, ranges...);
  if (n == 0) return;
  ItemFeed<OnItem> feed(n, on_item);
  run_feed(runner, o, feed, nullptr);
}

}  // namespace detail

/// Applies f to the zipped items of `ranges` (f(a[i], b[i], ...), as many as the shortest range)
/// in workers and returns one Result per item, in input order. Never throws for what f does;
/// throws pfp::error if no worker can be started.
template <class F, class... Ranges>
std::vector<Result> map_results(const MapOptions& options, F f, const Ranges&... ranges) {
  return detail::run_map_results(options, f, ranges...);
}

/// Like map_results(), but returns the values f returned, in input order, as R (default: f's
/// return type). Once every item ran, throws pfp::task_error for the first item (in input order)
/// that failed.
template <class R = void, class F, class... Ranges>
auto map(const MapOptions& options, F f, const Ranges&... ranges) {
  using Natural = std::decay_t<std::invoke_result_t<F&, decltype(*std::begin(ranges))...>>;
  using Out = std::conditional_t<std::is_void_v<R>, Natural, R>;
  static_assert(!std::is_void_v<Out>, "pfp::map: f returns nothing; use pfp::map_results to see each item's Result");
  std::vector<Result> results = map_results(options, std::move(f), ranges...);
  std::vector<Out> values;
  values.reserve(results.size());
  for (Result& r : results) {
    if (!r.ok()) throw task_error(std::move(r));
    values.push_back(r.result.template as<Out>());
  }
  return values;
}

/// map() with default MapOptions.
template <class F, class Range, class... Ranges, std::enable_if_t<!std::is_base_of_v<Options, std::decay_t<F>>, int> = 0>
auto map(F f, const Range& range, const Ranges&... ranges) {
  return map(MapOptions{}, std::move(f), range, ranges...);
}

/// Applies f like map_results(), calling on_result(Result&&) -- or on_result(Result&&, a[i], b[i],
/// ...), with the item's inputs, if it takes them -- in this thread as each item completes
/// (fastest first); Result::index is the item's position. What on_result throws stops the run
/// (running tasks are killed) and is rethrown; on_result is not called again.
template <class F, class OnResult, class... Ranges>
void map_unordered(const MapOptions& options, F f, OnResult on_result, const Ranges&... ranges) {
  constexpr bool with_items = std::is_invocable_v<OnResult&, Result&&, decltype(*std::begin(ranges))...>;
  static_assert(with_items || std::is_invocable_v<OnResult&, Result&&>,
                "pfp::map_unordered: on_result must be callable as on_result(pfp::Result&&) or "
                "on_result(pfp::Result&&, <one item of each range>...)");
  auto emit = [&]([[maybe_unused]] std::size_t i, Result&& r) {
    if constexpr (with_items)
      on_result(std::move(r), std::begin(ranges)[static_cast<std::ptrdiff_t>(i)]...);
    else
      on_result(std::move(r));
  };
  detail::run_map(options, f, emit, ranges...);
}

namespace detail {

// A lazy source as "give me the next item or nothing": an input range or a callable.
template <class Source, class = void>
struct is_range : std::false_type {};
template <class Source>
struct is_range<Source, std::void_t<decltype(std::begin(std::declval<Source&>())), decltype(std::end(std::declval<Source&>()))>>
    : std::true_type {};

template <class T>
struct optional_value;
template <class T>
struct optional_value<std::optional<T>> {
  using type = T;
};

template <class Source, class = void>
struct source_traits {
  using callable_result = std::decay_t<std::invoke_result_t<Source&>>;
  using item = typename optional_value<callable_result>::type;
  using iterator = int;  // unused
};
template <class Source>
struct source_traits<Source, std::enable_if_t<is_range<Source>::value>> {
  using iterator = decltype(std::begin(std::declval<Source&>()));
  using item = std::decay_t<decltype(*std::declval<iterator&>())>;
};

template <class Source>
class SourceCursor {
 public:
  using Item = typename source_traits<Source>::item;
  explicit SourceCursor(Source& s) : source_(s) {
    if constexpr (is_range<Source>::value) {
      it_.emplace(std::begin(source_));
    }
  }
  std::optional<Item> next() {
    if constexpr (is_range<Source>::value) {
      if (*it_ == std::end(source_)) return std::nullopt;
      std::optional<Item> item(**it_);
      ++*it_;
      return item;
    } else {
      return source_();
    }
  }

 private:
  Source& source_;
  std::optional<typename source_traits<Source>::iterator> it_;
};

// imap(): serialized items, each a task of its own (chunk 1) or in chunks (an array of items, and
// an array of per-item verdicts back); at most max_in_flight items between the source and on_result.
// Each Result goes to on_item(Result&&, const Item*): the item itself when keep_items (kept from
// when it is pulled until its Result is handed on), else null.
template <class Cursor, class OnItem>
class StreamFeed final : public Feed {
 public:
  using Item = typename Cursor::Item;
  StreamFeed(Cursor& cursor, std::size_t chunk, std::size_t max_in_flight, bool ordered, bool keep_items, OnItem& on_item)
      : cursor_(cursor), chunk_(chunk), max_in_flight_(max_in_flight), ordered_(ordered), keep_items_(keep_items),
        on_item_(on_item) {
    wake_.open();
  }
  std::optional<Task> pull() override {
    wake_.drain();
    if (source_error_) std::rethrow_exception(std::exchange(source_error_, nullptr));
    if (done_ || pulled_ - emitted_ > max_in_flight_ - chunk_) return std::nullopt;  // max_in_flight_ >= chunk_
    Value items = Value::array();
    try {
      while (items.size() < chunk_) {
        std::optional<typename Cursor::Item> item = cursor_.next();
        if (!item) {
          done_ = true;
          break;
        }
        items.push_back(Value(*item));
        if (keep_items_) kept_.emplace(pulled_ + items.size() - 1, std::move(*item));
      }
    } catch (...) {
      if (items.size() == 0) throw;
      source_error_ = std::current_exception();  // the items already taken run first
    }
    if (items.size() == 0) return std::nullopt;
    chunks_.emplace(chunk_seq_++, std::make_pair(pulled_, items.size()));
    pulled_ += items.size();
    return Task{0, encode(chunk_ == 1 ? items.at(0) : items)};
  }
  bool finished() override { return done_; }
  int wake_fd() const override { return wake_.read_fd(); }
  void deliver(std::uint64_t seq, Result&& r) override {
    auto it = chunks_.find(seq);
    const auto [first, count] = it->second;
    chunks_.erase(it);
    auto emit = [&](std::size_t i, Result&& item) {
      if (!ordered_) {
        hand_on(i, std::move(item));
        return;
      }
      waiting_.emplace(i, std::move(item));
      while (!waiting_.empty() && waiting_.begin()->first == emitted_) {
        Result next = std::move(waiting_.begin()->second);
        waiting_.erase(waiting_.begin());
        hand_on(emitted_, std::move(next));
      }
    };
    if (chunk_ == 1) {
      r.index = first;
      emit(first, std::move(r));
    } else {
      split_chunk(r, first, count, emit);
    }
    wake_.ring();
  }
  // Stopped for what on_result threw (it hears of nothing more), or the run cannot go on: the
  // items not yet taken from the source will not run, which run_imap() must not keep quiet.
  void drop_rest(const std::string& why) override {
    if (!done_ && !on_item_.threw()) cut_short_ = why;
    done_ = true;
  }
  // Item i's Result to on_result, with the item if it was kept.
  void hand_on(std::size_t i, Result&& r) {
    ++emitted_;
    if (!keep_items_) {
      on_item_(std::move(r), nullptr);
      return;
    }
    auto it = kept_.find(i);
    std::optional<Item> item;
    if (it != kept_.end()) {
      item.emplace(std::move(it->second));
      kept_.erase(it);
    }
    if (item) on_item_(std::move(r), &*item);
  }

  /// Why the run ended before the source did (empty: it did not).
  const std::string& cut_short() const noexcept { return cut_short_; }
  std::size_t emitted() const noexcept { return emitted_; }

 private:
  Cursor& cursor_;
  std::size_t chunk_;
  std::size_t max_in_flight_;
  bool ordered_;
  bool keep_items_;
  UserCallback<OnItem> on_item_;
  std::unordered_map<std::size_t, Item> kept_;  // keep_items_: the items pulled, by index
  bool done_ = false;
  std::string cut_short_;
  std::exception_ptr source_error_;
  std::size_t pulled_ = 0;
  std::size_t emitted_ = 0;
  std::uint64_t chunk_seq_ = 0;
  std::unordered_map<std::uint64_t, std::pair<std::size_t, std::size_t>> chunks_;
  std::map<std::size_t, Result> waiting_;  // ordered mode: finished early, waiting for their turn
  WakePipe wake_;  // rung when a result makes room for more items
};

template <class F, class Source, class OnResult>
void run_imap(const MapOptions& o, F& f, Source& source, OnResult& on_result, bool ordered) {
  static_assert(is_range<Source>::value || std::is_invocable_v<Source&>,
                "pfp::imap: the source must be an input range or a callable returning std::optional<T>");
  using Cursor = SourceCursor<Source>;
  using Item = typename Cursor::Item;
  static_assert(std::is_invocable_v<F&, const Item&>, "pfp::imap: f must be callable with one item of the source");
  constexpr bool with_item = std::is_invocable_v<OnResult&, Result&&, const Item&>;
  static_assert(with_item || std::is_invocable_v<OnResult&, Result&&>,
                "pfp::imap: on_result must be callable as on_result(pfp::Result&&) or on_result(pfp::Result&&, const Item&)");
  const std::size_t chunk = std::max<std::size_t>(1, o.chunksize);
  const std::size_t bound = std::max(chunk, o.max_in_flight ? o.max_in_flight : 64 * detail::map_workers(o));
  FeedRunner runner = [&](const TaskView& task, Result& r) {
    if (chunk == 1) {  // the item's own task: what f throws is its verdict, retried like any task's
      r.result = call_item(f, decode(task.payload).template as<Item>());
      return;
    }
    const Value items = decode(task.payload);
    Value out = Value::array();
    for (const Value& item : items.elements())
      out.push_back(run_item([&] { return call_item(f, item.template as<Item>()); }));
    r.result = std::move(out);
  };
  Cursor cursor(source);
  auto emit = [&](Result&& r, [[maybe_unused]] const Item* item) {
    if constexpr (with_item)
      on_result(std::move(r), *item);
    else
      on_result(std::move(r));
  };
  StreamFeed<Cursor, decltype(emit)> feed(cursor, chunk, bound, ordered, with_item, emit);
  run_feed(runner, o, feed, nullptr);
  if (!feed.cut_short().empty())
    throw error("pfp::imap: the run ended after " + std::to_string(feed.emitted()) +
                " items, before the source did (the rest were not taken from it): " + feed.cut_short());
}

}  // namespace detail

/// Applies f to every item of a lazy source -- an input range, or a callable returning
/// std::optional<T> (std::nullopt ends it) -- calling on_result(Result&&) in input order.
/// Items are serialized (T converts to pfp::Value and back); at most MapOptions::max_in_flight
/// are between the source and on_result at once, so an endless source runs in flat memory.
/// If the source throws, the items already pulled still run and reach on_result, then the
/// exception is rethrown. What on_result throws stops the run and is rethrown.
template <class F, class Source, class OnResult>
void imap(const MapOptions& options, F f, Source&& source, OnResult on_result) {
  detail::run_imap(options, f, source, on_result, true);
}

/// imap() handing each Result to on_result as soon as it completes (Result::index tells which).
template <class F, class Source, class OnResult>
void imap_unordered(const MapOptions& options, F f, Source&& source, OnResult on_result) {
  detail::run_imap(options, f, source, on_result, false);
}

/// The Results of imap() or imap_unordered() called without on_result, as a single-pass range:
///   for (pfp::Result& r : pfp::imap(options, f, source)) ...
/// The run starts at begin() and goes on only while the loop waits for its next Result (in a
/// helper thread, which alone forks the workers, and only while the loop's thread waits inside
/// pfp). Leaving the loop early (break, return, an exception) stops the run when the range is
/// destroyed: running items are killed and every worker is reaped before the destructor returns.
/// What the run throws (the source's exception, pfp::error when it cannot go on) comes out of
/// begin() or the increment that reaches it. An rvalue source is kept in the range; an lvalue
/// one is referred to and must outlive it.
template <class F, class Source>
class ResultRange {
  struct State {
    MapOptions options;
    F f;
    Source source;
    bool ordered;
    detail::ResultHandoff handoff;
    std::thread thread;
    std::optional<Result> current;
  };

 public:
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Result;
    using difference_type = std::ptrdiff_t;
    using pointer = Result*;
    using reference = Result&;
    iterator() = default;
    Result& operator*() const { return *state_->current; }
    Result* operator->() const { return &*state_->current; }
    iterator& operator++() {
      state_->current = state_->handoff.next();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& a, const iterator& b) { return a.at_end() == b.at_end(); }
    friend bool operator!=(const iterator& a, const iterator& b) { return !(a == b); }

   private:
    friend class ResultRange;
    explicit iterator(State* s) : state_(s) {}
    bool at_end() const { return !state_ || !state_->current; }
    State* state_ = nullptr;
  };

  ResultRange(const MapOptions& options, F f, Source&& source, bool ordered)
      : state_(new State{options, std::move(f), std::forward<Source>(source), ordered, {}, {}, {}}) {}
  ResultRange(ResultRange&&) noexcept = default;
  ResultRange& operator=(ResultRange&&) = delete;
  ~ResultRange() { stop(); }

  /// Starts the run and waits for its first Result. Throws pfp::error when called twice.
  iterator begin() {
    if (state_->thread.joinable()) throw error("pfp::imap: a range of Results can be walked only once");
    if (detail::isolated_workers(state_->options)) detail::check_threads(state_->options);  // before the helper exists
    state_->options.threads = ThreadPolicy::allow;
    State* st = state_.get();
    st->thread = std::thread([st] {
      std::exception_ptr failure;
      try {
        if (st->handoff.wait_for_first()) {
          auto on_result = [st](Result&& r) { st->handoff.put(std::move(r)); };
          detail::run_imap(st->options, st->f, st->source, on_result, st->ordered);
        }
      } catch (const detail::ConsumerLeft&) {
      } catch (...) {
        failure = std::current_exception();
      }
      st->handoff.finish(failure);
    });
    iterator it(st);
    ++it;
    return it;
  }
  iterator end() noexcept { return iterator(); }

 private:
  void stop() noexcept {
    if (!state_ || !state_->thread.joinable()) return;
    state_->handoff.leave();
    state_->thread.join();
  }
  std::unique_ptr<State> state_;
};

/// imap() as a range of Results in input order (see ResultRange).
template <class F, class Source>
ResultRange<F, Source> imap(const MapOptions& options, F f, Source&& source) {
  return ResultRange<F, Source>(options, std::move(f), std::forward<Source>(source), true);
}

/// imap_unordered() as a range of Results in completion order (see ResultRange).
template <class F, class Source>
ResultRange<F, Source> imap_unordered(const MapOptions& options, F f, Source&& source) {
  return ResultRange<F, Source>(options, std::move(f), std::forward<Source>(source), false);
}

}  // namespace pfp

#endif  // PFP_MAP_HPP
// ---- end <pfp/map.hpp> ----

#define PFP_VERSION_MAJOR 0
#define PFP_VERSION_MINOR 1
#define PFP_VERSION_PATCH 0

#endif  // PFP_PFP_HPP
// ---- end <pfp/pfp.hpp> ----
