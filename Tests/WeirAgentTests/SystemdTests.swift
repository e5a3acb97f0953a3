import Foundation
import Testing
import WeirTestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// systemd 252 booted as PID 1 in a throwaway container (`systemd-nspawn --volatile=yes --private-network`): its
/// own network and mount namespaces, the host's /usr read-only, the built weir and the unit bound in. Stopping it
/// powers the container off, and everything made inside (namespaces, rules) goes with it.
final class SystemdContainer: @unchecked Sendable {
    // Set in init; read afterwards.
    let nspawn = Process()
    var leader: Int32 = 0
    let log: String

    init() throws {
        log = "/tmp/weirt-nspawn-\(getpid())-\(UInt32.random(in: 0..<100000)).log"
        FileManager.default.createFile(atPath: log, contents: nil)
        nspawn.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-nspawn")
        nspawn.arguments = [
            "-D", "/", "--volatile=yes", "--private-network", "--register=no", "--keep-unit", "--console=passive",
            "--bind-ro=/opt/swift", "--bind-ro=\(projectRoot.path)/.build/debug:/opt/weir/bin",
            "--bind-ro=\(projectRoot.path)/systemd:/opt/weir/unit",
            "--bind-ro=\(projectRoot.path)/Tests/helpers:/opt/weir/helpers", "-b", "systemd.firstboot=off",
            // The host's units that would hold the boot up in a container without a network.
            "systemd.mask=systemd-networkd-wait-online.service", "systemd.mask=nginx.service",
        ]
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        nspawn.standardOutput = out
        nspawn.standardError = out
        nspawn.standardInput = FileHandle.nullDevice
        try nspawn.run()
        // The container's PID 1 is nspawn's child; it is up once systemd says running (or degraded: some host units
        // do not start in a container).
        var lastState = ""
        let booted = eventually(60) {
            // nspawn's children include short-lived helpers before the container's init: the leader is the child
            // that runs systemd, looked for again until it is there.
            let children =
                ((try? sh(["pgrep", "-P", "\(nspawn.processIdentifier)"], allowFailure: true))?.output ?? "")
                .split(separator: "\n").compactMap { Int32($0) }
            leader =
                children.first {
                    (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8))?.hasPrefix("systemd\n") == true
                } ?? 0
            guard leader != 0 else { return false }
            let state = (try? run("systemctl", "is-system-running"))?.output ?? ""
            let basic = (try? run("systemctl", "is-active", "basic.target"))?.output ?? ""
            lastState = "system \(state.prefix(40)), basic.target \(basic.prefix(40))"
            return state.hasPrefix("running") || state.hasPrefix("degraded") || basic.hasPrefix("active")
        }
        guard booted else {
            let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            stop()
            throw CommandError(
                description:
                    "systemd did not boot in systemd-nspawn within 60 s (leader \(leader), \(lastState)): \(output.suffix(1500))"
            )
        }
    }

    /// A command inside the container (all its namespaces), ended after 120 s: a test never hangs on one.
    @discardableResult
    func run(_ args: String...) throws -> (status: Int32, output: String) {
        try sh(["nsenter", "-t", "\(leader)", "-a", "/usr/bin/timeout", "120"] + args, allowFailure: true)
    }

    /// A shell script inside the container, ended after 120 s. A process it leaves running must not hold its
    /// output open (`setsid CMD </dev/null >FILE 2>&1 &`), or this waits for that process.
    @discardableResult
    func shell(_ script: String) throws -> (status: Int32, output: String) {
        try sh(
            ["nsenter", "-t", "\(leader)", "-a", "/usr/bin/timeout", "120", "/bin/sh", "-c", script], allowFailure: true
        )
    }

    /// The end of weir's journal, for failure messages.
    func journal() -> String {
        String(((try? run("journalctl", "-u", "weir", "--no-pager"))?.output ?? "").suffix(2000))
    }

    func property(_ unit: String, _ name: String) -> String {
        ((try? run("systemctl", "show", "-p", name, "--value", unit))?.output ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Powers the container off (SIGTERM to nspawn), and kills its PID 1 if it does not go within 15 s.
    func stop() {
        guard nspawn.isRunning else { return }
        kill(nspawn.processIdentifier, SIGTERM)
        if !eventually(15, { !nspawn.isRunning }) {
            if leader != 0 { kill(leader, SIGKILL) }
            kill(nspawn.processIdentifier, SIGKILL)
        }
        nspawn.waitUntilExit()
        try? FileManager.default.removeItem(atPath: log)
    }
}

@Suite("weir under systemd", .serialized, .enabled(if: canRunNamespaceTests))
struct SystemdTests {
    static let unit = projectRoot.appendingPathComponent("systemd/weir.service").path

    @Test("the unit passes systemd-analyze verify, and its security exposure is at most 2.5")
    func analyze() throws {
        // verify checks ExecStart's binary exists: the unit as shipped, with ExecStart pointed at the built weir.
        let dir = "/tmp/weirt-unit-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = try String(contentsOfFile: Self.unit, encoding: .utf8)
        #expect(text.contains("ExecStart=/usr/local/bin/weir daemon"))
        try text.replacingOccurrences(of: "/usr/local/bin/weir", with: weirBinary)
            .write(toFile: dir + "/weir.service", atomically: true, encoding: .utf8)
        let verify = try sh(["systemd-analyze", "verify", dir + "/weir.service"], allowFailure: true)
        #expect(verify.status == 0 && verify.output.isEmpty, "\(verify.output)")
        let security = try sh(["systemd-analyze", "security", "--offline=true", Self.unit], allowFailure: true)
        let line = security.output.split(separator: "\n").last { $0.contains("Overall exposure level") } ?? ""
        let score = line.split(separator: " ").compactMap { Double($0) }.first
        #expect(score != nil && score! <= 2.5, "\(line)")
    }

    @Test(
        "in a real systemd: active only after READY=1, a STATUS line, pods' namespaces entered under the hardened unit, a stuck daemon restarted by the watchdog"
    )
    func underSystemd() throws {
        let c = try SystemdContainer()
        defer { c.stop() }
        // The unit as shipped; a drop-in points ExecStart at the built binary and shortens the watchdog for the test.
        let install = try c.shell(
            """
            set -e
            cp /opt/weir/unit/weir.service /etc/systemd/system/weir.service
            mkdir -p /etc/systemd/system/weir.service.d
            printf '[Service]\\nExecStart=\\nExecStart=/opt/weir/bin/weir daemon --config /etc/weir/weir.yaml\\nWatchdogSec=3s\\nTimeoutStopSec=5s\\n' > /etc/systemd/system/weir.service.d/test.conf
            systemd-tmpfiles --create /opt/weir/unit/weir.tmpfiles
            printf 'select: ["weirt-sd-*"]\\ncheckInterval: 1\\n' > /etc/weir/weir.yaml
            ip netns add weirt-sd-1 && ip -n weirt-sd-1 link set lo up
            systemctl daemon-reload
            """)
        #expect(install.status == 0, "\(install.output)")
        // Type=notify: `systemctl start` returns once the daemon said READY=1, after its pod is protected.
        let start = try c.run("systemctl", "start", "weir")
        #expect(start.status == 0, "\(start.output) \(c.journal())")
        #expect(c.property("weir", "ActiveState") == "active")
        #expect(try c.run("ip", "netns", "exec", "weirt-sd-1", "nft", "list", "table", "inet", "weir").status == 0)
        #expect(
            c.property("weir", "StatusText").contains("1 pods (1 protected)"), "\(c.property("weir", "StatusText"))")
        let status = try c.run("systemctl", "status", "weir", "--no-pager")
        #expect(status.output.contains("Status: \"1 pods (1 protected)"), "\(status.output)")
        // A namespace made after the start is seen inside the unit's own mount namespace, and protected.
        try c.run("ip", "netns", "add", "weirt-sd-2")
        #expect(
            eventually(10) {
                (try? c.run("ip", "netns", "exec", "weirt-sd-2", "nft", "list", "table", "inet", "weir").status) == 0
            }, "\(c.journal())")
        #expect(eventually(5) { c.property("weir", "StatusText").contains("2 pods (2 protected)") })
        // It holds only the three capabilities.
        let pid = c.property("weir", "MainPID")
        let caps = try c.run("grep", "CapEff", "/proc/\(pid)/status").output
        #expect(caps.contains("0000000000203000"), "\(caps)")
        // A daemon that stops (SIGSTOP: no more watchdog pings) is killed and restarted by systemd.
        try c.run("kill", "-STOP", pid)
        #expect(
            eventually(30) {
                c.property("weir", "NRestarts") == "1" && c.property("weir", "ActiveState") == "active"
                    && c.property("weir", "MainPID") != pid
            }, "\(c.journal())")
        #expect(try c.run("ip", "netns", "exec", "weirt-sd-1", "nft", "list", "table", "inet", "weir").status == 0)
        // Stopping leaves the rules in place.
        #expect(try c.run("systemctl", "stop", "weir").status == 0)
        #expect(try c.run("ip", "netns", "exec", "weirt-sd-2", "nft", "list", "table", "inet", "weir").status == 0)
    }

    @Test(
        "systemctl restart under load through a pod's forwarder: no new connection refused or failed, long-lived ones carry bytes after it, byte-exact both ways"
    )
    func restartUnderLoad() throws {
        let c = try SystemdContainer()
        defer { c.stop() }
        let scene = try c.run("/bin/sh", "/opt/weir/helpers/restart_scene.sh", "2")
        #expect(scene.status == 0, "\(scene.output)")
        let start = try c.run("systemctl", "start", "weir")
        #expect(start.status == 0, "\(start.output) \(c.journal())")
        // New connections as fast as the load's thread makes them, and 8 long-lived connections opened first, each
        // exchanging up to 32 KiB at a time, checked byte for byte.
        let load = try c.shell(
            """
            setsid ip netns exec weirt-rl-f0 /usr/bin/python3 /opt/weir/helpers/restart_load.py 198.18.0.2 8080 \
              --long 8 --duration 12 --during /tmp/rl.during --marker /tmp/rl.marker --out /tmp/rl.json \
              </dev/null >/tmp/rl.log 2>&1 &
            """)
        #expect(load.status == 0, "\(load.output)")
        // The load runs a while, then the restart (stop: hand-off into the store; start: taken back; READY=1).
        Thread.sleep(forTimeInterval: 3)
        let pid = c.property("weir", "MainPID")
        try c.run("touch", "/tmp/rl.during")
        let restart = try c.run("systemctl", "restart", "weir")
        #expect(restart.status == 0, "\(restart.output) \(c.journal())")
        #expect(c.property("weir", "ActiveState") == "active" && c.property("weir", "MainPID") != pid)
        try c.run("touch", "/tmp/rl.marker")
        #expect(eventually(40) { (try? c.run("test", "-s", "/tmp/rl.json").status) == 0 }, "\(c.journal())")
        let text = try c.run("cat", "/tmp/rl.json").output
        let result = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
        let new = result["new"] as? [String: Any] ?? [:]
        let longs = result["long"] as? [[String: Any]] ?? []
        let log = (try? c.run("cat", "/tmp/rl.log").output) ?? ""
        #expect(new["refused"] as? Int == 0 && new["failed"] as? Int == 0, "\(text) \(log)")
        #expect((new["ok"] as? Int ?? 0) > 100, "\(text)")
        // New connections were begun while systemctl restart ran (the old process stopping, the new one
        // starting), and every one of them was answered.
        let during = new["during"] as? Int ?? 0
        #expect(during > 10 && new["during_ok"] as? Int == during, "\(text)")
        #expect(longs.count == 8, "\(text) \(log)")
        for l in longs {
            // alive: every exchange was echoed exactly to the end; after: exchanges made once the restart was over.
            #expect(l["alive"] as? Bool == true && (l["after"] as? Int ?? 0) >= 3, "\(l) \(c.journal())")
        }
        // The new process took the forwarder's listeners and the 8 connections over, and closed none.
        let takenOver = try c.shell("journalctl -u weir --no-pager | grep 'forwarder pod taken over'").output
        let resumed = takenOver.firstMatch(of: /connections=(\d+)/).flatMap { Int($0.1) } ?? 0
        #expect(resumed >= 8, "\(takenOver) \(c.journal())")
        let closed = try c.shell("journalctl -u weir --no-pager | grep -c 'could not be handed off'").output
        #expect(closed.hasPrefix("0"), "\(c.journal())")
        // The hardened unit lets the runtime's thread pool lower its threads' priorities (seccomp's EPERM would log a
        // line per thread; raising one without CAP_SYS_NICE, EACCES, still logs once a process).
        let priority = try c.shell("journalctl -u weir --no-pager | grep -c 'thread priority.*errno=1$'").output
        #expect(priority.hasPrefix("0"), "\(c.journal())")
        // Once the load ended, stopping empties the store: nothing outlives the service.
        #expect(try c.run("systemctl", "stop", "weir").status == 0)
        #expect(c.property("weir", "NFileDescriptorStore") == "0")
    }
}
