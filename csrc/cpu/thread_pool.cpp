// Persistent thread pool (see slim/thread_pool.h) and per-thread scratch buffers.
#include "slim/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#define SLIM_POSIX 1
#endif

#include "slim/scratch.h"

namespace slim {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

constexpr int kMaxWorkers = 255;

class Pool {
 public:
  // Leaked on purpose: no join at interpreter exit. After fork() the child holds only the forking
  // thread: the old pool's workers (and any lock they held) are gone, so the child starts a new pool
  // instead of waiting forever for workers that do not exist.
  static Pool& get() {
    static std::once_flag registered;
    std::call_once(registered, [] {
#ifdef SLIM_POSIX
      pthread_atfork(nullptr, nullptr, [] { instance().store(nullptr, std::memory_order_relaxed); });
#endif
    });
    Pool* p = instance().load(std::memory_order_acquire);
    if (!p) {
      Pool* fresh = new Pool();
      if (instance().compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) p = fresh;
      else delete fresh;  // another thread installed one first; this one never started a worker
    }
    return *p;
  }

  void run(int nt, const std::function<void(int, int)>& fn) {
    std::lock_guard<std::mutex> call_lock(call_mu_);  // one job at a time: no deadlock, no oversubscription
    if (nt > kMaxWorkers + 1) nt = kMaxWorkers + 1;
    ensure_workers(nt - 1);
    job_ = &fn;
    job_nt_ = nt;
    pending_.store(nt - 1, std::memory_order_relaxed);
    const uint64_t gen = ++gen_;
    {
      // Each participating worker gets a ticket for this job; it runs the job exactly once.
      std::lock_guard<std::mutex> lk(mu_);
      for (int i = 1; i < nt; ++i) ticket_[i].store(gen, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0, nt);
    // The caller's share is done; wait for the workers (they run about as long as the caller did).
    // Yield now and then: on an oversubscribed machine the worker we wait for may need this core.
    for (int i = 1; pending_.load(std::memory_order_acquire) != 0; ++i) {
      cpu_relax();
      if ((i & 1023) == 0) std::this_thread::yield();
    }
    job_ = nullptr;
  }

 private:
  static std::atomic<Pool*>& instance() {
    static std::atomic<Pool*> p{nullptr};
    return p;
  }

  void ensure_workers(int n) {
    while (nworkers_ < n) {
      int id = ++nworkers_;
      std::thread([this, id] { loop(id); }).detach();
    }
  }

  void loop(int id) {
    // Tickets start at 0 and jobs count from 1: a worker is created inside run() and its first
    // ticket may already be set when it starts, so it must not read its "seen" value from it.
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly (back-to-back kernel calls), then sleep so idle workers cost nothing.
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; ticket_[id].load(std::memory_order_acquire) == seen; ++i) {
        cpu_relax();
        if ((i & 1023) == 1023) std::this_thread::yield();
        if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kSpinUs)) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return ticket_[id].load(std::memory_order_acquire) != seen; });
        }
      }
      seen = ticket_[id].load(std::memory_order_acquire);
      (*job_)(id, job_nt_);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  static constexpr int kSpinUs = 200;
  std::mutex call_mu_, mu_;
  std::condition_variable cv_;
  int nworkers_ = 0;
  uint64_t gen_ = 0;
  std::atomic<uint64_t> ticket_[kMaxWorkers + 1] = {};
  std::atomic<int> pending_{0};
  const std::function<void(int, int)>* job_ = nullptr;
  int job_nt_ = 0;
};

// torch's OpenMP runtime, reached through the GNU OpenMP ABI (libgomp; LLVM's and Intel's
// runtimes export the same entry points) so that the native library never links libtorch.
struct OpenMp {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
  int (*num_threads)() = nullptr;                                          // omp_get_num_threads
  std::string path;
};
std::mutex omp_mu;
std::shared_ptr<const OpenMp> omp;  // read under omp_mu; replaced whole, never mutated

struct OmpJob {
  const std::function<void(int, int)>* fn;
  const OpenMp* rt;
};

void omp_trampoline(void* data) {
  auto* job = static_cast<OmpJob*>(data);
  (*job->fn)(job->rt->thread_num(), job->rt->num_threads());
}

}  // namespace

bool use_openmp_runtime(const std::string& path) {
  std::lock_guard<std::mutex> lk(omp_mu);
  if (path.empty()) {
    omp.reset();
    return true;
  }
#ifdef SLIM_POSIX
  // RTLD_NOLOAD: attach to the copy torch already loaded, never load a second runtime.
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
  if (!h) return false;
  auto rt = std::make_shared<OpenMp>();
  rt->parallel = reinterpret_cast<decltype(rt->parallel)>(dlsym(h, "GOMP_parallel"));
  rt->thread_num = reinterpret_cast<decltype(rt->thread_num)>(dlsym(h, "omp_get_thread_num"));
  rt->num_threads = reinterpret_cast<decltype(rt->num_threads)>(dlsym(h, "omp_get_num_threads"));
  rt->path = path;
  if (!rt->parallel || !rt->thread_num || !rt->num_threads) return false;  // handle kept: it was loaded anyway
  omp = std::move(rt);
  return true;
#else
  return false;
#endif
}

std::string thread_runtime() {
  std::lock_guard<std::mutex> lk(omp_mu);
  return omp ? "openmp:" + omp->path : "own pool";
}

void parallel_for(int num_threads, const std::function<void(int, int)>& fn) {
  if (num_threads <= 1) {
    fn(0, 1);
    return;
  }
  std::shared_ptr<const OpenMp> rt;
  {
    std::lock_guard<std::mutex> lk(omp_mu);
    rt = omp;
  }
  if (rt) {
    OmpJob job{&fn, rt.get()};
    rt->parallel(omp_trampoline, &job, static_cast<unsigned>(num_threads), 0);
    return;
  }
  Pool::get().run(num_threads, fn);
}

void* thread_scratch(int slot, size_t bytes) {
  struct Buf {
    void* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[kScratchSlots];
  Buf& b = bufs[slot];
  if (b.n < bytes) {
    std::free(b.p);
    size_t n = (bytes + 4095) / 4096 * 4096;
    b.p = std::aligned_alloc(64, n);
    if (!b.p) throw std::bad_alloc();
    b.n = n;
  }
  return b.p;
}

}  // namespace slim
