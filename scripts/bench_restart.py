#!/usr/bin/env python3
"""scripts/bench daemon, part 2: `systemctl restart weir` under a real systemd, with load through a pod's forwarder.

systemd 252 boots as PID 1 in a throwaway container (systemd-nspawn --volatile=yes --private-network); the unit as
shipped runs the release weir; Tests/helpers/restart_scene.sh makes DAEMON_PODS pods (half forwarder, half sidecar)
and an echo server behind pod weirt-rl-f0. Then:
1. Restart to READY=1: `systemctl restart weir` returns once the new process said READY=1 (Type=notify): the
   stop (the hand-off into systemd's descriptor store), the start, and every pod protected again. Median and max
   over the restarts.
2. Under load: Tests/helpers/restart_load.py in pod weirt-rl-f0 makes new connections through the forwarder as
   fast as RESTART_CONNECTORS threads can (each connection echoes a message) while RESTART_LONG long-lived
   connections, opened first, exchange up to 32 KiB at a time, checked byte for byte; RESTARTS restarts,
   RESTART_GAP seconds apart. It counts new connections refused and failed, and long-lived connections lost.
Goals (issue 16): refused = 0, lost = 0. The container goes when the bench ends, with everything made inside it.
Env: DAEMON_PODS (250), RESTARTS (10), RESTART_GAP (2 s), RESTART_LONG (16), RESTART_CONNECTORS (4),
DAEMON_BINARY (weir binary).
"""
import json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODS = int(os.environ.get("DAEMON_PODS", "250"))
RESTARTS = int(os.environ.get("RESTARTS", "10"))
GAP = float(os.environ.get("RESTART_GAP", "2"))
LONG = int(os.environ.get("RESTART_LONG", "16"))
CONNECTORS = int(os.environ.get("RESTART_CONNECTORS", "4"))
WEIR = os.environ.get("DAEMON_BINARY", os.path.join(ROOT, ".build-static/release/weir"))


class Container:
    """systemd as PID 1 in its own namespaces; `stop()` powers it off."""

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="weirb-nspawn-", suffix=".log", delete=False)
        bindir = os.path.dirname(os.path.abspath(WEIR))
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", "/", "--volatile=yes", "--private-network", "--register=no", "--keep-unit",
             "--console=passive", f"--bind-ro={bindir}:/opt/weir/bin", f"--bind-ro={ROOT}/systemd:/opt/weir/unit",
             f"--bind-ro={ROOT}/Tests/helpers:/opt/weir/helpers", "-b", "systemd.firstboot=off",
             "systemd.mask=systemd-networkd-wait-online.service", "systemd.mask=nginx.service"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.leader = 0
        for _ in range(600):
            kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
            for k in kids:
                try:
                    if open(f"/proc/{k}/comm").read() == "systemd\n":
                        self.leader = int(k)
                except OSError:
                    pass
            if self.leader:
                state = self.run("systemctl", "is-system-running", check=False).stdout
                basic = self.run("systemctl", "is-active", "basic.target", check=False).stdout
                if state.startswith(("running", "degraded")) or basic.startswith("active"):
                    return
            time.sleep(0.1)
        with open(self.log.name) as f:
            output = f.read()[-2000:]
        self.stop()
        sys.exit("systemd did not boot in systemd-nspawn within 60 s:\n" + output)

    def run(self, *args, check=True):
        r = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "/usr/bin/timeout", "120", *args],
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {r.returncode} {r.stdout[-800:]} {r.stderr[-800:]}")
        return r

    def prop(self, name):
        return self.run("systemctl", "show", "-p", name, "--value", "weir").stdout.strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                if self.leader:
                    try:
                        os.kill(self.leader, 9)
                    except OSError:
                        pass
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


def main():
    if os.geteuid() != 0:
        sys.exit("scripts/bench daemon needs root (it boots a container)")
    c = Container()
    try:
        c.run("/bin/sh", "/opt/weir/helpers/restart_scene.sh", str(PODS))
        t0 = time.monotonic()
        c.run("systemctl", "start", "weir")
        first_start = time.monotonic() - t0
        status = c.prop("StatusText")
        if f"{PODS} pods ({PODS} protected)" not in status:
            sys.exit(f"not every pod is protected after the start: {status}")
        duration = 3 + RESTARTS * (GAP + 2)
        c.run("/bin/sh", "-c",
              "setsid ip netns exec weirt-rl-f0 /usr/bin/python3 /opt/weir/helpers/restart_load.py 198.18.0.2 8080 "
              f"--long {LONG} --connectors {CONNECTORS} --duration {duration} --marker /tmp/rl.marker --out /tmp/rl.json "
              "</dev/null >/tmp/rl.log 2>&1 &")
        time.sleep(2)
        times, pids = [], {c.prop("MainPID")}
        for _ in range(RESTARTS):
            t0 = time.monotonic()
            c.run("systemctl", "restart", "weir")
            times.append(time.monotonic() - t0)
            pids.add(c.prop("MainPID"))
            time.sleep(GAP)
        c.run("touch", "/tmp/rl.marker")
        for _ in range(int(duration + 60) * 10):
            if c.run("test", "-s", "/tmp/rl.json", check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            sys.exit("the load did not finish: " + c.run("cat", "/tmp/rl.log", check=False).stdout[-800:])
        load = json.loads(c.run("cat", "/tmp/rl.json").stdout)
        status = c.prop("StatusText")
        journal = c.run("journalctl", "-u", "weir", "--no-pager").stdout
        not_handed = journal.count("could not be handed off")
        new, longs = load["new"], load["long"]
        lost = sum(1 for l in longs if not l["alive"])
        carried = sum(1 for l in longs if l["alive"] and l["after"] > 0)
        print(f"systemctl restart weir under systemd {c.run('systemctl', '--version').stdout.split()[1]} "
              f"(nspawn container), {PODS} pods, release weir, 2 cores shared with the load")
        print(f"  first start to READY=1: {first_start * 1000:.0f} ms")
        print(f"  restart to READY=1 ({RESTARTS} restarts, hand-off and take-over of {PODS} pods): "
              f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
              f"({len(pids)} processes in all)")
        print(f"  under load ({CONNECTORS} connecting threads), {RESTARTS} restarts in {duration:.0f} s: "
              f"new connections {new['ok']} ok, "
              f"refused {new['refused']} (goal 0), failed {new['failed']}, at {load['rate']:.0f} per second")
        print(f"  long-lived connections: {len(longs)} opened before, lost {lost} (goal 0), "
              f"carried bytes after the last restart {carried}, "
              f"{sum(l['bytes'] for l in longs) / 1e6:.1f} MB checked both ways; "
              f"connections closed at a hand-off: {not_handed} restarts reported some")
        if new["errors"]:
            print(f"  first errors: {new['errors']}")
        print(f"  status after: {status}")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
