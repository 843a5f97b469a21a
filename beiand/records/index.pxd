# Types for the compiled twin of index.py (issue 33): Cython reads this beside the .py it compiles;
# CPython never sees it. The index is a cdef class (its fields C slots, read-only from Python, as the
# index is immutable once built); the suffix walk and the address probes are typed: str offsets and label counts
# in C, one substring and one dict probe per label probed.
import cython

cdef class _Intervals:
    cdef readonly list starts
    cdef readonly list values

    @cython.locals(i=Py_ssize_t)
    cpdef tuple lookup(self, object x)

cdef class RecordIndex:
    cdef readonly list filings
    cdef readonly object loaded_at
    cdef readonly tuple sources
    cdef readonly dict by_domain
    cdef readonly dict by_ip
    cdef readonly object _v4
    cdef readonly object _v6
    cdef readonly dict _ranges_of
    cdef readonly object n_ranges
    cdef readonly object unmapped
    cdef readonly Py_ssize_t _labels_min
    cdef readonly Py_ssize_t _labels_max

    @cython.locals(by_domain=dict, start=Py_ssize_t, labels=Py_ssize_t, cand=str, hit=object)
    cpdef object covering(self, str name)

    @cython.locals(by_domain=dict, start=Py_ssize_t, labels=Py_ssize_t, hit=object, out=tuple)
    cpdef tuple covering_all(self, str name)

    @cython.locals(start=Py_ssize_t, labels=Py_ssize_t)
    cdef (Py_ssize_t, Py_ssize_t) _first_probe(self, str name)

    @cython.locals(hit=object, out=tuple, more=tuple)
    cpdef tuple by_address(self, str ip)

    @cython.locals(ivs=list, fam=object, x=object, v=object, lo=object, hi=object)
    cpdef bint lists_ip(self, object f, str ip)

    cpdef bint has_address(self, str ip)
