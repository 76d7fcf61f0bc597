internal import Foundation
internal import NIOCore
internal import Synchronization
internal import TerminusAPI
internal import TerminusProtocol
internal import TerminusSessions

/// What the `terminus.v1.Gateway` service does (`Send`, `Kick`, `Presence`), apart from the
/// transport: `APICallHandler` reads a call on its HTTP/2 stream and hands the request here,
/// on the stream's event loop; `Send` answers with a future of the device's loop, the others at
/// once.
struct GatewayAPIService: Sendable {
    let directory: any SessionDirectory
    /// The fleet's registry: `Presence` answers for devices on other pods too (nil: this pod's
    /// own only).
    let locator: (any DeviceLocator)?
    let instanceID: String
    let defaultTTLMilliseconds: UInt32
    let maxPayloadSize: Int
    let maxTopicLength: Int
    /// `Send` outcomes, for `terminus_downlink_sends_total` (API calls are rare next to
    /// uplink messages: atomics will do).
    let sends = SendCounts()

    /// At most this many device ids in one `Presence` call.
    static let maxPresenceIDs = 10_000

    func send(
        _ request: Terminus_V1_SendRequest,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Terminus_V1_SendResponse> {
        var response = Terminus_V1_SendResponse()
        response.gatewayInstance = self.instanceID
        // The proto promises REJECTED for an invalid message, with the reason's code in
        // device_status; the same topic rules as for PUBLISH (docs/protocol.md).
        if let code = self.invalid(request) {
            response.outcome = .rejected
            response.deviceStatus = UInt32(code.rawValue)
            self.sends.count(.rejected)
            return eventLoop.makeSucceededFuture(response)
        }
        guard let session = self.directory.lookup(request.deviceID) else {
            response.outcome = .offline
            self.sends.count(.offline)
            return eventLoop.makeSucceededFuture(response)
        }
        let sends = self.sends
        let ttl = request.ttlMs == 0 ? self.defaultTTLMilliseconds : request.ttlMs
        let instance = response
        return session.control.push(
            topic: request.topic,
            payload: ByteBuffer(bytes: request.payload),
            qos: request.qos == 1 ? .atLeastOnce : .atMostOnce,
            timeout: .milliseconds(Int64(ttl))
        ).map { outcome in
            var response = instance
            switch outcome {
            case .delivered:
                response.outcome = .delivered
            case .rejected(let code):
                response.outcome = .rejected
                response.deviceStatus = UInt32(code.rawValue)
            case .timeout:
                response.outcome = .timeout
            case .connectionClosed:
                response.outcome = .offline
            }
            sends.count(response.outcome)
            return response
        }
    }

    func invalid(_ request: Terminus_V1_SendRequest) -> TerminusCode? {
        do {
            try Topic.validateDeviceID(request.deviceID, maxLength: 255)
        } catch {
            return .invalidDeviceID
        }
        do {
            try Topic.validatePublishTopic(request.topic, maxLength: self.maxTopicLength)
        } catch {
            return .invalidTopic
        }
        if request.payload.count > self.maxPayloadSize { return .frameTooLarge }
        if request.qos > 1 { return .malformedFrame }
        return nil
    }

    func kick(_ request: Terminus_V1_KickRequest) -> Terminus_V1_KickResponse {
        var response = Terminus_V1_KickResponse()
        guard let session = self.directory.lookup(request.deviceID) else { return response }
        session.control.goAway(.kicked, reconnectAfterMilliseconds: 0, message: String(request.reason.prefix(200)))
        response.kicked = true
        return response
    }

    /// nil when the call asks for more than `maxPresenceIDs` devices. This pod's devices are
    /// answered from its directory; in a fleet the others from the registry (one round trip),
    /// with the pod that holds each as `gateway_instance`. The future fails when the registry
    /// cannot be read (the API answers `UNAVAILABLE`).
    func presence(
        _ request: Terminus_V1_PresenceRequest,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Terminus_V1_PresenceResponse>? {
        guard request.deviceIds.count <= Self.maxPresenceIDs else { return nil }
        var response = Terminus_V1_PresenceResponse()
        response.devices = request.deviceIds.map { id in
            var presence = Terminus_V1_DevicePresence()
            presence.deviceID = id
            if let session = self.directory.lookup(id) {
                presence.online = true
                presence.sinceUnixMs = session.connectedAt
                presence.clientAddress = session.clientAddress
                presence.gatewayInstance = self.instanceID
            }
            return presence
        }
        let elsewhere = response.devices.filter { !$0.online }.map(\.deviceID)
        guard let locator = self.locator, !elsewhere.isEmpty else { return eventLoop.makeSucceededFuture(response) }
        let promise = eventLoop.makePromise(of: Terminus_V1_PresenceResponse.self)
        let answer = response
        promise.completeWithTask {
            let found = try await locator.locate(elsewhere)
            var response = answer
            for index in response.devices.indices {
                guard let remote = found[response.devices[index].deviceID] else { continue }
                response.devices[index].online = true
                response.devices[index].sinceUnixMs = remote.connectedAtMs
                response.devices[index].clientAddress = remote.clientAddress
                response.devices[index].gatewayInstance = remote.podID
            }
            return response
        }
        return promise.futureResult
    }
}

/// `Send` outcomes since start.
final class SendCounts: Sendable {
    private let delivered = Atomic<Int>(0)
    private let rejected = Atomic<Int>(0)
    private let timeout = Atomic<Int>(0)
    private let offline = Atomic<Int>(0)

    func count(_ outcome: Terminus_V1_SendResponse.Outcome) {
        switch outcome {
        case .delivered: self.delivered.wrappingAdd(1, ordering: .relaxed)
        case .rejected: self.rejected.wrappingAdd(1, ordering: .relaxed)
        case .timeout: self.timeout.wrappingAdd(1, ordering: .relaxed)
        default: self.offline.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// By the outcome's name in the API (`DELIVERED`, `OFFLINE`, `TIMEOUT`, `REJECTED`).
    var byOutcome: [(String, Int)] {
        [
            ("delivered", self.delivered.load(ordering: .relaxed)),
            ("offline", self.offline.load(ordering: .relaxed)),
            ("timeout", self.timeout.load(ordering: .relaxed)),
            ("rejected", self.rejected.load(ordering: .relaxed)),
        ]
    }
}
