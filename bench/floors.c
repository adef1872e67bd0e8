/* floors.c -- the hand-written system-call floors that pfp is measured against (issue 6).
 *
 * Plain POSIX C (Linux): no pfp, no C++. Every figure is printed as one line
 *     RESULT <key> <value> <unit>
 * so bench/aggregate.py can collect it. Usage:  floors [--quick]
 *
 *   pool_rr1_us      pre-forked pool of 2 workers, one 8-byte task in flight per worker, strict
 *                    request/reply with a 16-byte reply: microseconds per task
 *   pool_rr16_us     the same with 16 tasks in flight per worker
 *   pool_batch256_us the same with indices sent in batches of 256 (two batches in flight per worker)
 *   fork_us          fork + child writes a 100-byte reply to a pipe + _exit + parent reads it + waitpid,
 *                    one process at a time: microseconds per process
 *   fork2_us         the same with two children alive at a time (what a 2-worker pool could overlap)
 *   fork_bigheap_us  fork_us with the parent holding 1 GiB of touched heap (fork copies its page tables)
 *   fork_latency_us  from just before fork() to the child's first instruction (median of 20)
 *   pipe_gbps        1 GiB child -> parent through a pipe (1 MiB pipe buffer; both buffers pre-touched)
 *   pipe64k_gbps     the same with the default 64 KiB pipe buffer
 *   memcpy_gbps      1 GiB memcpy inside one process (both buffers pre-touched)
 *   shm_gbps         shared-memory handoff: the child fills a pre-faulted MAP_SHARED mapping of 1 GiB,
 *                    the parent reads (sums) it
 *   cpu_task_ms      the calibrated length of one CPU-bound task
 *   cpu_speedup      8 equal CPU-bound tasks: sequential time / time on 2 hand-forked processes (4 each)
 *
 * GB/s means 10^9 bytes per second. Quick mode uses small sizes and only checks that it all runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int quick = 0;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char* what) {
  fprintf(stderr, "floors: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void result(const char* key, double value, const char* unit) {
  printf("RESULT %s %.10g %s\n", key, value, unit);
  fflush(stdout);
}

static void write_all(int fd, const void* data, size_t n) {
  const char* p = (const char*)data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += w;
    n -= (size_t)w;
  }
}

/* Reads exactly n bytes; returns 0 at a premature EOF. */
static int read_all(int fd, void* data, size_t n) {
  char* p = (char*)data;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (r == 0) return 0;
    p += r;
    n -= (size_t)r;
  }
  return 1;
}

static void reap(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) die("waitpid");
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "floors: child %d failed (status %d)\n", (int)pid, st);
    exit(1);
  }
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ 1. pre-forked pool */

/* A worker: reads 8-byte indices, answers each with 16 bytes {index, index * 3 + 1}, in one write
 * per read. Leaves at EOF. */
static void pool_worker(int task_fd, int reply_fd) {
  uint64_t in[512];
  uint64_t out[1024];
  size_t carried = 0;
  for (;;) {
    ssize_t got = read(task_fd, (char*)in + carried, sizeof in - carried);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) _exit(0);
    size_t bytes = carried + (size_t)got;
    size_t count = bytes / 8;
    for (size_t k = 0; k < count; ++k) {
      out[2 * k] = in[k];
      out[2 * k + 1] = in[k] * 3 + 1;
    }
    write_all(reply_fd, out, count * 16);
    carried = bytes % 8;
    if (carried) memmove(in, (char*)in + count * 8, carried);
  }
}

/* ntasks tasks over 2 workers; each worker holds at most `depth` indices; indices are sent
 * `batch` at a time (a batch is sent once `batch` slots are free; all free batches go in one write).
 * depth <= 512. Returns µs per task. */
static double pool_bench(uint64_t ntasks, unsigned depth, unsigned batch) {
  enum { W = 2 };
  int task_w[W], reply_r[W];
  pid_t pids[W];
  for (int w = 0; w < W; ++w) {
    int tp[2], rp[2];
    if (pipe(tp) || pipe(rp)) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      for (int o = 0; o < w; ++o) {
        close(task_w[o]);
        close(reply_r[o]);
      }
      close(tp[1]);
      close(rp[0]);
      pool_worker(tp[0], rp[1]);
    }
    close(tp[0]);
    close(rp[1]);
    task_w[w] = tp[1];
    reply_r[w] = rp[0];
    pids[w] = pid;
  }
  uint64_t next = 0, done = 0, checksum = 0;
  unsigned inflight[W] = {0, 0};
  char buf[W][65536 + 16];
  size_t have[W] = {0, 0};
  uint64_t out[512];
  double t0 = now_ns();
  for (;;) {
    for (int w = 0; w < W; ++w) {
      /* every free slot, in whole batches, in one write (at most 512 indices: 4 KiB = PIPE_BUF) */
      unsigned n = 0, room = (depth - inflight[w]) / batch * batch;
      while (n < room && next < ntasks) out[n++] = next++;
      if (n) {
        write_all(task_w[w], out, n * 8);
        inflight[w] += n;
      }
    }
    if (done == ntasks) break;
    struct pollfd fds[W];
    for (int w = 0; w < W; ++w) fds[w] = (struct pollfd){reply_r[w], POLLIN, 0};
    if (poll(fds, W, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    for (int w = 0; w < W; ++w) {
      if (!fds[w].revents) continue;
      ssize_t got = read(reply_r[w], buf[w] + have[w], 65536);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        fprintf(stderr, "floors: pool worker died\n");
        exit(1);
      }
      have[w] += (size_t)got;
      size_t count = have[w] / 16;
      for (size_t k = 0; k < count; ++k) {
        uint64_t pair[2];
        memcpy(pair, buf[w] + 16 * k, 16);
        if (pair[1] != pair[0] * 3 + 1) {
          fprintf(stderr, "floors: bad reply\n");
          exit(1);
        }
        checksum += pair[0];
      }
      done += count;
      inflight[w] -= (unsigned)count;
      size_t rest = have[w] - count * 16;
      if (rest) memmove(buf[w], buf[w] + count * 16, rest);
      have[w] = rest;
    }
  }
  double t1 = now_ns();
  for (int w = 0; w < W; ++w) {
    close(task_w[w]);
    close(reply_r[w]);
    reap(pids[w]);
  }
  if (checksum != ntasks * (ntasks - 1) / 2) {
    fprintf(stderr, "floors: pool checksum mismatch\n");
    exit(1);
  }
  return (t1 - t0) / 1e3 / (double)ntasks;
}

/* ------------------------------------------------------------------ 2. a process per task */

static const char reply100[100] = "a 100-byte reply from a forked child ...................................................";

static pid_t fork_replier(int* read_fd) {
  int p[2];
  if (pipe(p)) die("pipe");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    close(p[0]);
    write_all(p[1], reply100, sizeof reply100);
    _exit(0);
  }
  close(p[1]);
  *read_fd = p[0];
  return pid;
}

static void collect_reply(int fd, pid_t pid) {
  char got[100];
  if (!read_all(fd, got, sizeof got) || memcmp(got, reply100, sizeof got) != 0) {
    fprintf(stderr, "floors: bad fork reply\n");
    exit(1);
  }
  close(fd);
  reap(pid);
}

static double fork_bench(int n) {
  double t0 = now_ns();
  for (int i = 0; i < n; ++i) {
    int fd;
    pid_t pid = fork_replier(&fd);
    collect_reply(fd, pid);
  }
  return (now_ns() - t0) / 1e3 / n;
}

/* Two children alive at a time: start two, then whenever one has answered, reap it, start another. */
static double fork2_bench(int n) {
  int fd[2];
  pid_t pid[2];
  int started = 0, finished = 0;
  double t0 = now_ns();
  for (int s = 0; s < 2 && started < n; ++s) pid[s] = fork_replier(&fd[s]), ++started;
  while (finished < n) {
    struct pollfd fds[2];
    int slots[2], m = 0;
    for (int s = 0; s < 2; ++s)
      if (pid[s] > 0) {
        fds[m] = (struct pollfd){fd[s], POLLIN, 0};
        slots[m++] = s;
      }
    if (poll(fds, (nfds_t)m, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    for (int k = 0; k < m; ++k) {
      if (!fds[k].revents) continue;
      int s = slots[k];
      collect_reply(fd[s], pid[s]);
      pid[s] = -1;
      ++finished;
      if (started < n) pid[s] = fork_replier(&fd[s]), ++started;
    }
  }
  return (now_ns() - t0) / 1e3 / n;
}

static double fork_latency_bench(void) {
  enum { N = 20 };
  volatile double* slot = (volatile double*)mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (slot == MAP_FAILED) die("mmap");
  double lat[N];
  for (int i = 0; i < N; ++i) {
    *slot = 0;
    double t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      *slot = now_ns();
      _exit(0);
    }
    reap(pid);
    lat[i] = (*slot - t0) / 1e3;
  }
  munmap((void*)slot, 4096);
  qsort(lat, N, sizeof lat[0], cmp_double);
  return (lat[N / 2 - 1] + lat[N / 2]) / 2;
}

/* ------------------------------------------------------------------ 3. throughput */

static char* touched(size_t size) {
  char* p = (char*)mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  for (size_t i = 0; i < size; i += 4096) p[i] = (char)(i >> 12);
  return p;
}

static double pipe_bench(size_t size, int pipe_size) {
  int data[2], go[2], ready[2];
  if (pipe(data) || pipe(go) || pipe(ready)) die("pipe");
  if (pipe_size > 0 && fcntl(data[1], F_SETPIPE_SZ, pipe_size) < 0) die("F_SETPIPE_SZ");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    close(data[0]);
    close(go[1]);
    close(ready[0]);
    char* src = touched(size);
    for (size_t i = 0; i < size; i += 4096) src[i] = (char)(i * 7 >> 12);
    write_all(ready[1], "r", 1);
    char c;
    if (!read_all(go[0], &c, 1)) _exit(1);
    const size_t chunk = (size_t)1 << 20;
    for (size_t off = 0; off < size; off += chunk) write_all(data[1], src + off, size - off < chunk ? size - off : chunk);
    _exit(0);
  }
  close(data[1]);
  close(go[0]);
  close(ready[1]);
  char* dst = touched(size);
  char c;
  if (!read_all(ready[0], &c, 1)) die("pipe child"); /* its source buffer is touched */
  close(ready[0]);
  double t0 = now_ns();
  write_all(go[1], "g", 1);
  size_t got = 0;
  while (got < size) {
    ssize_t r = read(data[0], dst + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die("pipe read");
    got += (size_t)r;
  }
  double t1 = now_ns();
  for (size_t i = 0; i < size; i += 4096)
    if (dst[i] != (char)(i * 7 >> 12)) {
      fprintf(stderr, "floors: pipe data mismatch\n");
      exit(1);
    }
  close(data[0]);
  close(go[1]);
  reap(pid);
  munmap(dst, size);
  return (double)size / (t1 - t0);  /* bytes per ns = GB/s */
}

static double memcpy_bench(size_t size) {
  char* src = touched(size);
  char* dst = touched(size);
  double t0 = now_ns();
  memcpy(dst, src, size);
  double t1 = now_ns();
  volatile char sink = dst[size / 2];
  (void)sink;
  munmap(src, size);
  munmap(dst, size);
  return (double)size / (t1 - t0);
}

static double shm_bench(size_t size) {
  uint64_t* shm = (uint64_t*)mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED) die("mmap");
  memset(shm, 0, size); /* pre-faulted, as a long-lived mapping reused for every result would be */
  int go[2], done[2];
  if (pipe(go) || pipe(done)) die("pipe");
  const size_t words = size / 8;
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    close(go[1]);
    close(done[0]);
    /* A fork does not copy the page-table entries of a shared mapping: fault them in first, as a
     * worker that reuses its mapping for every result would have. */
    for (size_t i = 0; i < words; i += 512) shm[i] = 0;
    write_all(done[1], "r", 1);
    char c;
    if (!read_all(go[0], &c, 1)) _exit(1);
    for (size_t i = 0; i < words; ++i) shm[i] = i * 0x9E3779B97F4A7C15ull;
    write_all(done[1], "d", 1);
    _exit(0);
  }
  close(go[0]);
  close(done[1]);
  char c;
  if (!read_all(done[0], &c, 1)) die("shm child"); /* ready */
  double t0 = now_ns();
  write_all(go[1], "g", 1);
  if (!read_all(done[0], &c, 1)) die("shm child");
  uint64_t sum = 0;
  for (size_t i = 0; i < words; ++i) sum += shm[i];
  double t1 = now_ns();
  uint64_t expect = 0;
  /* sum of i * K for i < words = K * words*(words-1)/2 (mod 2^64) */
  uint64_t tri = (words % 2 == 0) ? (words / 2) * (words - 1) : words * ((words - 1) / 2);
  expect = tri * 0x9E3779B97F4A7C15ull;
  if (sum != expect) {
    fprintf(stderr, "floors: shm checksum mismatch\n");
    exit(1);
  }
  close(go[1]);
  close(done[0]);
  reap(pid);
  munmap(shm, size);
  return (double)size / (t1 - t0);
}

/* ------------------------------------------------------------------ 4. CPU speedup */

/* Integer hashing, the same loop as pfp_bench.cpp's. */
static uint64_t cpu_task(uint64_t iters, uint64_t seed) {
  uint64_t h = seed ^ 0x9E3779B97F4A7C15ull;
  for (uint64_t i = 0; i < iters; ++i) {
    h ^= i;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  return h;
}

static uint64_t calibrate(double target_ms) {
  uint64_t iters = 1000000;
  for (;;) {
    double t0 = now_ns();
    volatile uint64_t sink = cpu_task(iters, 1);
    (void)sink;
    double ms = (now_ns() - t0) / 1e6;
    if (ms > 20 || ms > target_ms / 2) return (uint64_t)((double)iters * target_ms / ms);
    iters *= 4;
  }
}

static void cpu_bench(double target_ms) {
  enum { TASKS = 8 };
  uint64_t iters = calibrate(target_ms);
  uint64_t expect[TASKS];
  double t0 = now_ns();
  for (int t = 0; t < TASKS; ++t) expect[t] = cpu_task(iters, (uint64_t)t);
  double seq = now_ns() - t0;
  int p[2][2];
  pid_t pid[2];
  t0 = now_ns();
  for (int c = 0; c < 2; ++c) {
    if (pipe(p[c])) die("pipe");
    pid[c] = fork();
    if (pid[c] < 0) die("fork");
    if (pid[c] == 0) {
      close(p[c][0]);
      uint64_t out[TASKS / 2];
      for (int k = 0; k < TASKS / 2; ++k) out[k] = cpu_task(iters, (uint64_t)(c * (TASKS / 2) + k));
      write_all(p[c][1], out, sizeof out);
      _exit(0);
    }
    close(p[c][1]);
  }
  for (int c = 0; c < 2; ++c) {
    uint64_t out[TASKS / 2];
    if (!read_all(p[c][0], out, sizeof out)) die("cpu child");
    for (int k = 0; k < TASKS / 2; ++k)
      if (out[k] != expect[c * (TASKS / 2) + k]) {
        fprintf(stderr, "floors: cpu result mismatch\n");
        exit(1);
      }
    close(p[c][0]);
    reap(pid[c]);
  }
  double par = now_ns() - t0;
  result("cpu_task_ms", seq / TASKS / 1e6, "ms");
  result("cpu_seq_ms", seq / 1e6, "ms");
  result("cpu_par_ms", par / 1e6, "ms");
  result("cpu_speedup", seq / par, "x");
}

/* --only a,b,c: run only the named groups (pool fork latency bigheap pipe memcpy shm cpu). */
static const char* only = NULL;
static int want(const char* name) {
  if (!only) return 1;
  size_t n = strlen(name);
  for (const char* p = only; (p = strstr(p, name)) != NULL; p += n)
    if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
  return 0;
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--quick") == 0) {
      quick = 1;
    } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else {
      fprintf(stderr, "usage: floors [--quick] [--only pool,fork,latency,bigheap,pipe,memcpy,shm,cpu]\n");
      return 2;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  const size_t big = quick ? ((size_t)64 << 20) : ((size_t)1 << 30);

  if (want("pool")) {
    result("pool_rr1_us", pool_bench(quick ? 5000 : 50000, 1, 1), "us");
    result("pool_rr16_us", pool_bench(quick ? 20000 : 200000, 16, 1), "us");
    result("pool_batch256_us", pool_bench(quick ? 200000 : 5000000, 512, 256), "us");
  }
  if (want("latency")) result("fork_latency_us", fork_latency_bench(), "us");
  if (want("fork")) {
    result("fork_us", fork_bench(quick ? 200 : 2000), "us");
    result("fork2_us", fork2_bench(quick ? 200 : 2000), "us");
  }
  if (want("bigheap")) {
    char* heap = touched(big);
    result("fork_bigheap_us", fork_bench(quick ? 5 : 20), "us");
    munmap(heap, big);
  }
  if (want("pipe")) {
    result("pipe_gbps", pipe_bench(big, 1 << 20), "GB/s");
    result("pipe64k_gbps", pipe_bench(big, 0), "GB/s");
  }
  if (want("memcpy")) result("memcpy_gbps", memcpy_bench(big), "GB/s");
  if (want("shm")) result("shm_gbps", shm_bench(big), "GB/s");
  if (want("cpu")) cpu_bench(quick ? 20.0 : 100.0);
  result("size_bytes", (double)big, "bytes");
  return 0;
}
