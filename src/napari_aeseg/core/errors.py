"""Exceptions with messages meant for people.

Every error that a user can cause derives from :class:`AesegError`. Its message says what was
wrong and what to do; the command line prints it as one line on stderr (exit code 2) and the
napari widgets show it as a notification.
"""

from __future__ import annotations


class AesegError(Exception):
    """Base class of all user-facing napari-aeseg errors."""


class InvalidInputError(AesegError, ValueError):
    """An image, axes string, label layer or option does not fit the task."""


class ImageReadError(AesegError, OSError):
    """A file is missing or is not an image that can be read."""


class ModelFileError(AesegError, ValueError):
    """A model file is missing, corrupt, truncated, from another program or of the wrong kind."""


class OutputError(AesegError, OSError):
    """An output file or folder cannot be written."""


class TrainingCancelled(AesegError):
    """Training was stopped before the first validated weights existed."""
