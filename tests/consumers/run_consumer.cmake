# Builds and runs one consumer project of pfp, the way a user would.   (ctest: consumer.<KIND>)
#
#   cmake -DKIND=find_package|add_subdirectory|fetchcontent|pkg_config
#         -DPFP_SOURCE_DIR=<pfp source>  -DCONSUMER_SOURCE_DIR=<tests/consumers/KIND>
#         -DWORK_DIR=<scratch dir>       [-DPREFIX=<install prefix, find_package only>]
#         [-DCXX_COMPILER=<c++>] [-DCXX_COMPILER_LAUNCHER=<ccache>] [-DGENERATOR=<gen>]
#         [-DMAKE_PROGRAM=<make/ninja>]  [-DBUILD_TYPE=<cfg>] [-DWERROR=ON|OFF]
#         [-DPFP_VERSION=<x.y.z, checked against pkg-config --modversion>]
#         -P run_consumer.cmake
#
# find_package:      configure pfp alone (tests/examples off) -> build -> install into PREFIX ->
#                    configure the consumer with CMAKE_PREFIX_PATH=PREFIX -> build -> run
# add_subdirectory:  configure the consumer with -DPFP_SOURCE_DIR -> build -> run
# fetchcontent:      the same; the consumer uses FetchContent_Declare(pfp SOURCE_DIR ...)
# pkg_config:        configure pfp alone with CMAKE_INSTALL_PREFIX=<elsewhere> -> install with --prefix
#                    WORK_DIR/prefix (pfp.pc must follow) -> `pkg-config --cflags pfp` with PKG_CONFIG_PATH
#                    -> compile consumer_main.cpp by hand (no CMake) as C++17 and C++20 -> run.
#                    Prints "pfp consumer SKIPPED" (ctest: skipped) when pkg-config is not installed.
cmake_minimum_required(VERSION 3.14)

foreach(var IN ITEMS KIND PFP_SOURCE_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT DEFINED BUILD_TYPE OR BUILD_TYPE STREQUAL "")
  set(BUILD_TYPE Debug)
endif()

# Options every configure step gets: same compiler, generator and build type as the outer build.
set(common_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
if(DEFINED GENERATOR AND NOT GENERATOR STREQUAL "")
  list(APPEND common_args -G "${GENERATOR}")
endif()
if(DEFINED MAKE_PROGRAM AND NOT MAKE_PROGRAM STREQUAL "")
  list(APPEND common_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(DEFINED CXX_COMPILER AND NOT CXX_COMPILER STREQUAL "")
  list(APPEND common_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(DEFINED CXX_COMPILER_LAUNCHER AND NOT CXX_COMPILER_LAUNCHER STREQUAL "")
  list(APPEND common_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${CXX_COMPILER_LAUNCHER}")
endif()

function(step title)
  string(REPLACE ";" " " shown "${ARGN}")
  message(STATUS "[consumer.${KIND}] ${title}: ${shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc STREQUAL "0")
    message(FATAL_ERROR "[consumer.${KIND}] ${title} FAILED (${rc}):\n${shown}\n"
                        "--- stdout ---\n${out}\n--- stderr ---\n${err}")
  endif()
  set(step_output "${out}${err}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(consumer_args "-DCONSUMER_WERROR=${WERROR}")

# Installs pfp into PREFIX (configured with the extra options in ARGN) and checks the install tree:
# the headers, the CMake package files, pfp.pc, the license, and nothing else.
function(install_pfp)
  file(REMOVE_RECURSE "${PREFIX}")
  set(pfp_build "${WORK_DIR}/pfp-build")
  step("configure pfp" "${CMAKE_COMMAND}" -S "${PFP_SOURCE_DIR}" -B "${pfp_build}" ${common_args}
       -DPFP_BUILD_TESTS=OFF -DPFP_BUILD_EXAMPLES=OFF -DPFP_INSTALL=ON ${ARGN})
  step("build pfp" "${CMAKE_COMMAND}" --build "${pfp_build}" --config "${BUILD_TYPE}")
  if(CMAKE_VERSION VERSION_LESS 3.15)
    step("install pfp" "${CMAKE_COMMAND}" --build "${pfp_build}" --config "${BUILD_TYPE}" --target install)
  else()
    step("install pfp" "${CMAKE_COMMAND}" --install "${pfp_build}" --config "${BUILD_TYPE}" --prefix "${PREFIX}")
  endif()

  file(GLOB_RECURSE installed RELATIVE "${PREFIX}" "${PREFIX}/*")
  list(SORT installed)
  string(REPLACE ";" "\n  " installed_text "${installed}")
  message(STATUS "[consumer.${KIND}] installed:\n  ${installed_text}")
  foreach(f IN LISTS installed)
    if(NOT f MATCHES "^(include/pfp/.*\\.(hpp|h)|share/cmake/pfp/pfp(Config|ConfigVersion|Targets[-a-z]*|MpiTargets[-a-z]*)\\.cmake|share/pkgconfig/pfp\\.pc|share/doc/pfp/LICENSE)$")
      message(FATAL_ERROR "[consumer.${KIND}] unexpected file in the install tree: ${f}")
    endif()
  endforeach()
  foreach(f IN ITEMS include/pfp/pfp.hpp share/cmake/pfp/pfpConfig.cmake share/cmake/pfp/pfpConfigVersion.cmake
                     share/cmake/pfp/pfpTargets.cmake share/pkgconfig/pfp.pc)
    if(NOT EXISTS "${PREFIX}/${f}")
      message(FATAL_ERROR "[consumer.${KIND}] missing from the install tree: ${f}")
    endif()
  endforeach()
endfunction()

if(KIND STREQUAL "pkg_config")
  find_program(PKG_CONFIG_EXECUTABLE NAMES pkg-config pkgconf)
  if(NOT PKG_CONFIG_EXECUTABLE)
    message("pfp consumer SKIPPED: pkg-config is not installed (Debian/Ubuntu: apt-get install pkg-config)")
    return()
  endif()
  if(NOT DEFINED CXX_COMPILER OR CXX_COMPILER STREQUAL "")
    set(CXX_COMPILER c++)
  endif()
  # Its own prefix (the find_package test may run at the same time), installed with --prefix over a
  # different CMAKE_INSTALL_PREFIX: pfp.pc must be relocatable. CMake < 3.15 has no --prefix.
  set(PREFIX "${WORK_DIR}/prefix")
  set(configured_prefix "${WORK_DIR}/not-the-prefix")
  if(CMAKE_VERSION VERSION_LESS 3.15)
    set(configured_prefix "${PREFIX}")
  endif()
  install_pfp("-DCMAKE_INSTALL_PREFIX=${configured_prefix}")
  if(EXISTS "${configured_prefix}" AND NOT configured_prefix STREQUAL PREFIX)
    message(FATAL_ERROR "[consumer.${KIND}] something was installed into CMAKE_INSTALL_PREFIX despite --prefix")
  endif()
  file(READ "${PREFIX}/share/pkgconfig/pfp.pc" pc_text)
  message("--- pfp.pc ---\n${pc_text}")

  # Only this prefix: PKG_CONFIG_LIBDIR replaces the system directories, so a pfp.pc installed on
  # the machine cannot be picked up instead.
  set(ENV{PKG_CONFIG_LIBDIR} "${PREFIX}/share/pkgconfig")
  set(ENV{PKG_CONFIG_PATH} "")
  unset(ENV{PKG_CONFIG_SYSROOT_DIR})
  step("pkg-config --modversion" "${PKG_CONFIG_EXECUTABLE}" --modversion pfp)
  string(STRIP "${step_output}" version)
  if(DEFINED PFP_VERSION AND NOT PFP_VERSION STREQUAL "" AND NOT version STREQUAL PFP_VERSION)
    message(FATAL_ERROR "[consumer.${KIND}] pkg-config --modversion pfp: '${version}', expected '${PFP_VERSION}'")
  endif()
  step("pkg-config --variable=includedir" "${PKG_CONFIG_EXECUTABLE}" --variable=includedir pfp)
  string(STRIP "${step_output}" includedir)
  get_filename_component(includedir_real "${includedir}" REALPATH)
  get_filename_component(expected_real "${PREFIX}/include" REALPATH)
  if(NOT includedir_real STREQUAL expected_real)
    message(FATAL_ERROR "[consumer.${KIND}] pfp.pc's includedir is '${includedir}', expected ${PREFIX}/include")
  endif()
  step("pkg-config --cflags --libs" "${PKG_CONFIG_EXECUTABLE}" --cflags --libs pfp)
  message(STATUS "[consumer.${KIND}] pkg-config --cflags --libs pfp: ${step_output}")

  # The way a user would write it, in a shell: $(pkg-config --cflags pfp) word-split by sh.
  set(warning_flags "-Wall -Wextra -Wpedantic")
  if(WERROR)
    string(APPEND warning_flags " -Werror")
  endif()
  foreach(std IN ITEMS 17 20)
    set(app "${WORK_DIR}/app-cxx${std}")
    set(cmd "\"$1\" -std=c++${std} ${warning_flags} -DPFP_CONSUMER_KIND='\"pkg-config\"' \"$2\" $(\"$3\" --cflags pfp) -o \"$4\" $(\"$3\" --libs pfp)")
    if(std STREQUAL "20")
      # C++20 only where the compiler has it.
      execute_process(COMMAND sh -c "\"$1\" -std=c++20 -x c++ -fsyntax-only - </dev/null" sh "${CXX_COMPILER}"
                      RESULT_VARIABLE has20 OUTPUT_QUIET ERROR_QUIET)
      if(NOT has20 STREQUAL "0")
        message(STATUS "[consumer.${KIND}] ${CXX_COMPILER} has no -std=c++20; C++20 build skipped")
        continue()
      endif()
    endif()
    step("compile (C++${std}, sh -c)" sh -c "${cmd}" sh "${CXX_COMPILER}"
         "${CMAKE_CURRENT_LIST_DIR}/consumer_main.cpp" "${PKG_CONFIG_EXECUTABLE}" "${app}")
    step("run consumer (C++${std})" "${app}")
    message("${step_output}")
    if(NOT step_output MATCHES "pfp consumer OK")
      message(FATAL_ERROR "[consumer.${KIND}] the consumer did not print 'pfp consumer OK'")
    endif()
  endforeach()
  message(STATUS "[consumer.${KIND}] PASSED")
  return()
endif()

if(KIND STREQUAL "find_package")
  if(NOT DEFINED PREFIX OR PREFIX STREQUAL "")
    set(PREFIX "${WORK_DIR}/prefix")
  endif()
  install_pfp("-DCMAKE_INSTALL_PREFIX=${PREFIX}")

  list(APPEND consumer_args "-DCMAKE_PREFIX_PATH=${PREFIX}" "-DPFP_EXPECTED_PREFIX=${PREFIX}"
       -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
elseif(KIND STREQUAL "add_subdirectory" OR KIND STREQUAL "fetchcontent")
  list(APPEND consumer_args "-DPFP_SOURCE_DIR=${PFP_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown KIND '${KIND}'")
endif()

set(consumer_build "${WORK_DIR}/consumer-build")
step("configure consumer" "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${consumer_build}"
     ${common_args} ${consumer_args})
message("${step_output}")
step("build consumer" "${CMAKE_COMMAND}" --build "${consumer_build}" --config "${BUILD_TYPE}")

set(app "${consumer_build}/bin/app")
if(NOT EXISTS "${app}")
  set(app "${consumer_build}/bin/${BUILD_TYPE}/app")  # multi-config generators
endif()
step("run consumer" "${app}")
message("${step_output}")
if(NOT step_output MATCHES "pfp consumer OK")
  message(FATAL_ERROR "[consumer.${KIND}] the consumer did not print 'pfp consumer OK'")
endif()
message(STATUS "[consumer.${KIND}] PASSED")
