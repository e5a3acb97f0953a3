import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import WeirAgent
import WeirCapture
import WeirNetns
import WeirSystem
import WeirXDS

struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the node agent: enroll pods, keep their rules true, serve their forwarders and xDS endpoints.",
        discussion: """
            Every key of --config is optional; without the file the daemon runs on its defaults: /run/netns watched \
            (no names selected), enrollment API on /run/weir/enroll.sock, admin API on /run/weir/admin.sock, node xDS \
            on /run/weir/xds.sock, state in /var/lib/weir, mesh manifests from /etc/weir/mesh when it exists. \
            A bad config is refused with file, line and reason (exit 2). At start the daemon keeps only \
            CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN. SIGTERM drains the forwarder and leaves every pod's rules.
            """
    )

    @Option(help: "The daemon's YAML config file.") var config: String?

    func run() async throws {
        var cfg = DaemonConfig()
        if let config {
            guard let data = FileManager.default.contents(atPath: config) else {
                throw CommandFailure(status: .badInput, message: "--config \(config): cannot be read")
            }
            do { cfg = try DaemonConfig.parse(String(decoding: data, as: UTF8.self), file: config) } catch {
                throw CommandFailure(status: .badInput, message: "the config is refused:\n\(error.description)")
            }
        }
        // Made here, on a thread in the host's namespace: an abstract NOTIFY_SOCKET exists only there.
        let environment = ProcessInfo.processInfo.environment
        let notifier = SystemdNotifier.fromEnvironment(environment)
        // What the previous process stored, by name; the store is used unless systemd says it has none (systemd 254
        // and later set FDSTORE= to the unit's FileDescriptorStoreMax=; 252 says nothing, and the unit sets it).
        let inherited = SystemdDescriptors.take(environment: environment)
        let storeUsable = notifier != nil && environment["FDSTORE"].map { (Int($0) ?? 0) > 0 } ?? true
        let store = PodDescriptorStore(notifier: storeUsable ? notifier : nil, inherited: inherited)
        do { try Privileges.verify() } catch {
            throw CommandFailure(status: .runtimeFailure, message: error.description)
        }
        let logger = Logger(label: "weir.daemon")
        let daemon: Daemon
        do {
            daemon = try Daemon(config: cfg, store: store, logger: logger)
            try daemon.prepareDirectories()
        } catch {
            throw CommandFailure(status: .runtimeFailure, message: "weir daemon: \(error)")
        }
        var services: [any Service] = []
        // Shut down in reverse: the APIs close first, then the pods' forwarder drains, then xDS says GOAWAY.
        if let sources = daemon.sources { services.append(ConfigWatchService(sources: sources)) }
        services.append(XDSService(server: daemon.xds))
        let runtime = cfg.runtimeDirectory
        services.append(
            DaemonService(daemon: daemon, notifier: notifier) {
                FileHandle.standardError.write(
                    Data(
                        "weir daemon: started; enrollment on unix:\(runtime)/enroll.sock, admin on unix:\(runtime)/admin.sock\n"
                            .utf8))
            })
        services.append(
            AdminServer(
                address: .unix(runtime + "/admin.sock"), logger: logger,
                handler: DaemonAdmin.handler(daemon: daemon, registry: Weir.metrics)))
        if let tcp = cfg.adminTCP {
            services.append(
                AdminServer(
                    address: .tcp(tcp), logger: logger,
                    handler: DaemonAdmin.handler(daemon: daemon, registry: Weir.metrics)))
        }
        services.append(
            AdminServer(
                address: .unix(runtime + "/enroll.sock"), logger: logger,
                readTimeout: .seconds(60), handler: DaemonAdmin.enrollmentHandler(daemon: daemon)))
        try await runServices(services, logger: logger, what: "weir daemon", deadline: .seconds(20))
    }
}

/// Options of the commands that talk to a running daemon.
struct DaemonSocketOptions: ParsableArguments {
    @Option(help: "The daemon's runtime directory (its enroll.sock and admin.sock).") var runtimeDirectory = "/run/weir"
}

struct EnrollCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enroll",
        abstract:
            "Enroll a pod's network namespace with the running daemon; returns once its rules and listeners are in place.",
        discussion: """
            NETNS is a name in the daemon's netns directory or a path. Settings not given come from the daemon's \
            selectors and defaults. Exit codes: 0 protected, 2 refused as bad input (nothing changed), 1 the daemon \
            could not protect it (nothing left behind).
            """
    )

    @Argument(help: "The pod's network namespace: a name in /run/netns, or a path.") var netns: String
    @Option(name: .customLong("node-id"), help: "An Envoy node id the pod's sidecar may ask for. Repeat for several.")
    var nodeIDs: [String] = []
    @Option(help: "sidecar (the pod runs Envoy) or forwarder (weir's forwarder serves it).") var mode: String?
    @Option(help: "The capture mode: redirect or tproxy.") var captureMode: String?
    @Option(help: "A label selectors see, NAME=VALUE. Repeat for several.") var label: [String] = []
    @Option(
        name: .customLong("appmesh-env"),
        help: "One of the pod's APPMESH_* variables, NAME=VALUE, read as App Mesh's proxy route manager read it.")
    var appMeshEnvironment: [String] = []
    @OptionGroup var spec: SpecOptions
    @OptionGroup var socket: DaemonSocketOptions

    func run() async throws {
        var body: [String: Any] = ["netns": netns]
        if let mode {
            guard PodMode(rawValue: mode) != nil else {
                throw CommandFailure(status: .badInput, message: "--mode '\(mode)': use sidecar or forwarder")
            }
            body["mode"] = mode
        }
        if !nodeIDs.isEmpty { body["nodeIDs"] = nodeIDs }
        body["labels"] = try pairs(label, flag: "--label")
        let env = try pairs(appMeshEnvironment, flag: "--appmesh-env")
        if !env.isEmpty { body["appMesh"] = env }
        var capture: [String: Any] = [:]
        for (key, values) in spec.flagInput(mode: captureMode, modeFlag: "--capture-mode").values {
            capture[key.rawValue] = key.isList ? values.map(\.value) : values.last!.value
        }
        if !capture.isEmpty { body["capture"] = capture }
        let data = try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])
        let reply = try DaemonClient.call(
            socket.runtimeDirectory + "/enroll.sock", method: "POST", path: "/v1/pods", body: Array(data))
        try reply.orFail()
        if let pod = try? JSONDecoder().decode(PodView.self, from: Data(reply.body)) {
            print("\(pod.name): \(pod.phase), \(pod.mode) (\(pod.listeners.joined(separator: ", ")))")
        }
    }

    func pairs(_ items: [String], flag: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for item in items {
            let kv = item.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, !kv[0].isEmpty else {
                throw CommandFailure(status: .badInput, message: "\(flag) '\(item)': write NAME=VALUE")
            }
            out[String(kv[0])] = String(kv[1])
        }
        return out
    }
}

struct UnenrollCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unenroll",
        abstract: "Unenroll a pod: its rules are removed and what the daemon held for it closed.")

    @Argument(help: "The pod: its name, namespace path or namespace inode.") var pod: String
    @OptionGroup var socket: DaemonSocketOptions

    func run() async throws {
        let key =
            pod.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-_."))) ?? pod
        let reply = try DaemonClient.call(
            socket.runtimeDirectory + "/enroll.sock", method: "DELETE", path: "/v1/pods/\(key)")
        try reply.orFail()
        print("\(pod): unenrolled")
    }
}

struct PodsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pods", abstract: "List the daemon's pods.")

    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var socket: DaemonSocketOptions

    func run() async throws {
        let reply = try DaemonClient.call(socket.runtimeDirectory + "/admin.sock", method: "GET", path: "/pods")
        try reply.orFail()
        if json {
            FileHandle.standardOutput.write(Data(reply.body))
            return
        }
        let pods = try JSONDecoder().decode([PodView].self, from: Data(reply.body))
        print(StatusCommand.table(pods))
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the daemon's state: readiness and pods, or one pod in detail (rules, listeners, sidecars).")

    @Argument(help: "A pod (name, path or namespace inode) to show in detail.") var pod: String?
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var socket: DaemonSocketOptions

    func run() async throws {
        let admin = socket.runtimeDirectory + "/admin.sock"
        if let pod {
            let reply = try DaemonClient.call(admin, method: "GET", path: "/pods/\(pod)")
            try reply.orFail()
            if json {
                FileHandle.standardOutput.write(Data(reply.body))
                return
            }
            print(Self.detail(try JSONDecoder().decode(PodView.self, from: Data(reply.body))))
            return
        }
        let ready = try DaemonClient.call(admin, method: "GET", path: "/readyz")
        let pods = try DaemonClient.call(admin, method: "GET", path: "/pods")
        try pods.orFail()
        let views = try JSONDecoder().decode([PodView].self, from: Data(pods.body))
        if json {
            struct Body: Encodable {
                var ready: Bool
                var pods: [PodView]
            }
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            FileHandle.standardOutput.write(
                try e.encode(Body(ready: ready.status == 200, pods: views)) + Data("\n".utf8))
            return
        }
        let counts = Dictionary(grouping: views, by: \.phase).mapValues(\.count)
        let summary = counts.keys.sorted().map { "\(counts[$0]!) \($0)" }.joined(separator: ", ")
        print(
            "weir daemon: \(ready.status == 200 ? "ready" : "not ready"); \(views.count) pod(s)\(summary.isEmpty ? "" : ": " + summary)"
        )
        if !views.isEmpty { print(Self.table(views)) }
    }

    static func table(_ pods: [PodView]) -> String {
        var rows = [["POD", "MODE", "PHASE", "RULES", "REPAIRS", "SIDECARS", "SOURCE"]]
        for p in pods {
            let acked = p.sidecars.map { s in s.nodeID + "@" + (s.types["LDS"]?.lastAckedVersion ?? "-") }
            rows.append([
                p.name, p.mode, p.phase, p.rules == "healthy" ? "healthy" : "problem", "\(p.repairs)",
                acked.isEmpty ? "-" : acked.joined(separator: ","), p.source,
            ])
        }
        let widths = rows[0].indices.map { i in rows.map { $0[i].count }.max()! }
        return rows.map { r in
            r.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }

    static func detail(_ p: PodView) -> String {
        var lines = [
            "pod \(p.name)", "  netns:     \(p.netns) (\(p.namespace))", "  source:    \(p.source)",
            "  mode:      \(p.mode)", "  node ids:  \(p.nodeIDs.isEmpty ? "-" : p.nodeIDs.joined(separator: ", "))",
            "  phase:     \(p.phase)\(p.reason.map { " — \($0)" } ?? "")", "  rules:     \(p.rules)",
            "  repairs:   \(p.repairs)\(p.lastProblem.map { " (last: \($0))" } ?? "")",
            "  spec:      \(p.spec.isEmpty ? "(defaults)" : p.spec.joined(separator: " "))",
            "  listeners: \(p.listeners.isEmpty ? "-" : p.listeners.joined(separator: ", "))",
        ]
        if p.mode == "sidecar" {
            lines.append("  sidecars:  \(p.sidecars.isEmpty ? "none connected" : "")")
            for s in p.sidecars {
                lines.append("    \(s.nodeID) (\(s.protocol), \(s.peer))")
                for (type, t) in s.types.sorted(by: { $0.key < $1.key }) {
                    var line = "      \(type): sent \(t.lastSentVersion ?? "-"), ACKed \(t.lastAckedVersion ?? "-")"
                    if let nack = t.lastNackVersion {
                        line += ", NACKed \(nack): "
                        line += (t.lastNackMessage ?? "").trimmingWhitespace
                    }
                    lines.append(line)
                }
            }
            if p.refusedStreams > 0 {
                lines.append("  refused:   \(p.refusedStreams) stream(s) asked for a node id this pod may not use")
            }
        }
        if let problems = p.problems {
            lines.append("  problems:  \(problems.isEmpty ? "none seen" : "")")
            for problem in problems { lines.append("    - \(problem)") }
        }
        return lines.joined(separator: "\n")
    }
}

/// A small HTTP/1.1 client for the daemon's Unix sockets: one request per connection.
enum DaemonClient {
    struct Reply {
        var status: Int
        var body: [UInt8]

        /// Throws the daemon's error: 400/404 as bad input (exit 2), the rest as a runtime failure (exit 1).
        func orFail() throws {
            guard status != 200 else { return }
            var message = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            if let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
                let e = object["error"] as? String
            {
                message = e
            }
            throw CommandFailure(status: status == 400 || status == 404 ? .badInput : .runtimeFailure, message: message)
        }
    }

    static func connect(_ socketPath: String) throws -> WeirSystem.FileDescriptor {
        do {
            let fd = try WeirSystem.FileDescriptor.unixStream()
            // An enrollment waits for rules and listeners; a daemon that never answers ends the wait.
            try fd.setTimeouts(milliseconds: 60_000)
            _ = try fd.connect(.unix(socketPath), describedAs: "unix:\(socketPath)")
            return fd
        } catch {
            throw CommandFailure(
                status: .runtimeFailure,
                message: "cannot reach the daemon at \(socketPath): \(error.reason). Is weir daemon running?")
        }
    }

    static func call(_ socketPath: String, method: String, path: String, body: [UInt8] = []) throws -> Reply {
        let fd = try connect(socketPath)
        var request = "\(method) \(path) HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n"
        request += "Content-Length: \(body.count)\r\n"
        if !body.isEmpty { request += "Content-Type: application/json\r\n" }
        request += "\r\n"
        let raw: [UInt8]
        do {
            try fd.sendAll(Array(request.utf8) + body)
            raw = try fd.readAll(limit: 64 << 20)
        } catch {
            throw CommandFailure(
                status: .runtimeFailure, message: "the daemon at \(socketPath) did not answer: \(error.reason)")
        }
        guard let split = raw.firstRange(of: Array("\r\n\r\n".utf8)) else {
            throw CommandFailure(
                status: .runtimeFailure, message: "the daemon at \(socketPath) answered something other than HTTP")
        }
        let head = String(decoding: raw[..<split.lowerBound], as: UTF8.self)
        let parts = head.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else {
            throw CommandFailure(status: .runtimeFailure, message: "the daemon's answer has no status")
        }
        return Reply(status: status, body: Array(raw[split.upperBound...]))
    }
}
