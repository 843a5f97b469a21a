# Types for the compiled twin of tls.py (issue 21): Cython reads this beside the .py it compiles;
# CPython never sees it. Only the ClientHello walk is typed: byte access and offsets in C, on bytes
# only (parse_client_hello_body copies anything else into bytes first). Bounds checks stay on:
# an offset past the end raises IndexError as in Python.
import cython

@cython.locals(n=Py_ssize_t, legacy=int, off=Py_ssize_t, sid=Py_ssize_t, cs=Py_ssize_t, comp=Py_ssize_t,
               ext_total=Py_ssize_t, end=Py_ssize_t, etype=Py_ssize_t, elen=Py_ssize_t, eend=Py_ssize_t, i=Py_ssize_t,
               ech=bint)
cpdef _client_hello_body(bytes b)

@cython.locals(list_len=Py_ssize_t, ntype=Py_ssize_t, nlen=Py_ssize_t)
cpdef str _server_name(bytes b, Py_ssize_t off, Py_ssize_t end)

@cython.locals(ln=Py_ssize_t)
cpdef tuple _alpn(bytes b, Py_ssize_t off, Py_ssize_t end)
