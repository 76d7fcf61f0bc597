import NIOCore
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
        let placement = LoopPlacement(settings: settings, loopCount: 3)
        func accepting() -> [Bool] { placement.snapshot.map(\.accepting) }
        #expect(accepting() == [true, false, false])
        placement.sampled(loop: 0, utilization: 0.8)
        #expect(accepting() == [false, true, false])
        placement.saturated(loop: 1)
        #expect(accepting() == [false, false, true])
        placement.sampled(loop: 1, utilization: 0.3)
        #expect(accepting() == [false, true, false])
        placement.sampled(loop: 1, utilization: 0.9)
        placement.sampled(loop: 2, utilization: 0.6)
        #expect(accepting() == [false, false, true], "all above the target: the least busy")
        placement.saturated(loop: 2)
        #expect(accepting() == [true, false, false], "0.8 is less busy than 0.9")
        placement.saturated(loop: 0)
        placement.saturated(loop: 1)
        #expect(accepting() == [false, false, true], "a new round: the least busy again")
        placement.sampled(loop: 0, utilization: 0.1)
        #expect(accepting() == [true, false, false])
        #expect(placement.snapshot.map(\.utilization) == [0.1, 0.9, 0.6])
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
