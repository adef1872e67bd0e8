#ifndef PFP_DETAIL_MANAGER_SUPPORT_HPP
#define PFP_DETAIL_MANAGER_SUPPORT_HPP

// What pfp::Manager needs besides its run: what a handler provides (build_items with or without a
// context, handle_item, log_item, reset_stats), the items as a stream whatever their source, and
// Ctrl-C turned into a cancel for the duration of a run.

#include <pfp/batch.hpp>
#include <pfp/detail/posix.hpp>
#include <pfp/detail/run_guards.hpp>
#include <pfp/stats.hpp>
#include <pfp/value.hpp>

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
