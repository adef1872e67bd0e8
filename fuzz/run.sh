#!/usr/bin/env bash
# Builds the fuzz targets with clang's libFuzzer (+ASan+UBSan) and runs each for the given time:
#   decode   fuzz_decode.cpp: the frame and Value decoders (seeds: fuzz/corpus)
#   json     fuzz_json.cpp:   Value::parse and its round trip through to_json (seeds: fuzz/corpus_json)
#   bash fuzz/run.sh [seconds] [decode|json ...]     (default 60 s each, every target)
# Exits non-zero on any finding; the crashing input is left in the work directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
[ $# -eq 0 ] && targets=(decode json)
work="${PFP_FUZZ_DIR:-$root/build-fuzz}"

fuzz_one() {
  local name="$1" seeds="$2" dir="$3"
  shift 3
  mkdir -p "$work/$dir"
  cp -n "$root/fuzz/$seeds"/* "$work/$dir/" 2>/dev/null || true
  clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -I "$root/include" "$root/fuzz/fuzz_$name.cpp" -o "$work/fuzz_$name"
  echo "fuzz_$name: ${seconds} s"
  # -rss_limit_mb: a decoder that trusted a length field would blow through it.
  (cd "$work" && "./fuzz_$name" -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 "$@" "$dir" 2>&1 |
    tee "fuzz_$name.log" | tail -n 12)
  grep -E '^stat::number_of_executed_units' "$work/fuzz_$name.log"
}

mkdir -p "$work"
for t in "${targets[@]}"; do
  case "$t" in
    decode) fuzz_one decode corpus corpus ;;
    json) fuzz_one json corpus_json corpus_json -dict="$root/fuzz/json.dict" -max_len=4096 ;;
    *) echo "fuzz/run.sh: unknown target '$t' (decode or json)" >&2; exit 2 ;;
  esac
done
