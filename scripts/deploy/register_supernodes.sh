#!/usr/bin/env bash
# Register hospitals' SuperNode public keys with a running SuperLink (secure mode) through the
# Flower CLI's Control API call `flwr supernode register <public key> <connection>`.
#
#   bash scripts/deploy/register_supernodes.sh --cli-home <superlink state-dir>/cli keys/authorized/*.pub
#
# --cli-home is the FLWR_HOME whose config.toml names the SuperLink connection (written by
# start_superlink.sh); --connection picks a connection other than its default. The SuperNode's
# name is the key file's name without .pub. Registering a key twice fails ("public key already in
# use"); that is reported and skipped. Without --database the SuperLink forgets registrations
# when it restarts: run this again after every restart.
# Prints one line per key: "<name> <node id>" (the node id the SuperNode will get).
set -euo pipefail
. "$(dirname "$0")/common.sh"

CLI_HOME=""
CONNECTION=""
KEYS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cli-home) CLI_HOME=$2; shift 2 ;;
    --connection) CONNECTION=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown argument: $1" ;;
    *) KEYS+=("$1"); shift ;;
  esac
done
[ -n "$CLI_HOME" ] || die "--cli-home <dir with config.toml> is required"
[ "${#KEYS[@]}" -gt 0 ] || die "give at least one public key file"
export FLWR_HOME
FLWR_HOME=$(abspath "$CLI_HOME")
status=0
for key in "${KEYS[@]}"; do
  name=$(basename "$key" .pub)
  args=(supernode register "$key")
  if [ -n "$CONNECTION" ]; then args+=("$CONNECTION"); fi
  args+=(--name "$name" --format json)
  # `flwr supernode register` exits 0 also when it fails; its JSON says what happened
  out=$(flwr "${args[@]}" 2>&1 || true)
  verdict=$(printf '%s' "$out" | python -c 'import json, sys
text = sys.stdin.read(); i = text.find("{")
try:
    res = json.loads(text[i:]) if i >= 0 else {}
except ValueError:
    res = {}
if res.get("success") and res.get("node-id"):
    print(res["node-id"])
elif "already in use" in str(res.get("error-message", "")).lower():
    print("already-registered")
else:
    print("failed")')
  if [ "$verdict" = failed ]; then
    echo "registering $name failed: $out" >&2
    status=1
  else
    echo "$name $verdict"
  fi
done
exit "$status"
