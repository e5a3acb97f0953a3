#!/usr/bin/env python3
"""scripts/bench xds-heap: where an ADS connection's memory goes, under heaptrack.

weir xds serves the bench mesh of `scripts/bench xds` in a throwaway network namespace, under heaptrack (the release
build links glibc dynamically, so heaptrack's preload sees every allocation). One grpcio process opens
XDS_HEAP_CONNECTIONS connections of one stream each, the shape of Envoy sidecars (CDS, LDS, RDS, each ACKed); once
they are idle weir is killed, and what it still had allocated is what those connections hold (plus what it held
before them, which is left out: only allocation sites called at least once per two connections are counted). Each
is charged to the nearest frame of its stack that says whose it is, and the table gives bytes per connection.
Then the same with XDS_HEAP_ENVOYS real Envoy 1.40 sidecars, one per virtual node: an Envoy's first request carries
its node with all its extensions (61 KB), which no grpcio client sends.
Env: XDS_HEAP_CONNECTIONS (500), XDS_HEAP_ENVOYS (20), XDS_BINARY (weir binary).
"""
import os, re, shutil, signal, subprocess, sys, tempfile, time

os.environ["XDS_PER_CHANNEL"] = "1"  # read by bench_xds at import: one stream per connection
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_xds as xds  # noqa: E402
from benchlib import rss_kib  # noqa: E402

CONNECTIONS = int(os.environ.get("XDS_HEAP_CONNECTIONS", "500"))
ENVOYS = int(os.environ.get("XDS_HEAP_ENVOYS", "20"))

# Owners, most specific first; an allocation goes to the first owner named by the nearest frame that names one.
OWNERS = [
    ("NIOHPACK's tables (encoder and decoder: the static table copied, a dynamic table sized for 4096 bytes)",
     ("HeaderTableStorage", "HPACKEncoder.init", "DynamicHeaderTable", "IndexedHeaderTable")),
    ("NIOHTTP2's rate limits (a timestamp reserved per event counted)", ("RateLimitStateMachine",)),
    ("request headers, HPACK-decoded", ("HPACKDecoder",)),
    ("NIOHTTP2's stream channel", ("HTTP2StreamChannel", "MultiplexerAbstractChannel", "DataBuffer.init",
                                   "StreamFlowControlState")),
    ("NIOHTTP2's connection state (stream maps, flow control, settings, frame codec, multiplexer)",
     ("StreamMap", "OutboundFlowControlBuffer", "HTTP2SettingsState", "receiveSettingsChange",
      "ConcurrentStreamBuffer", "ControlFrameBuffer", "ConnectionStreamState", "StreamMultiplexer",
      "InboundEventBuffer", "processOutboundFrame", "unbufferAndFlush", "NIOHTTP2Handler", "HTTP2FrameDecoder",
      "HTTP2FrameEncoder")),
    ("weir's own (stream session and SotW state, handlers)",
     ("StreamSession", "SotWStream", "SotWMachine", "DeltaStream", "ADSStreamHandler", "ResponseEncoder",
      "ADSTransport", "FlushCoalescer", "ConnectionErrorLogger")),
    ("NIO's socket channel, pipeline and read buffer",
     ("SocketChannel", "ChannelHandlerContext", "ChannelPipeline", "PendingStreamWrites", "UnixSocketAddress",
      "readFromSocket", "RecvBufferAllocator")),
]
# Stacks through the config path are the mesh's, not a connection's.
CONFIG = ("ConfigSources", "MeshCompiler", "ResourceMemo", "ManifestReader", "SnapshotCache", "GenerationMap",
          "ConfigWatcher", "SnapshotJournal")


def size(text):
    m = re.match(r"([\d.]+)([KMG]?)", text)
    return float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


def breakdown(report, connections):
    """Bytes per connection by owner, from `heaptrack_print --print-leaks` without merged backtraces."""
    lines = report.split("\n")
    totals = {name: 0.0 for name, _ in OWNERS}
    totals["other"] = 0.0
    for i, line in enumerate(lines):
        m = re.match(r"^([\d.]+[KMG]?)B? leaked over (\d+) calls", line)
        if not m or int(m.group(2)) < connections // 2:
            continue
        frames = []
        for f in lines[i + 1:]:
            if not f.startswith("  "):
                break
            f = f.strip()
            if not f.startswith(("at ", "in ")):
                frames.append(f)
        if any(k in f for f in frames for k in CONFIG):
            continue
        owner = next((name for f in frames for name, keys in OWNERS if any(k in f for k in keys)), "other")
        totals[owner] += size(m.group(1))
    return {k: v / connections for k, v in totals.items()}


def grpcio_clients(sock):
    """XDS_HEAP_CONNECTIONS grpcio connections of one stream each, idle once they have ACKed their config."""
    import multiprocessing as mp
    a, b = mp.get_context("spawn").Pipe()
    client = mp.get_context("spawn").Process(target=xds.client_worker, args=(b, sock, 0, CONNECTIONS))
    client.start()
    if not a.poll(300) or a.recv() != "ready":
        client.kill()
        client.join()
        sys.exit("the ADS clients did not get their config")

    def stop():
        a.send("stop")
        client.join(10)
        if client.is_alive():
            client.kill()
    return stop


def envoy_clients(d, sock, ns):
    """XDS_HEAP_ENVOYS Envoy 1.40 sidecars, one per virtual node, idle once each has ACKed its routes."""
    procs = [xds.start_envoy(d, sock, ns, k) for k in range(ENVOYS)]

    def stop():
        for p in procs:
            p.kill()
            p.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        s = [x for x in xds.admin("/streams") if x["nodeID"].startswith("mesh/bench/")]
        if len(s) >= ENVOYS and all(x["types"].get("RDS", {}).get("lastAckedVersion") for x in s):
            return stop
        time.sleep(0.2)
    stop()
    sys.exit("the Envoys did not get their config")


def measure(kind, count):
    """weir xds under heaptrack with `count` idle clients of `kind`: its RSS before and after them, and the heap
    they hold, per client and by owner."""
    d = tempfile.mkdtemp(prefix="weir-bench-xds-")
    os.makedirs(os.path.join(d, "mesh"))
    xds.write_mesh(d, 90, everything=True)
    sock = os.path.join(d, "xds.sock")
    xds.ADMIN = os.path.join(d, "admin.sock")
    ns = f"weirb-heap-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    weir = stop = pid = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        weir = subprocess.Popen(["ip", "netns", "exec", ns, "env", "WEIR_LOG_LEVEL=warning", "heaptrack", "-o",
                                 os.path.join(d, "heaptrack"), xds.WEIR, "xds", "--listen", f"unix:{sock}",
                                 "--mesh", os.path.join(d, "mesh"), "--admin", f"unix:{xds.ADMIN}"],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "weir.log"), "w"))
        for _ in range(600):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        time.sleep(1)
        found = subprocess.run(["pgrep", "-f", f"^{re.escape(xds.WEIR)} xds --listen unix:{sock}"],
                               capture_output=True, text=True).stdout.split()
        if not found:
            sys.exit("weir xds did not start under heaptrack: " + open(os.path.join(d, "weir.log")).read())
        pid = int(found[-1])
        before = rss_kib(pid)
        stop = grpcio_clients(sock) if kind == "grpcio" else envoy_clients(d, sock, ns)
        time.sleep(3)
        after = rss_kib(pid)
        os.kill(pid, signal.SIGKILL)  # what is allocated now is what the idle clients hold
        pid = None
        weir.wait(60)
        files = [f for f in os.listdir(d) if f.startswith("heaptrack")]
        report = subprocess.run(["heaptrack_print", "-f", os.path.join(d, files[0]), "--print-leaks", "1",
                                 "--print-peaks", "0", "--print-allocators", "0", "--print-temporary", "0",
                                 "-n", "5000", "--merge-backtraces", "0"], capture_output=True, text=True).stdout
        report = subprocess.run(["swift", "demangle", "--simplified"], input=report, capture_output=True,
                                text=True).stdout
        return before, after, breakdown(report, count)
    finally:
        if stop is not None:
            stop()
        # heaptrack runs weir as its child: ending the wrapper alone would leave weir running.
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if weir is not None and weir.poll() is None:
            weir.kill()
            weir.wait()
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(d, ignore_errors=True)


def show(title, count, before, after, per):
    print(title)
    print(f"  RSS {before} -> {after} KiB: {(after - before) / count:.1f} KiB each (heaptrack's own bookkeeping included)")
    print("  heap still allocated each, by owner:")
    for name, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"    {v:8.0f} B  {name}")
    print(f"    {sum(per.values()):8.0f} B  in all ({sum(per.values()) / 1024:.1f} KiB; goal <= 20 KiB per connection)")


def main():
    if os.geteuid() != 0:
        sys.exit("scripts/bench xds-heap needs root (it creates a network namespace)")
    show(f"weir xds under heaptrack: {CONNECTIONS} grpcio connections of one stream each (the sidecar's shape), idle",
         CONNECTIONS, *measure("grpcio", CONNECTIONS))
    # Real sidecars: an Envoy's first request carries its node with every extension it was built with (61 KB in
    # 1.40), which the grpcio clients do not send. One Envoy per node, so each node's shared response frames count
    # in full here.
    show(f"weir xds under heaptrack: {ENVOYS} Envoy 1.40 sidecars (one per virtual node, so the node's own response"
         " frames are counted in full), idle", ENVOYS, *measure("envoy", ENVOYS))


if __name__ == "__main__":
    main()
