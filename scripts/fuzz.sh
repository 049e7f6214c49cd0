#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a fixed budget each:
#   scripts/fuzz.sh [BUDGET]     (default 5000x = executions; 10m for a real campaign)
# CI uses an execution count: a time budget can fail with a bare "context
# deadline exceeded" when the fuzz coordinator's deadline races its workers
# (golang/go#75804, fixed in Go 1.27), which says nothing about our code.
#   FUZZ_PARALLEL=1 scripts/fuzz.sh 10m   (fuzz workers; default: one per CPU)
# A crash or a recovered panic fails the run; new failing inputs are written
# to the package's testdata/fuzz/ by go test.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-5000x}
min=5s
case "$t" in *x) min=500x ;; esac
for mod in . third_party/go-smtp; do
  for pkg in $(cd "$mod" && go list ./...); do
    dir=$(cd "$mod" && go list -f '{{.Dir}}' "$pkg")
    for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
      echo "-- $pkg $f ($t)"
      (cd "$mod" && go test -run "^$" -fuzz "^$f\$" -fuzztime "$t" -fuzzminimizetime "$min" ${FUZZ_PARALLEL:+-parallel "$FUZZ_PARALLEL"} "$pkg")
    done
  done
done
