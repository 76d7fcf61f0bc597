package import NIOCore
package import TerminusAPI
package import TerminusSessions

/// Calls about a device held by another pod of the fleet, made on that pod's internal listener
/// (`fleet.listen`), which answers for its own devices only: a forwarded call is never
/// forwarded again.
package protocol PodForwarding: Sendable {
    /// This pod's id: a record that names it for a device this pod does not hold is stale.
    var podID: String { get }
    func send(
        _ request: Terminus_V1_SendRequest,
        to pod: RemoteDevice
    ) async throws(PodForwardingError)
        -> Terminus_V1_SendResponse
    func sendMany(
        _ request: Terminus_V1_SendManyRequest,
        to pod: RemoteDevice
    ) async throws(PodForwardingError)
        -> Terminus_V1_SendManyResponse
    func kick(
        _ request: Terminus_V1_KickRequest,
        to pod: RemoteDevice
    ) async throws(PodForwardingError)
        -> Terminus_V1_KickResponse
}

/// Why a forwarded call got no answer.
package enum PodForwardingError: Error, CustomStringConvertible {
    /// The pod could not be reached in time (it died and its lease has not expired yet, or it
    /// is draining): its devices are not reachable either, so the call answers as for an
    /// offline device.
    case unreachable(pod: String, reason: String)
    /// The pod answered with an error (a wrong `fleet.token_file`, a failure): the caller
    /// gets `UNAVAILABLE`, not a guess.
    case refused(pod: String, reason: String)

    package var description: String {
        switch self {
        case .unreachable(let pod, let reason): "pod \(pod) is unreachable: \(reason)"
        case .refused(let pod, let reason): "pod \(pod) refused the forwarded call: \(reason)"
        }
    }
}

/// A call about devices this pod does not hold could not be answered: the fleet's registry
/// cannot be read, or the pod holding the device refused the call. The API answers
/// `UNAVAILABLE` with this message.
package struct FleetUnavailable: Error, CustomStringConvertible {
    package var description: String

    package init(_ description: String) { self.description = description }
}

/// The fleet's offline message store (`Send` with `store_ttl_ms`), as the API uses it.
package protocol MessageStoring: Sendable {
    /// The longest a message is kept (`fleet.store.max_ttl`); longer TTLs are shortened to it.
    var maxTTLMilliseconds: UInt32 { get }
    /// Whether a stored-class message for this pod's session of `deviceID` must go through the
    /// store rather than straight to the device: stored messages are being delivered to it, or
    /// whether there are any is not known yet (it just connected). Keeps them in order.
    func mustQueue(_ deviceID: String) -> Bool
    /// Appends a message for `deviceID`: true when stored, false when one of the device's caps
    /// would be passed. Throws when Redis cannot be reached.
    func store(deviceID: String, topic: String, payload: ByteBuffer, ttlMilliseconds: UInt32) async throws -> Bool
    /// How many live messages are stored for each device (one round trip). Throws when Redis
    /// cannot be reached.
    func counts(_ deviceIDs: [String]) async throws -> [String: Int]
}

/// `store_ttl_ms` on a gateway without a store (no `fleet`): the API answers
/// `FAILED_PRECONDITION`.
package struct StoreNotConfigured: Error, CustomStringConvertible {
    package var description: String {
        "store_ttl_ms needs the fleet's store (a fleet section with Redis, docs/cluster.md)"
    }

    package init() {}
}
