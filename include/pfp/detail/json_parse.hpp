#ifndef PFP_DETAIL_JSON_PARSE_HPP
#define PFP_DETAIL_JSON_PARSE_HPP

// Value::parse: a strict RFC 8259 parser, recursive descent over the text in one pass. The
// error paths (line and column, what was found) are worked out only once something is wrong.

#include <pfp/error.hpp>
#include <pfp/value.hpp>

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
