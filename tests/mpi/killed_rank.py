#!/usr/bin/env python3
"""A rank killed from outside ends the whole job: non-zero exit code, no process left.

killed_rank.py <mpiexec> <numproc flag> <helper_mpi_killed>: starts the helper on 4 ranks, waits
until every rank's workers run a function, SIGKILLs rank 1, then checks that mpiexec exits
non-zero within 30 s and that no rank or worker process is left 5 s later."""
import os, signal, subprocess, sys, tempfile, time

RANKS = 4

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose once its parent reaps it; report it anyway
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False

def main():
    mpiexec, flag, helper = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, PFP_KILL_DIR=d)
        job = subprocess.Popen([mpiexec, flag, str(RANKS), helper], env=env)
        deadline = time.time() + 30
        ranks, workers = {}, set()
        while time.time() < deadline:
            for r in range(RANKS):
                try:
                    with open(os.path.join(d, f"rank{r}.pid")) as f:
                        ranks[r] = int(f.read())
                except (OSError, ValueError):
                    pass
            try:
                with open(os.path.join(d, "workers")) as f:
                    workers = {int(x) for x in f.read().split()}
            except OSError:
                pass
            if len(ranks) == RANKS and len(workers) >= 2 * RANKS:
                break
            time.sleep(0.1)
        else:
            job.kill()
            sys.exit(f"FAIL: the job did not start: ranks {ranks}, workers {sorted(workers)}")
        print(f"ranks {ranks}, workers {sorted(workers)}; killing rank 1 (pid {ranks[1]})")
        t0 = time.time()
        os.kill(ranks[1], signal.SIGKILL)
        try:
            rc = job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.kill()
            sys.exit("FAIL: the job did not end within 30 s of a rank's death")
        print(f"mpiexec exited with {rc} after {time.time() - t0:.2f} s")
        left = []
        for _ in range(50):
            left = [p for p in list(ranks.values()) + sorted(workers) if alive(p)]
            if not left:
                break
            time.sleep(0.1)
        if rc == 0:
            sys.exit("FAIL: the job exited with 0 although a rank was killed")
        if left:
            for p in left:
                os.kill(p, signal.SIGKILL)
            sys.exit(f"FAIL: processes left after the job ended: {left}")
        print("PASS: non-zero exit, no process left")

main()
