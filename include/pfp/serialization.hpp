#ifndef PFP_SERIALIZATION_HPP
#define PFP_SERIALIZATION_HPP

// Compact binary encoding of pfp::Value, used to carry results from workers to the parent.
// Strings and byte blobs are copied in one piece; arrays whose elements are all integers or
// all doubles are written as packed 8-byte arrays. Byte order is the host's: the encoding is
// meant for processes on one machine, not for storage.

#include <pfp/error.hpp>
#include <pfp/value.hpp>

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
