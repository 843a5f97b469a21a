# Types for the compiled twin of reassembly.py (issue 33): Cython reads this beside the .py it
# compiles; CPython never sees it. Budget and Stream are extension types: the decoder touches their
# fields on every segment, as C struct members rather than slots looked up by name. ``buf`` stays a
# Python object (bytes, or what a caller's buffer slices to).
import cython

cdef class Budget:
    cdef public str kind
    cdef public Py_ssize_t limit, held, peak, evicted
    cpdef charge(self, Py_ssize_t n)

cdef class Stream:
    cdef public object buf
    cdef public list starts, chunks
    cdef public Py_ssize_t cost

    @cython.locals(end=Py_ssize_t, have=Py_ssize_t, grown=Py_ssize_t, cost=Py_ssize_t, top=Py_ssize_t, s=Py_ssize_t,
                   i=Py_ssize_t, j=Py_ssize_t, cs=Py_ssize_t, cend=Py_ssize_t, nend=Py_ssize_t)
    cpdef Py_ssize_t insert(self, Py_ssize_t off, object data, Py_ssize_t limit, Py_ssize_t max_holes=*) except? -2
