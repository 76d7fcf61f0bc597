/// A violation of wire protocol v1 found while decoding or processing a frame.
///
/// The gateway answers it with `GOAWAY(code)` and closes the connection.
public struct ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    public var code: TerminusCode
    public var message: String

    public init(_ code: TerminusCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.name): \(self.message)" }
}
