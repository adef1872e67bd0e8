// Catch2 shim for pfp's tests: the same test sources build against Catch2 v2 (single header
// <catch2/catch.hpp>, e.g. Debian 12's 2.13.10) and Catch2 v3 (split headers, Catch2::Catch2WithMain).
// tests/CMakeLists.txt picks the version and defines PFP_CATCH2_V3 for v3.
//
// Every test file starts with   #include "pfp_catch.hpp"   and uses only what both versions share:
//   TEST_CASE SECTION REQUIRE CHECK REQUIRE_FALSE CHECK_FALSE REQUIRE_THROWS_AS REQUIRE_THROWS_WITH
//   REQUIRE_NOTHROW CHECK_THAT REQUIRE_THAT INFO CAPTURE WARN FAIL SUCCEED
//   Catch::Matchers::{Contains, ContainsSubstring, StartsWith, EndsWith, Equals} on std::string
//   Catch::Approx (and plain Approx)
//   PFP_SKIP(message)   skip the rest of a test case (v3: SKIP; v2: a warning, and the test passes)
//
// Do not include other Catch2 headers in test files: in v3, <catch2/matchers/catch_matchers_contains.hpp>
// (or catch_all.hpp) declares a range Contains() that would outbid the string Contains() below.
#ifndef PFP_TESTS_PFP_CATCH_HPP
#define PFP_TESTS_PFP_CATCH_HPP

#include <string>

#if defined(PFP_CATCH2_V3)

#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/catch_version_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

namespace Catch {
namespace Matchers {
// v3 renamed the string matcher Contains -> ContainsSubstring; keep the v2 spelling working.
inline StringContainsMatcher Contains(std::string const& str, CaseSensitive cs = CaseSensitive::Yes) {
  return ContainsSubstring(str, cs);
}
inline StringContainsMatcher Contains(const char* str, CaseSensitive cs = CaseSensitive::Yes) {
  return ContainsSubstring(std::string(str), cs);
}
}  // namespace Matchers
}  // namespace Catch

using Catch::Approx;  // v2 exposes Approx at global scope

#if CATCH_VERSION_MAJOR > 3 || (CATCH_VERSION_MAJOR == 3 && CATCH_VERSION_MINOR >= 3)
#define PFP_SKIP(...) SKIP(__VA_ARGS__)
#else
#define PFP_SKIP(...)                    \
  do {                                   \
    WARN("SKIPPED: " << __VA_ARGS__);    \
    return;                              \
  } while (false)
#endif

#else  // Catch2 v2

#include <catch2/catch.hpp>

namespace Catch {
using Detail::Approx;  // v3 spelling: Catch::Approx
namespace Matchers {
// v3 spelling of the v2 string matcher Contains.
inline StdString::ContainsMatcher ContainsSubstring(std::string const& str,
                                                    CaseSensitive::Choice cs = CaseSensitive::Yes) {
  return Contains(str, cs);
}
}  // namespace Matchers
}  // namespace Catch

#define PFP_SKIP(...)                    \
  do {                                   \
    WARN("SKIPPED: " << __VA_ARGS__);    \
    return;                              \
  } while (false)

#endif  // PFP_CATCH2_V3

#endif  // PFP_TESTS_PFP_CATCH_HPP
