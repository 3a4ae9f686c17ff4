"""Per-image and release-level checks, each behind one interface (see :mod:`.base`)."""
