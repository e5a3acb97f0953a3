// swift-tools-version: 6.0
import Foundation
import PackageDescription

/// This package's folder: the linker is given absolute paths.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path

let package = Package(
    name: "weir",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "weir", targets: ["weir"]),
        // The init step alone, for an init container's image: no Foundation, no argument-parser (a small, fast binary).
        .executable(name: "weir-init", targets: ["weir-init"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // C: libnftnl + libmnl + kernel netfilter/rtnetlink headers.
        .systemLibrary(name: "CNetfilter", path: "Sources/CNetfilter"),
        // C: libcap, to say "needs CAP_NET_ADMIN" before touching anything.
        .systemLibrary(name: "CCapabilities", path: "Sources/CCapabilities"),
        // C: what Swift cannot import (macros, socket option numbers, errno access, setns).
        .target(name: "CWeirShims", path: "Sources/CWeirShims"),

        // The system-call funnel: every libc call that can fail, errno read in one place, owned descriptors.
        .target(name: "WeirSystem", dependencies: ["CWeirShims"]),
        // Pure: capture spec, validation, environment decoding, RedirectPlan, renderers.
        .target(name: "WeirCapture"),
        // Effects: namespace handles, work inside a namespace on a dedicated thread, socket addresses.
        .target(name: "WeirNetns", dependencies: ["WeirCapture", "WeirSystem"]),
        // Effects: nftables over netlink, iptables-restore fallback, live read-back, diff, probe.
        .target(
            name: "WeirNetfilter",
            dependencies: [
                "WeirCapture", "WeirNetns", "WeirSystem", "CNetfilter", "CWeirShims", "CCapabilities",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Effects: the transparent forwarder (listeners, original destination, splice relay, PROXY protocol, metrics).
        .target(
            name: "WeirForwarder",
            dependencies: [
                "WeirCapture", "WeirNetns", "WeirSystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // Generated (scripts/gen-protos, committed): weir's subset of the Envoy v3 API and the ADS service.
        .target(
            name: "EnvoyAPI",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]
        ),
        // Pure: App Mesh v1beta2 manifests read and checked (file:line:field problems), compiled to Envoy resources.
        .target(
            name: "WeirMesh",
            dependencies: [
                "EnvoyAPI",
                .product(name: "Yams", package: "Yams"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // xDS: snapshot cache, ADS server (SotW + delta) over gRPC, sources, upstream relay, Envoy bootstrap.
        .target(
            name: "WeirXDS",
            dependencies: [
                "WeirMesh", "WeirNetns", "WeirSystem", "EnvoyAPI",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The agent: services under one lifecycle (xDS, forwarder, config watcher, snapshot writer), the admin API.
        .target(
            name: "WeirAgent",
            dependencies: [
                "WeirSystem", "WeirNetns", "WeirCapture", "WeirNetfilter", "WeirForwarder", "WeirMesh", "WeirXDS",
                "EnvoyAPI", "CCapabilities",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "weir",
            dependencies: [
                "WeirCapture", "WeirNetfilter", "WeirNetns", "WeirSystem", "WeirForwarder", "WeirMesh", "WeirXDS",
                "WeirAgent", "WeirInit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Measurements for scripts/bench (not a product).
        // The init step (`weir init` and `weir-init`): spec, namespace and backend checked, then one install.
        .target(
            name: "WeirInit",
            dependencies: [
                "WeirCapture", "WeirNetfilter", "WeirNetns", .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "weir-init",
            dependencies: ["WeirInit", "WeirCapture", "WeirSystem", .product(name: "Logging", package: "swift-log")],
            // An init container starts it once per pod, and a shared library costs that start its loading and
            // symbol binding (libstdc++ alone brings 2000 relocations). `scripts/static-archives` links libstdc++,
            // libnftnl and libcap archives into this folder, which the linker searches first; without it, or for a
            // library without an archive (libmnl), the shared library is used.
            linkerSettings: [.unsafeFlags(["-L", packageRoot + "/.build-static/archives"])]),
        .executableTarget(
            name: "weir-bench", dependencies: ["WeirCapture", "WeirNetfilter", "WeirNetns", "WeirSystem"]),
        .testTarget(
            name: "WeirXDSTests",
            dependencies: [
                "WeirXDS", "WeirMesh", "WeirNetns", "WeirSystem", "WeirAgent", "EnvoyAPI", "WeirTestSupport",
                // A real gRPC client (grpc-swift-2) for the ADS transport's tests.
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                // The ADS stream handler frame by frame, and plain HTTP/2 requests a gRPC client cannot make.
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ]
        ),
        .testTarget(
            name: "WeirMeshTests", dependencies: ["WeirMesh", "EnvoyAPI", "WeirTestSupport"],
            resources: [.copy("Goldens")]),
        .testTarget(name: "WeirCaptureTests", dependencies: ["WeirCapture"], resources: [.copy("Goldens")]),
        // Throwaway namespaces, sockets and commands shared by the namespace tests.
        .target(
            name: "WeirTestSupport",
            dependencies: [
                "WeirCapture", "WeirNetfilter", "WeirNetns", "WeirSystem", "CWeirShims",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Tests/WeirTestSupport"
        ),
        .testTarget(
            name: "WeirNetfilterTests",
            dependencies: [
                "WeirCapture", "WeirNetfilter", "WeirNetns", "WeirSystem", "CWeirShims", "WeirTestSupport",
            ]),
        .testTarget(
            name: "WeirForwarderTests",
            dependencies: [
                "WeirForwarder", "WeirCapture", "WeirNetfilter", "WeirNetns", "WeirSystem", "WeirAgent", "CWeirShims",
                "WeirTestSupport",
            ]),
        .testTarget(
            name: "WeirNetnsTests", dependencies: ["WeirNetns", "WeirSystem", "WeirCapture", "WeirTestSupport"]),
        .testTarget(
            name: "WeirAgentTests",
            dependencies: [
                "WeirAgent", "WeirXDS", "WeirForwarder", "WeirNetns", "WeirSystem", "WeirCapture", "WeirNetfilter",
                "WeirMesh", "WeirTestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)
