import Foundation
import NIOCore
import Synchronization
import TerminusBackend
import TerminusClient
import TerminusProtocol
import TerminusServer
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 13's drain: bounded by `drain.grace` whatever the backends do, accepting for
/// `drain.unready_delay` first, health served off the event loops, a second signal exits.
@Suite("Drain that Kubernetes can trust", .serialized, .gatewayScope)
struct DrainTests {
    @Test(
        "drain.grace bounds the whole stop: a slow backend, a silent one and an unresolvable one; messages in flight are answered"
    )
    func graceBoundsStop() async throws {
        let slow = try await TestBackend.start(receiver: RecordingReceiver(delay: { _ in .seconds(60) }))
        let silent = try await SilentServer.start()
        var nowhere = try BackendRoutingTests.service("nowhere", port: 50051, topics: ["none/#"])
        nowhere.host = "does-not-resolve.invalid"
        nowhere.deadlineMilliseconds = 60_000
        let grace = Duration.seconds(2)
        let gateway = try await TestGateway.start(routed: true) {
            $0.services = [
                try! BackendRoutingTests.service("slow", port: slow.port, topics: ["slow/#"]) {
                    $0.deadlineMilliseconds = 20_000
                },
                try! BackendRoutingTests.service("silent", port: silent.port, topics: ["silent/#"]) {
                    $0.deadlineMilliseconds = 20_000
                    $0.pingTimeoutMilliseconds = 10_000
                },
                nowhere,
            ]
            $0.drainGrace = .seconds(2)
        }
        // The silent backend's connection is open (its preface read): what arrives next is the batch.
        #expect(await RawClient.poll(5) { silent.receivedBytes > 0 })
        try await Task.sleep(for: .milliseconds(200))
        let silentBefore = silent.receivedBytes
        var devices: [RawClient] = []
        for topic in ["slow/a", "silent/a", "none/a"] {
            let device = try await RawClient.connect(port: gateway.port, tls: true)
            _ = try await device.handshake("drain-\(topic.prefix(while: { $0 != "/" }))")
            try await device.send(
                .publish(Message(messageID: 7, qos: .atLeastOnce, topic: topic, payload: ByteBuffer(string: "x")))
            )
            devices.append(device)
        }
        #expect(await RawClient.poll(5) { slow.receiver.concurrency.withLock { $0.now } >= 1 }, "the slow batch")
        #expect(await RawClient.poll(5) { silent.receivedBytes > silentBefore }, "the silent batch")
        let started = ContinuousClock.now
        await gateway.stop()
        let took = ContinuousClock.now - started
        // The documented margin: `terminus run`'s watchdog exits 2 s past drain.grace; an
        // in-process stop takes ~1 s past it, up to 1.2 s while the whole suite runs.
        #expect(took < grace + .seconds(2), "stop() took \(took)")
        #expect(!gateway.gateway.isRunning)
        // Every message in flight got its ACK (RETRY_LATER: never accepted) before the close.
        // Read once the device saw the close: the ACK may still be on its way into the test's
        // client when stop() returns (a loaded run once read no frame yet).
        for device in devices {
            #expect(await device.waitUntil(5) { device.isClosed }, "the gateway stopped without closing the device")
            let acks = device.frames.compactMap { frame -> Ack? in
                if case .ack(let ack) = frame { return ack } else { return nil }
            }
            #expect(acks.map(\.messageID) == [7], "\(device.frames)")
            #expect(acks.allSatisfy { $0.status == .retryLater })
            await device.close()
        }
        await slow.kill()
    }

    @Test("drain.unready_delay: readiness fails at once, devices are still accepted for the delay, refused after it")
    func unreadyDelay() async throws {
        let gateway = try await TestGateway.start {
            $0.adminListen = .init(host: "127.0.0.1", port: 0)
            $0.drainUnreadyDelay = .milliseconds(3000)
            $0.drainGrace = .seconds(5)
        }
        let admin = try #require(gateway.gateway.boundAdminAddress?.port)
        #expect(DescriptorExhaustionTests.httpGet(admin, "/readyz")?.contains("200 OK") == true)
        let started = ContinuousClock.now
        let stopping = Task { await gateway.stop() }
        #expect(
            await RawClient.poll(1) { DescriptorExhaustionTests.httpGet(admin, "/readyz")?.contains("503") == true },
            "readiness still true"
        )
        // Within the delay a new device is served as usual (3 s: a TLS handshake under the
        // whole suite, three gateway processes included, once took more than 1.5 s).
        let late = try await RawClient.connect(port: gateway.port, tls: true)
        let welcome = try await late.handshake("drain-late")
        #expect(welcome.deviceID == "drain-late")
        #expect(ContinuousClock.now - started < .milliseconds(3000))
        // Then the listener closes and the device gets GOAWAY(SHUTTING_DOWN).
        #expect(await late.goAwayOnClose(within: 5)?.code == .shuttingDown)
        #expect(ContinuousClock.now - started >= .milliseconds(3000))
        let refused = (try? await RawClient.connect(port: gateway.port, tls: true)) == nil
        #expect(refused, "the listener still accepted after the delay")
        await stopping.value
        #expect(ContinuousClock.now - started < .seconds(6))
    }

    @Test("/healthz and /readyz answer while every gateway event loop is busy (the admin listener has its own thread)")
    func healthOffTheLoops() async throws {
        let gateway = try await TestGateway.start { $0.adminListen = .init(host: "127.0.0.1", port: 0) }
        let admin = try #require(gateway.gateway.boundAdminAddress?.port)
        for loop in gateway.gateway.eventLoopGroup.makeIterator() {
            loop.execute { usleep(2_000_000) }
        }
        let started = ContinuousClock.now
        let health = DescriptorExhaustionTests.httpGet(admin, "/healthz")
        let took = ContinuousClock.now - started
        #expect(health?.contains("200 OK") == true)
        #expect(took < .milliseconds(500), "/healthz took \(took) with the loops busy")
        // /metrics reads the loops: it waits for them, and then answers.
        await gateway.stop()
    }

    @Test(
        "the binary: one SIGTERM exits within drain.grace + 2 s with a backend that never answers; a second exits at once"
    )
    func signals() async throws {
        let silent = try await SilentServer.start()
        for (grace, unready, twice) in [(2, 1, false), (20, 10, true)] {
            let directory = NSTemporaryDirectory() + "terminus-drain-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let devicePort = try await TestBackend.unusedPort()
            try "prefixes:\n  \"\": \"\(TestGateway.secret)\"\n".write(
                toFile: directory + "/devices.yaml",
                atomically: true,
                encoding: .utf8
            )
            let config = """
                instance_id: drain-test
                event_loop_threads: 1
                device:
                  listen: "127.0.0.1:\(devicePort)"
                  transport: plaintext
                auth:
                  secrets_file: \(directory)/devices.yaml
                drain:
                  grace: \(grace)s
                  unready_delay: \(unready)s
                admin:
                  listen: off
                services:
                  - name: silent
                    target: "127.0.0.1:\(silent.port)"
                    topics: ["#"]
                    deadline: 60s
                """
            try config.write(toFile: directory + "/terminus.yaml", atomically: true, encoding: .utf8)
            let process = try ChildProcess(
                DescriptorExhaustionTests.binary,
                ["run", "--config", directory + "/terminus.yaml"],
                standardError: .file(directory + "/gateway.log")
            )
            defer { if process.isRunning { process.signal(SIGKILL) } }
            // A device whose message the silent backend holds.
            var device: RawClient?
            for _ in 0..<100 where device == nil {
                device = try? await RawClient.connect(port: devicePort, tls: false)
                if device == nil { try await Task.sleep(for: .milliseconds(100)) }
            }
            let connected = try #require(device, "the gateway did not listen")
            #expect(await RawClient.poll(5) { silent.receivedBytes > 0 })
            try await Task.sleep(for: .milliseconds(200))
            let before = silent.receivedBytes
            _ = try await connected.handshake("drain-signal")
            try await connected.send(
                .publish(Message(messageID: 1, qos: .atLeastOnce, topic: "t", payload: ByteBuffer(string: "x")))
            )
            #expect(await RawClient.poll(5) { silent.receivedBytes > before })
            let started = ContinuousClock.now
            process.terminate()
            if twice {
                try await Task.sleep(for: .milliseconds(300))
                process.terminate()
            }
            #expect(await RawClient.poll(Double(grace + 3)) { !process.isRunning })
            let took = ContinuousClock.now - started
            let log = (try? String(contentsOfFile: directory + "/gateway.log", encoding: .utf8)) ?? ""
            if twice {
                #expect(took < .seconds(2), "a second SIGTERM took \(took)")
                #expect(process.terminationStatus == 2)
                #expect(log.contains("second shutdown signal"))
            } else {
                #expect(took < .seconds(grace + 2), "exit took \(took)")
                #expect(process.terminationStatus == 0, "\(log)")
            }
            await connected.close()
        }
    }
}
