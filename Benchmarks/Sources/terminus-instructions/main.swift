import Foundation
import NIOCore
import TerminusBenchmarkFixtures

// `terminus-instructions SCENARIO COUNT`: sets SCENARIO up, runs it 100 times to warm up, then
// COUNT times, and exits. `Benchmarks/gate` runs it under callgrind at two counts: the
// difference in instructions over the difference in counts is what one message costs, with
// set-up, warm-up and exit cancelled out. Deterministic, unlike CPU time on a shared machine
// (Swift's hashing is seeded per process: the script sets SWIFT_DETERMINISTIC_HASHING).
//
// Top-level code without `await`: a synchronous main, which valgrind 3.19 can run (it crashes on
// any Swift program whose main is `async`).

let scenarios: [String: (session: EmbeddedSession, frame: ByteBuffer)] = [
    // One PUBLISH (QoS 1, ~200-byte JSON) through the real edge pipeline: frame decoder, session
    // state machine, rate limiter, batcher, the gateway's routing over 10,000 filters and the
    // backend encoding; the ACK frame back.
    "hot-path": (Fixtures.sessions.plain, Fixtures.publishFrame()),
    // The same, the payload deflated (inflated by the session).
    "hot-path-deflated": (Fixtures.sessions.deflated, Fixtures.publishFrame(compressed: true)),
    // The same with the fleet's preset dictionary.
    "hot-path-dictionary": (
        Fixtures.sessions.dictionary, Fixtures.publishFrame(compressed: true, dictionary: true)
    ),
]

let arguments = CommandLine.arguments
guard arguments.count == 3, let scenario = scenarios[arguments[1]], let count = Int(arguments[2]), count >= 0 else {
    let names = scenarios.keys.sorted().joined(separator: "|")
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
