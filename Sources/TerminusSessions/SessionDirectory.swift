package import NIOCore
internal import Synchronization
package import TerminusProtocol

/// What the directory can ask of a live session. Implementations hop to their event loop.
package protocol DeviceSessionControl: AnyObject, Sendable {
    /// Sends GOAWAY(`code`) and closes the connection once in-flight work allows.
    func goAway(_ code: TerminusCode, reconnectAfterMilliseconds: UInt32, message: String)

    /// Writes a PUSH to the device. QoS 1 completes with the device's ACK, or `.timeout` after
    /// `timeout`; QoS 0 completes once written.
    func push(topic: String, payload: ByteBuffer, qos: QoS, timeout: TimeAmount) -> EventLoopFuture<PushOutcome>
}

/// What became of one downlink message.
package enum PushOutcome: Hashable, Sendable {
    /// QoS 1: the device acknowledged with OK. QoS 0: written.
    case delivered
    /// The device answered with another status, or the gateway refused to send: `FRAME_TOO_LARGE`
    /// (above the device's receive limit), `SLOW_CONSUMER` (the device is not reading),
    /// `INVALID_TOPIC`.
    case rejected(TerminusCode)
    /// No ACK in time.
    case timeout
    /// The connection closed first (or was already closing).
    case connectionClosed
}

/// An authenticated device connection, as the rest of the gateway sees it.
///
/// Immutable: created when a session is established, dropped when it closes.
package final class SessionHandle: Sendable {
    package let deviceID: String
    /// Unique within this process; tells two connections of one device apart.
    package let connectionID: UInt64
    /// The real client address (from PROXY protocol when configured).
    package let clientAddress: String
    /// Unix time in milliseconds.
    package let connectedAt: Int64
    package let eventLoop: any EventLoop
    package let control: any DeviceSessionControl

    package init(
        deviceID: String,
        connectionID: UInt64,
        clientAddress: String,
        connectedAt: Int64,
        eventLoop: any EventLoop,
        control: any DeviceSessionControl
    ) {
        self.deviceID = deviceID
        self.connectionID = connectionID
        self.clientAddress = clientAddress
        self.connectedAt = connectedAt
        self.eventLoop = eventLoop
        self.control = control
    }
}

/// The directory of live device sessions (device id → handle).
///
/// The edge registers sessions; the backend API looks them up to deliver downlink messages;
/// a cluster implementation can answer for devices held by other gateway instances.
package protocol SessionDirectory: Sendable {
    /// Registers `handle`, returning the session it displaced (same device id), if any.
    func register(_ handle: SessionHandle) -> SessionHandle?
    /// Removes `handle` if it is still the registered session for its device id.
    func unregister(_ handle: SessionHandle)
    func lookup(_ deviceID: String) -> SessionHandle?
    var count: Int { get }
    /// A snapshot of every registered session (for draining and admin listings).
    func all() -> [SessionHandle]
}

/// The sessions held by this process, in shards so that connects on different event loops
/// rarely contend. Registration happens once per connection, never per message.
package final class LocalSessionDirectory: SessionDirectory {
    private static let shardCount = 16
    private final class Shard: Sendable {
        let table = Mutex<[String: SessionHandle]>([:])
        func withLock<R>(_ body: (inout [String: SessionHandle]) -> R) -> R {
            self.table.withLock { body(&$0) }
        }
    }

    private let shards: [Shard]

    package init() {
        self.shards = (0..<Self.shardCount).map { _ in Shard() }
    }

    private func shard(_ deviceID: String) -> Shard {
        var hasher = Hasher()
        hasher.combine(deviceID)
        let index = Int(UInt(bitPattern: hasher.finalize()) % UInt(Self.shardCount))
        return self.shards[index]
    }

    package func register(_ handle: SessionHandle) -> SessionHandle? {
        self.shard(handle.deviceID).withLock { table in
            table.updateValue(handle, forKey: handle.deviceID)
        }
    }

    package func unregister(_ handle: SessionHandle) {
        self.shard(handle.deviceID).withLock { table in
            if table[handle.deviceID] === handle {
                table.removeValue(forKey: handle.deviceID)
            }
        }
    }

    package func lookup(_ deviceID: String) -> SessionHandle? {
        self.shard(deviceID).withLock { $0[deviceID] }
    }

    package var count: Int {
        self.shards.reduce(0) { sum, shard in sum + shard.withLock { $0.count } }
    }

    package func all() -> [SessionHandle] {
        self.shards.flatMap { shard in shard.withLock { Array($0.values) } }
    }
}
