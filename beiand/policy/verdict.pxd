# Types for the compiled twin of verdict.py (issue 33): Cython reads this beside the .py it compiles;
# CPython never sees it. The policy is a C type (``_Policy``; ``Policy`` a plain subclass whose
# class attributes stay settable): its state in C slots, the cache probe and the verdict's steps
# C calls. The records index and the inventory stay Python objects (no cimport: a stale index
# extension falls back to its .py without breaking this module).
import cython

# Module tables, typed so that their probes are dict and tuple operations in C (not method calls).
cdef dict _JUDGED, _PASS
cdef Py_ssize_t _NAME, _TIME, _SERVER
cdef tuple _ENFORCE_RULES, _DRY_RUN_RULES, _MONITOR_RULES

cdef class _Server:
    cdef readonly object prefix
    cdef public object filed
    cdef readonly dict decisions
    cdef readonly bint closed
    cdef readonly bint pending
    cdef readonly object mode
    cdef readonly object account
    cdef readonly object site

cdef class _Policy:
    cdef readonly object records
    cdef readonly object inventory
    cdef readonly object config
    cdef readonly frozenset _providers
    cdef readonly dict _ours
    cdef readonly frozenset _allow_names
    cdef readonly frozenset _allow_suffixes
    cdef readonly object _allow_inv
    cdef readonly bint _allow_prefixes
    cdef readonly object _default_mode
    cdef readonly object _pending_mode
    cdef readonly str _filed_reason
    cdef readonly object _grace_s
    cdef readonly dict _deadline
    cdef readonly dict _cache
    cdef readonly Py_ssize_t _cached
    cdef readonly dict _servers

    @cython.locals(server_ip=str, name=str, per_ip=dict, hit=object, server=_Server, verdict=object,
                   turns_on=Py_ssize_t, reason=object, decision=object)
    cpdef decide(self, obs)

    cdef _Server _server(self, str server_ip)

    cdef _Server _about(self, object prefix)

    @cython.locals(cand=str, dot=Py_ssize_t, filings=tuple, covering=tuple, filed=object)
    cdef tuple _verdict(self, str name, str server_ip, object ts, _Server server, bint known)

    @cython.locals(best=object, best_reason=str, best_rank=Py_ssize_t, timed=bint, reason=str, kind=object, rank=Py_ssize_t,
                   t=bint, f=object)
    cdef tuple _best(self, tuple filings, str server_ip, object ts, bint check_ip)

    @cython.locals(status=object, ours=object)
    cdef str _judge(self, object f, str server_ip, object ts, bint check_ip)

    cdef object _pending_deadline(self, object f)

    @cython.locals(v=object, rule=object, mode=object, action=object, rules=tuple)
    cdef object _decision(self, object verdict, _Server server)
