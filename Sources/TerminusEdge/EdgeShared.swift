internal import Logging
internal import Synchronization
internal import TerminusSessions

/// State shared by every connection of one device listener. Immutable but for counters.
final class EdgeShared: Sendable {
    let settings: EdgeSettings
    let authenticator: DeviceAuthenticator
    let directory: any SessionDirectory
    let logger: Logger
    let contexts: EdgeLoopContexts
    let usesTLS: Bool
    /// Client certificates are verified, so a presented certificate names the device.
    let readsClientCertificates: Bool
    private let nextConnectionID = Atomic<UInt64>(1)
    let openConnections = Atomic<Int>(0)
    /// Times a device's reads were paused because its inflight window was full.
    let readPauses = Atomic<Int>(0)

    init(
        settings: EdgeSettings,
        authenticator: DeviceAuthenticator,
        directory: any SessionDirectory,
        logger: Logger,
        contexts: EdgeLoopContexts,
        usesTLS: Bool,
        readsClientCertificates: Bool
    ) {
        self.settings = settings
        self.authenticator = authenticator
        self.directory = directory
        self.logger = logger
        self.contexts = contexts
        self.usesTLS = usesTLS
        self.readsClientCertificates = readsClientCertificates
    }

    func makeConnectionID() -> UInt64 {
        self.nextConnectionID.wrappingAdd(1, ordering: .relaxed).oldValue
    }
}
