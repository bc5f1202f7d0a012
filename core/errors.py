"""Moved from core/io.py (split)."""  # AUTODOC

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message names the file and line (or field) and what was expected."""


class ConfigError(ValueError):
    """An invalid combination of settings, caught before anything is built or trained."""


class MissingExtraError(ImportError):
    """An optional dependency is needed for this check (for example ``langdetect`` for language detection)."""
