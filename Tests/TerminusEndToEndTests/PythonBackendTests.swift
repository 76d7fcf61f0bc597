import Foundation
import NIOCore
import TerminusClient
import TerminusProtocol
import TerminusServer
import TerminusTestSupport
import Testing

/// Runs the Python backend from docs/backend.md (docs/examples/python-backend/backend.py,
/// grpcio and grpcio-tools from PyPI, installed by .ci/run) against the gateway.
@Suite("Python backend from docs/backend.md", .serialized, .gatewayScope)
struct PythonBackendTests {
    @Test("the documented Python backend receives messages from the gateway")
    func pythonBackend() async throws {
        let stubs = try PythonBackend.generateStubs()
        #expect(stubs != nil, "grpc_tools.protoc failed: is grpcio-tools installed (.ci/run installs it)?")
        guard let stubs else { return }
        defer { try? FileManager.default.removeItem(atPath: stubs) }
        let backend = try await PythonBackend(stubs: stubs, port: try await TestBackend.unusedPort())
        defer { backend.stop() }
        #expect(backend.isListening, "the Python backend did not start")

        let gateway = try await TestGateway.start(routed: true) {
            $0.services = [try! BackendRoutingTests.service("python", port: backend.port, topics: ["printer/#"])]
        }
        let device = try await gateway.connect("printer-py-1")
        for index in 0..<3 {
            let ack = try await device.publish(topic: "printer/status", payload: ByteBuffer(string: "ready-\(index)"))
            #expect(ack.status == .ok)
        }
        let received = backend.received
        #expect(received.map(\.payload) == ["ready-0", "ready-1", "ready-2"])
        #expect(received.allSatisfy { $0.topic == "printer/status" && $0.deliveryID.hasPrefix("gw-test/") })
        await device.close()
        await gateway.stop()
    }

    @Test("--quiet counts messages instead of printing each, and reports the total")
    func quietBackend() async throws {
        let stubs = try #require(try PythonBackend.generateStubs())
        defer { try? FileManager.default.removeItem(atPath: stubs) }
        let backend = try await PythonBackend(
            stubs: stubs,
            port: try await TestBackend.unusedPort(),
            arguments: ["--quiet", "--report-seconds", "0.2"]
        )
        defer { backend.stop() }
        #expect(backend.isListening)
        let gateway = try await TestGateway.start(routed: true) {
            $0.services = [try! BackendRoutingTests.service("quiet", port: backend.port, topics: ["pay/#"])]
        }
        let device = try await gateway.connect("spk-quiet")
        for index in 0..<5 {
            let ack = try await device.publish(topic: "pay/done", payload: ByteBuffer(string: "q\(index)"))
            #expect(ack.status == .ok)
        }
        let reported = await RawClient.poll(20) { backend.reportedTotal == 5 }
        #expect(reported, "RECEIVED_TOTAL 5, got \(String(describing: backend.reportedTotal))")
        #expect(backend.received.isEmpty, "no line per message")
        await device.close()
        await gateway.stop()
    }

    @Test("backend killed mid-stream (SIGKILL) and restarted: every message the device saw acked reached a backend")
    func killAndRestart() async throws {
        let stubs = try #require(try PythonBackend.generateStubs())
        defer { try? FileManager.default.removeItem(atPath: stubs) }
        let port = try await TestBackend.unusedPort()
        // A slow first backend: it writes down each batch at once and answers it 250 ms later,
        // so that a batch it has seen is certainly unanswered when it dies. (At 20 ms, one CI run
        // on a loaded machine saw the kill land after every answer: no outage to test.)
        let first = try await PythonBackend(stubs: stubs, port: port, delayMilliseconds: 250)
        #expect(first.isListening)
        let gateway = try await TestGateway.start(routed: true) {
            $0.services = [try! BackendRoutingTests.service("billing", port: port, topics: ["pay/#"])]
        }
        let device = try await gateway.connect("spk-45")
        @Sendable func publish(_ indices: Range<Int>) async throws -> [(String, Ack)] {
            try await withThrowingTaskGroup(of: (String, Ack).self) { group in
                for index in indices {
                    group.addTask {
                        (
                            "m\(index)",
                            try await device.publish(topic: "pay/done", payload: ByteBuffer(string: "m\(index)"))
                        )
                    }
                }
                return try await group.reduce(into: [(String, Ack)]()) { $0.append($1) }
            }
        }
        var acked: [String] = []
        var unacked: [String] = []
        for (payload, ack) in try await publish(0..<40) {
            if ack.status == .ok { acked.append(payload) } else { unacked.append(payload) }
        }
        // 60 messages in flight while the backend process is killed.
        let burst = Task { try await publish(40..<100) }
        // Kill once part of the burst reached the backend: it is unanswered for 250 ms, and the
        // rest is in flight or queued.
        _ = await RawClient.poll(10) { first.received.count >= 45 }
        first.kill()
        for (payload, ack) in try await burst.value {
            if ack.status == .ok { acked.append(payload) } else { unacked.append(payload) }
        }
        #expect(!unacked.isEmpty, "the outage must have been visible to the device")
        // The backend comes back; the device resends what was not acknowledged.
        let second = try await PythonBackend(stubs: stubs, port: port)
        defer { second.stop() }
        var rounds = 0
        while !unacked.isEmpty && rounds < 100 {
            rounds += 1
            var still: [String] = []
            for payload in unacked {
                let ack = try await device.publish(topic: "pay/done", payload: ByteBuffer(string: payload))
                if ack.status == .ok { acked.append(payload) } else { still.append(payload) }
            }
            unacked = still
            if !unacked.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(unacked.isEmpty)
        let all = (first.received + second.received).map(\.payload)
        let received = Set(all)
        let missing = acked.filter { !received.contains($0) }
        #expect(missing.isEmpty, "acked but never received: \(missing)")
        #expect(Set(acked).count == 100)
        print("kill/restart: 100 acked, \(all.count) received by backends, \(all.count - received.count) duplicates")
        await device.close()
        await gateway.stop()
    }

    /// A backend in Python (grpcio: gRPC C-core, not grpc-swift) calling the gateway's API.
    static let apiClient = """
        import sys, grpc
        from terminus.v1 import gateway_pb2 as g, gateway_pb2_grpc as gg
        port, token = sys.argv[1], sys.argv[2]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = gg.GatewayStub(channel)
            auth = [("authorization", f"Bearer {token}")]
            p = api.Presence(g.PresenceRequest(device_ids=["speaker-py", "nobody"]), metadata=auth, timeout=5)
            print("PRESENCE", " ".join(f"{d.device_id}={d.online}" for d in p.devices))
            r = api.Send(g.SendRequest(device_id="speaker-py", topic="cmd/play", payload=b"paid 3 yuan", qos=1, ttl_ms=3000), metadata=auth, timeout=5)
            print("SEND", g.SendResponse.Outcome.Name(r.outcome))
            r = api.Send(g.SendRequest(device_id="nobody", topic="cmd/play", payload=b"x", qos=1), metadata=auth, timeout=5)
            print("SEND", g.SendResponse.Outcome.Name(r.outcome))
            try:
                api.Presence(g.PresenceRequest(device_ids=["speaker-py"]), metadata=[("authorization", "Bearer wrong")], timeout=5)
                print("UNAUTHENTICATED-CALL answered")
            except grpc.RpcError as error:
                print("UNAUTHENTICATED-CALL", error.code().name)
        """

    @Test("a Python backend (grpcio, gRPC C-core) calls the gateway's API: Presence, Send, a wrong token")
    func pythonAPIClient() async throws {
        let stubs = try #require(try PythonBackend.generateStubs())
        defer { try? FileManager.default.removeItem(atPath: stubs) }
        let gateway = try await DownlinkAPITests.gateway()
        let device = try await gateway.connect("speaker-py")
        let pushed = Task {
            for await push in device.pushes {
                device.acknowledge(push)
                return String(decoding: push.payload.readableBytesView, as: UTF8.self)
            }
            return ""
        }
        let output = stubs + "/api-client.out"
        let client = try ChildProcess(
            "/usr/bin/env",
            ["python3", "-c", Self.apiClient, "\(try #require(gateway.gateway.boundAPIPort))", DownlinkAPITests.token],
            environment: ProcessInfo.processInfo.environment.merging(["PYTHONPATH": stubs]) { $1 },
            standardOutput: .file(output),
            standardError: .inherit
        )
        _ = await RawClient.poll(30) { !client.isRunning }
        if client.isRunning { client.terminate() }
        client.waitUntilExit()
        let lines = ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").split(separator: "\n").map(
            String.init
        )
        #expect(
            lines == [
                "PRESENCE speaker-py=True nobody=False", "SEND OUTCOME_DELIVERED", "SEND OUTCOME_OFFLINE",
                "UNAUTHENTICATED-CALL UNAUTHENTICATED",
            ],
            "\(lines)"
        )
        #expect(client.terminationStatus == 0)
        #expect(await pushed.value == "paid 3 yuan")
        await device.close()
        await gateway.stop()
    }
}
