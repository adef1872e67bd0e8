"""mpi4py.futures on the same tasks as bench/mpi_bench.cpp, for bench/mpi_run.sh:

    mpiexec -n 4 /usr/bin/python3 -m mpi4py.futures bench/mpi_futures.py [--quick]

Prints RESULT lines: per-task cost of map() over trivial tasks at chunksize 1 and at the best of
a few chunksizes, and the time a 256 MiB result takes to come back from a worker (a task that
only makes the bytes; its making time is measured apart in the worker and subtracted)."""
import sys, time
from mpi4py.futures import MPIPoolExecutor

def ident(i):
    return i

def make(n):
    t0 = time.perf_counter()
    b = b"p" * n
    return time.perf_counter() - t0, b

def main():
    quick = "--quick" in sys.argv
    tasks = 2000 if quick else 20000
    reps = 1 if quick else 3
    big = 256 << 20
    with MPIPoolExecutor() as ex:
        list(ex.map(ident, range(100)))  # the workers are up
        def per_task(chunk):
            best = []
            for _ in range(reps):
                t0 = time.perf_counter()
                out = list(ex.map(ident, range(tasks), chunksize=chunk))
                best.append((time.perf_counter() - t0) * 1e6 / tasks)
                assert out == list(range(tasks))
            return sorted(best)[len(best) // 2]
        c1 = per_task(1)
        chunked = {c: per_task(c) for c in (100, 1000, tasks // 8)}
        best_chunk = min(chunked, key=chunked.get)
        runs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            made, b = ex.submit(make, big).result()
            runs.append((time.perf_counter() - t0 - made, made))
            assert len(b) == big
            del b
        runs.sort()
        print(f"RESULT mpi4py_tasks {tasks}")
        print(f"RESULT mpi4py_per_task_us_chunk1 {c1:.3f}")
        print(f"RESULT mpi4py_per_task_us_best_chunk {chunked[best_chunk]:.3f}")
        print(f"RESULT mpi4py_best_chunksize {best_chunk}")
        print(f"RESULT mpi4py_big_transfer_s {runs[len(runs) // 2][0]:.4f}")

if __name__ == "__main__":
    main()
