#!/usr/bin/env bash
# Conformance with a real client: the official Kingsoft Cloud Python SDK drives
# the simulator. Installs the SDK into a venv; needs the release binary built.
# Usage: tests/conformance/run.sh [path/to/kcr-housekeeper]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/release/kcr-housekeeper}"
venv="${CONFORMANCE_VENV:-$root/target/conformance-venv}"
# Pinned: the version this simulator was checked against.
sdk="kingsoftcloud-sdk-python==1.5.8.114"
# An independent SigV4 implementation to check our signer against (Step 9 item 11).
botocore="botocore==1.44.5"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "$sdk" "$botocore"

work="$(mktemp -d)"
trap 'kill "$sim_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
ak="AKLTconformance"
sk="conformance-secret-$RANDOM$RANDOM"
KSYUN_ACCESS_KEY_ID="$ak" KSYUN_SECRET_ACCESS_KEY="$sk" \
  "$bin" sim --listen 127.0.0.1:0 --request-log "$work/requests.jsonl" >"$work/stdout" 2>"$work/stderr" &
sim_pid=$!
for _ in $(seq 1 100); do
  grep -q '^listening on ' "$work/stdout" 2>/dev/null && break
  sleep 0.1
done
endpoint="$(sed -n 's#^listening on http://##p' "$work/stdout")"
[ -n "$endpoint" ] || { echo "simulator did not start"; cat "$work/stderr"; exit 1; }

"$venv/bin/python" "$here/conformance.py" "$endpoint" "$ak" "$sk"

# botocore's SigV4Auth signs fixed vectors (our signer must agree, checked by
# tests/sigv4_vectors.rs) and live requests the simulator must accept.
"$venv/bin/python" "$here/sigv4_vectors.py" "$work/sigv4-vectors.json" "$endpoint" "$ak" "$sk"
(cd "$root" && KCR_SIGV4_VECTORS="$work/sigv4-vectors.json" cargo test --quiet --test sigv4_vectors -- --nocapture)

# Every SDK request reached the simulator and was logged; count the distinct actions.
actions="$(python3 -c 'import json,sys; print(len({json.loads(l)["action"] for l in open(sys.argv[1]) if json.loads(l)["action"]}))' "$work/requests.jsonl")"
echo "conformance: the SDK exercised $actions distinct actions"
[ "$actions" -ge 10 ] || { echo "expected at least 10 actions"; exit 1; }
