"""What goes wrong with input files: the imaging errors raised at the IO boundary, and the :class:`Issue`
records that reports keep when they go on after a bad file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["ImagingError", "ImageReadError", "ImageWriteError", "GeometryError", "Issue", "error_summary"]


class ImagingError(ValueError):
    """Base class for imaging input/output errors; messages name the file and the fix.

    ``path``, ``problem`` and ``fix`` hold the parts separately when the raiser knew them.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, problem: str | None = None,
                 fix: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.problem = problem or message
        self.fix = fix

    def to_issue(self, subject: str | None = None, modality: str | None = None, *, suffix: str = "") -> Issue:
        """This error as an error-level :class:`Issue` (for reports that go on after a bad file)."""
        name = Path(self.path).name if self.path else None
        message = (f"cannot read {name}: {self.problem}" if name and self.problem != str(self) else self.problem) + suffix
        return Issue("error", message, subject, modality, self.path, self.fix)


class ImageReadError(ImagingError):
    """A file could not be read as a 3D volume."""


class ImageWriteError(ImagingError):
    """A volume could not be written, or did not read back as written."""


class GeometryError(ImagingError):
    """An affine, spacing or shape is invalid or cannot be represented."""


@dataclass(frozen=True)
class Issue:
    """A problem found in the input: ``level`` is 'error' (the file or subject cannot be used), 'warning'
    (it is used, but check it) or 'info'."""

    level: Literal["error", "warning", "info"]
    message: str
    subject: str | None = None
    modality: str | None = None
    path: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = " ".join(
            x for x in (f"[{self.subject}]" if self.subject else "", f"{self.modality}:" if self.modality else "") if x
        )
        text = f"{self.level.upper()}: {where + ' ' if where else ''}{self.message}"
        if self.path and self.path not in self.message:
            text += f" ({self.path})"
        if self.fix:
            text += f" Fix: {self.fix}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Issue:
        return cls(**d)


def error_summary(exc: BaseException) -> str:
    """The line of an exception's message that says what went wrong, at most 200 characters (SimpleITK's
    messages run over several lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "ERROR" in ln or "rror" in ln] or lines
    return (useful[-1] if useful else type(exc).__name__)[:200]
