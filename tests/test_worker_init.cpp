// Per-worker set-up and tear-down (issue 12, items 1 and 2): Options::initializer, Options::finalizer,
// pfp::worker_state<State>() and pfp::this_worker(), on every backend and every front end; failed
// starts (a throw, a crash, a hang) that break the run after a bounded number of tries instead of
// forking forever; the coverage flush before a worker's _exit; seeds derived from the worker number.
//
// What workers do is seen through a log file every worker appends whole lines to (O_APPEND: one
// write() per line), read by the test after the run: that is how a finalizer is shown to have run
// in a worker process that has since exited.
#include "pfp_catch.hpp"
#include "test_support.hpp"

#include <pfp/pfp.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using pfp::Backend;
using pfp::Status;
using pfp_test::Clock;
using pfp_test::elapsed_ms;
using pfp_test::ms;

namespace {

// The coverage flush (worker_life.hpp) calls __gcov_dump through a weak reference before a
// worker process leaves. This test program is not built with coverage, so it defines the symbol
// itself and sees the calls in the log. A --coverage build of the tests brings the real one:
// define PFP_TEST_REAL_COVERAGE there, which leaves this definition and its test out.
#if !defined(PFP_TEST_REAL_COVERAGE)
std::atomic<int> gcov_log_fd{-1};
#endif

}  // namespace

#if !defined(PFP_TEST_REAL_COVERAGE)
extern "C" void __gcov_dump(void) {
  const int fd = gcov_log_fd.load();
  if (fd >= 0) {
    const std::string line = "gcov " + std::to_string(::getpid()) + "\n";
    (void)!::write(fd, line.data(), line.size());
  }
}
#endif

namespace {

const Backend all_backends[] = {Backend::processes, Backend::threads, Backend::inline_};

const char* name_of(Backend b) {
  switch (b) {
    case Backend::processes: return "processes";
    case Backend::threads: return "threads";
    case Backend::inline_: return "inline";
    case Backend::mpi: return "mpi";
  }
  return "?";
}

/// A file that workers append lines to and the test reads back.
class Log {
 public:
  Log() {
    char path[] = "/tmp/pfp_worker_init_XXXXXX";
    fd_ = ::mkstemp(path);
    REQUIRE(fd_ >= 0);
    path_ = path;
    ::close(fd_);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    REQUIRE(fd_ >= 0);
  }
  ~Log() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  Log(const Log&) = delete;
  Log& operator=(const Log&) = delete;

  void write(const std::string& line) const {
    const std::string l = line + "\n";
    (void)!::write(fd_, l.data(), l.size());
  }
  int fd() const { return fd_; }
  std::vector<std::string> lines() const {
    std::ifstream in(path_);
    std::vector<std::string> out;
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  }
  /// The lines that begin with `word `, split into their words after it.
  std::vector<std::vector<std::string>> lines_of(const std::string& word) const {
    std::vector<std::vector<std::string>> out;
    for (const std::string& l : lines()) {
      std::istringstream in(l);
      std::string first;
      in >> first;
      if (first != word) continue;
      std::vector<std::string> rest;
      for (std::string w; in >> w;) rest.push_back(w);
      out.push_back(rest);
    }
    return out;
  }

 private:
  int fd_ = -1;
  std::string path_;
};

/// The worker's state in most tests: a connection-like object that counts its calls and says at
/// its end (the finalizer) how many it served.
struct Conn {
  unsigned number = 0;
  unsigned generation = 0;
  int calls = 0;
  int magic = 42;
};

pfp::Options plain(Backend b, unsigned workers) {
  pfp::Options o;
  o.backend = b;
  o.workers = workers;
  o.threads = pfp::ThreadPolicy::allow;
  return o;
}

pfp::Options with_hooks(Backend b, unsigned workers, const Log& log) {
  pfp::Options o = plain(b, workers);
  o.initializer = [&log](const pfp::WorkerInfo& w) {
    log.write("init " + std::to_string(w.number) + " " + std::to_string(w.generation) + " " +
              std::to_string(w.workers) + " " + std::to_string(::getpid()));
    return Conn{w.number, w.generation, 0, 42};
  };
  o.finalizer = [&log](const pfp::WorkerInfo& w) {
    const Conn& c = pfp::worker_state<Conn>();
    log.write("fini " + std::to_string(w.number) + " " + std::to_string(w.generation) + " " + std::to_string(c.calls) +
              " " + std::to_string(::getpid()));
  };
  return o;
}

/// What every function does: one call on its worker's connection; returns [number, calls so far].
pfp::Value use_conn(int) {
  Conn& c = pfp::worker_state<Conn>();
  if (c.number != pfp::this_worker().number) throw std::runtime_error("state of another worker");
  ++c.calls;
  return pfp::Value::array({static_cast<long long>(c.number), static_cast<long long>(c.calls)});
}

enum class Front { multiprocessor, map_results, imap, executor, manager };
const Front all_fronts[] = {Front::multiprocessor, Front::map_results, Front::imap, Front::executor, Front::manager};

const char* name_of(Front f) {
  switch (f) {
    case Front::multiprocessor: return "MultiProcessor";
    case Front::map_results: return "map_results";
    case Front::imap: return "imap";
    case Front::executor: return "Executor";
    case Front::manager: return "Manager";
  }
  return "?";
}

struct NumberItems {
  int count = 0;
  std::function<pfp::Value(int)> f;
  auto build_items() { return pfp::iota(0, count); }
  void handle_item(int n, pfp::ItemContext& ctx) { ctx.stats.set("item" + std::to_string(n), f(n)); }
};

/// A Result for an item the front end refused (a broken run's imap or Executor throws pfp::error
/// for what it did not take): cancelled, with the error's text.
pfp::Result refused(const pfp::error& e) {
  pfp::Result r;
  r.status = Status::cancelled;
  r.error = std::string("refused: ") + e.what();
  return r;
}

/// Runs f over 0 .. n-1 through front end `fe`: one Result per item, by item (status, error, result).
std::vector<pfp::Result> run_front(Front fe, const pfp::Options& o, int n, std::function<pfp::Value(int)> f) {
  std::vector<int> items(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) items[static_cast<std::size_t>(i)] = i;
  std::vector<pfp::Result> out(static_cast<std::size_t>(n));
  pfp::MapOptions mo;
  static_cast<pfp::Options&>(mo) = o;
  mo.chunksize = 1;
  switch (fe) {
    case Front::multiprocessor: {
      pfp::MultiProcessor<int> mp(0, o);
      for (int i = 0; i < n; ++i) mp.register_function("f", [f](const int&, const int& k) { return f(k); }, i);
      out = mp.execute_parallel();
      break;
    }
    case Front::map_results: out = pfp::map_results(mo, f, items); break;
    case Front::imap: {
      std::vector<bool> got(static_cast<std::size_t>(n), false);
      try {
        pfp::imap(mo, f, items, [&](pfp::Result&& r) {
          got[r.index] = true;
          out[r.index] = std::move(r);
        });
      } catch (const pfp::error& e) {  // the run could not go on: the items it never took
        for (std::size_t i = 0; i < got.size(); ++i)
          if (!got[i]) out[i] = refused(e);
      }
      break;
    }
    case Front::executor: {
      pfp::Executor ex(o);
      auto fn = ex.declare("f", [f](int k) { return f(k); });
      std::vector<std::optional<pfp::Future<pfp::Value>>> futures;
      for (int i = 0; i < n; ++i) {
        try {
          futures.emplace_back(ex.submit(fn, i));
        } catch (const pfp::error& e) {  // a broken executor refuses what comes after
          futures.emplace_back();
          out[static_cast<std::size_t>(i)] = refused(e);
        }
      }
      for (std::size_t i = 0; i < futures.size(); ++i)
        if (futures[i]) out[i] = futures[i]->result();
      ex.shutdown();  // the workers leave: their finalizers have run when it returns
      break;
    }
    case Front::manager: {
      pfp::ManagerOptions mgr;
      static_cast<pfp::Options&>(mgr) = o;
      mgr.progress.mode = pfp::ProgressMode::off;
      mgr.handle_sigint = false;
      mgr.on_error = pfp::ErrorPolicy::continue_on_error;  // every item gets its own verdict
      mgr.logger = [&](const pfp::ItemLog& log) {
        pfp::Result& r = out[static_cast<std::size_t>(log.seq)];
        r.status = log.status;
        r.error = log.error;
      };
      pfp::Manager<NumberItems> m(NumberItems{n, f}, mgr);
      const pfp::ExitStatus st = m.run();
      for (int i = 0; i < n; ++i) {
        pfp::Result& r = out[static_cast<std::size_t>(i)];
        if (r.status == Status::ok) r.result = st.stats.get("item" + std::to_string(i));
      }
      break;
    }
  }
  return out;
}

std::string show(const pfp::Result& r) {
  return std::string(pfp::to_string(r.status)) + " [" + r.error + "] " + r.result.to_json();
}

}  // namespace

TEST_CASE("initializer and finalizer: once per worker, its state reaches every function, on every backend and front end") {
  for (Backend b : all_backends) {
    for (Front fe : all_fronts) {
      INFO(name_of(b) << " / " << name_of(fe));
      Log log;
      const int n = 24;
      const std::vector<pfp::Result> rs = run_front(fe, with_hooks(b, 2, log), n, use_conn);
      const unsigned workers = b == Backend::inline_ ? 1 : 2;
      int ran = 0;
      for (const pfp::Result& r : rs) {
        INFO(show(r));
        REQUIRE(r.status == Status::ok);
        if (fe != Front::manager) {
          REQUIRE(r.result.at(0).as<unsigned>() < workers);
          REQUIRE(r.result.at(1).as<int>() >= 1);
        }
        ++ran;
      }
      REQUIRE(ran == n);
      const auto inits = log.lines_of("init");
      const auto finis = log.lines_of("fini");
      INFO("log:\n" << [&] {
        std::string s;
        for (const std::string& l : log.lines()) s += l + "\n";
        return s;
      }());
      // One start per worker (no replacements here), numbered 0 .. workers-1, each ended once.
      REQUIRE(inits.size() == workers);
      REQUIRE(finis.size() == workers);
      std::set<std::string> numbers;
      for (const auto& l : inits) {
        numbers.insert(l[0]);
        CHECK(l[1] == "0");                          // first generation
        CHECK(l[2] == std::to_string(workers));      // WorkerInfo::workers
      }
      CHECK(numbers.size() == workers);
      int served = 0;
      for (const auto& l : finis) {
        CHECK(numbers.count(l[0]) == 1);
        served += std::stoi(l[2]);
      }
      // Every function ran on its worker's own state, and the finalizers saw all of them.
      CHECK(served == n);
      if (b == Backend::processes) {
        // The finalizer ran in the process that ran the initializer of the same number.
        std::map<std::string, std::string> pid_of;
        for (const auto& l : inits) pid_of[l[0]] = l[3];
        for (const auto& l : finis) CHECK(pid_of[l[0]] == l[3]);
        for (const auto& l : inits) CHECK(l[3] != std::to_string(::getpid()));
      }
    }
  }
}

TEST_CASE("initializer and finalizer: a replaced worker (max_tasks_per_worker) keeps its number, next generation") {
  Log log;
  pfp::Options o = with_hooks(Backend::processes, 1, log);
  o.max_tasks_per_worker = 2;
  const std::vector<pfp::Result> rs = run_front(Front::multiprocessor, o, 6, use_conn);
  for (const pfp::Result& r : rs) {
    INFO(show(r));
    REQUIRE(r.ok());
    CHECK(r.result.at(0).as<int>() == 0);
    CHECK(r.result.at(1).as<int>() <= 2);
  }
  const auto inits = log.lines_of("init");
  const auto finis = log.lines_of("fini");
  REQUIRE(inits.size() == 3);
  REQUIRE(finis.size() == 3);  // a worker that leaves after its allowance runs its finalizer too
  std::set<std::string> generations, pids;
  for (const auto& l : inits) {
    CHECK(l[0] == "0");
    generations.insert(l[1]);
    pids.insert(l[3]);
  }
  CHECK(generations == std::set<std::string>{"0", "1", "2"});
  CHECK(pids.size() == 3);
  for (const auto& l : finis) CHECK(l[2] == "2");
}

#if !defined(PFP_TEST_REAL_COVERAGE)
TEST_CASE("initializer: a worker process flushes coverage data before it leaves") {
  Log log;
  gcov_log_fd = log.fd();
  pfp::Options o = with_hooks(Backend::processes, 2, log);
  o.max_tasks_per_worker = 3;
  const std::vector<pfp::Result> rs = run_front(Front::multiprocessor, o, 6, use_conn);
  gcov_log_fd = -1;
  for (const pfp::Result& r : rs) REQUIRE(r.ok());
  const auto finis = log.lines_of("fini");
  const auto dumps = log.lines_of("gcov");
  REQUIRE(finis.size() >= 2);
  // Each worker that left dumped once, after its finalizer (lines of one process are in order).
  std::set<std::string> fini_pids, dump_pids;
  for (const auto& l : finis) fini_pids.insert(l[3]);
  for (const auto& l : dumps) dump_pids.insert(l[0]);
  CHECK(dumps.size() == finis.size());
  CHECK(fini_pids == dump_pids);
  const std::vector<std::string> lines = log.lines();
  for (const std::string& pid : fini_pids) {
    std::size_t at_fini = 0, at_dump = 0;
    for (std::size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].rfind("fini ", 0) == 0 && lines[i].size() >= pid.size() &&
          lines[i].compare(lines[i].size() - pid.size(), pid.size(), pid) == 0)
        at_fini = i;
      if (lines[i] == "gcov " + pid) at_dump = i;
    }
    CHECK(at_fini < at_dump);
  }
}
#endif

TEST_CASE("initializer: state without a finalizer, set-up without state, and what worker_state says when misused") {
  for (Backend b : all_backends) {
    INFO(name_of(b));
    pfp::Options o = plain(b, 2);
    SECTION("a state that cannot be moved comes as a std::unique_ptr") {
      struct Pinned {
        explicit Pinned(unsigned n) : number(n) {}
        Pinned(const Pinned&) = delete;
        Pinned& operator=(const Pinned&) = delete;
        unsigned number;
      };
      o.initializer = [](const pfp::WorkerInfo& w) { return std::make_unique<Pinned>(w.number + 100); };
      const auto rs = run_front(Front::map_results, o, 6, [](int) {
        return pfp::Value(static_cast<long long>(pfp::worker_state<const Pinned>().number));
      });
      for (const auto& r : rs) {
        INFO(show(r));
        REQUIRE(r.ok());
        CHECK(r.result.as<unsigned>() >= 100);
      }
    }
    SECTION("the wrong type, no state, and no initializer are refused with what to do") {
      o.initializer = [](const pfp::WorkerInfo& w) { return Conn{w.number, 0, 0, 42}; };
      auto rs = run_front(Front::map_results, o, 2, [](int) { return pfp::Value(pfp::worker_state<int>()); });
      for (const auto& r : rs) {
        REQUIRE(r.status == Status::exception);
        CHECK_THAT(r.error, Catch::Matchers::Contains("the worker's state is a") &&
                                Catch::Matchers::Contains("Conn"));
      }
      o.initializer = [](const pfp::WorkerInfo&) {};
      rs = run_front(Front::map_results, o, 2, [](int) { return pfp::Value(pfp::worker_state<Conn>().magic); });
      for (const auto& r : rs) CHECK_THAT(r.error, Catch::Matchers::Contains("returns nothing; return the state"));
      o.initializer = nullptr;
      rs = run_front(Front::map_results, o, 2, [](int) { return pfp::Value(pfp::worker_state<Conn>().magic); });
      for (const auto& r : rs) CHECK_THAT(r.error, Catch::Matchers::Contains("no Options::initializer is set"));
      // The worker number is there without any initializer.
      rs = run_front(Front::map_results, o, 4, [](int) { return pfp::Value(static_cast<long long>(pfp::this_worker().number)); });
      for (const auto& r : rs) {
        REQUIRE(r.ok());
        CHECK(r.result.as<unsigned>() < 2);
      }
    }
  }
  // In the parent, outside any worker.
  REQUIRE_THROWS_WITH(pfp::this_worker(), Catch::Matchers::Contains("outside a pfp worker"));
  REQUIRE_THROWS_WITH(pfp::worker_state<Conn>(), Catch::Matchers::Contains("outside a pfp worker"));
}

TEST_CASE("initializer that always throws: the run is broken after a bounded number of starts, on every backend and front end") {
  for (Backend b : all_backends) {
    for (Front fe : all_fronts) {
      INFO(name_of(b) << " / " << name_of(fe));
      Log log;
      pfp::Options o = with_hooks(b, 2, log);
      o.initializer = [&log](const pfp::WorkerInfo& w) -> Conn {
        log.write("init " + std::to_string(w.number) + " " + std::to_string(w.generation));
        throw std::runtime_error("no database at /nonexistent");
      };
      const auto start = Clock::now();
      const std::vector<pfp::Result> rs = run_front(fe, o, 20, use_conn);
      CHECK(elapsed_ms(start) < 30000);
      for (const pfp::Result& r : rs) {
        INFO(show(r));
        REQUIRE(r.status == Status::cancelled);
        CHECK_THAT(r.error, Catch::Matchers::Contains("initializer failed 3 times in a row") &&
                                Catch::Matchers::Contains("std::runtime_error: no database at /nonexistent"));
      }
      // Bounded: at most 3 starts per worker number, and no finalizer for a worker that never started.
      const auto inits = log.lines_of("init");
      CHECK(inits.size() >= 3);
      CHECK(inits.size() <= 3 * 2);
      CHECK(log.lines_of("fini").empty());
    }
  }
}

TEST_CASE("initializer that crashes or hangs its worker process: bounded starts, the cause in every Result") {
  SECTION("abort()") {
    Log log;
    pfp::Options o = with_hooks(Backend::processes, 2, log);
    o.initializer = [&log](const pfp::WorkerInfo& w) {
      log.write("init " + std::to_string(w.number));
      std::abort();
    };
    const std::vector<pfp::Result> rs = run_front(Front::multiprocessor, o, 10, use_conn);
    for (const pfp::Result& r : rs) {
      INFO(show(r));
      REQUIRE(r.status == Status::cancelled);
      CHECK_THAT(r.error, Catch::Matchers::Contains("initializer failed") && Catch::Matchers::Contains("SIGABRT") &&
                              Catch::Matchers::Contains("while running the initializer"));
    }
    CHECK(log.lines_of("init").size() <= 6);
  }
  SECTION("past Options::timeout") {
    Log log;
    pfp::Options o = with_hooks(Backend::processes, 1, log);
    o.timeout = ms(200);
    o.initializer = [&log](const pfp::WorkerInfo& w) {
      log.write("init " + std::to_string(w.number));
      std::this_thread::sleep_for(std::chrono::seconds(60));
    };
    const auto start = Clock::now();
    const std::vector<pfp::Result> rs = run_front(Front::executor, o, 4, use_conn);
    CHECK(elapsed_ms(start) < 30000);
    for (const pfp::Result& r : rs) {
      INFO(show(r));
      REQUIRE(r.status == Status::cancelled);
      CHECK_THAT(r.error, Catch::Matchers::Contains("initializer ran past Options::timeout (200 ms)"));
    }
    CHECK(log.lines_of("init").size() == 3);
  }
}

TEST_CASE("initializer that fails once: the next start of that worker number takes over, and no task is lost") {
  for (Backend b : all_backends) {
    for (Front fe : {Front::multiprocessor, Front::executor}) {
      INFO(name_of(b) << " / " << name_of(fe));
      Log log;
      pfp::Options o = with_hooks(b, 2, log);
      o.initializer = [&log](const pfp::WorkerInfo& w) {
        log.write("init " + std::to_string(w.number) + " " + std::to_string(w.generation));
        if (w.generation == 0) throw std::runtime_error("database busy");
        return Conn{w.number, w.generation, 0, 42};
      };
      const std::vector<pfp::Result> rs = run_front(fe, o, 12, use_conn);
      for (const pfp::Result& r : rs) {
        INFO(show(r));
        REQUIRE(r.ok());
      }
      int served = 0;
      for (const auto& l : log.lines_of("fini")) {
        CHECK(l[1] == "1");  // the second generation started and served
        served += std::stoi(l[2]);
      }
      CHECK(served == 12);
    }
  }
}

TEST_CASE("initializer failures in a row are counted per worker number: a success in between resets the count") {
  // Worker 0 fails its generations 0, 1, 3, 4 and starts at 2 and 5: never three in a row. One
  // task per process, so each task is one more start.
  Log log;
  pfp::Options o = with_hooks(Backend::processes, 1, log);
  o.max_tasks_per_worker = 1;
  o.initializer = [&log](const pfp::WorkerInfo& w) {
    log.write("init " + std::to_string(w.number) + " " + std::to_string(w.generation));
    if (w.generation % 3 != 2) throw std::runtime_error("flaky");
    return Conn{w.number, w.generation, 0, 42};
  };
  const std::vector<pfp::Result> rs = run_front(Front::multiprocessor, o, 2, use_conn);
  for (const pfp::Result& r : rs) {
    INFO(show(r));
    REQUIRE(r.ok());
  }
  CHECK(log.lines_of("init").size() == 6);
  CHECK(log.lines_of("fini").size() == 2);
}

TEST_CASE("a broken Executor gives its submissions the initializer's failure and refuses later ones with it") {
  for (Backend b : all_backends) {
    INFO(name_of(b));
    pfp::Options o = plain(b, 2);
    o.initializer = [](const pfp::WorkerInfo&) -> Conn { throw std::runtime_error("cannot connect"); };
    pfp::Executor ex(o);
    auto fn = ex.declare("f", [](int k) { return k; });
    const pfp::Result first = ex.submit(fn, 1).result();
    CHECK(first.status == Status::cancelled);
    CHECK_THAT(first.error, Catch::Matchers::Contains("initializer failed 3 times in a row"));
    pfp_test::sleep_ms(50);
    // Refused with the reason from then on (at the latest once the pool has heard it is broken).
    REQUIRE_THROWS_WITH(ex.submit(fn, 2), Catch::Matchers::Contains("std::runtime_error: cannot connect"));
    ex.shutdown();
  }
}

TEST_CASE("finalizer that throws: reported, and the run's Results stand") {
  for (Backend b : all_backends) {
    INFO(name_of(b));
    Log log;
    pfp::Options o = with_hooks(b, 2, log);
    o.finalizer = [](const pfp::WorkerInfo&) { throw std::runtime_error("close failed"); };
    const std::vector<pfp::Result> rs = run_front(Front::map_results, o, 8, use_conn);
    for (const pfp::Result& r : rs) REQUIRE(r.ok());
  }
}

TEST_CASE("fork copies: a generator seeded before the fork draws the same in every worker, one seeded from the worker number does not") {
  for (Backend b : {Backend::processes, Backend::threads}) {
    INFO(name_of(b));
    Log log;
    std::mt19937_64 inherited(12345);  // what a program seeds once in main()
    pfp::Options o = plain(b, 4);
    o.initializer = [&log, &inherited](const pfp::WorkerInfo& w) {
      std::seed_seq seq{2024u, w.number, w.generation};
      std::mt19937_64 own(seq);
      const auto own_draw = own();
      // A copy, as each forked worker has one; with threads, one shared engine would race.
      std::mt19937_64 copied = inherited;
      log.write("draw " + std::to_string(w.number) + " " + std::to_string(own_draw) + " " + std::to_string(copied()));
      return own;
    };
    const auto rs = run_front(Front::map_results, o, 40, [](int) {
      return pfp::Value(std::to_string(pfp::worker_state<std::mt19937_64>()()));
    });
    std::set<std::string> values;
    for (const auto& r : rs) {
      REQUIRE(r.ok());
      values.insert(r.result.as<std::string>());
    }
    CHECK(values.size() == rs.size());  // no draw repeats across workers
    const auto draws = log.lines_of("draw");
    REQUIRE(draws.size() == 4);
    std::set<std::string> own, copied;
    for (const auto& l : draws) {
      own.insert(l[1]);
      copied.insert(l[2]);
    }
    CHECK(own.size() == 4);     // four workers, four different streams
    CHECK(copied.size() == 1);  // the inherited engine: the same draw everywhere
  }
}
