import ArgumentParser
import COpenSSLTestClient
import Foundation
import NIOCore
import NIOEmbedded
import NIOSSL
import NIOTLS
import TerminusLeanTLS

/// Server CPU per TLS handshake, in process, only the server's calls timed (the thread's CPU
/// clock around them): the lean engine (OpenSSL 3 over memory BIOs, then its keys taken and
/// the connection object freed) and swift-nio-ssl (BoringSSL on an `EmbeddedChannel`), each
/// against OpenSSL's client over memory BIOs, full and resumed (session tickets), TLS 1.3 and
/// TLS 1.2. No sockets, no kernel: what the TLS library costs, as issue 16 measured it. The
/// release gate measures whole connections against HAProxy as well (`handshakes`). The cases
/// run in interleaved rounds and each reports its least round's mean.
struct ServerHandshakes: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server-handshakes",
        abstract: "In-process server CPU per TLS handshake: lean and nio-ssl, full and resumed, TLS 1.3 and 1.2."
    )

    @Option(name: .long, help: "Server certificate chain (PEM).") var certificate: String
    @Option(name: .long, help: "Server private key (PEM).") var key: String
    @Option(name: .long, help: "CA (PEM) the client trusts.") var ca: String
    @Option(name: .long, help: "The name the certificate holds.") var serverName: String = "localhost"
    @Option(name: .long, help: "Handshakes per case, over all rounds.") var count: Int = 1000
    @Option(name: .long, help: "Rounds; each runs every case in turn, and a case reports its least round's mean.")
    var rounds: Int = 10
    @Option(name: .long, help: "The lean engine's TLS 1.3 tickets per handshake (device.tls.session_tickets).")
    var tickets: Int = 1
    @Option(name: .long, help: "Only the cases whose name contains this (e.g. lean_tls13_full, for a profile).")
    var only: String?
    @Option(name: .long) var label: String = "server-handshakes"
    @Option(name: .long) var out: String?

    struct Report: Codable {
        var label: String
        var date: String
        var machine: String
        var count: Int
        /// Rounds the handshakes were split into; each figure is its case's least round.
        var rounds: Int?
        /// "lean_tls13_full" and so on: server CPU per handshake, µs.
        var serverMicros: [String: Double]
    }

    /// One client (OpenSSL over memory BIOs).
    final class Client {
        let pointer: OpaquePointer

        init(ca: String, host: String, version: Int32, session: UnsafeMutableRawPointer?) throws {
            guard let pointer = terminus_test_client_new_resuming(ca, host, version, nil, session) else {
                throw ValidationError("OpenSSL's client could not be made")
            }
            self.pointer = pointer
        }

        deinit { terminus_test_client_free(self.pointer) }

        func output() -> ByteBuffer {
            var buffer = ByteBufferAllocator().buffer(capacity: 1 << 15)
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 15) { bytes in
                terminus_test_client_take_output(
                    self.pointer,
                    bytes.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    bytes.count
                )
            }
            return buffer
        }

        func receive(_ buffer: ByteBuffer) throws {
            let result = buffer.withUnsafeReadableBytes { bytes in
                terminus_test_client_receive(
                    self.pointer,
                    bytes.baseAddress?.assumingMemoryBound(to: UInt8.self),
                    bytes.count
                )
            }
            guard result == 1 else { throw ValidationError("the client failed") }
        }

        var connected: Bool { terminus_test_client_connected(self.pointer) == 1 }
        var resumed: Bool { terminus_test_client_resumed(self.pointer) == 1 }

        /// close_notify, so that OpenSSL keeps the session resumable.
        func close() { _ = terminus_test_client_close(self.pointer) }
    }

    /// The calling thread's CPU time, in nanoseconds.
    static func threadNanos() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// A server side that takes what the client sent and returns what it answers, its CPU
    /// counted by the caller; done once its keys are known.
    protocol Server: AnyObject {
        func feed(_ bytes: ByteBuffer) throws -> ByteBuffer
        var done: Bool { get }
        /// What the server sends once done, before any data: swift-nio-ssl (BoringSSL) writes
        /// its TLS 1.3 tickets with the first record it writes, so one byte is written (and
        /// timed), as the gateway's first frame would be; OpenSSL wrote them in the handshake.
        func afterHandshake() throws -> ByteBuffer
    }

    final class Lean: Server {
        let handshake: LeanHandshake
        var pending = ByteBufferAllocator().buffer(capacity: 0)
        var done = false

        init(handshake: LeanHandshake) { self.handshake = handshake }

        func afterHandshake() throws -> ByteBuffer { ByteBuffer() }

        func feed(_ bytes: ByteBuffer) throws -> ByteBuffer {
            var bytes = bytes
            self.pending.writeBuffer(&bytes)
            var output = ByteBufferAllocator().buffer(capacity: 0)
            while !self.done, let record = try TLSRecordFramer.nextRecord(from: &self.pending) {
                let progress = self.handshake.advance(record)
                self.handshake.takeOutput(into: &output)
                switch progress {
                case .wantsMore: continue
                case .failed(let reason): throw ValidationError("lean handshake failed: \(reason)")
                case .done:
                    _ = try self.handshake.finish()
                    self.done = true
                }
            }
            return output
        }
    }

    final class NIO: Server {
        let channel: EmbeddedChannel
        let completed: Completed
        var done: Bool { self.completed.done }

        init(channel: EmbeddedChannel, completed: Completed) {
            self.channel = channel
            self.completed = completed
        }

        func afterHandshake() throws -> ByteBuffer {
            try self.channel.writeOutbound(ByteBuffer(bytes: [0]))
            var output = ByteBufferAllocator().buffer(capacity: 0)
            while var out = try self.channel.readOutbound(as: ByteBuffer.self) { output.writeBuffer(&out) }
            return output
        }

        func feed(_ bytes: ByteBuffer) throws -> ByteBuffer {
            try self.channel.writeInbound(bytes)
            var output = ByteBufferAllocator().buffer(capacity: 0)
            while var out = try self.channel.readOutbound(as: ByteBuffer.self) { output.writeBuffer(&out) }
            return output
        }
    }

    /// Handshakes NIOSSL's handler has completed on its channel.
    final class Completed: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var done = false
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .handshakeCompleted = event as? TLSUserEvent { self.done = true }
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// One handshake; the server's CPU in nanoseconds and whether the client resumed.
    func handshake(
        _ server: some Server,
        version: Int32,
        session: UnsafeMutableRawPointer?
    ) throws -> (nanos: UInt64, resumed: Bool, client: Client) {
        let client = try Client(ca: self.ca, host: self.serverName, version: version, session: session)
        var nanos: UInt64 = 0
        for _ in 0..<16 {
            let toServer = client.output()
            if toServer.readableBytes > 0 {
                let start = Self.threadNanos()
                let toClient = try server.feed(toServer)
                nanos += Self.threadNanos() - start
                if toClient.readableBytes > 0 { try client.receive(toClient) }
            }
            if client.connected && server.done { break }
        }
        guard client.connected && server.done else { throw ValidationError("a handshake did not complete") }
        let start = Self.threadNanos()
        let first = try server.afterHandshake()
        nanos += Self.threadNanos() - start
        if first.readableBytes > 0 { try client.receive(first) }
        // close_notify to the server too (not timed): swift-nio-ssl's handler then closes its
        // channel without waiting for one.
        client.close()
        _ = try? server.feed(client.output())
        return (nanos, client.resumed, client)
    }

    func run() throws {
        let lean = try LeanTLSServerContext(
            certificateChainFile: self.certificate,
            privateKeyFile: self.key,
            minimumVersion: 0x0303,
            tickets: self.tickets
        )
        let nioContext = try NIOSSLContext(
            configuration: .makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(self.certificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: self.key, format: .pem))
            )
        )
        // The cases in order; a resumed case comes after the full one whose ticket it uses.
        var cases: [(key: String, engine: String, version: Int32, resume: Bool)] = []
        for engine in ["lean", "nio-ssl"] {
            for (name, version) in [("tls13", Int32(0x0304)), ("tls12", 0x0303)] {
                for resume in [false, true] {
                    let key =
                        "\(engine.replacingOccurrences(of: "-", with: "_"))_\(name)_\(resume ? "resumed" : "full")"
                    // A resumed case needs the full one before it for its ticket.
                    let resumedKey = key.replacingOccurrences(of: "_full", with: "_resumed")
                    if let only = self.only, !key.contains(only), !resumedKey.contains(only) { continue }
                    cases.append((key, engine, version, resume))
                }
            }
        }
        // One ticket per engine and version, taken from its first full handshake.
        var tickets: [String: UnsafeMutableRawPointer] = [:]
        defer { for ticket in tickets.values { terminus_test_client_session_free(ticket) } }
        let rounds = max(1, min(self.rounds, self.count))
        let perRound = max(1, self.count / rounds)
        var least: [String: Double] = [:]
        var means: [String: [Double]] = [:]
        // Rounds run every case in turn, so a burst of load from another process on this shared
        // machine lands in one round of several cases rather than in all of one case; each case
        // reports its least round (CPU time only grows under contention).
        for round in 0..<rounds {
            for item in cases {
                let ticketKey = "\(item.engine)-\(item.version)"
                var total: UInt64 = 0
                // Warm-up handshakes first in the first round (lazily built state).
                let warmUp = round == 0 ? 20 : 0
                for index in 0..<(perRound + warmUp) {
                    let session = item.resume ? tickets[ticketKey] : nil
                    let result: (nanos: UInt64, resumed: Bool, client: Client)
                    if item.engine == "lean" {
                        result = try self.handshake(
                            Lean(handshake: try LeanHandshake(context: lean)),
                            version: item.version,
                            session: session
                        )
                    } else {
                        let channel = EmbeddedChannel()
                        let completed = Completed()
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: nioContext))
                        try channel.pipeline.syncOperations.addHandler(completed)
                        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)
                        result = try self.handshake(
                            NIO(channel: channel, completed: completed),
                            version: item.version,
                            session: session
                        )
                        _ = try? channel.finish(acceptAlreadyClosed: true)
                    }
                    guard result.resumed == item.resume else {
                        throw ValidationError("\(item.key): resumed \(result.resumed), expected \(item.resume)")
                    }
                    if tickets[ticketKey] == nil, let ticket = terminus_test_client_session(result.client.pointer) {
                        tickets[ticketKey] = ticket
                    }
                    if index >= warmUp { total += result.nanos }
                }
                let micros = Double(total) / Double(perRound) / 1_000
                means[item.key, default: []].append(micros)
                least[item.key] = min(least[item.key] ?? .infinity, micros)
            }
        }
        for item in cases {
            let rounds = means[item.key, default: []].map { String(format: "%.1f", $0) }.joined(separator: " ")
            print(
                "\(self.label): \(item.key) \(String(format: "%.1f", least[item.key] ?? 0)) µs server CPU per handshake"
                    + " (rounds: \(rounds))"
            )
        }
        let figures = least
        let report = Report(
            label: self.label,
            date: ISO8601DateFormatter().string(from: Date()),
            machine: FleetReport.machineDescription(),
            count: self.count,
            rounds: rounds,
            serverMicros: figures
        )
        if let out = self.out {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: URL(fileURLWithPath: out + "/" + self.label + ".json"))
        }
    }
}
