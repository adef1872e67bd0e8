# Builds and runs one consumer project of pfp, the way a user would.   (ctest: consumer.<KIND>)
#
#   cmake -DKIND=find_package|add_subdirectory|fetchcontent
#         -DPFP_SOURCE_DIR=<pfp source>  -DCONSUMER_SOURCE_DIR=<tests/consumers/KIND>
#         -DWORK_DIR=<scratch dir>       [-DPREFIX=<install prefix, find_package only>]
#         [-DCXX_COMPILER=<c++>] [-DCXX_COMPILER_LAUNCHER=<ccache>] [-DGENERATOR=<gen>]
#         [-DMAKE_PROGRAM=<make/ninja>]  [-DBUILD_TYPE=<cfg>] [-DWERROR=ON|OFF]
#         -P run_consumer.cmake
#
# find_package:      configure pfp alone (tests/examples off) -> build -> install into PREFIX ->
#                    configure the consumer with CMAKE_PREFIX_PATH=PREFIX -> build -> run
# add_subdirectory:  configure the consumer with -DPFP_SOURCE_DIR -> build -> run
# fetchcontent:      the same; the consumer uses FetchContent_Declare(pfp SOURCE_DIR ...)
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

if(KIND STREQUAL "find_package")
  if(NOT DEFINED PREFIX OR PREFIX STREQUAL "")
    set(PREFIX "${WORK_DIR}/prefix")
  endif()
  file(REMOVE_RECURSE "${PREFIX}")
  set(pfp_build "${WORK_DIR}/pfp-build")
  step("configure pfp" "${CMAKE_COMMAND}" -S "${PFP_SOURCE_DIR}" -B "${pfp_build}" ${common_args}
       -DPFP_BUILD_TESTS=OFF -DPFP_BUILD_EXAMPLES=OFF -DPFP_INSTALL=ON "-DCMAKE_INSTALL_PREFIX=${PREFIX}")
  step("build pfp" "${CMAKE_COMMAND}" --build "${pfp_build}" --config "${BUILD_TYPE}")
  if(CMAKE_VERSION VERSION_LESS 3.15)
    step("install pfp" "${CMAKE_COMMAND}" --build "${pfp_build}" --config "${BUILD_TYPE}" --target install)
  else()
    step("install pfp" "${CMAKE_COMMAND}" --install "${pfp_build}" --config "${BUILD_TYPE}")
  endif()

  # The install tree: the headers, the package files, the license, and nothing else.
  file(GLOB_RECURSE installed RELATIVE "${PREFIX}" "${PREFIX}/*")
  list(SORT installed)
  string(REPLACE ";" "\n  " installed_text "${installed}")
  message(STATUS "[consumer.${KIND}] installed:\n  ${installed_text}")
  foreach(f IN LISTS installed)
    if(NOT f MATCHES "^(include/pfp/.*\\.(hpp|h)|share/cmake/pfp/pfp(Config|ConfigVersion|Targets[-a-z]*)\\.cmake|share/doc/pfp/LICENSE)$")
      message(FATAL_ERROR "[consumer.${KIND}] unexpected file in the install tree: ${f}")
    endif()
  endforeach()
  foreach(f IN ITEMS include/pfp/pfp.hpp share/cmake/pfp/pfpConfig.cmake share/cmake/pfp/pfpConfigVersion.cmake
                     share/cmake/pfp/pfpTargets.cmake)
    if(NOT EXISTS "${PREFIX}/${f}")
      message(FATAL_ERROR "[consumer.${KIND}] missing from the install tree: ${f}")
    endif()
  endforeach()

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
