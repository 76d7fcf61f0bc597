#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Which services subscribe to a topic: a trie over filter levels, immutable once built.
///
/// Matching walks the topic's bytes once, following the literal child, the `+` child and
/// collecting `#` subscriptions at each level: O(levels × branching on wildcards), independent
/// of how many filters share no prefix with the topic. Levels compare byte for byte, as MQTT
/// matches (no Unicode normalization: `é` and `e` followed by U+0301 are different levels).
/// Swap a new table in to change routes.
package final class RouteTable: Sendable {
    final class Node: Sendable {
        let literal: LevelMap
        let plus: Node?
        /// Services whose filter ends here.
        let exact: ServiceSet
        /// Services whose filter has `#` right below this node.
        let hash: ServiceSet

        init(literal: LevelMap, plus: Node?, exact: ServiceSet, hash: ServiceSet) {
            self.literal = literal
            self.plus = plus
            self.exact = exact
            self.hash = hash
        }
    }

    /// A mutable node used only while building.
    private final class Builder {
        var literal: [[UInt8]: Builder] = [:]
        var plus: Builder?
        var exact = ServiceSet()
        var hash = ServiceSet()

        func freeze() -> Node {
            Node(
                literal: LevelMap(self.literal.map { ($0.key, $0.value.freeze()) }),
                plus: self.plus?.freeze(),
                exact: self.exact,
                hash: self.hash
            )
        }
    }

    private let root: Node
    package let filterCount: Int

    /// - Parameter routes: (filter, service index < 64) pairs.
    package init(routes: [(TopicFilter, Int)]) {
        let root = Builder()
        for (filter, service) in routes {
            var node = root
            for level in filter.levels {
                if level.utf8.elementsEqual("#".utf8) {
                    node.hash.insert(service)
                    break
                }
                if level.utf8.elementsEqual("+".utf8) {
                    if node.plus == nil { node.plus = Builder() }
                    node = node.plus!
                } else {
                    let key = Array(level.utf8)
                    if node.literal[key] == nil { node.literal[key] = Builder() }
                    node = node.literal[key]!
                }
            }
            if !(filter.levels.last?.utf8.elementsEqual("#".utf8) ?? false) { node.exact.insert(service) }
        }
        self.root = root.freeze()
        self.filterCount = routes.count
    }

    /// The services whose filters match `topic`.
    ///
    /// Walks the topic's UTF-8 bytes in place (no array of levels, no substrings) and looks a
    /// level up only in nodes that have literal children: this runs for every uplink message.
    package func match(_ topic: String) -> ServiceSet {
        if let result = topic.utf8.withContiguousStorageIfAvailable({ self.match(UnsafeRawBufferPointer($0)) }) {
            return result
        }
        return Array(topic.utf8).withUnsafeBytes { self.match($0) }
    }

    private func match(_ topic: UnsafeRawBufferPointer) -> ServiceSet {
        var result = ServiceSet()
        let dollar = topic.first == UInt8(ascii: "$")
        Self.walk(self.root, topic, from: 0, atRoot: true, dollar: dollar, into: &result)
        return result
    }

    /// - Parameter start: the offset in `topic` of the level still to match, the levels after it
    ///   `/`-separated; nil when none are left (`topic.count` is one empty level, as the end of
    ///   `a/`).
    private static func walk(
        _ node: Node,
        _ topic: UnsafeRawBufferPointer,
        from start: Int?,
        atRoot: Bool,
        dollar: Bool,
        into result: inout ServiceSet
    ) {
        // Wildcards at the first level never match `$` topics.
        let wildcardsAllowed = !(atRoot && dollar)
        if wildcardsAllowed { result.formUnion(node.hash) }
        guard let start else {
            result.formUnion(node.exact)
            return
        }
        let hasLiterals = !node.literal.isEmpty
        let hasPlus = wildcardsAllowed && node.plus != nil
        guard hasLiterals || hasPlus else { return }
        var end = start
        while end < topic.count, topic[end] != UInt8(ascii: "/") { end += 1 }
        let rest: Int? = end < topic.count ? end + 1 : nil
        if hasLiterals, let child = node.literal.find(UnsafeRawBufferPointer(rebasing: topic[start..<end])) {
            Self.walk(child, topic, from: rest, atRoot: false, dollar: dollar, into: &result)
        }
        if hasPlus, let plus = node.plus {
            Self.walk(plus, topic, from: rest, atRoot: false, dollar: dollar, into: &result)
        }
    }

    /// The literal children of one node, keyed by a level's bytes: open addressing with linear
    /// probing in a power-of-two table at most half full, built once and then only read (by
    /// every event loop, without locks). Looking a level up hashes its bytes a word at a time
    /// and compares them with `memcmp`, where a `[Substring: Node]` dictionary spent some 1,500
    /// instructions a level on String hashing and comparison.
    ///
    /// The keys are the configuration's filters, so a device's topic can only probe the clusters
    /// those keys made: it cannot make a lookup longer by choosing colliding levels.
    struct LevelMap: Sendable {
        private struct Slot: Sendable {
            var hash: UInt64 = 0
            var offset = 0
            /// -1: an empty slot (an empty level is a key of length 0).
            var length = -1
            var node: Node?
        }

        private let slots: [Slot]
        /// Every key's bytes, one after another (`Slot.offset`, `Slot.length`).
        private let bytes: [UInt8]
        private let mask: Int
        let count: Int

        var isEmpty: Bool { self.count == 0 }

        init(_ entries: [([UInt8], Node)]) {
            self.count = entries.count
            var capacity = 2
            while capacity < 2 * entries.count { capacity *= 2 }
            self.mask = capacity - 1
            var slots = [Slot](repeating: Slot(), count: entries.isEmpty ? 0 : capacity)
            var bytes: [UInt8] = []
            bytes.reserveCapacity(entries.reduce(0) { $0 + $1.0.count })
            for (key, node) in entries {
                let hash = key.withUnsafeBytes { Self.hash($0) }
                var index = Int(truncatingIfNeeded: hash) & self.mask
                while slots[index].length >= 0 { index = (index &+ 1) & self.mask }
                slots[index] = Slot(hash: hash, offset: bytes.count, length: key.count, node: node)
                bytes.append(contentsOf: key)
            }
            self.slots = slots
            self.bytes = bytes
        }

        func find(_ key: UnsafeRawBufferPointer) -> Node? {
            guard self.count > 0 else { return nil }
            let hash = Self.hash(key)
            var index = Int(truncatingIfNeeded: hash) & self.mask
            // At most half full: an empty slot ends every probe.
            while self.slots[index].length >= 0 {
                if self.slots[index].hash == hash, self.slots[index].length == key.count,
                    self.keyEquals(at: self.slots[index].offset, key)
                {
                    return self.slots[index].node
                }
                index = (index &+ 1) & self.mask
            }
            return nil
        }

        private func keyEquals(at offset: Int, _ key: UnsafeRawBufferPointer) -> Bool {
            guard key.count > 0 else { return true }
            return self.bytes.withUnsafeBytes { memcmp($0.baseAddress! + offset, key.baseAddress!, key.count) == 0 }
        }

        /// A multiply-xorshift hash over 8-byte words and a final avalanche (MurmurHash3's
        /// fmix64), seeded with the length.
        static func hash(_ key: UnsafeRawBufferPointer) -> UInt64 {
            var hash = 0x9E37_79B9_7F4A_7C15 &* UInt64(truncatingIfNeeded: key.count &+ 1)
            var offset = 0
            while offset + 8 <= key.count {
                hash = (hash ^ key.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0x9E37_79B9_7F4A_7C15
                hash ^= hash >> 29
                offset += 8
            }
            var tail: UInt64 = 0
            var shift: UInt64 = 0
            while offset < key.count {
                tail |= UInt64(key[offset]) << shift
                shift += 8
                offset += 1
            }
            hash ^= tail
            hash ^= hash >> 33
            hash = hash &* 0xFF51_AFD7_ED55_8CCD
            hash ^= hash >> 33
            hash = hash &* 0xC4CE_B9FE_1A85_EC53
            hash ^= hash >> 33
            return hash
        }
    }
}
