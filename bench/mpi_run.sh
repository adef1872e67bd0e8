#!/usr/bin/env bash
# Backend::mpi against the raw MPI floor and mpi4py.futures, in one run (issue 13):
#   bench/mpi_run.sh [--quick]
# Builds bench/mpi_bench.cpp with mpicxx, then on 2 and 4 ranks, one after the other:
#   mpi_bench (raw MPI ping-pong and 256 MiB bulk transfer into a fresh buffer, pfp's per-task
#   cost with no chunksize and its 256 MiB result) and bench/mpi_futures.py under
#   /usr/bin/python3 -m mpi4py.futures (chunksize 1 and the best of three chunksizes, 256 MiB).
# Prints a Markdown table and the two goals. Environment: MPI_BTL (default self,vader: shared
# memory; self,tcp for TCP on loopback).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
quick=()
[[ "${1:-}" == --quick ]] && quick=(--quick)
out="$here/build/mpi-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out" || exit 1
command -v mpicxx >/dev/null || { echo "mpi_run.sh: no mpicxx (apt-get install libopenmpi-dev)"; exit 1; }
mpicxx -O2 -std=c++17 -Wall -Wextra -I"$here/../include" -o "$out/mpi_bench" "$here/mpi_bench.cpp" || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl="${MPI_BTL:-self,vader}" OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
have_mpi4py=0
/usr/bin/python3 -c 'import mpi4py.futures' 2>/dev/null && have_mpi4py=1
rc=0
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg); btl $OMPI_MCA_btl" | tee "$out/machine.txt"
for n in 2 4; do
  mpiexec -n "$n" "$out/mpi_bench" ${quick[@]+"${quick[@]}"} >"$out/pfp.n$n.txt" 2>"$out/pfp.n$n.err" || rc=1
  if [[ $have_mpi4py == 1 ]]; then
    # mpi4py.futures: rank 0 runs the script, the other n-1 ranks are its workers
    mpiexec -n "$n" /usr/bin/python3 -m mpi4py.futures "$here/mpi_futures.py" ${quick[@]+"${quick[@]}"} \
      >"$out/mpi4py.n$n.txt" 2>"$out/mpi4py.n$n.err" || rc=1
  fi
  grep -h '^FAIL' "$out/pfp.n$n.txt" && rc=1
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
/usr/bin/python3 - "$out" <<'PY'
import sys, glob, os
out = sys.argv[1]
def read(path):
    d = {}
    if os.path.exists(path):
        for line in open(path):
            if line.startswith("RESULT "):
                _, k, v = line.split()
                d[k] = float(v)
    return d
print("\n| ranks | raw round trip µs | pfp µs/task (no chunksize; N / 10 N tasks) | mpi4py µs/task chunksize 1 | mpi4py best chunked µs/task | raw 256 MiB s | pfp 256 MiB transfer s | pfp/raw speed | mpi4py 256 MiB s |")
print("|---|---|---|---|---|---|---|---|---|")
goals = []
for n in (2, 4):
    p, m = read(f"{out}/pfp.n{n}.txt"), read(f"{out}/mpi4py.n{n}.txt")
    g = lambda d, k, f="%.3f": (f % d[k]) if k in d else "-"
    print(f"| {n} | {g(p,'raw_pingpong_us')} | {g(p,'pfp_per_task_us')} / {g(p,'pfp_per_task_us_10x')} | {g(m,'mpi4py_per_task_us_chunk1')} | "
          f"{g(m,'mpi4py_per_task_us_best_chunk')} (chunksize {g(m,'mpi4py_best_chunksize','%.0f')}) | {g(p,'raw_bulk_s','%.4f')} | "
          f"{g(p,'pfp_big_transfer_s','%.4f')} | {g(p,'pfp_big_vs_raw')}x | {g(m,'mpi4py_big_transfer_s','%.4f')} |")
    if 'pfp_per_task_us' in p and 'mpi4py_per_task_us_best_chunk' in m:
        ok = p['pfp_per_task_us'] <= m['mpi4py_per_task_us_best_chunk']
        goals.append(f"- [{'x' if ok else ' '}] {n} ranks: pfp {p['pfp_per_task_us']:.3f} µs/task <= mpi4py best chunked {m['mpi4py_per_task_us_best_chunk']:.3f}")
    if 'pfp_big_vs_raw' in p:
        ok = p['pfp_big_vs_raw'] >= 0.8
        goals.append(f"- [{'x' if ok else ' '}] {n} ranks: 256 MiB result at {p['pfp_big_vs_raw']:.2f}x the raw MPI transfer (goal >= 0.8x)")
print("\nGoals:\n" + "\n".join(goals))
PY
echo "raw output: $out"
exit $rc
