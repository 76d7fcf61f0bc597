package import Synchronization

/// A value that configuration reload replaces as a whole (an immutable snapshot): readers take
/// the current one (a lock held for a copy), the reload swaps in the next. Read where it is
/// used once per connection or call (a HELLO, a TLS handshake, an API call), not per message:
/// readers in other modules run the generic getter (a release build has no specialised copy,
/// despite `@inlinable`), which looks the value's type metadata up on every read. The uplink
/// routing, read once per edge batch, keeps its own `Mutex` (`BackendRouter`).
package final class Reloadable<Value: Sendable>: Sendable {
    @usableFromInline let current: Mutex<Value>

    package init(_ value: Value) {
        self.current = Mutex(value)
    }

    @inlinable package var value: Value { self.current.withLock { $0 } }

    package func replace(with value: Value) {
        self.current.withLock { $0 = value }
    }
}
