#!/usr/bin/env python3
"""Python baselines for pfp's benchmark (issue 6): what a Python user pays for the same work.

Prints one line per figure, `RESULT <key> <value> <unit>`, like bench/floors.c and pfp_bench.
Usage: python_baselines.py [--quick]

  py_ppe_c1_us        ProcessPoolExecutor(2).map(trivial, chunksize=1): microseconds per item
  py_ppe_c1000_us     ProcessPoolExecutor(2).map(trivial, chunksize=1000)
  py_pool_c1_us       multiprocessing.Pool(2).map(trivial, chunksize=1)
  py_pool_default_us  multiprocessing.Pool(2).map(trivial) with its default chunking
  py_pool_default_startup_us  the same, pool start-up and shut-down included
  py_pypfp_us         a pypfp-style processor: one Process per function, results through a
                      multiprocessing.Queue, two processes at a time: microseconds per function
  py_bytes_gbps       one bytes result through ProcessPoolExecutor (wall time minus the time the
                      function took to build it): GB/s (10^9 bytes/s)

The pools are started (and warmed with one task) before the clock starts, except where noted.
"""
import concurrent.futures
import multiprocessing as mp
import sys
import time


def trivial(x):
    return x


def make_bytes(n):
    t0 = time.perf_counter()
    b = bytes(range(256)) * (n // 256)
    return b, time.perf_counter() - t0


def result(key, value, unit):
    print(f"RESULT {key} {value:.10g} {unit}", flush=True)


def check(ok, what):
    if not ok:
        print(f"FAIL python: {what}", flush=True)
        sys.exit(1)


def ppe_map(n, chunksize):
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        list(ex.map(trivial, range(4)))
        t0 = time.perf_counter()
        out = list(ex.map(trivial, range(n), chunksize=chunksize))
        t1 = time.perf_counter()
    check(out == list(range(n)), "ProcessPoolExecutor results")
    return (t1 - t0) / n * 1e6


def pool_map(n, chunksize):
    with mp.Pool(2) as pool:
        pool.map(trivial, range(4))
        t0 = time.perf_counter()
        out = pool.map(trivial, range(n), chunksize) if chunksize else pool.map(trivial, range(n))
        t1 = time.perf_counter()
    check(out == list(range(n)), "Pool results")
    return (t1 - t0) / n * 1e6


def pool_map_with_startup(n):
    t0 = time.perf_counter()
    with mp.Pool(2) as pool:
        out = pool.map(trivial, range(n))
    t1 = time.perf_counter()
    check(out == list(range(n)), "Pool results")
    return (t1 - t0) / n * 1e6


def _pypfp_child(queue, index):
    # what pypfp's wrapper does: run the function, put (index, result) on the queue
    queue.put((index, trivial(index)))


def pypfp_style(n, workers=2):
    queue = mp.Queue()
    results = [None] * n
    running = {}
    started = 0
    t0 = time.perf_counter()
    while started < n and len(running) < workers:
        p = mp.Process(target=_pypfp_child, args=(queue, started))
        p.start()
        running[started] = p
        started += 1
    done = 0
    while done < n:
        index, value = queue.get()
        results[index] = value
        running.pop(index).join()
        done += 1
        if started < n:
            p = mp.Process(target=_pypfp_child, args=(queue, started))
            p.start()
            running[started] = p
            started += 1
    t1 = time.perf_counter()
    check(results == list(range(n)), "pypfp-style results")
    return (t1 - t0) / n * 1e6


def big_result(size):
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        ex.submit(trivial, 0).result()
        t0 = time.perf_counter()
        b, fn = ex.submit(make_bytes, size).result()
        t1 = time.perf_counter()
    check(len(b) == size and b[:256] == bytes(range(256)) and b[-1] == 255, "bytes result")
    return size / ((t1 - t0) - fn) / 1e9


def main():
    quick = "--quick" in sys.argv[1:]
    if mp.get_start_method() != "fork":
        mp.set_start_method("fork")
    n_ppe1, n_big = (500, 10000) if quick else (5000, 100000)
    n_pool1 = 5000 if quick else 100000
    n_pypfp = 20 if quick else 200
    size = (16 if quick else 256) << 20
    result("py_ppe_c1_n", n_ppe1, "count")
    result("py_trivial_n", n_big, "count")
    result("py_pool_c1_n", n_pool1, "count")
    result("py_pypfp_n", n_pypfp, "count")
    result("py_bytes_size", size, "bytes")
    result("py_ppe_c1_us", ppe_map(n_ppe1, 1), "us")
    result("py_ppe_c1000_us", ppe_map(n_big, 1000), "us")
    result("py_pool_c1_us", pool_map(n_pool1, 1), "us")
    result("py_pool_default_us", pool_map(n_big, None), "us")
    result("py_pool_default_startup_us", pool_map_with_startup(n_big), "us")
    result("py_pypfp_us", pypfp_style(n_pypfp), "us")
    result("py_bytes_gbps", big_result(size), "GB/s")
    result("py_version", sys.version_info[0] + sys.version_info[1] / 100, "version")


if __name__ == "__main__":
    main()
