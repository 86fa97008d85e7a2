"""Errors raised for bad user input (files, rows, shapes)."""


class DataError(ValueError):
    """A dataset, feature file, config or checkpoint that cannot be used as given.

    The message always names the offending file and, where it applies, the row or the
    expected shape, so a user can fix the input without reading a traceback.
    """
