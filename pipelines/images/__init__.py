"""Image backends. `registry.py` is the head: it names each backend's module and
builds only the configured ones; `base.py` is the interface they all implement.
"""
