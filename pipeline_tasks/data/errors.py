"""The two errors a user fixes in their data: the data folder (``DataError``) and an import
source or destination (``DatasetError``)."""

from __future__ import annotations


class DataError(ValueError):
    """The data folder is missing, empty or fails validation; the message says what to do."""


class DatasetError(ValueError):
    """A user-fixable problem with a dataset source or destination."""
