#!/usr/bin/env python3
"""Load for the outbound soak: smtplib clients submitting messages of 1-120
recipients over 1-5 domains to the relay, with per-recipient NOTIFY, RET and
ENVID. Every message tried is a JSON line in --out: acked (250, with the
queue ID), refused (another reply) or unacked (the connection failed: the
relay may still have it)."""
import argparse, hashlib, json, random, smtplib, socket, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--relay", default="127.0.48.1:48587")
ap.add_argument("--rate", type=float, default=50)
ap.add_argument("--duration", type=float, default=240)
ap.add_argument("--threads", type=int, default=6)
ap.add_argument("--domains", required=True)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--out", required=True)
ap.add_argument("--source", default="127.0.48.3")
args = ap.parse_args()

host, port = args.relay.rsplit(":", 1)
port = int(port)
table = json.load(open(args.domains))
sender_dom = next(d["name"] for d in table if d["kind"] == "sender")
targets = [d for d in table if d["kind"] != "sender" and d["weight"] > 0]
weights = [d["weight"] for d in targets]

out = open(args.out, "a", buffering=1)
out_mu = threading.Lock()
seq_mu = threading.Lock()
seq = [0]
stats = {"acked": 0, "refused": 0, "unacked": 0, "rcpts": 0}

PREFIXES = [("u", 0.85), ("g", 0.04), ("t", 0.01), ("b", 0.03), ("q", 0.01), ("f", 0.04), ("h", 0.01), ("x", 0.01)]
NOTIFY_CHOICES = ["", "SUCCESS,FAILURE", "NEVER", "FAILURE", "SUCCESS", "DELAY,FAILURE"]


def next_seq():
    with seq_mu:
        seq[0] += 1
        return seq[0]


def record(obj):
    with out_mu:
        out.write(json.dumps(obj) + "\n")


def build(rnd, n):
    msgid = "m%d-%d@load.soak.test" % (args.seed, n)
    sender = "s%d-%d@%s" % (args.seed, n, sender_dom)
    x = rnd.random()
    if x < 0.7:
        nr = rnd.randint(1, 5)
    elif x < 0.9:
        nr = rnd.randint(6, 30)
    else:
        nr = rnd.randint(31, 120)
    nd = min(rnd.randint(1, 5), nr)
    doms = []
    while len(doms) < nd:
        d = rnd.choices(targets, weights)[0]
        if d not in doms:
            doms.append(d)
    assign = list(range(nd)) + [rnd.randrange(nd) for _ in range(nr - nd)]
    mode = rnd.random()
    rcpts = []
    for i, di in enumerate(assign):
        p = rnd.random()
        acc = 0
        for pre, w in PREFIXES:
            acc += w
            if p < acc:
                break
        addr = "%s%d-%d-%d@%s" % (pre, args.seed, n, i, doms[di]["name"])
        if mode < 0.6:
            notify = ""
        elif mode < 0.75:
            notify = "SUCCESS,FAILURE"
        elif mode < 0.85:
            notify = "NEVER"
        else:
            notify = rnd.choice(NOTIFY_CHOICES)
        rcpts.append({"addr": addr, "notify": notify})
    ret = rnd.choice(["", "HDRS", "FULL"])
    envid = "E%d-%d" % (args.seed, n)
    size = rnd.randint(200, 5000) if rnd.random() > 0.03 else rnd.randint(70_000, 200_000)
    lines = ["soak-body-marker %s" % msgid]
    total = 0
    while total < size:
        ln = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz .,-") for _ in range(rnd.randint(0, 76)))
        if rnd.random() < 0.05:
            ln = "." + ln  # dot-stuffing
        lines.append(ln)
        total += len(ln) + 2
    eight = rnd.random() < 0.1
    if eight:
        lines = [ln + " \u00e9t\u00e9 \u00fcber" if i % 3 == 1 else ln for i, ln in enumerate(lines)]
    body = "\r\n".join(lines) + "\r\n"
    sumhex = hashlib.sha256(body.encode()).hexdigest()
    ctype = ("text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit" if eight else "text/plain; charset=us-ascii")
    hdr = ("From: <%s>\r\nTo: undisclosed-recipients:;\r\nSubject: soak %d\r\nDate: %s\r\n"
           "Message-ID: <%s>\r\nX-Soak-Sum: %s\r\nMIME-Version: 1.0\r\nContent-Type: %s\r\n\r\n") % (
        sender, n, time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()), msgid, sumhex, ctype)
    return {"msgid": msgid, "from": sender, "envid": envid, "ret": ret, "rcpts": rcpts,
            "domains": [d["name"] for d in doms], "size": len((hdr + body).encode()), "eight": eight}, hdr + body


def worker(idx, t0, stop_at):
    rnd = random.Random(args.seed * 1000 + idx)
    conn = None
    sent_on_conn = 0
    k = 0
    per = args.threads / args.rate
    while True:
        due = t0 + (k + idx / args.threads) * per
        k += 1
        now = time.time()
        if due >= stop_at:
            break
        if due > now:
            time.sleep(due - now)
        n = next_seq()
        meta, msg = build(rnd, n)
        meta["t_start"] = time.time()
        try:
            if conn is None or sent_on_conn >= 20:
                if conn is not None:
                    try:
                        conn.quit()
                    except Exception:
                        pass
                conn = smtplib.SMTP(host, port, local_hostname="load.soak.test", timeout=30,
                                    source_address=(args.source, 0))
                conn.ehlo()
                sent_on_conn = 0
            sent_on_conn += 1
            opts = ["ENVID=" + meta["envid"]]
            if meta["eight"]:
                opts.append("BODY=8BITMIME")
            if meta["ret"]:
                opts.append("RET=" + meta["ret"])
            code, resp = conn.mail(meta["from"], opts)
            if code != 250:
                raise smtplib.SMTPResponseException(code, resp)
            for r in meta["rcpts"]:
                ro = ["NOTIFY=" + r["notify"]] if r["notify"] else []
                code, resp = conn.rcpt(r["addr"], ro)
                if code not in (250, 251):
                    raise smtplib.SMTPResponseException(code, resp)
            code, resp = conn.data(msg.encode())
            meta["code"] = code
            meta["reply"] = resp.decode(errors="replace")
            if code == 250:
                meta["state"] = "acked"
                meta["qid"] = meta["reply"].rsplit(" ", 1)[-1]
            else:
                meta["state"] = "refused"
        except smtplib.SMTPResponseException as e:
            meta["state"] = "refused"
            meta["code"] = e.smtp_code
            meta["reply"] = str(e.smtp_error)
            try:
                conn.rset()
            except Exception:
                conn = None
        except Exception as e:  # the relay went away (kill -9) or timed out
            meta["state"] = "unacked"
            meta["reply"] = repr(e)
            conn = None
            time.sleep(0.2)
        meta["t_end"] = time.time()
        record(meta)
        with seq_mu:
            stats[meta["state"]] += 1
            if meta["state"] == "acked":
                stats["rcpts"] += len(meta["rcpts"])
    if conn is not None:
        try:
            conn.quit()
        except Exception:
            pass


t0 = time.time()
stop_at = t0 + args.duration
ths = [threading.Thread(target=worker, args=(i, t0, stop_at), daemon=True) for i in range(args.threads)]
for t in ths:
    t.start()
for t in ths:
    t.join()
print(json.dumps(stats), flush=True)
