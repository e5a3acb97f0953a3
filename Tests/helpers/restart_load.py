#!/usr/bin/env python3
"""Load through a pod's forwarder while the daemon restarts: a steady stream of new connections (each one sends a
message and must get it back), and long-lived connections opened first that keep exchanging random bytes, checked
byte for byte in both directions.

usage: restart_load.py HOST PORT --long N --duration S --marker FILE --out FILE [--rate PER_SECOND] [--connectors N]
                       [--during FILE]

It runs for S seconds and writes one JSON object to FILE: new connections made (by N threads, each as fast as it
can or at the rate given), refused, failed (with the first errors), the connection rate, and for each long-lived connection whether it lived to the end, its bytes, and the
rounds it completed after FILE `--marker` appeared (the test makes it once the restart is over). With `--during`,
it also counts the new connections begun after that file appeared and before the marker did (the restart's
window), and how many of them succeeded.
"""
import argparse
import json
import os
import socket
import threading
import time


def exchange(sock, payload):
    sock.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = sock.recv(len(payload) - len(got))
        if not chunk:
            raise ConnectionError("closed after %d of %d bytes" % (len(got), len(payload)))
        got += chunk
    if bytes(got) != payload:
        raise ValueError("echo differs from what was sent")


def new_connections(args, deadline, result, lock):
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    n = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        n += 1
        during = args.during is not None and os.path.exists(args.during) and not os.path.exists(args.marker)
        outcome, error = "ok", None
        try:
            with socket.create_connection((args.host, args.port), timeout=15) as s:
                exchange(s, b"hello %d\n" % n)
        except ConnectionRefusedError as e:
            outcome, error = "refused", "refused: %s" % e
        except Exception as e:  # noqa: BLE001 - every failure is counted and named
            outcome, error = "failed", "%s: %s" % (type(e).__name__, e)
        with lock:
            result[outcome] += 1
            if during:
                result["during"] += 1
                result["during_ok"] += outcome == "ok"
            if error:
                result["errors"].append(error)
        if interval:
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def long_lived(args, sock, deadline, state):
    rounds = 0
    while time.monotonic() < deadline:
        size = 1 + int.from_bytes(os.urandom(2), "big") % 32768
        try:
            exchange(sock, os.urandom(size))
        except Exception as e:  # noqa: BLE001
            state["error"] = "%s: %s" % (type(e).__name__, e)
            return
        state["bytes"] += size
        rounds += 1
        if os.path.exists(args.marker):
            state["after"] += 1
        time.sleep(0.05)
    state["alive"] = True
    sock.close()


def main():
    # Started in the background by a test's command, it closes what it inherited: the test's Foundation Process, which
    # ran that command, sees it end only once every copy of one of those descriptors is closed.
    os.closerange(3, 65536)
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--long", type=int, default=10)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--connectors", type=int, default=1)
    p.add_argument("--during")
    p.add_argument("--marker", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    longs = []
    for _ in range(args.long):
        s = socket.create_connection((args.host, args.port), timeout=15)
        exchange(s, b"first\n")
        longs.append((s, {"alive": False, "bytes": 0, "after": 0, "error": None}))
    started = time.monotonic()
    deadline = started + args.duration
    new = {"ok": 0, "refused": 0, "failed": 0, "during": 0, "during_ok": 0, "errors": []}
    lock = threading.Lock()
    threads = [threading.Thread(target=new_connections, args=(args, deadline, new, lock)) for _ in range(args.connectors)]
    threads += [threading.Thread(target=long_lived, args=(args, s, deadline, st)) for s, st in longs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + 60)
    elapsed = time.monotonic() - started
    new["errors"] = new["errors"][:5]
    out = {
        "new": new,
        "rate": (new["ok"] + new["refused"] + new["failed"]) / elapsed,
        "long": [st for _, st in longs],
    }
    with open(args.out + ".tmp", "w") as f:
        json.dump(out, f)
    os.rename(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
