"""Errors a user can cause or fix.

Every subclass of :class:`VlmError` is printed by the command line as a single line on stderr
(``error: <message>``), never as a traceback, and ends the process with :attr:`VlmError.exit_code`
(1 for a runtime error, 2 for a usage error, as in ``../design.md``). Messages name the file, key or
option at fault and, where there is one, what to do about it.
"""

from __future__ import annotations


class VlmError(Exception):
    """Base class: a one-line, user-facing error. Exit code 1 (runtime error)."""

    exit_code = 1


class UsageError(VlmError):
    """Bad command-line usage or configuration (unknown recipe key, bad option). Exit code 2."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe that does not validate: unknown key, wrong type, bad override."""


class DataError(VlmError):
    """A dataset or annotation file that cannot be read or has the wrong layout."""


class MediaError(VlmError):
    """A media file that is missing, unreadable, or cannot be decoded.

    Attributes:
        path: the media file at fault, as given by the caller.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CacheError(VlmError):
    """The cache directory cannot be used (not writable, bad size argument, ...)."""
