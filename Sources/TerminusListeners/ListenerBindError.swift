internal import NIOCore

/// A listener could not bind its address: names the listener, the address and the reason in
/// words (`address already in use` rather than errno 98), and the setting that moves it.
package struct ListenerBindError: Error, CustomStringConvertible {
    package var listener: String
    package var address: String
    package var setting: String
    package var cause: any Error

    package init(listener: String, host: String, port: Int, setting: String, cause: any Error) {
        self.listener = listener
        self.address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        self.setting = setting
        self.cause = cause
    }

    package var description: String {
        var reason = "\(self.cause)"
        if let io = self.cause as? IOError {
            switch io.errnoCode {
            case 98: reason = "the address is already in use (another process listens there)"
            case 99: reason = "the address is not one of this host's"
            case 13: reason = "permission denied (ports below 1024 need privileges)"
            default: break
            }
        }
        return "the \(self.listener) listener cannot bind \(self.address): \(reason); set \(self.setting)"
    }

    /// Runs `bind`, turning its failure into a `ListenerBindError`.
    package static func binding<Result>(
        _ listener: String,
        host: String,
        port: Int,
        setting: String,
        _ bind: () async throws -> Result
    ) async throws -> Result {
        do {
            return try await bind()
        } catch {
            throw ListenerBindError(listener: listener, host: host, port: port, setting: setting, cause: error)
        }
    }
}
