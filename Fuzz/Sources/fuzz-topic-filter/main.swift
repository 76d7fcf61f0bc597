// Parses topic filters and a topic from the input, builds a RouteTable from the valid filters and
// compares RouteTable.match with a naive matcher written from the rules in TopicFilter's and
// RouteTable's documentation.
//
// Input: newline-separated UTF-8 (invalid sequences repaired); every line but the last is a
// filter (at most 64, service index = line number), the last line is the topic.
//
// Checks: validation follows the documented rules ('#' only as the last level, '+' and '#' only
// as whole levels, no NUL, not empty); match == naive for the table and for each filter alone;
// a valid filter without wildcards matches its own text as a topic.
import TerminusRouting

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    let lines = input.split(separator: 0x0A, maxSplits: 64, omittingEmptySubsequences: false)
    let topic = String(decoding: lines.last!, as: UTF8.self)
    var routes: [(TopicFilter, Int)] = []
    for (index, line) in lines.dropLast().enumerated() {
        let text = String(decoding: line, as: UTF8.self)
        let filter = try? TopicFilter(text)
        precondition((filter != nil) == naiveIsValid(text), "TopicFilter(\(debug(text))) validity differs")
        guard let filter else { continue }
        precondition(filter.text == text)
        routes.append((filter, index))
        if !text.utf8.contains(UInt8(ascii: "+")) && !text.utf8.contains(UInt8(ascii: "#")) {
            precondition(filter.matches(text), "filter \(debug(text)) does not match itself")
        }
        precondition(
            filter.matches(topic) == naiveMatches(filter: text, topic: topic),
            "filter \(debug(text)) on topic \(debug(topic)): matches \(filter.matches(topic))"
        )
    }
    let table = RouteTable(routes: routes)
    precondition(table.filterCount == routes.count)
    var expected = ServiceSet()
    for (filter, index) in routes where naiveMatches(filter: filter.text, topic: topic) {
        expected.insert(index)
    }
    let matched = table.match(topic)
    precondition(matched == expected, "topic \(debug(topic)): matched \(Array(matched)), expected \(Array(expected))")
    return 0
}

/// Levels split at every '/' byte (a '/' is one byte in UTF-8, whatever follows it).
private func levels(_ text: String) -> [Substring] {
    var result: [Substring] = []
    var start = text.utf8.startIndex
    for index in text.utf8.indices where text.utf8[index] == UInt8(ascii: "/") {
        result.append(text[start..<index])
        start = text.utf8.index(after: index)
    }
    result.append(text[start...])
    return result
}

private func naiveIsValid(_ text: String) -> Bool {
    guard !text.isEmpty, text.utf8.count <= 65_535, !text.utf8.contains(0) else { return false }
    let levels = levels(text)
    for (index, level) in levels.enumerated() {
        let bytes = Array(level.utf8)
        let wildcards = bytes.filter { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
        if bytes == [UInt8(ascii: "#")] {
            if index != levels.count - 1 { return false }
        } else if bytes != [UInt8(ascii: "+")] && !wildcards.isEmpty {
            return false
        }
    }
    return true
}

/// MQTT matching, level by level. Levels compare byte for byte (no Unicode normalization), as
/// MQTT and the route table do.
private func naiveMatches(filter: String, topic: String) -> Bool {
    let f = levels(filter).map { Array($0.utf8) }
    let t = levels(topic).map { Array($0.utf8) }
    let plus = Array("+".utf8)
    let hash = Array("#".utf8)
    if topic.utf8.first == UInt8(ascii: "$") && (f[0] == plus || f[0] == hash) { return false }
    var i = 0
    while i < f.count {
        if f[i] == hash { return true }
        if i == t.count { return false }
        if f[i] != plus && f[i] != t[i] { return false }
        i += 1
    }
    return i == t.count
}

private func debug(_ text: String) -> String {
    "\"\(text.unicodeScalars.map { $0.isASCII && $0.value >= 0x20 ? String($0) : "\\u{\(String($0.value, radix: 16))}" }.joined())\""
}
