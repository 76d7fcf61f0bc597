/// Device secrets: one per device id, or one per device-id prefix (a device class).
///
/// Lookup takes the exact id first, then the longest matching prefix. Immutable: a
/// configuration reload builds a new store and swaps it in whole.
package struct SecretStore: Sendable {
    private let exact: [String: [UInt8]]
    /// Sorted longest first.
    private let prefixes: [(prefix: String, secret: [UInt8])]

    package init(devices: [String: [UInt8]] = [:], prefixes: [String: [UInt8]] = [:]) {
        self.exact = devices
        self.prefixes = prefixes.map { (prefix: $0.key, secret: $0.value) }
            .sorted { $0.prefix.utf8.count > $1.prefix.utf8.count }
    }

    package var isEmpty: Bool { self.exact.isEmpty && self.prefixes.isEmpty }

    /// Entries: device ids and prefixes.
    package var count: Int { self.exact.count + self.prefixes.count }

    package func secret(for deviceID: String) -> [UInt8]? {
        if let secret = self.exact[deviceID] { return secret }
        for entry in self.prefixes where deviceID.utf8.starts(with: entry.prefix.utf8) {
            return entry.secret
        }
        return nil
    }
}
