#!/usr/bin/env python3
"""scripts/bench forward: direct vs weir forward vs Envoy 1.40 vs socat, same namespaces, same client and server.

Pod namespace (client + proxy) and server namespace over veth (198.18.0.1 / 198.18.0.2). Only those two
namespaces are touched; every process started here is ended by its PID; the namespaces are deleted on exit.
"""
import glob, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIR = os.path.join(ROOT, ".build-static/release/weir")
ENVOY = (glob.glob(os.path.join(ROOT, ".venv/lib/python3*/site-packages/envoy/_bin/envoy")) or [None])[0]
POD, SRV = f"weirbf-{os.getpid()}-p", f"weirbf-{os.getpid()}-s"
SERVER = "198.18.0.2"
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
# This machine runs client, proxy and server on 2 cores: one run is noisy, the median of a few is not.
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
# Latency: alternating rounds of direct, weir and Envoy, each printed.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def median_of(fn):
    vals = [fn() for _ in range(REPEAT)]
    if isinstance(vals[0], tuple):
        return tuple(None if vals[0][i] is None else sorted(v[i] for v in vals)[len(vals) // 2] for i in range(len(vals[0])))
    return sorted(vals)[len(vals) // 2]
started = []  # (Popen) we own
tmp = tempfile.mkdtemp(prefix="weir-bench-")
os.chmod(tmp, 0o755)


def sh(*args, check=True, capture=False):
    r = subprocess.run(args, check=check, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.STDOUT if capture else subprocess.DEVNULL, text=True)
    return r.stdout if capture else r.returncode


def inns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def spawn(ns, *args, uid=None):
    cmd = ["ip", "netns", "exec", ns]
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    p = subprocess.Popen(cmd + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []))
    started.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()


def wait_port(ns, host, port, timeout=10):
    for _ in range(int(timeout / 0.05)):
        if inns(ns, "python3", "-c", f"import socket;socket.create_connection(('{host}',{port}),0.5)", check=False) == 0:
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port} in {ns}")


def setup():
    sh("ip", "netns", "add", POD)
    sh("ip", "netns", "add", SRV)
    sh("ip", "link", "add", "wbf0", "netns", POD, "type", "veth", "peer", "name", "wbf1", "netns", SRV)
    for ns, dev, addr in [(POD, "wbf0", "198.18.0.1/24"), (SRV, "wbf1", "198.18.0.2/24")]:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
    sh("ip", "-n", POD, "route", "add", "default", "via", SERVER)


def teardown():
    for p in started:
        stop(p)
    # Whatever still runs in our own namespaces was started here (nginx workers outlive a killed master).
    for ns in (POD, SRV):
        for pid in sh("ip", "netns", "pids", ns, capture=True, check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def servers():
    spawn(SRV, "iperf3", "-s", "-B", SERVER, "-p", "5201")
    spawn(SRV, "sockperf", "server", "--tcp", "-i", SERVER, "-p", "11111")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen {SERVER}:80 backlog=4096; location / {{ return 200 "weir bench\\n"; }} }} }}
""")
    spawn(SRV, "nginx", "-c", conf)
    spawn(SRV, "python3", "-c", HOLDER_SERVER)
    for port in (5201, 11111, 80, 9000):
        wait_port(POD, SERVER, port)


HOLDER_SERVER = """
import socket, select
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('198.18.0.2', 9000)); s.listen(4096); held = []
while True:
    c, _ = s.accept(); held.append(c)
"""


def cpu_seconds():
    """(user + system, user) CPU seconds the measured proxy has used so far: all its threads, and its reaped
    children (socat forks one per connection)."""
    p = METERED[0]
    if p is None:
        return None
    with open(f"/proc/{p.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name, state is field 3, so utime, stime, cutime, cstime (fields 14-17) are [11:15].
    ticks = [int(x) for x in fields[11:15]]
    hz = os.sysconf("SC_CLK_TCK")
    return sum(ticks) / hz, (ticks[0] + ticks[2]) / hz


def machine_ticks():
    """(busy, all) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        # user nice system idle iowait irq softirq steal; guest time is already counted in user and nice.
        t = [int(x) for x in f.readline().split()[1:9]]
    idle = t[3] + t[4]  # idle, iowait
    return sum(t) - idle, sum(t)


def cpu_per(fn, scale):
    """Runs fn, which returns (figure, units of work). Gives (figure, proxy CPU microseconds per `scale` units,
    the part of it spent in user space, the share of the machine's CPUs busy meanwhile in %)."""
    before, m0 = cpu_seconds(), machine_ticks()
    figure, work = fn()
    m1 = machine_ticks()
    # socat's children are counted once reaped: give them time to see the client's close.
    time.sleep(0.3)
    after = cpu_seconds()
    busy = 100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    if before is None or not work:
        return figure, None, None, busy
    return figure, (after[0] - before[0]) * 1e6 * scale / work, (after[1] - before[1]) * 1e6 * scale / work, busy


def iperf(streams):
    out = inns(POD, "iperf3", "-c", SERVER, "-p", "5201", "-t", str(SECONDS), "-P", str(streams), "-J", capture=True, check=False)
    data = json.loads(out)
    if "error" in data:
        raise SystemExit(f"iperf3 ({CURRENT[0]}): {data['error']}")
    total = data["end"].get("sum_received") or data["end"]["sum"]
    return total["bits_per_second"] / 1e9, total["bytes"]


def sockperf():
    """One ping-pong run: (p50, p99) in microseconds, and the round trips it made."""
    out = inns(POD, "sockperf", "ping-pong", "--tcp", "-i", SERVER, "-p", "11111", "-t", str(SECONDS), capture=True)
    p = {}
    for q in ("50.000", "99.000"):
        m = re.search(r"percentile " + re.escape(q) + r" =\s+([0-9.]+)", out)
        p[q] = float(m.group(1)) if m else float("nan")
    m = re.search(r"\[Valid Duration\].*?ReceivedMessages=(\d+)", out)
    return (p["50.000"], p["99.000"]), int(m.group(1)) if m else 0


def wrk(close):
    args = ["wrk", "-t1", "-c32", f"-d{SECONDS}s"] + (["-H", "Connection: close"] if close else []) + [f"http://{SERVER}/"]
    out = inns(POD, *args, capture=True)
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    n = re.search(r"([0-9]+) requests in", out)
    return (float(m.group(1)) if m else float("nan")), (int(n.group(1)) if n else 0)


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def proxy_pids(p):
    """The proxy process and, for socat, its forked children."""
    pids = [p.pid]
    try:
        out = sh("pgrep", "-P", str(p.pid), capture=True, check=False)
        pids += [int(x) for x in out.split()]
        for child in list(pids[1:]):
            pids += [int(x) for x in sh("pgrep", "-P", str(child), capture=True, check=False).split()]
    except ValueError:
        pass
    return pids


IDLE_CLIENT = """
import socket, sys, time
conns = [socket.create_connection(('198.18.0.2', 9000)) for _ in range(1000)]
print('open', flush=True)
sys.stdin.readline()
"""


def idle_memory(proxy):
    if proxy is None:
        return None, None
    time.sleep(0.5)
    before = rss_kib(proxy_pids(proxy))
    holder = subprocess.Popen(["ip", "netns", "exec", POD, "python3", "-c", IDLE_CLIENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    started.append(holder)
    holder.stdout.readline()
    time.sleep(1.0)
    after = rss_kib(proxy_pids(proxy))
    holder.stdin.write("\n"); holder.stdin.flush(); holder.wait()
    return after, (after - before) * 1024 / 1000


def clean_rules():
    sh(WEIR, "clean", "--netns", f"/run/netns/{POD}")


CURRENT = [""]
METERED = [None]  # the proxy process whose CPU time is measured now


def start_proxy(name):
    """Captures the pod's traffic for `name` and starts its proxy; the proxy (None: direct, socat: started per
    server port by run_variant)."""
    CURRENT[0] = name
    clean_rules()
    proxy = None
    if name == "weir":
        sh(WEIR, "init", "--quiet", "--netns", f"/run/netns/{POD}", "--ipv6", "false")
        proxy = spawn(POD, WEIR, "forward", "--workers", "1", "--ipv6", "false", "--idle-timeout", "0",
                      "--busy-poll", os.environ.get("BENCH_BUSY_POLL", "0"))
        wait_port(POD, "127.0.0.1", 15001)
    elif name == "envoy":
        sh(WEIR, "init", "--quiet", "--netns", f"/run/netns/{POD}", "--ipv6", "false", "--proxy-uid", "1337")
        cfg = os.path.join(tmp, "envoy.yaml")
        with open(cfg, "w") as f:
            f.write(ENVOY_CONFIG)
        os.chmod(cfg, 0o644)
        proxy = spawn(POD, ENVOY, "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "error", uid=1337)
        # Readiness through the admin port: a direct connection to 15001 would make Envoy dial itself forever.
        wait_port(POD, "127.0.0.1", 15902, timeout=20)
        time.sleep(0.5)
    elif name == "socat":
        sh(WEIR, "init", "--quiet", "--netns", f"/run/netns/{POD}", "--ipv6", "false", "--proxy-uid", "1337")
    return proxy


def run_variant(name):
    proxy = start_proxy(name)
    socat_target = name == "socat"
    results = {}
    METERED[0] = proxy

    def with_socat(port, fn):
        nonlocal proxy
        if not socat_target:
            return fn()
        p = spawn(POD, "socat", "TCP4-LISTEN:15001,fork,reuseaddr,backlog=4096", f"TCP4:{SERVER}:{port}", uid=1337)
        METERED[0] = p
        wait_port(POD, "127.0.0.1", 15001)
        try:
            return fn()
        finally:
            if port == 9000:
                proxy = p
            else:
                stop(p)
                time.sleep(0.2)

    # Proxy CPU per unit of work: microseconds per GB moved, per request, per connection.
    results["iperf1"], results["cpu_gb"], results["user_gb"], results["busy_gb"] = with_socat(5201, lambda: median_of(lambda: cpu_per(lambda: iperf(1), 1e9)))
    results["iperf8"] = with_socat(5201, lambda: median_of(lambda: iperf(8)[0]))
    if name == "socat":
        results["p50"], results["p99"] = with_socat(11111, lambda: median_of(lambda: sockperf()[0]))
    results["rps"], results["cpu_req"], results["user_req"], results["busy_req"] = with_socat(80, lambda: median_of(lambda: cpu_per(lambda: wrk(False), 1)))
    results["cps"], results["cpu_conn"], results["user_conn"], results["busy_conn"] = with_socat(80, lambda: median_of(lambda: cpu_per(lambda: wrk(True), 1)))
    if name == "direct":
        results["rss"], results["perconn"] = None, None
    else:
        results["rss"], results["perconn"] = with_socat(9000, lambda: idle_memory(proxy))
    if proxy is not None:
        stop(proxy)
    clean_rules()
    return results


ENVOY_CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15902}}
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench
          cluster: original_dst
  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
"""


def latency_rounds(rounds):
    """Ping-pong latency in alternating rounds (direct, weir, Envoy in turn): the machine's drift over a run
    (other load, frequency, the host's neighbours) falls on all three alike. Per round and variant: (p50, p99,
    the proxy's CPU microseconds per round trip)."""
    out = []
    for _ in range(rounds):
        row = {}
        for name in ("direct", "weir", "envoy"):
            proxy = start_proxy(name)
            METERED[0] = proxy
            lat, cpu, _, _ = cpu_per(sockperf, 1)
            row[name] = (lat[0], lat[1], cpu if cpu is not None else float("nan"))
            if proxy is not None:
                stop(proxy)
            clean_rules()
        out.append(row)
    return out


def main():
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench forward needs root")
    if not ENVOY:
        raise SystemExit("Envoy is not installed in .venv; run scripts/install-deps")
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        setup()
        servers()
        variants = ["direct", "weir", "envoy", "socat"]
        res = {v: run_variant(v) for v in variants}
        rounds = latency_rounds(ROUNDS)
    finally:
        teardown()
    # The table's latency rows for direct, weir and Envoy: the medians over the alternating rounds.
    for v in ("direct", "weir", "envoy"):
        for i, k in enumerate(("p50", "p99")):
            res[v][k] = statistics.median(r[v][i] for r in rounds)
    d, e = res["direct"], res["envoy"]
    rows = [("iperf3 1 stream (Gbit/s)", "iperf1", True), ("iperf3 8 streams (Gbit/s)", "iperf8", True),
            ("sockperf ping-pong p50 (usec)", "p50", False), ("sockperf ping-pong p99 (usec)", "p99", False),
            ("wrk keep-alive (req/s)", "rps", True), ("wrk Connection: close (conn/s)", "cps", True),
            ("RSS with 1000 idle conns (KiB)", "rss", False), ("added RSS per idle conn (bytes)", "perconn", False),
            ("proxy CPU per GB, 1 stream (ms)", "cpu_gb_ms", False), ("  of which user space (ms)", "user_gb_ms", False),
            ("proxy CPU per request (usec)", "cpu_req", False), ("  of which user space (usec)", "user_req", False),
            ("proxy CPU per connection (usec)", "cpu_conn", False), ("  of which user space (usec)", "user_conn", False),
            ("machine CPU busy, iperf3 1 (%)", "busy_gb", False), ("machine CPU busy, keep-alive (%)", "busy_req", False),
            ("machine CPU busy, close (%)", "busy_conn", False)]
    for r in res.values():
        for k in ("cpu_gb", "user_gb"):
            r[k + "_ms"] = r[k] / 1000 if r.get(k) is not None else None
    print(f"weir bench forward: median of {REPEAT} runs of {SECONDS}s per measurement, one worker each (weir --workers 1, Envoy --concurrency 1)")
    print(f"{'':34}" + "".join(f"{v:>12}" for v in variants) + f"{'weir/direct':>13}{'weir/envoy':>12}")
    for label, key, _ in rows:
        vals = [res[v][key] for v in variants]
        fmt = lambda x: f"{x:12.2f}" if isinstance(x, float) else (f"{x:12d}" if isinstance(x, int) else f"{'-':>12}")
        w = res["weir"][key]
        r_d = f"{w / d[key]:13.2f}" if d[key] else f"{'-':>13}"
        r_e = f"{w / e[key]:12.2f}" if e[key] else f"{'-':>12}"
        print(f"{label:34}" + "".join(fmt(x) for x in vals) + r_d + r_e)
    print(f"latency, sockperf ping-pong, {ROUNDS} rounds of {SECONDS}s each in turn (direct, weir, Envoy), added over that round's direct:")
    print(f"{'':8}{'direct p50/p99':>16}{'weir +p50/+p99':>17}{'Envoy +p50/+p99':>18}{'weir <= Envoy':>15}{'CPU us/round trip weir, Envoy':>32}")
    added = []
    for i, r in enumerate(rounds):
        d50, d99 = r["direct"][:2]
        w = (r["weir"][0] - d50, r["weir"][1] - d99)
        en = (r["envoy"][0] - d50, r["envoy"][1] - d99)
        added.append((w, en))
        ok = "yes" if w[0] <= en[0] and w[1] <= en[1] else "no"
        print(f"  round {i + 1}{d50:8.2f}/{d99:7.2f}{w[0]:+9.2f}/{w[1]:+7.2f}{en[0]:+10.2f}/{en[1]:+7.2f}{ok:>15}"
              f"{r['weir'][2]:16.2f}, {r['envoy'][2]:.2f}")
    added_w = statistics.median(a[0][0] for a in added)
    added_e = statistics.median(a[1][0] for a in added)
    print("goals:")
    print(f"  throughput 1 stream >= 0.95x direct: {res['weir']['iperf1'] / d['iperf1']:.2f}x")
    print(f"  added p50 and p99 <= Envoy's in each round: {sum(1 for w, en in added if w[0] <= en[0] and w[1] <= en[1])} of {ROUNDS} rounds")
    print(f"  median added p50 <= 1/3 of Envoy's: weir +{added_w:.2f} us, Envoy +{added_e:.2f} us ({added_w / added_e if added_e else float('nan'):.2f})")
    print(f"  req/s >= 1.5x Envoy: {res['weir']['rps'] / e['rps']:.2f}x;  conn/s >= 1.5x Envoy: {res['weir']['cps'] / e['cps']:.2f}x")
    print(f"  memory at 1000 idle <= 1/3 Envoy: {res['weir']['rss'] / e['rss']:.2f};  per idle conn <= 4096 bytes: {res['weir']['perconn']:.0f}")
    # Client, proxy and server share this machine's CPUs, so the rates above also measure the client's and the
    # server's cost. The proxy's own CPU per unit of work is what bounds its rate once it has a CPU to itself.
    w = res["weir"]
    print("the proxy's own CPU (Envoy's CPU per unit / weir's; the work weir does per CPU-second, relative to Envoy):")
    print(f"  per GB {e['cpu_gb'] / w['cpu_gb']:.2f}x;  per request {e['cpu_req'] / w['cpu_req']:.2f}x;  per connection {e['cpu_conn'] / w['cpu_conn']:.2f}x")
    print("  (CPU time is counted in 1/%d s ticks; the rest of each figure is the kernel's TCP work, which the proxy's" % os.sysconf("SC_CLK_TCK"))
    print("   sends and connects pay for both ends of the connection they feed.)")


if __name__ == "__main__":
    main()
