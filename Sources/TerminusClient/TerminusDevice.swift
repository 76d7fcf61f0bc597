public import NIOCore
public import TerminusProtocol

/// Keeps one device connected: connects, runs `session` while the connection lives, and
/// reconnects with `Backoff` (or after the gateway's GOAWAY reconnect hint) until cancelled
/// or told never to reconnect.
public struct TerminusDevice: Sendable {
    public enum Event: Sendable {
        case connected(Welcome)
        case disconnected(GoAway?)
        case connectFailed(any Error)
        case waiting(milliseconds: UInt64)
    }

    public var configuration: TerminusClientConfiguration
    public var backoff: Backoff

    public init(configuration: TerminusClientConfiguration, backoff: Backoff = Backoff()) {
        self.configuration = configuration
        self.backoff = backoff
    }

    /// Runs until the task is cancelled, `session` throws, or a GOAWAY says not to reconnect
    /// (refusals such as a bad token also stop: retrying cannot help).
    /// - Returns: the last GOAWAY.
    public func run(
        group: any EventLoopGroup,
        events: @escaping @Sendable (Event) -> Void = { _ in },
        session: @escaping @Sendable (TerminusConnection) async throws -> Void
    ) async throws -> GoAway? {
        var backoff = self.backoff
        var lastGoAway: GoAway?
        while !Task.isCancelled {
            var delay: UInt64
            do {
                let connection = try await TerminusConnection.connect(self.configuration, group: group)
                backoff.reset()
                events(.connected(connection.welcome))
                try await withTaskCancellationHandler {
                    try await session(connection)
                } onCancel: {
                    connection.beginClose()
                }
                let goAway = await connection.closeReason()
                lastGoAway = goAway
                events(.disconnected(goAway))
                if let goAway, goAway.reconnectAfterMilliseconds == WireProtocol.doNotReconnect {
                    return goAway
                }
                delay = goAway.map { UInt64($0.reconnectAfterMilliseconds) } ?? backoff.nextDelayMilliseconds()
            } catch let error as TerminusClientError where error.kind == .refused {
                events(.connectFailed(error))
                if let goAway = error.goAway, Self.isPermanent(goAway.code) { return goAway }
                delay = max(UInt64(error.goAway?.reconnectAfterMilliseconds ?? 0), backoff.nextDelayMilliseconds())
            } catch let error as TerminusClientError {
                events(.connectFailed(error))
                delay = backoff.nextDelayMilliseconds()
            }
            if Task.isCancelled { break }
            events(.waiting(milliseconds: delay))
            try? await Task.sleep(for: .milliseconds(Int64(min(delay, UInt64(Int64.max)))))
        }
        return lastGoAway
    }

    /// Refusals that a retry with the same credentials cannot fix.
    static func isPermanent(_ code: TerminusCode) -> Bool {
        switch code {
        case .authenticationFailed, .tokenExpired, .certificateRequired, .invalidDeviceID, .unsupportedVersion:
            true
        default:
            false
        }
    }
}
