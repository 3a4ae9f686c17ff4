"""One exception tree for the whole toolkit.

Library code raises a subclass of :class:`GuardError`; only the CLI turns it into a one-line message and an
exit code (2 = usage / input error). A *leak* is never an exception: checks return data and policies decide.
"""

from __future__ import annotations


class GuardError(Exception):
    """Base of every error the toolkit raises on purpose; the message is one line meant for a user."""

    exit_code: int = 2


class InputError(GuardError):
    """A file, folder or argument the user gave cannot be used."""


class ImageError(InputError):
    """An image file is corrupt, truncated, not an image, or of an unusable size or mode."""


class PolicyError(GuardError):
    """A policy file is malformed. ``problems`` lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"invalid policy {source}: " + "; ".join(self.problems))


class IndexMismatchError(GuardError):
    """A saved index or cache was built with another embedder or dataset than the one in use."""


class IndexBuildError(GuardError):
    """Building an index failed for a reason other than its input (a worker process died)."""


class ManifestError(GuardError):
    """A manifest is malformed or tries to reach outside its release (path tricks)."""


class ModelError(GuardError):
    """A model folder is missing, not a diffusers model, or incompatible with the request."""


class CheckError(GuardError):
    """A check could not run. Callers fail closed: the image or release is marked failed with this reason."""


class MissingDependencyError(GuardError):
    """An optional engine is not installed; the message carries the install line."""
