"""The source database the settings name, its URL checked before a command uses it."""

from __future__ import annotations

from lakehouse.resources import SourceDatabase
from lakehouse.settings import setting


class SourceUrlError(ValueError):
    """LAKEHOUSE_SOURCE_URL names no database the lakehouse can read."""


def configured_source() -> SourceDatabase:
    """The configured source, its URL's scheme checked before anything reads or writes it."""
    source = SourceDatabase(url=setting("LAKEHOUSE_SOURCE_URL"))
    try:
        _ = source.dialect
    except ValueError as error:
        raise SourceUrlError(str(error)) from error
    return source
