"""Read-side products (DESIGN.md): reports built from what beiand decided and logged.

``isms/`` speaks the regulator's ISMS interface (ISMI, /work/shared/ISMS.md; docs/isms.md).
"""
