"""UNIREX (Chan et al. 2022): a rationale extractor trained jointly with the task model."""

from lightning_modules.unirex.module import UNIREX

__all__ = ["UNIREX"]
