# Types for the compiled twin of dns.py (issue 21): Cython reads this beside the .py it compiles;
# CPython never sees it. The message walk is typed, on bytes only (read_name and parse_dns copy
# anything else into bytes first): byte access and offsets in C, bounds checks on (IndexError as
# in Python).
import cython

@cython.locals(end=Py_ssize_t, hops=Py_ssize_t, total=Py_ssize_t, n=Py_ssize_t, ln=Py_ssize_t, ptr=Py_ssize_t)
cpdef tuple _read_name(bytes buf, Py_ssize_t off)

@cython.locals(off=Py_ssize_t, after=Py_ssize_t, end=Py_ssize_t, qtype=Py_ssize_t, rtype=Py_ssize_t, rdlen=Py_ssize_t)
cpdef _parse_dns(bytes buf)
