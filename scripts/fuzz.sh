#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a fixed time each:
#   scripts/fuzz.sh [DURATION]     (default 10s; use 10m for a real campaign)
#   FUZZ_PARALLEL=1 scripts/fuzz.sh 10m   (fuzz workers; default: one per CPU)
# A crash or a recovered panic fails the run; new failing inputs are written
# to the package's testdata/fuzz/ by go test.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-10s}
for mod in . third_party/go-smtp; do
  for pkg in $(cd "$mod" && go list ./...); do
    dir=$(cd "$mod" && go list -f '{{.Dir}}' "$pkg")
    for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
      echo "-- $pkg $f ($t)"
      (cd "$mod" && go test -run "^$" -fuzz "^$f\$" -fuzztime "$t" -fuzzminimizetime 5s ${FUZZ_PARALLEL:+-parallel "$FUZZ_PARALLEL"} "$pkg")
    done
  done
done
