/* An epoch's shuffle in C: `fill(entropy, out)` writes numpy's
 * `np.random.default_rng(entropy).permutation(len(out))` into `out` (a writable int64 buffer), where
 * `entropy` is the tuple of 32-bit words numpy's SeedSequence assembles from the seed's integers.
 * graphnet/shuffle.py checks it against numpy on first use and falls back to numpy without it.
 *
 * The published algorithms, step by step:
 * - SeedSequence (O'Neill's seed_seq_fe, pool of 4 uint32 words): each pool word is the hash of an
 *   entropy word (0 past the end), then every word is mixed with the hash of every other, then each
 *   entropy word past the pool is mixed into every pool word. generate_state(4, uint64) hashes the
 *   pool cyclically into 8 uint32 words; uint64 word k is words 2k (low half) and 2k+1 (high half).
 * - PCG64 seeding from those words (initstate = w0:w1, initseq = w2:w3, high:low): inc = 2*initseq + 1,
 *   state = 0; step; state += initstate; step. A step is state = state * MULTIPLIER + inc (mod 2^128);
 *   a 64-bit draw steps, then outputs the XSL-RR of the new state: rotate right (high ^ low) by the
 *   top 6 bits of the state.
 * - A 32-bit draw takes the low half of a fresh 64-bit draw and keeps the high half for the next one.
 * - Generator.permutation(n) shuffles arange(n) by Fisher-Yates from the end: for i = n-1 .. 1, j is
 *   uniform in [0, i] by masked rejection (the smallest all-ones mask covering i; 32-bit draws while
 *   i fits in 32 bits, else 64-bit draws; redraw while the masked value exceeds i), then swap i and j.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef unsigned __int128 u128;

enum { POOL_WORDS = 4, STATE_WORDS = 8 };
static const uint32_t HASH_INIT_A = 0x43b0d7e5u, HASH_MULT_A = 0x931e8875u;
static const uint32_t HASH_INIT_B = 0x8b51f9ddu, HASH_MULT_B = 0x58f38dedu;
static const uint32_t MIX_MULT_L = 0xca01f9ddu, MIX_MULT_R = 0x4973f715u;
#define PCG_MULTIPLIER (((u128)0x2360ed051fc65da4ull << 64) | 0x4385df649fccf645ull)

static uint32_t hash_word(uint32_t value, uint32_t *constant) {
    value ^= *constant;
    *constant *= HASH_MULT_A;
    value *= *constant;
    return value ^ (value >> 16);
}

static uint32_t mix_words(uint32_t x, uint32_t y) {
    uint32_t r = MIX_MULT_L * x - MIX_MULT_R * y;
    return r ^ (r >> 16);
}

/* SeedSequence(entropy).generate_state(4, uint64) as 8 uint32 words, low half first. */
static void seed_state(const uint32_t *entropy, Py_ssize_t count, uint32_t out[STATE_WORDS]) {
    uint32_t pool[POOL_WORDS], constant = HASH_INIT_A;
    for (int i = 0; i < POOL_WORDS; i++)
        pool[i] = hash_word(i < count ? entropy[i] : 0u, &constant);
    for (int src = 0; src < POOL_WORDS; src++)
        for (int dst = 0; dst < POOL_WORDS; dst++)
            if (src != dst)
                pool[dst] = mix_words(pool[dst], hash_word(pool[src], &constant));
    for (Py_ssize_t src = POOL_WORDS; src < count; src++)
        for (int dst = 0; dst < POOL_WORDS; dst++)
            pool[dst] = mix_words(pool[dst], hash_word(entropy[src], &constant));
    uint32_t output_constant = HASH_INIT_B;
    for (int i = 0; i < STATE_WORDS; i++) {
        uint32_t value = pool[i % POOL_WORDS] ^ output_constant;
        output_constant *= HASH_MULT_B;
        value *= output_constant;
        out[i] = value ^ (value >> 16);
    }
}

typedef struct {
    u128 state, inc;
    uint32_t spare;  /* the high half of the last 64-bit draw, while has_spare */
    int has_spare;
} Pcg64;

static u128 word_pair(const uint32_t *w) {  /* uint64 words w[0..1] (high) and w[2..3] (low) */
    uint64_t high = (uint64_t)w[0] | ((uint64_t)w[1] << 32), low = (uint64_t)w[2] | ((uint64_t)w[3] << 32);
    return ((u128)high << 64) | low;
}

static void pcg_seed(Pcg64 *g, const uint32_t words[STATE_WORDS]) {
    g->inc = (word_pair(words + 4) << 1) | 1u;
    g->state = 0;
    g->state = g->state * PCG_MULTIPLIER + g->inc;
    g->state += word_pair(words);
    g->state = g->state * PCG_MULTIPLIER + g->inc;
    g->has_spare = 0;
}

static inline uint64_t pcg_next64(Pcg64 *g) {
    g->state = g->state * PCG_MULTIPLIER + g->inc;
    uint64_t folded = (uint64_t)(g->state >> 64) ^ (uint64_t)g->state;
    unsigned rotation = (unsigned)(g->state >> 122);
    return (folded >> rotation) | (folded << ((64u - rotation) & 63u));
}

static inline uint32_t pcg_next32(Pcg64 *g) {
    if (g->has_spare) {
        g->has_spare = 0;
        return g->spare;
    }
    uint64_t draw = pcg_next64(g);
    g->spare = (uint32_t)(draw >> 32);
    g->has_spare = 1;
    return (uint32_t)draw;
}

static inline uint64_t covering_mask(uint64_t max) {
    max |= max >> 1;
    max |= max >> 2;
    max |= max >> 4;
    max |= max >> 8;
    max |= max >> 16;
    return max | (max >> 32);
}

/* Uniform in [0, max] by masked rejection. */
static inline uint64_t draw_at_most(Pcg64 *g, uint64_t max) {
    uint64_t mask = covering_mask(max), value;
    if (max <= 0xffffffffull) {
        do value = pcg_next32(g) & mask; while (value > max);
    } else {
        do value = pcg_next64(g) & mask; while (value > max);
    }
    return value;
}

enum { DRAW_BLOCK = 64, SWAP_BLOCK = 256 };

typedef struct {  /* 32-bit draws in pcg_next32's order (low half, then high half), made DRAW_BLOCK at a time */
    uint32_t half[2 * DRAW_BLOCK];
    int used;
} DrawBuffer;

static inline uint32_t next_buffered32(Pcg64 *g, DrawBuffer *b) {
    if (b->used == 2 * DRAW_BLOCK) {
        for (int k = 0; k < DRAW_BLOCK; k++) {
            uint64_t draw = pcg_next64(g);
            b->half[2 * k] = (uint32_t)draw;
            b->half[2 * k + 1] = (uint32_t)(draw >> 32);
        }
        b->used = 0;
    }
    return b->half[b->used++];
}

/* Fisher-Yates from i = top down to 1, every i within 32 bits, drawing exactly what `draw_at_most` draws
 * (`g` holds no spare half: only 64-bit draws came before it, and it is not used after). Per block of
 * SWAP_BLOCK positions, first the j's: within a power-of-two range of i the mask is fixed, and a draw
 * over i is rejected by `i -= value <= i` keeping i (no branch to mispredict: an epoch's rejections are
 * random); then the block's swaps. */
static void permute32(Pcg64 *g, int64_t *out, uint64_t top) {
    DrawBuffer draws = {.used = 2 * DRAW_BLOCK};
    uint32_t js[SWAP_BLOCK];
    uint64_t i = top;
    while (i > 0) {
        uint64_t first = i, stop = i > SWAP_BLOCK ? i - SWAP_BLOCK : 0;  /* this block: i = first .. stop + 1 */
        while (i > stop) {
            uint32_t mask = 0xffffffffu >> __builtin_clz((uint32_t)i);
            uint64_t end = stop > (mask >> 1) ? stop : (mask >> 1);  /* the mask covers i down to mask / 2 + 1 */
            while (i > end) {
                uint32_t value = next_buffered32(g, &draws) & mask;
                js[first - i] = value;
                i -= value <= i;
            }
        }
        for (uint64_t k = first; k > stop; k--) {
            uint64_t j = js[first - k];
            int64_t held = out[j];
            out[j] = out[k];
            out[k] = held;
        }
    }
}

static void permute(Pcg64 *g, int64_t *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = i;
    Py_ssize_t i = n - 1;
    for (; i > 0 && (uint64_t)i > 0xffffffffull; i--) {
        uint64_t j = draw_at_most(g, (uint64_t)i);
        int64_t held = out[j];
        out[j] = out[i];
        out[i] = held;
    }
    if (i > 0)
        permute32(g, out, (uint64_t)i);
}

static int read_words(PyObject *entropy, uint32_t **words, Py_ssize_t *count) {
    if (!PyTuple_Check(entropy)) {
        PyErr_SetString(PyExc_TypeError, "entropy must be a tuple of 32-bit words");
        return -1;
    }
    *count = PyTuple_GET_SIZE(entropy);
    *words = PyMem_Malloc(sizeof(uint32_t) * (size_t)(*count ? *count : 1));
    if (*words == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *count; i++) {
        unsigned long long word = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entropy, i));
        if (PyErr_Occurred() || word > 0xffffffffull) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "an entropy word exceeds 32 bits");
            PyMem_Free(*words);
            return -1;
        }
        (*words)[i] = (uint32_t)word;
    }
    return 0;
}

static PyObject *shuffle_fill(PyObject *module, PyObject *args) {
    PyObject *entropy;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "Ow*:fill", &entropy, &out))
        return NULL;
    uint32_t *words;
    Py_ssize_t count;
    if (out.itemsize != 8 || out.len % 8 != 0 || !PyBuffer_IsContiguous(&out, 'C')) {
        PyErr_SetString(PyExc_ValueError, "out must be a contiguous buffer of 64-bit integers");
        PyBuffer_Release(&out);
        return NULL;
    }
    if (read_words(entropy, &words, &count) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    uint32_t state_words[STATE_WORDS];
    Pcg64 generator;
    seed_state(words, count, state_words);
    PyMem_Free(words);
    pcg_seed(&generator, state_words);
    Py_BEGIN_ALLOW_THREADS
    permute(&generator, (int64_t *)out.buf, out.len / 8);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef shuffle_methods[] = {
    {"fill", shuffle_fill, METH_VARARGS,
     "fill(entropy, out): numpy's default_rng(entropy words).permutation(len(out)), written into out"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_shuffle", "An epoch's shuffle in C (graphnet/shuffle.py).", -1, shuffle_methods,
};

PyMODINIT_FUNC PyInit__shuffle(void) { return PyModule_Create(&module); }
