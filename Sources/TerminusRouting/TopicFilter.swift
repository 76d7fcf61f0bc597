/// An MQTT-style topic filter: levels separated by `/`, `+` matching exactly one level, `#`
/// (last level only) matching any number of levels, including none.
///
/// Topics starting with `$` (gateway events such as `$terminus/events/connected`) are matched
/// only by filters whose first level is spelled out, never by a leading `+` or `#` (as in MQTT).
package struct TopicFilter: Hashable, Sendable, CustomStringConvertible {
    package struct Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        package var filter: String
        package var reason: String
        package var description: String { "invalid topic filter '\(self.filter)': \(self.reason)" }
    }

    package let text: String
    let levels: [Substring]

    package init(_ text: String) throws(Invalid) {
        guard !text.isEmpty else { throw Invalid(filter: text, reason: "empty") }
        guard text.utf8.count <= 65_535 else { throw Invalid(filter: text, reason: "too long") }
        // Levels and wildcards are found by their bytes, as `RouteTable.match` walks topics: a
        // '/' or '#' followed by a combining mark is still a separator or a wildcard (found by
        // fuzzing: splitting by Characters kept "a/\u{301}b" whole and accepted "#\u{301}").
        var levels: [Substring] = []
        var rest = text[...]
        while let slash = rest.utf8.firstIndex(of: UInt8(ascii: "/")) {
            levels.append(rest[..<slash])
            rest = rest[rest.utf8.index(after: slash)...]
        }
        levels.append(rest)
        for (index, level) in levels.enumerated() {
            let bytes = level.utf8
            if bytes.elementsEqual("#".utf8) {
                guard index == levels.count - 1 else {
                    throw Invalid(filter: text, reason: "'#' must be the last level")
                }
            } else if !bytes.elementsEqual("+".utf8)
                && bytes.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") })
            {
                throw Invalid(filter: text, reason: "'+' and '#' must occupy a whole level")
            }
            if bytes.contains(0) { throw Invalid(filter: text, reason: "NUL") }
        }
        self.text = text
        self.levels = levels
    }

    package var description: String { self.text }

    /// Matches one topic (used by tests; the route table matches many filters at once).
    package func matches(_ topic: String) -> Bool {
        let table = RouteTable(routes: [(self, 0)])
        return table.match(topic).contains(0)
    }
}

/// A set of service indices (at most 64 services), so matching allocates nothing.
package struct ServiceSet: Hashable, Sendable, Sequence {
    package private(set) var bits: UInt64 = 0

    package init() {}

    package static let capacity = 64

    package var isEmpty: Bool { self.bits == 0 }
    package var count: Int { self.bits.nonzeroBitCount }

    /// The one service in the set, when it holds exactly one.
    package var only: Int? { self.count == 1 ? self.bits.trailingZeroBitCount : nil }

    package func contains(_ index: Int) -> Bool {
        index >= 0 && index < Self.capacity && self.bits & (1 << UInt64(index)) != 0
    }

    package mutating func insert(_ index: Int) {
        precondition(index >= 0 && index < Self.capacity)
        self.bits |= 1 << UInt64(index)
    }

    package mutating func formUnion(_ other: ServiceSet) {
        self.bits |= other.bits
    }

    package func makeIterator() -> Iterator {
        Iterator(remaining: self.bits)
    }

    /// Walks the set bits lowest first; a plain struct, so iterating allocates nothing.
    package struct Iterator: IteratorProtocol, Sendable {
        var remaining: UInt64

        package mutating func next() -> Int? {
            guard self.remaining != 0 else { return nil }
            let index = self.remaining.trailingZeroBitCount
            self.remaining &= self.remaining - 1
            return index
        }
    }
}
