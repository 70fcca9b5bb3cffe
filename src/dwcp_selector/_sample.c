/*
 * The basic payload features' byte statistics in one pass over a spread sample, without copies.
 *
 * This is the hot half of ``features.basic_features``: on the decision path every microsecond is charged
 * to the transfer (DESIGN section 5a), and the same statistics written with numpy cost five separate calls
 * (join, frombuffer, bincount, take-sum, dot). The arithmetic is the numpy formulation's, step for step:
 * the entropy sums c*log2(c) over the 256 counts in numpy's pairwise order, so the values are bit-for-bit
 * those the staging collection recorded (a property test checks it against the numpy formulation).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define PIECE 1024
#define PIECES 4
#define SAMPLE (PIECE * PIECES)
#define PAGE 4096

/* c*log2(c) for every count a sample can have: the very table ``features`` builds with numpy, handed over
 * by ``set_clog`` at import (numpy's vectorised log2 may round differently from libm's) */
static double clog_table[SAMPLE + 1];
static int clog_ready = 0;
static unsigned char text_mask[256];

/* numpy's pairwise summation of a contiguous float64 array (npy_pairwise_sum, unit stride). */
static double pairwise_sum(const double *a, Py_ssize_t n) {
    if (n < 8) {
        double res = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j];
        Py_ssize_t i;
        for (i = 8; i < n - (n % 8); i += 8) {
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

static void count_bytes(const unsigned char *p, Py_ssize_t n, long long *counts) {
    for (Py_ssize_t i = 0; i < n; i++) counts[p[i]]++;
}

/* sample_stats(data) -> (entropy, zero_fraction, text_fraction) of the spread sample of ``data``. */
static PyObject *sample_stats(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (!clog_ready) {
        PyErr_SetString(PyExc_RuntimeError, "set_clog has not been called");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    long long counts[256] = {0};
    Py_ssize_t k;
    Py_BEGIN_ALLOW_THREADS
    if (n <= SAMPLE) {
        count_bytes(data, n, counts);
        k = n;
    } else {
        Py_ssize_t step = (n - PIECE) / (PIECES - 1);
        for (int i = 0; i < PIECES; i++) count_bytes(data + i * step, PIECE, counts);
        k = SAMPLE;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (k == 0) return Py_BuildValue("(ddd)", 0.0, 0.0, 0.0);
    double terms[256];
    long long text = 0;
    for (int b = 0; b < 256; b++) {
        terms[b] = clog_table[counts[b]];
        if (text_mask[b]) text += counts[b];
    }
    double kd = (double)k;
    double entropy = log2(kd) - pairwise_sum(terms, 256) / kd;
    return Py_BuildValue("(ddd)", entropy, (double)counts[0] / kd, (double)text / kd);
}

/* same_pages(data, base, count) -> (identical, compared): ``count`` pages spread over the common length,
 * compared at the same offsets (offsets as features._page_offsets computes them). */
static PyObject *same_pages(PyObject *self, PyObject *args) {
    Py_buffer a, b;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "y*y*n", &a, &b, &count)) return NULL;
    if (count < 2) {
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "count must be at least 2");
        return NULL;
    }
    Py_ssize_t pages = (a.len < b.len ? a.len : b.len) / PAGE;
    Py_ssize_t compared = pages <= count ? pages : count;
    Py_ssize_t same = 0;
    const char *pa = (const char *)a.buf, *pb = (const char *)b.buf;
    for (Py_ssize_t i = 0; i < compared; i++) {
        Py_ssize_t page = pages <= count ? i : i * (pages - 1) / (count - 1);
        if (memcmp(pa + page * PAGE, pb + page * PAGE, PAGE) == 0) same++;
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return Py_BuildValue("(nn)", same, compared);
}

/* set_clog(table): the c*log2(c) table, SAMPLE + 1 float64 values. */
static PyObject *set_clog(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len != (Py_ssize_t)sizeof clog_table) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "the table must hold %d float64 values", SAMPLE + 1);
        return NULL;
    }
    memcpy(clog_table, view.buf, sizeof clog_table);
    PyBuffer_Release(&view);
    clog_ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_clog", set_clog, METH_O, "set_clog(table) -> None: the c*log2(c) table (4097 float64 values)"},
    {"sample_stats", sample_stats, METH_O,
     "sample_stats(data) -> (entropy, zero_fraction, text_fraction) of four 1 KiB pieces spread over data"},
    {"same_pages", same_pages, METH_VARARGS,
     "same_pages(data, base, count) -> (identical, compared) pages at the same offsets"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sample", "Sampled byte statistics of the basic payload features.", -1, methods,
};

PyMODINIT_FUNC PyInit__sample(void) {
    memset(text_mask, 0, sizeof text_mask);
    for (int c = 32; c < 127; c++) text_mask[c] = 1;
    text_mask[9] = text_mask[10] = text_mask[13] = 1;
    return PyModule_Create(&module);
}
