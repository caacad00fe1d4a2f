"""The one list of a run's phases: names, seed ids, and what each phase is to the workflow.

Every other notion of "phase" derives from ``PHASES``:

* ``WORKFLOW``: the federated workflow's steps, in order (``server.workflow`` maps each to its
  runner);
* ``TIMEOUT_PHASES``: the keys of ``federation.phase-timeouts`` (the steps and ``"resume"``,
  the stats query that identifies the sites again when a run continues);
* ``DP_PHASES``: the phases that release under differential privacy (the ledger's rows);
* ``SEED_IDS``: the seed id of each seeded phase. Randomness is derived as
  ``derive_seed(run seed, seed id, round / site / ...)`` (``pipeline.config.derive_seed``), so a
  phase's id must never change: changing one changes every number a run produces.
  ``INITIAL_WEIGHTS`` (0) prefixes the id of the model a phase trains for its initial weights:
  ``derive_seed(seed, INITIAL_WEIGHTS, SEED_IDS["classifier"])``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Phase", "PHASES", "WORKFLOW", "TIMEOUT_PHASES", "DP_PHASES", "SEED_IDS", "INITIAL_WEIGHTS"]


@dataclass(frozen=True)
class Phase:
    """One phase. ``seed_id``: its part in ``derive_seed`` (None: it draws no randomness of its
    own). ``step``: a step of the federated workflow. ``timeout``: it has a
    ``federation.phase-timeouts`` key. ``dp``: it releases under differential privacy."""

    name: str
    seed_id: int | None = None
    step: bool = True
    timeout: bool = True
    dp: bool = False


PHASES: tuple[Phase, ...] = (
    Phase("normalization", dp=True),
    Phase("classifier", seed_id=1, dp=True),
    Phase("influence", seed_id=2, dp=True),
    Phase("diffusion", seed_id=3, dp=True),
    Phase("selection", dp=True),  # the tuning-split score counts (noised under DP)
    Phase("generation", seed_id=4),
    Phase("resume", step=False),
    # Parts of generation with randomness of their own:
    Phase("evaluation", seed_id=5, step=False, timeout=False, dp=True),  # the evaluation classifiers; test counts
    Phase("membership", seed_id=6, step=False, timeout=False),  # the membership attack, per site
    Phase("secagg", seed_id=7, step=False, timeout=False),  # SecAgg+'s neighbour draw, per weight round
)

INITIAL_WEIGHTS = 0
WORKFLOW: tuple[str, ...] = tuple(p.name for p in PHASES if p.step)
TIMEOUT_PHASES: tuple[str, ...] = tuple(p.name for p in PHASES if p.timeout)
DP_PHASES: tuple[str, ...] = tuple(p.name for p in PHASES if p.dp)
SEED_IDS: dict[str, int] = {p.name: p.seed_id for p in PHASES if p.seed_id is not None}
