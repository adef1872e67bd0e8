#ifndef PFP_DETAIL_CALLABLE_HPP
#define PFP_DETAIL_CALLABLE_HPP

// What the Executor reads from a declared function's type: its parameter and return types, and how
// to call it with the elements of a Value array.

#include <pfp/error.hpp>
#include <pfp/value.hpp>

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
