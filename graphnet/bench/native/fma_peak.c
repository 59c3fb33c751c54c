/* The machine's float32 FMA throughput: the `fma-peak` reference point of `graphnet bench`.
 *
 * Each of `threads` OpenMP threads (graphnet/bench/ceilings.py asks for one per allowed core) runs
 * ACCUMULATORS independent chains of vector FMAs on registers, with no loads or stores, so that the FMA
 * units, not their latency, set the pace: 12 chains cover 4-cycle latency x 2 FMA ports with room to spare.
 * AVX-512 where the compiler targets it, else AVX2 with FMA.
 */
#include <immintrin.h>
#include <omp.h>

#define ACCUMULATORS 12

#if defined(__AVX512F__)
typedef __m512 vector;
#define LANES 16
#define FMADD _mm512_fmadd_ps
#define BROADCAST _mm512_set1_ps
#define STORE _mm512_storeu_ps
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vector;
#define LANES 8
#define FMADD _mm256_fmadd_ps
#define BROADCAST _mm256_set1_ps
#define STORE _mm256_storeu_ps
#else
#error "fma_peak needs AVX-512 or AVX2 with FMA"
#endif

int fma_lanes(void) { return LANES; }

int fma_chains(void) { return ACCUMULATORS; }

/* Runs iterations x ACCUMULATORS vector FMAs on each thread. The sum keeps the work observable; each
 * chain converges to 1 (acc = 0.999999 acc + 1e-6), so no value overflows or turns subnormal. */
float fma_run(long iterations, int threads)
{
    float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        const vector a = BROADCAST(0.999999f), b = BROADCAST(1e-6f);
        vector acc[ACCUMULATORS];
        for (int i = 0; i < ACCUMULATORS; i++)
            acc[i] = BROADCAST((float)i);
        for (long n = 0; n < iterations; n++)
            for (int i = 0; i < ACCUMULATORS; i++)
                acc[i] = FMADD(acc[i], a, b);
        float lanes[LANES];
        for (int i = 0; i < ACCUMULATORS; i++) {
            STORE(lanes, acc[i]);
            for (int j = 0; j < LANES; j++)
                total += lanes[j];
        }
    }
    return total;
}
