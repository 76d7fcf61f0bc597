package import NIOCore
internal import Synchronization

/// When the gateway's graceful shutdown must be over (`drain.grace` after it began): set once,
/// read by every part that could otherwise wait on a backend past it.
package final class ShutdownDeadline: Sendable {
    private let deadline = Mutex<NIODeadline?>(nil)

    package init() {}

    /// Sets the deadline `grace` from now, unless it is set already; returns the deadline.
    @discardableResult
    package func begin(grace: TimeAmount) -> NIODeadline {
        self.deadline.withLock { deadline in
            if let set = deadline { return set }
            let set = NIODeadline.now() + grace
            deadline = set
            return set
        }
    }

    /// Nil until shutdown began.
    package var value: NIODeadline? { self.deadline.withLock { $0 } }
}
