import Testing
import WeirAgent
import WeirCapture

@Suite("the daemon's config file")
struct DaemonConfigTests {
    @Test("no file, or an empty one, is the documented defaults")
    func defaults() throws {
        let c = try DaemonConfig.parse("", file: "weir.yaml")
        #expect(c == DaemonConfig())
        #expect(c.netnsDirectory == "/run/netns" && c.select.isEmpty && c.runtimeDirectory == "/run/weir")
        #expect(
            c.stateDirectory == "/var/lib/weir" && c.meshDirectory == "/etc/weir/mesh" && c.checkIntervalSeconds == 10)
        let settings = try c.settings(name: "web-1", labels: [:])
        // A sidecar pod's rules go to App Mesh's Envoy ports, and Envoy's uid (1337) is let out.
        var sidecar = CaptureSpec()
        sidecar.inboundPort = 15000
        sidecar.outboundPort = 15001
        sidecar.proxyUIDs = [1337]
        #expect(settings.mode == .sidecar && settings.nodeIDs == ["web-1"] && settings.spec == sidecar)
    }

    @Test("every key read; the first matching selector wins over the defaults, key by key")
    func full() throws {
        let text = """
            netnsDirectory: /var/run/netns
            select: ["web-*", "api-?"]
            runtimeDirectory: /run/weir-test
            stateDirectory: /var/lib/weir-test
            meshDirectory: /srv/mesh
            admin: {tcp: "127.0.0.1:15091"}
            checkInterval: 2m
            defaults:
              mode: sidecar
              nodeIDs: ["mesh/colors/virtualNode/{netns}"]
              capture: {inbound-ports: "8080", proxy-uid: [1337]}
            selectors:
              - netns: "legacy-*"
                mode: forwarder
                capture: {inbound-ports: "9000,9001"}
              - labels: {app: web}
                nodeIDs: ["apps/web"]
            pods:
              - netns: web-1
                labels: {app: web}
              - netns: /proc/1/ns/net
            """
        let c = try DaemonConfig.parse(text, file: "weir.yaml")
        #expect(c.netnsDirectory == "/var/run/netns" && c.select == ["web-*", "api-?"])
        #expect(c.adminTCP?.description == "127.0.0.1:15091" && c.checkIntervalSeconds == 120)
        #expect(c.pods.map(\.netns) == ["web-1", "/proc/1/ns/net"] && c.pods[0].labels == ["app": "web"])
        let legacy = try c.settings(name: "legacy-7", labels: [:])
        #expect(legacy.mode == .forwarder && legacy.nodeIDs == ["mesh/colors/virtualNode/legacy-7"])
        #expect(legacy.spec.inboundPorts == .only([PortRange(9000), PortRange(9001)]))
        #expect(legacy.spec.proxyUIDs == [1337], "the default's key that the selector leaves alone stays")
        let web = try c.settings(name: "web-1", labels: ["app": "web", "tier": "front"])
        #expect(web.mode == .sidecar && web.nodeIDs == ["apps/web"])
        #expect(web.spec.inboundPorts == .only([PortRange(8080)]))
        let other = try c.settings(name: "db-1", labels: ["app": "db"])
        #expect(other.nodeIDs == ["mesh/colors/virtualNode/db-1"])
    }

    struct Bad: Sendable, CustomStringConvertible {
        let yaml: String
        let says: String
        var description: String { yaml }
    }

    static let bad: [Bad] = [
        Bad(
            yaml: "netnsDirectry: /run/netns",
            says: "weir.yaml:1: netnsDirectry: unknown key; did you mean 'netnsDirectory'?"),
        Bad(yaml: "select: web-*", says: "weir.yaml:1: select: must be a list"),
        Bad(yaml: "stateDirectory: var/lib/weir", says: "must be an absolute path"),
        Bad(yaml: "checkInterval: 0s", says: "weir.yaml:1: checkInterval: '0s' must be a duration from 1s to 60m"),
        Bad(yaml: "checkInterval: soon", says: "must be a duration"),
        Bad(yaml: "admin: {tcp: '0.0.0.0:15090'}", says: "admin.tcp: '0.0.0.0:15090' must be a loopback HOST:PORT"),
        Bad(yaml: "admin: {socket: /x}", says: "admin.socket: unknown key"),
        Bad(
            yaml: "defaults:\n  mode: ambient",
            says: "weir.yaml:2: defaults.mode: 'ambient' must be sidecar or forwarder"),
        Bad(yaml: "defaults:\n  netns: web-*", says: "'netns' belongs in a selector"),
        Bad(
            yaml: "defaults:\n  capture:\n    outbound-prot: 15001",
            says: "weir.yaml:3: defaults.capture.outbound-prot: unknown capture setting; did you mean 'outbound-port'?"),
        Bad(
            yaml: "defaults:\n  capture:\n    outbound-port: 70000",
            says: "weir.yaml:3: defaults.capture.outbound-port: '70000'"),
        Bad(yaml: "defaults:\n  capture:\n    outbound-port: [1, 2]", says: "takes one value, not a list"),
        Bad(
            yaml: "selectors:\n  - netns: a\n    mod: forwarder",
            says: "weir.yaml:3: selectors[0].mod: unknown key; did you mean 'mode'?"),
        Bad(yaml: "pods:\n  - labels: {a: b}", says: "weir.yaml:2: pods[0].netns: is required"),
        Bad(yaml: "pods: [{netns: a, mode: sidecar}]", says: "pods[0].mode: unknown key"),
        Bad(yaml: "select: [a]\nselect: [b]", says: "weir.yaml:2: select: given twice"),
        Bad(yaml: "a: 1\n---\nb: 2", says: "one YAML document is a config"),
        Bad(yaml: "[1, 2]", says: "must be a mapping"),
        Bad(yaml: "select: [a", says: "weir.yaml:"),
    ]

    @Test("a bad key or value is refused with file, line, path and what to write instead", arguments: bad)
    func refused(_ b: Bad) {
        #expect {
            _ = try DaemonConfig.parse(b.yaml, file: "weir.yaml")
        } throws: { error in
            "\(error)".contains(b.says)
        }
    }

    @Test("every problem in a file is reported at once")
    func allProblems() {
        let error = #expect(throws: DaemonConfigError.self) {
            _ = try DaemonConfig.parse("selct: [a]\ncheckInterval: 0\nstateDirectory: rel", file: "f.yaml")
        }
        #expect(error?.problems.map(\.line) == [1, 2, 3])
    }

    @Test(
        "globs",
        arguments: [
            ("web-*", "web-1", true), ("web-*", "web-", true), ("web-*", "api-1", false), ("a?c", "abc", true),
            ("a?c", "ac", false), ("*", "", true), ("*-*-*", "a-b-c", true),
            ("*x", "yyyyyyyyyyyyyyyyyyyyyyyyyy", false),
            ("exact", "exact", true), ("exact", "exactly", false),
        ])
    func globs(_ pattern: String, _ name: String, _ matches: Bool) {
        #expect(Glob.matches(pattern, name) == matches)
    }
}
