# Types for the compiled twin of pcap.py (issue 21): Cython reads this beside the .py it compiles;
# CPython never sees it. Only the record walk is typed: byte access and offsets in C.
import cython

@cython.locals(n=Py_ssize_t, top=Py_ssize_t, count=Py_ssize_t, skipped=Py_ssize_t, incl=Py_ssize_t, end=Py_ssize_t, rec=Py_ssize_t,
               o=Py_ssize_t, sharded=bint)
cpdef tuple _scan(bytes buf, Py_ssize_t pos, bint ether, bint little, bint filt, object watched, Py_ssize_t nshards,
                  Py_ssize_t mine, int linktype, list kept)
