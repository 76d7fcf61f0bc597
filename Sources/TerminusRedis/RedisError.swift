/// Why a Redis call failed: a stable `code` (a struct over a private enum, so codes can be
/// added), a message, and the server's error text or the underlying error.
package struct RedisError: Error, Hashable, Sendable, CustomStringConvertible {
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Hashable, Sendable {
            case connectionFailed = "connection failed"
            case connectionClosed = "connection closed"
            case timeout
            case authentication
            case server
            case protocolViolation = "protocol violation"
            case unavailable
            case tooManyPending = "too many pending commands"
        }

        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The connection could not be made (refused, unresolvable, TLS failed).
        package static let connectionFailed = Code(.connectionFailed)
        /// The connection closed before the answer came (the command may or may not have run).
        package static let connectionClosed = Code(.connectionClosed)
        /// No answer within the command timeout; the connection is closed and remade.
        package static let timeout = Code(.timeout)
        /// `HELLO`/`AUTH` refused: a wrong password or user, or a server that wants one.
        package static let authentication = Code(.authentication)
        /// The server answered with an error (`-ERR …`, `-WRONGTYPE …`).
        package static let server = Code(.server)
        /// The server sent something that is not RESP, or beyond the decoder's limits.
        package static let protocolViolation = Code(.protocolViolation)
        /// The client is between connections (Redis down): commands fail at once, not hang.
        package static let unavailable = Code(.unavailable)
        /// More commands waiting for answers than `maxPending` (the caller is faster than Redis).
        package static let tooManyPending = Code(.tooManyPending)

        package var description: String { self.value.rawValue }
    }

    package var code: Code
    package var message: String

    package init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    package var description: String { "redis \(self.code): \(self.message)" }
}
