#!/usr/bin/env bash
# The main job: federated TarDiff on the embedded 3-hospital default with `flwr run`, plus the
# centralized baseline on the same data and config, ending in runs/<name>/report.md.
#
#   bash scripts/demo.sh [name]
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-demo-$(date +%Y%m%d-%H%M%S)}
bash scripts/setup.sh
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
START=$(date +%s)
# The two halves are independent until the federated report compares with the centralized
# baseline, so they run at the same time, one torch thread each (2 cores: the centralized run
# on one, the simulated hospitals on the other; the federated report waits for the baseline).
mkdir -p "runs/$NAME"
echo "== [1/2] centralized baseline (pooled data, same config) -> runs/$NAME/centralized (log: runs/$NAME/centralized.log)"
tardiff centralized --out "runs/$NAME/centralized" --threads 1 --quiet > "runs/$NAME/centralized.log" 2>&1 &
CENTRAL_PID=$!
trap 'kill "$CENTRAL_PID" 2>/dev/null || true' EXIT   # a failed federated half stops the centralized one
echo "== [2/2] federated TarDiff: flwr run . with 3 simulated hospitals -> runs/$NAME"
bash scripts/flwr_simulation.sh --supernodes 3 --cpus-per-client 1 \
  --run-config "output.name=\"$NAME\" output.baseline-wait=1800"
if ! wait "$CENTRAL_PID"; then
  cat "runs/$NAME/centralized.log" >&2
  echo "the centralized baseline failed" >&2
  exit 1
fi
cat "runs/$NAME/centralized.log"
echo
echo "done in $(( $(date +%s) - START )) s; report: runs/$NAME/report.md"
python - "runs/$NAME/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print("site-weighted TSTR (and TSRTR) on the hospitals' own test splits (mean over evaluation seeds):")
for name, s in m["comparison"].items():
    print(f"  {name:38s} AUROC {s['auroc']:.3f}  AUPRC {s['auprc']:.3f}  minority F1 {s['minority_f1']:.3f}")
sel = m.get("selection") or {}
print(f"guidance chosen on the sites' tuning splits: {sel.get('chosen', {}).get('label')}")
print("paired differences (same models, noise and evaluation seeds; mean +/- 95 % CI over evaluation seeds):")
for name, d in (m.get("paired", {}).get("tsrtr", {}).get("1", {}) | {}).items():
    print(f"  TSRTR x1 {name:30s} AUPRC {d['auprc']:+.3f} +/- {d['ci95']['auprc']:.3f}  "
          f"minority F1 {d['minority_f1']:+.3f} +/- {d['ci95']['minority_f1']:.3f}")
PY
