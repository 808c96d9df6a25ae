"""Errors a user can act on.

Every error lowbit raises for bad input is a :class:`LowbitError`. Its message names the value, the
rule it broke and the fix, in one line, so the CLI can print it as is and exit with code 2.
``assert`` is kept for internal invariants only.
"""

from __future__ import annotations


class LowbitError(Exception):
    """Base class: a problem with what the user asked for, reported in one line."""

    kind = "error"


class InputError(LowbitError):
    """A model, data file or option that cannot be used."""

    kind = "input"


class ShapeError(LowbitError):
    """A tensor shape that does not fit the requested format (e.g. a group size)."""

    kind = "shape"


class CalibrationError(LowbitError):
    """Calibration or evaluation data that is missing, empty or too short."""

    kind = "calibration"


class ExportError(LowbitError):
    """A file that cannot be written or read back."""

    kind = "export"
