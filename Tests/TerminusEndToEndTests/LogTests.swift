import Foundation
import GRPCCore
import Logging
import NIOCore
import TerminusAPI
import TerminusBackend
import TerminusClient
import TerminusProtocol
import TerminusServer
import Testing

@Suite("Logs: JSON and text lines; no secret in any", .serialized, .gatewayScope)
struct LogTests {
    @Test("a scripted session's JSON log: every line parses, names device and client, holds no secret, no build path")
    func jsonSessionLog() async throws {
        let lines = LogLines.capture()
        var logger = Logger(label: "terminus") {
            TerminusLogHandler(label: $0, format: .json, level: .debug, output: lines)
        }
        logger.logLevel = .debug
        // A service nobody listens on: its outage must log a bounded number of lines.
        let closedPort = try await TestBackend.unusedPort()
        let apiToken = "log-test-api-token-0123456789"
        let gateway = try await TestGateway.start(routed: true, logger: logger) {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = [apiToken]
            $0.services = [
                try! BackendRoutingTests.service("gone", port: closedPort, topics: ["pay/#"]) {
                    $0.deadlineMilliseconds = 200
                    $0.retry.maxAttempts = 1
                }
            ]
        }
        // A device, its messages (the service is down: RETRY_LATER), a Send with the right token
        // and one with a wrong token, a HELLO with a wrong token.
        let device = try await gateway.connect("log-device-1")
        for _ in 0..<30 {
            _ = try await device.publish(topic: "pay/order", payload: ByteBuffer(string: "amount 12.50"))
        }
        let outcome = try await DownlinkAPITests.withAPI(gateway, token: apiToken) { api, metadata in
            try await api.send(DownlinkAPITests.send("log-device-1", "hello", qos: 0), metadata: metadata).outcome
        }
        #expect(outcome == .delivered)
        let wrongAPIToken = "wrong-api-token-9876543210"
        await #expect(throws: RPCError.self) {
            try await DownlinkAPITests.withAPI(gateway, token: wrongAPIToken) { api, metadata in
                try await api.send(DownlinkAPITests.send("log-device-1", "x"), metadata: metadata).outcome
            }
        }
        let wrongSecret = "not-the-secret-0123456789"
        let intruder = try await RawClient.connect(port: gateway.port, tls: true)
        let wrongHello = TestGateway.hello("log-intruder-7", secret: wrongSecret)
        try await intruder.send(wrongHello)
        #expect(await intruder.goAwayOnClose()?.code == .authenticationFailed)
        await device.close()
        await gateway.stop()

        let log = lines.lines
        #expect(log.count > 5, "only \(log.count) lines")
        let timestamp = try Regex(#"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"#)
        var objects: [[String: Any]] = []
        for line in log {
            #expect(line.hasSuffix("\n") && line.dropLast().firstIndex(of: "\n") == nil, "one line per entry")
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            let parsed = try #require(object, "not a JSON object: \(line)")
            #expect((parsed["time"] as? String)?.wholeMatch(of: timestamp) != nil, "time: \(line)")
            #expect(parsed["level"] is String && parsed["message"] is String && parsed["logger"] is String)
            objects.append(parsed)
        }
        // Secrets the session used, in every form: the device secret, the tokens a HELLO
        // carried, the API tokens, the server's private key.
        var secrets = [TestGateway.secret, wrongSecret, apiToken, wrongAPIToken]
        if case .hello(let hello) = wrongHello { secrets.append(String(buffer: hello.credential)) }
        secrets.append(
            TerminusAuthTestSupport.token(deviceID: "log-device-1", secret: TestGateway.secret, expiresIn: 600)
        )
        let key = try String(contentsOfFile: TestPKI.shared.serverKey, encoding: .utf8)
        secrets += key.split(separator: "\n").filter { !$0.hasPrefix("-----") }.map(String.init)
        for line in log {
            for secret in secrets where secret.count >= 8 {
                #expect(!line.contains(secret), "a secret in the log: \(line)")
            }
            // The token's signature part alone.
            #expect(!line.contains("Bearer"), "an authorization header in the log: \(line)")
            #expect(!line.contains(".swift") && !line.contains("/Sources/"), "a build path in the log: \(line)")
        }
        func entries(_ message: String) -> [[String: Any]] { objects.filter { $0["message"] as? String == message } }
        let connected = try #require(entries("device connected").first)
        #expect(connected["device"] as? String == "log-device-1")
        #expect((connected["client"] as? String)?.hasPrefix("127.0.0.1:") == true)
        let refused = entries("closing device connection").filter { $0["code"] as? String == "AUTHENTICATION_FAILED" }
        #expect(refused.count == 1)
        #expect(refused.first?["device"] as? String == "log-intruder-7", "the refused HELLO's device id")
        #expect((refused.first?["client"] as? String)?.hasPrefix("127.0.0.1:") == true)
        // Thirty messages refused by a service that is down: one outage line (then one per 10 s).
        let outage = entries("backend not accepting messages; devices told to resend")
        #expect(outage.count >= 1 && outage.count <= 2, "\(outage.count) outage lines")
        #expect(Int(outage.first?["retry_later"] as? String ?? "") ?? 0 >= 1)
        #expect(entries("backend delivery failed").isEmpty)
    }

    @Test(
        "text lines: an RFC 3339 millisecond timestamp, level, label, message, sorted key=value; values with spaces quoted"
    )
    func textFormat() throws {
        let lines = LogLines.capture()
        let logger = Logger(label: "terminus") {
            TerminusLogHandler(label: $0, format: .text, level: .info, output: lines)
        }
        logger.info(
            "closing device connection",
            metadata: ["reason": "gateway is draining", "code": "SHUTTING_DOWN", "note": "say \"hi\"", "empty": ""]
        )
        logger.debug("not at info")
        let line = try #require(lines.lines.first)
        #expect(lines.lines.count == 1)
        let pattern = try Regex(
            #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z info terminus: closing device connection code=SHUTTING_DOWN empty="" note="say \\"hi\\"" reason="gateway is draining"\n$"#
        )
        #expect(line.wholeMatch(of: pattern) != nil, "\(line)")
    }
}
