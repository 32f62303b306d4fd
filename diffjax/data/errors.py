"""Errors raised by the data layer."""

from __future__ import annotations

from diffjax.errors import UserError


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """A tfds data set is not present in the data_dir and will not be downloaded.

    Training machines are assumed to have no network access: a data set must be
    prepared (``tfds build ...``) beforehand, on a machine with network access,
    and copied into the data_dir. The message names the data set, the directory
    that was searched and the command that prepares it.
    """


class UnknownDatasetError(UserError, ValueError):
    """A data set name that the data layer does not know."""
