"""The lab: the namespace lab, traffic builders, the demo's fixtures and samples.

Never imported by the runtime (import-linter forbids it); only the ``lab`` and ``demo`` commands
and the tests use it. Its third-party needs (pyroute2, aioquic, scapy) are the ``[lab]`` extra:
``demo.py`` needs none of them, ``netns.py``, ``traffic.py`` and ``labservers.py`` do.
"""
