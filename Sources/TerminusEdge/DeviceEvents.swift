/// Reserved topics on which the gateway publishes device lifecycle events (QoS 0, JSON payload:
/// `device_id`, `client_address`, `gateway_instance`, `at_unix_ms`, and `code` on disconnect).
/// Devices cannot publish to `$` topics; backends subscribe with filters that spell out
/// `$terminus` (a leading `#` or `+` does not match them).
package enum DeviceEvents {
    package static let connected = "$terminus/events/connected"
    package static let disconnected = "$terminus/events/disconnected"

    /// Device ids are printable ASCII, which includes `"` and `\\`: escape them for JSON.
    static func jsonEscaped(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else { return text }
        var escaped = ""
        for character in text {
            if character == "\"" || character == "\\" { escaped.append("\\") }
            escaped.append(character)
        }
        return escaped
    }
}
