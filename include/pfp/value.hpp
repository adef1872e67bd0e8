#ifndef PFP_VALUE_HPP
#define PFP_VALUE_HPP

// pfp::Value: the JSON-like dynamic value that carries results (and, by default, context and
// arguments). User types convert through ADL to_value/from_value, as in nlohmann/json.

#include <pfp/detail/json_write.hpp>
#include <pfp/error.hpp>

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

#include <pfp/detail/json_parse.hpp>  // Value::parse, which needs Value complete

#endif  // PFP_VALUE_HPP
