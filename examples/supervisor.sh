#!/bin/sh
# An example stand-in for cellos-supervisor, used by `make demo`: fleetd runs it
# as `supervisor.sh <spec-path>`. It "runs" the cell for a moment and fails
# when the spec asks it to ("fail": true).
spec="$1"
id=$(sed -n 's/.*"id" *: *"\([^"]*\)".*/\1/p' "$spec" | head -n 1)
echo "cell $id: starting"
sleep 1
if grep -q '"fail" *: *true' "$spec"; then
  echo "cell $id: failing on purpose" >&2
  exit 1
fi
echo "cell $id: done"
