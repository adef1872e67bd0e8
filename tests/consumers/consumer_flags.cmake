# Shared by the consumer projects in tests/consumers/.

# A user's strict warning flags (pfp's headers are NOT a system include directory for add_subdirectory
# and FetchContent consumers, so its headers are compiled with these flags too). -Werror when the outer
# build has PFP_WARNINGS_AS_ERRORS (run_consumer.cmake passes it as CONSUMER_WERROR).
# No CMAKE_CXX_STANDARD here on purpose: C++17 must come from pfp::pfp's compile features.
function(pfp_consumer_flags target)
  set_target_properties(${target} PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/bin")
  if(CMAKE_CXX_COMPILER_ID MATCHES "^(GNU|Clang|AppleClang)$")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(CONSUMER_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()

# pfp used as a subproject must stay out of the way: no tests, examples or install rules, and no
# targets besides pfp itself.
function(pfp_consumer_expect_quiet_subproject pfp_dir)
  if(NOT TARGET pfp::pfp)
    message(FATAL_ERROR "pfp::pfp is not defined")
  endif()
  foreach(opt IN ITEMS PFP_BUILD_TESTS PFP_BUILD_EXAMPLES PFP_INSTALL)
    if(${opt})
      message(FATAL_ERROR "${opt} is ON in a subproject build; it must default to OFF")
    endif()
  endforeach()
  foreach(t IN ITEMS test_value pfp_catch2 pfp_catch_main contract_compiles example_quickstart)
    if(TARGET ${t})
      message(FATAL_ERROR "pfp's own target '${t}' exists in a subproject build")
    endif()
  endforeach()
  get_property(targets DIRECTORY "${pfp_dir}" PROPERTY BUILDSYSTEM_TARGETS)
  get_property(subdirs DIRECTORY "${pfp_dir}" PROPERTY SUBDIRECTORIES)
  # pfp_mpi (pfp::mpi) exists too where MPI is found: the opt-in MPI backend's INTERFACE target.
  if(NOT (targets STREQUAL "pfp" OR targets STREQUAL "pfp;pfp_mpi") OR subdirs)
    message(FATAL_ERROR "pfp as a subproject defines targets '${targets}' and subdirectories '${subdirs}'; "
                        "expected only the targets 'pfp' (and 'pfp_mpi' where MPI is found)")
  endif()
  message(STATUS "pfp subproject is quiet: targets '${targets}', no subdirectories")
endfunction()
