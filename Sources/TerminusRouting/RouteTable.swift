/// Which services subscribe to a topic: a trie over filter levels, immutable once built.
///
/// Matching walks the topic's levels once, following the literal child, the `+` child and
/// collecting `#` subscriptions at each level: O(levels × branching on wildcards), independent
/// of how many filters share no prefix with the topic. Swap a new table in to change routes.
package final class RouteTable: Sendable {
    final class Node: Sendable {
        let literal: [Substring: Node]
        let plus: Node?
        /// Services whose filter ends here.
        let exact: ServiceSet
        /// Services whose filter has `#` right below this node.
        let hash: ServiceSet

        init(literal: [Substring: Node], plus: Node?, exact: ServiceSet, hash: ServiceSet) {
            self.literal = literal
            self.plus = plus
            self.exact = exact
            self.hash = hash
        }
    }

    /// A mutable node used only while building.
    private final class Builder {
        var literal: [Substring: Builder] = [:]
        var plus: Builder?
        var exact = ServiceSet()
        var hash = ServiceSet()

        func freeze() -> Node {
            Node(
                literal: self.literal.mapValues { $0.freeze() },
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
                if level == "#" {
                    node.hash.insert(service)
                    break
                }
                if level == "+" {
                    if node.plus == nil { node.plus = Builder() }
                    node = node.plus!
                } else {
                    if node.literal[level] == nil { node.literal[level] = Builder() }
                    node = node.literal[level]!
                }
            }
            if filter.levels.last != "#" { node.exact.insert(service) }
        }
        self.root = root.freeze()
        self.filterCount = routes.count
    }

    /// The services whose filters match `topic`.
    ///
    /// Walks the topic's levels in place (no array of levels), and looks a level up only in
    /// nodes that have literal children: this runs for every uplink message.
    package func match(_ topic: String) -> ServiceSet {
        var result = ServiceSet()
        let dollar = topic.utf8.first == UInt8(ascii: "$")
        Self.walk(self.root, topic[...], atRoot: true, dollar: dollar, into: &result)
        return result
    }

    /// - Parameter levels: the levels still to match, `/`-separated; nil when none are left
    ///   (an empty substring is one empty level, as in `a//b` or `a/`).
    private static func walk(
        _ node: Node,
        _ levels: Substring?,
        atRoot: Bool,
        dollar: Bool,
        into result: inout ServiceSet
    ) {
        // Wildcards at the first level never match `$` topics.
        let wildcardsAllowed = !(atRoot && dollar)
        if wildcardsAllowed { result.formUnion(node.hash) }
        guard let levels else {
            result.formUnion(node.exact)
            return
        }
        let hasLiterals = !node.literal.isEmpty
        let hasPlus = wildcardsAllowed && node.plus != nil
        guard hasLiterals || hasPlus else { return }
        let slash = Self.firstSlash(in: levels)
        let rest: Substring? = slash.map { levels[levels.utf8.index(after: $0)...] }
        if hasLiterals, let child = node.literal[slash.map { levels[..<$0] } ?? levels] {
            Self.walk(child, rest, atRoot: false, dollar: dollar, into: &result)
        }
        if hasPlus, let plus = node.plus {
            Self.walk(plus, rest, atRoot: false, dollar: dollar, into: &result)
        }
    }

    /// The index of the first `/` in `levels`: a scan of its contiguous bytes (a few
    /// instructions a byte, where stepping through the UTF-8 view's indices costs tens).
    private static func firstSlash(in levels: Substring) -> Substring.Index? {
        let offset = levels.utf8.withContiguousStorageIfAvailable { $0.firstIndex(of: UInt8(ascii: "/")) }
        guard let offset else { return levels.utf8.firstIndex(of: UInt8(ascii: "/")) }
        return offset.map { levels.utf8.index(levels.startIndex, offsetBy: $0) }
    }
}
