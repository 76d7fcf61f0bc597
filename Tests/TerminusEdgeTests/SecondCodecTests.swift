import NIOCore
import TerminusAuth
import TerminusEdge
import TerminusProtocol
import Testing

/// A stand-in for a second device codec: a line protocol shaped like MQTT (CONNECT, PUBLISH,
/// PINGREQ, DISCONNECT; MQTT 5 reason codes). It drives the same `DeviceSessionStateMachine`
/// and `DeviceAuthenticator` as wire protocol v1 and maps the machine's neutral close reasons to
/// its own codes, which is all a real MQTT codec has to do beyond parsing.
struct LineCodecDouble {
    var machine: DeviceSessionStateMachine
    let authenticator: DeviceAuthenticator
    /// Lines written to the device.
    var output: [String] = []
    var closed = false
    /// Messages handed to the sink: (topic, payload).
    var delivered: [(String, String)] = []

    init(
        authenticator: DeviceAuthenticator,
        now: NIODeadline,
        maxInflight: Int = 2,
        rate: UplinkRateLimits = .unlimited
    ) {
        self.authenticator = authenticator
        self.machine = DeviceSessionStateMachine(
            usesTLS: false,
            now: now,
            timeouts: .init(handshake: .seconds(10), hello: .seconds(10), closeGrace: .seconds(5)),
            maxInflight: maxInflight,
            rateLimits: rate
        )
    }

    /// MQTT 5 reason codes for the neutral reasons.
    static func reasonCode(_ reason: SessionCloseReason) -> UInt8 {
        switch reason {
        case .normal: 0x00
        case .shuttingDown: 0x8B  // Server shutting down
        case .replaced: 0x8E  // Session taken over
        case .kicked: 0x98  // Administrative action
        case .keepaliveTimeout: 0x8D  // Keep Alive timeout
        case .rateLimited: 0x96  // Message rate too high
        case .inflightExceeded: 0x93  // Receive Maximum exceeded
        case .unexpectedMessage: 0x82  // Protocol Error
        case .authentication: 0x87  // Not authorized
        case .protocolViolation(let code): UInt8(truncatingIfNeeded: code)
        default: 0x80  // Unspecified error
        }
    }

    mutating func receive(_ line: String, now: NIODeadline) {
        let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
        switch parts.first {
        case "CONNECT" where parts.count == 3:
            switch self.machine.receivedCredential(now: now) {
            case .authenticate:
                let credential = DeviceCredential(
                    deviceID: parts[1],
                    token: Array(parts[2].utf8),
                    certificateDeviceID: nil,
                    clientAddress: "192.0.2.1:1883"
                )
                do {
                    let deviceID = try self.authenticator.authenticate(credential, maxDeviceIDLength: 64)
                    self.machine.authenticated(deviceID: deviceID, keepaliveSeconds: 30, now: now)
                    self.output.append("CONNACK 0")
                } catch {
                    self.execute(self.machine.authenticationFailed(error, now: now))
                }
            case .close(let action): self.execute(action)
            case .ignore: break
            }
        case "PUBLISH" where parts.count == 4:
            let qos: QoS = parts[1] == "1" ? .atLeastOnce : .atMostOnce
            switch self.machine.receivedPublish(qos: qos, payloadBytes: parts[3].utf8.count, now: now) {
            case .deliver: self.delivered.append((parts[2], parts[3]))
            case .refuse: self.output.append("PUBACK 0x96")
            case .drop, .ignore: break
            case .close(let action): self.execute(action)
            }
        case "PINGREQ":
            switch self.machine.receivedControl(now: now) {
            case .handle: self.output.append("PINGRESP")
            case .close(let action): self.execute(action)
            case .ignore: break
            }
        case "DISCONNECT":
            if self.machine.receivedGoodbye(now: now) == .closeNow { self.closed = true }
        default:
            self.execute(self.machine.protocolViolation(code: 0x81, now: now))  // Malformed Packet
        }
    }

    /// The backend answered the oldest pending QoS 1 message.
    mutating func outcome(now: NIODeadline) {
        let action = self.machine.deliveryCompleted(qos: .atLeastOnce)
        if action.acknowledge { self.output.append("PUBACK 0") }
        if action.closeNow { self.closed = true }
    }

    mutating func execute(_ action: DeviceSessionStateMachine.CloseAction) {
        switch action {
        case .goAway(let reason, _, let closeNow):
            self.output.append("DISCONNECT 0x" + String(Self.reasonCode(reason), radix: 16, uppercase: true))
            if closeNow { self.closed = true }
        case .closeSilently:
            self.closed = true
        case .none:
            break
        }
    }
}

@Suite("A second codec drives the same session core")
struct SecondCodecTests {
    static let secret = Array("second-codec-secret-0123".utf8)
    let start = NIODeadline.uptimeNanoseconds(5_000_000_000)
    let authenticator = DeviceAuthenticator(secrets: SecretStore(prefixes: ["": Self.secret]), now: { 1_000 })

    func token(_ deviceID: String) -> String {
        DeviceToken.make(deviceID: deviceID, secret: Self.secret, expiresAt: 2_000)
    }

    @Test("connect, publish, ping, outcomes, goodbye")
    func happyPath() {
        var codec = LineCodecDouble(authenticator: self.authenticator, now: self.start)
        codec.receive("CONNECT lamp-1 \(self.token("lamp-1"))", now: self.start)
        codec.receive("PUBLISH 1 lamp/state on", now: self.start)
        codec.receive("PINGREQ", now: self.start)
        codec.outcome(now: self.start)
        codec.receive("DISCONNECT", now: self.start)
        #expect(codec.output == ["CONNACK 0", "PINGRESP", "PUBACK 0"])
        #expect(codec.delivered.map(\.0) == ["lamp/state"])
        #expect(codec.closed && codec.machine.closeReason == .normal)
    }

    @Test("the machine's refusals come out in the codec's own reason codes")
    func reasonCodes() {
        var early = LineCodecDouble(authenticator: self.authenticator, now: self.start)
        early.receive("PUBLISH 0 lamp/state on", now: self.start)
        #expect(early.output == ["DISCONNECT 0x82"] && early.closed)

        var forged = LineCodecDouble(authenticator: self.authenticator, now: self.start)
        forged.receive("CONNECT lamp-2 \(self.token("lamp-9"))", now: self.start)
        #expect(forged.output == ["DISCONNECT 0x87"])
        #expect(forged.machine.closeReason == .authentication(.invalidCredential))

        var greedy = LineCodecDouble(authenticator: self.authenticator, now: self.start, maxInflight: 1)
        greedy.receive("CONNECT lamp-3 \(self.token("lamp-3"))", now: self.start)
        greedy.receive("PUBLISH 1 a b", now: self.start)
        greedy.receive("PUBLISH 1 a c", now: self.start)
        #expect(greedy.output == ["CONNACK 0", "DISCONNECT 0x93"])

        var garbage = LineCodecDouble(authenticator: self.authenticator, now: self.start)
        garbage.receive("HELLO?", now: self.start)
        #expect(garbage.output == ["DISCONNECT 0x81"])

        // A shutdown waits for the outcome it owes, then closes.
        var draining = LineCodecDouble(authenticator: self.authenticator, now: self.start)
        draining.receive("CONNECT lamp-4 \(self.token("lamp-4"))", now: self.start)
        draining.receive("PUBLISH 1 a b", now: self.start)
        draining.execute(draining.machine.close(.shuttingDown, now: self.start))
        #expect(!draining.closed)
        draining.outcome(now: self.start)
        #expect(draining.output == ["CONNACK 0", "DISCONNECT 0x8B", "PUBACK 0"] && draining.closed)
    }

    @Test("keepalive and rate limits apply to the second codec unchanged")
    func timersAndRates() {
        var idle = LineCodecDouble(authenticator: self.authenticator, now: self.start)
        idle.receive("CONNECT lamp-5 \(self.token("lamp-5"))", now: self.start)
        if case .close(let action) = idle.machine.timerFired(now: self.start + .seconds(45)) { idle.execute(action) }
        #expect(idle.output.last == "DISCONNECT 0x8D")

        let rate = UplinkRateLimits(
            messagesPerSecond: 1,
            messageBurst: 1,
            bytesPerSecond: 0,
            byteBurst: 0,
            refusalsBeforeClose: 2
        )
        var chatty = LineCodecDouble(authenticator: self.authenticator, now: self.start, maxInflight: 10, rate: rate)
        chatty.receive("CONNECT lamp-6 \(self.token("lamp-6"))", now: self.start)
        chatty.receive("PUBLISH 0 a 1", now: self.start)
        chatty.receive("PUBLISH 0 a 2", now: self.start)
        chatty.receive("PUBLISH 0 a 3", now: self.start)
        #expect(chatty.output == ["CONNACK 0", "PUBACK 0x96", "DISCONNECT 0x96"])
    }
}
