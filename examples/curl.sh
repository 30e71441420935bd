#!/bin/sh
# dlnsim over plain HTTP with curl (7.76 or later: Ubuntu 22.04's 7.81 does): create a simulation, wait for it,
# fetch its trajectory.
#
#   make run                                   # in another terminal: the service on 127.0.0.1:8000
#   sh examples/curl.sh > trajectory.json      # DLNSIM_URL=http://host:port for another server
#
# The trajectory (JSON) goes to stdout, the simulation resource (JSON) to stderr.
set -eu
URL="${DLNSIM_URL:-http://127.0.0.1:8000}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Create: Saxe's aligned two-layer network on the PNAS 2019 hierarchy, exact solution up to t = 40.
#    Prefer: wait=30 answers 201 with the finished simulation if it ends within 30 s, else 202 at once.
#    Either way the Location header is the simulation's URL: curl writes the headers to one file (-D) and the body
#    to another (-o), and the Location is read from the headers. An invalid request gets a 4xx
#    application/problem+json body whose errors[] name each field and its fix (shown, and the script exits non-zero).
status=0
curl -sS --fail-with-body -D "$tmp/headers" -o "$tmp/body" "$URL/v1/simulations" \
  -H 'Content-Type: application/json' -H 'Prefer: wait=30' \
  -d '{"data":     {"kind": "preset", "name": "hierarchy", "depth": 3},
       "network":  {"hidden": [16]},
       "init":     {"scheme": "aligned", "strength": 0.001},
       "training": {"method": "exact", "t_max": 40},
       "record":   {"points": 50}}' || status=$?
cat "$tmp/body" >&2
echo >&2
[ "$status" -eq 0 ] || exit "$status"
location=$(sed -n 's/^[Ll]ocation:[[:space:]]*//p' "$tmp/headers" | tr -d '\r' | tail -n 1)

# 2. Wait: if it was not done within the wait, poll the Location (it sends Retry-After while not terminal).
until curl -sS --fail-with-body "$URL$location" | grep -Eq '"status":"(succeeded|failed|cancelled)"'; do
  sleep 1
done

# 3. Fetch the trajectory: time, loss, product W(t), modes.strength with modes.theory, learning times, ...
#    A simulation that failed or was cancelled answers 409 with its reason.
curl -sS --fail-with-body "$URL$location/trajectory"
echo
