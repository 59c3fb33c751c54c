/* graphnet.Function's call, in C: `fn(**feeds)` hands the keyword arguments, as the dict the call
 * built, to `fn._call` (a backend's per-call path or Function._general). A Python `__call__` doing
 * the same costs ~0.3 us more per call, a fifth of a tiny model's whole step. graphnet/function.py
 * falls back to that Python `__call__` where this extension was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>

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
    .tp_name = "graphnet._callable.Callable",
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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_callable", "The C base of graphnet.Function (its call).", -1, NULL,
};

PyMODINIT_FUNC PyInit__callable(void) {
    if (PyType_Ready(&CallableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CallableType);
    if (PyModule_AddObject(m, "Callable", (PyObject *)&CallableType) < 0) {
        Py_DECREF(&CallableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
