#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink in the foreground (run it under systemd, tmux or `&`).
#
#   secure (TLS + SuperNode authentication):
#     bash scripts/deploy/start_superlink.sh --keys keys --state-dir /var/lib/tardiff/superlink \
#          [--host 0.0.0.0] [--port 9093] [--database /var/lib/tardiff/superlink/state.db]
#   insecure development mode (plain HTTP, any SuperNode may join; loopback / lab only):
#     bash scripts/deploy/start_superlink.sh --insecure --state-dir /tmp/sl [--port 9093]
#
# Flower 1.42 serves the Fleet API (SuperNodes), the Control API (`flwr run`, `flwr ls`,
# `flwr supernode register`) and the Runtime API (the ServerApp) on ONE HTTP(S) port.
# Secure mode passes --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile (from
# <keys>/superlink/{server.crt,server.key,ca.crt}, see provision.py) and --enable-supernode-auth:
# only SuperNodes whose public key was registered with `flwr supernode register`
# (scripts/deploy/register_supernodes.sh) can connect.
#
# In --state-dir the script keeps:
#   flwr_home/          FLWR_HOME of the SuperLink (installed app bundles)
#   cli/config.toml     a Flower CLI connection named "coordinator" (or --connection NAME):
#                       FLWR_HOME=<state-dir>/cli flwr run . coordinator --stream
#   superlink.log       the SuperLink's log;   superlink.pid   its PID
# The ServerApp runs in a subprocess of the SuperLink, with the SuperLink's working directory:
# give output.dir as an absolute path in --run-config.
# Without --database the SuperLink keeps its state in memory: a restart loses every run and
# every SuperNode registration (register again after a restart).
set -euo pipefail
. "$(dirname "$0")/common.sh"

MODE=secure
KEYS=""
HOST=127.0.0.1
PORT=9093
DATABASE=""
STATE_DIR=""
CONNECTION=coordinator
CONNECT_HOST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --insecure) MODE=insecure; shift ;;
    --secure) MODE=secure; shift ;;
    --keys) KEYS=$2; shift 2 ;;
    --host) HOST=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --database) DATABASE=$2; shift 2 ;;
    --state-dir) STATE_DIR=$2; shift 2 ;;
    --connection) CONNECTION=$2; shift 2 ;;
    --connect-host) CONNECT_HOST=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[ -n "$STATE_DIR" ] || STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tardiff-superlink.XXXXXX")
mkdir -p "$STATE_DIR/flwr_home" "$STATE_DIR/cli"
chmod 700 "$STATE_DIR"
STATE_DIR=$(abspath "$STATE_DIR")
if [ "$PORT" = 0 ]; then PORT=$(free_port "$HOST"); fi
# the address the local Flower CLI uses (a bind-all address is reached over loopback)
if [ -z "$CONNECT_HOST" ]; then
  case "$HOST" in 0.0.0.0) CONNECT_HOST=127.0.0.1 ;; ::|"[::]") CONNECT_HOST="[::1]" ;; *) CONNECT_HOST=$HOST ;; esac
fi

ARGS=(--isolation subprocess --disable-runtime-dependency-installation --host "$HOST" --port "$PORT"
      --log-file "$STATE_DIR/superlink.log")
if [ "$MODE" = secure ]; then
  [ -n "$KEYS" ] || die "secure mode needs --keys <folder written by provision.py> (or --insecure)"
  KEYS=$(abspath "$KEYS")
  for f in server.crt server.key ca.crt; do
    [ -f "$KEYS/superlink/$f" ] || die "missing $KEYS/superlink/$f (run scripts/deploy/provision.py)"
  done
  ARGS+=(--ssl-certfile "$KEYS/superlink/server.crt" --ssl-keyfile "$KEYS/superlink/server.key"
         --ssl-ca-certfile "$KEYS/superlink/ca.crt" --enable-supernode-auth)
  printf '[superlink]\ndefault = "%s"\n\n[superlink.%s]\naddress = "%s:%s"\nroot-certificates = "%s"\n' \
    "$CONNECTION" "$CONNECTION" "$CONNECT_HOST" "$PORT" "$KEYS/superlink/ca.crt" > "$STATE_DIR/cli/config.toml"
else
  ARGS+=(--insecure)
  printf '[superlink]\ndefault = "%s"\n\n[superlink.%s]\naddress = "%s:%s"\ninsecure = true\n' \
    "$CONNECTION" "$CONNECTION" "$CONNECT_HOST" "$PORT" > "$STATE_DIR/cli/config.toml"
fi
if [ -n "$DATABASE" ]; then ARGS+=(--database "$(abspath "$DATABASE")"); fi
printf '%s\n' "$PORT" > "$STATE_DIR/superlink.port"
printf '%s\n' "$$" > "$STATE_DIR/superlink.pid"
echo "SuperLink ($MODE) on $HOST:$PORT; state in $STATE_DIR" >&2
echo "Flower CLI: FLWR_HOME=$STATE_DIR/cli flwr ls $CONNECTION" >&2
export FLWR_HOME="$STATE_DIR/flwr_home"
exec flower-superlink "${ARGS[@]}"
