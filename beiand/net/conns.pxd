# Types for the compiled twin of conns.py (issue 33): Cython reads this beside the .py it compiles;
# CPython never sees it. A Conn is an extension type: its fields are C struct members, not slots
# looked up by name on every packet. Times stay Python objects (an int timestamp stays an int).

cdef class Conn:
    cdef public object first, last, deadline
    cdef public bint tcp, syn, data, answered, refused
    cdef public bytes client, server, key
    cdef public Py_ssize_t cport, sport, packets, octets, state
    cdef public long long seq1
