/* The MPI runtime of graphnet's data-parallel steps: the functions a rendered call kernel calls.
 *
 *   void graphnet_allreduce_start(int64_t N, void **buffers, const int64_t *desc)
 *   void graphnet_allreduce_wait(int64_t N, void **buffers, const int64_t *desc)
 *   void graphnet_allreduce_progress(int64_t N, void **buffers, const int64_t *desc)
 *
 * `buffers` is the step's pointer array, `desc` the call's constant descriptor
 * (codegen/collectives.py:call_descriptor): dtype code, buffer count, staging buffer or -1, request
 * buffer or -1, then (src, dst, elements) per buffer. A bucket of one buffer is reduced in its dst
 * (copied there first unless src is dst: the collectives pass makes the gradient's kernel write the
 * dst); a larger one is packed into the staging buffer, reduced there and unpacked into the dsts.
 *
 * The reduction is a ring allreduce of our own over non-blocking point-to-point messages (a
 * reduce-scatter then an allgather, 2 (p - 1) steps of count / p elements): Open MPI's
 * MPI_Iallreduce (libnbc) takes a binomial tree for 2 ranks, about twice as slow for MiB messages,
 * and slower still in place. Each in-flight bucket is a state machine that every runtime call
 * advances (`progress_all`): the start, the wait, and the progress calls the step makes between its
 * kernels while a bucket is in flight (MPI moves messages only inside MPI calls). Chunk c is summed
 * along the ring in a fixed order and then copied to every rank, so every rank gets the same bits
 * and a run is bit-identical for a given number of ranks.
 *
 * Optionally (graphnet_collectives_configure's `thread_microseconds` > 0, $GRAPHNET_MPI_PROGRESS_THREAD)
 * a progress thread also advances the buckets in flight every that many microseconds, so that
 * messages move during long kernels (it needs MPI_THREAD_MULTIPLE and pays off only where a core is
 * idle: every call then takes a lock).
 *
 * The wait polls (yielding the core after a while) with a deadline: a peer that died or stalls ends
 * the job with MPI_Abort and a message instead of a hang. Compiled with mpicc at run time (graphnet/distributed/native.py).
 */
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static MPI_Comm comm = MPI_COMM_NULL;
static int rank = 0, size = 1;
static double timeout_seconds = 300.0;
static double waited_seconds = 0.0; /* time spent inside waits, for the benchmark */

typedef struct {
    int active, done;
    int64_t code, count;  /* dtype code and elements of the reduced region */
    char *data;           /* the reduced region: the dst (one buffer) or the staging buffer */
    char *scratch;        /* a chunk received during the reduce-scatter; kept across steps */
    size_t scratch_bytes;
    int step, tag;        /* the next ring step to complete: 0 .. 2 (size - 1); -1: an MPI_Iallreduce */
    MPI_Request requests[2];
} Bucket;

static Bucket **buckets = NULL; /* every bucket slot ever used (reused: no allocation once warm) */
static int slots = 0;
static int sequence = 0;        /* starts so far: the message tag, the same on every rank */
static int flying = 0;          /* buckets started and not done */
static int use_mpi = 0;         /* MPI_Iallreduce instead of the ring (the benchmark compares them) */

static int threaded = 0;        /* a progress thread runs: every call below holds `lock` */
static long thread_interval_ns = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t started = PTHREAD_COND_INITIALIZER;
static void enter(void) { if (threaded) pthread_mutex_lock(&lock); }
static void leave(void) { if (threaded) pthread_mutex_unlock(&lock); }
static void *progress_thread(void *unused);

static void fail(const char *what) {
    fprintf(stderr, "graphnet.distributed: rank %d: %s. Aborting the job.\n", rank, what);
    fflush(stderr);
    MPI_Abort(comm, 3);
}

/* Returns 0, or -1 where the progress thread could not start. */
int graphnet_collectives_configure(intptr_t handle, double timeout, double thread_microseconds) {
    comm = (MPI_Comm)handle;
    timeout_seconds = timeout;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (thread_microseconds > 0 && !threaded) {
        pthread_t thread;
        thread_interval_ns = (long)(thread_microseconds * 1e3);
        threaded = 1;
        if (pthread_create(&thread, NULL, progress_thread, NULL) != 0) {
            threaded = 0;
            return -1;
        }
        pthread_detach(thread);
    }
    return 0;
}

double graphnet_collectives_waited(void) { return waited_seconds; }

/* 1: later buckets are reduced by MPI_Iallreduce (in place) instead of the ring; every rank must
 * choose alike, between steps (graphnet/bench/micro/distributed.py measures both). */
void graphnet_collectives_use_mpi(int flag) { use_mpi = flag; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static MPI_Datatype datatype(int64_t code) { return code == 1 ? MPI_DOUBLE : MPI_FLOAT; }
static size_t itemsize(int64_t code) { return code == 1 ? 8 : 4; }

static void add(int64_t code, char *into, const char *from, int64_t n) {
    if (code == 1) {
        double *d = (double *)into;
        const double *s = (const double *)from;
        for (int64_t i = 0; i < n; i++) d[i] += s[i];
    } else {
        float *d = (float *)into;
        const float *s = (const float *)from;
        for (int64_t i = 0; i < n; i++) d[i] += s[i];
    }
}

/* ---- the ring ------------------------------------------------------------------------------ */
static int64_t chunk_begin(const Bucket *b, int c) { return b->count * c / size; }
static int64_t chunk_count(const Bucket *b, int c) { return chunk_begin(b, c + 1) - chunk_begin(b, c); }
static int wrap(int c) { return ((c % size) + size) % size; }

/* Reduce-scatter step s < size - 1: send chunk rank - s to the right, receive chunk rank - s - 1
 * from the left into scratch (added at completion). Allgather step g = s - (size - 1): send the
 * summed chunk rank + 1 - g, receive chunk rank - g in place. */
static void post(Bucket *b) {
    int right = wrap(rank + 1), left = wrap(rank - 1), s = b->step;
    int sent = s < size - 1 ? wrap(rank - s) : wrap(rank + 1 - (s - size + 1));
    int received = s < size - 1 ? wrap(rank - s - 1) : wrap(rank - (s - size + 1));
    size_t item = itemsize(b->code);
    char *into = s < size - 1 ? b->scratch : b->data + chunk_begin(b, received) * item;
    MPI_Isend(b->data + chunk_begin(b, sent) * item, (int)chunk_count(b, sent), datatype(b->code), right, b->tag,
              comm, &b->requests[0]);
    MPI_Irecv(into, (int)chunk_count(b, received), datatype(b->code), left, b->tag, comm, &b->requests[1]);
}

static void advance(Bucket *b) {
    while (!b->done) {
        int flag = 0;
        MPI_Testall(2, b->requests, &flag, MPI_STATUSES_IGNORE);
        if (!flag)
            return;
        if (b->step < 0) { /* MPI_Iallreduce */
            b->done = 1;
            flying--;
            return;
        }
        if (b->step < size - 1) {
            int received = wrap(rank - b->step - 1);
            add(b->code, b->data + chunk_begin(b, received) * itemsize(b->code), b->scratch, chunk_count(b, received));
        }
        if (++b->step == 2 * (size - 1)) {
            b->done = 1;
            flying--;
        } else
            post(b);
    }
}

static void progress_all(void) {
    for (int i = 0; i < slots && flying > 0; i++)
        if (buckets[i]->active && !buckets[i]->done)
            advance(buckets[i]);
}

static void *progress_thread(void *unused) {
    (void)unused;
    struct timespec interval = {0, thread_interval_ns};
    pthread_mutex_lock(&lock);
    for (;;) {
        if (flying == 0) {
            pthread_cond_wait(&started, &lock);
            continue;
        }
        progress_all();
        pthread_mutex_unlock(&lock);
        nanosleep(&interval, NULL);
        pthread_mutex_lock(&lock);
    }
    return NULL;
}

static int free_slot(void) {
    for (int i = 0; i < slots; i++)
        if (!buckets[i]->active)
            return i;
    Bucket **grown = realloc(buckets, (size_t)(slots + 1) * sizeof *buckets);
    Bucket *b = calloc(1, sizeof *b);
    if (grown == NULL || b == NULL)
        fail("out of memory for an allreduce bucket");
    buckets = grown;
    buckets[slots] = b;
    return slots++;
}

/* ---- the calls ------------------------------------------------------------------------------ */
void graphnet_allreduce_start(int64_t N, void **buffers, const int64_t *desc) {
    (void)N;
    enter();
    int64_t code = desc[0], count = desc[1], staging = desc[2];
    const int64_t *pair = desc + 4;
    size_t item = itemsize(code);
    int slot = free_slot();
    Bucket *b = buckets[slot];
    b->code = code;
    if (staging < 0) {
        b->data = (char *)buffers[pair[1]];
        b->count = pair[2];
        if (buffers[pair[0]] != buffers[pair[1]])
            memcpy(b->data, buffers[pair[0]], (size_t)pair[2] * item);
    } else {
        b->data = (char *)buffers[staging];
        b->count = 0;
        for (int64_t i = 0; i < count; i++, pair += 3) {
            memcpy(b->data + b->count * item, buffers[pair[0]], (size_t)pair[2] * item);
            b->count += pair[2];
        }
    }
    size_t need = (size_t)((b->count + size - 1) / size + 1) * item;
    if (b->scratch_bytes < need) {
        free(b->scratch);
        b->scratch = malloc(need);
        b->scratch_bytes = need;
        if (b->scratch == NULL)
            fail("out of memory for an allreduce bucket");
    }
    b->active = 1;
    b->done = size == 1;
    b->step = 0;
    b->tag = 1 + sequence++ % 30000; /* MPI guarantees tags up to 32767 */
    memcpy(buffers[desc[3]], &slot, sizeof slot);
    if (!b->done) {
        flying++;
        if (use_mpi) {
            b->step = -1;
            b->requests[1] = MPI_REQUEST_NULL;
            MPI_Iallreduce(MPI_IN_PLACE, b->data, (int)b->count, datatype(code), MPI_SUM, comm, &b->requests[0]);
        } else {
            post(b);
        }
        if (threaded)
            pthread_cond_signal(&started);
    }
    progress_all();
    leave();
}

void graphnet_allreduce_progress(int64_t N, void **buffers, const int64_t *desc) {
    (void)N, (void)buffers, (void)desc;
    enter();
    progress_all();
    leave();
}

void graphnet_allreduce_wait(int64_t N, void **buffers, const int64_t *desc) {
    (void)N;
    int64_t code = desc[0], count = desc[1], staging = desc[2];
    const int64_t *pair = desc + 4;
    int slot;
    memcpy(&slot, buffers[desc[3]], sizeof slot);
    enter();
    if (slot < 0 || slot >= slots || !buckets[slot]->active)
        fail("an allreduce wait without its start (a graphnet bug: the collectives pass misplaced them)");
    Bucket *b = buckets[slot];
    double begin = now();
    for (long polls = 0; !b->done; polls++) {
        progress_all();
        if (b->done)
            break;
        if (threaded || polls >= 4096) { /* let the progress thread in; after a while, the peer (more
                                            ranks or users than cores) */
            leave();
            if (polls >= 4096)
                sched_yield();
            enter();
        }
        if ((polls & 1023) == 1023 && now() - begin > timeout_seconds) {
            char what[160];
            snprintf(what, sizeof what, "waited %.0f s for a gradient allreduce; a peer died or stalls",
                     timeout_seconds);
            fail(what);
        }
    }
    waited_seconds += now() - begin;
    b->active = 0;
    leave();
    if (staging < 0)
        return;
    size_t item = itemsize(code), at = 0;
    for (int64_t i = 0; i < count; i++, pair += 3) {
        memcpy(buffers[pair[1]], b->data + at, (size_t)pair[2] * item);
        at += (size_t)pair[2] * item;
    }
}
