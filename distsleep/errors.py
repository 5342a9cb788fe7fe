"""Errors raised on bad input. Each names the offending file and says what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A recording or annotation file cannot be used as it is.

    `path` is the file at fault, `problem` a sentence a person can act on. The message is
    "<path>: <problem>" so that logs and failure reports show both.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    @property
    def kind(self) -> str:
        return type(self).__name__


class ImpossibleValueError(InputError):
    """A value in the file is not a finite number or lies far outside anything a recording can hold (a corrupt
    or crafted file). Unlike other annotation problems, this one means the file cannot be read at all."""


class EdfFormatError(InputError):
    """The EDF/EDF+ file is unreadable, truncated or has an invalid header."""


class MissingChannelError(InputError):
    """A required channel role is absent (never silently substituted by another channel)."""


class AnnotationError(InputError):
    """The annotation file (NSRR/Profusion XML, EDF+ hypnogram) is unreadable or inconsistent."""


class SamplingRateError(InputError):
    """A channel is sampled too slowly for what the configuration asks of it (a band-pass above its Nyquist rate)."""


class LengthMismatchError(InputError):
    """Signal and annotations disagree about the length of the night by more than one epoch."""


class SplitFileError(InputError):
    """A published split file is unreadable, names a person in two splits, or names ids the cohort lacks."""


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first non-blank line of an error's message (at most `limit` characters), or "" when it has none: for
    one-line summaries that must not fail on an exception raised without a message."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return line[:limit] if limit else line
