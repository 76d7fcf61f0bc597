internal import Logging
internal import NIOCore
internal import NIOSSL
internal import Synchronization
internal import TerminusLeanTLS
internal import TerminusListeners
internal import TerminusSessions

/// State shared by every connection of one device listener. Immutable but for counters.
final class EdgeShared: Sendable {
    let settings: EdgeSettings
    /// Replaced by a configuration reload (new device secrets): read once per HELLO.
    let authenticator: Reloadable<DeviceAuthenticator>
    /// The device listener's TLS context, replaced by a reload (a renewed certificate): read
    /// once per accepted connection, so sessions keep the one they shook hands with.
    let tlsContext: Reloadable<NIOSSLContext>?
    /// The lean engine's OpenSSL context, when the listener uses it instead; replaced the same way.
    let leanContext: Reloadable<LeanTLSServerContext>?
    /// `limits.rate`, replaced by a reload: read once per connection, so a session keeps the
    /// rates it started with.
    let rateLimits: Reloadable<UplinkRateLimits>
    let directory: any SessionDirectory
    let logger: Logger
    let contexts: EdgeLoopContexts
    let usesTLS: Bool
    /// Client certificates are verified, so a presented certificate names the device.
    let readsClientCertificates: Bool
    private let nextConnectionID = Atomic<UInt64>(1)
    /// Drawn when the listener is made: with the connection id and the connection's sequence
    /// it makes each message's `delivery_id` unique across processes and restarts.
    let epoch = UInt64.random(in: 1...UInt64.max)
    let openConnections = Atomic<Int>(0)
    /// Times a device's reads were paused because its inflight window was full.
    let readPauses = Atomic<Int>(0)
    /// Messages refused for a device's rate (QoS 1 answered `RATE_LIMITED`, QoS 0 dropped).
    let rateLimited = Atomic<Int>(0)
    /// QoS 0 messages dropped because their device already had `max_pending` uplinks waiting.
    let droppedQoS0 = Atomic<Int>(0)
    /// Times a device's output stopped draining (its reads were paused).
    let outputStalls = Atomic<Int>(0)
    /// Transport-level close lines (resets, TLS failures, timeouts before HELLO): one flood of
    /// them must not drown the log.
    let transportLog = LogThrottle(linesPerSecond: 20)
    let acceptFailures = Atomic<Int>(0)
    /// Connections refused at `max_connections` (`SERVER_BUSY`) before any session existed.
    let refusedAtCap = Atomic<Int>(0)
    let authThrottle: AuthenticationThrottle
    let admission: AdmissionControl
    private let acceptLog = LogThrottle(linesPerSecond: 1)

    init(
        settings: EdgeSettings,
        authenticator: DeviceAuthenticator,
        tlsContext: NIOSSLContext? = nil,
        leanContext: LeanTLSServerContext? = nil,
        directory: any SessionDirectory,
        logger: Logger,
        contexts: EdgeLoopContexts,
        usesTLS: Bool,
        readsClientCertificates: Bool
    ) {
        self.settings = settings
        self.authenticator = Reloadable(authenticator)
        self.tlsContext = tlsContext.map { Reloadable($0) }
        self.leanContext = leanContext.map { Reloadable($0) }
        self.rateLimits = Reloadable(settings.rateLimits)
        self.directory = directory
        self.logger = logger
        self.contexts = contexts
        self.usesTLS = usesTLS
        self.readsClientCertificates = readsClientCertificates
        self.authThrottle = AuthenticationThrottle(settings: settings.authThrottle)
        self.admission = AdmissionControl(settings: settings.admission, trackedDevices: settings.maxConnections)
    }

    /// An accept failed: count it and log at most once a second (the listener then pauses for
    /// `limits.accept_backoff`). Called on the listener's event loop.
    func acceptFailed(_ error: IOError) {
        let failures = self.acceptFailures.wrappingAdd(1, ordering: .relaxed).newValue
        let (log, suppressed) = self.acceptLog.admit(nowSeconds: NIODeadline.now().uptimeNanoseconds / 1_000_000_000)
        if log {
            self.logger.error(
                "accepting a device connection failed; backing off",
                metadata: [
                    "error": "\(error)", "backoff_ms": "\(self.settings.acceptBackoff.nanoseconds / 1_000_000)",
                    "open_connections": "\(self.openConnections.load(ordering: .relaxed))",
                    "failures_total": "\(failures)", "suppressed_before": "\(suppressed)",
                ]
            )
        }
    }

    func makeConnectionID() -> UInt64 {
        self.nextConnectionID.wrappingAdd(1, ordering: .relaxed).oldValue
    }
}
