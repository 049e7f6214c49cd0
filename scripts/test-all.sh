#!/usr/bin/env bash
# Runs every mailhop test on a fresh Debian machine: installs the real
# clients and servers the tests talk to, then vet, unit, integration and
# short fuzz runs. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null; then
  echo "go is not on PATH: the tests need Go 1.26.8 or newer (Debian's golang package is older)" >&2
  exit 1
fi
need=()
command -v swaks >/dev/null || need+=(swaks)
# swaks --tls needs Net::SSLeay, only a Recommends of the swaks package,
# which --no-install-recommends below leaves out.
perl -MNet::SSLeay -e 1 2>/dev/null || need+=(libnet-ssleay-perl)
# The race detector needs cgo: a C compiler and the C library's headers.
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
[ -x /usr/sbin/smtp-sink ] || [ -x /usr/lib/postfix/sbin/smtp-sink ] || need+=(postfix)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  # Installing postfix must not start a mail server or ask questions.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# smtp-sink is in /usr/sbin, which a user's PATH on Debian lacks: without
# this its tests would skip ("not installed"), or fail under CI.
export PATH="$PATH:/usr/sbin:/usr/lib/postfix/sbin"

echo "== gofmt, go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted"; exit 1; fi
go vet ./...
(cd third_party/go-smtp && go vet ./...)

echo "== unit and integration tests (race detector on)"
go test -race -count=1 -timeout 12m ./...
(cd third_party/go-smtp && go test -race -count=1 ./...)

echo "== fuzz targets, ${FUZZTIME:=5000x} each"
scripts/fuzz.sh "$FUZZTIME"
