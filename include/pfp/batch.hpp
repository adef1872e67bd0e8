#ifndef PFP_BATCH_HPP
#define PFP_BATCH_HPP

// Lazy, single-pass item sources for the Manager (and anything else): batches(range, size),
// enumerate(range), iota(first, last) and generate(callable). Each one produces its elements one at
// a time as it is iterated, so a source of millions of items never sits in memory at once; each
// works over input iterators (it calls begin() of the range it wraps once, when it is first read).

#include <pfp/value.hpp>  // detail::is_optional

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
