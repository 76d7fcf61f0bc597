/// A configuration problem, naming the key (as a dotted path) that caused it.
public struct ConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The dotted key path, e.g. `device.tls.private_key`; empty for the whole file.
    public var key: String
    public var message: String

    public init(key: String, _ message: String) {
        self.key = key
        self.message = message
    }

    public var description: String { self.key.isEmpty ? self.message : "\(self.key): \(self.message)" }
}
