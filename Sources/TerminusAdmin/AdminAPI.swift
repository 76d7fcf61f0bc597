internal import Foundation
internal import NIOHTTP1
package import TerminusListeners

/// One connected device as the admin API shows it.
package struct AdminDevice: Sendable, Codable, Equatable {
    package var deviceID: String
    package var clientAddress: String
    package var connectedAtMs: Int64
    package var connectionID: UInt64

    package init(deviceID: String, clientAddress: String, connectedAtMs: Int64, connectionID: UInt64) {
        self.deviceID = deviceID
        self.clientAddress = clientAddress
        self.connectedAtMs = connectedAtMs
        self.connectionID = connectionID
    }

    enum CodingKeys: String, CodingKey {
        case deviceID = "device_id"
        case clientAddress = "client_address"
        case connectedAtMs = "connected_at_ms"
        case connectionID = "connection_id"
    }
}

/// What the admin API (`/admin/…`, behind a bearer token from `admin.tokens_file`) can do:
/// the gateway fills these in. Each runs on the admin listener's own thread.
package struct AdminAPI: Sendable {
    /// Bearer tokens, replaced by a configuration reload; none: every `/admin/…` route answers
    /// 403 (the API is off).
    package let tokens: Reloadable<BearerTokens>
    /// Devices whose id starts with `prefix`, sorted by id, after `after`, at most `limit`.
    package var devices: @Sendable (_ prefix: String, _ after: String?, _ limit: Int) -> [AdminDevice]
    package var device: @Sendable (String) -> AdminDevice?
    /// GOAWAY(KICKED); false when the device is not connected here.
    package var kick: @Sendable (String) -> Bool
    /// Readiness false, the device listener closed, every device told to reconnect elsewhere;
    /// the process keeps running (until SIGTERM).
    package var drain: @Sendable () -> Void
    /// The running configuration as JSON, secrets and tokens redacted.
    package var configuration: @Sendable () -> String
    /// Reloads the configuration file: nil when applied, else why not.
    package var reload: @Sendable () -> String?

    package init(
        tokens: [String],
        devices: @escaping @Sendable (String, String?, Int) -> [AdminDevice],
        device: @escaping @Sendable (String) -> AdminDevice?,
        kick: @escaping @Sendable (String) -> Bool,
        drain: @escaping @Sendable () -> Void,
        configuration: @escaping @Sendable () -> String,
        reload: @escaping @Sendable () -> String?
    ) {
        self.tokens = Reloadable(BearerTokens(tokens))
        self.devices = devices
        self.device = device
        self.kick = kick
        self.drain = drain
        self.configuration = configuration
        self.reload = reload
    }

    /// The most devices one page lists.
    package static let maxPage = 1_000

    /// Answers an `/admin/…` request: status and JSON body.
    func respond(
        method: HTTPMethod,
        path: String,
        query: [String: String],
        authorization: String?
    )
        -> (HTTPResponseStatus, String)
    {
        let tokens = self.tokens.value
        guard !tokens.isEmpty else {
            return (.forbidden, Self.error("the admin API is off: set admin.tokens_file"))
        }
        guard tokens.accepts(authorization: authorization) else {
            return (.unauthorized, Self.error("a valid bearer token is required"))
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).map {
            String($0).removingPercentEncoding ?? String($0)
        }
        switch (method, parts.count > 1 ? Array(parts[1...]) : []) {
        case (.GET, ["devices"]):
            let limit = min(Self.maxPage, max(1, Int(query["limit"] ?? "") ?? 100))
            let page = self.devices(query["prefix"] ?? "", query["after"], limit + 1)
            let shown = Array(page.prefix(limit))
            let next = page.count > limit ? shown.last?.deviceID : nil
            return (.ok, Self.json(DevicePage(devices: shown, next: next)))
        case (.GET, let path) where path.count == 2 && path[0] == "devices":
            guard let device = self.device(path[1]) else { return (.notFound, Self.error("not connected here")) }
            return (.ok, Self.json(device))
        case (.POST, let path) where path.count == 3 && path[0] == "devices" && path[2] == "kick":
            guard self.kick(path[1]) else { return (.notFound, Self.error("not connected here")) }
            return (.ok, #"{"kicked":true}"#)
        case (.POST, ["drain"]):
            self.drain()
            return (.accepted, #"{"draining":true}"#)
        case (.GET, ["config"]):
            return (.ok, self.configuration())
        case (.POST, ["reload"]):
            if let reason = self.reload() {
                return (.unprocessableEntity, #"{"applied":false,"reason":"# + Self.quoted(reason) + "}")
            }
            return (.ok, #"{"applied":true}"#)
        case (.GET, _), (.POST, _):
            return (.notFound, Self.error("no such route"))
        default:
            return (.methodNotAllowed, Self.error("method not allowed"))
        }
    }

    private struct DevicePage: Codable {
        var devices: [AdminDevice]
        var next: String?
    }

    private static func json(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    private static func error(_ message: String) -> String { #"{"error":"# + Self.quoted(message) + "}" }

    static func quoted(_ text: String) -> String {
        let data = (try? JSONEncoder().encode(text)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
