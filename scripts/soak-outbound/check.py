#!/usr/bin/env python3
"""The ledger of one soak run (check.py RUN_DIR): every acknowledged
recipient must end delivered (once; twice only across a kill -9 that came
before the relay recorded the first copy), bounced with one failure DSN, or
expired with one DSN (none where NOTIFY leaves FAILURE out); success DSNs
once per NOTIFY=SUCCESS recipient delivered to a server without DSN; no
transaction above the cap; dead marks only for faulty domains, and every
stalling domain marked. Prints the figures and every violation; exit 1 on
any violation."""
import collections, json, os, re, statistics, sys

RUN = sys.argv[1]
J = lambda name: os.path.join(RUN, name)


def jsonl(name):
    out = []
    if not os.path.exists(J(name)):
        return out
    for line in open(J(name), errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def ts(s):
    """RFC 3339 (nanoseconds allowed) -> microseconds since the epoch."""
    from datetime import datetime
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", s)
    frac = (m.group(2) or ".0")[1:7].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    return int(datetime.fromisoformat(m.group(1) + "." + frac + tz).timestamp() * 1e6)


violations = collections.defaultdict(list)


def bad(what, detail):
    violations[what].append(detail)


domains = {d["name"]: d for d in json.load(open(J("domains.json")))}
faults = jsonl("faults.jsonl")
kills = [f["time_us"] for f in faults if f["kind"] == "kill"]
starts = [f["time_us"] for f in faults if f["kind"] == "start"]
reloads = [f for f in faults if f["kind"] == "reload"]
flushes = [f["time_us"] for f in faults if f["kind"] == "flush"]
plan = next((f for f in faults if f["kind"] == "plan"), None)
settings = next((f for f in faults if f["kind"] == "settings"), {})
cap1 = settings.get("cap", 50)
cap2 = reloads[0]["cap"] if reloads else None
reload_t = reloads[0]["time_us"] if reloads else None

ledger = jsonl("ledger.jsonl")
acked = {m["msgid"]: m for m in ledger if m["state"] == "acked"}
unacked = {m["msgid"]: m for m in ledger if m["state"] == "unacked"}
refused = {m["msgid"]: m for m in ledger if m["state"] == "refused"}
byqid = {m["qid"]: m for m in acked.values()}
byenvid = {m["envid"]: m for m in ledger}
rcpt_meta = {}
for m in acked.values():
    for r in m["rcpts"]:
        rcpt_meta[(m["msgid"], r["addr"].lower())] = r

events = jsonl("events.jsonl")
dlv = collections.defaultdict(list)  # (msgid, rcpt) -> [event]
dsn_copies = collections.Counter()   # report msgid -> copies delivered
reports = {}                          # report msgid -> report
txns = []
for e in events:
    if e["t"] == "dlv":
        if domains[e["domain"]]["kind"] == "sender":
            continue
        dlv[(e["msgid"], e["rcpt"].lower())].append(e)
    elif e["t"] == "dsn":
        rep = e["report"]
        dsn_copies[rep["msgid"]] += 1
        reports[rep["msgid"]] = rep
    elif e["t"] == "txn":
        txns.append(e)
    elif e["t"] == "anomaly":
        bad("anomaly at a server", e)
    elif e["t"] == "mailmax":
        # A MAIL beyond the LIMITS MAILMAX the server announced.
        bad("transaction beyond the server's LIMITS MAILMAX", (e["domain"], e["conn"], e["txn"], e["from"]))

# The relay's log, all instances.
log = []
instance = 0
panics = 0
for line in open(J("relay.log"), errors="replace"):
    if line.startswith("panic:") or line.startswith("fatal error:"):
        panics += 1
        bad("panic in relay log", line.strip())
    if not line.startswith("{"):
        continue
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if o.get("msg") == "mailhop started":
        instance += 1
    o["_inst"] = instance
    o["_t"] = ts(o["time"])
    log.append(o)
outcome_lines = collections.defaultdict(list)  # (msgid, rcpt) -> [(msg, t, inst, line)]
dead = []
suspended = collections.Counter()
levels = collections.Counter()
for o in log:
    if o.get("level") in ("WARN", "ERROR"):
        levels[(o["level"], o["msg"][:90])] += 1
    if o["msg"] in ("delivered", "bounced", "expired"):
        m = byqid.get(o.get("queue_id"))
        key = (m["msgid"] if m else "qid:" + o.get("queue_id", "?"), o["rcpt"].lower())
        outcome_lines[key].append((o["msg"], o["_t"], o["_inst"], o))
    elif o["msg"].startswith("destination marked dead"):
        dead.append(o)
    elif o["msg"] == "attempt" and "delivery temporarily suspended" in o.get("reply", ""):
        suspended[o.get("domain")] += 1

# Reports per recipient (deduplicated by the report's Message-ID).
rep_by_rcpt = collections.defaultdict(lambda: collections.defaultdict(list))  # key -> action -> [report]
for rid, rep in reports.items():
    if rep.get("err"):
        bad("unparseable report", rep)
        continue
    m = byenvid.get(rep["envid"])
    if m is None:
        bad("report for an unknown envelope id", rep)
        continue
    if rep["orig_msgid"] and rep["orig_msgid"] != m["msgid"]:
        bad("report's returned Message-ID is not its ENVID's message", (rep["msgid"], rep["orig_msgid"], m["msgid"]))
    if rep["to"].lower() != m["from"].lower():
        bad("report not to the sender", (rep["msgid"], rep["to"], m["from"]))
    ret = m.get("ret", "")
    actions = {rr["action"] for rr in rep["rcpts"]}
    if len(actions) != 1:
        bad("report with several actions", (rep["msgid"], actions))
    # RET applies to failure reports (RFC 3461 4.3); a larger original than
    # the relay's 50,000-octet bounce_size_limit goes as its header.
    if ret == "FULL" and actions == {"failed"} and m["size"] < 49000 and not (rep["returned"] == "message/rfc822" and rep["has_body"]):
        bad("RET=FULL report without the whole message", (rep["msgid"], rep["returned"], rep["has_body"]))
    if ret == "FULL" and actions == {"failed"} and m["size"] > 51000 and rep["returned"] != "text/rfc822-headers":
        bad("RET=FULL report of a large message not as its header", (rep["msgid"], rep["returned"]))
    if ret == "HDRS" and (rep["returned"] != "text/rfc822-headers" or rep["has_body"]):
        bad("RET=HDRS report with more than the header", (rep["msgid"], rep["returned"]))
    for rr in rep["rcpts"]:
        rep_by_rcpt[(m["msgid"], rr["final"].lower())][rr["action"]].append((rep, rr))


def notify_has(n, what):
    n = n.upper()
    if n == "":
        return what in ("FAILURE", "DELAY")
    return what in n.split(",")


def kill_between(t1, t2):
    return [k for k in kills if t1 <= k <= t2]


# What each kind of domain (and local-part prefix) may end as; kinds not
# listed (drop-data, greet421: working but faulty) may end as anything.
D, B, E = "delivered", "bounced", "expired"
EXPECT = {
    "accept": {D}, "accept-nodsn": {D}, "limit30": {D}, "limit20-552": {D}, "rcptmax10": {D}, "slow": {D}, "mxpair": {D}, "cut-close": {D}, "cut-421": {D}, "stall-2nd": {D}, "mailmax2": {D}, "accept-7bit": {D}, "stall-data": {E},
    "grey": {D}, ("grey", "t"): {E},
    "reject": {D}, ("reject", "b"): {B}, ("reject", "q"): {B},
    "mbfull": {D}, ("mbfull", "f"): {D, E}, ("mbfull", "h"): {E},
    "stall-ehlo": {E}, "stall-rcpt": {E}, "stall-body": {E}, "servfail": {E}, "nxdomain": {B},
}
fig = collections.Counter()
per_kind = collections.Counter()
status_tab = collections.Counter()
dup_gaps = []
record_window = []  # 250 sent -> kill, for duplicates the relay had not recorded
expiry_lag = collections.defaultdict(list)
for key, r in rcpt_meta.items():
    msgid, addr = key
    m = acked[msgid]
    dom = addr.split("@", 1)[1]
    kind = domains[dom]["kind"]
    pre = addr[0]
    fig["acked recipients"] += 1
    ds = sorted(dlv.get(key, []), key=lambda e: e["time_us"])
    lines = outcome_lines.get(key, [])
    reps = rep_by_rcpt.get(key, {})
    failed = reps.get("failed", [])
    relayed = reps.get("relayed", [])
    delayed = reps.get("delayed", [])
    others = {a: v for a, v in reps.items() if a not in ("failed", "relayed", "delayed")}
    if others:
        bad("report with an unexpected action", (key, list(others)))
    if delayed:
        fig["delayed reports"] += len(delayed)
    n = len(ds)
    for e in ds:
        if not e.get("body_ok"):
            bad("body damaged", (key, e["server"], e["conn"]))
    if n >= 1:
        expect = EXPECT.get((kind, pre)) or EXPECT.get(kind)
        if expect and "delivered" not in expect:
            bad("unexpected delivery for its kind", (key, kind))
        fig["delivered"] += 1
        per_kind[(kind, pre, "delivered")] += 1
        if n > 1:
            fig["delivered twice or more"] += 1
            for a, b in zip(ds, ds[1:]):
                # The relay had sent the whole message (the server has its
                # end of data) when it was killed, before the second copy.
                ks = kill_between(a.get("dot_us", a["time_us"]), b["time_us"])
                if not ks:
                    bad("delivered twice without a kill between", (key, a["time_us"], b["time_us"], a["server"], b["server"]))
                    continue
                k = ks[0]
                gap = (k - a.get("dot_us", a["time_us"])) / 1e6
                dup_gaps.append(gap)
                # Logged "delivered" before the kill: recorded, so it must
                # not have gone again.
                logged = [l for l in lines if l[0] == "delivered" and a["time_us"] <= l[1] <= k]
                if logged:
                    bad("delivered again after the relay had recorded it (logged delivered before the kill)",
                        (key, a["time_us"], logged[0][1], k))
                elif k < a["time_us"]:
                    # The server had the whole message but had not sent
                    # its 250 (a slow server) when the relay died.
                    fig["duplicates: killed after the end of data, before the server's 250"] += 1
                else:
                    fig["duplicates: killed after the server's 250, before the relay recorded it"] += 1
                    record_window.append((k - a["time_us"]) / 1e6)
        if n > 2:
            # Each copy after the first needs a kill of its own (checked
            # pair by pair above): the same kill cannot explain two.
            fig["delivered three times or more (a kill before each further copy)"] += 1
            pair_kills = [kill_between(a.get("dot_us", a["time_us"]), b["time_us"]) for a, b in zip(ds, ds[1:])]
            if any(not ks for ks in pair_kills) or len({ks[0] for ks in pair_kills if ks}) < len(pair_kills):
                bad("delivered three times or more without a kill before each further copy", (key, n))
        if failed:
            bad("delivered, yet a failure report", (key, [rr for _, rr in failed]))
        if [l for l in lines if l[0] != "delivered"]:
            bad("delivered at the server, logged bounced/expired", (key, [l[0] for l in lines]))
        for e in ds:
            # DSN parameters go on to a server that offers DSN, and only there.
            got = set(e["notify"].upper().split(",")) if e.get("notify") else set()
            want = set(r["notify"].upper().split(",")) if r["notify"] else set()
            if e.get("dsn_offered", False):
                if got != want or e.get("envid", "") != m["envid"] or e.get("ret", "") != m["ret"]:
                    bad("DSN parameters not passed on", (key, r["notify"], e.get("notify"), e.get("envid"), e.get("ret")))
            elif got or e.get("envid") or e.get("ret"):
                bad("DSN parameters to a server without DSN", (key, e.get("notify"), e.get("envid"), e.get("ret")))
        want = 1 if (notify_has(r["notify"], "SUCCESS") and not ds[0].get("dsn_offered", False)) else 0
        got = len(relayed)
        if got != want:
            bad("success reports: got %d, want %d" % (got, want), (key, r["notify"], ds[0].get("dsn_offered", False)))
        else:
            fig["success reports as expected (%d)" % want] += 1
        continue
    # Not delivered: bounced or expired.
    fin = [l for l in lines if l[0] in ("bounced", "expired")]
    if not fin:
        bad("acknowledged, never delivered, no bounce or expiry logged (lost?)", (key, kind, [l[0] for l in lines]))
        continue
    how = fin[-1][0]
    expect = EXPECT.get((kind, pre)) or EXPECT.get(kind)
    if expect and how not in expect:
        bad("unexpected outcome for its kind", (key, kind, how, fin[-1][3].get("reply")))
    if len(fin) > 1:
        fig["final outcome logged twice"] += 1
    fig[how] += 1
    per_kind[(kind, pre, how)] += 1
    o = fin[-1][3]
    if how == "expired":
        expiry_lag[kind].append(fin[-1][1] / 1e6 - (m["t_end"] + 60))
    want = 1 if notify_has(r["notify"], "FAILURE") else 0
    if len(failed) != want:
        bad("failure reports: got %d, want %d" % (len(failed), want), (key, how, r["notify"], [rr for _, rr in failed]))
    else:
        fig["failure reports as expected (%d)" % want] += 1
    for rep, rr in failed:
        status_tab[(kind, pre, how, rr["status"])] += 1
        if rep["envid"] != m["envid"]:
            bad("report's ENVID", (key, rep["envid"]))
    if relayed:
        bad("not delivered, yet a success report", key)

# Deliveries of messages that were not acknowledged.
for key, ds in dlv.items():
    if key[0] in acked:
        if key not in rcpt_meta:
            bad("delivered to a recipient the message did not have", key)
        continue
    if key[0] in unacked:
        fig["deliveries of unacknowledged messages (connection cut at DATA)"] += 1
    elif key[0] in refused:
        bad("delivered, though its DATA was refused", key)
    else:
        bad("delivered, unknown message", key)

dup_reports = sum(c - 1 for c in dsn_copies.values() if c > 1)
fig["reports received (distinct)"] = len(reports)
fig["report copies delivered twice"] = dup_reports

# Transactions.
tx_sizes = collections.defaultdict(collections.Counter)
for e in txns:
    kind = e["kind"]
    if kind == "sender":
        continue
    n = e.get("nrcpt", 0)
    tx_sizes[kind][n] += 1
    cap = cap1
    # An attempt begun before the reload keeps its cap; its last host may
    # be connected to up to connect+greeting+command timeouts later.
    if reload_t and e["conn_at_us"] > reload_t + 11_000_000:
        cap = cap2
    if n > cap:
        bad("transaction above the cap", (e["domain"], e["server"], e["conn"], e["txn"], n, cap))
    if kind == "rcptmax10" and n > 10:
        bad("transaction above the server's RCPTMAX", (e["domain"], e["conn"], e["txn"], n))
# Within one attempt (same connection, same sender, transactions less than
# the first retry interval apart): a recipient refused "too many recipients"
# goes again in a later transaction; one deferred otherwise (452 4.2.2) does
# not; a later transaction after a "too many" carries no more than got
# through.
by_conn = collections.defaultdict(list)
for e in txns:
    by_conn[(e["server"], e["conn"])].append(e)
for (srv, cn), es in by_conn.items():
    es.sort(key=lambda e: e["txn"])
    for i, a in enumerate(es):
        later = [b for b in es[i + 1:] if b.get("from") == a.get("from") and b["time_us"] - a["time_us"] < 2_500_000]
        again = set()
        for b in later:
            # A queue flush makes deferred mail due at once: a new attempt.
            if any(a["time_us"] <= f <= b["time_us"] + 1_000_000 for f in flushes):
                continue
            again.update(x.split("|")[0] for x in b.get("rc", []))
        for x in a.get("rc", []):
            addr, code = x.split("|")
            toomany = code.startswith("4") and (code.endswith("4.5.3") or code == "452") or code == "552"
            if toomany:
                fig["'too many recipients' refusals"] += 1
                if addr in again:
                    fig["'too many recipients' refusals sent again in the same attempt"] += 1
                elif a["out"] in ("delivered", "refused", "reset"):
                    fig["'too many recipients' refusals not sent again in the attempt (connection ended?)"] += 1
            elif code.startswith("4"):
                fig["other 4xx refusals (" + code + ")"] += 1
                if addr in again:
                    bad("recipient deferred with " + code + " sent again in the same attempt and connection", (a["domain"], cn, a["txn"], addr))
        codes = a.get("codes", "").split(",") if a.get("codes") else []
        if later and a["kind"] in ("limit30", "limit20-552") and ("452" in codes or "552" in codes):
            limit = 30 if a["kind"] == "limit30" else 20
            if later[0].get("nrcpt", 0) > limit:
                bad("transaction after 'too many recipients' larger than what got through", (a["domain"], cn, a["txn"], later[0].get("nrcpt")))

# Dead marks.
dead_by_dom = collections.Counter(o.get("domain") for o in dead)
for d, c in dead_by_dom.items():
    if d not in domains or not domains[d]["faulty"]:
        bad("working domain marked dead", (d, domains.get(d, {}).get("kind"), c, [o.get("err") for o in dead if o.get("domain") == d][:3]))
for d, c in suspended.items():
    if d not in domains or not domains[d]["faulty"]:
        bad("working domain's mail suspended", (d, c))
spans = []
for o in dead:
    spans.append(ts(o["until"].replace("Z", ".0Z") if "." not in o["until"] else o["until"]) / 1e6 - o["_t"] / 1e6)
if spans:
    print("dead marks: %d; until - mark time: min %.2f s, max %.2f s (first retry interval 3s less 10%%)" % (len(spans), min(spans), max(spans)))
    if max(spans) > 2.75 or min(spans) < 1.5:
        bad("dead mark not the first retry interval less 10%", (min(spans), max(spans)))
print("mail suspended (attempt lines) by kind:", dict(collections.Counter(domains[d]["kind"] for d in suspended.elements())))
for d in domains.values():
    if d["kind"].startswith("stall") and d["faulty"] and dead_by_dom[d["name"]] == 0:
        bad("stalling domain never marked dead", d["name"])

# Samples: expired mail piling up; resources.
samples = jsonl("samples.jsonl")
pile = max((s.get("past_max_age_10s", 0) for s in samples), default=0)
oldest = max((s.get("mailhop_queue_oldest_age_seconds", 0) for s in samples), default=0)
base = next((f for f in faults if f["kind"] == "baseline"), {})
end = next((f for f in faults if f["kind"] == "end"), {})
drained = next((f for f in faults if f["kind"] == "drained"), {})
stopped = next((f for f in faults if f["kind"] == "relay stopped"), {})

print("=== run", RUN)
print("messages: acked %d, unacked %d, refused %d; kills %d, starts %d, reload cap %s, flushes %d" % (
    len(acked), len(unacked), len(refused), len(kills), len(starts), cap2, sum(1 for f in faults if f["kind"] == "flush")))
for k in sorted(fig):
    print("  %-75s %d" % (k, fig[k]))
print("duplicates: from the first copy's end of data to the kill (s):", sorted(set(round(g, 3) for g in dup_gaps)))
print("duplicates: from the server's 250 to the kill (s), where it came before:", sorted(set(round(g, 3) for g in record_window)))
print("outcomes by kind, local-part prefix:")
kinds = sorted({k[0] for k in per_kind})
for kd in kinds:
    row = {(p, h): c for (k2, p, h), c in per_kind.items() if k2 == kd}
    print("  %-13s %s" % (kd, " ".join("%s:%s=%d" % (p, h[:3], c) for (p, h), c in sorted(row.items()))))
print("failure report statuses (kind, prefix, outcome, Status):")
for k, c in sorted(status_tab.items()):
    print("  %-60s %d" % (k, c))
print("expired: lag after arrival+60s (s), by kind: ")
for kd, lags in sorted(expiry_lag.items()):
    lags.sort()
    print("  %-12s n=%d median %.1f p95 %.1f max %.1f" % (kd, len(lags), statistics.median(lags), lags[int(0.95 * (len(lags) - 1))], lags[-1]))
print("most messages queued past max_queue_age+10s in a sample: %d; oldest queued message in a sample: %.1f s (max_queue_age 60 s)" % (pile, oldest))
if pile:
    bad("expired mail piling up (queued past max_queue_age + 10 s)", pile)
print("transaction sizes (RCPT commands) by kind, max / count:")
for kd, c in sorted(tx_sizes.items()):
    print("  %-13s max %d, %d transactions, over 30: %d, over %s: %d" % (kd, max(c), sum(c.values()), sum(v for n, v in c.items() if n > 30), cap2, sum(v for n, v in c.items() if cap2 and n > cap2)))
print("dead marks by domain:", dict(sorted(dead_by_dom.items())))
print("relay warnings/errors:", dict(levels))
print("baseline:", {k: base.get(k) for k in ("go_goroutines", "process_open_fds", "proc_fds", "go_threads")})
print("end:     ", {k: end.get(k) for k in ("go_goroutines", "process_open_fds", "proc_fds", "go_threads", "mailhop_queue_messages")})
if base.get("fd_list") is not None and end.get("fd_list") is not None:
    bl, el = collections.Counter(base["fd_list"]), collections.Counter(end["fd_list"])
    print("fds at the end, not at baseline:", sorted((el - bl).elements()), "; gone:", sorted((bl - el).elements()))
print("drained:", drained.get("empty"), "after", drained.get("after_s"), "s; relay SIGTERM rc", stopped.get("rc"))
if end and base:
    if end.get("go_goroutines", 0) > base.get("go_goroutines", 0) + 3:
        bad("goroutines above baseline", (base.get("go_goroutines"), end.get("go_goroutines")))
    if end.get("process_open_fds", 0) > base.get("process_open_fds", 0) + 2:
        bad("fds above baseline", (base.get("process_open_fds"), end.get("process_open_fds")))
if not drained.get("empty"):
    bad("queue not empty at the end", drained)
if stopped.get("rc") not in (0, None):
    bad("relay did not stop cleanly", stopped)
print()
if violations:
    print("VIOLATIONS:")
    for k, v in violations.items():
        print("  %s: %d" % (k, len(v)))
        for d in v[:5]:
            print("     ", str(d)[:400])
    sys.exit(1)
print("no violations")
