import Foundation
import NIOCore
import TerminusBenchmarkFixtures
import TerminusLeanTLS

// `terminus-instructions SCENARIO COUNT`: sets SCENARIO up, runs it 100 times to warm up, then
// COUNT times, and exits. `Benchmarks/gate` runs it under callgrind at two counts: the
// difference in instructions over the difference in counts is what one message costs, with
// set-up, warm-up and exit cancelled out. Deterministic, unlike CPU time on a shared machine
// (Swift's hashing is seeded per process: the script sets SWIFT_DETERMINISTIC_HASHING).
//
// Top-level code without `await`: a synchronous main, which valgrind 3.19 can run (it crashes on
// any Swift program whose main is `async`).

/// The counted scenarios that run the edge pipeline, by name.
let sessionScenarios = ["hot-path", "hot-path-deflated", "hot-path-dictionary"]

/// Sets up only the scenario named: each builds a session over the 10,000-filter table, about
/// 180 million instructions under callgrind, which the other scenarios need not pay
/// (`lean-records` ran 671 million instructions with all three set up first, 16.5 million now).
func sessionScenario(named name: String) throws -> (session: EmbeddedSession, frame: ByteBuffer)? {
    switch name {
    // One PUBLISH (QoS 1, ~200-byte JSON) through the real edge pipeline: frame decoder, session
    // state machine, rate limiter, batcher, the gateway's routing over 10,000 filters and the
    // backend encoding; the ACK frame back.
    case "hot-path": (try EmbeddedSession(routes: Fixtures.subscriptions()), Fixtures.publishFrame())
    // The same, the payload deflated (inflated by the session).
    case "hot-path-deflated":
        (try EmbeddedSession(routes: Fixtures.subscriptions()), Fixtures.publishFrame(compressed: true))
    // The same with the fleet's preset dictionary.
    case "hot-path-dictionary":
        (
            try EmbeddedSession(routes: Fixtures.subscriptions()),
            Fixtures.publishFrame(compressed: true, dictionary: true)
        )
    default: nil
    }
}

/// The lean TLS engine's record work for one message: the device's record opened (the
/// hot path's ~230-byte PUBLISH frame) and a 16-byte answer sealed, with one loop's
/// `AEADContext`, TLS 1.3 AES-128-GCM, each record keyed afresh as on a loop serving many
/// connections. The device's records are sealed before the count starts, the same number in
/// every run (`pool`, at least the warm-up and the counts the gate runs), so their cost cancels
/// out with the set-up.
func leanRecords(count: Int, pool: Int = 1_100) throws -> Int {
    let context = AEADContext()
    let allocator = ByteBufferAllocator()
    let secret = [UInt8](repeating: 7, count: 32)
    var deviceWrite = TrafficKeys(suite: .tls13AES128GCMSHA256, secret: secret)
    var serverRead = TrafficKeys(suite: .tls13AES128GCMSHA256, secret: secret)
    var serverWrite = TrafficKeys(suite: .tls13AES128GCMSHA256, secret: [UInt8](repeating: 9, count: 32))
    let publish = Fixtures.publishFrame()
    var wire = allocator.buffer(capacity: pool * (publish.readableBytes + 22))
    for _ in 0..<max(pool, 100 + count) {
        try TLS13Records.seal(publish, type: .applicationData, keys: &deviceWrite, context: context, into: &wire)
    }
    let ack = ByteBuffer(bytes: [UInt8](repeating: 0x20, count: 16))
    var answer = allocator.buffer(capacity: 64)
    var answered = 0
    for _ in 0..<(100 + count) {
        let record = try TLS13Records.nextRecord(from: &wire)!
        let (type, content) = try TLS13Records.open(record, keys: &serverRead, context: context, allocator: allocator)
        guard type == .applicationData, content.readableBytes == publish.readableBytes else { return answered }
        answer.clear()
        try TLS13Records.seal(ack, type: .applicationData, keys: &serverWrite, context: context, into: &answer)
        answered += 1
    }
    return answered
}

let arguments = CommandLine.arguments
if arguments.count == 3, arguments[1] == "lean-records", let count = Int(arguments[2]), count >= 0 {
    let opened = try leanRecords(count: count)
    precondition(opened == 100 + count, "every record opened")
    print("lean-records: \(opened) records opened and answered")
    exit(0)
}
guard arguments.count == 3, let count = Int(arguments[2]), count >= 0,
    let scenario = try sessionScenario(named: arguments[1])
else {
    let names = (sessionScenarios + ["lean-records"]).sorted().joined(separator: "|")
    FileHandle.standardError.write(Data("usage: terminus-instructions \(names) COUNT\n".utf8))
    exit(2)
}

var acks = 0
for _ in 0..<(100 + count) {
    guard var ack = try scenario.session.publish(scenario.frame), ack.readableBytes > 0 else {
        FileHandle.standardError.write(Data("no ACK for a PUBLISH\n".utf8))
        exit(1)
    }
    acks += 1
    ack.clear()
}
precondition(scenario.session.sink.routed >= acks, "every message reached the routing sink")
print("\(arguments[1]): \(acks) messages acknowledged")
