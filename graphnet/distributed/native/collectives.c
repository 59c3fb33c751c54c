/* The MPI runtime of graphnet's data-parallel steps: the functions a rendered call kernel calls.
 *
 *   void graphnet_allreduce_start(int64_t N, void **buffers, const int64_t *desc)
 *   void graphnet_allreduce_wait(int64_t N, void **buffers, const int64_t *desc)
 *
 * `buffers` is the step's pointer array, `desc` the call's constant descriptor
 * (codegen/collectives.py:call_descriptor): dtype code, buffer count, staging buffer or -1, request
 * buffer, then (src, dst, elements) per buffer. A bucket of one buffer is reduced from src into dst;
 * a larger one is packed into the staging buffer, reduced there in place and unpacked into the dsts.
 * The wait polls with a deadline: a peer that died or stalls ends the job with MPI_Abort and a
 * message instead of a hang. Compiled with mpicc at run time (graphnet/distributed/native.py).
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static MPI_Comm comm = MPI_COMM_NULL;
static double timeout_seconds = 300.0;
static double waited_seconds = 0.0; /* time spent inside waits, for the benchmark */

void graphnet_collectives_configure(intptr_t handle, double timeout) {
    comm = (MPI_Comm)handle;
    timeout_seconds = timeout;
}

double graphnet_collectives_waited(void) { return waited_seconds; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static MPI_Datatype datatype(int64_t code) { return code == 1 ? MPI_DOUBLE : MPI_FLOAT; }
static size_t itemsize(int64_t code) { return code == 1 ? 8 : 4; }

void graphnet_allreduce_start(int64_t N, void **buffers, const int64_t *desc) {
    (void)N;
    int64_t code = desc[0], count = desc[1], staging = desc[2];
    const int64_t *pair = desc + 4;
    MPI_Request *request = (MPI_Request *)buffers[desc[3]];
    if (staging < 0) {
        MPI_Iallreduce(buffers[pair[0]], buffers[pair[1]], (int)pair[2], datatype(code), MPI_SUM, comm, request);
        return;
    }
    char *packed = (char *)buffers[staging];
    size_t at = 0;
    for (int64_t i = 0; i < count; i++, pair += 3) {
        memcpy(packed + at, buffers[pair[0]], (size_t)pair[2] * itemsize(code));
        at += (size_t)pair[2] * itemsize(code);
    }
    MPI_Iallreduce(MPI_IN_PLACE, packed, (int)(at / itemsize(code)), datatype(code), MPI_SUM, comm, request);
}

void graphnet_allreduce_wait(int64_t N, void **buffers, const int64_t *desc) {
    (void)N;
    int64_t code = desc[0], count = desc[1], staging = desc[2];
    const int64_t *pair = desc + 4;
    MPI_Request *request = (MPI_Request *)buffers[desc[3]];
    double begin = now();
    int done = 0;
    for (long polls = 0; !done; polls++) {
        MPI_Test(request, &done, MPI_STATUS_IGNORE);
        if (!done && (polls & 1023) == 1023 && now() - begin > timeout_seconds) {
            int rank = -1;
            MPI_Comm_rank(comm, &rank);
            fprintf(stderr, "graphnet.distributed: rank %d waited %.0f s for a gradient allreduce; a peer died or "
                    "stalls. Aborting the job.\n", rank, timeout_seconds);
            fflush(stderr);
            MPI_Abort(comm, 3);
        }
    }
    waited_seconds += now() - begin;
    if (staging < 0)
        return;
    const char *packed = (const char *)buffers[staging];
    size_t at = 0;
    for (int64_t i = 0; i < count; i++, pair += 3) {
        memcpy(buffers[pair[1]], packed + at, (size_t)pair[2] * itemsize(code));
        at += (size_t)pair[2] * itemsize(code);
    }
}
