#!/usr/bin/env bash
# pfp's benchmark suite (issue 6): builds bench/floors.c and bench/pfp_bench.cpp with -O2, runs the
# hand-written floors, pfp and the Python baselines (when python3 is present) N times, and prints
# a Markdown table of medians with a goal checklist. Also bench/makespan.cpp (issue 15: makespan of
# heterogeneous runs against the list-scheduling bound and OpenMP; built with -fopenmp, or
# without its OpenMP part where the compiler cannot, e.g. clang without libomp-14-dev), and
# bench/pools.cpp (issue 16: pfp's front ends against oneTBB and OpenMP, where found).
#
#   bench/run.sh [--quick] [--scaling] [--runs N] [--out DIR]
#
#   --quick   one run with small sizes (< ~60 s): checks that everything builds and runs and that
#             every pfp Result is ok and correct. Exits non-zero on any failure.
#   --scaling only bench/scaling.cpp (issue 16 goal 4: cost and memory per function from 10^2 to
#             10^7 functions, 1 to 128 workers, results of 8 B to 1 GiB; default 3 runs): its table
#             and plot (gnuplot) go into BENCHMARKS.md and bench/scaling.svg (with --quick: into DIR).
#             The ordinary quick run also runs it in quick mode, as a check.
#   --runs N  number of runs (default 5; quick: 1). Floors and pfp alternate in order from one run
#             to the next; ratios are taken within a run and their median reported.
#   --out DIR where the raw RESULT lines go (default: bench/build/results-<date>)
#
# Environment: CXX (default g++), CC (default: the C compiler beside CXX, else cc),
#              BENCH_CXXFLAGS / BENCH_CFLAGS (extra flags), PYTHON (default python3),
#              PFP_INCLUDE (default: bench/../include; e.g. a `git archive` export of another commit).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
quick=0
scaling=0
runs=""
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --scaling) scaling=1 ;;
    --runs) runs="${2:?--runs needs a number}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -z "$runs" ]] && runs=$([[ $quick == 1 ]] && echo 1 || { [[ $scaling == 1 ]] && echo 3; } || echo 5)
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --runs wants a positive number" >&2; exit 2; }
qflag=()
[[ $quick == 1 ]] && qflag=(--quick)

CXX="${CXX:-g++}"
if [[ -z "${CC:-}" ]]; then
  case "$CXX" in
    *clang++*) CC="${CXX/clang++/clang}" ;;
    *g++*) CC="${CXX/g++/gcc}" ;;
    *) CC=cc ;;
  esac
  command -v "$CC" >/dev/null 2>&1 || CC=cc
fi
PYTHON="${PYTHON:-python3}"
include="${PFP_INCLUDE:-$here/../include}"
have_python=0
command -v "$PYTHON" >/dev/null 2>&1 && have_python=1

[[ -z "$out" ]] && out="$here/build/results-$(date +%Y%m%d-%H%M%S)"  # bench/build is ignored by git (build*/)
mkdir -p "$out" || exit 1
build="$out"  # the binaries live beside their results, so concurrent runs do not clobber each other

echo "== build ($CC, $CXX, -O2)" >&2
# shellcheck disable=SC2086
"$CXX" -O2 -std=c++17 -Wall -Wextra -I"$include" ${BENCH_CXXFLAGS:-} -o "$build/scaling" "$here/scaling.cpp" ||
  { echo "run.sh: building scaling failed" >&2; exit 1; }
if [[ $scaling == 1 ]]; then
  {
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')), Linux $(uname -r)," \
         "$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB RAM"}')"
    echo "pfp: $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown); scaling, $([[ $quick == 1 ]] && echo quick || echo full)," \
         "$runs run(s); $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$out/machine.txt"
  rc=0
  for ((i = 1; i <= runs; i++)); do
    echo "== scaling run $i/$runs" >&2
    "$build/scaling" ${qflag[@]+"${qflag[@]}"} >"$out/run$i.scaling.txt" 2>"$out/run$i.scaling.err" || { rc=1; grep '^FAIL' "$out/run$i.scaling.txt" >&2; }
  done
  echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
  targets=(--md "$here/../BENCHMARKS.md" --plot "$here/scaling.svg")
  [[ $quick == 1 ]] && targets=(--md "$out/scaling.md" --plot "$out/scaling.svg")
  command -v "$PYTHON" >/dev/null 2>&1 && { "$PYTHON" "$here/aggregate.py" --scaling "${targets[@]}" "$out" || rc=1; }
  exit $rc
fi
# shellcheck disable=SC2086
"$CC" -O2 -std=c11 -Wall -Wextra ${BENCH_CFLAGS:-} -o "$build/floors" "$here/floors.c" || { echo "run.sh: building floors failed" >&2; exit 1; }
# shellcheck disable=SC2086
"$CXX" -O2 -std=c++17 -Wall -Wextra -I"$include" ${BENCH_CXXFLAGS:-} -o "$build/pfp_bench" "$here/pfp_bench.cpp" ||
  { echo "run.sh: building pfp_bench failed" >&2; exit 1; }
# makespan.cpp with OpenMP where the compiler has it (a probe first, so a compile error in the
# benchmark itself is reported as such), else without its OpenMP part.
openmp=(-fopenmp)
if ! printf '#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n' |
     "$CXX" -fopenmp -x c++ - -o "$build/openmp-probe" 2>"$build/openmp-probe.err"; then
  echo "run.sh: $CXX cannot build with -fopenmp ($(head -1 "$build/openmp-probe.err"); for clang: apt-get install" \
       "libomp-14-dev): bench/makespan.cpp runs without its OpenMP part" >&2
  openmp=()
fi
# shellcheck disable=SC2086
"$CXX" -O2 -std=c++17 -Wall -Wextra ${openmp[@]+"${openmp[@]}"} -I"$include" ${BENCH_CXXFLAGS:-} -o "$build/makespan" \
  "$here/makespan.cpp" || { echo "run.sh: building makespan failed" >&2; exit 1; }

# pools.cpp (issue 16 goal 2): pfp's front ends against oneTBB and OpenMP, each part built only where
# the compiler finds it (Debian: libtbb-dev; OpenMP as above).
tbb=()
if printf '#include <tbb/parallel_for.h>\nint main() { int x = 0; tbb::parallel_for(0, 1, [&](int) { x = 1; }); return 1 - x; }\n' |
     "$CXX" -std=c++17 -x c++ - -o "$build/tbb-probe" -ltbb 2>"$build/tbb-probe.err"; then
  tbb=(-DPFP_BENCH_TBB)
else
  echo "run.sh: $CXX cannot build with oneTBB ($(head -1 "$build/tbb-probe.err"); apt-get install libtbb-dev):" \
       "bench/pools.cpp runs without its TBB part" >&2
fi
# shellcheck disable=SC2086
"$CXX" -O2 -std=c++17 -Wall -Wextra ${openmp[@]+"${openmp[@]}"} ${tbb[@]+"${tbb[@]}"} -I"$include" ${BENCH_CXXFLAGS:-} \
  -o "$build/pools" "$here/pools.cpp" ${tbb[@]+-ltbb} || { echo "run.sh: building pools failed" >&2; exit 1; }

commit="$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=""
[[ -n "$(git -C "$here/.." status --porcelain -- include 2>/dev/null)" ]] && dirty=" (include/ has uncommitted changes)"
{
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')), Linux $(uname -r)," \
       "$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB RAM"}')"
  echo "Compilers: $("$CXX" --version | head -1); $("$CC" --version | head -1)"
  if [[ $have_python == 1 ]]; then echo "Python: $("$PYTHON" --version 2>&1)"; else echo "Python: not found (column empty)"; fi
  if ((${#openmp[@]})); then echo "OpenMP (makespan, pools): $CXX -fopenmp"; else echo "OpenMP (makespan, pools): not available, its columns empty"; fi
  if ((${#tbb[@]})); then echo "oneTBB (pools): $(dpkg-query -W -f '${Package} ${Version}' libtbb-dev 2>/dev/null || echo found)"; else echo "oneTBB (pools): not available, its columns empty"; fi
  [[ -n "${PFP_INCLUDE:-}" ]] && { commit="headers from $include"; dirty=""; }
  echo "pfp: $commit$dirty; mode: $([[ $quick == 1 ]] && echo quick || echo full), $runs run(s); $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"

limit=$([[ $quick == 1 ]] && echo 120 || echo 600)
failed=()
run_one() {  # name run-number command...
  local name="$1" i="$2"
  shift 2
  local file="$out/run$i.$name.txt"
  local t0=$SECONDS
  timeout --signal=KILL "$limit" "$@" >"$file" 2>"$out/run$i.$name.err"
  local rc=$?
  echo "   $name: $((SECONDS - t0)) s, exit $rc" >&2
  if [[ $rc != 0 ]]; then
    failed+=("run $i $name (exit $rc)")
    grep '^FAIL' "$file" >&2
    tail -5 "$out/run$i.$name.err" >&2
  fi
}

start=$SECONDS
for ((i = 1; i <= runs; i++)); do
  echo "== run $i/$runs" >&2
  if ((i % 2)); then
    run_one floors "$i" "$build/floors" ${qflag[@]+"${qflag[@]}"}
    run_one pfp "$i" "$build/pfp_bench" ${qflag[@]+"${qflag[@]}"}
  else
    run_one pfp "$i" "$build/pfp_bench" ${qflag[@]+"${qflag[@]}"}
    run_one floors "$i" "$build/floors" ${qflag[@]+"${qflag[@]}"}
  fi
  [[ $have_python == 1 ]] && run_one python "$i" "$PYTHON" "$here/python_baselines.py" ${qflag[@]+"${qflag[@]}"}
  run_one makespan "$i" "$build/makespan" ${qflag[@]+"${qflag[@]}"}
  run_one pools "$i" "$build/pools" ${qflag[@]+"${qflag[@]}"}
  [[ $quick == 1 ]] && run_one scaling "$i" "$build/scaling" --quick
done
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); the runs took $((SECONDS - start)) s" >>"$out/machine.txt"
echo >>"$out/machine.txt"
echo "== done in $((SECONDS - start)) s; raw results in $out" >&2
echo >&2

if [[ $have_python == 1 ]]; then
  "$PYTHON" "$here/aggregate.py" ${qflag[@]+"${qflag[@]}"} "$out"
else
  # Without python3: medians of each key, no table.
  cat "$out/machine.txt"
  cat "$out"/run*.txt | awk '$1 == "RESULT" { v[$2] = v[$2] " " $3; u[$2] = $4 }
    END { for (k in v) { n = split(substr(v[k], 2), a, " ");
            for (i = 2; i <= n; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > x + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
            m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2;
            printf "%-28s %12.6g %s\n", k, m, u[k] } }' | sort
fi

if ((${#failed[@]})); then
  echo >&2
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
exit 0
