import NIOCore
import Synchronization
import Testing

@testable import TerminusEdge

@Suite("Loop placement: the pack rule and the placement's state")
struct LoopPlacementRuleTests {
    @Test("the first loop below the target and not at its burst; else the least busy not at its burst; else none")
    func rule() {
        let rule = LoopPlacementRule.acceptor
        #expect(rule([0, 0, 0], [false, false, false], 0.5) == 0)
        #expect(rule([0.7, 0.2, 0], [false, false, false], 0.5) == 1)
        #expect(rule([0.2, 0.1, 0], [true, false, false], 0.5) == 1)
        #expect(rule([0.5, 0.1, 0], [false, true, false], 0.5) == 2)
        #expect(rule([0.9, 0.6, 0.55], [false, false, false], 0.5) == 2)
        #expect(rule([0.9, 0.6, 0.55], [false, false, true], 0.5) == 1)
        #expect(rule([0.1, 0.1], [true, true], 0.5) == nil)
        #expect(rule([0.4], [false], 0.5) == 0)
    }

    @Test("samples and bursts move the one accepting loop; when every loop took its burst a new round starts")
    func placement() {
        var settings = LoopPlacementSettings()
        settings.policy = .pack
        let placement = LoopPlacement(settings: settings, loopCount: 3) { loop, count in
            Issue.record("no loop holds devices here, yet loop \(loop) moved \(count)")
        }
        func accepting() -> [Bool] { placement.snapshot.map(\.accepting) }
        #expect(accepting() == [true, false, false])
        placement.sampled(loop: 0, utilization: 0.8, connections: 0)
        #expect(accepting() == [false, true, false])
        placement.saturated(loop: 1)
        #expect(accepting() == [false, false, true])
        placement.sampled(loop: 1, utilization: 0.3, connections: 0)
        #expect(accepting() == [false, true, false])
        placement.sampled(loop: 1, utilization: 0.9, connections: 0)
        placement.sampled(loop: 2, utilization: 0.6, connections: 0)
        #expect(accepting() == [false, false, true], "all above the target: the least busy")
        placement.saturated(loop: 2)
        #expect(accepting() == [true, false, false], "0.8 is less busy than 0.9")
        placement.saturated(loop: 0)
        placement.saturated(loop: 1)
        #expect(accepting() == [false, false, true], "a new round: the least busy again")
        placement.sampled(loop: 0, utilization: 0.1, connections: 0)
        #expect(accepting() == [true, false, false])
        #expect(placement.snapshot.map(\.utilization) == [0.1, 0.9, 0.6])
    }

    @Test("a hot loop moves the share of its devices that would even it out with the least busy, within the limit")
    func moves() {
        func moves(_ utilization: [Double], _ connections: Int, above: Double = 0.85, limit: Int = 100) -> Int {
            LoopPlacementRule.moves(
                from: 0,
                utilization: utilization,
                connections: connections,
                target: 0.5,
                above: above,
                limit: limit
            )
        }
        #expect(moves([0.9, 0.1], 100) == 45, "(0.9 - 0.1) / 1.8 of 100, rounded up")
        #expect(moves([0.95, 0.7, 0.2], 10) == 4, "against the least busy: 0.75 / 1.9 of 10")
        #expect(moves([0.9, 0.1], 1_000) == 100, "at most the limit")
        #expect(moves([0.84, 0.0], 100) == 0, "below rebalance_above")
        #expect(moves([0.9, 0.5], 100) == 0, "no other loop below the target")
        #expect(moves([1.0, 0.0], 100, above: 0) == 0, "0: never")
        #expect(moves([1.0, 0.0], 1) == 0, "a single device stays")
        #expect(moves([1.0, 0.0], 2) == 1)
    }

    @Test(
        "a hot loop's sample moves devices from another loop's thread, at most once per move interval, never soon after accepting"
    )
    func placementMoves() {
        var settings = LoopPlacementSettings()
        settings.policy = .pack
        let moved = Mutex<[[Int]]>([])
        let placement = LoopPlacement(settings: settings, loopCount: 2) { loop, count in
            moved.withLock { $0.append([loop, count]) }
        }
        let start = NIODeadline.now()
        placement.sampled(loop: 1, utilization: 0.1, connections: 0, now: start)
        placement.sampled(loop: 0, utilization: 0.9, connections: 100, now: start)
        #expect(moved.withLock { $0 } == [[0, 45]])
        #expect(placement.snapshot.map(\.accepting) == [false, true], "the hot loop no longer accepts")
        placement.sampled(loop: 0, utilization: 0.9, connections: 55, now: start + .milliseconds(999))
        #expect(moved.withLock { $0 } == [[0, 45]], "within the move interval")
        placement.sampled(loop: 1, utilization: 0.4, connections: 45, now: start + .milliseconds(1_000))
        placement.sampled(loop: 0, utilization: 0.9, connections: 55, now: start + .milliseconds(1_000))
        #expect(moved.withLock { $0 } == [[0, 45], [0, 16]], "(0.9 - 0.4) / 1.8 of 55")
        placement.sampled(loop: 0, utilization: 0.3, connections: 39, now: start + .milliseconds(2_000))
        #expect(moved.withLock { $0 }.count == 2, "cooled down")
        #expect(placement.snapshot.map(\.moved) == [61, 0])
        placement.sampled(loop: 1, utilization: 0.95, accepted: 3, connections: 80, now: start + .milliseconds(2_000))
        placement.sampled(loop: 1, utilization: 0.95, connections: 80, now: start + .milliseconds(2_999))
        #expect(moved.withLock { $0 }.count == 2, "hot within a move interval of accepting: maybe handshakes")
        placement.sampled(loop: 1, utilization: 0.95, connections: 80, now: start + .milliseconds(3_000))
        #expect(
            moved.withLock { $0 }.last == [1, 28],
            "(0.95 - 0.3) / 1.9 of 80, once it has not accepted for as long"
        )
    }

    @Test("a loop's sample reads its own thread's CPU time: it grows with work done on that thread")
    func threadCPU() {
        let before = LoopAcceptGate.threadCPUNanoseconds()
        var x: UInt64 = 1
        for i in 0..<5_000_000 { x = x &* 6_364_136_223_846_793_005 &+ UInt64(i) }
        let after = LoopAcceptGate.threadCPUNanoseconds()
        #expect(x != 0)
        #expect(after - before > 100_000, "\(after - before) ns")
    }
}
