"""synfundus-guard: release synthetic medical images without leaking training patients."""

__version__ = "0.1.0"
