# Types for the compiled twin of decoder.py (issue 33): Cython reads this beside the .py it
# compiles; CPython never sees it. The decoder, its flows and fragment buffers are extension types:
# their fields are C struct members (the per-packet path read them by name: a third of its cost was
# attribute and dict lookups). The hot methods are cpdef: called from inside, a C call; from outside
# (tests, the pipeline), as before. Offsets and ports are C integers; the frame is bytes (feed copies
# any other buffer once), so byte access is a C load with its bounds check. Times stay Python objects.
import cython
from beiand.net.reassembly cimport Budget, Stream
from beiand.net.conns cimport Conn

cdef class Flow(Stream):
    cdef public long long ack, base
    cdef public bint syn, fresh, held, later, odd, named
    cdef public Py_ssize_t segments, consumed, sport, dport, scanned
    cdef public object ts, data_ts, client, server, line, body

    cpdef Py_ssize_t add(self, long long seq, object data, Py_ssize_t limit, Py_ssize_t max_holes=*) except? -2

cdef class FragmentBuffer(Stream):
    cdef public Py_ssize_t total
    cdef public object ts

cdef class Decoder:
    cdef public object config, tcp_ports, udp_ports, dns_ports, flows, dns_flows, quic, frags, http_hosts, blocked
    cdef public dict done, _done_old, http_body_end, http_chunks, attempts, _ntop_cache, budgets, _conn_swap
    cdef public dict tcp_conns, udp_conns, _tcp_conns_old, _udp_conns_old
    cdef public object _next_head, drops, stats, _seg, _current, conn_pending, _conn_window, _conn_udp_idle
    cdef public object _server_ports, _tunnel_ports, _clock
    cdef public Py_ssize_t _body_left, packets, bytes, server_to_client, conn_new, _attempts_held
    cdef public bint _head_done, _summarise, _fresh, _any_port, _inline
    cdef public list _out
    cdef public Budget _tcp_budget

    @cython.locals(n=Py_ssize_t, proto=int, total=Py_ssize_t, end=Py_ssize_t, buf=bytes, plen=Py_ssize_t, off=Py_ssize_t,
                   et=Py_ssize_t)
    cpdef list feed(self, object ts, object frame, int linktype=*, bint fresh=*)

    @cython.locals(n=Py_ssize_t, ver=int, ihl=Py_ssize_t, total=Py_ssize_t, end=Py_ssize_t, proto=int, frag=int,
                   l4=Py_ssize_t, plen=Py_ssize_t, v6=bint)
    cpdef _ip(self, object ts, bytes buf, Py_ssize_t off, int depth)

    @cython.locals(sport=Py_ssize_t, dport=Py_ssize_t, c=Conn, fl=int, odd=bint, doff=Py_ssize_t, flags=int,
                   later=bint, skip=Py_ssize_t, into=cython.longlong, flow=Flow, grown=Py_ssize_t, before=Py_ssize_t,
                   budget=Budget, seq=cython.longlong, ack=cython.longlong)
    cpdef _tcp(self, object ts, bytes buf, Py_ssize_t l4, Py_ssize_t end, bytes src, bytes dst, bint v6, Py_ssize_t at=*)

    @cython.locals(sport=Py_ssize_t, dport=Py_ssize_t, c=Conn, p=Py_ssize_t, inner=Py_ssize_t, proto=int)
    cpdef _udp(self, object ts, bytes buf, Py_ssize_t l4, Py_ssize_t end, bytes src, bytes dst, bint v6, int depth, Py_ssize_t at=*)

    cpdef _new_flow(self, bytes key, Flow flow)
    cpdef _forget_named(self, bytes key)
    cpdef _mark_done(self, bytes key, object ident)
    cpdef _first_look(self, bytes key, Flow flow, object ts, long long seq, object data)
    cpdef bint _examine(self, Flow flow, object ts) except -1
    cpdef _emit(self, Flow flow, object ts, object kind, object transport, object name, object detail, object method=*,
                object url=*, object target=*)
    cpdef Conn _conn_start(self, object ts, bint tcp, bytes key, bytes rkey, bytes src, bytes dst, Py_ssize_t sport,
                           Py_ssize_t dport, int flags, Conn old, bint client=*)

cpdef str _ntop(int af, bytes addr)
@cython.locals(hi=cython.longlong)
cpdef long long _u32(bytes buf, Py_ssize_t i) except -1
cdef dict _TEXT
cdef Py_ssize_t _TEXT_MAX
