/*
 * One row through a small dense ReLU network: the single-decision runtime of the exported MLPs.
 *
 * The artifact's ONNX graph is the model (``modeling.onnx_graph`` writes it, onnxruntime runs it for
 * batches and for any other graph). For one row, onnxruntime's fixed cost (binding, graph walk, kernel
 * dispatch: about 4-6 µs here) is most of a light decision, and every microsecond of a decision is
 * charged to the transfer (DESIGN section 5a). The networks are a few thousand multiply-adds, which take
 * well under a microsecond in plain C, so ``modeling.dense`` reads the weights out of the same ONNX graph
 * and runs them here; it checks on load that both runtimes give the same outputs.
 *
 * Arithmetic: float32 weights and activations (the graph's types) and float32 sums, like onnxruntime's;
 * the weights are kept transposed so that each input updates a whole row of outputs (a loop the compiler
 * vectorises, with no dependency chain through one accumulator) and inputs that are zero (ReLU) are
 * skipped. The order of the sums differs from onnxruntime's, so outputs differ in the last bits only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define MAX_LAYERS 8
#define MAX_WIDTH 4096

typedef struct {
    PyObject_HEAD
    int layers;
    int softmax;
    int rows[MAX_LAYERS]; /* outputs of each layer */
    int cols[MAX_LAYERS]; /* inputs of each layer */
    float *weights[MAX_LAYERS]; /* transposed: cols x rows (the graph's Gemm holds rows x cols, transB=1) */
    float *bias[MAX_LAYERS];
} Dense;

static void free_layers(Dense *self) {
    for (int i = 0; i < self->layers; i++) {
        PyMem_Free(self->weights[i]);
        PyMem_Free(self->bias[i]);
        self->weights[i] = self->bias[i] = NULL;
    }
    self->layers = 0;
}

static void dense_dealloc(Dense *self) {
    free_layers(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Dense(layers, softmax): layers is a sequence of (weights, bias, rows, cols), the buffers float32. */
static int dense_init(Dense *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"layers", "softmax", NULL};
    PyObject *layers;
    int softmax;
    if (self->layers) {
        PyErr_SetString(PyExc_TypeError, "Dense is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Op", kwlist, &layers, &softmax)) return -1;
    PyObject *seq = PySequence_Fast(layers, "layers must be a sequence of (weights, bias, rows, cols)");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_LAYERS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "a network has 1 to %d layers, got %zd", MAX_LAYERS, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer w, b;
        int rows, cols;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(item)) {
            Py_DECREF(seq);
            free_layers(self);
            PyErr_SetString(PyExc_TypeError, "a layer is a tuple (weights, bias, rows, cols)");
            return -1;
        }
        if (!PyArg_ParseTuple(item, "y*y*ii;a layer is (weights, bias, rows, cols)", &w, &b, &rows, &cols)) {
            Py_DECREF(seq);
            free_layers(self);
            return -1;
        }
        const char *problem = NULL;
        if (rows < 1 || cols < 1 || rows > MAX_WIDTH || cols > MAX_WIDTH)
            problem = "layer shape out of range";
        else if (w.len != (Py_ssize_t)rows * cols * (Py_ssize_t)sizeof(float))
            problem = "weights are not rows x cols float32 values";
        else if (b.len != (Py_ssize_t)rows * (Py_ssize_t)sizeof(float))
            problem = "bias is not rows float32 values";
        else if (i > 0 && cols != self->rows[i - 1])
            problem = "a layer's inputs differ from the previous layer's outputs";
        if (problem == NULL) {
            self->weights[i] = PyMem_Malloc(w.len);
            self->bias[i] = PyMem_Malloc(b.len);
            if (self->weights[i] == NULL || self->bias[i] == NULL) {
                PyMem_Free(self->weights[i]);
                PyMem_Free(self->bias[i]);
                self->weights[i] = self->bias[i] = NULL;
                PyBuffer_Release(&w);
                PyBuffer_Release(&b);
                Py_DECREF(seq);
                free_layers(self);
                PyErr_NoMemory();
                return -1;
            }
            const float *src = (const float *)w.buf;
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++) self->weights[i][(Py_ssize_t)c * rows + r] = src[(Py_ssize_t)r * cols + c];
            memcpy(self->bias[i], b.buf, b.len);
            self->rows[i] = rows;
            self->cols[i] = cols;
            self->layers = (int)i + 1;
        }
        PyBuffer_Release(&w);
        PyBuffer_Release(&b);
        if (problem != NULL) {
            Py_DECREF(seq);
            free_layers(self);
            PyErr_Format(PyExc_ValueError, "layer %zd: %s", i, problem);
            return -1;
        }
    }
    Py_DECREF(seq);
    self->softmax = softmax;
    return 0;
}

/* run(vector) -> list of outputs (probabilities when the network ends in a softmax); the vector is a
 * sequence of floats or a contiguous float64 buffer. */
static PyObject *dense_run(Dense *self, PyObject *arg) {
    if (!self->layers) {
        PyErr_SetString(PyExc_ValueError, "Dense is not initialised");
        return NULL;
    }
    float a[MAX_WIDTH], h[MAX_WIDTH];
    if (!PyList_Check(arg) && !PyTuple_Check(arg) && PyObject_CheckBuffer(arg)) {
        /* a float64 row buffer (the decision path's: no Python float per input) */
        Py_buffer view;
        if (PyObject_GetBuffer(arg, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
        const int is_double = view.itemsize == (Py_ssize_t)sizeof(double) && view.format != NULL &&
                              (strcmp(view.format, "d") == 0 || strcmp(view.format, "<d") == 0 ||
                               strcmp(view.format, "=d") == 0);
        if (!is_double || view.len != (Py_ssize_t)self->cols[0] * (Py_ssize_t)sizeof(double)) {
            PyBuffer_Release(&view);
            PyErr_Format(PyExc_ValueError, "a row buffer must hold %d float64 values", self->cols[0]);
            return NULL;
        }
        const double *src = (const double *)view.buf;
        for (int i = 0; i < self->cols[0]; i++) a[i] = (float)src[i];
        PyBuffer_Release(&view);
    } else {
        PyObject *seq = PySequence_Fast(arg, "the input must be a sequence of floats or a float64 buffer");
        if (seq == NULL) return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        if (n != self->cols[0]) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "the network takes %d inputs, got %zd", self->cols[0], n);
            return NULL;
        }
        PyObject **items = PySequence_Fast_ITEMS(seq);
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = PyFloat_AsDouble(items[i]);
            if (v == -1.0 && PyErr_Occurred()) {
                Py_DECREF(seq);
                return NULL;
            }
            a[i] = (float)v;
        }
        Py_DECREF(seq);
    }
    float *in = a, *out = h;
    for (int layer = 0; layer < self->layers; layer++) {
        const int rows = self->rows[layer], cols = self->cols[layer];
        const float *w = self->weights[layer], *b = self->bias[layer];
        const int last = layer == self->layers - 1;
        for (int r = 0; r < rows; r++) out[r] = b[r];
        for (int c = 0; c < cols; c++) {
            const float x = in[c];
            if (x == 0.0f) continue;
            const float *wc = w + (Py_ssize_t)c * rows;
            for (int r = 0; r < rows; r++) out[r] += wc[r] * x;
        }
        if (!last)
            for (int r = 0; r < rows; r++) out[r] = out[r] < 0.0f ? 0.0f : out[r];
        float *t = in;
        in = out;
        out = t;
    }
    const int m = self->rows[self->layers - 1];
    if (self->softmax) {
        float top = in[0];
        for (int r = 1; r < m; r++)
            if (in[r] > top) top = in[r];
        double total = 0.0;
        for (int r = 0; r < m; r++) total += exp((double)in[r] - top);
        for (int r = 0; r < m; r++) in[r] = (float)(exp((double)in[r] - top) / total);
    }
    PyObject *result = PyList_New(m);
    if (result == NULL) return NULL;
    for (int r = 0; r < m; r++) {
        PyObject *v = PyFloat_FromDouble((double)in[r]);
        if (v == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, r, v);
    }
    return result;
}

static PyObject *dense_inputs(Dense *self, void *closure) { return PyLong_FromLong(self->layers ? self->cols[0] : 0); }

static PyObject *dense_outputs(Dense *self, void *closure) {
    return PyLong_FromLong(self->layers ? self->rows[self->layers - 1] : 0);
}

static PyMethodDef dense_methods[] = {
    {"run", (PyCFunction)dense_run, METH_O, "run(vector) -> list[float]: one row through the network"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef dense_getset[] = {
    {"inputs", (getter)dense_inputs, NULL, "number of inputs", NULL},
    {"outputs", (getter)dense_outputs, NULL, "number of outputs", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DenseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dwcp_selector._dense.Dense",
    .tp_basicsize = sizeof(Dense),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Dense(layers, softmax): a ReLU network of float32 (weights, bias, rows, cols) layers",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)dense_init,
    .tp_dealloc = (destructor)dense_dealloc,
    .tp_methods = dense_methods,
    .tp_getset = dense_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dense", "One row through a small dense ReLU network.", -1, NULL,
};

PyMODINIT_FUNC PyInit__dense(void) {
    if (PyType_Ready(&DenseType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&DenseType);
    if (PyModule_AddObject(m, "Dense", (PyObject *)&DenseType) < 0) {
        Py_DECREF(&DenseType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
