/* fit's data check in one pass: `within(array, low, high, integral)` is True when every element of
 * `array` (a C-contiguous buffer of a native-order bool, integer or float32/float64 format) is finite,
 * lies in [low, high] and, where `integral` is true, is a whole number; False when some element is
 * not, or when the buffer is of another kind (then the caller's numpy checks decide).
 * graphnet/datacheck.py checks it against numpy on first use and falls back to numpy without it.
 *
 * Each element is compared in its own type, against the bounds rounded inwards to that type (the
 * least value of the type >= low, the greatest <= high), which is exact. The loops are branch-free
 * within blocks, so the compiler vectorises them, and stop at the first block with a failing element:
 * one pass and no temporary, where numpy's checks take two or three passes and a temporary each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* On x86-64 with glibc (ifunc), each scan is also compiled for AVX2 and the CPU picks one at load. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif
enum { BLOCK = 256 };                  /* elements tested between early exits */
enum { GIL_FREE_BYTES = 1 << 16 };     /* larger buffers are scanned with the GIL released */

/* TEST on p[i] for i in [0, n), block by block, returning 0 at the first block where it fails (`ok`
 * of the element's type, selected rather than and-ed, so the loop vectorises without converting the
 * comparisons' masks). */
#define BLOCKS(TYPE, TEST)                                                                                \
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {                                               \
        Py_ssize_t end = n - start < BLOCK ? n : start + BLOCK;                                           \
        TYPE ok = 1;                                                                                      \
        for (Py_ssize_t i = start; i < end; i++) {                                                        \
            TYPE x = p[i];                                                                                \
            ok = (TEST) ? ok : 0;                                                                         \
        }                                                                                                 \
        if (!ok)                                                                                          \
            return 0;                                                                                     \
    }                                                                                                     \
    return 1;

/* A float is finite when x - x is 0 (NaN and infinities give NaN), and NaN fails every comparison. */
#define SCAN_FLOAT(NAME, TYPE, NEXT)                                                                      \
    CLONES static int NAME(const void *buf, Py_ssize_t n, double low, double high, int integral) {        \
        const TYPE *p = buf;                                                                              \
        TYPE lo = (TYPE)low, hi = (TYPE)high;                                                             \
        if ((double)lo < low)                                                                             \
            lo = NEXT(lo, INFINITY);                                                                      \
        if ((double)hi > high)                                                                            \
            hi = NEXT(hi, -INFINITY);                                                                     \
        if (integral) {                                                                                   \
            BLOCKS(TYPE, ((x - x == 0) & (x >= lo) & (x <= hi) & (rint(x) == x)))                         \
        }                                                                                                 \
        if (isinf(lo) && isinf(hi) && lo < hi) { /* finiteness alone */                                   \
            BLOCKS(TYPE, (x - x == 0))                                                                    \
        }                                                                                                 \
        BLOCKS(TYPE, ((x - x == 0) & (x >= lo) & (x <= hi)))                                              \
    }

/* Integers are finite and whole: the test is lo <= x <= hi for the whole numbers [ceil(low),
 * floor(high)] clamped to the type (`UPPER` the type's exclusive upper limit, 2^bits or 2^(bits-1)). */
#define SCAN_INT(NAME, TYPE, MIN, MAX, UPPER)                                                             \
    CLONES static int NAME(const void *buf, Py_ssize_t n, double low, double high, int integral) {        \
        const TYPE *p = buf;                                                                              \
        (void)integral;                                                                                   \
        double first = ceil(low), last = floor(high);                                                     \
        if (n == 0)                                                                                       \
            return 1;                                                                                     \
        if (!(first <= last && first < UPPER && last >= (double)MIN)) /* nothing admitted (or a NaN) */   \
            return 0;                                                                                     \
        TYPE lo = first <= (double)MIN ? MIN : (TYPE)first;                                               \
        TYPE hi = last >= UPPER ? MAX : (TYPE)last;                                                       \
        BLOCKS(TYPE, ((x >= lo) & (x <= hi)))                                                             \
    }

SCAN_FLOAT(scan_f32, float, nextafterf)
SCAN_FLOAT(scan_f64, double, nextafter)
SCAN_INT(scan_i8, int8_t, INT8_MIN, INT8_MAX, 0x1p7)
SCAN_INT(scan_u8, uint8_t, 0, UINT8_MAX, 0x1p8)
SCAN_INT(scan_i16, int16_t, INT16_MIN, INT16_MAX, 0x1p15)
SCAN_INT(scan_u16, uint16_t, 0, UINT16_MAX, 0x1p16)
SCAN_INT(scan_i32, int32_t, INT32_MIN, INT32_MAX, 0x1p31)
SCAN_INT(scan_u32, uint32_t, 0, UINT32_MAX, 0x1p32)
SCAN_INT(scan_i64, int64_t, INT64_MIN, INT64_MAX, 0x1p63)
SCAN_INT(scan_u64, uint64_t, 0, UINT64_MAX, 0x1p64)

typedef int (*Scan)(const void *, Py_ssize_t, double, double, int);

/* The scan for a buffer format of this itemsize (native order and size only), or NULL. */
static Scan scan_for(const char *format, Py_ssize_t itemsize) {
    if (format == NULL || format[0] == '\0' || format[1] != '\0')
        return NULL;
    int is_signed = 0;
    switch (format[0]) {
    case 'f': return itemsize == 4 ? scan_f32 : NULL;
    case 'd': return itemsize == 8 ? scan_f64 : NULL;
    case '?': return itemsize == 1 ? scan_u8 : NULL;
    case 'b': case 'h': case 'i': case 'l': case 'q': is_signed = 1; break;
    case 'B': case 'H': case 'I': case 'L': case 'Q': break;
    default: return NULL;
    }
    switch (itemsize) {
    case 1: return is_signed ? scan_i8 : scan_u8;
    case 2: return is_signed ? scan_i16 : scan_u16;
    case 4: return is_signed ? scan_i32 : scan_u32;
    case 8: return is_signed ? scan_i64 : scan_u64;
    default: return NULL;
    }
}

static PyObject *datacheck_within(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "within(array, low, high, integral) takes 4 arguments");
        return NULL;
    }
    double low = PyFloat_AsDouble(args[1]);
    if (low == -1.0 && PyErr_Occurred())
        return NULL;
    double high = PyFloat_AsDouble(args[2]);
    if (high == -1.0 && PyErr_Occurred())
        return NULL;
    int integral = PyObject_IsTrue(args[3]);
    if (integral < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();  /* not a contiguous buffer: numpy's checks decide */
        Py_RETURN_FALSE;
    }
    Scan scan = scan_for(view.format, view.itemsize);
    int ok = 0;
    if (scan != NULL) {
        Py_ssize_t n = view.len / view.itemsize;
        if (view.len >= GIL_FREE_BYTES) {
            Py_BEGIN_ALLOW_THREADS
            ok = scan(view.buf, n, low, high, integral);
            Py_END_ALLOW_THREADS
        } else {
            ok = scan(view.buf, n, low, high, integral);
        }
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

static PyMethodDef datacheck_methods[] = {
    {"within", (PyCFunction)(void (*)(void))datacheck_within, METH_FASTCALL,
     "within(array, low, high, integral): whether every element is finite, in [low, high] and (integral) whole; "
     "False also for a buffer it does not read (not C-contiguous, or not a native bool, integer or "
     "float32/float64 format)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_datacheck", "fit's data check in one pass (graphnet/datacheck.py).", -1,
    datacheck_methods,
};

PyMODINIT_FUNC PyInit__datacheck(void) { return PyModule_Create(&module); }
