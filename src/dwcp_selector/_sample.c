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
#define SIM_PAGES 8 /* features._SIM_PAGES */

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

/* byte counts into four interleaved tables: consecutive equal bytes then increment different counters,
 * instead of each increment waiting for the previous one to reach memory (about 3x faster on runs) */
static void count_bytes(const unsigned char *p, Py_ssize_t n, unsigned int (*tables)[256]) {
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        tables[0][p[i]]++;
        tables[1][p[i + 1]]++;
        tables[2][p[i + 2]]++;
        tables[3][p[i + 3]]++;
    }
    for (; i < n; i++) tables[0][p[i]]++;
}

/* entropy, zero and text shares of the spread sample of data[0:n] (the GIL released while counting) */
static void stats_of(const unsigned char *data, Py_ssize_t n, double *entropy, double *zero, double *text_share) {
    unsigned int tables[4][256];
    long long counts[256];
    Py_ssize_t k;
    Py_BEGIN_ALLOW_THREADS
    memset(tables, 0, sizeof tables);
    if (n <= SAMPLE) {
        count_bytes(data, n, tables);
        k = n;
    } else {
        Py_ssize_t step = (n - PIECE) / (PIECES - 1);
        for (int i = 0; i < PIECES; i++) count_bytes(data + i * step, PIECE, tables);
        k = SAMPLE;
    }
    for (int b = 0; b < 256; b++)
        counts[b] = (long long)tables[0][b] + tables[1][b] + tables[2][b] + tables[3][b];
    Py_END_ALLOW_THREADS
    if (k == 0) {
        *entropy = *zero = *text_share = 0.0;
        return;
    }
    double terms[256];
    long long text = 0;
    for (int b = 0; b < 256; b++) {
        terms[b] = clog_table[counts[b]];
        if (text_mask[b]) text += counts[b];
    }
    double kd = (double)k;
    *entropy = log2(kd) - pairwise_sum(terms, 256) / kd;
    *zero = (double)counts[0] / kd;
    *text_share = (double)text / kd;
}

/* sample_stats(data) -> (entropy, zero_fraction, text_fraction) of the spread sample of ``data``. */
static PyObject *sample_stats(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (!clog_ready) {
        PyErr_SetString(PyExc_RuntimeError, "set_clog has not been called");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    double entropy, zero, text;
    stats_of((const unsigned char *)view.buf, view.len, &entropy, &zero, &text);
    PyBuffer_Release(&view);
    return Py_BuildValue("(ddd)", entropy, zero, text);
}

/* identical pages among ``count`` spread over the common length, compared at the same offsets (offsets as
 * features._page_offsets computes them); *compared gets how many were compared */
static Py_ssize_t count_same(const char *pa, Py_ssize_t la, const char *pb, Py_ssize_t lb, Py_ssize_t count,
                             Py_ssize_t *compared) {
    Py_ssize_t pages = (la < lb ? la : lb) / PAGE;
    Py_ssize_t n = pages <= count ? pages : count;
    Py_ssize_t same = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t page = pages <= count ? i : i * (pages - 1) / (count - 1);
        if (memcmp(pa + page * PAGE, pb + page * PAGE, PAGE) == 0) same++;
    }
    *compared = n;
    return same;
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
    Py_ssize_t compared;
    Py_ssize_t same = count_same((const char *)a.buf, a.len, (const char *)b.buf, b.len, count, &compared);
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return Py_BuildValue("(nn)", same, compared);
}

/* a float argument that may be None: 1 and *out set, 0 for None, -1 on error */
static int optional_double(PyObject *o, double *out) {
    if (o == Py_None) return 0;
    *out = PyFloat_AsDouble(o);
    if (*out == -1.0 && PyErr_Occurred()) return -1;
    return 1;
}

#define LIGHT_PAYLOAD 13 /* payload columns before the type one-hot (featurize.payload_names, light) */
#define LIGHT_LINK 15    /* link columns before the link one-hot (featurize.link_names) */
#define LIGHT_ARGS 21

/*
 * light_row(out, data, base, type_index, n_types, prev_zstd, prev_lz4, prev_hde, capacity_bps, utilization,
 *           rtt_s, jitter_s, loss, free_cores, active_transfers, link_index, n_links, window_cap_bytes,
 *           mss_bytes, max_streams, chunk_size) -> (entropy, zero_fraction, text_fraction, similarity, base_len)
 *
 * The light tier's whole input row, written into ``out`` (float64, contiguous): featurize.payload_vector
 * (light) followed by featurize.link_vector, the same operations in the same order on the same libm calls,
 * so the row is bit-for-bit the one the Python functions build (a property test holds them equal). A
 * type or link index of -1 sets no one-hot column. Returns the basic features the row was built from.
 */
static PyObject *light_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != LIGHT_ARGS) {
        PyErr_Format(PyExc_TypeError, "light_row takes %d arguments, got %zd", LIGHT_ARGS, nargs);
        return NULL;
    }
    if (!clog_ready) {
        PyErr_SetString(PyExc_RuntimeError, "set_clog has not been called");
        return NULL;
    }
    long type_index = PyLong_AsLong(args[3]), n_types = PyLong_AsLong(args[4]);
    long link_index = PyLong_AsLong(args[15]), n_links = PyLong_AsLong(args[16]);
    long max_streams = PyLong_AsLong(args[19]);
    long long chunk = PyLong_AsLongLong(args[20]);
    double pz = 0, pl = 0, ph = 0;
    int has_z = optional_double(args[5], &pz), has_l = optional_double(args[6], &pl),
        has_h = optional_double(args[7], &ph);
    double cap = PyFloat_AsDouble(args[8]), util = PyFloat_AsDouble(args[9]), rtt = PyFloat_AsDouble(args[10]);
    double jitter = PyFloat_AsDouble(args[11]), loss = PyFloat_AsDouble(args[12]);
    double cores = PyFloat_AsDouble(args[13]), active = PyFloat_AsDouble(args[14]);
    double window_cap = PyFloat_AsDouble(args[17]), mss = PyFloat_AsDouble(args[18]);
    if (PyErr_Occurred() || has_z < 0 || has_l < 0 || has_h < 0) return NULL;
    if (n_types < 0 || n_links < 0 || type_index < -1 || type_index >= n_types || link_index < -1 ||
        link_index >= n_links || max_streams < 1 || chunk < 1 || !(rtt > 0)) {
        PyErr_SetString(PyExc_ValueError, "light_row: index, count or link parameter out of range");
        return NULL;
    }
    Py_ssize_t width = LIGHT_PAYLOAD + n_types + LIGHT_LINK + n_links;
    Py_buffer out, a, b;
    if (PyObject_GetBuffer(args[0], &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (out.len != width * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(&out);
        PyErr_Format(PyExc_ValueError, "the row buffer must hold %zd float64 values", width);
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &a, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    int has_base = args[2] != Py_None;
    if (has_base && PyObject_GetBuffer(args[2], &b, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&a);
        return NULL;
    }
    Py_ssize_t size = a.len, base_len = has_base ? b.len : 0;
    double entropy, zero, text, similarity = 0.0;
    stats_of((const unsigned char *)a.buf, size, &entropy, &zero, &text);
    if (has_base) {
        Py_ssize_t compared;
        Py_ssize_t same = count_same((const char *)a.buf, size, (const char *)b.buf, base_len, SIM_PAGES, &compared);
        if (compared)
            similarity = (double)same / (double)compared;
        else
            similarity = (size == base_len && memcmp(a.buf, b.buf, size) == 0) ? 1.0 : 0.0;
        PyBuffer_Release(&b);
    }
    PyBuffer_Release(&a);

    double *v = (double *)out.buf;
    memset(v, 0, width * sizeof(double));
    /* featurize.payload_vector, light tier */
    double sized = (double)size;
    v[0] = log2(sized + 1);
    v[1] = has_base ? 1.0 : 0.0;
    v[2] = has_base ? log2(((double)base_len + 1) / (sized + 1)) : 0.0;
    v[3] = entropy / 8.0;
    v[4] = zero;
    v[5] = text;
    v[6] = similarity;
    /* _lr: Python's max(x, 1e-6) keeps x unless 1e-6 > x (so a NaN stays NaN), written the same way */
    v[7] = has_z ? log2(1e-6 > pz ? 1e-6 : pz) : 0.0;
    v[8] = has_l ? log2(1e-6 > pl ? 1e-6 : pl) : 0.0;
    v[9] = has_h ? log2(1e-6 > ph ? 1e-6 : ph) : 0.0;
    v[10] = has_z ? 1.0 : 0.0;
    v[11] = has_l ? 1.0 : 0.0;
    v[12] = has_h ? 1.0 : 0.0;
    if (type_index >= 0) v[LIGHT_PAYLOAD + type_index] = 1.0;
    /* featurize.link_vector */
    double *w = v + LIGHT_PAYLOAD + n_types;
    double available = cap * (1.0 - util);
    double window = 8.0 * window_cap / rtt;
    double rate = window;
    if (loss > 0) {
        double mathis = 8.0 * mss * 1.22 / (rtt * sqrt(loss));
        if (mathis < window) rate = mathis;
    }
    double wanted = ceil(available / rate);
    double streams = wanted < (double)max_streams ? wanted : (double)max_streams;
    if (streams < 1) streams = 1;
    double effective = available < streams * rate ? available : streams * rate;
    double transmit = 8.0 * sized / effective;
    double chunks = size > 0 ? (double)((size + chunk - 1) / chunk) : 1.0;
    w[0] = log10(cap);
    w[1] = util;
    w[2] = log10(rtt);
    w[3] = jitter / rtt;
    w[4] = log10(loss + 1e-9);
    w[5] = log2(cores);
    w[6] = active;
    w[7] = log10(available);
    w[8] = log10(rate);
    w[9] = log2(streams);
    w[10] = log10(available * rtt / 8.0 + 1.0);
    w[11] = log10(transmit + 1e-9);
    w[12] = log10(rtt + transmit);
    w[13] = log2(chunks);
    w[14] = log2(cores < chunks ? cores : chunks);
    if (link_index >= 0) w[LIGHT_LINK + link_index] = 1.0;
    PyBuffer_Release(&out);
    PyObject *sim = has_base ? PyFloat_FromDouble(similarity) : Py_NewRef(Py_None);
    if (sim == NULL) return NULL;
    return Py_BuildValue("(dddNn)", entropy, zero, text, sim, base_len);
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
    {"light_row", (PyCFunction)(void (*)(void))light_row, METH_FASTCALL,
     "light_row(out, data, base, ...) -> (entropy, zero, text, similarity, base_len): the light tier's row"},
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
