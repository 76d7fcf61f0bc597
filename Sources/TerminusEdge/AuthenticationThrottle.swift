package import NIOCore
internal import Synchronization

/// Counts failed authentications per client address (the real one, from PROXY protocol when
/// configured) and refuses further attempts from an address that failed too often, until its
/// window ends (`auth.throttle`).
///
/// Shared by the listener's event loops; taken on every HELLO (connections, not messages) under
/// one lock. Bounded: at most `maxAddresses` addresses are tracked; when the table is full,
/// expired entries are dropped, and if none is expired a new address is not tracked (the
/// throttle fails open rather than growing).
package final class AuthenticationThrottle: Sendable {
    package struct Settings: Hashable, Sendable {
        /// Failures within `window` after which an address is refused; 0 turns throttling off.
        package var failures: Int
        package var window: TimeAmount
        package var maxAddresses: Int

        package init(failures: Int = 10, window: TimeAmount = .seconds(60), maxAddresses: Int = 65_536) {
            self.failures = failures
            self.window = window
            self.maxAddresses = maxAddresses
        }
    }

    private struct Entry {
        var failures: Int
        var windowEnds: NIODeadline
    }

    /// Replaced by a configuration reload (`reconfigure`); read once per HELLO.
    private let current: Mutex<Settings>
    var settings: Settings { self.current.withLock { $0 } }
    private let entries = Mutex<[String: Entry]>([:])

    package init(settings: Settings) {
        self.current = Mutex(settings)
    }

    /// A configuration reload: addresses already tracked keep their counts and windows; the
    /// new threshold and table size apply from the next HELLO.
    package func reconfigure(_ settings: Settings) {
        self.current.withLock { $0 = settings }
    }

    /// The address part of `host:port` or `[v6]:port` (devices reconnect from new ports).
    static func key(_ clientAddress: String) -> String {
        if clientAddress.hasPrefix("["), let end = clientAddress.firstIndex(of: "]") {
            return String(clientAddress[clientAddress.index(after: clientAddress.startIndex)..<end])
        }
        if let colon = clientAddress.lastIndex(of: ":") { return String(clientAddress[..<colon]) }
        return clientAddress
    }

    /// Milliseconds until `clientAddress` may try again, or nil when it may try now.
    package func refusal(for clientAddress: String, now: NIODeadline) -> UInt32? {
        let settings = self.settings
        guard settings.failures > 0 else { return nil }
        let key = Self.key(clientAddress)
        return self.entries.withLock { entries -> UInt32? in
            guard let entry = entries[key] else { return nil }
            if entry.windowEnds <= now {
                entries[key] = nil
                return nil
            }
            guard entry.failures >= settings.failures else { return nil }
            return UInt32(clamping: (entry.windowEnds - now).nanoseconds / 1_000_000)
        }
    }

    /// Records a failed authentication from `clientAddress`.
    package func failed(_ clientAddress: String, now: NIODeadline) {
        let settings = self.settings
        guard settings.failures > 0 else { return }
        let key = Self.key(clientAddress)
        self.entries.withLock { entries in
            if var entry = entries[key], entry.windowEnds > now {
                entry.failures += 1
                entries[key] = entry
                return
            }
            if entries.count >= settings.maxAddresses {
                entries = entries.filter { $0.value.windowEnds > now }
                guard entries.count < settings.maxAddresses else { return }
            }
            entries[key] = Entry(failures: 1, windowEnds: now + settings.window)
        }
    }

    /// Addresses tracked now (tests, diagnostics).
    package var trackedAddresses: Int { self.entries.withLock { $0.count } }
}
