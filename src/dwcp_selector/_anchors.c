/*
 * HDE's content-defined anchors (``strategies/anchors.py``) in one pass over a block, without copies.
 *
 * An anchor is a position whose little-endian 4-byte word w is non-zero and hashes, as w * 0x9E3779B1 in
 * 32-bit arithmetic, below 2^24; its key is the 8 bytes at the position. The numpy formulation of the same
 * rule (four strided views, a multiply, a compare, a gather) cost about 3.5 ms per MiB, 40 % of region
 * coding on a shared library; this loop takes about half that. A property test holds the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define KEY_BYTES 8
#define MULT 0x9E3779B1u
#define THRESHOLD (1u << 24)

#define STEP 256

static inline int is_anchor(const unsigned char *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return (w != 0) & ((uint32_t)(w * MULT) < THRESHOLD);
}

/* block_anchors(data, start, end) -> (positions, keys): int64 and uint64 arrays as bytes, native order */
static PyObject *block_anchors(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn", &buf, &start, &end)) return NULL;
    const unsigned char *d = (const unsigned char *)buf.buf;
    Py_ssize_t stop = buf.len - KEY_BYTES;
    if (end < stop) stop = end;
    if (start < 0) start = 0;
    /* one anchor in 256 positions on varied content; the buffer doubles on content that has more */
    Py_ssize_t capacity = (stop > start ? (stop - start) / 128 : 0) + 64, count = 0;
    int64_t *found = PyMem_RawMalloc(capacity * sizeof(int64_t));
    int failed = found == NULL;
    Py_BEGIN_ALLOW_THREADS
    /* STEP positions at a time: a branch-free pass the compiler vectorises flags the anchors, then
     * only the flagged positions (one in 256 on varied content) are visited, eight flags per test */
    for (Py_ssize_t base = start; base < stop && !failed; base += STEP) {
        Py_ssize_t n = stop - base < STEP ? stop - base : STEP;
        unsigned char flags[STEP] = {0};
        for (Py_ssize_t j = 0; j < n; j++) flags[j] = (unsigned char)is_anchor(d + base + j);
        for (Py_ssize_t j = 0; j < n && !failed; j += 8) {
            uint64_t eight;
            memcpy(&eight, flags + j, 8);
            if (eight == 0) continue;
            for (Py_ssize_t q = j; q < j + 8; q++) {
                if (!flags[q]) continue;
                if (count == capacity) {
                    int64_t *grown = PyMem_RawRealloc(found, 2 * capacity * sizeof(int64_t));
                    if (grown == NULL) {
                        failed = 1;
                        break;
                    }
                    found = grown;
                    capacity *= 2;
                }
                found[count++] = (int64_t)(base + q);
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyObject *positions = NULL, *keys = NULL;
    if (!failed) {
        positions = PyBytes_FromStringAndSize((const char *)found, count * (Py_ssize_t)sizeof(int64_t));
        keys = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(uint64_t));
    }
    if (positions == NULL || keys == NULL) {
        Py_XDECREF(positions);
        Py_XDECREF(keys);
        PyMem_RawFree(found);
        PyBuffer_Release(&buf);
        return failed ? PyErr_NoMemory() : NULL;
    }
    char *key_out = PyBytes_AS_STRING(keys);
    for (Py_ssize_t k = 0; k < count; k++) memcpy(key_out + k * sizeof(uint64_t), d + found[k], KEY_BYTES);
    PyMem_RawFree(found);
    PyBuffer_Release(&buf);
    return Py_BuildValue("(NN)", positions, keys);
}

static PyMethodDef methods[] = {
    {"block_anchors", block_anchors, METH_VARARGS,
     "block_anchors(data, start, end) -> (positions, keys): the anchors in data[start:end], as int64 and "
     "uint64 arrays in native byte order (each key is the 8 bytes at its position, inside data)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_anchors", "Content-defined anchors of HDE's region coding.", -1, methods,
};

PyMODINIT_FUNC PyInit__anchors(void) { return PyModule_Create(&module); }
