import NIOCore
import Synchronization
import TerminusClient
import TerminusProtocol

/// The fleet's connections while it sends. A device the gateway moves (`GOAWAY(SHUTTING_DOWN)`
/// with a reconnect hint, as a hot event loop does under `device.placement: pack`) connects
/// again after the hint and its slot takes the new connection, as a real device would; while it
/// reconnects its slot is empty and nothing is sent for it.
final class FleetSlots: Sendable {
    /// A send for a device that is reconnecting after a move.
    struct Reconnecting: Error {}

    private struct State {
        var connections: [(any FleetConnection)?]
        var replaced: Set<Int> = []
    }

    let count: Int
    private let state: Mutex<State>
    private let movedCount = Atomic<Int>(0)
    private let stopped = StopFlag()

    init(_ connections: [any FleetConnection]) {
        self.count = connections.count
        self.state = Mutex(State(connections: connections))
    }

    subscript(index: Int) -> (any FleetConnection)? { self.state.withLock { $0.connections[index] } }

    /// Devices that connected again after a move.
    var moved: Int { self.movedCount.load(ordering: .relaxed) }

    /// Whether a send failed because the gateway moved its device (the message was not
    /// accepted; a device sends it again on its next connection).
    static func isMove(_ error: any Error) -> Bool {
        guard let goAway = (error as? TerminusClientError)?.goAway else { return false }
        return goAway.code == .shuttingDown && goAway.reconnectAfterMilliseconds != WireProtocol.doNotReconnect
    }

    /// Follows slot `index` until `stopFollowing()`: after each move, connects the device again.
    func follow(
        _ index: Int,
        prefix: String,
        group: any EventLoopGroup,
        configuration: @escaping @Sendable (Int) -> TerminusClientConfiguration
    ) async {
        guard var connection = self[index] as? TerminusConnection,
            let number = Int(connection.welcome.deviceID.dropFirst(prefix.count))
        else { return }
        while !self.stopped.isSet {
            guard let goAway = await connection.closeReason(), goAway.code == .shuttingDown,
                goAway.reconnectAfterMilliseconds != WireProtocol.doNotReconnect, !self.stopped.isSet
            else { return }
            self.state.withLock { $0.connections[index] = nil }
            try? await Task.sleep(for: .milliseconds(Int64(goAway.reconnectAfterMilliseconds)))
            while !self.stopped.isSet && !Task.isCancelled {
                if let next = try? await TerminusConnection.connect(configuration(number), group: group) {
                    connection = next
                    self.state.withLock { state in
                        state.connections[index] = next
                        state.replaced.insert(index)
                    }
                    self.movedCount.wrappingAdd(1, ordering: .relaxed)
                    Task { for await push in next.pushes where push.qos == .atLeastOnce { next.acknowledge(push) } }
                    break
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// Stops following moves and closes the connections made after one.
    func stopFollowing() async {
        self.stopped.set()
        let replaced = self.state.withLock { state in state.replaced.compactMap { state.connections[$0] } }
        for connection in replaced { await connection.close() }
    }
}
