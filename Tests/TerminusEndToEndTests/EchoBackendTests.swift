import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import TerminusAPI
import TerminusClient
import TerminusProtocol
import TerminusTestSupport
import Testing

/// `terminus-echo-backend` as a process, with each engine: the example a backend team reads
/// (`grpc`) and the lean one the release gate measures the gateway with (`frames`).
@Suite("terminus-echo-backend", .serialized, .gatewayScope)
struct EchoBackendTests {
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("terminus-echo-backend").path
    }

    /// The echo backend on a free port, its log in a file; waits (bounded) until it listens.
    struct Echo {
        let process: ChildProcess
        let port: Int
        let log: String

        init(_ arguments: [String]) async throws {
            self.port = LoopbackSocket.freePort()
            self.log = NSTemporaryDirectory() + "terminus-echo-\(UUID().uuidString).log"
            self.process = try ChildProcess(
                EchoBackendTests.binary,
                ["--listen", "127.0.0.1:\(self.port)"] + arguments,
                standardOutput: .file(self.log),
                standardError: .file(self.log)
            )
            let port = self.port
            let listening = await eventually(20) {
                guard let socket = LoopbackSocket.connect(port: port) else { return false }
                close(socket)
                return true
            }
            #expect(listening, "the echo backend listens within 20 s")
        }

        var text: String { (try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "" }

        func stop() {
            self.process.terminate()
            self.process.waitUntilExit()
        }

        func removeLog() {
            try? FileManager.default.removeItem(atPath: self.log)
        }
    }

    @Test(
        "each engine answers every message: accepted ones logged once, every 3rd refused as retryable and resent",
        arguments: ["grpc", "frames"]
    )
    func answersEveryMessage(engine: String) async throws {
        let echo = try await Echo(["--engine", engine, "--fail-every", "3"])
        let gateway = try await BackendRoutingTests.gateway([
            try BackendRoutingTests.service("echo", port: echo.port, topics: ["pay/#"])
        ])
        let device = try await gateway.connect("spk-echo-\(engine)")
        for index in 0..<7 {
            let ack = try await device.publish(topic: "pay/done", payload: ByteBuffer(string: "echo-\(index)"))
            #expect(ack.status == .ok, "message \(index)")
        }
        await device.close()
        await gateway.stop()
        echo.stop()
        let lines = echo.text.split(separator: "\n")
        #expect(lines.contains { $0.contains("listening") && $0.contains("engine=\(engine)") })
        func deliveryIDs(_ event: String) -> [String] {
            lines.filter { $0.hasSuffix("] \(event)") && $0.contains("device=spk-echo-\(engine)") }.compactMap {
                $0.split(separator: " ").first { $0.hasPrefix("delivery_id=") }.map { String($0.dropFirst(12)) }
            }
        }
        let accepted = deliveryIDs("message")
        let refused = deliveryIDs("refused")
        #expect(accepted.count == 7, "\(echo.text)")
        #expect(Set(accepted).count == 7)
        // One at a time: the 3rd, 6th and 9th answers were refusals, each message then resent.
        #expect(refused.count == 3, "\(echo.text)")
        #expect(Set(refused).isSubset(of: Set(accepted)))
        echo.removeLog()
    }

    @Test("frames: another method is UNIMPLEMENTED; a request above --max-message-size is RESOURCE_EXHAUSTED")
    func framesRefusals() async throws {
        let echo = try await Echo(["--engine", "frames", "--quiet", "--max-message-size", "64"])
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: echo.port),
            transportSecurity: .plaintext
        )
        try await withGRPCClient(transport: transport) { client in
            let gateway = Terminus_V1_Gateway.Client(wrapping: client)
            await #expect {
                _ = try await gateway.send(Terminus_V1_SendRequest())
            } throws: { error in
                (error as? RPCError)?.code == .unimplemented
            }
            let receiver = Terminus_V1_UplinkReceiver.Client(wrapping: client)
            // A small batch is answered, in order, one result per message.
            let small = Self.batch(41, payloads: [0, 0])
            let answers = try await receiver.deliver(
                requestProducer: { writer in try await writer.write(small) },
                onResponse: { response in
                    var collected: [Terminus_V1_DeliverResponse] = []
                    for try await message in response.messages { collected.append(message) }
                    return collected
                }
            )
            #expect(answers.map(\.batchID) == [41])
            #expect(answers.first?.results.map(\.status) == [.accepted, .accepted])
            let large = Self.batch(42, payloads: [200])
            await #expect {
                try await receiver.deliver(
                    requestProducer: { writer in try await writer.write(large) },
                    onResponse: { response in
                        for try await _ in response.messages {}
                    }
                )
            } throws: { error in
                (error as? RPCError)?.code == .resourceExhausted
            }
        }
        echo.stop()
        echo.removeLog()
    }

    /// A `DeliverRequest` with one message per entry of `payloads`, each that many bytes.
    static func batch(_ id: UInt64, payloads: [Int]) -> Terminus_V1_DeliverRequest {
        var batch = Terminus_V1_DeliverRequest()
        batch.batchID = id
        batch.messages = payloads.map { size in
            var message = Terminus_V1_UplinkMessage()
            message.payload = Data(repeating: 0x61, count: size)
            return message
        }
        return batch
    }
}
