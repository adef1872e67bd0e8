#!/usr/bin/env bash
# Builds the decoder fuzz target with clang's libFuzzer (+ASan+UBSan) and runs it.
#   bash fuzz/run.sh [seconds]        (default 60)
# Exits non-zero on any finding; the crashing input is left in the work directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
work="${PFP_FUZZ_DIR:-$root/build-fuzz}"
mkdir -p "$work/corpus"
cp -n "$root"/fuzz/corpus/* "$work/corpus/" 2>/dev/null || true
clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I "$root/include" "$root/fuzz/fuzz_decode.cpp" -o "$work/fuzz_decode"
cd "$work"
# -rss_limit_mb: a decoder that trusted a length field would blow through it.
./fuzz_decode -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 corpus 2>&1 | tee fuzz.log | tail -n 12
grep -E '^stat::number_of_executed_units' fuzz.log
