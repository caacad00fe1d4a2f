#!/usr/bin/env bash
# Start one hospital's Flower SuperNode in the foreground (run it under systemd, tmux or `&`).
#
#   secure (TLS + SuperNode authentication):
#     bash scripts/deploy/start_supernode.sh --superlink coordinator.example.org:9093 \
#          --keys keys/supernodes/hospital_a --site hospital_a \
#          --dataset eicu --data-path /data/eicu --device auto --output-dir /srv/tardiff/synthetic \
#          [--state-dir /var/lib/tardiff/supernode] [--runtime-port 9094]
#   insecure development mode (plain HTTP, no node authentication):
#     bash scripts/deploy/start_supernode.sh --insecure --superlink 127.0.0.1:9093 \
#          --dataset synthetic --site hospital_a --device cpu --output-dir /tmp/sites
#   a node config file instead of the flags (TOML: dataset = "eicu", data-path = "...", ...):
#     bash scripts/deploy/start_supernode.sh ... --node-config-file /etc/tardiff/node-config.toml
#
# --keys is a folder with <name>.key (the hospital's private key, OpenSSH ECDSA P-384; its public
# key must be registered at the coordinator) and ca.crt (the CA that signed the SuperLink's TLS
# certificate). --key / --ca give the two files explicitly.
#
# The node config is what the ClientApp reads (client/site.py): dataset, data-path, site,
# device (auto | cpu | cuda; auto uses CUDA when the machine has it) and output-dir (where the
# hospital's synthetic data is written; it never leaves this machine).
#
# The SuperNode runs each ClientApp in a subprocess it starts itself (--isolation subprocess); the
# ClientApp talks to the SuperNode over a local Runtime API on 127.0.0.1:<--runtime-port>
# (default: a free port), never exposed. Only outgoing HTTPS to the SuperLink is needed.
set -euo pipefail
. "$(dirname "$0")/common.sh"

MODE=secure
SUPERLINK=""
KEYS=""
KEY=""
CA=""
DATASET=""
DATA_PATH=""
SITE=""
DEVICE=""
OUTPUT_DIR=""
NODE_CONFIG_FILE=""
STATE_DIR=""
RUNTIME_PORT=0
MAX_WAIT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --insecure) MODE=insecure; shift ;;
    --secure) MODE=secure; shift ;;
    --superlink) SUPERLINK=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --key) KEY=$2; shift 2 ;;
    --ca) CA=$2; shift 2 ;;
    --dataset) DATASET=$2; shift 2 ;;
    --data-path) DATA_PATH=$2; shift 2 ;;
    --site) SITE=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --output-dir) OUTPUT_DIR=$2; shift 2 ;;
    --node-config-file) NODE_CONFIG_FILE=$2; shift 2 ;;
    --state-dir) STATE_DIR=$2; shift 2 ;;
    --runtime-port) RUNTIME_PORT=$2; shift 2 ;;
    --max-wait-time) MAX_WAIT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[ -n "$SUPERLINK" ] || die "--superlink host:port is required"
case "$DEVICE" in ""|auto|cpu|cuda|cuda:[0-9]*) ;; *) die "--device must be auto, cpu, cuda or cuda:N" ;; esac
[ -n "$STATE_DIR" ] || STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tardiff-supernode.XXXXXX")
mkdir -p "$STATE_DIR/flwr_home"
chmod 700 "$STATE_DIR"
STATE_DIR=$(abspath "$STATE_DIR")
if [ "$RUNTIME_PORT" = 0 ]; then RUNTIME_PORT=$(free_port 127.0.0.1); fi

ARGS=(--superlink "$SUPERLINK" --isolation subprocess --host 127.0.0.1 --port "$RUNTIME_PORT")
if [ -n "$MAX_WAIT" ]; then ARGS+=(--max-wait-time "$MAX_WAIT"); fi
if [ "$MODE" = secure ]; then
  if [ -n "$KEYS" ]; then
    KEYS=$(abspath "$KEYS")
    if [ -z "$KEY" ]; then
      shopt -s nullglob; found=("$KEYS"/*.key); shopt -u nullglob
      [ "${#found[@]}" -eq 1 ] || die "expected exactly one <name>.key in $KEYS (or give --key)"
      KEY=${found[0]}
    fi
    [ -n "$CA" ] || CA="$KEYS/ca.crt"
  fi
  [ -n "$KEY" ] && [ -f "$KEY" ] || die "secure mode needs the hospital's private key (--keys DIR or --key FILE)"
  [ -n "$CA" ] && [ -f "$CA" ] || die "secure mode needs the CA certificate (ca.crt in --keys, or --ca FILE)"
  ARGS+=(--root-certificates "$(abspath "$CA")" --auth-supernode-private-key "$(abspath "$KEY")")
else
  ARGS+=(--insecure)
fi

if [ -n "$NODE_CONFIG_FILE" ]; then
  case "$NODE_CONFIG_FILE" in *.toml) ;; *) die "--node-config-file must end in .toml" ;; esac
  [ -f "$NODE_CONFIG_FILE" ] || die "no such file: $NODE_CONFIG_FILE"
  ARGS+=(--node-config "$(abspath "$NODE_CONFIG_FILE")")
else
  # space-separated key=value pairs, TOML values; literal strings ('...') keep paths verbatim
  NODE_CONFIG=""
  add() { if [ -n "$2" ]; then NODE_CONFIG="$NODE_CONFIG $1=$(toml_literal "$2")"; fi; }
  add dataset "$DATASET"
  if [ -n "$DATA_PATH" ]; then add data-path "$(abspath "$DATA_PATH")"; fi
  add site "$SITE"
  add device "$DEVICE"
  if [ -n "$OUTPUT_DIR" ]; then add output-dir "$(abspath "$OUTPUT_DIR")"; fi
  if [ -n "$NODE_CONFIG" ]; then ARGS+=(--node-config "${NODE_CONFIG# }"); fi
fi

printf '%s\n' "$$" > "$STATE_DIR/supernode.pid"
echo "SuperNode ${SITE:-?} ($MODE) -> $SUPERLINK; runtime API 127.0.0.1:$RUNTIME_PORT; state in $STATE_DIR" >&2
export FLWR_HOME="$STATE_DIR/flwr_home"
exec flower-supernode "${ARGS[@]}"
