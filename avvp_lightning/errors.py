"""Errors raised for bad user input (files, rows, shapes)."""

from numbers import Integral


class DataError(ValueError):
    """A dataset, feature file, config or checkpoint that cannot be used as given.

    The message always names the offending file and, where it applies, the row or the
    expected shape, so a user can fix the input without reading a traceback.
    """


def require_sizes(**sizes: object) -> None:
    """ValueError naming the first of ``sizes`` (model widths, layer and head counts) that is not an integer >= 1."""
    for name, value in sizes.items():
        if not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
