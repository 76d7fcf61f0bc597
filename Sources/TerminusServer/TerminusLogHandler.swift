internal import Foundation
package import Logging
internal import Synchronization

#if canImport(Glibc)
internal import Glibc
#endif

/// The gateway's log lines (`log.format`): `text` for people, `json` for a log pipeline.
///
/// - `text`: `2026-12-04T11:22:25.123Z info terminus: device connected client=10.0.0.7:51234 device=printer-1`;
///   a value with a space, a quote, `=` or nothing at all is quoted (`reason="gateway is draining"`).
/// - `json`: one object per line: `time` (RFC 3339, UTC, milliseconds), `level`, `logger`,
///   `message`, then each metadata key (a key that would shadow one of those four gets a
///   `meta_` prefix). Nested metadata stays nested.
///
/// Each line is written whole with one `write(2)` to standard error (or to `LogLines.capture`
/// in tests). Nothing here reads the source file or line: no build path reaches a log.
package struct TerminusLogHandler: LogHandler {
    package enum Format: String, Sendable, CaseIterable {
        case text
        case json
    }

    package let label: String
    package let format: Format
    package var logLevel: Logger.Level
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?
    private let output: LogLines

    package init(label: String, format: Format, level: Logger.Level, output: LogLines = .standardError) {
        self.label = label
        self.format = format
        self.logLevel = level
        self.output = output
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var merged = self.metadata
        if let provided = self.metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let metadata = event.metadata { merged.merge(metadata) { $1 } }
        let line =
            switch self.format {
            case .text: Self.text(event, merged, label: self.label)
            case .json: Self.json(event, merged, label: self.label)
            }
        self.output.write(line)
    }

    // MARK: Rendering

    static func text(_ event: LogEvent, _ metadata: Logger.Metadata, label: String) -> String {
        var line = "\(Self.timestamp()) \(event.level) \(label): \(event.message)"
        for key in metadata.keys.sorted() {
            line += " \(key)=\(Self.textValue(metadata[key]!))"
        }
        return line + "\n"
    }

    static func json(_ event: LogEvent, _ metadata: Logger.Metadata, label: String) -> String {
        var line = #"{"time":"\#(Self.timestamp())","level":"\#(event.level)","logger":"#
        line += Self.jsonString(label) + #","message":"# + Self.jsonString("\(event.message)")
        for key in metadata.keys.sorted() {
            let name = ["time", "level", "logger", "message"].contains(key) ? "meta_" + key : key
            line += "," + Self.jsonString(name) + ":" + Self.jsonValue(metadata[key]!)
        }
        return line + "}\n"
    }

    private static func textValue(_ value: Logger.MetadataValue) -> String {
        let text = "\(value)"
        let plain = !text.isEmpty && !text.contains { $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline }
        if plain { return text }
        var quoted = "\""
        for character in text {
            switch character {
            case "\"": quoted += "\\\""
            case "\\": quoted += "\\\\"
            case "\n": quoted += "\\n"
            case "\r": quoted += "\\r"
            default: quoted.append(character)
            }
        }
        return quoted + "\""
    }

    private static func jsonValue(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let string): Self.jsonString(string)
        case .stringConvertible(let convertible): Self.jsonString(convertible.description)
        case .array(let values): "[" + values.map(Self.jsonValue).joined(separator: ",") + "]"
        case .dictionary(let dictionary):
            "{"
                + dictionary.keys.sorted().map { Self.jsonString($0) + ":" + Self.jsonValue(dictionary[$0]!) }
                .joined(separator: ",") + "}"
        }
    }

    static func jsonString(_ string: String) -> String {
        var out = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out +=
                    "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
                    + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Now, RFC 3339 in UTC with milliseconds: `2026-12-04T11:22:25.123Z`.
    static func timestamp() -> String {
        Date().formatted(Self.rfc3339)
    }

    private static let rfc3339 = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)
}

/// Where log lines go: standard error, or an in-memory capture (tests).
package final class LogLines: Sendable {
    private let capturing: Bool
    private let captured = Mutex<[String]>([])

    private init(capturing: Bool) {
        self.capturing = capturing
    }

    package static let standardError = LogLines(capturing: false)

    /// Keeps every line in memory (`lines`).
    package static func capture() -> LogLines { LogLines(capturing: true) }

    package var lines: [String] { self.captured.withLock { $0 } }

    func write(_ line: String) {
        if self.capturing {
            self.captured.withLock { $0.append(line) }
            return
        }
        var line = line
        line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(2, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += written
            }
        }
    }
}
