"""The suite's error classes: bad input data, bad settings, a missing optional extra.

Every command reports these in one line (``error: ...``, exit status 2) before any work starts, never as a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message names the file and line (or field) and what was expected."""


class ConfigError(ValueError):
    """An invalid combination of settings, caught before anything is built or trained."""


class MissingExtraError(ImportError):
    """An optional dependency is needed for this check (for example ``langdetect`` for language detection)."""
