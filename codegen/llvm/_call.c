/* The per-call path of a compiled function, in C: the one C extension (setup.py builds it where a C
 * compiler is there; without it graphnet/function.py's PythonCall and codegen/llvm/call.py's
 * generated Python run instead, accepting and refusing the same feeds). Python code between a call
 * and a tiny model's native step is most of the time that call takes, so this path has none.
 *
 * Callable: graphnet.Function's base class. `fn(**feeds)` hands the keyword arguments, as the dict
 * the call built, to `fn._call` (a FastCall, or Function._general).
 *
 * FastCall(backend, spec, variable_class, names, dtypes, slots, slot_table, step, rebuild, general)
 * is called with the feeds dict. It runs the step only when the feeds are exactly what the general
 * path last accepted (FeedSpec.last): the same names, exact ndarrays of the placeholders' dtypes
 * (identity), the same shapes, C-contiguous, no device mirrors, and the arena sized for that batch.
 * Anything else is `general(feeds)`, which converts, explains and raises. Then, holding the step
 * lock of the function's variables (backend.lock, a graphnet.function.StepLock, as LLVMBackend.run
 * does): the arena's batch is checked again (another thread may have changed it), the inputs' data
 * pointers are written to the slot table (every call: an array keeps its identity when resize or
 * __setstate__ moves its data), the step runs with the GIL released, and the fetches are copied out.
 * The lock is `step_lock.lock`: a merge of variable groups replaces it (after acquiring the old
 * one), so a call acquires the lock it last found there and checks that it still is; otherwise it
 * remembers the new one and the general path takes it.
 *
 * FastCall.run_steps(sources, order, start, count, batch, outs) runs the step on `count` consecutive
 * batches of `batch` rows (graphnet.Function.run_steps plans the batches and holds the step lock for
 * the whole call; the arena must already be laid out for `batch`). `sources`: one whole dataset per
 * placeholder (in placeholder order; a placeholder without a leading batch dimension is fed whole to
 * every step). Batch s reads rows order[start + s*batch ...] (consecutive rows from `start` when
 * order is None): gathered by memcpy into staging buffers, or pointed at in place. After each step
 * the fetched buffers are copied into row s of `outs` (a tuple, one array per fetch); or, where `outs`
 * is a float64 array of one running sum per fetch (each fetch one float32 or float64 number), each
 * fetch times `batch` is added to its sum in float64 after each step (Model.fit's epoch sums: the
 * same products and additions, in the same order, as adding the stacked values in Python; this file
 * is compiled without floating-point contraction so that a product and its sum stay two roundings).
 * Everything is validated before the first step (dtypes, C-contiguity, row shapes, lengths, every
 * index used, the outputs' sizes), so the loop, which runs with the GIL released, reads and writes
 * only memory it checked.
 * FastCall.try_run_steps(...) is run_steps taking the step lock as a call does; it runs nothing and
 * returns False where the arena is laid out for another batch or a merge replaced the lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

/* ---- Callable: graphnet.Function's call ---------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *call;
} Callable;

static PyMemberDef callable_members[] = {
    {"_call", T_OBJECT_EX, offsetof(Callable, call), 0, "the per-call path, called with the feeds dict"},
    {NULL},
};

static PyObject *callable_call(Callable *self, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_Format(PyExc_TypeError, "%s takes its feeds by placeholder name, as keyword arguments "
                     "(got %zd positional)", Py_TYPE(self)->tp_name, PyTuple_GET_SIZE(args));
        return NULL;
    }
    if (self->call == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_call");
        return NULL;
    }
    PyObject *feeds = kwds != NULL ? Py_NewRef(kwds) : PyDict_New();
    if (feeds == NULL)
        return NULL;
    PyObject *result = PyObject_CallOneArg(self->call, feeds);
    Py_DECREF(feeds);
    return result;
}

static int callable_traverse(Callable *self, visitproc visit, void *arg) {
    Py_VISIT(self->call);
    return 0;
}

static int callable_clear(Callable *self) {
    Py_CLEAR(self->call);
    return 0;
}

static void callable_dealloc(Callable *self) {
    PyObject_GC_UnTrack(self);
    callable_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CallableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "codegen.llvm._call.Callable",
    .tp_doc = PyDoc_STR("A base whose call passes the keyword arguments, as a dict, to self._call."),
    .tp_basicsize = sizeof(Callable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)callable_dealloc,
    .tp_traverse = (traverseproc)callable_traverse,
    .tp_clear = (inquiry)callable_clear,
    .tp_members = callable_members,
    .tp_call = (ternaryfunc)callable_call,
};

/* ---- FastCall: a compiled step's per-call path ------------------------------------------------ */

typedef void (*step_fn)(int64_t batch, void *slots);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *backend, *spec, *variable_class;
    PyObject *names, *dtypes;   /* tuples, one entry per placeholder (sorted by name) */
    Py_ssize_t *slots;          /* each placeholder's index in the slot table */
    Py_ssize_t n;
    void **slot_table;          /* the backend's buffer address table (a ctypes array) */
    step_fn step;
    PyObject *step_lock;        /* backend.lock: its `lock` attribute is the lock a call holds */
    PyObject *lock, *acquire, *release;  /* the lock last found there, and its bound methods */
    PyObject *rebuild, *general;  /* rebuild is None when the fetches are returned as a list */
} FastCall;

static PyObject *s_batch, *s_fetch_views, *s_last, *s_any_mirrors, *s_lock, *s_acquire, *s_release, *s_shapes;

/* Remember `lock` (the one now in step_lock.lock) and its bound methods; 0, or -1 with an exception. */
static int set_lock(FastCall *self, PyObject *lock) {
    PyObject *acquire = PyObject_GetAttr(lock, s_acquire);
    PyObject *release = acquire != NULL ? PyObject_GetAttr(lock, s_release) : NULL;
    if (release == NULL) {
        Py_XDECREF(acquire);
        return -1;
    }
    Py_XSETREF(self->lock, Py_NewRef(lock));
    Py_XSETREF(self->acquire, acquire);
    Py_XSETREF(self->release, release);
    return 0;
}

static PyObject *general_path(FastCall *self, PyObject *feeds) {
    return PyObject_CallOneArg(self->general, feeds);
}

/* 1 when `a` is an exact ndarray of dtype `dtype`, C-contiguous, with the dims of `shape`. */
static int matches(PyObject *a, PyObject *dtype, PyObject *shape) {
    if (Py_TYPE(a) != &PyArray_Type || (PyObject *)PyArray_DESCR((PyArrayObject *)a) != dtype)
        return 0;
    PyArrayObject *arr = (PyArrayObject *)a;
    if (!PyTuple_CheckExact(shape) || PyArray_NDIM(arr) != PyTuple_GET_SIZE(shape))
        return 0;
    npy_intp *dims = PyArray_DIMS(arr);
    for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(shape); d++) {
        Py_ssize_t want = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, d));
        if (want == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (dims[d] != want)
            return 0;
    }
    return PyArray_IS_C_CONTIGUOUS(arr);
}

/* The step's fetches, copied out of the arena, after the step ran (the lock is held). */
static PyObject *copy_fetches(FastCall *self) {
    PyObject *views = PyObject_GetAttr(self->backend, s_fetch_views);
    if (views == NULL)
        return NULL;
    if (!PyList_CheckExact(views)) {
        Py_DECREF(views);
        PyErr_SetString(PyExc_TypeError, "backend.fetch_views is not a list");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(views);
    PyObject *out = PyList_New(count);
    for (Py_ssize_t k = 0; out != NULL && k < count; k++) {
        PyObject *view = PyList_GET_ITEM(views, k);
        PyObject *copy = PyArray_Check(view) ? PyArray_NewCopy((PyArrayObject *)view, NPY_CORDER)
                                             : PyObject_CallMethod(view, "copy", NULL);
        if (copy == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, k, copy);
    }
    Py_DECREF(views);
    return out;
}

/* Under the lock: the step on `inputs` for `batch`, or NULL with *miss set when the arena is not
 * laid out for this batch (another call changed it since the feeds were checked). */
static PyObject *run_locked(FastCall *self, PyObject **inputs, int64_t batch, int *miss) {
    PyObject *current = PyObject_GetAttr(self->backend, s_batch);
    if (current == NULL)
        return NULL;
    long long arena_batch = PyLong_AsLongLong(current);
    Py_DECREF(current);
    if (arena_batch == -1 && PyErr_Occurred())
        return NULL;
    if (arena_batch != batch) {
        *miss = 1;
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->n; i++)
        self->slot_table[self->slots[i]] = PyArray_DATA((PyArrayObject *)inputs[i]);
    Py_BEGIN_ALLOW_THREADS
    self->step(batch, self->slot_table);
    Py_END_ALLOW_THREADS
    return copy_fetches(self);
}

/* 1 when the feeds are what the general path last accepted (inputs[] and *batch filled in), 0 when
 * the general path must handle them, -1 with an exception set. */
static int check_feeds(FastCall *self, PyObject *feeds, PyObject **inputs, long long *batch) {
    if (!PyDict_CheckExact(feeds) || PyDict_GET_SIZE(feeds) != self->n)
        return 0;
    PyObject *mirrors = PyObject_GetAttr(self->variable_class, s_any_mirrors);
    if (mirrors == NULL)
        return -1;
    int has_mirrors = PyObject_IsTrue(mirrors);
    Py_DECREF(mirrors);
    if (has_mirrors != 0)
        return has_mirrors < 0 ? -1 : 0;
    PyObject *last = PyObject_GetAttr(self->spec, s_last);  /* (batch, shapes) or None */
    if (last == NULL)
        return -1;
    int ok = 0;
    if (PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == 2) {
        PyObject *shapes = PyTuple_GET_ITEM(last, 1);
        *batch = PyLong_AsLongLong(PyTuple_GET_ITEM(last, 0));
        ok = !(*batch == -1 && PyErr_Occurred()) && PyTuple_CheckExact(shapes) && PyTuple_GET_SIZE(shapes) == self->n;
        PyErr_Clear();
        for (Py_ssize_t i = 0; ok == 1 && i < self->n; i++) {
            PyObject *a = PyDict_GetItemWithError(feeds, PyTuple_GET_ITEM(self->names, i));  /* borrowed */
            if (a == NULL)
                ok = PyErr_Occurred() ? -1 : 0;
            else if (!matches(a, PyTuple_GET_ITEM(self->dtypes, i), PyTuple_GET_ITEM(shapes, i)))
                ok = 0;
            else
                inputs[i] = a;  /* the feeds dict keeps it alive for the call */
        }
    }
    Py_DECREF(last);
    return ok;
}

static PyObject *fastcall_call(FastCall *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a FastCall takes the feeds dict");
        return NULL;
    }
    PyObject *feeds = args[0], *inputs_small[8], **inputs = inputs_small;
    if (self->n > 8 && (inputs = PyMem_Malloc(self->n * sizeof(PyObject *))) == NULL)
        return PyErr_NoMemory();
    long long batch = 0;
    int miss = 0, ok = check_feeds(self, feeds, inputs, &batch);
    PyObject *result = NULL;
    if (ok == 1) {
        /* this call's own references: another thread may replace the remembered lock meanwhile */
        PyObject *lock = Py_NewRef(self->lock), *acquire = Py_NewRef(self->acquire);
        PyObject *release = Py_NewRef(self->release), *held = PyObject_CallNoArgs(acquire);
        if (held != NULL) {
            Py_DECREF(held);
            PyObject *now = PyObject_GetAttr(self->step_lock, s_lock);
            if (now == lock)
                result = run_locked(self, inputs, batch, &miss);
            else if (now != NULL && (now == self->lock || set_lock(self, now) == 0))
                miss = 1;  /* a merge replaced the lock: the general path takes the new one */
            Py_XDECREF(now);
            PyObject *released = PyObject_CallNoArgs(release);
            if (released == NULL)
                Py_CLEAR(result);
            Py_XDECREF(released);
        }
        Py_DECREF(lock);
        Py_DECREF(acquire);
        Py_DECREF(release);
    }
    if (inputs != inputs_small)
        PyMem_Free(inputs);
    if (ok == 0 || (miss && !PyErr_Occurred()))
        return general_path(self, feeds);
    if (result != NULL && self->rebuild != Py_None) {
        PyObject *rebuilt = PyObject_CallOneArg(self->rebuild, result);
        Py_DECREF(result);
        return rebuilt;
    }
    return result;
}

/* ---- FastCall.run_steps: many steps in one native call ----------------------------------------- */

typedef struct {
    char *data;         /* the dataset (a batched feed) or the value fed whole to every step */
    size_t row_bytes;   /* one sample's bytes (batched feeds) */
    char *stage;        /* where a batch is gathered (batched feeds, order given), else NULL */
    Py_ssize_t slot;
    int batched;
} StepFeed;

typedef struct {
    const char *src;    /* the fetched buffer in the arena */
    char *dst;          /* row 0 of its output; NULL where the fetch is added to *sum */
    size_t nbytes;
    double *sum;        /* the fetch's running sum (one float32 or float64 number, `single` for float32) */
    int single;
} StepFetch;

/* Feed i's array checked against its placeholder's shape: 1 when it has the leading batch dimension
 * (*rows its length), 0 when it is fed whole, -1 with an exception set. */
static int check_source(FastCall *self, Py_ssize_t i, PyObject *a, PyObject *shape, Py_ssize_t *rows) {
    PyObject *name = PyTuple_GET_ITEM(self->names, i);
    PyArray_Descr *want = (PyArray_Descr *)PyTuple_GET_ITEM(self->dtypes, i);
    if (!PyArray_CheckExact(a)) {
        PyErr_Format(PyExc_TypeError, "run_steps: feed '%U' must be a numpy array, got %s", name, Py_TYPE(a)->tp_name);
        return -1;
    }
    PyArrayObject *arr = (PyArrayObject *)a;
    if (!PyArray_EquivTypes(PyArray_DESCR(arr), want)) {
        PyErr_Format(PyExc_TypeError, "run_steps: feed '%U' must have dtype %R, got %R", name, (PyObject *)want,
                     (PyObject *)PyArray_DESCR(arr));
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr)) {
        PyErr_Format(PyExc_ValueError, "run_steps: feed '%U' is not C-contiguous (np.ascontiguousarray copies it)", name);
        return -1;
    }
    if (!PyTuple_Check(shape) || PyArray_NDIM(arr) != PyTuple_GET_SIZE(shape)) {
        PyErr_Format(PyExc_ValueError, "run_steps: feed '%U' must have rank %zd, got %d", name,
                     PyTuple_Check(shape) ? PyTuple_GET_SIZE(shape) : -1, PyArray_NDIM(arr));
        return -1;
    }
    npy_intp *dims = PyArray_DIMS(arr);
    int batched = 0;
    for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(shape); d++) {
        PyObject *dim = PyTuple_GET_ITEM(shape, d);
        if (dim == Py_None) {
            if (d != 0) {
                PyErr_Format(PyExc_ValueError, "run_steps: placeholder '%U' has a batch dimension that is not its "
                             "first (run_steps splits datasets along their first axis)", name);
                return -1;
            }
            batched = 1;
            continue;
        }
        Py_ssize_t size = PyLong_AsSsize_t(dim);
        if (size == -1 && PyErr_Occurred())
            return -1;
        if (dims[d] != size) {
            PyErr_Format(PyExc_ValueError, "run_steps: feed '%U' has size %zd in dimension %zd, the placeholder %zd",
                         name, (Py_ssize_t)dims[d], d, size);
            return -1;
        }
    }
    *rows = batched ? (Py_ssize_t)dims[0] : 0;
    return batched;
}

/* Rows order[0..batch) of `src` (rows of `row_bytes`) into consecutive rows of `stage`. A row of a
 * few bytes (a tiny model's features, a label) would spend more time in a memcpy call than copying:
 * the common small sizes copy with a constant size, which the compiler turns into a load and a store. */
static void gather_rows(char *stage, const char *src, const int64_t *order, Py_ssize_t batch, size_t row_bytes) {
#define GATHER(size)                                                                    \
    case size:                                                                          \
        for (Py_ssize_t r = 0; r < batch; r++)                                          \
            memcpy(stage + (size_t)r * (size), src + (size_t)order[r] * (size), (size)); \
        return;
    switch (row_bytes) {
        GATHER(1) GATHER(2) GATHER(4) GATHER(8) GATHER(12) GATHER(16) GATHER(24) GATHER(32) GATHER(64)
    }
#undef GATHER
    for (Py_ssize_t r = 0; r < batch; r++)
        memcpy(stage + (size_t)r * row_bytes, src + (size_t)order[r] * row_bytes, row_bytes);
}

/* The step on `count` batches: gather or point at each batch's rows, run, copy the fetches out. Runs
 * without the GIL on memory run_steps checked; the caller holds the step lock. */
static void step_loop(FastCall *self, StepFeed *feeds, StepFetch *fetches, Py_ssize_t n_fetches,
                      const int64_t *order, Py_ssize_t start, Py_ssize_t count, Py_ssize_t batch) {
    for (Py_ssize_t s = 0; s < count; s++) {
        Py_ssize_t first = start + s * batch;
        for (Py_ssize_t i = 0; i < self->n; i++) {
            StepFeed *f = &feeds[i];
            if (!f->batched)
                continue;
            if (f->stage == NULL) {
                self->slot_table[f->slot] = f->data + (size_t)first * f->row_bytes;
                continue;
            }
            gather_rows(f->stage, f->data, order + first, batch, f->row_bytes);
            self->slot_table[f->slot] = f->stage;
        }
        self->step((int64_t)batch, self->slot_table);
        for (Py_ssize_t k = 0; k < n_fetches; k++) {
            StepFetch *f = &fetches[k];
            if (f->dst != NULL) {
                memcpy(f->dst + (size_t)s * f->nbytes, f->src, f->nbytes);
                continue;
            }
            double value = f->single ? (double)*(const float *)f->src : *(const double *)f->src;
            *f->sum += value * (double)batch;
        }
    }
}

/* The feeds checked into feeds[] (all batched ones of one length, *rows): 0, or -1 with an exception. */
static int check_sources(FastCall *self, PyObject *sources, StepFeed *feeds, Py_ssize_t *rows) {
    PyObject *shapes = PyObject_GetAttr(self->spec, s_shapes);
    if (shapes == NULL)
        return -1;
    int status = 0;
    Py_ssize_t first_batched = -1;
    if (!PyList_Check(shapes) || PyList_GET_SIZE(shapes) != self->n) {
        PyErr_SetString(PyExc_TypeError, "run_steps: the feed spec's shapes are not one per placeholder");
        status = -1;
    }
    for (Py_ssize_t i = 0; status == 0 && i < self->n; i++) {
        PyObject *a = PyTuple_GET_ITEM(sources, i);
        Py_ssize_t length = 0;
        int batched = check_source(self, i, a, PyList_GET_ITEM(shapes, i), &length);
        if (batched < 0) {
            status = -1;
            break;
        }
        PyArrayObject *arr = (PyArrayObject *)a;
        feeds[i] = (StepFeed){.data = PyArray_BYTES(arr), .slot = self->slots[i], .batched = batched};
        if (!batched)
            continue;
        size_t row = (size_t)PyArray_ITEMSIZE(arr);
        for (int d = 1; d < PyArray_NDIM(arr); d++)
            row *= (size_t)PyArray_DIM(arr, d);
        feeds[i].row_bytes = row;
        if (first_batched < 0) {
            first_batched = i;
            *rows = length;
        } else if (length != *rows) {
            PyErr_Format(PyExc_ValueError, "run_steps: feed '%U' has %zd samples but feed '%U' has %zd",
                         PyTuple_GET_ITEM(self->names, i), length, PyTuple_GET_ITEM(self->names, first_batched), *rows);
            status = -1;
        }
    }
    if (status == 0 && first_batched < 0) {
        PyErr_SetString(PyExc_ValueError, "run_steps: no placeholder has a leading batch dimension");
        status = -1;
    }
    Py_DECREF(shapes);
    return status;
}

/* The order's rows [start, end) checked to index samples [0, rows): 0, or -1 with an exception. */
static int check_order(PyObject *order, Py_ssize_t start, Py_ssize_t end, Py_ssize_t rows, const int64_t **out) {
    *out = NULL;
    if (order == Py_None) {
        if (end > rows) {
            PyErr_Format(PyExc_ValueError, "run_steps: batches up to row %zd of %zd samples", end, rows);
            return -1;
        }
        return 0;
    }
    PyArrayObject *arr = (PyArrayObject *)order;
    if (!PyArray_CheckExact(order) || PyArray_TYPE(arr) != NPY_INT64 || PyArray_NDIM(arr) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(arr)) {
        PyErr_SetString(PyExc_TypeError, "run_steps: order must be a C-contiguous 1-d int64 array");
        return -1;
    }
    if (end > PyArray_DIM(arr, 0)) {
        PyErr_Format(PyExc_ValueError, "run_steps: batches up to position %zd of an order of %zd", end,
                     (Py_ssize_t)PyArray_DIM(arr, 0));
        return -1;
    }
    const int64_t *idx = (const int64_t *)PyArray_DATA(arr);
    for (Py_ssize_t j = start; j < end; j++)
        if (idx[j] < 0 || idx[j] >= rows) {
            PyErr_Format(PyExc_IndexError, "run_steps: order[%zd] = %lld is not a sample index (0 to %zd)", j,
                         (long long)idx[j], rows - 1);
            return -1;
        }
    *out = idx;
    return 0;
}

/* The number of outputs `outs` stands for: a tuple's length, or a float64 array of sums' length; -1
 * with an exception for anything else. */
static Py_ssize_t output_count(PyObject *outs) {
    if (PyTuple_Check(outs))
        return PyTuple_GET_SIZE(outs);
    PyArrayObject *o = (PyArrayObject *)outs;
    if (PyArray_CheckExact(outs) && PyArray_TYPE(o) == NPY_FLOAT64 && PyArray_NDIM(o) == 1 &&
        PyArray_IS_C_CONTIGUOUS(o) && PyArray_ISWRITEABLE(o))
        return PyArray_DIM(o, 0);
    PyErr_SetString(PyExc_TypeError, "run_steps: outs must be a tuple of arrays or a writeable 1-d float64 array of sums");
    return -1;
}

/* The fetched buffers (backend.fetch_views, laid out for `batch`) and their outputs, `count` rows
 * each, or their sums (`outs` a float64 array: each fetch one float32 or float64 number): 0, or -1
 * with an exception. */
static int check_fetches(FastCall *self, PyObject *views, PyObject *outs, Py_ssize_t count, StepFetch *fetches) {
    Py_ssize_t n = output_count(outs);
    if (n < 0)
        return -1;
    if (!PyList_CheckExact(views) || PyList_GET_SIZE(views) != n) {
        PyErr_Format(PyExc_ValueError, "run_steps: one output per fetch (%zd given)", n);
        return -1;
    }
    int summed = !PyTuple_Check(outs);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *view = PyList_GET_ITEM(views, k);
        if (!PyArray_Check(view) || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)view)) {
            PyErr_SetString(PyExc_TypeError, "run_steps: a fetched buffer is not a contiguous array");
            return -1;
        }
        PyArrayObject *v = (PyArrayObject *)view;
        if (summed) {
            int type = PyArray_TYPE(v);
            if (PyArray_SIZE(v) != 1 || (type != NPY_FLOAT32 && type != NPY_FLOAT64) || !PyArray_ISNOTSWAPPED(v)) {
                PyErr_Format(PyExc_ValueError, "run_steps: fetch %zd is not one float32 or float64 number to sum", k);
                return -1;
            }
            fetches[k] = (StepFetch){.src = PyArray_BYTES(v), .sum = (double *)PyArray_DATA((PyArrayObject *)outs) + k,
                                     .single = type == NPY_FLOAT32};
            continue;
        }
        PyObject *out = PyTuple_GET_ITEM(outs, k);
        PyArrayObject *o = (PyArrayObject *)out;
        if (!PyArray_CheckExact(out) || !PyArray_IS_C_CONTIGUOUS(o) || !PyArray_ISWRITEABLE(o) ||
            !PyArray_EquivTypes(PyArray_DESCR(o), PyArray_DESCR(v)) ||
            PyArray_NBYTES(o) != (npy_intp)count * PyArray_NBYTES(v)) {
            PyErr_Format(PyExc_ValueError, "run_steps: output %zd must be a writeable C-contiguous array of %zd "
                         "rows of fetch %zd", k, count, k);
            return -1;
        }
        fetches[k] = (StepFetch){.src = PyArray_BYTES(v), .dst = PyArray_BYTES(o), .nbytes = (size_t)PyArray_NBYTES(v)};
    }
    return 0;
}

static PyObject *fastcall_run_steps(FastCall *self, PyObject *args) {
    PyObject *sources, *order, *outs;
    Py_ssize_t start, count, batch, rows = 0;
    if (!PyArg_ParseTuple(args, "O!OnnnO:run_steps", &PyTuple_Type, &sources, &order, &start, &count, &batch,
                          &outs))
        return NULL;
    if (PyTuple_GET_SIZE(sources) != self->n || start < 0 || count < 0 || batch < 1 ||
        (count > 0 && (count > PY_SSIZE_T_MAX / batch || start > PY_SSIZE_T_MAX - count * batch))) {
        PyErr_SetString(PyExc_ValueError, "run_steps: one source per placeholder, start >= 0, count >= 0, batch >= 1");
        return NULL;
    }
    Py_ssize_t n_fetches = output_count(outs), end = start + count * batch;
    if (n_fetches < 0)
        return NULL;
    StepFeed *feeds = PyMem_Calloc(self->n ? self->n : 1, sizeof(StepFeed));
    StepFetch *fetches = PyMem_Calloc(n_fetches ? n_fetches : 1, sizeof(StepFetch));
    PyObject *views = NULL, *current = NULL;
    const int64_t *idx = NULL;
    int ok = feeds != NULL && fetches != NULL;
    if (!ok)
        PyErr_NoMemory();
    ok = ok && check_sources(self, sources, feeds, &rows) == 0 && check_order(order, start, end, rows, &idx) == 0;
    /* the arena must be laid out for this batch (the caller set it, holding the step lock) */
    ok = ok && (current = PyObject_GetAttr(self->backend, s_batch)) != NULL;
    if (ok && PyLong_AsSsize_t(current) != batch) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "run_steps: the arena is not laid out for batch %zd", batch);
        ok = 0;
    }
    ok = ok && (views = PyObject_GetAttr(self->backend, s_fetch_views)) != NULL &&
         check_fetches(self, views, outs, count, fetches) == 0;
    for (Py_ssize_t i = 0; ok && i < self->n; i++) {
        if (!feeds[i].batched)
            self->slot_table[feeds[i].slot] = feeds[i].data;
        else if (idx != NULL && (feeds[i].stage = PyMem_Malloc(batch * feeds[i].row_bytes + 1)) == NULL) {
            PyErr_NoMemory();
            ok = 0;
        }
    }
    if (ok && count > 0) {
        Py_BEGIN_ALLOW_THREADS
        step_loop(self, feeds, fetches, n_fetches, idx, start, count, batch);
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t i = 0; feeds != NULL && i < self->n; i++)
        PyMem_Free(feeds[i].stage);
    PyMem_Free(feeds);
    PyMem_Free(fetches);
    Py_XDECREF(views);
    Py_XDECREF(current);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* run_steps holding the step lock itself, as a call does: True once the steps ran; False, having run
 * nothing, when the arena is laid out for another batch or a merge replaced the lock (the caller then
 * takes the lock in Python and lays the arena out: LLVMBackend.run_steps). */
static PyObject *fastcall_try_run_steps(FastCall *self, PyObject *args) {
    PyObject *sources, *order, *outs;
    Py_ssize_t start, count, batch;
    if (!PyArg_ParseTuple(args, "O!OnnnO:try_run_steps", &PyTuple_Type, &sources, &order, &start, &count, &batch,
                          &outs))
        return NULL;
    /* this call's own references: another thread may replace the remembered lock meanwhile */
    PyObject *lock = Py_NewRef(self->lock), *acquire = Py_NewRef(self->acquire), *release = Py_NewRef(self->release);
    PyObject *result = NULL, *held = PyObject_CallNoArgs(acquire);
    if (held != NULL) {
        Py_DECREF(held);
        PyObject *now = PyObject_GetAttr(self->step_lock, s_lock);
        if (now == lock) {
            PyObject *current = PyObject_GetAttr(self->backend, s_batch);
            Py_ssize_t arena_batch = current != NULL ? PyLong_AsSsize_t(current) : -1;
            Py_XDECREF(current);
            if (!(arena_batch == -1 && PyErr_Occurred())) {
                if (arena_batch != batch)
                    result = Py_NewRef(Py_False);
                else if ((result = fastcall_run_steps(self, args)) != NULL)
                    Py_SETREF(result, Py_NewRef(Py_True));
            }
        } else if (now != NULL && (now == self->lock || set_lock(self, now) == 0)) {
            result = Py_NewRef(Py_False);  /* a merge replaced the lock: the caller takes the new one */
        }
        Py_XDECREF(now);
        PyObject *type, *value, *traceback;  /* the steps' error, kept while the lock is released */
        PyErr_Fetch(&type, &value, &traceback);
        PyObject *released = PyObject_CallNoArgs(release);
        if (released == NULL) {
            Py_CLEAR(result);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
        } else {
            PyErr_Restore(type, value, traceback);
        }
        Py_XDECREF(released);
    }
    Py_DECREF(lock);
    Py_DECREF(acquire);
    Py_DECREF(release);
    return result;
}

static PyMethodDef fastcall_methods[] = {
    {"run_steps", (PyCFunction)fastcall_run_steps, METH_VARARGS,
     PyDoc_STR("run_steps(sources, order, start, count, batch, outs): the step on `count` batches in one call "
               "(the caller holds the step lock and has laid the arena out for `batch`); `outs` a tuple of "
               "per-step outputs, or a float64 array of sums, each fetch times `batch` added per step.")},
    {"try_run_steps", (PyCFunction)fastcall_try_run_steps, METH_VARARGS,
     PyDoc_STR("try_run_steps(sources, order, start, count, batch, outs): run_steps holding the step lock; False "
               "(nothing run) where the arena is laid out for another batch or the lock was replaced.")},
    {NULL},
};

static PyObject *fastcall_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *backend, *spec, *variable_class, *names, *dtypes, *slots, *rebuild, *general;
    unsigned long long step_address, table_address;
    static char *keywords[] = {"backend", "spec", "variable_class", "names", "dtypes", "slots",
                               "slot_table", "step", "rebuild", "general", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!O!O!KKOO:FastCall", keywords, &backend, &spec,
                                     &variable_class, &PyTuple_Type, &names, &PyTuple_Type, &dtypes,
                                     &PyTuple_Type, &slots, &table_address, &step_address, &rebuild, &general))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(dtypes) != n || PyTuple_GET_SIZE(slots) != n || !table_address || !step_address) {
        PyErr_SetString(PyExc_ValueError, "FastCall: one dtype and slot per name, and non-null addresses");
        return NULL;
    }
    PyObject *step_lock = PyObject_GetAttrString(backend, "lock");
    if (step_lock == NULL)
        return NULL;
    FastCall *self = (FastCall *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(step_lock);
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)fastcall_call;
    self->step_lock = step_lock;
    PyObject *lock = PyObject_GetAttr(step_lock, s_lock);
    int remembered = lock != NULL ? set_lock(self, lock) : -1;
    Py_XDECREF(lock);
    self->slots = PyMem_Malloc((n ? n : 1) * sizeof(Py_ssize_t));
    if (remembered < 0 || self->slots == NULL) {
        Py_DECREF(self);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->slots[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(slots, i));
        if (self->slots[i] < 0) {
            Py_DECREF(self);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "FastCall: negative slot");
            return NULL;
        }
    }
    self->n = n;
    self->slot_table = (void **)(uintptr_t)table_address;
    self->step = (step_fn)(uintptr_t)step_address;
    PyObject **fields[] = {&self->backend, &self->spec, &self->variable_class, &self->names, &self->dtypes,
                           &self->rebuild, &self->general};
    PyObject *values[] = {backend, spec, variable_class, names, dtypes, rebuild, general};
    for (int f = 0; f < 7; f++) {
        Py_INCREF(values[f]);
        *fields[f] = values[f];
    }
    return (PyObject *)self;
}

static void fastcall_dealloc(FastCall *self) {
    Py_XDECREF(self->backend);
    Py_XDECREF(self->spec);
    Py_XDECREF(self->variable_class);
    Py_XDECREF(self->names);
    Py_XDECREF(self->dtypes);
    Py_XDECREF(self->step_lock);
    Py_XDECREF(self->lock);
    Py_XDECREF(self->acquire);
    Py_XDECREF(self->release);
    Py_XDECREF(self->rebuild);
    Py_XDECREF(self->general);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject FastCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "codegen.llvm._call.FastCall",
    .tp_doc = PyDoc_STR("A compiled step's per-call path: call it with the feeds dict."),
    .tp_basicsize = sizeof(FastCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = fastcall_new,
    .tp_dealloc = (destructor)fastcall_dealloc,
    .tp_vectorcall_offset = offsetof(FastCall, vectorcall),
    .tp_methods = fastcall_methods,
    .tp_call = PyVectorcall_Call,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_call", "The per-call path of compiled functions (codegen/llvm/call.py).", -1, NULL,
};

static int add_type(PyObject *m, const char *name, PyTypeObject *type) {
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__call(void) {
    import_array();
    s_batch = PyUnicode_InternFromString("batch");
    s_fetch_views = PyUnicode_InternFromString("fetch_views");
    s_last = PyUnicode_InternFromString("last");
    s_any_mirrors = PyUnicode_InternFromString("any_mirrors");
    s_lock = PyUnicode_InternFromString("lock");
    s_acquire = PyUnicode_InternFromString("acquire");
    s_release = PyUnicode_InternFromString("release");
    s_shapes = PyUnicode_InternFromString("shapes");
    if (!s_batch || !s_fetch_views || !s_last || !s_any_mirrors || !s_lock || !s_acquire || !s_release || !s_shapes ||
        PyType_Ready(&CallableType) < 0 || PyType_Ready(&FastCallType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (add_type(m, "Callable", &CallableType) < 0 || add_type(m, "FastCall", &FastCallType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
