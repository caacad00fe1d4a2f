"""The server's global state: what the phases build up, typed, and how it is checkpointed.

Every field is declared once with its kind, so a checkpoint never guesses a value's type:

* array groups ({name: ndarray}) go to ``state.npz`` as "<field>/<name>" arrays: the groups
  of the one checkpoint format (``tardiff_common.checkpoint.GROUPS``), so ``state.npz`` loads
  as a ``TrainedTarDiff``;
* everything else (counts, the selection record, site metrics, the DP bookkeeping) goes to the
  progress JSON.

``None`` means "not computed yet". The phases may use attribute access (``state.classifier``)
or, as before, mapping access restricted to the declared fields (``state["classifier"]``,
``state.get(...)``, ``state.setdefault(...)``); an undeclared key raises ``KeyError``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from tardiff_common.checkpoint import GROUPS as ARRAY_GROUPS

__all__ = ["GlobalState", "ARRAY_GROUPS"]

ArrayGroup = dict[str, np.ndarray]


@dataclass
class GlobalState:
    # phase 0
    normalizer: ArrayGroup | None = None  # the fitted normalizer's arrays
    train_records: int | None = None  # training records over all sites
    train_positives: int | None = None
    # phase 1
    classifier: ArrayGroup | None = None  # theta*: the global classifier's weights
    # phase 2
    gradient_sum: ArrayGroup | None = None  # {"sum": G [P]}
    direction: ArrayGroup | None = None  # {"g": G / ||G|| [P]}
    guidance_records: int | None = None
    secagg_quantization_bound: float | None = None  # with SecAgg+: max quantization error per coordinate
    # phase 3
    unet: ArrayGroup | None = None  # "model.<name>" and "ema.<name>" weights
    # phase 3b / 4
    selection: dict | None = None  # the chosen guidance (``pipeline.selection.selection_record``)
    site_metrics: dict | None = None  # {site: its generation-phase metrics}
    # DP bookkeeping (``server.privacy``)
    privacy_excluded: list | None = None  # sites excluded after a budget refusal
    privacy_sites: dict | None = None  # {site: latest privacy metrics}
    privacy_dispatched: dict | None = None  # {site: ["<phase>:<round>", ...]}

    # ---------------------------------------------------------------- mapping access

    def _key(self, key: str) -> str:
        if key not in _FIELDS:
            raise KeyError(f"{key!r} is not a field of the server's global state ({sorted(_FIELDS)})")
        return key

    def __getitem__(self, key: str):
        value = getattr(self, self._key(key))
        if value is None:
            raise KeyError(f"{key!r} has not been computed yet")
        return value

    def __setitem__(self, key: str, value) -> None:
        setattr(self, self._key(key), value)

    def __contains__(self, key: str) -> bool:
        return key in _FIELDS and getattr(self, key) is not None

    def get(self, key: str, default=None):
        value = getattr(self, self._key(key))
        return default if value is None else value

    def setdefault(self, key: str, default):
        if getattr(self, self._key(key)) is None:
            setattr(self, key, default)
        return getattr(self, key)

    # ---------------------------------------------------------------- checkpoint

    def arrays(self) -> dict[str, np.ndarray]:
        """{"<group>/<name>": array} of every array group computed so far (for ``state.npz``)."""
        out = {}
        for group in ARRAY_GROUPS:
            for name, value in (getattr(self, group) or {}).items():
                out[f"{group}/{name}"] = np.asarray(value)
        return out

    def json_fields(self) -> dict:
        """Every computed non-array field (for the progress JSON)."""
        return {name: getattr(self, name) for name in sorted(_FIELDS - set(ARRAY_GROUPS))
                if getattr(self, name) is not None}

    @classmethod
    def from_checkpoint(cls, arrays: dict[str, np.ndarray], json_fields: dict) -> GlobalState:
        """Inverse of ``arrays`` + ``json_fields``; raises ``ValueError`` naming an unknown entry."""
        state = cls()
        for key, value in arrays.items():
            group, _, name = key.partition("/")
            if group not in ARRAY_GROUPS or not name:
                raise ValueError(f"checkpoint: state.npz holds {key!r}, not an array of the server's state")
            if getattr(state, group) is None:
                setattr(state, group, {})
            getattr(state, group)[name] = value
        for key, value in json_fields.items():
            if key not in _FIELDS or key in ARRAY_GROUPS:
                raise ValueError(f"checkpoint: progress holds state entry {key!r}, not a field of the server's state")
            setattr(state, key, value)
        return state


_FIELDS = frozenset(f.name for f in fields(GlobalState))
