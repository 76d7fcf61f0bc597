import NIOCore
import NIOPosix
import TerminusClient
import TerminusEdge
import TerminusProtocol
import TerminusServer
import TerminusTestSupport
import Testing

/// `device.placement`: which event loops take new device connections (two loops here).
@Suite("Placing devices on event loops", .serialized, .gatewayScope)
struct LoopPlacementTests {
    /// A gateway with `pack` placement whose loops take no sample of their own within a test:
    /// debug-build handshakes could make a loop look busy and a sample resets the burst counts;
    /// the tests that need samples report them (`Gateway.placementSampled`).
    static func packGateway(burst: Int? = nil) async throws -> TestGateway {
        try await TestGateway.start {
            $0.edge.placement.policy = .pack
            if let burst { $0.edge.placement.burst = burst }
            $0.edge.placement.sampleInterval = .seconds(600)
        }
    }

    /// Connects `count` devices one after the other (each gets WELCOME before the next connects).
    static func connect(_ gateway: TestGateway, _ prefix: String, count: Int) async throws -> [TerminusConnection] {
        var connections: [TerminusConnection] = []
        for index in 0..<count { connections.append(try await gateway.connect("\(prefix)-\(index)")) }
        return connections
    }

    @Test("pack: while the loops are idle every device lands on the first loop, and each still works")
    func packIdle() async throws {
        let gateway = try await Self.packGateway()
        let connections = try await Self.connect(gateway, "pack", count: 12)
        #expect(await gateway.gateway.connectionsPerLoop() == [12, 0])
        for connection in connections {
            let ack = try await connection.publish(topic: "pay/x", payload: ByteBuffer(string: "1"))
            #expect(ack.status == .ok)
            await connection.close()
        }
        #expect(await eventually { await gateway.gateway.connectionsPerLoop() == [0, 0] })
    }

    @Test(
        "pack: a loop that accepted its burst within one sample hands over to the next; once every loop has, a new round"
    )
    func packBurst() async throws {
        let gateway = try await Self.packGateway(burst: 4)
        var connections = try await Self.connect(gateway, "burst", count: 8)
        #expect(await gateway.gateway.connectionsPerLoop() == [4, 4])
        connections += try await Self.connect(gateway, "more", count: 6)
        #expect(await gateway.gateway.connectionsPerLoop() == [8, 6])
        for connection in connections { await connection.close() }
    }

    @Test("pack: a hot loop moves devices (GOAWAY with a reconnect hint); they come back on the loop that accepts")
    func packMoves() async throws {
        let gateway = try await Self.packGateway()
        let connections = try await Self.connect(gateway, "hot", count: 12)
        #expect(await gateway.gateway.connectionsPerLoop() == [12, 0])
        #expect(gateway.gateway.placementSampled(loop: 1, utilization: 0.05, connections: 0))
        #expect(gateway.gateway.placementSampled(loop: 0, utilization: 0.95, connections: 12))
        #expect(await eventually { await gateway.gateway.connectionsPerLoop() == [6, 0] })
        var moved: [String] = []
        for (index, connection) in connections.enumerated() where !connection.isActive {
            let goAway = try #require(await connection.closeReason())
            #expect(goAway.code == .shuttingDown)
            #expect(goAway.reconnectAfterMilliseconds <= 1_000)
            moved.append("hot-\(index)")
        }
        #expect(moved.count == 6)
        var again: [TerminusConnection] = []
        for device in moved { again.append(try await gateway.connect(device)) }
        #expect(await gateway.gateway.connectionsPerLoop() == [6, 6], "back on the loop that accepts")
        #expect(gateway.gateway.placementMoves == [6, 0])
        for connection in again + connections {
            if connection.isActive {
                let ack = try await connection.publish(topic: "pay/x", payload: ByteBuffer(string: "1"))
                #expect(ack.status == .ok)
            }
            await connection.close()
        }
    }

    @Test("spread: connections go to both loops")
    func spread() async throws {
        let gateway = try await TestGateway.start { $0.edge.placement.policy = .spread }
        let connections = try await Self.connect(gateway, "spread", count: 12)
        let counts = await gateway.gateway.connectionsPerLoop()
        #expect(counts.reduce(0, +) == 12 && counts.allSatisfy { $0 >= 3 }, "\(counts)")
        for connection in connections { await connection.close() }
    }

    @Test("pack: the listener's port is taken while it runs and free again after stop; a taken port fails the start")
    func packBinds() async throws {
        let port = LoopbackSocket.freePort()
        let gateway = try await TestGateway.start(port: port) { $0.edge.placement.policy = .pack }
        #expect(gateway.port == port)
        await #expect(throws: (any Error).self) {
            _ = try await TestGateway.start(port: port) { $0.edge.placement.policy = .pack }
        }
        await gateway.stop()
        let again = try await TestGateway.start(port: port) { $0.edge.placement.policy = .pack }
        let connection = try await again.connect("after-restart")
        await connection.close()
    }
}
