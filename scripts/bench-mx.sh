#!/usr/bin/env bash
# The end-to-end load run of ../shared/peerbench, once more with mailhop
# finding the sink through MX records on a loopback DNS server instead of a
# route; Postfix keeps its transport map to the sink (as in compare.sh).
# Prints each run's line and the medians and ratios.
#   scripts/bench-mx.sh       (REPS=3 SESSIONS=20 SIZE=10240 MESSAGES=6000)
set -uo pipefail
cd "$(dirname "$0")/.."
PB=$(cd ../shared/peerbench && pwd)
. "$PB/common.sh"
REPS=${REPS:-3}
export SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-10240} MESSAGES=${MESSAGES:-6000} SOURCE_OPTS=${SOURCE_OPTS:-}
SINK=127.0.0.2:2526 PF=127.0.0.1:2525 MH=127.0.0.1:2531
dir=$PEERBENCH_STATE/mailhop-mx
mkdir -p "$dir"; rm -rf "$dir/data"
go build -o "$dir/mailhop" ./cmd/mailhop && go build -o "$dir/dnsserve" ./integration_test/dnsserve || exit 1
"$PB/setup-postfix.sh" "$PF" "$SINK" >/dev/null || { echo "Postfix did not start"; exit 1; }
"$PB/setup-sink.sh" "$SINK" >/dev/null || { echo "smtp-sink did not start"; exit 1; }
# smtp-source sends to b@dest.example (run.sh's default TO).
"$dir/dnsserve" 'dest.example. 300 IN MX 10 mx.dest.example.' 'mx.dest.example. 300 IN A 127.0.0.2' >"$dir/dns.addr" &
dnspid=$!
trap 'kill -TERM "$dnspid" 2>/dev/null' EXIT
for _ in $(seq 200); do [ -s "$dir/dns.addr" ] && break; sleep 0.1; done
[ -s "$dir/dns.addr" ] || { echo "dnsserve printed no address" >&2; exit 1; }
cat >"$dir/config.toml" <<CF
hostname = "relay.bench.test"
data_dir = "$dir/data"
[[listener]]
address = "$MH"
mode = "relay"
[policy]
trusted_networks = ["127.0.0.0/8"]
max_message_size = 52428800
max_recipients = 1000
[delivery]
resolvers = ["$(cat "$dir/dns.addr")"]
mx_port = ${SINK##*:}
CF
setsid "$dir/mailhop" serve --config "$dir/config.toml" >"$dir/log.txt" 2>&1 </dev/null &
echo $! >"$dir/mailhop.pid"
wait_listen "$MH" 20 || { tail "$dir/log.txt"; exit 1; }
out=$(mktemp)
for ((r = 1; r <= REPS; r++)); do
  PEER=postfix PEER_PIDFILE=/var/spool/postfix/pid/master.pid "$PB/run.sh" "$PF" "$SINK" | tee -a "$out"
  PEER=mailhop-mx PEER_PIDFILE="$dir/mailhop.pid" "$PB/run.sh" "$MH" "$SINK" | tee -a "$out"
done
kill -TERM "$(cat "$dir/mailhop.pid")" "$dnspid" 2>/dev/null
"$PB/setup-postfix.sh" stop >/dev/null 2>&1 || true
awk '
  function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } p = v["peer"]
    n[p]++; acc[p, n[p]] = v["accept_mps"]; e2e[p, n[p]] = v["e2e_mps"]; cpu[p, n[p]] = v["cpu_s_per_1k"] }
  END {
    for (p in n) { for (i = 1; i <= n[p]; i++) { a[i] = acc[p, i]; b[i] = e2e[p, i]; c[i] = cpu[p, i] }
                   A[p] = med(a, n[p]); B[p] = med(b, n[p]); C[p] = med(c, n[p]) }
    printf "mailhop-mx/postfix: accept %.2fx, end-to-end %.2fx, cpu per message %.2fx (medians of %d: postfix %d/%d msg/s %.2f cpu-s/1k, mailhop via MX %d/%d msg/s %.2f cpu-s/1k)\n",
      A["mailhop-mx"] / A["postfix"], B["mailhop-mx"] / B["postfix"], C["mailhop-mx"] / C["postfix"], n["postfix"],
      A["postfix"], B["postfix"], C["postfix"], A["mailhop-mx"], B["mailhop-mx"], C["mailhop-mx"] }' "$out"
rm -f "$out"
