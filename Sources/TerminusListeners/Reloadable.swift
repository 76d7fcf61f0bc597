package import Synchronization

/// A value that configuration reload replaces as a whole (an immutable snapshot): readers take
/// the current one (a lock held for a copy), the reload swaps in the next. Read where it is
/// used once per connection or call (a HELLO, a TLS handshake, an API call), or once per edge
/// batch (the uplink routing) where the value is one reference, so a read is a lock and a retain.
package final class Reloadable<Value: Sendable>: Sendable {
    @usableFromInline let current: Mutex<Value>

    package init(_ value: Value) {
        self.current = Mutex(value)
    }

    /// Inlinable, so a reader in another module gets it specialised for its `Value` (no
    /// generic metadata looked up per read).
    @inlinable package var value: Value { self.current.withLock { $0 } }

    package func replace(with value: Value) {
        self.current.withLock { $0 = value }
    }
}
