/// Topic rules of wire protocol v1 (`docs/protocol.md`, "Topics").
public enum Topic {
    /// Topics starting with this prefix are reserved for gateway events; devices cannot
    /// publish to them.
    public static let reservedPrefix: Character = "$"

    /// Checks a topic a device publishes to. The string is already valid UTF-8.
    public static func validatePublishTopic(_ topic: String, maxLength: Int) throws(ProtocolError) {
        let utf8 = topic.utf8
        guard !utf8.isEmpty else { throw ProtocolError(.invalidTopic, "empty topic") }
        guard utf8.count <= maxLength else {
            throw ProtocolError(.invalidTopic, "topic of \(utf8.count) bytes exceeds \(maxLength)")
        }
        guard utf8.first != UInt8(ascii: "$") else {
            throw ProtocolError(.invalidTopic, "topics starting with '$' are reserved")
        }
        // Control characters (C0, DEL, C1) would forge lines and escape sequences in logs and in
        // every consumer that prints topics: they are not valid in a topic. Over the string's
        // contiguous bytes when it has them (a native string always does): the UTF-8 view's
        // iterator cost about 40 instructions a byte (callgrind), this loop a few.
        let problem =
            utf8.withContiguousStorageIfAvailable { Self.publishTopicProblem($0) }
            ?? Self.publishTopicProblem(utf8)
        if let problem { throw ProtocolError(.invalidTopic, problem) }
    }

    private static func publishTopicProblem(_ bytes: some Sequence<UInt8>) -> String? {
        var previous: UInt8 = 0
        for byte in bytes {
            if byte == UInt8(ascii: "+") || byte == UInt8(ascii: "#") {
                return "topic contains a wildcard"
            }
            if byte < 0x20 || byte == 0x7F || (previous == 0xC2 && byte >= 0x80 && byte <= 0x9F) {
                return "topic contains a control character"
            }
            previous = byte
        }
        return nil
    }

    /// Checks a device id: 1…`maxLength` bytes of printable ASCII without spaces or '/'.
    public static func validateDeviceID(_ id: String, maxLength: Int) throws(ProtocolError) {
        let utf8 = id.utf8
        guard !utf8.isEmpty, utf8.count <= maxLength else {
            throw ProtocolError(.invalidDeviceID, "device id must be 1…\(maxLength) bytes")
        }
        for byte in utf8 where byte <= 0x20 || byte >= 0x7F || byte == UInt8(ascii: "/") {
            throw ProtocolError(.invalidDeviceID, "device id must be printable ASCII without spaces or '/'")
        }
    }
}
