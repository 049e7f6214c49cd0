#!/usr/bin/env python3
"""An outbound soak run of the real binary under mixed load and faults.

    python3 scripts/soak-outbound/soak.py --seed 1 [--duration 240] [--rate 50]

It builds mailhop and soaksrv (a loopback DNS server and one scripted SMTP
server per recipient domain: accepting, greylisting, refusing, "too many
recipients" beyond 30 or 20, RCPTMAX, mailbox full, stalling after the
greeting / at RCPT / at DATA / after the body / at a connection's second
MAIL, dropping in the body, 421 at the greeting, 421 or a close between
transactions, slow, no 8BITMIME, a backup MX behind a stalling one,
NXDOMAIN, SERVFAIL, and the senders' domain, whose server records the
reports), starts the relay, and runs load.py (smtplib clients, 1-120
recipients over 1-5 domains, NOTIFY, RET, ENVID, some 8-bit bodies) while it
kills the relay with SIGKILL and restarts it (--kills times), reloads it with
SIGHUP and another max_recipients_per_transaction (--cap2), and runs `mailhop
queue flush` now and then. Then it waits until the queue is empty, compares
goroutines and open files with the relay's idle baseline, stops everything
and runs check.py, which prints the ledger and every violation (exit 1).

Everything listens on loopback addresses NET.1-NET.80 (--net, default
127.0.48.) and ports PORT+25 (MX), +53 (DNS), +587 (the relay), +90
(metrics) (--port-base, default 48000); nothing reaches the host's resolver
or the internet. The run directory (--dir, default
/tmp/mailhop-soak-SEED) keeps the relay's log, the servers' events, the
load's ledger and the faults, for check.py to read again. A run of 240 s at
50 messages/s takes about 7 minutes and one of the machine's cores.
"""
import argparse, json, os, random, re, signal, socket, subprocess, sys, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--duration", type=float, default=240, help="seconds of load")
ap.add_argument("--rate", type=float, default=50, help="messages per second")
ap.add_argument("--kills", type=int, default=4, help="kill -9 and restart this many times during the load")
ap.add_argument("--kill-gap", type=float, default=15, help="seconds at least between two kills")
ap.add_argument("--cap", type=int, default=50, help="max_recipients_per_transaction at the start")
ap.add_argument("--cap2", type=int, default=20, help="max_recipients_per_transaction after the SIGHUP reload")
ap.add_argument("--net", default="127.0.48.", help="the first three octets of the loopback addresses used")
ap.add_argument("--port-base", type=int, default=48000)
ap.add_argument("--dir", default=None, help="the run directory (default /tmp/mailhop-soak-SEED)")
ap.add_argument("--mailhop", default=None, help="a mailhop binary to run instead of one built from this checkout")
args = ap.parse_args()

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RUN = os.path.abspath(args.dir or "/tmp/mailhop-soak-%d" % args.seed)
if os.path.exists(os.path.join(RUN, "faults.jsonl")):
    sys.exit("%s holds an earlier run: give another --dir, or remove it" % RUN)
os.makedirs(RUN, exist_ok=True)
NET, PB = args.net, args.port_base
RELAY = (NET + "1", PB + 587)
DNS = "%s2:%d" % (NET, PB + 53)
METRICS_ADDR = "%s1:%d" % (NET, PB + 90)
METRICS = "http://%s/metrics" % METRICS_ADDR
CONF = os.path.join(RUN, "config.toml")
MAILHOP = os.path.join(RUN, "mailhop")
SOAKSRV = os.path.join(RUN, "soaksrv")
builds = [(SOAKSRV, "./scripts/soak-outbound/soaksrv")]
if args.mailhop:
    MAILHOP = os.path.abspath(args.mailhop)
else:
    builds.append((MAILHOP, "./cmd/mailhop"))
for out, pkg in builds:
    subprocess.run(["go", "build", "-o", out, pkg], cwd=ROOT, check=True)
rnd = random.Random(args.seed)
faults = open(os.path.join(RUN, "faults.jsonl"), "a", buffering=1)
samples = open(os.path.join(RUN, "samples.jsonl"), "a", buffering=1)


def note(kind, **kw):
    kw.update(kind=kind, time_us=int(time.time() * 1e6))
    faults.write(json.dumps(kw) + "\n")
    print(time.strftime("%H:%M:%S"), kind, json.dumps({k: v for k, v in kw.items() if k not in ("kind", "time_us")}), flush=True)


def write_config(cap):
    tmp = CONF + ".tmp"
    with open(tmp, "w") as f:
        f.write(f'''hostname = "relay.soak14.test"
data_dir = "{RUN}/data"

[[listener]]
address = "{RELAY[0]}:{RELAY[1]}"
mode = "relay"

[policy]
trusted_networks = ["127.0.0.0/8"]
max_recipients = 200

[delivery]
resolvers = ["{DNS}"]
mx_port = {PB + 25}
retry_intervals = ["3s", "5s"]
max_queue_age = "60s"
connect_timeout = "5s"
greeting_timeout = "5s"
command_timeout = "5s"
data_init_timeout = "5s"
data_timeout = "5s"
data_end_timeout = "5s"
idle_conn_timeout = "10s"
max_recipients_per_transaction = {cap}
tls_reports = false

[admin]
metrics_address = "{METRICS_ADDR}"

[log]
format = "json"
level = "info"
''')
    os.rename(tmp, CONF)


def metrics():
    try:
        txt = urllib.request.urlopen(METRICS, timeout=5).read().decode()
    except Exception as e:
        return {"err": repr(e)}
    m = {}
    for line in txt.splitlines():
        if line.startswith("#"):
            continue
        mm = re.match(r'^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$', line)
        if mm and mm.group(1) in ("go_goroutines", "process_open_fds", "mailhop_queue_messages", "mailhop_queue_recipients",
                                  "mailhop_messages_delivered_total", "mailhop_messages_bounced_total",
                                  "mailhop_messages_deferred_total", "mailhop_messages_received_total",
                                  "process_resident_memory_bytes", "go_threads", "mailhop_queue_oldest_age_seconds"):
            m[mm.group(1)] = float(mm.group(3))
    return m


relay = None
relay_no = 0


def start_relay():
    global relay, relay_no
    relay_no += 1
    log = open(os.path.join(RUN, "relay.log"), "ab")
    relay = subprocess.Popen([MAILHOP, "serve", "--config", CONF], stdout=log, stderr=log,
                             env=dict(os.environ, GOTRACEBACK="all"))
    note("start", pid=relay.pid, instance=relay_no)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(RELAY, timeout=1).close()
            note("listening", pid=relay.pid)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("relay did not start")


def queue_cmd(*a, timeout=60):
    return subprocess.run([MAILHOP, "queue", *a, "--config", CONF], capture_output=True, text=True, timeout=timeout)


def sample():
    m = metrics()
    m["time_us"] = int(time.time() * 1e6)
    try:
        r = queue_cmd("list", "--json", timeout=30)
        q = json.loads(r.stdout or "[]")
        now = time.time()
        old = 0
        for e in q:
            arr = e.get("arrived", "")
            try:
                from datetime import datetime
                t = datetime.fromisoformat(arr.replace("Z", "+00:00")).timestamp()
                if now - t > 70:
                    old += 1
            except Exception:
                pass
        m["queued"] = len(q)
        m["past_max_age_10s"] = old
    except Exception as e:
        m["queue_err"] = repr(e)
    if relay is not None:
        try:
            m["proc_fds"] = len(os.listdir("/proc/%d/fd" % relay.pid))
        except OSError:
            pass
    samples.write(json.dumps(m) + "\n")
    return m


# 1. servers
srv = subprocess.Popen([SOAKSRV, "-seed", str(args.seed), "-events", os.path.join(RUN, "events.jsonl"),
                        "-domains", os.path.join(RUN, "domains.json"), "-base", NET, "-mxport", str(PB + 25), "-dns", DNS], stdout=subprocess.PIPE,
                       stderr=open(os.path.join(RUN, "soaksrv.log"), "ab"), text=True)
if srv.stdout.readline().strip() != "ready":
    raise SystemExit("soaksrv did not start")
note("soaksrv", pid=srv.pid)

# 2. relay, idle baseline
note("settings", cap=args.cap, cap2=args.cap2, seed=args.seed, duration=args.duration, rate=args.rate, kills=args.kills)
write_config(args.cap)
start_relay()
time.sleep(3)
base = metrics()
base["proc_fds"] = len(os.listdir("/proc/%d/fd" % relay.pid))
base["fd_list"] = sorted(os.readlink("/proc/%d/fd/%s" % (relay.pid, f)) for f in os.listdir("/proc/%d/fd" % relay.pid))
note("baseline", **base)

# 3. load and faults
D = args.duration
t0 = time.time()
load = subprocess.Popen([sys.executable, os.path.join(HERE, "load.py"), "--rate", str(args.rate), "--duration", str(D),
                         "--domains", os.path.join(RUN, "domains.json"), "--seed", str(args.seed),
                         "--out", os.path.join(RUN, "ledger.jsonl"), "--relay", "%s:%d" % RELAY, "--source", NET + "3"],
                        stdout=subprocess.PIPE, text=True)
note("load", pid=load.pid, duration=D, rate=args.rate)
kills = sorted(rnd.uniform(15, D - 5) for _ in range(args.kills))
for i in range(1, len(kills)):
    kills[i] = max(kills[i], kills[i - 1] + args.kill_gap)
reload_at = rnd.uniform(D / 3, 2 * D / 3)
while any(abs(reload_at - k) < 8 for k in kills):
    reload_at += 5
flushes = []
t = rnd.uniform(20, 40)
while t < D:
    flushes.append(t)
    t += rnd.uniform(25, 45)
plan = sorted([(k, "kill") for k in kills] + [(reload_at, "reload")] + [(f, "flush") for f in flushes])
note("plan", plan=plan)
next_sample = time.time()
for at, what in plan:
    while time.time() < t0 + at:
        if time.time() >= next_sample:
            sample()
            next_sample = time.time() + 10
        time.sleep(min(0.5, max(0, t0 + at - time.time())))
    if what == "kill":
        pid = relay.pid
        os.kill(pid, signal.SIGKILL)
        note("kill", pid=pid)
        relay.wait()
        start_relay()
    elif what == "reload":
        write_config(args.cap2)
        os.kill(relay.pid, signal.SIGHUP)
        note("reload", pid=relay.pid, cap=args.cap2)
    elif what == "flush":
        r = queue_cmd("flush")
        note("flush", rc=r.returncode, out=r.stdout.strip()[:200], err=r.stderr.strip()[:200])
while load.poll() is None:
    if time.time() >= next_sample:
        sample()
        next_sample = time.time() + 10
    time.sleep(0.5)
note("load done", stats=load.stdout.read().strip())

# 4. drain
deadline = time.time() + 300
empty = False
while time.time() < deadline:
    r = queue_cmd("list")
    if "queue is empty" in r.stdout:
        empty = True
        break
    if time.time() >= next_sample:
        sample()
        next_sample = time.time() + 10
    time.sleep(3)
note("drained", empty=empty, after_s=round(time.time() - t0 - D, 1))

# 5. back to baseline: pooled connections close after idle_conn_timeout
time.sleep(25)
end = metrics()
end["proc_fds"] = len(os.listdir("/proc/%d/fd" % relay.pid))
end["fd_list"] = sorted(os.readlink("/proc/%d/fd/%s" % (relay.pid, f)) for f in os.listdir("/proc/%d/fd" % relay.pid))
note("end", **end)
if not empty:
    r = queue_cmd("list")
    open(os.path.join(RUN, "left.txt"), "w").write(r.stdout)

# 6. stop
relay.send_signal(signal.SIGTERM)
rc = relay.wait(timeout=60)
note("relay stopped", rc=rc)
srv.send_signal(signal.SIGTERM)
srv.wait(timeout=30)
note("soaksrv stopped", rc=srv.returncode)
sys.exit(subprocess.run([sys.executable, os.path.join(HERE, "check.py"), RUN]).returncode)
