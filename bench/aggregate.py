#!/usr/bin/env python3
"""Turns the RESULT lines of bench/run.sh's runs into the Markdown table and goal checklist.

Usage: aggregate.py [--quick] <results dir>
       aggregate.py --scaling [--md FILE] [--plot FILE.svg] <results dir>   (bench/scaling.cpp's runs:
       a Markdown section, printed and put into FILE between its scaling markers, and a gnuplot plot)
The directory holds run<N>.floors.txt, run<N>.pfp.txt, run<N>.python.txt, run<N>.makespan.txt,
run<N>.pools.txt (any
may be missing) and machine.txt. Values are medians over runs; ratios are computed within each run (the floor, pfp and
Python figures of one run were measured back to back) and their median is reported.
"""
import glob
import os
import re
import statistics
import sys

# (label, floor key, pfp key, python key, unit, better). {placeholders} are filled from the runs' sizes.
ROWS = [
    ("**1. {trivial_n} trivial functions, 2 workers** — pfp: register + execute_parallel, every Result built; "
     "floor: pre-forked pool, indices in batches of 256; Python: `Pool(2).map` of {py_trivial_n}, default chunking",
     "pool_batch256_us", "pfp_trivial_total_us", "py_pool_default_us", "µs/function", "lower"),
    ("1. … pfp execute_parallel() only", "pool_batch256_us", "pfp_trivial_run_us", "py_pool_default_us",
     "µs/function", "lower"),
    ("1. … pfp registration only", None, "pfp_trivial_reg_us", None, "µs/function", "lower"),
    ("1. floor: pool, 1 task in flight per worker, strict request/reply (vs pfp total)", "pool_rr1_us",
     "pfp_trivial_total_us", None, "µs/task", "lower"),
    ("1. floor: pool, 16 tasks in flight per worker (vs pfp total)", "pool_rr16_us", "pfp_trivial_total_us", None,
     "µs/task", "lower"),
    ("1. Python: `ProcessPoolExecutor(2).map` of {py_ppe_c1_n}, chunksize 1 (vs pfp total)", None,
     "pfp_trivial_total_us", "py_ppe_c1_us", "µs/function", "lower"),
    ("1. Python: `ProcessPoolExecutor(2).map` of {py_trivial_n}, chunksize 1000 (vs pfp total)", None,
     "pfp_trivial_total_us", "py_ppe_c1000_us", "µs/function", "lower"),
    ("1. Python: `Pool(2).map` of {py_pool_c1_n}, chunksize 1 (vs pfp total)", None, "pfp_trivial_total_us",
     "py_pool_c1_us", "µs/function", "lower"),
    ("1. Python: `Pool(2).map`, default chunking, pool start-up included (vs pfp total)", None,
     "pfp_trivial_total_us", "py_pool_default_startup_us", "µs/function", "lower"),
    ("**2. a fresh process per function** — pfp: `max_tasks_per_worker = 1`, {fork_n} functions, 2 workers; "
     "floor: fork + 100-byte pipe reply + `_exit` + waitpid, one at a time; Python: pypfp-style, a Process per "
     "function + a Queue, {py_pypfp_n} functions", "fork_us", "pfp_fork_us", "py_pypfp_us", "µs/function", "lower"),
    ("2. floor: the same with 2 children alive at a time", "fork2_us", "pfp_fork_us", None, "µs/function", "lower"),
    ("2. floor: one at a time, the parent holding {floor_bytes} of touched heap (for reference)", "fork_bigheap_us",
     None, None, "µs/function", "lower"),
    ("**3. one big result** — pfp: {pfp_bytes} `Value::bytes`, wall time − Result::duration; floor: {floor_bytes} "
     "through a pipe with a 1 MiB buffer; Python: {py_bytes} bytes through `ProcessPoolExecutor`",
     "pipe_gbps", "pfp_bytes_gbps", "py_bytes_gbps", "GB/s", "higher"),
    ("3. floor: pipe with the default 64 KiB buffer", "pipe64k_gbps", "pfp_bytes_gbps", None, "GB/s", "higher"),
    ("3. floor: shared-memory handoff (child fills a pre-faulted MAP_SHARED {floor_bytes}, parent sums it)",
     "shm_gbps", "pfp_bytes_gbps", None, "GB/s", "higher"),
    ("3. floor: memcpy of {floor_bytes} in one process", "memcpy_gbps", "pfp_bytes_gbps", None, "GB/s", "higher"),
    ("**4. CPU-bound**: 8 equal tasks (~{cpu_ms} ms of integer hashing each) on 2 processes, speedup over "
     "sequential", "cpu_speedup", "pfp_cpu_speedup", None, "×", "higher"),
    ("**5. parent memory per registered function** (RSS growth / {mem_n} registrations)", None,
     "pfp_mem_reg_bytes_per_fn", None, "bytes", "lower"),
    ("5. … after running them all (Results included)", None, "pfp_mem_run_bytes_per_fn", None, "bytes", "lower"),
    ("5. RSS after the 1st run of one processor ({repeat_n} functions)", None, "pfp_rss_run1_kib", None, "KiB",
     "lower"),
    ("5. RSS after the 20th run of the same processor", None, "pfp_rss_run20_kib", None, "KiB", "lower"),
    ("**6. execute_parallel() → first function running**, 2 workers, median of 20 (floor: fork() → child "
     "running)", "fork_latency_us", "pfp_latency_us", None, "µs", "lower"),
]

# placeholder -> (key, kind)
SIZES = {
    "trivial_n": ("pfp_trivial_n", "count"), "fork_n": ("pfp_fork_n", "count"),
    "mem_n": ("pfp_mem_functions", "count"), "repeat_n": ("pfp_repeat_n", "count"),
    "pfp_bytes": ("pfp_bytes_size", "bytes"), "floor_bytes": ("size_bytes", "bytes"),
    "py_bytes": ("py_bytes_size", "bytes"), "cpu_ms": ("cpu_task_ms", "ms"),
    "py_trivial_n": ("py_trivial_n", "count"), "py_ppe_c1_n": ("py_ppe_c1_n", "count"),
    "py_pool_c1_n": ("py_pool_c1_n", "count"), "py_pypfp_n": ("py_pypfp_n", "count"),
}


def size_text(value, kind):
    if value is None:
        return "?"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{value:.0f}"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= (1 << shift):
            return f"{value / (1 << shift):g} {unit}"
    return f"{value:.0f} bytes"


def load(directory):
    runs = {}
    for path in glob.glob(os.path.join(directory, "run*.*.txt")):
        m = re.match(r"run(\d+)\.(\w+)\.txt$", os.path.basename(path))
        if not m:
            continue
        run = runs.setdefault(int(m.group(1)), {})
        with open(path, errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "RESULT":
                    try:
                        run[parts[1]] = float(parts[2])
                    except ValueError:
                        pass
    return [runs[k] for k in sorted(runs)]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def values(runs, key):
    return [r[key] for r in runs if key and key in r]


def ratios(runs, num, den):
    out = []
    for r in runs:
        if num in r and den in r and r[den] > 0:
            out.append(r[num] / r[den])
    return out


def fmt(x):
    if x is None:
        return "—"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.1:
        return f"{x:.3f}"
    return f"{x:.3g}"


def fmt_ratio(x):
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}×"
    if x >= 10:
        return f"{x:.1f}×"
    return f"{x:.2f}×"


def main():
    args = sys.argv[1:]
    if "--scaling" in args:
        return scaling_main([a for a in args if a != "--scaling"])
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    directory = args[0]
    runs = load(directory)
    machine = os.path.join(directory, "machine.txt")
    if os.path.exists(machine):
        with open(machine) as f:
            sys.stdout.write(f.read())
    machine_facts(runs)
    print(f"Runs: {len(runs)}. Values are medians over the runs; each ratio is the median of the ratios "
          "measured within one run (floor, pfp and Python back to back). Ratios divide the values as "
          "printed: for µs and bytes lower is better, for GB/s and × higher is better.\n")
    print("| workload | unit | floor | pfp | Python | pfp/floor | Python/pfp |")
    print("|---|---|---:|---:|---:|---:|---:|")
    sizes = {name: size_text(med(values(runs, key)), kind) for name, (key, kind) in SIZES.items()}
    for label, fk, pk, yk, unit, better in ROWS:
        label = label.format(**sizes)
        unit_txt = f"{unit} ({'↓' if better == 'lower' else '↑'})"
        f = med(values(runs, fk)) if fk else None
        p = med(values(runs, pk)) if pk else None
        y = med(values(runs, yk)) if yk else None
        pf = med(ratios(runs, pk, fk)) if fk and pk else None
        yp = med(ratios(runs, yk, pk)) if yk and pk else None
        print(f"| {label} | {unit_txt} | {fmt(f)} | {fmt(p)} | {fmt(y)} | {fmt_ratio(pf)} | {fmt_ratio(yp)} |")

    def r(num, den):
        return med(ratios(runs, num, den))

    def spread(num, den):
        rs = ratios(runs, num, den)
        return f" [runs: {fmt_ratio(min(rs))}–{fmt_ratio(max(rs))}]" if len(rs) > 1 else ""

    def v(key):
        return med(values(runs, key))

    print("\n### Goals (issue 6)\n")
    if quick:
        print("_Quick mode: one run with reduced sizes, to check that everything runs; the verdicts below "
              "are not meaningful._\n")
    lines = []

    def goal(n, text, met, detail):
        if isinstance(met, str):
            state = f"**{met}**"
        else:
            state = "n/a (not measured)" if met is None else ("**met**" if met else "**not met**")
        lines.append(f"{n}. {text}: {state} — {detail}")

    # 1: like for like, twice. Warm: execute_parallel() (which starts the workers itself) against
    # Pool.map on a pool started beforehand. Cold: everything from nothing, pfp's registrations
    # included, against Pool start-up + map + shut-down. Pool.map's inputs are a lazy range, so
    # the warm comparison has nothing on the Python side to set against pfp's registrations: that
    # mixed ratio is reported, not judged.
    g1run = r("py_pool_default_us", "pfp_trivial_run_us")
    g1cold = r("py_pool_default_startup_us", "pfp_trivial_total_us")
    g1mixed = r("py_pool_default_us", "pfp_trivial_total_us")
    g1ppe = r("py_ppe_c1_us", "pfp_trivial_total_us")
    met1 = None if g1run is None or g1cold is None else (g1run >= 1.0 and g1cold >= 1.0 and (g1ppe is None or g1ppe > 400))
    goal(1, f"{sizes['trivial_n']} trivial functions faster per function than `multiprocessing.Pool(2).map` (default chunking)",
         met1,
         f"warm: Pool.map / execute_parallel() = {fmt_ratio(g1run)}{spread('py_pool_default_us', 'pfp_trivial_run_us')} "
         f"(pfp {fmt(v('pfp_trivial_run_us'))} µs, workers started inside, vs Pool {fmt(v('py_pool_default_us'))} µs on a "
         f"pool started beforehand); cold: Pool start-up + map / registration + execute_parallel() = {fmt_ratio(g1cold)}"
         f"{spread('py_pool_default_startup_us', 'pfp_trivial_total_us')} (pfp {fmt(v('pfp_trivial_total_us'))} µs vs "
         f"{fmt(v('py_pool_default_startup_us'))} µs); need ≥ 1× both. Mixed, for reference: warm Pool.map / registration + "
         f"execute_parallel() = {fmt_ratio(g1mixed)}{spread('py_pool_default_us', 'pfp_trivial_total_us')}. "
         f"ProcessPoolExecutor chunksize 1 / pfp = {fmt_ratio(g1ppe)} (need > 400×)")
    # 2
    g2f = r("pfp_fork_us", "fork_us")
    g2p = r("py_pypfp_us", "pfp_fork_us")
    met2 = None if g2f is None else (g2f <= 1.25 and (g2p is None or g2p >= 8))
    goal(2, "a fresh process per function within 1.25× of fork + pipe + waitpid, ≥ 8× faster than pypfp-style",
         met2, f"pfp/floor = {fmt_ratio(g2f)}{spread('pfp_fork_us', 'fork_us')} (need ≤ 1.25×; pfp {fmt(v('pfp_fork_us'))} µs vs floor "
         f"{fmt(v('fork_us'))} µs); pypfp-style/pfp = {fmt_ratio(g2p)}{spread('py_pypfp_us', 'pfp_fork_us')} (need ≥ 8×)")
    # 3
    g3 = r("pfp_bytes_gbps", "pipe_gbps")
    goal(3, f"one {sizes['pfp_bytes']} result at ≥ 1.5× the raw pipe throughput", None if g3 is None else g3 >= 1.5,
         f"pfp/pipe = {fmt_ratio(g3)}{spread('pfp_bytes_gbps', 'pipe_gbps')} (pfp {fmt(v('pfp_bytes_gbps'))} GB/s vs pipe {fmt(v('pipe_gbps'))} GB/s)")
    # 4
    g4 = r("pfp_cpu_speedup", "cpu_speedup")
    floor4 = v("cpu_speedup")
    detail4 = f"pfp/floor = {fmt_ratio(g4)}{spread('pfp_cpu_speedup', 'cpu_speedup')} (pfp {fmt(v('pfp_cpu_speedup'))}× vs floor {fmt(floor4)}×)"
    if floor4 is not None and floor4 < 1.3:
        goal(4, "CPU-bound speedup ≥ 0.95× that of two hand-forked processes", "inconclusive",
             detail4 + "; the floor itself barely sped up, so the second core was mostly taken by other work "
             "during these runs")
    else:
        goal(4, "CPU-bound speedup ≥ 0.95× that of two hand-forked processes", None if g4 is None else g4 >= 0.95,
             detail4)
    # 5
    per_fn = v("pfp_mem_reg_bytes_per_fn")
    run1, run20 = v("pfp_rss_run1_kib"), v("pfp_rss_run20_kib")
    growth = med([r_["pfp_rss_run20_kib"] - r_["pfp_rss_run1_kib"] for r_ in runs
                  if "pfp_rss_run20_kib" in r_ and "pfp_rss_run1_kib" in r_])
    met5 = None
    if per_fn is not None and growth is not None:
        met5 = per_fn <= 1024 and growth <= max(0.05 * run1, 1024)
    goal(5, "parent memory bounded per function (here: ≤ 1 KiB) and flat over repeated runs "
         "(here: 20th run ≤ 1st + max(5 %, 1 MiB))", met5,
         f"{fmt(per_fn)} bytes per registered function ({sizes['mem_n']} registrations), {fmt(v('pfp_mem_run_bytes_per_fn'))} after the run; "
         f"RSS {fmt(run1)} KiB after run 1, {fmt(run20)} KiB after run 20 (growth {fmt(growth)} KiB)")
    # 6
    # Issue 16: a ratio to this machine's fork floor (the absolute 1 ms of issue 6 a slow fork alone breaks).
    lat = v("pfp_latency_us")
    g6 = r("pfp_latency_us", "fork_latency_us")
    goal(6, "execute_parallel() → first function running within 1.5× of the fork floor (fork() → child running)",
         None if g6 is None else g6 <= 1.5,
         f"pfp/floor = {fmt_ratio(g6)}{spread('pfp_latency_us', 'fork_latency_us')} (median {fmt(lat)} µs "
         f"[runs: {fmt(min(values(runs, 'pfp_latency_us'), default=None))}–"
         f"{fmt(max(values(runs, 'pfp_latency_us'), default=None))} µs], fork floor {fmt(v('fork_latency_us'))} µs); "
         f"issue 6's absolute 1 ms: {'held' if lat is not None and lat < 1000 else 'not held'}")
    print("\n".join(lines))
    fails = [r_.get("pfp_failures") for r_ in runs if "pfp_failures" in r_]
    if any(fails):
        print(f"\npfp correctness failures in the runs: {fails}")
    makespan_section(runs, quick)
    pools_section(runs, quick)
    return 0


def machine_facts(runs):
    """Issue 16 goal 1: what first touch and fork cost here, so a reader knows the kind of machine."""
    def v(key):
        return med(values(runs, key))
    got = v("mk_hugepage_got")
    huge = fmt(v("mk_hugepage_touch_us")) + " µs"
    if got is not None and got < 0.5:
        huge += " (the kernel gave no huge pages: THP off?)"
    elif v("mk_hugepage_touch_us") is not None:
        huge += f" ({fmt(v('mk_hugepage_touch_us') / 512)} µs per 4 KiB of it)"
    print(f"Machine facts (medians over the runs): first write to a fresh 4 KiB page {fmt(v('mk_page_touch_us'))} µs; "
          f"to a fresh 2 MiB huge page {huge}; fork + `_exit` + waitpid {fmt(v('mk_fork_exit_wait_us'))} µs; "
          f"fork() → child running {fmt(v('fork_latency_us'))} µs; fork + pipe reply + waitpid "
          f"{fmt(v('fork_us'))} µs.\n")


# Issue 16 goal 2 (bench/pools.cpp): per variant, its label. Keys: pools_<variant>_<N>_us.
POOLS = [
    ("tbb_parallel_for", "oneTBB `parallel_for` (auto partitioner)"),
    ("tbb_task_group", "oneTBB `task_group::run` per task + `wait`"),
    ("omp_for", "OpenMP `parallel for schedule(static)`"),
    ("omp_dynamic", "OpenMP `parallel for schedule(dynamic)`"),
    ("pfp_mp", "pfp `MultiProcessor` (processes): construct + register + `execute_parallel`"),
    ("pfp_threads", "pfp `MultiProcessor`, `Backend::threads`"),
    ("pfp_map", "pfp `map` (processes)"),
    ("pfp_executor", "pfp `Executor` (processes, started): `submit` + `get`"),
    ("pfp_executor_threads", "pfp `Executor`, `Backend::threads`: `submit` + `get`"),
]


def pools_section(runs, quick):
    sizes = sorted({int(k[len("pools_n_"):]) for r_ in runs for k in r_ if k.startswith("pools_n_")})
    if not sizes:
        return

    def key(variant, n):
        return f"pools_{variant}_{n}_us"

    def rat(num, den, n):
        return med(ratios(runs, key(num, n), key(den, n)))

    print("\n### pfp against C++ thread pools at their own game (issue 16 goal 2, `bench/pools.cpp`)\n")
    print("2 workers; every task stores one short string + one int64 into its own slot of a vector (pfp: its "
          "`Result`), every slot checked. µs per task, wall time from the first submission to the last result "
          "(the pools' threads started and warm). Ratios taken within a run, medians over the runs.\n")
    head = " | ".join(f"{n:,} µs/task | ×TBB for | ×TBB group" for n in sizes)
    print(f"| variant | {head} |")
    print("|---|" + "---:|---:|---:|" * len(sizes))
    for variant, label in POOLS:
        cells = []
        for n in sizes:
            cells += [fmt(med(values(runs, key(variant, n)))), fmt_ratio(rat(variant, "tbb_parallel_for", n)),
                      fmt_ratio(rat(variant, "tbb_task_group", n))]
        if all(c == "—" for c in cells[::3]):
            continue
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nBS::thread_pool is not built here: the workplace keeps fetched code out of the repository, and "
          "Debian has no package of it. BENCHMARKS.md gives one sitting's figures for it.\n")
    print("### Goals (issue 16 goal 2)\n")
    if quick:
        print("_Quick mode: 10,000 tasks only; the verdicts below are not meaningful._\n")
    lines = []

    def verdict(ok):
        return "n/a (not measured)" if ok is None else ("**met**" if ok else "**not met**")

    def worst(values_):
        values_ = [x for x in values_ if x is not None]
        return max(values_) if values_ else None

    def per_size(text):
        return "; ".join(f"{n:,}: {text(n)}" for n in sizes)

    ex = worst(med(values(runs, key("pfp_executor", n))) for n in sizes)
    lines.append(f"- `Executor` submit + get at most 1 µs per task: {verdict(None if ex is None else ex <= 1.0)} — "
                 + per_size(lambda n: f"{fmt(med(values(runs, key('pfp_executor', n))))} µs = "
                            f"{fmt_ratio(rat('pfp_executor', 'tbb_task_group', n))} TBB task_group"))
    mp = worst(rat("pfp_map", "pfp_mp", n) for n in sizes)
    lines.append(f"- `map` within 1.25× of `MultiProcessor` per item: {verdict(None if mp is None else mp <= 1.25)} — "
                 + per_size(lambda n: f"map/MultiProcessor = {fmt_ratio(rat('pfp_map', 'pfp_mp', n))}"))
    th = worst(rat("pfp_threads", "tbb_parallel_for", n) for n in sizes)
    tp = worst(rat("pfp_threads", "pfp_mp", n) for n in sizes)
    ta = worst(med(values(runs, key("pfp_threads", n))) for n in sizes)
    lines.append(f"- `Backend::threads` never slower than the process backend: {verdict(None if tp is None else tp <= 1.0)}; "
                 f"within 2× of TBB `parallel_for`: {verdict(None if th is None else th <= 2.0)} (the issue's "
                 f"0.25 µs: {'held' if ta is not None and ta <= 0.25 else 'not held'}) — "
                 + per_size(lambda n: f"{fmt(med(values(runs, key('pfp_threads', n))))} µs = "
                            f"{fmt_ratio(rat('pfp_threads', 'tbb_parallel_for', n))} TBB parallel_for, "
                            f"{fmt_ratio(rat('pfp_threads', 'pfp_mp', n))} processes"))
    lines.append("- For reference, `MultiProcessor` (processes) against TBB `parallel_for`: "
                 + per_size(lambda n: fmt_ratio(rat("pfp_mp", "tbb_parallel_for", n))))
    print("\n".join(lines))
    fails = [r_.get("pools_failures") for r_ in runs if "pools_failures" in r_]
    if any(fails):
        print(f"\npools correctness failures in the runs: {fails}")


# Issue 15 (bench/makespan.cpp): makespan of heterogeneous runs on 2 workers. Per case: key, label.
# {n}, {max}, {min} are filled from the runs (tasks, longest and shortest nominal task).
MAKESPAN_CASES = [
    ("long_first", "one {max} task first, then 1 ms ones ({n} tasks)"),
    ("long_middle", "one {max} task in the middle of 1 ms ones ({n} tasks)"),
    ("long_last", "1 ms tasks, then one {max} task ({n} tasks)"),
    ("pareto", "Pareto mix, mean 0.5 ms, {min}–{max} ({n} tasks)"),
    ("decreasing", "decreasing durations, {max} down to {min} ({n} tasks)"),
    ("tiny", "busy tasks of {min} ({n} tasks)"),
]


def duration_text(us):
    if us is None:
        return "?"
    if us >= 1e6:
        return f"{us / 1e6:g} s"
    if us >= 1e3:
        return f"{us / 1e3:.3g} ms"
    return f"{us:.3g} µs"


def makespan_section(runs, quick):
    if not any(k.startswith("mk_") for r_ in runs for k in r_):
        return

    def v(key):
        return med(values(runs, key))

    def spread(key):
        vs = values(runs, key)
        return f" [runs: {fmt_ratio(min(vs))}–{fmt_ratio(max(vs))}]" if len(vs) > 1 else ""

    print("\n### Makespan of heterogeneous runs on 2 workers (issue 15)\n")
    print("Busy-wait tasks (a spin on steady_clock), registered in the order given. **list bound**: greedy "
          "list scheduling in submission order on 2 machines with zero overhead, on the durations pfp "
          "measured (`Result::duration`) — the best any first-come pool can do. pfp: wall time of "
          "`execute_parallel()` (registration excluded), `workers = 2`. OpenMP: `parallel for "
          "schedule(dynamic) num_threads(2)` over the same tasks right after, in the same process, against "
          "the list bound of the durations its threads measured. Values and ratios: medians over the runs "
          "(each ratio taken within its run).\n")
    print(f"For reference: fork + `_exit` + waitpid {fmt(v('mk_fork_exit_wait_us'))} µs; first write to a fresh "
          f"4 KiB page {fmt(v('mk_page_touch_us'))} µs.\n")
    print("The last column tells a loaded machine: the CPU time pfp's workers, and OpenMP's threads, got "
          "during their makespan, as a share of 2 CPUs (about 100 % on an idle machine).\n")
    print("| case | pfp (ms) | list bound (ms) | pfp/bound | OpenMP (ms) | OpenMP/its bound | pfp/OpenMP "
          "| CPU share pfp / OpenMP |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    goals = []
    for i, (name, label) in enumerate(MAKESPAN_CASES, 1):
        k = f"mk_{name}_"
        n, lo, hi = v(k + "n"), v(k + "min_task_us"), v(k + "max_task_us")
        if n is None:
            continue
        text = label.format(n=size_text(n, "count"), min=duration_text(lo), max=duration_text(hi))
        ratio, oratio, po = v(k + "ratio"), v(k + "omp_ratio"), v(k + "pfp_vs_omp")
        pshare, oshare = v(k + "pfp_workers_cpu_share"), v(k + "omp_cpu_share")
        share = " / ".join("—" if x is None else f"{100 * x:.0f} %" for x in (pshare, oshare))
        print(f"| {name}: {text} | {fmt(v(k + 'pfp_ms'))} | {fmt(v(k + 'bound_ms'))} | {fmt_ratio(ratio)} | "
              f"{fmt(v(k + 'omp_ms'))} | {fmt_ratio(oratio)} | {fmt_ratio(po)} | {share} |")
        limit = 1.05 if lo is not None and lo >= 100 else 1.25
        state = "n/a (not measured)" if ratio is None else ("**met**" if ratio <= limit else "**not met**")
        detail = (f"pfp/bound = {fmt_ratio(ratio)}{spread(k + 'ratio')} (pfp {fmt(v(k + 'pfp_ms'))} ms, bound "
                  f"{fmt(v(k + 'bound_ms'))} ms); OpenMP/its bound = {fmt_ratio(oratio)}{spread(k + 'omp_ratio')}, "
                  f"pfp/OpenMP = {fmt_ratio(po)}")
        if ratio is not None and ratio > limit and oshare is not None and oshare < 0.9:
            # like goal 4 of issue 6: with the CPUs taken by other work the run says little
            state = "**inconclusive**"
            detail += (f"; OpenMP's threads got only {100 * oshare:.0f} % of 2 CPUs (pfp's workers "
                       f"{'?' if pshare is None else f'{100 * pshare:.0f}'} %): the machine was busy with other work")
        goals.append(f"{i}. {name} ({text}) within {limit:.2f}× of the list bound: {state} — {detail}")
    print("\n### Goals (issue 15): makespan within 1.05× of the list bound where every task takes 100 µs or "
          "more, within 1.25× for the 20 µs tasks\n")
    if quick:
        print("_Quick mode: the cases are shrunk (e.g. 100 ms instead of 2 s, 200 tasks instead of 4,000) to "
              "check that they run and that every Result is ok; the verdicts below are not meaningful._\n")
    print("\n".join(goals))
    fails = [r_.get("mk_failures") for r_ in runs if "mk_failures" in r_]
    if any(fails):
        print(f"\nmakespan correctness failures in the runs: {fails}")


# ------------------------------------------------------------------ issue 16 goal 4: scaling

MD_BEGIN = "<!-- scaling:begin (bench/run.sh --scaling writes this section) -->"
MD_END = "<!-- scaling:end -->"


def series(runs, prefix, suffix):
    """{x: median} for keys prefix<x>suffix (x an integer)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    xs = sorted({int(m.group(1)) for r_ in runs for k in r_ for m in [pat.match(k)] if m})
    return {x: med(values(runs, f"{prefix}{x}{suffix}")) for x in xs}


def bends(points, tolerance=1.5):
    """Where a per-unit cost stops being flat: pairs (x_prev, x, factor) whose step changes by more than
    `tolerance` either way."""
    xs = [x for x in sorted(points) if points[x]]
    return [(a, b, points[b] / points[a]) for a, b in zip(xs, xs[1:])
            if points[b] / points[a] > tolerance or points[a] / points[b] > tolerance]


def scaling_text(runs, directory, plot_name):
    fn_reg, fn_run = series(runs, "sc_fn_", "_reg_us"), series(runs, "sc_fn_", "_run_us")
    fn_total = series(runs, "sc_fn_", "_total_us")
    mem_reg, mem_run = series(runs, "sc_fn_", "_reg_bytes"), series(runs, "sc_fn_", "_run_bytes")
    wk = series(runs, "sc_workers_", "_us")
    wk.pop(None, None)
    size_us, size_gbps = series(runs, "sc_size_", "_us"), series(runs, "sc_size_", "_gbps")
    out = []
    machine = os.path.join(directory, "machine.txt")
    if os.path.exists(machine):
        with open(machine) as f:
            out.append("```\n" + f.read().strip() + "\n```\n")
    out.append(f"{len(runs)} run(s); medians over them. Plot: `{plot_name}` (made by `bench/run.sh --scaling` with gnuplot).\n")
    out.append("**Per function, by the number of functions** (2 workers, trivial functions, processes):\n")
    out.append("| functions | registration µs/fn | execute_parallel µs/fn | total µs/fn | parent RSS bytes/fn registered | … after the run |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    for n in fn_total:
        out.append(f"| {n:,} | {fmt(fn_reg.get(n))} | {fmt(fn_run.get(n))} | {fmt(fn_total[n])} | "
                   f"{fmt(mem_reg.get(n))} | {fmt(mem_run.get(n))} |")
    nw = v_key(runs, "sc_workers_n")
    out.append(f"\n**Per function, by the number of workers** ({size_text(nw, 'count')} trivial functions, "
               f"execute_parallel() with its forks; the machine has {os.cpu_count()} cores):\n")
    out.append("| workers | µs/fn | × of 2 workers |")
    out.append("|---:|---:|---:|")
    for w in wk:
        rel = wk[w] / wk[2] if wk.get(2) and wk[w] else None
        out.append(f"| {w} | {fmt(wk[w])} | {fmt_ratio(rel)} |")
    out.append("\n**By result size** (functions that fill a `Value::bytes`, ~256 MiB per size at most 20,000 of them, "
               "2 workers; wall time of execute_parallel() per result, the filling included):\n")
    out.append("| result | functions | µs/result | GB/s |")
    out.append("|---:|---:|---:|---:|")
    for b in size_us:
        out.append(f"| {size_text(b, 'bytes')} | {size_text(v_key(runs, f'sc_size_{b}_count'), 'count')} | "
                   f"{fmt(size_us[b])} | {fmt(size_gbps.get(b))} |")
    out.append("\n**Where the curves bend** (a step of more than 1.5× between neighbouring points of a per-unit "
               "figure; found by aggregate.py in these runs):\n")
    out += bend_notes(fn_total, mem_run, wk, size_us, size_gbps, nw)
    return "\n".join(out) + "\n"


def v_key(runs, key):
    return med(values(runs, key))


def bend_notes(fn_total, mem_run, wk, size_us, size_gbps, nw):
    notes = []
    b = bends(fn_total)
    flat = [n for n in fn_total if fn_total[n] and fn_total[n] <= 1.5 * min(x for x in fn_total.values() if x)]
    fixed_ms = min(fn_total) * fn_total[min(fn_total)] / 1e3 if fn_total and fn_total[min(fn_total)] else None
    if b:
        notes.append(f"- Cost per function falls with the count until {size_text(min(flat) if flat else None, 'count')} "
                     "functions (" + ", ".join(f"{a:,}→{c:,}: {fmt_ratio(r)}" for a, c, r in b) + "): each run pays "
                     f"a fixed cost — about {fmt(fixed_ms)} ms here, the total of the smallest run: forking and "
                     "reaping the workers, their first page faults, the shared regions — shared by fewer "
                     "functions. Beyond it the cost is flat.")
    else:
        notes.append("- Cost per function is flat over the counts measured.")
    big = [n for n in fn_total if n >= 100000]
    if len(big) >= 2 and fn_total[big[-1]] and fn_total[big[0]]:
        notes.append(f"- From {big[0]:,} to {big[-1]:,} functions: {fmt_ratio(fn_total[big[-1]] / fn_total[big[0]])} "
                     "per function (flat means near 1×; above it, the Results and registrations outgrow the caches "
                     "and fresh memory is touched for each).")
    bm = bends(mem_run)
    if bm:
        notes.append("- Parent memory per function is large for few functions (" +
                     ", ".join(f"{a:,}→{c:,}: {fmt_ratio(r)}" for a, c, r in bm) + "): registrations live in 2 MiB "
                     "chunks and a run's Results in huge-page regions, so the first chunk is shared by few functions; "
                     "flat once they fill.")
    if wk.get(2):
        extra = [w for w in wk if w > 2 and wk[w]]
        if extra and nw:
            w = extra[-1]
            per_worker = (wk[w] - wk[2]) * nw / (w - 2)
            notes.append(f"- More workers than cores: {w} workers cost {fmt_ratio(wk[w] / wk[2])} of 2 workers per "
                         f"function, about {fmt(per_worker)} µs per extra worker over the run (its fork, exit and "
                         "reap, and the time slices it takes from the others); per function that fixed cost "
                         f"shrinks as the run grows past {size_text(nw, 'count')} functions.")
        if wk.get(1):
            notes.append(f"- One worker: {fmt_ratio(wk[1] / wk[2])} of two per function (with trivial functions the "
                         "parent, decoding every Result, is as busy as the workers: two workers and the parent share "
                         "the 2 cores, one worker and the parent have one each).")
    bs = bends(size_us)
    if bs:
        notes.append("- Per result, the cost is flat while the per-function overhead dominates and grows with the size "
                     "once copying does (" + ", ".join(f"{size_text(a, 'bytes')}→{size_text(c, 'bytes')}: "
                                                       f"{fmt_ratio(r)}" for a, c, r in bs) + "). Results up to 256 KiB "
                     "travel through the worker's 1 MiB shared ring (a full ring waits for the parent), larger ones "
                     "through the pipe and a copy out of the worker's memory; every result lands in fresh memory "
                     "in the parent (a first-touch fault per 4 KiB).")
    if size_gbps:
        top = max(size_gbps, key=lambda k: size_gbps[k] or 0)
        notes.append(f"- Throughput peaks at {fmt(size_gbps[top])} GB/s for {size_text(top, 'bytes')} results.")
    return notes


def scaling_plot(runs, directory, plot):
    """Four panels with gnuplot: µs/function and bytes/function by count, µs/function by workers,
    µs/result and GB/s by size. Skipped with a message if gnuplot is missing."""
    import shutil
    import subprocess
    if not shutil.which("gnuplot"):
        print("(gnuplot not found: no plot)", file=sys.stderr)
        return False
    data = {
        "fn.dat": (series(runs, "sc_fn_", "_total_us"), series(runs, "sc_fn_", "_run_bytes")),
        "wk.dat": (series(runs, "sc_workers_", "_us"), {}),
        "sz.dat": (series(runs, "sc_size_", "_us"), series(runs, "sc_size_", "_gbps")),
    }
    for name, (a, b) in data.items():
        with open(os.path.join(directory, name), "w") as f:
            for x in a:
                if a[x] is not None:
                    f.write(f"{x} {a[x]} {b.get(x) if b.get(x) is not None else 'NaN'}\n")
    d = directory.replace("'", "")
    script = f"""
set multiplot layout 2,2 title 'pfp scaling (bench/scaling.cpp): medians of {len(runs)} run(s)'
set logscale xy
set format y '10^{{%L}}'
set grid
set key top right
set format x '10^{{%L}}'
set title 'per function, by number of functions (2 workers)'
set xlabel 'functions'
set ylabel 'µs per function'
set y2label 'parent bytes per function'
set logscale y2
set format y2 '10^{{%L}}'
set y2tics
plot '{d}/fn.dat' u 1:2 w lp t 'µs/function (registration + run)', '' u 1:3 axes x1y2 w lp t 'parent RSS bytes/function'
unset y2label
unset y2tics
unset logscale y2
set logscale x 2
set format x '%g'
set title 'per function, by workers (2 cores)'
set xlabel 'workers'
set ylabel 'µs per function'
plot '{d}/wk.dat' u 1:2 w lp t 'µs/function (execute\_parallel)'
set logscale x 2
set format x '%.0b%B'
set key top left
set title 'by result size (2 workers)'
set xlabel 'bytes per result'
set ylabel 'µs per result'
set y2label 'GB/s'
set logscale y2
set format y2 '%g'
set y2tics
plot '{d}/sz.dat' u 1:2 w lp t 'µs/result', '' u 1:3 axes x1y2 w lp t 'GB/s'
unset multiplot
"""
    with open(os.path.join(directory, "scaling.gp"), "w") as f:
        f.write(script)
    gp = os.path.join(directory, "scaling.gp")
    ok = subprocess.run(["gnuplot", "-e", f"set terminal svg size 1000,760 dynamic font 'sans,11'; set output '{plot}'",
                         gp]).returncode == 0
    # a PNG beside the raw results, to look at
    subprocess.run(["gnuplot", "-e", f"set terminal pngcairo size 1000,760 font 'sans,9'; set output '{d}/scaling.png'",
                    gp], stderr=subprocess.DEVNULL)
    return ok


def scaling_main(args):
    md = plot = None
    rest = []
    it = iter(args)
    for a in it:
        if a == "--md":
            md = next(it, None)
        elif a == "--plot":
            plot = next(it, None)
        else:
            rest.append(a)
    if len(rest) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    directory = rest[0]
    runs = load(directory)
    plot = plot or os.path.join(directory, "scaling.svg")
    plot_name = os.path.relpath(plot, os.path.dirname(os.path.abspath(md))) if md else plot
    text = scaling_text(runs, directory, plot_name)
    print(text)
    ok = scaling_plot(runs, directory, plot)
    if md:
        section = MD_BEGIN + "\n" + text + MD_END
        old = open(md).read() if os.path.exists(md) else ""
        if MD_BEGIN in old and MD_END in old:
            new = old[:old.index(MD_BEGIN)] + section + old[old.index(MD_END) + len(MD_END):]
        else:
            new = old + ("\n## Scaling (issue 16 goal 4)\n\n" if old else "") + section + "\n"
        with open(md, "w") as f:
            f.write(new)
    fails = [r_.get("sc_failures") for r_ in runs if "sc_failures" in r_]
    if any(fails) or not runs:
        print(f"scaling correctness failures in the runs: {fails}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
