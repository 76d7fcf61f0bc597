import Foundation
import NIOCore
import NIOPosix
import Synchronization
import TerminusClient
import TerminusProtocol
import TerminusServer
import TerminusSessions
import Testing

@Suite("Fleet behaviour", .serialized, .gatewayScope)
struct FleetTests {
    @Test(
        "device.reuse_port: two gateways share one port and the kernel spreads devices over both; without it the second cannot bind"
    )
    func reusePort() async throws {
        let first = try await TestGateway.start { $0.deviceReusePort = true }
        let second = try await TestGateway.start(port: first.port) { $0.deviceReusePort = true }
        var connections: [TerminusConnection] = []
        for index in 0..<40 { connections.append(try await first.connect("reuse-\(index)")) }
        let (onFirst, onSecond) = (first.gateway.openConnections, second.gateway.openConnections)
        #expect(onFirst + onSecond == 40)
        #expect(onFirst > 0 && onSecond > 0, "both processes got devices: \(onFirst) and \(onSecond)")
        for connection in connections { await connection.close() }
        await #expect(throws: (any Error).self) { _ = try await TestGateway.start(port: first.port) }
        await first.stop()
        await second.stop()
    }

    @Test("1000 TLS devices publish concurrently: every QoS 1 message acked exactly once and present in the sink")
    func thousandDevices() async throws {
        let gateway = try await TestGateway.start()
        let deviceCount = 1000
        let messagesPerDevice = 5
        let group = MultiThreadedEventLoopGroup.singleton
        // Connect in waves so that 1000 handshakes do not all time out on two cores.
        var connections: [TerminusConnection] = []
        for wave in stride(from: 0, to: deviceCount, by: 100) {
            let batch = try await withThrowingTaskGroup(of: TerminusConnection.self) { tasks in
                for index in wave..<min(wave + 100, deviceCount) {
                    tasks.addTask {
                        try await TerminusConnection.connect(try gateway.client("fleet-\(index)"), group: group)
                    }
                }
                return try await tasks.reduce(into: [TerminusConnection]()) { $0.append($1) }
            }
            connections += batch
        }
        #expect(connections.count == deviceCount)
        #expect(gateway.gateway.directory.count == deviceCount)

        let acks = try await withThrowingTaskGroup(of: (String, [Ack]).self) { tasks in
            for connection in connections {
                tasks.addTask {
                    try await withThrowingTaskGroup(of: Ack.self) { inner in
                        for index in 0..<messagesPerDevice {
                            inner.addTask {
                                try await connection.publish(
                                    topic: "fleet/\(connection.welcome.deviceID)",
                                    payload: ByteBuffer(string: "\(connection.welcome.deviceID)#\(index)"),
                                    compress: index % 2 == 0
                                )
                            }
                        }
                        return (connection.welcome.deviceID, try await inner.reduce(into: [Ack]()) { $0.append($1) })
                    }
                }
            }
            return try await tasks.reduce(into: [String: [Ack]]()) { $0[$1.0] = $1.1 }
        }
        #expect(acks.count == deviceCount)
        for (device, deviceAcks) in acks {
            #expect(deviceAcks.count == messagesPerDevice, "\(device)")
            #expect(Set(deviceAcks.map(\.messageID)).count == messagesPerDevice, "one ACK per message id")
            #expect(deviceAcks.allSatisfy { $0.status == .ok })
        }
        let messages = gateway.sink.messages
        #expect(messages.count == deviceCount * messagesPerDevice)
        let payloads = Set(messages.map { String(decoding: $0.payload.readableBytesView, as: UTF8.self) })
        #expect(payloads.count == deviceCount * messagesPerDevice, "no message lost or duplicated")
        for index in [0, 499, 999] {
            #expect(payloads.contains("fleet-\(index)#4"))
        }
        for connection in connections { await connection.close() }
    }

    @Test("TerminusDevice reconnects with backoff after the gateway restarts, honouring GOAWAY hints")
    func reconnect() async throws {
        let first = try await TestGateway.start()
        let port = first.port
        let events = Mutex<[String]>([])
        let configuration = try first.client("reconnecting-1")
        let device = TerminusDevice(
            configuration: configuration,
            backoff: Backoff(baseMilliseconds: 50, capMilliseconds: 200)
        )
        let task = Task {
            try await device.run(
                group: MultiThreadedEventLoopGroup.singleton,
                events: { event in
                    let name: String
                    switch event {
                    case .connected: name = "connected"
                    case .disconnected(let goAway): name = "disconnected:\(goAway?.code.name ?? "-")"
                    case .connectFailed: name = "failed"
                    case .waiting: name = "waiting"
                    }
                    events.withLock { $0.append(name) }
                },
                session: { connection in
                    _ = try await connection.publish(topic: "hello", payload: ByteBuffer(string: "up"))
                    for await _ in connection.pushes {}
                }
            )
        }
        #expect(await RawClient.poll(5) { events.withLock { $0.contains("connected") } })
        await first.stop()
        // While nothing listens, connects fail and back off; then a new gateway takes the port.
        #expect(await RawClient.poll(5) { events.withLock { $0.contains("failed") } })
        let second = try await TestGateway.start(port: port)
        #expect(await RawClient.poll(10) { second.sink.messages.contains { $0.deviceID == "reconnecting-1" } })
        let seen = events.withLock { $0 }
        #expect(seen.filter { $0 == "connected" }.count == 2)
        #expect(seen.contains("disconnected:SHUTTING_DOWN"))
        task.cancel()
        _ = try? await task.value
        await second.stop()
    }

    @Test("backoff ceilings double up to the cap and delays stay within them")
    func backoff() {
        var backoff = Backoff(baseMilliseconds: 100, capMilliseconds: 1000)
        var generator = SystemRandomNumberGenerator()
        let ceilings: [UInt64] = (0..<6).map { _ in
            let ceiling = backoff.currentCeilingMilliseconds
            let delay = backoff.nextDelayMilliseconds(using: &generator)
            #expect(delay <= ceiling)
            return ceiling
        }
        #expect(ceilings == [100, 200, 400, 800, 1000, 1000])
        backoff.reset()
        #expect(backoff.currentCeilingMilliseconds == 100)
    }
}
