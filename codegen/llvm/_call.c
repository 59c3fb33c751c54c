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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stddef.h>
#include <stdint.h>
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

static PyObject *s_batch, *s_fetch_views, *s_last, *s_any_mirrors, *s_lock, *s_acquire, *s_release;

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
    if (!s_batch || !s_fetch_views || !s_last || !s_any_mirrors || !s_lock || !s_acquire || !s_release ||
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
