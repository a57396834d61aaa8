"""One exception family for the whole library.

Every error a user can cause (a bad file, a wrong option, a model that answers nonsense) is an
``ExplainError`` with a message that says what went wrong and what to do next. Only the CLI turns
these into a red line and an exit code.
"""

from __future__ import annotations


class ExplainError(Exception):
    """Base class of every error the library raises on purpose."""


class ImageError(ExplainError):
    """An image file cannot be used: missing, empty, truncated, not an image, or too large."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageTooLargeError(ImageError):
    """An image above the pixel limit, or a decompression bomb: refused before it is decoded."""


class ModelError(ExplainError):
    """A model cannot be loaded, or it answered with something that is not usable scores."""


class TargetError(ExplainError):
    """A target class name or index that the classifier does not have."""


class OptionError(ExplainError):
    """An option value that is out of range or inconsistent with the others."""


class WhiteBoxError(ExplainError):
    """A white-box method was asked of a model that is not a torch module."""
