# Settings shared by pfp's own test, helper and example targets (never applied to pfp::pfp itself,
# so they never leak into a consumer's build).
#
#   pfp_dev_target(<target>)   warnings (+ -Werror with PFP_WARNINGS_AS_ERRORS), PFP_SANITIZE, no
#                              compiler extensions.
include_guard(GLOBAL)

set(_pfp_is_gnu_like OFF)
if(CMAKE_CXX_COMPILER_ID MATCHES "^(GNU|Clang|AppleClang)$")
  set(_pfp_is_gnu_like ON)
endif()

set(PFP_DEV_WARNING_FLAGS "")
if(_pfp_is_gnu_like)
  set(PFP_DEV_WARNING_FLAGS -Wall -Wextra -Wpedantic)
  if(PFP_WARNINGS_AS_ERRORS)
    list(APPEND PFP_DEV_WARNING_FLAGS -Werror)
  endif()
  # GCC 12 at -O3 reports `"literal" + std::to_string(i)` in the tests' own code as an overlapping
  # memcpy of ~2^63 bytes (-Wrestrict inside libstdc++'s char_traits; GCC bugs 105329 and 105651,
  # fixed in GCC 13). pfp's headers do not trigger it; the tests use that idiom throughout.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12
     AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    list(APPEND PFP_DEV_WARNING_FLAGS -Wno-restrict)
  endif()
elseif(MSVC)
  set(PFP_DEV_WARNING_FLAGS /W4 /permissive-)
  if(PFP_WARNINGS_AS_ERRORS)
    list(APPEND PFP_DEV_WARNING_FLAGS /WX)
  endif()
endif()

set(PFP_DEV_SANITIZER_FLAGS "")
string(STRIP "${PFP_SANITIZE}" _pfp_sanitize)
if(NOT _pfp_sanitize STREQUAL "")
  if(NOT _pfp_is_gnu_like)
    message(FATAL_ERROR "PFP_SANITIZE is only supported with GCC or Clang (compiler: ${CMAKE_CXX_COMPILER_ID})")
  endif()
  if(_pfp_sanitize MATCHES "thread" AND _pfp_sanitize MATCHES "address|leak|memory")
    message(FATAL_ERROR "PFP_SANITIZE='${_pfp_sanitize}': ThreadSanitizer cannot be combined with "
                        "AddressSanitizer/LeakSanitizer/MemorySanitizer")
  endif()
  set(PFP_DEV_SANITIZER_FLAGS -fsanitize=${_pfp_sanitize} -fno-omit-frame-pointer -fno-sanitize-recover=all)

  # Fail at configure time, with a clear message, if the toolchain cannot build and link it.
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS "-fsanitize=${_pfp_sanitize}")
  set(CMAKE_REQUIRED_LINK_OPTIONS "-fsanitize=${_pfp_sanitize}")
  set(CMAKE_REQUIRED_QUIET ON)
  string(MAKE_C_IDENTIFIER "PFP_HAVE_SANITIZE_${_pfp_sanitize}" _pfp_sanitize_var)
  check_cxx_source_compiles("int main() { return 0; }" ${_pfp_sanitize_var})
  unset(CMAKE_REQUIRED_FLAGS)
  unset(CMAKE_REQUIRED_LINK_OPTIONS)
  unset(CMAKE_REQUIRED_QUIET)
  if(NOT ${_pfp_sanitize_var})
    message(FATAL_ERROR "PFP_SANITIZE='${_pfp_sanitize}': ${CMAKE_CXX_COMPILER} cannot compile and link "
                        "with -fsanitize=${_pfp_sanitize} (is the sanitizer runtime installed?)")
  endif()
endif()

function(pfp_dev_target target)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  if(PFP_DEV_WARNING_FLAGS)
    target_compile_options(${target} PRIVATE ${PFP_DEV_WARNING_FLAGS})
  endif()
  if(PFP_DEV_SANITIZER_FLAGS)
    target_compile_options(${target} PRIVATE ${PFP_DEV_SANITIZER_FLAGS})
    target_link_options(${target} PRIVATE ${PFP_DEV_SANITIZER_FLAGS})
  endif()
endfunction()
