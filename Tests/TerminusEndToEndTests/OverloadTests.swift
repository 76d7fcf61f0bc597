import Foundation
import NIOCore
import NIOPosix
import Synchronization
import TerminusClient
import TerminusEdge
import TerminusMetrics
import TerminusProtocol
import TerminusServer
import TerminusSessions
import Testing

/// Issue 13's overload protection: each limit refuses (and counts) a flood above it before any
/// TLS work, while a device already connected keeps sending.
@Suite("Overload protection", .serialized, .gatewayScope)
struct OverloadTests {
    /// Opens `count` TCP connections that send nothing; returns how many the gateway closed
    /// within a second (refused) and keeps the rest open until the caller closes them.
    static func flood(_ port: Int, count: Int) async throws -> (refused: Int, open: [RawClient]) {
        var clients: [RawClient] = []
        for _ in 0..<count { clients.append(try await RawClient.connect(port: port, tls: false)) }
        _ = await RawClient.poll(1) { false }
        let refused = clients.filter(\.isClosed).count
        return (refused, clients.filter { !$0.isClosed })
    }

    static func refusals(_ gateway: TestGateway, _ reason: String) async throws -> Double {
        let text = try await gateway.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        let line = text.split(separator: "\n").first {
            $0.hasPrefix("terminus_connections_refused_total{") && $0.contains("reason=\"\(reason)\"")
                && $0.contains("listener=\"device\"")
        }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
    }

    /// A device that publishes a message every 5 ms while `body` runs: every ACK must be OK.
    static func whileSending(
        _ gateway: TestGateway,
        _ body: () async throws -> Void
    ) async throws -> [TerminusCode] {
        let device = try await gateway.connect("overload-steady")
        let stop = ManagedAtomicFlag()
        let sender = Task {
            var statuses: [TerminusCode] = []
            while !stop.isSet {
                statuses.append(try await device.publish(topic: "t/steady", payload: ByteBuffer(string: "x")).status)
                try await Task.sleep(for: .milliseconds(5))
            }
            return statuses
        }
        try await body()
        stop.set()
        let statuses = try await sender.value
        await device.close()
        return statuses
    }

    @Test("limits.new_connections_per_second: a flood above the rate is closed at accept and counted")
    func acceptRate() async throws {
        let gateway = try await TestGateway.start {
            $0.edge.admission.acceptRate = 1
            $0.edge.admission.acceptBurst = 10
            // Nothing but a refusal closes the flood's connections while it lasts.
            $0.edge.handshakeTimeout = .seconds(60)
        }
        var refused = 0
        var open: [RawClient] = []
        let statuses = try await Self.whileSending(gateway) {
            (refused, open) = try await Self.flood(gateway.port, count: 100)
        }
        #expect(statuses.count > 20 && statuses.allSatisfy { $0 == .ok }, "\(statuses.count) messages")
        // At most the burst (less the steady device's connection) plus one a second got in.
        #expect(refused >= 50 && refused + open.count == 100, "\(refused) refused")
        #expect(try await Self.refusals(gateway, "accept_rate") == Double(refused))
        for client in open { await client.close() }
    }

    @Test(
        "limits.max_handshakes: connections above the handshakes under way are closed at accept; slots free up; either TLS engine",
        arguments: ["lean", "nio-ssl"]
    )
    func handshakes(engine: String) async throws {
        let gateway = try await TestGateway.start {
            $0.tls?.engine = GatewayConfiguration.TLSEngine(rawValue: engine)!
            $0.edge.admission.maxHandshakes = 10
            $0.edge.handshakeTimeout = .seconds(60)
        }
        var refused = 0
        var open: [RawClient] = []
        let statuses = try await Self.whileSending(gateway) {
            (refused, open) = try await Self.flood(gateway.port, count: 40)
        }
        #expect(statuses.count > 20 && statuses.allSatisfy { $0 == .ok })
        #expect(refused == 30 && open.count == 10, "\(refused) refused, \(open.count) open")
        #expect(try await Self.refusals(gateway, "handshakes") == 30)
        // Once the silent ones close, new devices get in.
        for client in open { await client.close() }
        var freed = false
        for _ in 0..<50 where !freed {
            let text = try await gateway.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
            freed = text.contains("terminus_tls_handshakes_in_progress 0")
            if !freed { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(freed)
        let late = try await RawClient.connect(port: gateway.port, tls: true)
        #expect(try await late.handshake("overload-late").deviceID == "overload-late")
    }

    @Test(
        "limits.max_connections_per_address: connections above it from one address are closed; others close, room returns"
    )
    func perAddress() async throws {
        let gateway = try await TestGateway.start {
            $0.edge.admission.maxPerAddress = 5
            $0.edge.handshakeTimeout = .seconds(60)
        }
        var refused = 0
        var open: [RawClient] = []
        let statuses = try await Self.whileSending(gateway) {
            // The steady device is one of the five.
            (refused, open) = try await Self.flood(gateway.port, count: 10)
        }
        #expect(statuses.allSatisfy { $0 == .ok })
        #expect(refused == 6 && open.count == 4, "\(refused) refused, \(open.count) open")
        #expect(try await Self.refusals(gateway, "per_address") == 6)
        for client in open { await client.close() }
        var drained = false
        for _ in 0..<50 where !drained {
            let text = try await gateway.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
            drained = text.contains(#"terminus_connections{listener="device",state="handshake"} 0"#)
            if !drained { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(drained)
        let again = try await RawClient.connect(port: gateway.port, tls: true)
        #expect(try await again.handshake("overload-again").deviceID == "overload-again")
    }

    @Test("limits.max_connections_per_address behind PROXY protocol counts the real address the header names")
    func perAddressBehindProxy() async throws {
        let gateway = try await TestGateway.start {
            $0.proxyProtocol = .any
            $0.transport = .plaintext
            $0.tls = nil
            $0.edge.admission.maxPerAddress = 2
        }
        func proxied(_ source: String, _ id: String) async throws -> RawClient {
            let raw = try await RawClient.connect(
                port: gateway.port,
                tls: false,
                preamble: Array("PROXY TCP4 \(source) 10.0.0.1 40001 7883\r\n".utf8)
            )
            // A refused connection may be closed before the HELLO goes out.
            try? await raw.send(TestGateway.hello(id))
            _ = await raw.waitUntil(5) { !raw.frames.isEmpty || raw.isClosed }
            return raw
        }
        // Every connection comes from the load balancer's address (127.0.0.1 here): the limit
        // counts the addresses the headers name.
        let a1 = try await proxied("198.51.100.1", "proxy-a1")
        let a2 = try await proxied("198.51.100.1", "proxy-a2")
        let b1 = try await proxied("198.51.100.2", "proxy-b1")
        let a3 = try await proxied("198.51.100.1", "proxy-a3")
        #expect(!a1.isClosed && !a2.isClosed && !b1.isClosed)
        #expect(await a3.waitUntil(5) { a3.isClosed }, "a third connection from 198.51.100.1 was admitted")
        #expect(try await Self.refusals(gateway, "per_address") == 1)
        await a1.close()
        #expect(gateway.gateway.directory.lookup("proxy-b1") != nil)
        var admitted = false
        for _ in 0..<50 where !admitted {
            let again = try await proxied("198.51.100.1", "proxy-a4")
            admitted = !again.isClosed
            if !admitted { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(admitted, "room did not come back after a connection from the address closed")
    }

    @Test(
        "limits.reconnect: a device authenticating too often gets GOAWAY(RECONNECTING_TOO_OFTEN) with the block as hint"
    )
    func flapping() async throws {
        let gateway = try await TestGateway.start {
            $0.edge.admission.reconnectMax = 3
            $0.edge.admission.reconnectBlock = .seconds(30)
        }
        for _ in 0..<3 {
            let device = try await RawClient.connect(port: gateway.port, tls: true)
            _ = try await device.handshake("overload-flapper")
            await device.close()
        }
        let fourth = try await RawClient.connect(port: gateway.port, tls: true)
        try await fourth.send(TestGateway.hello("overload-flapper"))
        let goAway = try #require(await fourth.goAwayOnClose())
        #expect(goAway.code == .reconnectingTooOften)
        #expect(goAway.reconnectAfterMilliseconds > 29_000 && goAway.reconnectAfterMilliseconds <= 30_000)
        // Another device is not affected; failed HELLOs in the flapper's name do not count.
        let other = try await RawClient.connect(port: gateway.port, tls: true)
        #expect(try await other.handshake("overload-other").deviceID == "overload-other")
        let text = try await gateway.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(text.contains("terminus_reconnect_refusals_total 1"))
        #expect(text.contains(#"terminus_device_disconnects_total{code="RECONNECTING_TOO_OFTEN"} 1"#))
    }
}

/// A flag set once, read from another task.
final class ManagedAtomicFlag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { self.value.withLock { $0 } }
    func set() { self.value.withLock { $0 = true } }
}
