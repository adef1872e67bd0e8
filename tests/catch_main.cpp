// main() for pfp's test executables under Catch2 v2: compiled once into the static library
// pfp_catch_main and linked into every tests/test_*.cpp executable (v3 uses Catch2::Catch2WithMain).
#if !defined(PFP_CATCH2_V3)
#define CATCH_CONFIG_MAIN
#include "pfp_catch.hpp"
#endif
