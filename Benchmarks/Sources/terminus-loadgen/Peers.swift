import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// What `handshakes` and `idle-tls` measure, for the gateway and for a peer alike.
struct PeerReport: Codable, Sendable {
    var label: String
    var date: String
    var machine: String
    var connections: Int?
    var bytesPerConnection: Double?
    var bytesPerConnectionAfterLargeRecord: Double?
    var handshakes: Int?
    var handshakesPerSecond: Double?
    var serverCPUMicrosPerHandshake: Double?

    func write(to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: directory + "/" + self.label + ".json"))
    }
}

struct Handshakes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Full TLS handshakes against a listener; the server's CPU per handshake from /proc (--pid)."
    )

    @OptionGroup var target: TargetOptions

    @Option(name: .long, help: "Handshakes to complete.")
    var count: Int = 2000

    @Option(name: .long, help: "Handshakes in progress at once.")
    var concurrency: Int = 16

    @Option(name: .long) var label: String = "handshakes"
    @Option(name: .long) var out: String?

    func run() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let context = try RawTLS.clientContext(caFile: self.target.ca, tls13Only: true)
        // Warm up the server (first-connection costs, lazily built state), then measure.
        for index in 0..<min(50, self.count) {
            let channel = try await self.target.connect(group: group, context: context, index: index)
            try? await channel.close()
        }
        let before = self.target.sample()
        let start = ContinuousClock.now
        let failures = Locked(0)
        let target = self.target
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for index in 0..<self.count {
                if index >= self.concurrency { try await tasks.next() }
                tasks.addTask {
                    do {
                        let channel = try await target.connect(group: group, context: context, index: index)
                        try? await channel.close()
                    } catch {
                        failures.withLock { $0 += 1 }
                    }
                }
            }
            try await tasks.waitForAll()
        }
        let seconds = FleetRun.seconds(ContinuousClock.now - start)
        // Closed connections finish on the server shortly after; let its CPU settle.
        try await Task.sleep(for: .milliseconds(300))
        let after = self.target.sample()
        let failed = failures.withLock { $0 }
        let completed = self.count - failed
        var report = PeerReport(
            label: self.label,
            date: ISO8601DateFormatter().string(from: Date()),
            machine: FleetReport.machineDescription()
        )
        report.handshakes = completed
        report.handshakesPerSecond = Double(completed) / max(seconds, 0.001)
        if let before, let after, completed > 0 {
            report.serverCPUMicrosPerHandshake = (after.cpuSeconds - before.cpuSeconds) * 1_000_000 / Double(completed)
        }
        print(
            "\(self.label): \(completed) handshakes (\(failed) failed), "
                + "\(String(format: "%.0f", report.handshakesPerSecond ?? 0))/s, server CPU "
                + (report.serverCPUMicrosPerHandshake.map { String(format: "%.0f µs", $0) } ?? "-") + " per handshake"
        )
        if let out = self.out { try report.write(to: out) }
        if failed > 0 { throw ExitCode(1) }
    }
}

struct IdleTLS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle-tls",
        abstract: "Hold N idle TLS connections that each sent one HELLO; resident memory per connection (--pid)."
    )

    @OptionGroup var target: TargetOptions

    @Option(name: .long) var connections: Int = 1000

    @Option(
        name: .long,
        help: "Secret for the HELLO tokens (the gateway checks them; a TCP sink behind a peer ignores them)."
    )
    var secret: String

    @Option(name: .long, help: "Seconds to wait before reading memory.")
    var settle: Int = 2

    @Flag(name: .long, help: "Then send a 16 KB record through every connection and read memory again.")
    var largeRecord = false

    @Flag(name: .long, help: "Plain TCP instead of TLS (a gateway listener with transport: plaintext).")
    var plaintext = false

    @Option(name: .long) var prefix: String = "idle-"
    @Option(name: .long) var label: String = "idle-tls"
    @Option(name: .long) var out: String?

    func run() async throws {
        raiseOpenFileLimit()
        let group = MultiThreadedEventLoopGroup.singleton
        let context = self.plaintext ? nil : try RawTLS.clientContext(caFile: self.target.ca, tls13Only: true)
        let before = self.target.sample()
        let secret = Array(self.secret.utf8)
        let target = self.target
        let prefix = self.prefix
        let channels = try await withThrowingTaskGroup(of: (any Channel).self) { tasks in
            var channels: [any Channel] = []
            for index in 0..<self.connections {
                if index >= 128, let channel = try await tasks.next() { channels.append(channel) }
                tasks.addTask {
                    let channel = try await target.connect(group: group, context: context, index: index)
                    try await channel.writeAndFlush(RawTLS.hello(deviceID: "\(prefix)\(index)", secret: secret))
                    return channel
                }
            }
            for try await channel in tasks { channels.append(channel) }
            return channels
        }
        try await Task.sleep(for: .seconds(self.settle))
        let alive = channels.filter(\.isActive).count
        let settled = self.target.sample()
        var report = PeerReport(
            label: self.label,
            date: ISO8601DateFormatter().string(from: Date()),
            machine: FleetReport.machineDescription()
        )
        report.connections = alive
        if let before, let settled, alive > 0 {
            report.bytesPerConnection = Double(settled.residentBytes - before.residentBytes) / Double(alive)
        }
        if self.largeRecord, let before {
            let record = RawTLS.largePublish(size: 16_000)
            for channel in channels where channel.isActive { channel.writeAndFlush(record, promise: nil) }
            try await Task.sleep(for: .seconds(self.settle + 1))
            if let after = self.target.sample(), alive > 0 {
                report.bytesPerConnectionAfterLargeRecord =
                    Double(after.residentBytes - before.residentBytes) / Double(alive)
            }
        }
        print(
            "\(self.label): \(alive)/\(self.connections) connections alive, "
                + (report.bytesPerConnection.map { String(format: "%.0f B (%.1f KiB)", $0, $0 / 1024) } ?? "-")
                + " per connection"
                + (report.bytesPerConnectionAfterLargeRecord.map {
                    String(format: ", %.1f KiB after a 16 KB record", $0 / 1024)
                } ?? "")
        )
        if let out = self.out { try report.write(to: out) }
        for channel in channels { channel.close(promise: nil) }
        if alive < self.connections { throw ExitCode(1) }
    }
}

struct Sinks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Run sinks until killed: a TCP sink (behind a TLS-terminating peer), a gRPC backend sink, a bare ACK server (alone or behind a relay echo)."
    )

    @Option(name: .long, help: "TCP sink that reads and discards, HOST:PORT.")
    var tcp: String?

    @Option(name: .long, help: "gRPC backend (terminus.v1.UplinkReceiver) that counts and accepts, HOST:PORT.")
    var grpc: String?

    @Option(
        name: .long,
        help:
            "Bare SwiftNIO device-protocol server that ACKs every message at once (the CPU-per-message floor), HOST:PORT."
    )
    var ack: String?

    @Option(name: .long, help: "Certificate chain (PEM) for --ack; without it --ack is plain TCP.")
    var certificateChain: String?

    @Option(name: .long, help: "Private key (PEM) for --ack.")
    var privateKey: String?

    @Flag(name: .long, help: "--ack allocates its large TLS buffers from the gateway's buffer arena.")
    var bufferArena = false

    @Option(
        name: .long,
        help: "--ack ACKs a message only once the relay echo at HOST:PORT answered it (one TCP connection per loop)."
    )
    var relay: String?

    @Flag(name: .long, help: "--ack terminates TLS with the gateway's lean engine instead of swift-nio-ssl.")
    var lean = false

    @Option(name: .long, help: "Relay echo for --relay: answers each record with its token, HOST:PORT.")
    var relayEcho: String?

    func run() async throws {
        if let relayEcho = self.relayEcho {
            let address = try HostPort(relayEcho, option: "--relay-echo")
            let channel = try await RelayEcho.start(host: address.host, port: address.port)
            print("relay echo listening on \(channel.localAddress!)")
        }
        if let ack = self.ack {
            let address = try HostPort(ack, option: "--ack")
            if (self.certificateChain == nil) != (self.privateKey == nil) {
                throw ValidationError("--certificate-chain and --private-key go together")
            }
            let channel = try await AckServer.start(
                host: address.host,
                port: address.port,
                certificateChain: self.certificateChain,
                privateKey: self.privateKey,
                bufferArena: self.bufferArena,
                relay: try self.relay.map { try HostPort($0, option: "--relay") }.map { ($0.host, $0.port) },
                lean: self.lean
            )
            print("ACK server listening on \(channel.localAddress!)")
        }
        if let tcp = self.tcp {
            let address = try HostPort(tcp, option: "--tcp")
            let channel = try await TCPSink.start(
                host: address.host,
                port: address.port,
                group: MultiThreadedEventLoopGroup.singleton
            )
            print("TCP sink listening on \(channel.localAddress!)")
        }
        if let grpc = self.grpc {
            let address = try HostPort(grpc, option: "--grpc")
            let sink = try await SinkServer.start(host: address.host, port: address.port, receiver: SinkReceiver())
            print("gRPC sink listening on \(address.host):\(sink.port)")
        }
        while true { try await Task.sleep(for: .seconds(3600)) }
    }
}
