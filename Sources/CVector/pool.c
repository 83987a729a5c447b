/* msgen's worker threads: one loop split over the threads, many times a token.

   Why by hand: decoding one token runs ~60 parallel loops (every matrix–vector product,
   every layer's attention), each 20–200 µs of work. Dispatch's concurrentPerform wakes
   its workers through the kernel for each loop, and the wake-up takes about as long as
   the work: on 2 cores a GPT-2-small q8 step ran no faster with 2 threads than with 1.
   OpenMP would need libomp and a second threading runtime next to OpenBLAS's. So: a few
   persistent threads that, after a loop, spin on a counter for a short while (the next
   loop of the step is microseconds away) and then sleep on a futex (so an idle process
   or a server between requests uses no CPU).

   One loop at a time: a second caller while a loop runs (a nested loop inside a worker,
   or two threads of a test run) gets 0 and runs its loop on its own thread. */
#include "cvector.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#define relax() _mm_pause()
#else
#define relax() ((void)0)
#endif

enum { MAX_WORKERS = 64 };
/* How long an idle worker spins before it sleeps. */
static const long SPIN_NS = 200 * 1000;

static pthread_mutex_t owner = PTHREAD_MUTEX_INITIALIZER; /* held by the thread running a loop */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static int started;                  /* worker threads running (under start_lock) */
static _Atomic unsigned generation;  /* +1 for every loop: what the workers wait on */
static _Atomic long pending;         /* workers that have not yet finished the current loop */
static _Atomic int sleepers;         /* workers asleep (or about to sleep) on `generation` */
static msgen_pool_task task;
static void *task_context;
static long task_workers;
/* The generation when worker w was started: the last loop it need not run. A worker's
   thread may first run after its first loop was posted, so it cannot read this itself. */
static unsigned first_seen[MAX_WORKERS];

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

static void futex_wait(_Atomic unsigned *word, unsigned value) {
#if defined(__linux__)
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    (void)word, (void)value;
    sched_yield();
#endif
}

static void futex_wake_all(_Atomic unsigned *word) {
#if defined(__linux__)
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* Worker w (1 …): wait for a new generation, run part w if the loop has one, report
   done, repeat. Every worker reports every loop, even one with no part for it, so that
   no worker can still be reading a finished loop's task when the next one is set. */
static void *worker_main(void *arg) {
    long w = (long)arg;
    unsigned seen = first_seen[w];
    for (;;) {
        unsigned g;
        long spin_until = now_ns() + SPIN_NS;
        for (int i = 0;; i++) {
            g = atomic_load_explicit(&generation, memory_order_acquire);
            if (g != seen) break;
            if ((i & 63) == 63 && now_ns() > spin_until) {
                atomic_fetch_add(&sleepers, 1);
                /* The kernel sleeps only if generation still equals seen: no lost wake-up. */
                futex_wait(&generation, seen);
                atomic_fetch_sub(&sleepers, 1);
                spin_until = now_ns() + SPIN_NS;
            }
            relax();
        }
        seen = g;
        if (w < task_workers) task(task_context, w, task_workers);
        atomic_fetch_sub_explicit(&pending, 1, memory_order_release);
    }
    return NULL;
}

/* Starts workers 1 … count−1 that are not running yet; returns how many threads a loop
   can use (workers + the caller). Called only by the owner, so no loop is running. */
static int ensure_workers(long count) {
    pthread_mutex_lock(&start_lock);
    while (started < count - 1) {
        pthread_t t;
        first_seen[started + 1] = atomic_load(&generation);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, worker_main, (void *)(long)(started + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        started++;
    }
    int have = started + 1;
    pthread_mutex_unlock(&start_lock);
    return have;
}

int msgen_pool_run(long workers, msgen_pool_task f, void *context) {
    if (workers > MAX_WORKERS) workers = MAX_WORKERS;
    if (workers < 2 || pthread_mutex_trylock(&owner) != 0) return 0;
    long have = ensure_workers(workers);
    if (have < workers) workers = have;
    task = f;
    task_context = context;
    task_workers = workers;
    atomic_store_explicit(&pending, started, memory_order_relaxed);
    /* Sequentially consistent, as is the sleepers count's increment: either the worker
       sees the new generation before it sleeps or this sees it counted as a sleeper. */
    atomic_fetch_add(&generation, 1);
    if (atomic_load(&sleepers) > 0) futex_wake_all(&generation);
    f(context, 0, workers);
    while (atomic_load_explicit(&pending, memory_order_acquire) > 0) relax();
    pthread_mutex_unlock(&owner);
    return (int)workers;
}
