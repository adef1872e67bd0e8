// One contract, every backend, every front end (issue 15, item 5).
//
// The behaviours that must not depend on where a function runs -- a worker process, a thread of
// this process, or the calling thread -- are written once below, as functions of (front end,
// backend), and instantiated for every backend (one TEST_CASE per behaviour and backend, named
// "contract: <behaviour> - <backend>") and for every front end the behaviour applies to (one
// SECTION each): MultiProcessor::execute_parallel, map_results, map_unordered, imap,
// imap_unordered, Executor futures, Executor::next_completed and Manager; pfp::map itself has a
// test of its own. This is CPython's create_executor_tests: each test on every pool kind.
//
// Every front end is driven through one adapter, run_front(), which runs a list of Jobs and
// returns the Results the front end handed out, in the order it handed them out. A Job says what
// its function does (return a value, throw, retry, return too much, crash, hang, ...) and is a
// user type: it reaches the functions through to_value/from_value wherever a front end
// serializes its inputs (imap, Executor arguments, Manager items).
//
// Behaviours that need isolation (a crash, a timeout, a memory limit) exist for
// Backend::processes only, through the same helpers. Adding a backend (MPI, say) is one more
// line in PFP_CONTRACT below.
//
// Nothing here measures wall-clock time against a tight bound: waits are for events (a flag in
// shared memory), with generous guards against hangs only.
#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <new>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// RLIMIT_AS cannot coexist with the shadow memory of AddressSanitizer / ThreadSanitizer /
// MemorySanitizer (they reserve terabytes of address space up front).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PFP_CONTRACT_SHADOW_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define PFP_CONTRACT_SHADOW_SANITIZER 1
#endif
#endif

// =================================================================================================
// The user types: what a function is asked to do (Job), what it may return (Sale, Fragile), and
// the exceptions it may throw. Their conversions are found by argument-dependent lookup.

namespace contract_test {

enum class Op : int {
  value,          // returns expected_value(job)
  nap,            // sleeps n ms, then returns expected_value(job)
  throw_runtime,  // throws std::runtime_error("job <id> failed")
  throw_custom,   // throws contract_test::custom_error("custom <id>")
  throw_int,      // throws the int id
  flaky,          // throws "attempt k failed" on its first n attempts, then returns the attempt number
  big,            // returns a string of n bytes
  deep,           // returns arrays nested n deep
  block,          // sets the shared `started` flag, waits (at most 30 s) for `go`, returns expected_value(job)
  crash_abort,    // std::abort()
  crash_exit,     // _exit(n)
  hang,           // sleeps 60 s (a timeout must end it first)
  hog_memory,     // allocates and touches 2 GiB
};

struct Job {
  int id = 0;  // the job's position in its run
  Op op = Op::value;
  int n = 0;
};

inline void to_value(pfp::Value& v, const Job& j) {
  v = pfp::Value{{"id", j.id}, {"op", static_cast<int>(j.op)}, {"n", j.n}};
}
inline void from_value(const pfp::Value& v, Job& j) {
  j.id = v.at("id").as<int>();
  j.op = static_cast<Op>(v.at("op").as<int>());
  j.n = v.at("n").as<int>();
}

struct custom_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// What a test's consumer (on_result, the Manager's logger) throws to stop a run.
struct consumer_stop : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A user type returned by a function: to_value in the worker, from_value in the caller.
struct Sale {
  std::string item;
  int qty = 0;
};
inline bool operator==(const Sale& a, const Sale& b) { return a.item == b.item && a.qty == b.qty; }
inline std::ostream& operator<<(std::ostream& os, const Sale& s) { return os << s.item << " x " << s.qty; }
inline void to_value(pfp::Value& v, const Sale& s) { v = pfp::Value{{"item", s.item}, {"qty", s.qty}}; }
inline void from_value(const pfp::Value& v, Sale& s) {
  s.item = v.at("item").as<std::string>();
  s.qty = v.at("qty").as<int>();
}

/// A user type whose conversion to Value throws for a job with a negative n.
struct Fragile {
  Job job;
};
inline void to_value(pfp::Value& v, const Fragile& f) {
  if (f.job.n < 0) throw std::invalid_argument("job " + std::to_string(f.job.id) + " has no Value form");
  v = pfp::Value{{"id", f.job.id}};
}

}  // namespace contract_test

namespace {

using namespace pfp_test;
using contract_test::Fragile;
using contract_test::Job;
using contract_test::Op;
using contract_test::Sale;
using pfp::Backend;
using pfp::Status;
using Catch::Matchers::Contains;

// =================================================================================================
// Counters every backend can see: a MAP_SHARED page made before any worker is forked, so worker
// processes, threads and the caller all count in the same place.

constexpr std::size_t kMaxJobs = 256;

struct SharedCounters {
  std::atomic<int> calls[kMaxJobs];  // times each job's function was entered
  std::atomic<int> started;          // set by Op::block when it runs
  std::atomic<int> go;               // Op::block returns once it is set
};
static_assert(std::atomic<int>::is_always_lock_free, "the counters are shared between processes");

SharedCounters& counters() {
  static SharedCounters* page = [] {
    void* p = ::mmap(nullptr, sizeof(SharedCounters), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("test_contract_backends: mmap");
      std::abort();
    }
    return new (p) SharedCounters();
  }();
  return *page;
}

void reset_counters() {
  SharedCounters& c = counters();
  for (auto& n : c.calls) n.store(0);
  c.started.store(0);
  c.go.store(0);
}

int calls(const Job& j) { return counters().calls[static_cast<std::size_t>(j.id)].load(); }

int enter(const Job& j) {
  if (j.id < 0 || static_cast<std::size_t>(j.id) >= kMaxJobs) throw std::logic_error("job id out of range");
  return counters().calls[static_cast<std::size_t>(j.id)].fetch_add(1) + 1;
}

// =================================================================================================
// The functions the front ends run.

char* volatile g_sink = nullptr;  // keeps the memory hog's allocation from being optimized away

pfp::Value expected_value(const Job& j) { return pfp::Value{{"id", j.id}, {"n", j.n}}; }

pfp::Value perform(const Job& j) {
  const int attempt = enter(j);
  switch (j.op) {
    case Op::value: return expected_value(j);
    case Op::nap: sleep_ms(j.n); return expected_value(j);
    case Op::throw_runtime: throw std::runtime_error("job " + std::to_string(j.id) + " failed");
    case Op::throw_custom: throw contract_test::custom_error("custom " + std::to_string(j.id));
    case Op::throw_int: throw j.id;
    case Op::flaky:
      if (attempt <= j.n) throw std::runtime_error("attempt " + std::to_string(attempt) + " failed");
      return pfp::Value(attempt);
    case Op::big: return pfp::Value(std::string(static_cast<std::size_t>(j.n), 'x'));
    case Op::deep: {
      pfp::Value v = 1;
      for (int d = 0; d < j.n; ++d) {
        pfp::Value outer = pfp::Value::array();
        outer.push_back(std::move(v));
        v = std::move(outer);
      }
      return v;
    }
    case Op::block: {
      counters().started.store(1);
      const auto guard = Clock::now() + std::chrono::seconds(30);
      while (counters().go.load() == 0 && Clock::now() < guard) sleep_ms(1);
      return expected_value(j);
    }
    case Op::crash_abort: std::abort();
    case Op::crash_exit: ::_exit(j.n);
    case Op::hang:
      for (int i = 0; i < 600; ++i) sleep_ms(100);
      return expected_value(j);
    case Op::hog_memory: {
      const std::size_t size = std::size_t{2} << 30;
      char* p = new char[size];
      std::memset(p, 1, size);
      g_sink = p;
      const int sum = g_sink[0] + g_sink[size - 1];
      delete[] g_sink;
      return pfp::Value(sum);
    }
  }
  throw std::logic_error("unknown op");
}

Sale sell(const Job& j) {
  enter(j);
  return Sale{"item" + std::to_string(j.id), j.n};
}

Fragile fragile(const Job& j) {
  enter(j);
  return Fragile{j};
}

/// Jobs 0 .. count-1 doing `op` with argument `n`.
std::vector<Job> jobs_of(int count, Op op, int n = 0) {
  std::vector<Job> jobs;
  for (int i = 0; i < count; ++i) jobs.push_back(Job{i, op, n});
  return jobs;
}

// =================================================================================================
// Front ends and backends.

enum class Front { multiprocessor, map_results, map_unordered, imap, imap_unordered, executor, executor_stream, manager };

const std::vector<Front> kAllFronts = {Front::multiprocessor, Front::map_results, Front::map_unordered, Front::imap,
                                       Front::imap_unordered, Front::executor,    Front::executor_stream, Front::manager};
const std::vector<Front> kCancellable = {Front::multiprocessor, Front::executor, Front::executor_stream, Front::manager};
const std::vector<Front> kWithConsumer = {Front::map_unordered, Front::imap, Front::imap_unordered, Front::manager};
const std::vector<Front> kExecutors = {Front::executor, Front::executor_stream};
const std::vector<Front> kManager = {Front::manager};

const char* front_name(Front fe) {
  switch (fe) {
    case Front::multiprocessor: return "MultiProcessor::execute_parallel";
    case Front::map_results: return "map_results";
    case Front::map_unordered: return "map_unordered";
    case Front::imap: return "imap";
    case Front::imap_unordered: return "imap_unordered";
    case Front::executor: return "Executor futures";
    case Front::executor_stream: return "Executor next_completed";
    case Front::manager: return "Manager";
  }
  return "?";
}

const char* backend_name(Backend b) { return pfp::to_string(b).data(); }

/// Front ends that hand the Results out in input order (the others: in completion order).
bool ordered(Front fe) {
  return fe == Front::multiprocessor || fe == Front::map_results || fe == Front::imap || fe == Front::executor;
}

/// Front ends whose Results carry Result::attempts (the Manager's ItemLog has no such field).
bool reports_attempts(Front fe) { return fe != Front::manager; }

/// The function_name a front end gives job j: the registered name, the declared name, the
/// Manager's item label; map's items have none.
std::string expected_name(Front fe, const Job& j) {
  switch (fe) {
    case Front::multiprocessor:
    case Front::manager: return "job" + std::to_string(j.id);
    case Front::executor:
    case Front::executor_stream: return "perform";
    default: return "";
  }
}

pfp::Options options_for(Backend b, unsigned workers = 2) {
  pfp::Options o;
  o.backend = b;
  o.workers = workers;
  o.threads = pfp::ThreadPolicy::allow;  // the cancel tests run a thread of their own during the run
  return o;
}

pfp::MapOptions map_options(const pfp::Options& o) {
  pfp::MapOptions mo;
  static_cast<pfp::Options&>(mo) = o;
  mo.chunksize = 1;  // one item per task: a crash or a timeout costs that item only
  return mo;
}

std::string show(const pfp::Result& r) {
  return "#" + std::to_string(r.index) + " '" + r.function_name + "' status=" + std::string(pfp::to_string(r.status)) +
         " error='" + r.error + "' pid=" + std::to_string(r.pid) + " attempts=" + std::to_string(r.attempts) +
         " duration_ns=" + std::to_string(r.duration.count()) + " result=" + r.result.to_json();
}

std::string indices_of(const std::vector<pfp::Result>& rs) {
  std::string s;
  for (const pfp::Result& r : rs) s += (s.empty() ? "" : " ") + std::to_string(r.index);
  return "[" + s + "]";
}

std::string what_of(const std::exception_ptr& e) {
  if (!e) return "nothing";
  try {
    std::rethrow_exception(e);
  } catch (const contract_test::consumer_stop& x) {
    return std::string("contract_test::consumer_stop: ") + x.what();
  } catch (const pfp::task_error& x) {
    return std::string("pfp::task_error: ") + x.what();
  } catch (const std::exception& x) {
    return std::string("std::exception: ") + x.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

// =================================================================================================
// The adapter: one call that runs a list of jobs through any front end.

/// What a front end handed out.
struct Outcome {
  std::vector<pfp::Result> delivered;   ///< in the order the front end handed them out
  std::exception_ptr thrown;            ///< what the front end's call threw
  std::optional<pfp::ExitStatus> exit;  ///< Manager: how the run ended
  std::size_t refused = 0;              ///< Executor: submissions refused (submit() threw pfp::error)
};

/// Optional extras for a run.
struct Hooks {
  /// Called with each Result as the front end hands it out (map_unordered / imap / imap_unordered:
  /// on_result; Manager: the logger, with the item's stats value as result). May throw.
  std::function<void(const pfp::Result&)> consumer;
  /// Runs on a thread of its own during the run, given the front end's cancel()
  /// (MultiProcessor, Executor, Manager).
  std::function<void(const std::function<void()>& cancel)> canceller;
  pfp::ErrorPolicy manager_policy = pfp::ErrorPolicy::continue_on_error;
};

/// Runs hooks.canceller (if any) on a thread from construction to join() or destruction.
class CancellerThread {
 public:
  CancellerThread(const Hooks& hooks, std::function<void()> cancel) {
    if (hooks.canceller) thread_ = std::thread([run = hooks.canceller, stop = std::move(cancel)] { run(stop); });
  }
  ~CancellerThread() { join(); }
  CancellerThread(const CancellerThread&) = delete;
  CancellerThread& operator=(const CancellerThread&) = delete;
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
};

/// The Manager's handler: each item is a Job; its function's value becomes the item's set value
/// "job<id>" in the run's stats (that is how a Manager item hands back data).
struct JobHandler {
  std::vector<Job> jobs;
  std::function<pfp::Value(const Job&)> run;

  std::vector<Job> build_items() { return jobs; }
  std::string log_item(const Job& j) const { return "job" + std::to_string(j.id); }
  void handle_item(const Job& j, pfp::ItemContext& ctx) { ctx.stats.set(log_item(j), run(j)); }
};

/// Runs `jobs` through front end `fe` with options `o`; f(job) is the function (any return type
/// that converts to pfp::Value). Never throws: what the front end throws is in Outcome::thrown.
template <class F>
Outcome run_front(Front fe, const pfp::Options& o, const std::vector<Job>& jobs, F f, const Hooks& hooks = Hooks{}) {
  Outcome out;
  auto consume = [&out, &hooks](pfp::Result&& r) {
    out.delivered.push_back(std::move(r));
    if (hooks.consumer) hooks.consumer(out.delivered.back());
  };
  try {
    switch (fe) {
      case Front::multiprocessor: {
        pfp::MultiProcessor<pfp::Value> mp(pfp::Value(), o);
        for (const Job& j : jobs)
          mp.register_function("job" + std::to_string(j.id), [f](const pfp::Value&, const Job& job) { return f(job); }, j);
        CancellerThread canceller(hooks, [&mp] { mp.cancel(); });
        out.delivered = mp.execute_parallel();
        canceller.join();
        break;
      }
      case Front::map_results: out.delivered = pfp::map_results(map_options(o), f, jobs); break;
      case Front::map_unordered: pfp::map_unordered(map_options(o), f, consume, jobs); break;
      case Front::imap: pfp::imap(map_options(o), f, jobs, consume); break;
      case Front::imap_unordered: pfp::imap_unordered(map_options(o), f, jobs, consume); break;
      case Front::executor:
      case Front::executor_stream: {
        const bool stream = fe == Front::executor_stream;
        pfp::ExecutorOptions queue;
        queue.stream_results = stream;
        pfp::Executor ex(o, queue);
        auto fn = ex.declare("perform", [f](Job job) { return f(job); });
        std::atomic<bool> submitted{false};
        // Cancel once every job is submitted -- except inline, where submit() itself runs the job.
        CancellerThread canceller(hooks, [&] {
          if (o.backend != Backend::inline_) wait_until([&] { return submitted.load(); }, ms(30000), ms(1));
          ex.cancel();
        });
        std::vector<decltype(ex.submit(fn, std::declval<const Job&>()))> futures;
        for (const Job& j : jobs) {
          try {
            futures.push_back(ex.submit(fn, j));
          } catch (const pfp::error&) {
            ++out.refused;
          }
        }
        submitted = true;
        if (stream) {
          ex.close();
          while (std::optional<pfp::Result> r = ex.next_completed()) out.delivered.push_back(std::move(*r));
        } else {
          for (const auto& future : futures) out.delivered.push_back(future.result());
        }
        canceller.join();
        break;
      }
      case Front::manager: {
        pfp::ManagerOptions mo;
        static_cast<pfp::Options&>(mo) = o;
        mo.on_error = hooks.manager_policy;
        mo.progress.mode = pfp::ProgressMode::off;
        mo.handle_sigint = false;
        pfp::Manager<JobHandler>* manager = nullptr;
        mo.logger = [&](const pfp::ItemLog& log) {
          pfp::Result r;
          r.index = static_cast<std::size_t>(log.seq);
          r.function_name = log.label;
          r.status = log.status;
          r.error = log.error;
          r.pid = log.pid;
          r.duration = log.duration;
          if (log.status == Status::ok && manager) r.result = manager->stats().get(log.label);
          consume(std::move(r));
        };
        JobHandler handler;
        handler.jobs = jobs;
        handler.run = [f](const Job& j) { return pfp::Value(f(j)); };
        pfp::Manager<JobHandler> m(handler, mo);
        manager = &m;
        CancellerThread canceller(hooks, [&m] { m.cancel(); });
        out.exit = m.run();
        canceller.join();
        break;
      }
    }
  } catch (...) {
    out.thrown = std::current_exception();
  }
  return out;
}

// =================================================================================================
// Checks shared by the behaviours.

/// The Results of `out` by job position: for a front end that hands them out in input order the
/// i-th one (whose index must be i), otherwise the one whose index is i. Fails the section unless
/// there is exactly one per job.
std::vector<pfp::Result> per_job(Front fe, const Outcome& out, std::size_t n) {
  INFO("indices in the order handed out: " << indices_of(out.delivered));
  REQUIRE(out.delivered.size() == n);
  if (ordered(fe)) {
    for (std::size_t i = 0; i < n; ++i) {
      INFO("position " << i << ": " << show(out.delivered[i]));
      CHECK(out.delivered[i].index == i);
    }
    return out.delivered;
  }
  std::vector<pfp::Result> by_index(n);
  std::vector<int> seen(n, 0);
  for (const pfp::Result& r : out.delivered) {
    REQUIRE(r.index < n);
    by_index[r.index] = r;
    ++seen[r.index];
  }
  for (std::size_t i = 0; i < n; ++i) {
    INFO("index " << i);
    REQUIRE(seen[i] == 1);
  }
  return by_index;
}

void require_nothing_thrown(const Outcome& out) {
  INFO("the front end threw: " << what_of(out.thrown));
  REQUIRE_FALSE(out.thrown);
}

/// The worker that ran a function: a child process with processes, this process otherwise.
void check_ran_here_or_in_worker(Backend b, const pfp::Result& r) {
  if (b == Backend::processes) {
    CHECK(r.pid > 0);
    CHECK(r.pid != static_cast<int>(::getpid()));
  } else {
    CHECK(r.pid == static_cast<int>(::getpid()));
  }
}

/// An ok Result of job j carrying `value`.
void check_ok(Front fe, Backend b, const pfp::Result& r, const Job& j, const pfp::Value& value, unsigned attempts = 1) {
  INFO(show(r));
  CHECK(r.status == Status::ok);
  CHECK(r.error.empty());
  CHECK(r.result == value);
  CHECK(r.function_name == expected_name(fe, j));
  if (reports_attempts(fe)) CHECK(r.attempts == attempts);
  check_ran_here_or_in_worker(b, r);
  CHECK(r.duration.count() >= 0);
}

/// A failed Result of job j: `status`, null result, an error containing `error_part`.
void check_failed(Front fe, const pfp::Result& r, const Job& j, Status status, const std::string& error_part,
                  unsigned attempts = 1) {
  INFO(show(r));
  CHECK(r.status == status);
  CHECK_THAT(r.error, Contains(error_part));
  CHECK(r.result.is_null());
  CHECK(r.function_name == expected_name(fe, j));
  if (reports_attempts(fe)) CHECK(r.attempts == attempts);
  CHECK(r.pid != 0);
  CHECK(r.duration.count() >= 0);
}

/// The Manager's ExitStatus after a continue-on-error run with `failed` failed items.
void check_manager_exit(const Outcome& out, std::size_t items, std::size_t failed) {
  if (!out.exit) return;
  INFO("exit status: " << pfp::to_string(*out.exit));
  CHECK(out.exit->code == (failed ? pfp::ExitStatus::failure : pfp::ExitStatus::success));
  CHECK(out.exit->items_ok == items - failed);
  CHECK(out.exit->items_failed == failed);
  CHECK(out.exit->failures.size() == failed);
}

/// No worker process (nor zombie) outlives a run.
void check_no_worker_left() {
  const std::vector<pid_t> kids = child_pids();
  INFO("children left: " << pids_to_string(kids));
  CHECK(kids.empty());
}

/// Runs behaviour(fe, b) for every front end in `fronts`, each in a SECTION of its own.
void for_each_front(Backend b, const std::vector<Front>& fronts, void (*behaviour)(Front, Backend)) {
  for (Front fe : fronts) {
    SECTION(std::string(front_name(fe))) {
      INFO("backend " << backend_name(b) << ", front end " << front_name(fe));
      behaviour(fe, b);
    }
  }
}

// =================================================================================================
// Behaviours the same on every backend.

/// One Result per task: index = input position, the front end's name, ok, the function's value,
/// one attempt, the pid of what ran it, a duration at least the function's own nap; each function
/// ran exactly once; no worker left.
void one_result_per_task(Front fe, Backend b) {
  reset_counters();
  std::vector<Job> jobs;
  for (int i = 0; i < 12; ++i) jobs.push_back(Job{i, Op::nap, (12 - i) % 4});  // later ones tend to finish first
  const Outcome out = run_front(fe, options_for(b), jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    check_ok(fe, b, rs[i], jobs[i], expected_value(jobs[i]));
    INFO(show(rs[i]));
    // at least the nap (less 10 %: the process backend's task clock is scaled, not exact)
    CHECK(rs[i].duration >= std::chrono::microseconds(900 * jobs[i].n));
    CHECK(calls(jobs[i]) == 1);
  }
  check_manager_exit(out, jobs.size(), 0);
  check_no_worker_left();
}

/// A function that throws gets Status::exception with "<demangled type>: what()" and a null
/// result; the others are unaffected.
void exception_is_its_own_result(Front fe, Backend b) {
  reset_counters();
  const std::vector<Job> jobs{{0, Op::value, 10}, {1, Op::throw_runtime, 0}, {2, Op::value, 20},
                              {3, Op::throw_custom, 0}, {4, Op::throw_int, 0}, {5, Op::value, 30}};
  const Outcome out = run_front(fe, options_for(b), jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  for (std::size_t i : {0u, 2u, 5u}) check_ok(fe, b, rs[i], jobs[i], expected_value(jobs[i]));
  check_failed(fe, rs[1], jobs[1], Status::exception, "std::runtime_error");
  check_failed(fe, rs[3], jobs[3], Status::exception, "contract_test::custom_error");
  check_failed(fe, rs[4], jobs[4], Status::exception, "int");
  CHECK(rs[1].error == "std::runtime_error: job 1 failed");
  CHECK(rs[3].error == "contract_test::custom_error: custom 3");
  CHECK(rs[4].error == "int (not derived from std::exception)");
  for (std::size_t i : {1u, 3u, 4u}) check_ran_here_or_in_worker(b, rs[i]);
  for (const Job& j : jobs) CHECK(calls(j) == 1);
  check_manager_exit(out, jobs.size(), 3);
  check_no_worker_left();
}

/// Options::retries with retry_exceptions repeats a throwing function; Result::attempts says
/// how often it ran, and so do the function's own calls.
void retries_of_exceptions(Front fe, Backend b) {
  struct Case {
    unsigned retries;
    bool retry_exceptions;
    int failures;  // the function throws on its first `failures` attempts
    Status status;
    unsigned attempts;
  };
  const Case cases[] = {
      {2, true, 2, Status::ok, 3},
      {2, false, 2, Status::exception, 1},
      {1, true, 2, Status::exception, 2},
      {5, true, 0, Status::ok, 1},
  };
  for (const Case& c : cases) {
    INFO("retries=" << c.retries << " retry_exceptions=" << c.retry_exceptions << " failures=" << c.failures);
    reset_counters();
    pfp::Options o = options_for(b);
    o.retries = c.retries;
    o.retry_exceptions = c.retry_exceptions;
    const std::vector<Job> jobs = jobs_of(3, Op::flaky, c.failures);
    const Outcome out = run_front(fe, o, jobs, perform);
    require_nothing_thrown(out);
    const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      INFO(show(rs[i]));
      CHECK(calls(jobs[i]) == static_cast<int>(c.attempts));
      if (c.status == Status::ok) {
        check_ok(fe, b, rs[i], jobs[i], pfp::Value(static_cast<int>(c.attempts)), c.attempts);
      } else {
        check_failed(fe, rs[i], jobs[i], c.status, "std::runtime_error", c.attempts);
        CHECK(rs[i].error == "std::runtime_error: attempt " + std::to_string(c.attempts) + " failed");
      }
    }
    check_manager_exit(out, jobs.size(), c.status == Status::ok ? 0 : jobs.size());
  }
}

/// A result larger than Options::max_result_bytes is refused: Status::exception naming the limit.
void result_over_max_result_bytes(Front fe, Backend b) {
  reset_counters();
  pfp::Options o = options_for(b);
  o.max_result_bytes = 1000;
  const std::vector<Job> jobs{{0, Op::value, 1}, {1, Op::big, 5000}, {2, Op::big, 100}, {3, Op::value, 3}};
  const Outcome out = run_front(fe, o, jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  check_ok(fe, b, rs[0], jobs[0], expected_value(jobs[0]));
  check_failed(fe, rs[1], jobs[1], Status::exception, "exceeds Options::max_result_bytes (1000 bytes)");
  check_ok(fe, b, rs[2], jobs[2], pfp::Value(std::string(100, 'x')));
  check_ok(fe, b, rs[3], jobs[3], expected_value(jobs[3]));
  check_manager_exit(out, jobs.size(), 1);
}

/// A result pfp cannot serialize (nested too deep) is that function's Status::exception.
void result_that_cannot_be_serialized(Front fe, Backend b) {
#if defined(PFP_CONTRACT_SHADOW_SANITIZER)
  // The Manager hands an item's value back inside its Stats, whose to_value copies it: a copy of a
  // Value nested 2,000 deep recurses past an 8 MiB stack with a sanitizer's larger frames.
  if (fe == Front::manager) PFP_SKIP("a sanitizer's stack frames are too large to copy a Value nested 2,000 deep");
#endif
  reset_counters();
  const std::vector<Job> jobs{{0, Op::value, 1}, {1, Op::deep, 2010}, {2, Op::value, 2}};
  const Outcome out = run_front(fe, options_for(b), jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  check_ok(fe, b, rs[0], jobs[0], expected_value(jobs[0]));
  check_failed(fe, rs[1], jobs[1], Status::exception, "pfp: could not serialize the result");
  check_ok(fe, b, rs[2], jobs[2], expected_value(jobs[2]));
  check_manager_exit(out, jobs.size(), 1);
}

/// A returned user type whose to_value throws is that function's Status::exception with the
/// conversion's exception.
void result_whose_conversion_throws(Front fe, Backend b) {
  reset_counters();
  const std::vector<Job> jobs{{0, Op::value, 1}, {1, Op::value, -1}, {2, Op::value, 2}};
  const Outcome out = run_front(fe, options_for(b), jobs, fragile);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  check_ok(fe, b, rs[0], jobs[0], pfp::Value{{"id", 0}});
  check_failed(fe, rs[1], jobs[1], Status::exception, "std::invalid_argument");
  CHECK(rs[1].error == "std::invalid_argument: job 1 has no Value form");
  check_ok(fe, b, rs[2], jobs[2], pfp::Value{{"id", 2}});
  check_manager_exit(out, jobs.size(), 1);
}

/// No input: no Result, nothing thrown, no worker left.
void empty_input(Front fe, Backend b) {
  reset_counters();
  int consumed = 0;
  Hooks hooks;
  hooks.consumer = [&consumed](const pfp::Result&) { ++consumed; };
  const Outcome out = run_front(fe, options_for(b), std::vector<Job>{}, perform, hooks);
  require_nothing_thrown(out);
  CHECK(out.delivered.empty());
  CHECK(consumed == 0);
  if (out.exit) {
    INFO("exit status: " << pfp::to_string(*out.exit));
    CHECK(out.exit->ok());
    CHECK(out.exit->items_ok == 0);
    CHECK(out.exit->items_failed == 0);
  }
  check_no_worker_left();
}

/// User types both ways: Job in (inherited, or through to_value/from_value where the front end
/// serializes its inputs), Sale out (to_value where it ran, from_value in the caller).
void user_types_through_adl(Front fe, Backend b) {
  reset_counters();
  std::vector<Job> jobs;
  for (int i = 0; i < 6; ++i) jobs.push_back(Job{i, Op::value, 3 * i + 1});
  const Outcome out = run_front(fe, options_for(b), jobs, sell);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    const Sale want{"item" + std::to_string(i), jobs[i].n};
    check_ok(fe, b, rs[i], jobs[i], pfp::Value{{"item", want.item}, {"qty", want.qty}});
    if (rs[i].ok()) CHECK(rs[i].result.as<Sale>() == want);
  }
}

/// A cancel while the first of six functions runs (on one worker): the run ends; the function
/// that was running is killed (processes: Status::cancelled "while running", pid set) or finishes
/// with its own verdict (threads, inline: a thread cannot be killed); the functions that had not
/// started never run and end as Status::cancelled "before it started", pid 0, attempts 0.
void cancel_while_the_first_runs(Front fe, Backend b) {
  reset_counters();
  std::vector<Job> jobs = jobs_of(6, Op::value, 7);
  jobs[0].op = Op::block;
  Hooks hooks;
  hooks.canceller = [b](const std::function<void()>& cancel) {
    wait_until([] { return counters().started.load() != 0; }, ms(30000), ms(1));
    cancel();
    if (b != Backend::processes) counters().go.store(1);  // in-process: let the running function finish
  };
  const Outcome out = run_front(fe, options_for(b, 1), jobs, perform, hooks);
  counters().go.store(1);
  require_nothing_thrown(out);
  CHECK(counters().started.load() == 1);
  const bool killed = b == Backend::processes;

  auto check_verdict = [&](const pfp::Result& r, std::size_t i) {
    INFO("job " << i << ": " << show(r));
    if (i == 0 && killed) {
      CHECK(r.status == Status::cancelled);
      CHECK_THAT(r.error, Contains("cancelled while running"));
      CHECK(r.pid > 0);
      if (reports_attempts(fe)) CHECK(r.attempts == 1);
    } else if (i == 0) {
      CHECK(r.status == Status::ok);
      CHECK(r.result == expected_value(jobs[0]));
      CHECK(r.pid == static_cast<int>(::getpid()));
    } else {
      CHECK(r.status == Status::cancelled);
      CHECK_THAT(r.error, Contains("cancelled before it started"));
      CHECK(r.pid == 0);
      if (reports_attempts(fe)) CHECK(r.attempts == 0);
    }
    if (!r.ok()) CHECK(r.result.is_null());
  };

  if (fe == Front::manager) {
    // A Manager reports the items it handed out; the others were never taken from the source.
    REQUIRE(out.exit.has_value());
    INFO("exit status: " << pfp::to_string(*out.exit));
    CHECK(out.exit->code == pfp::ExitStatus::cancelled);
    CHECK(out.exit->message == "Cancelled");
    CHECK(out.exit->items_failed == 0);
    CHECK(out.exit->items_ok == (killed ? 0u : 1u));
    for (const pfp::Result& r : out.delivered) check_verdict(r, r.index);
  } else if ((fe == Front::executor || fe == Front::executor_stream) && b == Backend::inline_) {
    // Inline, submit() runs the function: the cancel comes while the first submit() runs, and the
    // executor, cancelled and closed, refuses the submissions after it.
    CHECK(out.refused == jobs.size() - 1);
    REQUIRE(out.delivered.size() == 1);
    check_verdict(out.delivered[0], 0);
    CHECK(out.delivered[0].index == 0);
  } else {
    const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
    for (std::size_t i = 0; i < jobs.size(); ++i) check_verdict(rs[i], i);
  }
  for (std::size_t i = 1; i < jobs.size(); ++i) CHECK(calls(jobs[i]) == 0);
  check_no_worker_left();
}

/// A consumer (on_result, the Manager's logger) that throws stops the run, and what it threw
/// comes out of the front end's call (the Manager: as the run's failure message). Functions
/// not yet started never run.
void consumer_that_throws_stops_the_run(Front fe, Backend b) {
  reset_counters();
  const std::vector<Job> jobs = jobs_of(100, Op::nap, 5);
  std::vector<pfp::Result> seen;
  Hooks hooks;
  hooks.consumer = [&seen](const pfp::Result& r) {
    seen.push_back(r);
    if (seen.size() == 3) throw contract_test::consumer_stop("the consumer stops at its third result");
  };
  const Outcome out = run_front(fe, options_for(b), jobs, perform, hooks);
  const std::string want = "contract_test::consumer_stop: the consumer stops at its third result";
  if (fe == Front::manager) {
    REQUIRE(out.exit.has_value());
    INFO("exit status: " << pfp::to_string(*out.exit));
    CHECK(out.exit->code == pfp::ExitStatus::failure);
    CHECK_THAT(out.exit->message, Contains(want));
  } else {
    CHECK(what_of(out.thrown) == want);
  }
  REQUIRE(seen.size() >= 3);
  for (std::size_t k = 0; k < 3; ++k) {
    INFO(show(seen[k]));
    CHECK(seen[k].ok());
    if (ordered(fe)) CHECK(seen[k].index == k);
  }
  int ran = 0;
  for (const Job& j : jobs) ran += calls(j);
  INFO("functions that ran: " << ran << " of " << jobs.size());
  CHECK(ran >= 3);
  CHECK(ran < static_cast<int>(jobs.size()));
  check_no_worker_left();
}

/// Manager fail-fast: the first failure stops the run and names the item.
void manager_fail_fast(Front fe, Backend b) {
  reset_counters();
  std::vector<Job> jobs = jobs_of(100, Op::nap, 5);
  jobs[3].op = Op::throw_runtime;
  Hooks hooks;
  hooks.manager_policy = pfp::ErrorPolicy::fail_fast;
  const Outcome out = run_front(fe, options_for(b), jobs, perform, hooks);
  require_nothing_thrown(out);
  REQUIRE(out.exit.has_value());
  INFO("exit status: " << pfp::to_string(*out.exit));
  CHECK(out.exit->code == pfp::ExitStatus::failure);
  CHECK(out.exit->message == "exception: std::runtime_error: job 3 failed");
  CHECK(out.exit->error_target == std::optional<std::string>("job3"));
  CHECK(out.exit->items_failed == 1);
  REQUIRE(out.exit->failures.size() == 1);
  CHECK(out.exit->failures[0].label == "job3");
  CHECK(out.exit->failures[0].status == Status::exception);
  int ran = 0;
  for (const Job& j : jobs) ran += calls(j);
  INFO("functions that ran: " << ran << " of " << jobs.size());
  CHECK(ran < static_cast<int>(jobs.size()));
  check_no_worker_left();
}

/// Four submissions in order: their Results are numbered 0 1 2 3, as everywhere else.
void executor_indices_follow_submissions(Front fe, Backend b) {
  reset_counters();
  const std::vector<Job> jobs = jobs_of(4, Op::value, 1);
  const Outcome out = run_front(fe, options_for(b), jobs, perform);
  require_nothing_thrown(out);
  std::vector<std::size_t> indices;
  for (const pfp::Result& r : out.delivered) indices.push_back(r.index);
  if (!ordered(fe)) std::sort(indices.begin(), indices.end());
  CHECK(indices == std::vector<std::size_t>{0, 1, 2, 3});
}

// =================================================================================================
// Behaviours that need isolation: Backend::processes only.

/// A crash (abort, _exit) is that function's Status::crashed naming the signal or exit code.
void crash_is_its_own_result(Front fe, Backend b) {
  reset_counters();
  const std::vector<Job> jobs{{0, Op::value, 1}, {1, Op::crash_abort, 0}, {2, Op::value, 2}, {3, Op::crash_exit, 3},
                              {4, Op::value, 4}};
  const Outcome out = run_front(fe, options_for(b), jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  for (std::size_t i : {0u, 2u, 4u}) check_ok(fe, b, rs[i], jobs[i], expected_value(jobs[i]));
  check_failed(fe, rs[1], jobs[1], Status::crashed, "SIGABRT");
  check_failed(fe, rs[3], jobs[3], Status::crashed, "exit code 3");
  for (const Job& j : jobs) CHECK(calls(j) == 1);
  check_manager_exit(out, jobs.size(), 2);
  check_no_worker_left();
}

/// Options::retries repeats a crashed function (on a fresh worker); attempts counts them.
void crash_is_retried(Front fe, Backend b) {
  reset_counters();
  pfp::Options o = options_for(b);
  o.retries = 1;
  const std::vector<Job> jobs{{0, Op::value, 1}, {1, Op::crash_abort, 0}, {2, Op::value, 2}};
  const Outcome out = run_front(fe, o, jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  check_ok(fe, b, rs[0], jobs[0], expected_value(jobs[0]));
  check_failed(fe, rs[1], jobs[1], Status::crashed, "SIGABRT", 2);
  check_ok(fe, b, rs[2], jobs[2], expected_value(jobs[2]));
  CHECK(calls(jobs[0]) == 1);
  CHECK(calls(jobs[1]) == 2);
  CHECK(calls(jobs[2]) == 1);
  check_manager_exit(out, jobs.size(), 1);
  check_no_worker_left();
}

/// A function past Options::timeout is killed: Status::timed_out naming the limit.
void timeout_is_its_own_result(Front fe, Backend b) {
  reset_counters();
  pfp::Options o = options_for(b);
  o.timeout = std::chrono::milliseconds(1000);
  const std::vector<Job> jobs{{0, Op::value, 1}, {1, Op::hang, 0}, {2, Op::value, 2}};
  const Outcome out = run_front(fe, o, jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  check_ok(fe, b, rs[0], jobs[0], expected_value(jobs[0]));
  check_failed(fe, rs[1], jobs[1], Status::timed_out, "1000 ms");
  check_ok(fe, b, rs[2], jobs[2], expected_value(jobs[2]));
  check_manager_exit(out, jobs.size(), 1);
  check_no_worker_left();
}

/// An allocation past Options::memory_limit is that function's std::bad_alloc, naming the limit.
void memory_limit_is_its_own_result(Front fe, Backend b) {
#if defined(PFP_CONTRACT_SHADOW_SANITIZER)
  (void)fe;
  (void)b;
  PFP_SKIP("RLIMIT_AS breaks the shadow memory of AddressSanitizer/ThreadSanitizer builds");
#else
  reset_counters();
  pfp::Options o = options_for(b);
  o.memory_limit = std::size_t{512} << 20;
  const std::vector<Job> jobs{{0, Op::value, 1}, {1, Op::hog_memory, 0}, {2, Op::value, 2}};
  const Outcome out = run_front(fe, o, jobs, perform);
  require_nothing_thrown(out);
  const std::vector<pfp::Result> rs = per_job(fe, out, jobs.size());
  check_ok(fe, b, rs[0], jobs[0], expected_value(jobs[0]));
  check_failed(fe, rs[1], jobs[1], Status::exception, "std::bad_alloc");
  CHECK_THAT(rs[1].error, Contains("memory_limit"));
  check_ok(fe, b, rs[2], jobs[2], expected_value(jobs[2]));
  check_manager_exit(out, jobs.size(), 1);
  check_no_worker_left();
#endif
}

}  // namespace

// =================================================================================================
// The instances: one TEST_CASE per behaviour and backend, one SECTION per front end.

#define PFP_CONTRACT_ON(title, backend_tag, backend, behaviour, fronts)   \
  TEST_CASE("contract: " title " - " backend_tag, "[contract][" backend_tag "]") { \
    for_each_front(backend, fronts, behaviour);                            \
  }

/// Every backend. A new backend is one more line here.
#define PFP_CONTRACT(title, behaviour, fronts)                                        \
  PFP_CONTRACT_ON(title, "processes", pfp::Backend::processes, behaviour, fronts)     \
  PFP_CONTRACT_ON(title, "threads", pfp::Backend::threads, behaviour, fronts)         \
  PFP_CONTRACT_ON(title, "inline", pfp::Backend::inline_, behaviour, fronts)

/// Behaviours that need isolation.
#define PFP_CONTRACT_ISOLATED(title, behaviour, fronts) \
  PFP_CONTRACT_ON(title, "processes", pfp::Backend::processes, behaviour, fronts)

PFP_CONTRACT("one Result per task in input order with its name and value", one_result_per_task, kAllFronts)
PFP_CONTRACT("a throwing function is Status::exception with type and what()", exception_is_its_own_result, kAllFronts)
PFP_CONTRACT("retry_exceptions retries a throwing function and attempts counts", retries_of_exceptions, kAllFronts)
PFP_CONTRACT("a result over max_result_bytes is refused", result_over_max_result_bytes, kAllFronts)
PFP_CONTRACT("a result that cannot be serialized is Status::exception", result_that_cannot_be_serialized, kAllFronts)
PFP_CONTRACT("a result whose to_value throws is Status::exception", result_whose_conversion_throws, kAllFronts)
PFP_CONTRACT("empty input gives no Result and starts no worker", empty_input, kAllFronts)
PFP_CONTRACT("user types travel through to_value and from_value", user_types_through_adl, kAllFronts)
PFP_CONTRACT("cancel while the first function runs", cancel_while_the_first_runs, kCancellable)
PFP_CONTRACT("a consumer that throws stops the run and is rethrown", consumer_that_throws_stops_the_run, kWithConsumer)
PFP_CONTRACT("Manager fail-fast stops at the first failure and names it", manager_fail_fast, kManager)
PFP_CONTRACT("Executor result().index is 0 1 2 3 for four submissions", executor_indices_follow_submissions, kExecutors)

PFP_CONTRACT_ISOLATED("a crash is Status::crashed and costs that function only", crash_is_its_own_result, kAllFronts)
PFP_CONTRACT_ISOLATED("retries repeat a crashed function and attempts counts", crash_is_retried, kAllFronts)
PFP_CONTRACT_ISOLATED("a function past the timeout is Status::timed_out", timeout_is_its_own_result, kAllFronts)
PFP_CONTRACT_ISOLATED("an allocation past memory_limit is std::bad_alloc", memory_limit_is_its_own_result, kAllFronts)

// pfp::map returns values, not Results: its contract gets a test of its own per backend.
namespace {
void map_values_and_first_failure(Backend b) {
  reset_counters();
  std::vector<Job> jobs;
  for (int i = 0; i < 8; ++i) jobs.push_back(Job{i, Op::value, 2 * i});
  const pfp::MapOptions mo = map_options(options_for(b));
  std::vector<Sale> want;
  for (const Job& j : jobs) want.push_back(Sale{"item" + std::to_string(j.id), j.n});
  CHECK(pfp::map(mo, sell, jobs) == want);  // in input order, through from_value

  reset_counters();
  jobs[2].op = Op::throw_runtime;
  jobs[5].op = Op::throw_custom;
  try {
    pfp::map(mo, perform, jobs);
    FAIL("pfp::map did not throw");
  } catch (const pfp::task_error& e) {
    INFO(show(e.result()));
    CHECK(e.result().index == 2);  // the first failure in input order
    CHECK(e.result().status == Status::exception);
    CHECK(e.result().error == "std::runtime_error: job 2 failed");
  }
  for (const Job& j : jobs) CHECK(calls(j) == 1);  // thrown after every item ran
  check_no_worker_left();
}
}  // namespace

TEST_CASE("contract: pfp::map returns values in order and throws the first failure - processes", "[contract][processes]") {
  map_values_and_first_failure(pfp::Backend::processes);
}
TEST_CASE("contract: pfp::map returns values in order and throws the first failure - threads", "[contract][threads]") {
  map_values_and_first_failure(pfp::Backend::threads);
}
TEST_CASE("contract: pfp::map returns values in order and throws the first failure - inline", "[contract][inline]") {
  map_values_and_first_failure(pfp::Backend::inline_);
}
