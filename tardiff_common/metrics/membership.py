"""Membership-inference risk (MIR) and distance to closest record (DCR) of a synthetic set.

Distance. Records are flattened, x [N, C, L] -> R^{C*L} (float32 on the model's normalized
scale), and compared by Euclidean distance. ``nearest_distances`` gives, for every query, the
distance to its closest synthetic record, DCR(x) = min_j ||x - s_j||_2, computed in chunks
(float64 ||a||^2 + ||b||^2 - 2 a.b for the arg-min, then the exact ||x - s_j*|| of the winner),
so 3k x 3k x 864 takes well under a second.

Attack (distance-to-closest-record attack, e.g. Hilprecht et al., 2019; Chen et al., GAN-Leaks,
2020). The attacker calls a real record a *member* of the generator's training set when its
DCR is small: score = -DCR, rule "member iff DCR <= tau".

* Members are the generator's training records, non-members held-out real records (e.g. the
  test split). n = min(N_members, N_nonmembers, ``max_records``) of each are drawn (seeded), so
  the evaluation is balanced (0.5 AUC / 0.5 accuracy = no leak).
* Each class is split (seeded) into a *calibration* part (``calibration_fraction``, 1/2 by
  default) and an *evaluation* part. The threshold tau is the F1(member)-maximizing cut on the
  calibration part only (``select_threshold``, i.e. ``classification.f1_threshold`` on
  -DCR); the evaluation records and their labels are never used to choose it. This models an
  informed attacker who knows the membership of a few records (an upper bound on an attacker
  without any), as is usual in synthetic-data privacy audits.
* Reported on the evaluation part: ``mia_auc`` (ROC AUC of -DCR; threshold-free),
  ``mia_auprc``, ``mia_f1`` (F1 of the member class at tau) and ``mia_accuracy`` at tau. On
  the balanced split an attacker calling every record a member has F1 = 2/3, accuracy 1/2.
* DCR summaries over all 2n drawn records: median and 5th percentile for members and for
  non-members, and ``dcr_ratio`` = median(members) / median(non-members) (about 1 = no leak;
  well below 1 = training records are copied or memorized).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .classification import binary_scores, f1_threshold
from .discriminative import subsample

__all__ = [
    "MembershipConfig",
    "nearest_distances",
    "calibration_split",
    "select_threshold",
    "membership_attack",
    "membership_inference",
]


@dataclass(frozen=True)
class MembershipConfig:
    calibration_fraction: float = 0.5
    max_records: int = 2000
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")
        if self.max_records < 2 or self.chunk_size < 1:
            raise ValueError("max_records >= 2 and chunk_size >= 1 are required")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def nearest_distances(queries: np.ndarray, reference: np.ndarray, *, chunk_size: int = 1024) -> np.ndarray:
    """[N] float64: Euclidean distance from each flattened query [N, ...] to its closest reference [M, ...]."""
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64).reshape(len(queries), -1)
    r = torch.as_tensor(np.asarray(reference), dtype=torch.float64).reshape(len(reference), -1)
    if len(r) == 0:
        raise ValueError("reference set is empty")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"record sizes differ: {q.shape[1]} vs {r.shape[1]}")
    r2 = (r * r).sum(dim=1)
    out = torch.empty(len(q), dtype=torch.float64)
    for start in range(0, len(q), chunk_size):
        qb = q[start : start + chunk_size]
        d2 = (qb * qb).sum(dim=1, keepdim=True) + r2[None, :] - 2.0 * (qb @ r.T)
        nearest = d2.argmin(dim=1)
        out[start : start + len(qb)] = (qb - r[nearest]).norm(dim=1)
    return out.numpy()


def calibration_split(n_members: int, n_nonmembers: int, *, seed: int, fraction: float = 0.5):
    """Boolean masks (members [n_members], non-members [n_nonmembers]): True = calibration part.

    Each class is permuted with a generator seeded by ``seed``; its first round(fraction * n)
    records (at least 1, and at least 1 left for evaluation when n >= 2) calibrate.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 404]))
    masks = []
    for n in (n_members, n_nonmembers):
        k = int(round(fraction * n))
        k = min(max(k, 1), n - 1) if n >= 2 else n
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:k]] = True
        masks.append(mask)
    return masks[0], masks[1]


def select_threshold(distances: np.ndarray, is_member: np.ndarray) -> float:
    """Distance tau maximizing F1 of "member iff distance <= tau" on the given (calibration) records."""
    return -f1_threshold(np.asarray(is_member).astype(int), -np.asarray(distances, dtype=np.float64))


def membership_attack(
    member_distances: np.ndarray,
    nonmember_distances: np.ndarray,
    *,
    seed: int,
    calibration_fraction: float = 0.5,
) -> dict[str, float]:
    """The DCR attack on precomputed DCRs (see module doc): tau from calibration, scores on evaluation."""
    dm = np.asarray(member_distances, dtype=np.float64)
    dn = np.asarray(nonmember_distances, dtype=np.float64)
    if len(dm) < 2 or len(dn) < 2:
        raise ValueError("need at least 2 members and 2 non-members")
    cal_m, cal_n = calibration_split(len(dm), len(dn), seed=seed, fraction=calibration_fraction)
    tau = select_threshold(
        np.concatenate([dm[cal_m], dn[cal_n]]), np.concatenate([np.ones(cal_m.sum()), np.zeros(cal_n.sum())])
    )
    d_eval = np.concatenate([dm[~cal_m], dn[~cal_n]])
    y_eval = np.concatenate([np.ones((~cal_m).sum(), dtype=int), np.zeros((~cal_n).sum(), dtype=int)])
    scores = binary_scores(y_eval, -d_eval, -tau)
    return {
        "mia_auc": scores["auroc"],
        "mia_auprc": scores["auprc"],
        "mia_f1": scores["minority_f1"],
        "mia_accuracy": float(np.mean((d_eval <= tau).astype(int) == y_eval)),
        "mia_threshold": float(tau),
        "dcr_members_median": float(np.median(dm)),
        "dcr_members_p5": float(np.percentile(dm, 5)),
        "dcr_nonmembers_median": float(np.median(dn)),
        "dcr_nonmembers_p5": float(np.percentile(dn, 5)),
        "dcr_ratio": float(np.median(dm) / np.median(dn)) if np.median(dn) > 0 else float("nan"),
    }


def membership_inference(
    members_x: np.ndarray,
    nonmembers_x: np.ndarray,
    synthetic_x: np.ndarray,
    *,
    seed: int,
    config: MembershipConfig = MembershipConfig(),
) -> dict[str, float]:
    """MIA AUC / AUPRC / F1 / accuracy, threshold and DCR statistics (see module doc).

    members_x [N_m, C, L]: the generator's training records; nonmembers_x [N_n, C, L]: held-out
    real records; synthetic_x [M, C, L]: the generator's samples (all M are searched).
    """
    members_x, nonmembers_x = np.asarray(members_x), np.asarray(nonmembers_x)
    n = min(len(members_x), len(nonmembers_x), config.max_records)
    if n < 2:
        raise ValueError("need at least 2 members and 2 non-members")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 405]))
    members, nonmembers = subsample(members_x, n, rng), subsample(nonmembers_x, n, rng)
    dm = nearest_distances(members, synthetic_x, chunk_size=config.chunk_size)
    dn = nearest_distances(nonmembers, synthetic_x, chunk_size=config.chunk_size)
    return membership_attack(dm, dn, seed=seed, calibration_fraction=config.calibration_fraction)
