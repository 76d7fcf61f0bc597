/// Where devices are that another gateway of the fleet holds (the session registry in Redis):
/// what makes `Presence` fleet-wide. Nil in a gateway on its own.
package protocol DeviceLocator: Sendable {
    /// The devices of `deviceIDs` connected to a live pod, by id (one round trip for all).
    /// Throws when the fleet's state cannot be read (Redis unavailable): callers answer
    /// `UNAVAILABLE` rather than guess.
    func locate(_ deviceIDs: [String]) async throws -> [String: RemoteDevice]
}

/// A device connected to some pod of the fleet.
package struct RemoteDevice: Sendable, Hashable {
    package var podID: String
    /// Where other pods reach the pod (HOST:PORT of its internal listener).
    package var podAddress: String
    package var connectedAtMs: Int64
    package var clientAddress: String

    package init(podID: String, podAddress: String, connectedAtMs: Int64, clientAddress: String) {
        self.podID = podID
        self.podAddress = podAddress
        self.connectedAtMs = connectedAtMs
        self.clientAddress = clientAddress
    }
}
