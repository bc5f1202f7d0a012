"""Instruction-following data: verifiable constraints (IFEval's 25 types) and response scoring.

Reference for the constraint types, their semantics and the strict/loose accuracies: Zhou et al. 2023,
"Instruction-Following Evaluation for Large Language Models" (IFEval). The preference-data pipeline of Kim et al.
2025 (prompt synthesis, rejection sampling, MCTS, curation) builds on these modules.

- :mod:`.text`: sentence / word / paragraph splitting without downloaded data.
- :mod:`.constraints`: the registry (``CONSTRAINT_TYPES``), samplers, phrasings, strict verifiers, conflicts.
- :mod:`.scoring`: strict and loose scores of a response, IFEval accuracies, the IFEval file reader and CLI
  (imported from its module, so that ``python -m pipelines.instruction_following.scoring`` runs cleanly).
"""

from core.errors import MissingExtraError
from pipelines.instruction_following.constraints import (
    CONFLICTS,
    CONSTRAINT_TYPES,
    Constraint,
    ConstraintError,
    ConstraintType,
    SampleContext,
    are_compatible,
    constraint,
    get_constraint_type,
    sample_constraints,
)

__all__ = [
    "CONFLICTS",
    "CONSTRAINT_TYPES",
    "Constraint",
    "ConstraintError",
    "ConstraintType",
    "MissingExtraError",
    "SampleContext",
    "are_compatible",
    "constraint",
    "get_constraint_type",
    "sample_constraints",
]
