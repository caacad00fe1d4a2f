"""A site's DP-ledger policy, Flower-free: what it may release, and what it has spent.

``SiteLedger`` holds one data holder's ledger (``accounting.PrivacyLedger``) and its solved DP
schedule (``plan.SitePlan``). The ClientApp loads both from its Flower ``context.state`` and
saves them back after every message (``client.app``); the centralized run keeps one for the
pooled data. The policy itself:

* ``restore(spent)`` -- the ledger lives in state that a restarted SuperNode or a resumed run
  (a new Flower run) no longer has. ``spent`` lists every DP operation the server dispatched to
  this site before ("<phase>:<round>"). For each DP phase in which the ledger counts fewer
  operations than that, the missing ones are added from the plan (the same entries the DP steps
  record), so the epsilon and the budget checks never fall below what the site may have
  released. A ledger that counts as many or more is left as it is.
* ``planned(phase, step)`` -- the planned entry of the next DP operation of ``phase`` ("normalization",
  "classifier", "influence", "diffusion", "selection", "evaluation"), after checking that it keeps the site within
  ``privacy.max-epsilon``; raises ``PrivacyBudgetExceeded`` naming site, step and the epsilon it
  would reach; None when that phase releases without DP.
* ``record(entries, phase)`` -- append what an operation actually ran (for DP-SGD: the Opacus
  accountant history of the call) and return the metrics a reply carries,
  {"privacy": {"epsilon": total, "delta", phase: {"epsilon", "sigma", "clip", "sample_rate", "steps"}}}.
* ``summary()`` -- the whole ledger's summary (the generation reply, metrics.json).

The plan is solved once (``plan.plan_site``, from the run config and the training-split size)
and kept with the ledger (``plan_entries``) so a site does not re-solve it per message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..pipeline.config import RunConfig
from ..pipeline.phase_list import DP_PHASES
from .accounting import Entry, PrivacyLedger
from .plan import SitePlan, plan_site

__all__ = ["SiteLedger", "DP_PHASES"]



@dataclass
class SiteLedger:
    """The DP ledger policy of one data holder ``site`` with ``num_train`` training records."""

    config: RunConfig
    site: str
    num_train: int
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger.empty)
    plan_entries: list[Entry] | None = None  # one solved entry per DP phase (cache of ``plan()``)

    @property
    def enabled(self) -> bool:
        return self.config.privacy.any_dp

    def plan(self) -> SitePlan:
        """The site's DP schedule with solved noise multipliers (solved on first use, then cached)."""
        fed = self.config.federation
        if self.plan_entries is None:
            self.plan_entries = plan_site(self.config, self.num_train).entries()
        by_phase = {e.phase: e for e in self.plan_entries}
        return SitePlan(by_phase.get("influence"), by_phase.get("classifier"), by_phase.get("diffusion"),
                        fed.classifier_rounds, fed.diffusion_rounds, by_phase.get("normalization"),
                        by_phase.get("selection"), by_phase.get("evaluation"))

    def restore(self, spent: list[str]) -> list[Entry]:
        """Add the operations of ``spent`` ("<phase>:<round>") the ledger does not count; returns them."""
        if not spent or not self.enabled:
            return []
        plan = self.plan()
        have = Counter(e.phase for e in self.ledger.entries)
        want = Counter(op.split(":")[0] for op in spent)
        missing = [plan.entry(phase) for phase, n in want.items() if plan.entry(phase) is not None
                   for _ in range(n - have[phase])]
        self.ledger.add(missing)
        return missing

    def planned(self, phase: str, step: str | None = None) -> Entry | None:
        """The next ``phase`` operation's planned entry, checked against ``privacy.max-epsilon``
        (``PrivacyBudgetExceeded`` names ``step``, e.g. "diffusion round 2"); None when not DP."""
        if phase not in DP_PHASES:
            raise ValueError(f"unknown DP phase {phase!r}; choose one of {DP_PHASES}")
        if not self.enabled:
            return None
        entry = self.plan().entry(phase)
        if entry is None:
            return None
        p = self.config.privacy
        self.ledger.check_budget([entry], site=self.site, phase=step or phase, delta=p.delta,
                                 accountant=p.accountant, max_epsilon=p.max_epsilon)
        return entry

    def record(self, entries: list[Entry], phase: str) -> dict:
        """Append ``entries``; {"privacy": {"epsilon": total, "delta", phase: that phase's summary}}."""
        self.ledger.add(entries)
        p = self.config.privacy
        summary = self.ledger.summary(p.delta, p.accountant)
        return {"privacy": {"epsilon": summary["epsilon"], "delta": p.delta, phase: summary[phase]}}

    def summary(self) -> dict:
        """{"epsilon": composed total, "delta", "<phase>": {...}} of everything recorded."""
        p = self.config.privacy
        return self.ledger.summary(p.delta, p.accountant)
