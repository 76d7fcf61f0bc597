import TerminusRouting
import TerminusTestSupport
import Testing

@Suite("Topic filters and the route table")
struct RouteTableTests {
    @Test(
        "MQTT matching rules",
        arguments: [
            ("pay/done", "pay/done", true),
            ("pay/done", "pay/done/x", false),
            ("pay/+", "pay/done", true),
            ("pay/+", "pay", false),
            ("pay/+", "pay/a/b", false),
            ("+/done", "pay/done", true),
            ("pay/#", "pay", true),
            ("pay/#", "pay/a/b/c", true),
            ("#", "anything/at/all", true),
            ("+/+/status", "printer/7/status", true),
            ("+/+/status", "printer/status", false),
            ("pay//x", "pay//x", true),
            ("#", "$terminus/events/connected", false),
            ("+/events/connected", "$terminus/events/connected", false),
            ("$terminus/events/+", "$terminus/events/connected", true),
            ("$terminus/#", "$terminus/events/disconnected", true),
        ]
    )
    func matching(filter: String, topic: String, expected: Bool) throws {
        #expect(try TopicFilter(filter).matches(topic) == expected)
    }

    @Test("the route table agrees with a level-by-level reference matcher, empty levels and $ topics included")
    func tableAgreesWithFilters() throws {
        let filters = [
            "pay/done", "pay/+", "+/done", "pay/#", "#", "+/+/status", "pay//x", "+/events/connected",
            "$terminus/events/+", "$terminus/#", "pay/+/#", "+", "+/", "/+", "a/", "/a", "+/+",
        ]
        let topics = [
            "pay/done", "pay/done/x", "pay", "pay/a/b", "printer/7/status", "printer/status", "pay//x", "pay/",
            "/pay", "/", "a/", "/a", "a", "$terminus/events/connected", "$terminus/events/disconnected", "$x",
            "a//", "//",
        ]
        let parsed = try filters.map { try TopicFilter($0) }
        let table = RouteTable(routes: parsed.enumerated().map { ($1, $0) })
        for topic in topics {
            var expected = ServiceSet()
            for (index, filter) in filters.enumerated() where referenceMatches(filter: filter, topic: topic) {
                expected.insert(index)
            }
            #expect(table.match(topic) == expected, "\(topic)")
            for (index, filter) in parsed.enumerated() {
                #expect(filter.matches(topic) == expected.contains(index), "\(filter) on \(topic)")
            }
        }
    }

    @Test("levels compare byte for byte, as MQTT: canonically equivalent spellings are different levels")
    func byteForByte() throws {
        let composed = "caf\u{E9}/x"
        let decomposed = "cafe\u{301}/x"
        #expect(composed == decomposed, "Swift strings compare them equal")
        let table = RouteTable(routes: [(try TopicFilter(composed), 0), (try TopicFilter("cafe\u{301}/+"), 1)])
        #expect(Array(table.match(composed)) == [0])
        #expect(Array(table.match(decomposed)) == [1])
        #expect(table.match("CAF\u{C9}/x").isEmpty)
    }

    @Test("random filters and topics over a small alphabet agree with the reference matcher")
    func randomAgreement() throws {
        // Few distinct levels, so that filters and topics share prefixes, wildcards and empty
        // levels often; a fixed seed, so that a failure repeats.
        var random = SeededGenerator(state: 0x7E57_2026)
        let levels = ["a", "b", "", "ab", "$x", "tenant-4821", "0123456789abcdef", "\u{E9}"]
        func pick(_ wildcards: Bool) -> String {
            let count = 1 + Int(random.next() % 4)
            var parts: [String] = []
            for index in 0..<count {
                let roll = random.next() % 10
                if wildcards, roll == 0 {
                    parts.append("+")
                } else if wildcards, roll == 1, index == count - 1 {
                    parts.append("#")
                } else {
                    parts.append(levels[Int(random.next() % UInt64(levels.count))])
                }
            }
            // An empty filter is refused; "/" is two empty levels.
            let text = parts.joined(separator: "/")
            return wildcards && text.isEmpty ? "/" : text
        }
        for _ in 0..<200 {
            let filters = (0..<Int(1 + random.next() % 64)).map { _ in pick(true) }
            let table = RouteTable(routes: try filters.enumerated().map { (try TopicFilter($1), $0) })
            for _ in 0..<20 {
                let topic = pick(false)
                var expected = ServiceSet()
                for (index, filter) in filters.enumerated() where referenceMatches(filter: filter, topic: topic) {
                    expected.insert(index)
                }
                #expect(table.match(topic) == expected, "\(topic) against \(filters)")
            }
        }
    }

    @Test("fuzz regressions: a '/' or '#' followed by a combining mark is still a separator or a wildcard")
    func combiningMarks() throws {
        // Fuzz/Regressions/fuzz-topic-filter/hash-with-combining-mark
        #expect(throws: TopicFilter.Invalid.self) { try TopicFilter("#\u{301}") }
        #expect(throws: TopicFilter.Invalid.self) { try TopicFilter("a/+\u{301}") }
        // Fuzz/Regressions/fuzz-topic-filter/slash-before-combining-mark
        let filter = try TopicFilter("a/\u{301}b")
        #expect(filter.matches("a/\u{301}b"))
        #expect(!filter.matches("a"))
        let plus = try TopicFilter("a/+")
        #expect(plus.matches("a/\u{301}b"))
    }

    @Test("invalid filters are refused", arguments: ["", "a/#/b", "a+/b", "a/b#", "a/\u{0}"])
    func invalid(filter: String) {
        #expect(throws: TopicFilter.Invalid.self) { _ = try TopicFilter(filter) }
    }

    @Test("a message goes to every service with a matching filter, once per service")
    func fanOut() throws {
        let table = RouteTable(routes: [
            (try TopicFilter("pay/#"), 0),
            (try TopicFilter("pay/done"), 0),
            (try TopicFilter("+/done"), 1),
            (try TopicFilter("printer/+/status"), 2),
        ])
        #expect(Array(table.match("pay/done")) == [0, 1])
        #expect(Array(table.match("printer/9/status")) == [2])
        #expect(table.match("speaker/volume").isEmpty)
        #expect(table.match("pay/done").count == 2)
    }

    @Test("10,000 filters: matches agree with the filters one by one")
    func manyFilters() throws {
        var routes: [(TopicFilter, Int)] = []
        for index in 0..<10_000 {
            let service = index % 64
            let filter: String
            switch index % 4 {
            case 0: filter = "tenant\(index)/+/status"
            case 1: filter = "tenant\(index)/#"
            case 2: filter = "+/device\(index)/events"
            default: filter = "tenant\(index)/device/\(index)"
            }
            routes.append((try TopicFilter(filter), service))
        }
        let table = RouteTable(routes: routes)
        #expect(table.filterCount == 10_000)
        for topic in [
            "tenant1/a/b", "tenant4/x/status", "t/device2/events", "tenant3/device/3", "none/here",
            "tenant9999/device/9999", "tenant9998/x/status", "tenant9997", "tenant10000/device/10000",
        ] {
            var expected = ServiceSet()
            for (filter, service) in routes where referenceMatches(filter: filter.text, topic: topic) {
                expected.insert(service)
            }
            #expect(table.match(topic) == expected, "\(topic)")
        }
    }

    @Test("a service set names its only member, and none when it holds none or several")
    func onlyMember() {
        var set = ServiceSet()
        #expect(set.only == nil)
        for service in [0, 1, 37, 63] {
            var one = ServiceSet()
            one.insert(service)
            #expect(one.only == service)
        }
        set.insert(5)
        set.insert(63)
        #expect(set.only == nil)
        #expect(Array(set) == [5, 63])
    }
}

/// MQTT matching written from the rules alone, level by level over byte arrays: the reference
/// the trie is checked against (`TopicFilter.matches` is the trie itself, with one filter).
private func referenceMatches(filter: String, topic: String) -> Bool {
    func levels(_ text: String) -> [[UInt8]] {
        Array(text.utf8).split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map(Array.init)
    }
    let filter = levels(filter)
    let topic = levels(topic)
    if topic[0].first == UInt8(ascii: "$"), filter[0] == Array("+".utf8) || filter[0] == Array("#".utf8) {
        return false
    }
    for (index, level) in filter.enumerated() {
        if level == Array("#".utf8) { return true }
        guard index < topic.count else { return false }
        if level != Array("+".utf8), level != topic[index] { return false }
    }
    return filter.count == topic.count
}
