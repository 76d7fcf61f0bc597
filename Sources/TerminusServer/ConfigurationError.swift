/// A configuration problem, naming the key (as a dotted path) that caused it.
package struct ConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The dotted key path, e.g. `device.tls.private_key`; empty for the whole file.
    package var key: String
    package var message: String

    package init(key: String, _ message: String) {
        self.key = key
        self.message = message
    }

    package var description: String { self.key.isEmpty ? self.message : "\(self.key): \(self.message)" }
}
