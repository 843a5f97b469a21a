# Types for the compiled twin of http.py (issue 33): Cython reads this beside the .py it compiles;
# CPython never sees it. The header-line search walks bytes with C offsets (its callers pass bytes).
import cython

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t)
cpdef Py_ssize_t _field(bytes head, bytes low, bytes name, bint digits=*) except? -2

@cython.locals(n=Py_ssize_t, k=Py_ssize_t)
cpdef object _digits_at(bytes head, Py_ssize_t j)

@cython.locals(n=Py_ssize_t, k=Py_ssize_t)
cpdef bytes _line_at(bytes head, Py_ssize_t j)
