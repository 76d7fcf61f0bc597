internal import Synchronization

/// A value that configuration reload replaces as a whole (an immutable snapshot): readers take
/// the current one (a lock held for a copy), the reload swaps in the next. Read where it is
/// used once per connection or call (a HELLO, a TLS handshake, an API call), never per message.
package final class Reloadable<Value: Sendable>: Sendable {
    private let current: Mutex<Value>

    package init(_ value: Value) {
        self.current = Mutex(value)
    }

    package var value: Value { self.current.withLock { $0 } }

    package func replace(with value: Value) {
        self.current.withLock { $0 = value }
    }
}
