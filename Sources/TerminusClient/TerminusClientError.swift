public import TerminusProtocol

/// Why a client operation failed.
public struct TerminusClientError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// The gateway refused the session (GOAWAY before WELCOME), e.g. a bad token.
        case refused
        /// The connection closed before the operation completed.
        case connectionClosed
        /// No answer in time.
        case timeout
        /// The gateway sent something this client does not understand.
        case protocolViolation
        /// Compression of the payload failed.
        case compression
    }

    public var kind: Kind
    /// The gateway's GOAWAY, when one arrived.
    public var goAway: GoAway?
    public var message: String

    public init(_ kind: Kind, goAway: GoAway? = nil, _ message: String) {
        self.kind = kind
        self.goAway = goAway
        self.message = message
    }

    public var description: String {
        if let goAway { return "\(self.kind): \(goAway.code.name) \(goAway.message)".trimmingSuffix() }
        return "\(self.kind): \(self.message)"
    }
}

extension String {
    fileprivate func trimmingSuffix() -> String {
        var copy = self
        while copy.last == " " { copy.removeLast() }
        return copy
    }
}
