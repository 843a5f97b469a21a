"""The daemon and the wiring: settings, wiring, pipeline, daemon, HTTP server, metrics, log set-up.

``settings.py`` is the TOML schema, ``wiring.py`` the only code that turns settings into
components, ``pipeline.py`` the stages in order; the daemon, ``replay``, ``audit`` and
``records lookup`` all build through them (DESIGN.md).
"""
