"""``report.md`` from a run's ``metrics.json`` content (centralized or federated)."""

from __future__ import annotations

import math

__all__ = ["render_report", "format_score"]

METRICS = ("auroc", "auprc", "minority_f1")
# under DP (privacy_settings["dp_score_counts"]): the rows whose classifiers saw raw training records
RAW_TRAINING_NOTE = "withheld under DP: trained on raw training records without DP-SGD"


def _dp_withheld(metrics: dict) -> bool:
    """Whether the run released DP score counts only (no "real" / TSRTR rows, ``privacy.dp_scores``)."""
    return bool((metrics.get("privacy_settings") or {}).get("dp_score_counts"))


def format_score(scores: dict, metric: str) -> str:
    """"0.712 ± 0.031" (mean ± 95 % CI half-width), "0.712" without a CI, "n/a" when missing."""
    value = scores.get(metric)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    half = (scores.get("ci95") or {}).get(metric)
    if half is None or (isinstance(half, float) and not math.isfinite(half)):
        return f"{value:.3f}"
    return f"{value:.3f} ± {half:.3f}"


def _score_table(rows: dict[str, dict], first_col: str = "training data") -> list[str]:
    lines = [f"| {first_col} | AUROC | AUPRC | minority F1 |", "|---|---|---|---|"]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(format_score(scores, m) for m in METRICS) + " |")
    return lines


def _sites_table(sites: list[dict]) -> list[str]:
    if not sites:
        return []
    channels = list(sites[0].get("missing_fraction", {}))
    head = "| site | records | positives | prevalence | " + " | ".join(f"missing {c}" for c in channels) + " |"
    lines = [head, "|" + "---|" * (4 + len(channels))]
    for s in sites:
        miss = " | ".join(f"{s['missing_fraction'][c]:.1%}" for c in channels)
        lines.append(f"| {s['site']} | {s['records']} | {s['positives']} | {s['prevalence']:.1%} | {miss} |")
    return lines


def _paired_section(paired: dict, federated: bool) -> list[str]:
    """Paired differences (same evaluation seeds, same generator, same noise), null row included."""
    if not paired.get("tstr"):
        return []
    lines = ["", "## Paired differences", "",
             "Per evaluation run, the difference of two training sets scored with the same classifier seed "
             "(common random numbers); mean ± 95 % CI over runs"
             + (", sites pooled by test size" if federated else "")
             + ". The null row compares two independent unguided draws: effects inside it are noise.", ""]
    return lines + _paired_rows(paired)


def _paired_rows(paired: dict) -> list[str]:
    rows = {f"TSTR {name}": d for name, d in paired["tstr"].items()}
    for ratio, by_pair in (paired.get("tsrtr") or {}).items():
        rows.update({f"TSRTR x{ratio} {name}": d for name, d in by_pair.items()})
    return _score_table(rows, first_col="difference")


def _selection_section(selection: dict, dp_withheld: bool = False) -> list[str]:
    """The tuning-split table of the guidance candidates and the choice."""
    if not selection:
        return []
    chosen = selection.get("chosen", {})
    lines = ["", "## Guidance setting", ""]
    if selection.get("mode") != "auto":
        return lines + [f"Fixed by configuration: `{chosen.get('label')}` (no selection)."]
    mode = str(selection.get("select_on", "tsrtr"))
    lines += [f"Chosen on the tuning split (never the test split or the guidance set): **`{chosen.get('label')}`**. "
              f"Rule: the guided candidate with the best pooled tuning {mode.upper()} AUPRC wins if it beats unguided "
              "by more than a second unguided draw (the null row) differs from the first, among the candidates whose "
              "Context-FID (against the training records, 0 best) is at most guidance.max-fid-ratio x unguided's; "
              "otherwise unguided (s = 0). A site fits tuning classifiers only for the candidates within that "
              "Context-FID limit at the site (and for unguided and the null row when any is): the others cannot be "
              "chosen, so they are not scored.", "",
              f"| candidate | mean influence | Context-FID | {mode.upper()} AUPRC | {mode.upper()} AUROC | sites scored |",
              "|---|---|---|---|---|---|"]

    def cell(v) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"

    for label, row in (selection.get("candidates") or {}).items():
        mark = " ⟵" if label == chosen.get("label") else ""
        scored = row.get(f"{mode}_auprc") is not None
        auprc, auroc = (cell(row.get(f"{mode}_auprc")), cell(row.get(f"{mode}_auroc"))) if scored else ("not scored",) * 2
        lines.append(f"| {label}{mark} | {cell(row.get('influence'))} | {cell(row.get('context_fid'))} | {auprc} | "
                     f"{auroc} | {row.get('sites_scored', 'n/a')} |")
    if dp_withheld:
        lines += ["", f"TSRTR scores and Context-FID: {RAW_TRAINING_NOTE} (or against them); chosen on TSTR."]
    return lines


def _real_only_rows(metrics: dict) -> dict[str, dict]:
    """{test name: the evaluation classifier's real-only summary} wherever the run has one."""
    real = (metrics.get("tstr") or {}).get("real")
    rows = {"site_weighted": real} if metrics.get("federated") else {"pooled": real}
    per_site = metrics.get("sites") if metrics.get("federated") else metrics.get("per_site_test")
    rows.update({site: ((v or {}).get("tstr") or {}).get("real") for site, v in (per_site or {}).items()})
    rows["external"] = ((metrics.get("external") or {}).get("tstr") or {}).get("real")
    return {k: v for k, v in rows.items() if v}


def _benchmark_section(metrics: dict) -> list[str]:
    """Real-only rows: the evaluation classifier beside gradient boosting on summary statistics."""
    gbm = (metrics.get("baselines") or {}).get("gbm") or {}
    if not gbm:
        return []
    real = _real_only_rows(metrics)
    rows: dict[str, dict] = {}
    for test, scores in gbm.items():
        if test in real:
            rows[f"{test}: evaluation classifier"] = real[test]
        rows[f"{test}: gradient boosting"] = scores
    note = (metrics.get("baselines") or {}).get("note", "gradient boosting on summary statistics")
    return ["", "## Classifier benchmark (real-only)", "",
            f"Trained on real records only, per test split: the evaluation classifier vs {note}.", ""] + \
        _score_table(rows, first_col="test split: model")


def _external_section(external: dict) -> list[str]:
    """The external cohort's TSTR / TSRTR / paired tables (training statistics only)."""
    if not external:
        return []
    cohort = external.get("cohort", {})
    lines = ["", "## External validation", "",
             f"Cohort `{cohort.get('path', '?')}`: {cohort.get('records', '?')} records, "
             f"{cohort.get('positives', '?')} positive ({cohort.get('prevalence', float('nan')):.1%}); imputed and "
             "normalized with the training statistics only, scored with the same evaluation runs.", ""]
    rows = dict(external.get("tstr") or {})
    if (external.get("baselines") or {}).get("gbm"):
        rows["real (gradient boosting)"] = external["baselines"]["gbm"]
    lines += _score_table(rows)
    tsrtr = external.get("tsrtr") or {}
    if tsrtr:
        lines += ["", "TSRTR on the external cohort:", ""]
        lines += _score_table({f"real + {name} x{ratio}": s for name, by in tsrtr.items() for ratio, s in by.items()})
    if (external.get("paired") or {}).get("tstr"):
        lines += ["", "Paired differences on the external cohort:", ""]
        lines += _paired_rows(external["paired"])
    return lines


def render_report(metrics: dict, *, title: str, figures: list[str]) -> str:
    """Markdown with the TSTR / TSRTR tables, influence, per-site results, timing and data."""
    lines = [f"# {title}", ""]
    federated = bool(metrics.get("federated"))
    lines += [
        f"Mode: **{'federated (Flower)' if federated else 'centralized'}**, "
        f"data source `{metrics.get('data', {}).get('source', '?')}`, "
        f"{len(metrics.get('data', {}).get('sites', []))} site(s).",
        "",
        "## TSTR: train on synthetic, test on real",
        "",
        "Mean ± 95 % CI over evaluation seeds"
        + (", averaged over sites weighted by test-split size. `real` is each site's model trained on its "
           "own real records only; `unguided` / `tardiff` are trained on the site's synthetic records, "
           "sampled locally from the federated generator."
           if federated else ", pooled real test split. `real` is the reference trained on real records only."),
        "",
    ]
    lines += _score_table(metrics["tstr"])
    dp_withheld = _dp_withheld(metrics)
    if dp_withheld:
        lines.append(f"| real | {RAW_TRAINING_NOTE} | | |")
    if metrics.get("tsrtr"):
        lines += ["", "## TSRTR: real + synthetic (ratio x real size), test on real", ""]
        rows = {f"real + {name} x{ratio}": s for name, by_ratio in metrics["tsrtr"].items() for ratio, s in by_ratio.items()}
        lines += _score_table(rows)
    elif dp_withheld:
        lines += ["", "## TSRTR: real + synthetic (ratio x real size), test on real", "",
                  f"All TSRTR rows {RAW_TRAINING_NOTE}."]
    pooled = (metrics.get("histogram_pooled") or {}) if federated else {}  # one "site" centrally: the same test split
    if pooled.get("tstr"):
        lines += ["", "## Pooled over sites from score histograms", "",
                  "AUROC / AUPRC of all sites' test records together, computed from the sites' counts of "
                  "predicted scores by label (no record or score leaves a site); minority F1 is not defined here.",
                  ""]
        lines += _score_table({f"TSTR {k}": v for k, v in pooled["tstr"].items()})
    lines += _paired_section(metrics.get("paired") or {}, federated)
    if dp_withheld and (metrics.get("paired") or {}).get("tstr"):
        lines += ["", f"Paired differences with a real-only or TSRTR side: {RAW_TRAINING_NOTE}."]
    if pooled.get("paired"):
        lines += ["", "Paired differences of the histogram-pooled scores:", ""]
        lines += _paired_rows(pooled["paired"])
    lines += _benchmark_section(metrics)
    lines += _external_section(metrics.get("external") or {})
    lines += _selection_section(metrics.get("selection") or {}, dp_withheld)
    infl = metrics.get("influence")
    if infl:
        lines += [
            "",
            "## Influence of the synthetic sets",
            "",
            "Mean I(x) = <grad_theta L(x), g> under the guidance classifier (higher = expected to help more).",
            "",
            "| set | mean influence |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.4g} |" for k, v in infl.items() if isinstance(v, (int, float))]
    fidelity = metrics.get("fidelity") or {}
    if fidelity and not federated:  # the federated report has its own membership section
        fidelity = {name: {**scores, **{k: v for k, v in (metrics.get("membership") or {}).get(name, {}).items()
                                        if k == "mia_auc"}} for name, scores in fidelity.items()}
    if fidelity:
        keys = [k for k in ("discriminative", "predictive_mae", "context_fid", "mia_auc", "mia_f1", "dcr_ratio")
                if any(k in v for v in fidelity.values())]
        lines += ["", "## Fidelity and privacy of the synthetic sets", "",
                  "Discriminative score |acc - 0.5| (0 best), predictive MAE (train on synthetic, test on real; "
                  "lower better), Context-FID with a fixed random-convolution encoder (0 best), membership "
                  "attack AUC (0.5 = no leak), DCR ratio members / non-members (1 = no leak)"
                  + (", test-size-weighted over sites." if federated else "."), "",
                  "| set | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, scores in fidelity.items():
            cells = []
            for k in keys:
                v = scores.get(k)
                cells.append("n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if metrics.get("comparison"):
        lines += ["", "## Federated vs centralized (site-weighted TSTR)", ""]
        lines += _score_table(metrics["comparison"], first_col="run / training data")
    if metrics.get("sites"):
        lines += ["", "## Per-site results", ""]
        for site, sm in metrics["sites"].items():
            lines += [f"### {site}", ""]
            lines += _score_table(sm.get("tstr", {}))
            lines.append("")
    if metrics.get("privacy"):
        lines += ["", "## Privacy", ""]
        lines += ["| site | phase | epsilon | delta | sigma | C |", "|---|---|---|---|---|---|"]
        for row in metrics["privacy"]:
            eps = row.get("epsilon")
            lines.append(
                f"| {row.get('site')} | {row.get('phase')} | {'inf' if eps is None else f'{eps:.3g}'} | "
                f"{row.get('delta')} | {row.get('sigma')} | {row.get('clip')} |"
            )
    lines += ["", "## Data", ""]
    lines += _sites_table(metrics.get("data", {}).get("sites", []))
    cpu = metrics.get("timing_cpu", {})  # CPU seconds of this process (user + system, all its threads)
    lines += ["", "## Timing (seconds)", "", "| phase | wall seconds | CPU seconds (this process) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {cpu[k]:.1f} |" if k in cpu else f"| {k} | {v:.1f} | - |"
              for k, v in metrics.get("timing", {}).items()]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{f}]({f})" for f in figures]
    lines.append("")
    return "\n".join(lines)
