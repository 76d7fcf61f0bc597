internal import Foundation
internal import NIOCore
internal import Synchronization
internal import TerminusAPI
internal import TerminusProtocol
internal import TerminusSessions

/// What the `terminus.v1.Gateway` service does (`Send`, `SendMany`, `Kick`, `Presence`), apart
/// from the transport: `APICallHandler` reads a call on its HTTP/2 stream and hands the request
/// here, on the stream's event loop; a `Send` to a device of this pod answers with a future of
/// the device's loop.
///
/// In a fleet, a device this pod does not hold is looked up in the registry (`locator`) and the
/// call forwarded to its pod (`forwarder`), whose answer is passed on as is. Without them (a
/// pod on its own, or the fleet's internal listener, which answers for its own devices only)
/// such a device is offline.
struct GatewayAPIService: Sendable {
    let directory: any SessionDirectory
    /// The fleet's registry: calls reach devices on other pods too (nil: this pod's own only).
    let locator: (any DeviceLocator)?
    /// Calls the pod that holds a device (nil: this pod's own devices only).
    let forwarder: (any PodForwarding)?
    /// The fleet's offline store (`store_ttl_ms`; nil: no fleet, such a `Send` is refused).
    let store: (any MessageStoring)?
    let instanceID: String
    let defaultTTLMilliseconds: UInt32
    let maxPayloadSize: Int
    let maxTopicLength: Int
    /// `Send` outcomes, for `terminus_downlink_sends_total` (API calls are rare next to
    /// uplink messages: atomics will do).
    let sends = SendCounts()

    /// At most this many device ids in one `Presence` or `SendMany` call.
    static let maxPresenceIDs = 10_000
    static let maxSendManyIDs = 10_000

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
        if request.storeTtlMs > 0 && self.store == nil {
            self.sends.count(.rejected)
            return eventLoop.makeFailedFuture(StoreNotConfigured())
        }
        guard let session = self.directory.lookup(request.deviceID) else {
            return self.sendElsewhere(request, response: response, on: eventLoop)
        }
        guard request.storeTtlMs > 0, let store = self.store else {
            return self.push(request, to: session, response: response)
        }
        // Older stored messages go first: this one joins them.
        if store.mustQueue(request.deviceID) {
            return self.keep(request, response: response, on: eventLoop)
        }
        let sends = self.sends
        return self.push(request, to: session, response: response, count: false).flatMap { [response] answer in
            guard answer.outcome == .timeout || answer.outcome == .offline else {
                sends.count(answer.outcome)
                return session.eventLoop.makeSucceededFuture(answer)
            }
            return self.keep(request, response: response, on: session.eventLoop)
        }
    }

    /// Stores the message (`store_ttl_ms`): `STORED`; when one of the device's caps would be
    /// passed, `REJECTED(RETRY_LATER)` (not stored: a backend asked to store learns that it was
    /// not). Fails with `FleetUnavailable` when the store cannot be written.
    private func keep(
        _ request: Terminus_V1_SendRequest,
        response: Terminus_V1_SendResponse,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Terminus_V1_SendResponse> {
        guard let store = self.store else { return eventLoop.makeFailedFuture(StoreNotConfigured()) }
        let sends = self.sends
        let promise = eventLoop.makePromise(of: Terminus_V1_SendResponse.self)
        promise.completeWithTask {
            var answer = response
            do {
                if try await store.store(
                    deviceID: request.deviceID,
                    topic: request.topic,
                    payload: ByteBuffer(bytes: request.payload),
                    ttlMilliseconds: request.storeTtlMs
                ) {
                    answer.outcome = .stored
                } else {
                    answer.outcome = .rejected
                    answer.deviceStatus = UInt32(TerminusCode.retryLater.rawValue)
                }
            } catch {
                sends.count(.unavailable)
                throw FleetUnavailable("the message could not be stored: \(error)")
            }
            sends.count(answer.outcome)
            return answer
        }
        return promise.futureResult
    }

    /// Pushes to a session of this pod and answers with the device's outcome (counted unless
    /// `count` is false).
    private func push(
        _ request: Terminus_V1_SendRequest,
        to session: SessionHandle,
        response instance: Terminus_V1_SendResponse,
        count: Bool = true
    ) -> EventLoopFuture<Terminus_V1_SendResponse> {
        let sends = self.sends
        let ttl = request.ttlMs == 0 ? self.defaultTTLMilliseconds : request.ttlMs
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
            if count { sends.count(response.outcome) }
            return response
        }
    }

    /// A device this pod does not hold: forwarded to its pod when the registry names a live
    /// one, else offline. Fails with `FleetUnavailable` when the registry cannot be read or the
    /// pod refuses the call.
    private func sendElsewhere(
        _ request: Terminus_V1_SendRequest,
        response: Terminus_V1_SendResponse,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Terminus_V1_SendResponse> {
        var offline = response
        offline.outcome = .offline
        let storing = request.storeTtlMs > 0
        guard let locator = self.locator, let forwarder = self.forwarder else {
            if storing { return self.keep(request, response: response, on: eventLoop) }
            self.sends.count(.offline)
            return eventLoop.makeSucceededFuture(offline)
        }
        let sends = self.sends
        // The TTL this pod would apply, so that the forwarded call's deadline can follow it.
        var request = request
        if request.ttlMs == 0 { request.ttlMs = self.defaultTTLMilliseconds }
        let promise = eventLoop.makePromise(of: Terminus_V1_SendResponse.self)
        promise.completeWithTask { [request, offline] in
            let located: [String: RemoteDevice]
            do {
                located = try await Self.locate([request.deviceID], locator, forwarder)
            } catch {
                sends.count(.unavailable)
                throw error
            }
            guard let pod = located[request.deviceID] else {
                if storing { return try await self.keep(request, response: response, on: eventLoop).get() }
                sends.count(.offline)
                return offline
            }
            do {
                let answer = try await forwarder.send(request, to: pod)
                sends.count(answer.outcome)
                return answer
            } catch PodForwardingError.unreachable {
                if storing { return try await self.keep(request, response: response, on: eventLoop).get() }
                sends.count(.offline)
                return offline
            } catch {
                sends.count(.unavailable)
                throw FleetUnavailable("\(error)")
            }
        }
        return promise.futureResult
    }

    /// The live pods other than this one that hold `ids` (one registry round trip). A record
    /// naming this pod for a device it does not hold is stale (the device left, its disconnect
    /// not written yet): offline.
    private static func locate(
        _ ids: [String],
        _ locator: any DeviceLocator,
        _ forwarder: any PodForwarding
    ) async throws -> [String: RemoteDevice] {
        let found: [String: RemoteDevice]
        do {
            found = try await locator.locate(ids)
        } catch {
            throw FleetUnavailable("the fleet's registry cannot be read: \(error)")
        }
        return found.filter { $0.value.podID != forwarder.podID && !$0.value.podAddress.isEmpty }
    }

    func invalid(_ request: Terminus_V1_SendRequest) -> TerminusCode? {
        do {
            try Topic.validateDeviceID(request.deviceID, maxLength: 255)
        } catch {
            return .invalidDeviceID
        }
        return self.invalidMessage(topic: request.topic, payloadSize: request.payload.count, qos: request.qos)
            ?? self.invalidStore(request)
    }

    /// What is wrong with a message, whatever its device.
    private func invalidMessage(topic: String, payloadSize: Int, qos: UInt32) -> TerminusCode? {
        do {
            try Topic.validatePublishTopic(topic, maxLength: self.maxTopicLength)
        } catch {
            return .invalidTopic
        }
        if payloadSize > self.maxPayloadSize { return .frameTooLarge }
        if qos > 1 { return .malformedFrame }
        return nil
    }

    /// `store_ttl_ms` is for QoS 1 messages only (a stored message is removed at its ACK).
    private func invalidStore(_ request: Terminus_V1_SendRequest) -> TerminusCode? {
        request.storeTtlMs > 0 && request.qos != 1 ? .malformedFrame : nil
    }

    /// One message to many devices; nil when the call names more than `maxSendManyIDs`. Each
    /// distinct id is sent to once: this pod's devices directly, the others with one forwarded
    /// `SendMany` per pod that holds some of them, all at once. Devices the registry cannot be
    /// asked about, or whose pod refuses the call, are answered `UNAVAILABLE`.
    func sendMany(
        _ request: Terminus_V1_SendManyRequest,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Terminus_V1_SendManyResponse>? {
        guard request.deviceIds.count <= Self.maxSendManyIDs else { return nil }
        var seen = Set<String>()
        var local: [EventLoopFuture<Terminus_V1_SendResult>] = []
        var elsewhere: [String] = []
        let invalid = self.invalidMessage(topic: request.topic, payloadSize: request.payload.count, qos: request.qos)
        for id in request.deviceIds where seen.insert(id).inserted {
            var single = Terminus_V1_SendRequest()
            single.deviceID = id
            single.topic = request.topic
            single.payload = request.payload
            single.qos = request.qos
            single.ttlMs = request.ttlMs
            var response = Terminus_V1_SendResponse()
            response.gatewayInstance = self.instanceID
            if let code = invalid ?? self.invalid(single) {
                response.outcome = .rejected
                response.deviceStatus = UInt32(code.rawValue)
                self.sends.count(.rejected)
                local.append(eventLoop.makeSucceededFuture(Self.result(id, response)))
            } else if let session = self.directory.lookup(id) {
                local.append(self.push(single, to: session, response: response).map { Self.result(id, $0) })
            } else {
                elsewhere.append(id)
            }
        }
        let forwarded = self.sendManyElsewhere(request, ids: elsewhere, on: eventLoop)
        return EventLoopFuture.whenAllSucceed(local, on: eventLoop).and(forwarded).map { local, remote in
            var byID = remote
            for result in local { byID[result.deviceID] = result }
            var response = Terminus_V1_SendManyResponse()
            response.results = request.deviceIds.map { byID[$0] ?? Self.result($0, outcome: .offline) }
            return response
        }
    }

    /// The devices of `ids` (none of them on this pod): grouped by the pod that holds them, one
    /// forwarded `SendMany` per pod, all at once. Never fails: an id without an answer is
    /// offline.
    private func sendManyElsewhere(
        _ request: Terminus_V1_SendManyRequest,
        ids: [String],
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<[String: Terminus_V1_SendResult]> {
        guard !ids.isEmpty, let locator = self.locator, let forwarder = self.forwarder else {
            for _ in ids { self.sends.count(.offline) }
            return eventLoop.makeSucceededFuture([:])
        }
        let sends = self.sends
        var request = request
        if request.ttlMs == 0 { request.ttlMs = self.defaultTTLMilliseconds }
        let promise = eventLoop.makePromise(of: [String: Terminus_V1_SendResult].self)
        promise.completeWithTask { [request] in
            var results: [String: Terminus_V1_SendResult] = [:]
            do {
                let pods = Dictionary(
                    grouping: try await Self.locate(ids, locator, forwarder).sorted { $0.key < $1.key }
                ) {
                    $0.value.podID
                }
                let answers = await withTaskGroup(of: [Terminus_V1_SendResult].self) { group in
                    for located in pods.values {
                        var part = request
                        part.deviceIds = located.map(\.key)
                        let pod = located[0].value
                        group.addTask { await Self.forwardMany(part, to: pod, forwarder) }
                    }
                    return await group.reduce(into: [Terminus_V1_SendResult]()) { $0 += $1 }
                }
                // Only what was asked: a pod's answer cannot add devices.
                let asked = Set(ids)
                for result in answers where asked.contains(result.deviceID) { results[result.deviceID] = result }
            } catch {
                for id in ids { results[id] = Self.result(id, outcome: .unavailable) }
            }
            for id in ids { sends.count(results[id]?.outcome ?? .offline) }
            return results
        }
        return promise.futureResult
    }

    /// One forwarded `SendMany`: an unreachable pod's devices are offline; those of a pod that
    /// refuses the call are unavailable.
    private static func forwardMany(
        _ request: Terminus_V1_SendManyRequest,
        to pod: RemoteDevice,
        _ forwarder: any PodForwarding
    ) async -> [Terminus_V1_SendResult] {
        do {
            return try await forwarder.sendMany(request, to: pod).results
        } catch PodForwardingError.unreachable {
            return request.deviceIds.map { Self.result($0, outcome: .offline) }
        } catch {
            return request.deviceIds.map { Self.result($0, outcome: .unavailable) }
        }
    }

    private static func result(_ id: String, _ response: Terminus_V1_SendResponse) -> Terminus_V1_SendResult {
        var result = Terminus_V1_SendResult()
        result.deviceID = id
        result.outcome = response.outcome
        result.deviceStatus = response.deviceStatus
        result.gatewayInstance = response.outcome == .offline ? "" : response.gatewayInstance
        return result
    }

    private static func result(_ id: String, outcome: Terminus_V1_SendResponse.Outcome) -> Terminus_V1_SendResult {
        var result = Terminus_V1_SendResult()
        result.deviceID = id
        result.outcome = outcome
        return result
    }

    /// Disconnects a device with GOAWAY(KICKED), wherever in the fleet it is.
    func kick(
        _ request: Terminus_V1_KickRequest,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Terminus_V1_KickResponse> {
        var response = Terminus_V1_KickResponse()
        if let session = self.directory.lookup(request.deviceID) {
            session.control.goAway(.kicked, reconnectAfterMilliseconds: 0, message: String(request.reason.prefix(200)))
            response.kicked = true
            return eventLoop.makeSucceededFuture(response)
        }
        guard let locator = self.locator, let forwarder = self.forwarder else {
            return eventLoop.makeSucceededFuture(response)
        }
        let promise = eventLoop.makePromise(of: Terminus_V1_KickResponse.self)
        promise.completeWithTask { [response] in
            guard let pod = try await Self.locate([request.deviceID], locator, forwarder)[request.deviceID] else {
                return response
            }
            do {
                return try await forwarder.kick(request, to: pod)
            } catch PodForwardingError.unreachable {
                return response
            } catch {
                throw FleetUnavailable("\(error)")
            }
        }
        return promise.futureResult
    }

    /// nil when the call asks for more than `maxPresenceIDs` devices. This pod's devices are
    /// answered from its directory; in a fleet the others from the registry (one round trip),
    /// with the pod that holds each as `gateway_instance`, and every device's stored messages
    /// from the store (one round trip at the same time). The future fails when the registry
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
        let elsewhere = self.locator == nil ? [] : response.devices.filter { !$0.online }.map(\.deviceID)
        guard !elsewhere.isEmpty || self.store != nil else { return eventLoop.makeSucceededFuture(response) }
        let (locator, store) = (self.locator, self.store)
        let promise = eventLoop.makePromise(of: Terminus_V1_PresenceResponse.self)
        let answer = response
        promise.completeWithTask {
            // Both round trips at once; stored counts that cannot be read are left at 0.
            async let counts = try? store?.counts(request.deviceIds)
            var found: [String: RemoteDevice] = [:]
            if let locator, !elsewhere.isEmpty {
                do {
                    found = try await locator.locate(elsewhere)
                } catch {
                    throw FleetUnavailable("the fleet's registry cannot be read: \(error)")
                }
            }
            var response = answer
            if let counts = await counts {
                for index in response.devices.indices {
                    response.devices[index].storedMessages = UInt32(counts[response.devices[index].deviceID] ?? 0)
                }
            }
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
    private let unavailable = Atomic<Int>(0)
    private let stored = Atomic<Int>(0)

    func count(_ outcome: Terminus_V1_SendResponse.Outcome) {
        switch outcome {
        case .delivered: self.delivered.wrappingAdd(1, ordering: .relaxed)
        case .rejected: self.rejected.wrappingAdd(1, ordering: .relaxed)
        case .timeout: self.timeout.wrappingAdd(1, ordering: .relaxed)
        case .unavailable: self.unavailable.wrappingAdd(1, ordering: .relaxed)
        case .stored: self.stored.wrappingAdd(1, ordering: .relaxed)
        default: self.offline.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// By the outcome's name in the API (`DELIVERED`, `OFFLINE`, `TIMEOUT`, `REJECTED`,
    /// `UNAVAILABLE`, `STORED`).
    var byOutcome: [(String, Int)] {
        [
            ("delivered", self.delivered.load(ordering: .relaxed)),
            ("offline", self.offline.load(ordering: .relaxed)),
            ("timeout", self.timeout.load(ordering: .relaxed)),
            ("rejected", self.rejected.load(ordering: .relaxed)),
            ("unavailable", self.unavailable.load(ordering: .relaxed)),
            ("stored", self.stored.load(ordering: .relaxed)),
        ]
    }
}
