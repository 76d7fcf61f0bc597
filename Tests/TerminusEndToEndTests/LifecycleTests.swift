import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TerminusBackend
import TerminusProtocol
import TerminusServer
import TerminusSessions
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Gateway lifecycle", .serialized, .gatewayScope)
struct LifecycleTests {
    @Test("a start that fails half way releases what it opened: the listeners bound before the failure are closed")
    func failedStartReleases() async throws {
        // Something else holds the port the API listener wants; it is bound last.
        let blocker = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let apiPort = try #require(blocker.localAddress?.port)
        let devicePort = LoopbackSocket.freePort()
        let adminPort = LoopbackSocket.freePort()
        await #expect(throws: (any Error).self) {
            _ = try await TestGateway.start(port: devicePort) {
                $0.adminListen = .init(host: "127.0.0.1", port: adminPort)
                $0.apiListen = .init(host: "127.0.0.1", port: apiPort)
                $0.apiTokens = ["lifecycle-token-0123456789"]
            }
        }
        // The device and admin listeners had been bound; now nothing answers on either port.
        for port in [devicePort, adminPort] {
            let fd = LoopbackSocket.connect(port: port)
            #expect(fd == nil, "port \(port) is still open after the failed start")
            if let fd { close(fd) }
        }
        try await blocker.close()
    }

    @Test("run() as a Service: a ServiceGroup's graceful shutdown turns readiness false, drains, and run() returns")
    func runsInServiceGroup() async throws {
        let devicePort = LoopbackSocket.freePort()
        let configuration = TestGateway.configuration(port: devicePort) {
            $0.adminListen = .init(host: "127.0.0.1", port: 0)
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = ["lifecycle-token-0123456789"]
        }
        let gateway = try Gateway(configuration: configuration, sink: InMemorySink(), logger: TestGateway.logger)
        let group = ServiceGroup(services: [gateway], logger: TestGateway.logger)
        try await withThrowingTaskGroup { tasks in
            tasks.addTask { try await group.run() }
            #expect(await RawClient.poll(5) { gateway.boundAdminAddress != nil && gateway.boundAPIPort != nil })
            let admin = try #require(gateway.boundAdminAddress?.port)
            #expect(try await AdminListenerTests().get("/readyz", port: admin).hasPrefix("HTTP/1.1 200"))
            #expect(gateway.isRunning)
            // A device holds a session, so that the drain has someone to send GOAWAY to.
            let device = try await RawClient.connect(port: devicePort, tls: true)
            try await device.handshake("lifecycle-1")
            await group.triggerGracefulShutdown()
            #expect(await device.goAwayOnClose()?.code == .shuttingDown)
            try await tasks.next()
            #expect(!gateway.isRunning)
            await device.close()
            // Everything it had bound is released.
            for port in [admin, try #require(gateway.boundAPIPort)] {
                let fd = LoopbackSocket.connect(port: port)
                #expect(fd == nil, "port \(port) is still open after run() returned")
                if let fd { close(fd) }
            }
        }
    }

    @Test("a gateway started outside `.gatewayScope` is refused: nothing would stop it")
    func startOutsideScope() async throws {
        await withKnownIssue {
            try await GatewayScope.$current.withValue(nil) {
                _ = try await TestGateway.start()
            }
        }
    }

    @Test(
        "a silent backend holds batches from every loop: stop() still returns within twice the deadline (per-loop deliveries stop side by side)"
    )
    func silentBackendStopsWithinTwiceTheDeadline() async throws {
        let backend = try await TestBackend.start(receiver: RecordingReceiver(delay: { _ in .seconds(60) }))
        let service = try BackendRoutingTests.service("silent", port: backend.port, topics: ["#"]) {
            $0.deadlineMilliseconds = 1000
        }
        // A short drain: the devices' messages stay unanswered, the services' stop is measured.
        let gateway = try await TestGateway.start(routed: true) {
            $0.services = [service]
            $0.eventLoopThreads = 2
            $0.drainGrace = .milliseconds(200)
        }
        // Connections go to the loops in turn: four devices cover both loops' deliveries.
        var devices: [RawClient] = []
        for index in 0..<4 {
            let device = try await RawClient.connect(port: gateway.port, tls: true)
            _ = try await device.handshake("silent-\(index)")
            try await device.send(
                .publish(Message(messageID: 1, qos: .atLeastOnce, topic: "t", payload: ByteBuffer(string: "x")))
            )
            devices.append(device)
        }
        // At least the four batches (more once a batch outlives its 1 s deadline and is retried,
        // which a loaded machine reaches before the fourth device has sent: the held count then
        // jumps past 4).
        #expect(await RawClient.poll(10) { backend.receiver.concurrency.withLock { $0.now } >= 4 })
        let started = ContinuousClock.now
        await gateway.stop()
        let took = ContinuousClock.now - started
        // The drain, then every loop's delivery at the same time: batches in flight settle (by
        // their deadline at the latest), then the streams half-close and wait up to one more
        // deadline for answers; plus a margin for a loaded machine.
        #expect(took < .milliseconds(200 + 2 * 1000 + 1000), "stop() took \(took)")
        #expect(!gateway.gateway.isRunning)
        for device in devices { await device.close() }
        await backend.kill()
    }

    @Test("a service whose name never resolves does not hold up stop(): nothing is in flight to it")
    func unresolvableServiceStops() async throws {
        var service = try BackendRoutingTests.service("nowhere", port: 50051, topics: ["#"])
        service.host = "does-not-resolve.invalid"
        // Longer than the bound below: stop() must not wait for it with nothing in flight.
        service.deadlineMilliseconds = 60_000
        let gateway = try await BackendRoutingTests.gateway([service])
        // Let the client try (and fail) to resolve the name first.
        try await Task.sleep(for: .milliseconds(300))
        let started = ContinuousClock.now
        await gateway.stop()
        let took = ContinuousClock.now - started
        #expect(took < .seconds(20), "stop() took \(took)")
        #expect(!gateway.gateway.isRunning)
    }
}
