#!/usr/bin/env python3
"""scripts/bench daemon: the node agent with 250 pods, in throwaway namespaces.

1. Enrollment: 250 namespaces (half sidecar: rules and an xDS endpoint; half forwarder: rules and shared-forwarder
   listeners) enrolled through the enrollment API, 16 requests in flight; total time from the first request to the
   last reply, the daemon's CPU for it. Baseline in the same run: `weir init --netns` for each pod in turn, as
   init containers would (rules only, no listeners).
2. Tamper to repair: a rule deleted with nft in a random pod, then the time until the daemon reports the repair
   (polled every millisecond on its admin API); p50 and p99 over DAEMON_TAMPERS samples.
3. Restart: SIGKILL, restart, time until /readyz says every pod is protected again (re-adopted, nothing rewritten).
4. Memory: the daemon's RSS with 250 pods less its RSS with none, per pod.
Goals (issue 15): enrollment < 1 s, tamper-to-repair p99 <= 100 ms, <= 64 KiB per pod.
Env: DAEMON_PODS (250), DAEMON_TAMPERS (100), DAEMON_BINARY (weir binary).
"""
import json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
from benchlib import cpu_seconds, rss_kib  # noqa: E402
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODS = int(os.environ.get("DAEMON_PODS", "250"))
TAMPERS = int(os.environ.get("DAEMON_TAMPERS", "100"))
WEIR = os.environ.get("DAEMON_BINARY", os.path.join(ROOT, ".build-static/release/weir"))
PREFIX = f"weirb-d{os.getpid()}"


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def http(sock, method, path, body=None, timeout=30):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock)
    data = b"" if body is None else json.dumps(body).encode()
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: weir\r\nConnection: close\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    chunks = []
    while True:
        c = s.recv(65536)
        if not c:
            break
        chunks.append(c)
    s.close()
    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


def main():
    if os.geteuid() != 0:
        sys.exit("scripts/bench daemon needs root (it creates namespaces)")
    work = tempfile.mkdtemp(prefix="weirb-daemon-")
    names = [f"{PREFIX}-{'f' if i % 2 == 0 else 's'}{i}" for i in range(PODS)]
    daemon = None
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        run, state = f"{work}/run", f"{work}/state"
        config = f"{work}/weir.yaml"
        with open(config, "w") as f:
            f.write(f"runtimeDirectory: {run}\nstateDirectory: {state}\nmeshDirectory: {work}/mesh\n"
                    f"selectors:\n  - netns: ['{PREFIX}-f*']\n    mode: forwarder\n")

        def start():
            p = subprocess.Popen([WEIR, "daemon", "--config", config], stdout=subprocess.DEVNULL,
                                 stderr=open(f"{work}/daemon.log", "a"))
            for _ in range(1000):
                if os.path.exists(f"{run}/admin.sock"):
                    try:
                        if http(f"{run}/admin.sock", "GET", "/healthz")[0] == 200:
                            return p
                    except OSError:
                        pass
                time.sleep(0.005)
            sys.exit("the daemon did not start; see " + work + "/daemon.log")

        # Baseline first: weir init in each namespace in turn (the init-container way, rules only); then clean.
        t0 = time.monotonic()
        for n in names:
            sh(WEIR, "init", "--netns", f"/run/netns/{n}")
        baseline = time.monotonic() - t0
        for n in names:
            sh(WEIR, "clean", "--netns", f"/run/netns/{n}")

        daemon = start()
        time.sleep(0.3)
        idle_rss = rss_kib(daemon.pid)
        cpu0 = cpu_seconds(daemon.pid)

        def enroll(n):
            status, body = http(f"{run}/enroll.sock", "POST", "/v1/pods", {"netns": n})
            if status != 200:
                raise RuntimeError(f"{n}: {status} {body[:300]!r}")

        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(enroll, names))
        enroll_s = time.monotonic() - t0
        enroll_cpu = cpu_seconds(daemon.pid) - cpu0
        time.sleep(0.5)
        full_rss = rss_kib(daemon.pid)
        pods = json.loads(http(f"{run}/admin.sock", "GET", "/pods")[1])
        protected = sum(1 for p in pods if p["phase"] == "protected")
        if protected != PODS:
            sys.exit(f"only {protected} of {PODS} pods are protected")

        # Tamper to repair.
        latencies = []
        rng = random.Random(7)
        for _ in range(TAMPERS):
            n = rng.choice(names)
            before = json.loads(http(f"{run}/admin.sock", "GET", f"/pods/{n}")[1])["repairs"]
            listing = sh("ip", "netns", "exec", n, "nft", "-a", "list", "chain", "inet", "weir", "output").stdout
            handle = [l for l in listing.splitlines() if "only tcp is captured" in l][0].split()[-1]
            sh("ip", "netns", "exec", n, "nft", "delete", "rule", "inet", "weir", "output", "handle", handle)
            t0 = time.monotonic()
            for _ in range(5000):
                v = json.loads(http(f"{run}/admin.sock", "GET", f"/pods/{n}")[1])
                if v["repairs"] > before and v["phase"] == "protected":
                    break
                time.sleep(0.001)
            else:
                sys.exit(f"{n} was not repaired within 5 s")
            latencies.append((time.monotonic() - t0) * 1000)
            time.sleep(0.02)

        # Restart: SIGKILL, then time until every pod is re-adopted.
        for _ in range(200):
            with open(f"{state}/pods.json") as f:
                if len(json.load(f)["pods"]) == PODS:
                    break
            time.sleep(0.01)
        rulesets = {n: sh("ip", "netns", "exec", n, "nft", "-a", "list", "ruleset").stdout for n in names[:20]}
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        t0 = time.monotonic()
        daemon = start()
        for _ in range(10000):
            if http(f"{run}/admin.sock", "GET", "/readyz")[0] == 200:
                break
            time.sleep(0.002)
        restart_s = time.monotonic() - t0
        rewritten = sum(1 for n, r in rulesets.items()
                        if sh("ip", "netns", "exec", n, "nft", "-a", "list", "ruleset").stdout != r)

        per_pod = (full_rss - idle_rss) / PODS
        print(f"weir daemon, {PODS} pods ({PODS // 2} sidecar with an xDS endpoint, {PODS - PODS // 2} forwarder), 2 cores shared")
        print(f"  enrollment (API, 16 in flight): {enroll_s * 1000:.0f} ms in total (goal < 1000 ms); "
              f"daemon CPU {enroll_cpu * 1000:.0f} ms = {enroll_cpu * 1e6 / PODS:.0f} us per pod")
        print(f"  baseline, weir init --netns per pod in turn (rules only): {baseline * 1000:.0f} ms; "
              f"daemon/baseline = {enroll_s / baseline:.2f}")
        print(f"  tamper to repair ({TAMPERS} samples): p50 {statistics.median(latencies):.1f} ms, "
              f"p99 {pct(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms (goal p99 <= 100 ms)")
        print(f"  restart (SIGKILL) to all {PODS} re-adopted: {restart_s * 1000:.0f} ms; "
              f"rulesets rewritten among {len(rulesets)} compared with their handles: {rewritten}")
        print(f"  memory: RSS {idle_rss} KiB idle, {full_rss} KiB with {PODS} pods = {per_pod:.1f} KiB per pod (goal <= 64 KiB)")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
