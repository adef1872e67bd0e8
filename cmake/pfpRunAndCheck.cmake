# Runs a program and checks its output; used by ctest for pfp's examples.
#
#   cmake -DPROGRAM=<exe> [-DEXPECT_FILE=<file>] [-DWORKING_DIRECTORY=<dir>] [-DTIMEOUT=<seconds>]
#         -P pfpRunAndCheck.cmake
#
# EXPECT_FILE is a CMake script that may set
#   PFP_EXPECT_REGEXES   every one of these must match at least one single line of the output
#   PFP_REJECT_REGEXES   none of these may match any line of the output
#
# Why not plain PASS_REGULAR_EXPRESSION: ctest passes a test when ANY ONE of its pass regexes matches,
# and then ignores the exit code, so a program printing one expected line and then crashing would pass.
# Here the exit code must be 0 and ALL expected patterns must appear, each within one line.
cmake_minimum_required(VERSION 3.14)

if(NOT DEFINED PROGRAM OR NOT EXISTS "${PROGRAM}")
  message(FATAL_ERROR "pfpRunAndCheck: PROGRAM='${PROGRAM}' does not exist")
endif()
set(PFP_EXPECT_REGEXES "")
set(PFP_REJECT_REGEXES "")
if(DEFINED EXPECT_FILE AND NOT EXPECT_FILE STREQUAL "")
  include("${EXPECT_FILE}")
endif()
if(NOT DEFINED WORKING_DIRECTORY OR WORKING_DIRECTORY STREQUAL "")
  get_filename_component(WORKING_DIRECTORY "${PROGRAM}" DIRECTORY)
endif()

set(timeout_args "")
if(DEFINED TIMEOUT AND NOT TIMEOUT STREQUAL "")
  set(timeout_args TIMEOUT ${TIMEOUT})
endif()
execute_process(
  COMMAND "${PROGRAM}"
  WORKING_DIRECTORY "${WORKING_DIRECTORY}"
  ${timeout_args}
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)

# Echo what the program printed, so that ctest --output-on-failure (and ctest's own
# FAIL_REGULAR_EXPRESSION) see it.
# Only the file name is printed on success: a FAIL_REGULAR_EXPRESSION must not match the build path.
get_filename_component(name "${PROGRAM}" NAME)
message("---- ${name}: standard output ----\n${out}")
if(NOT err STREQUAL "")
  message("---- ${name}: standard diagnostics ----\n${err}")
endif()

set(problems "")
if(NOT rc STREQUAL "0")
  string(APPEND problems "  exit status: ${rc} (expected 0)\n")
endif()

# Split into lines without CMake list semantics (output may contain ';' '[' ']').
set(text "${out}\n${err}")
set(lines_checked 0)
set(found_flags "")
foreach(re IN LISTS PFP_EXPECT_REGEXES)
  list(APPEND found_flags 0)
endforeach()
while(NOT text STREQUAL "")
  string(FIND "${text}" "\n" nl)
  if(nl EQUAL -1)
    set(line "${text}")
    set(text "")
  else()
    string(SUBSTRING "${text}" 0 ${nl} line)
    math(EXPR next "${nl} + 1")
    string(SUBSTRING "${text}" ${next} -1 text)
  endif()
  math(EXPR lines_checked "${lines_checked} + 1")
  set(i 0)
  foreach(re IN LISTS PFP_EXPECT_REGEXES)
    if(line MATCHES "${re}")
      list(REMOVE_AT found_flags ${i})
      list(INSERT found_flags ${i} 1)
    endif()
    math(EXPR i "${i} + 1")
  endforeach()
  foreach(re IN LISTS PFP_REJECT_REGEXES)
    if(line MATCHES "${re}")
      string(APPEND problems "  line matches rejected pattern '${re}': ${line}\n")
    endif()
  endforeach()
endwhile()

set(i 0)
foreach(re IN LISTS PFP_EXPECT_REGEXES)
  list(GET found_flags ${i} f)
  if(NOT f)
    string(APPEND problems "  no output line matches expected pattern '${re}'\n")
  endif()
  math(EXPR i "${i} + 1")
endforeach()

if(NOT problems STREQUAL "")
  message(FATAL_ERROR "${PROGRAM} FAILED its output check:\n${problems}")
endif()
list(LENGTH PFP_EXPECT_REGEXES n_expect)
message("pfpRunAndCheck: PASSED (exit 0, ${n_expect} expected pattern(s) found)")
