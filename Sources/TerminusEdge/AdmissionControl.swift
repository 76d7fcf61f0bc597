package import NIOCore
internal import Synchronization
internal import TerminusMetrics

/// What one device listener admits, beyond `max_connections` (`limits.*`): new connections per
/// second (a token bucket), TLS handshakes in progress, connections per client address, and
/// how often one device may authenticate. Everything but the last is decided at accept, before
/// any TLS work; a refused connection is closed (with `GOAWAY(SERVER_BUSY)` where a frame can
/// be sent) and counted by reason. Shared by the listener's loops; each check is taken once per
/// connection, never per message.
package final class AdmissionControl: Sendable {
    package struct Settings: Sendable, Hashable {
        /// New connections a second, and the burst above it (0: no limit).
        package var acceptRate: Double = 2_000
        package var acceptBurst: Double = 4_000
        /// TLS handshakes in progress at once (0: no limit).
        package var maxHandshakes = 1_000
        /// Connections open from one client address (the real one, from PROXY) (0: no limit).
        package var maxPerAddress = 1_000
        /// Authentications of one device id within `reconnectWindow`; past it the device is
        /// refused (`RECONNECTING_TOO_OFTEN`) for `reconnectBlock` (0: no limit).
        package var reconnectMax = 20
        package var reconnectWindow = TimeAmount.seconds(60)
        package var reconnectBlock = TimeAmount.seconds(60)

        package init() {}

        /// No limit at all (the benchmarks' fixtures drive far more than a device would).
        package static let unlimited: Settings = {
            var settings = Settings()
            (settings.acceptRate, settings.maxHandshakes, settings.maxPerAddress, settings.reconnectMax) = (0, 0, 0, 0)
            return settings
        }()
    }

    enum Refusal: String, CaseIterable {
        case acceptRate = "accept_rate"
        case handshakes
        case perAddress = "per_address"
    }

    private struct Bucket {
        var tokens: Double
        var last: NIODeadline
    }

    private struct Reconnects {
        var count: Int
        var windowStart: NIODeadline
        var blockedUntil: NIODeadline?
    }

    /// Replaced by a configuration reload (`reconfigure`); read once per check.
    private let current: Mutex<Settings>
    var settings: Settings { self.current.withLock { $0 } }
    private let bucket: Mutex<Bucket>
    private let handshakes = Atomic<Int>(0)
    private let addresses = Mutex<[String: Int]>([:])
    private let reconnects = Mutex<[String: Reconnects]>([:])
    /// At most this many device ids are tracked for `reconnect` (the listener's connection cap);
    /// beyond it, ids outside their window are forgotten first.
    private let trackedDevices: Int
    private let refusedAcceptRate = Atomic<Int>(0)
    private let refusedHandshakes = Atomic<Int>(0)
    private let refusedPerAddress = Atomic<Int>(0)
    private let refusedReconnects = Atomic<Int>(0)

    init(settings: Settings, trackedDevices: Int) {
        self.current = Mutex(settings)
        self.bucket = Mutex(Bucket(tokens: settings.acceptBurst, last: .now()))
        self.trackedDevices = max(1_024, trackedDevices)
    }

    /// A configuration reload: the new limits apply from the next check on. Connections and
    /// handshakes already counted stay counted (per-address counts are kept even when that
    /// limit is off, so turning it on later counts what is already open).
    func reconfigure(_ settings: Settings) {
        self.current.withLock { $0 = settings }
    }

    /// A new connection: takes a token, or says why not.
    func admitConnection(now: NIODeadline) -> Refusal? {
        let settings = self.settings
        guard settings.acceptRate > 0 else { return nil }
        let admitted = self.bucket.withLock { bucket in
            let elapsed = Double((now - bucket.last).nanoseconds) / 1e9
            bucket.tokens = min(settings.acceptBurst, bucket.tokens + max(0, elapsed) * settings.acceptRate)
            bucket.last = now
            guard bucket.tokens >= 1 else { return false }
            bucket.tokens -= 1
            return true
        }
        if admitted { return nil }
        self.refusedAcceptRate.wrappingAdd(1, ordering: .relaxed)
        return .acceptRate
    }

    /// A TLS handshake starts; false (refused, counted) at `maxHandshakes`. Pair a true answer
    /// with one `handshakeEnded()`.
    func beginHandshake() -> Bool {
        let now = self.handshakes.wrappingAdd(1, ordering: .relaxed).newValue
        let limit = self.settings.maxHandshakes
        guard limit > 0, now > limit else { return true }
        self.handshakes.wrappingSubtract(1, ordering: .relaxed)
        self.refusedHandshakes.wrappingAdd(1, ordering: .relaxed)
        return false
    }

    func handshakeEnded() {
        self.handshakes.wrappingSubtract(1, ordering: .relaxed)
    }

    /// A connection from `host` opens; false (refused, counted) at `maxPerAddress`. Pair a true
    /// answer with one `addressClosed(host)`. Counted also while the limit is off (once per
    /// connection), so a reload that turns it on knows what is open.
    func addressOpened(_ host: String) -> Bool {
        let limit = self.settings.maxPerAddress
        let admitted = self.addresses.withLock { addresses in
            let count = addresses[host, default: 0]
            guard limit == 0 || count < limit else { return false }
            addresses[host] = count + 1
            return true
        }
        if !admitted { self.refusedPerAddress.wrappingAdd(1, ordering: .relaxed) }
        return admitted
    }

    func addressClosed(_ host: String) {
        self.addresses.withLock { addresses in
            let count = addresses[host, default: 0] - 1
            addresses[host] = count > 0 ? count : nil
        }
    }

    /// `deviceID` authenticated: nil to go on, or how long it must wait before reconnecting
    /// (milliseconds). Only authenticated connects count, so nobody can block a device by
    /// sending HELLOs in its name.
    func authenticated(_ deviceID: String, now: NIODeadline) -> UInt32? {
        let settings = self.settings
        guard settings.reconnectMax > 0 else { return nil }
        let wait = self.reconnects.withLock { reconnects -> TimeAmount? in
            if var entry = reconnects[deviceID] {
                if let until = entry.blockedUntil {
                    if now < until { return until - now }
                    entry = Reconnects(count: 0, windowStart: now, blockedUntil: nil)
                }
                if now - entry.windowStart >= settings.reconnectWindow {
                    entry = Reconnects(count: 0, windowStart: now, blockedUntil: nil)
                }
                entry.count += 1
                if entry.count > settings.reconnectMax {
                    entry.blockedUntil = now + settings.reconnectBlock
                    reconnects[deviceID] = entry
                    return settings.reconnectBlock
                }
                reconnects[deviceID] = entry
                return nil
            }
            if reconnects.count >= self.trackedDevices {
                reconnects = reconnects.filter { _, entry in
                    now - entry.windowStart < settings.reconnectWindow || (entry.blockedUntil.map { now < $0 } ?? false)
                }
                // Still full: this id goes untracked (the limit fails open, memory stays bounded).
                if reconnects.count >= self.trackedDevices { return nil }
            }
            reconnects[deviceID] = Reconnects(count: 1, windowStart: now, blockedUntil: nil)
            return nil
        }
        guard let wait else { return nil }
        self.refusedReconnects.wrappingAdd(1, ordering: .relaxed)
        return UInt32(clamping: max(1, wait.nanoseconds / 1_000_000))
    }

    /// Device ids `limits.reconnect` tracks now (tests, diagnostics).
    var trackedReconnects: Int { self.reconnects.withLock { $0.count } }

    /// The host part of `host:port` or `[v6]:port`: what `maxPerAddress` counts by.
    static func host(of address: String) -> String {
        if address.hasPrefix("["), let end = address.firstIndex(of: "]") {
            return String(address[address.index(after: address.startIndex)..<end])
        }
        if let colon = address.lastIndex(of: ":"), address.firstIndex(of: ":") == colon {
            return String(address[..<colon])
        }
        return address
    }

    func collect(into snapshot: inout MetricsSnapshot) {
        for (refusal, count) in [
            (Refusal.acceptRate, self.refusedAcceptRate.load(ordering: .relaxed)),
            (.handshakes, self.refusedHandshakes.load(ordering: .relaxed)),
            (.perAddress, self.refusedPerAddress.load(ordering: .relaxed)),
        ] {
            snapshot.count(
                SeriesKey("terminus_connections_refused_total", ["listener": "device", "reason": refusal.rawValue]),
                count
            )
        }
        snapshot.count(
            SeriesKey("terminus_reconnect_refusals_total"),
            self.refusedReconnects.load(ordering: .relaxed)
        )
        snapshot.gauge(SeriesKey("terminus_tls_handshakes_in_progress"), self.handshakes.load(ordering: .relaxed))
    }
}
