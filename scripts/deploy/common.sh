# Shared helpers of scripts/deploy/*.sh (sourced, not run).
#
# Uses the project's .venv when no virtual environment is active, turns off Flower's telemetry,
# update check and runtime dependency installation, and offers small port / path helpers.

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEPLOY_DIR/../.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$REPO_ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$REPO_ROOT/.venv/bin/activate"
fi
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# SuperExec polls for new ClientApp / ServerApp tasks every second by default; a shorter poll
# shortens every round a little (it is only a local HTTP call).
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

abspath() { python -c 'import os, sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])))' "$1"; }

# free_port [host]: a TCP port that is free right now on host (default 127.0.0.1)
free_port() {
  python - "${1:-127.0.0.1}" <<'PY'
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1]); s.close()
PY
}

# wait_for_port host port seconds [pid]: 0 once something listens; 1 on timeout or if pid died
wait_for_port() {
  python - "$@" <<'PY'
import os, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
pid = int(sys.argv[4]) if len(sys.argv) > 4 else None
deadline = time.time() + seconds
while time.time() < deadline:
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(1)
    try:
        socket.create_connection((host, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
}

# toml_literal value: the value as a TOML literal string ('...'); refuses a single quote
toml_literal() {
  case "$1" in *"'"*) die "value contains a single quote, not allowed in node config: $1" ;; esac
  printf "'%s'" "$1"
}

# usage: print the calling script's leading comment block
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
