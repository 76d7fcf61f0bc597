package import NIOCore
internal import Synchronization
internal import TerminusListeners

#if canImport(Glibc)
internal import Glibc
#endif

/// Which event loops take new device connections (`device.placement`).
///
/// `spread` is NIO's round robin: every loop gets an equal share of the devices, and at device
/// rates (a message now and then per device) every loop sleeps and wakes for almost every
/// message. `pack` (the default) fills the loops in order: a loop takes new connections while its own CPU
/// over the last sample is below `targetUtilization`, so a lightly loaded gateway runs on as
/// few loops as its load needs and each wake-up serves more messages (`docs/benchmarks.md`,
/// "Placing devices on loops"). Once every loop is above the target, the least busy takes them.
/// A loop that grows hot later (`rebalanceAbove`) while another is below the target moves some
/// of its devices: they get `GOAWAY(SHUTTING_DOWN)` with a short reconnect hint and come back
/// through the loop that accepts.
package struct LoopPlacementSettings: Sendable, Equatable {
    package enum Policy: String, Sendable, CaseIterable {
        case spread, pack
    }

    package var policy: Policy = .pack
    /// `pack`: a loop takes new connections while its thread's CPU share over the last sample
    /// interval is below this (0…1).
    package var targetUtilization = 0.5
    /// `pack`: a loop that accepted this many connections within one sample interval hands
    /// over to the next (once every loop has, a new round starts), so that a reconnect storm's
    /// handshakes spread over the loops instead of queuing on one.
    package var burst = 128
    /// `pack`: a loop whose thread used at least this share of a core over its last sample,
    /// while another loop is below `targetUtilization`, moves some of its devices (0…1; 0: never).
    package var rebalanceAbove = 0.85
    /// `pack`: devices one loop moves at most per `moveInterval` (a move costs each device a
    /// reconnect and a TLS handshake).
    package var rebalanceRate = 100
    /// How often each loop reads its own thread's CPU time.
    package var sampleInterval: TimeAmount = .milliseconds(250)
    /// At most one move per loop within this, and moved devices reconnect within it (their
    /// reconnect hints are spread over it), so a move has shown in the samples before the next.
    package var moveInterval: TimeAmount = .seconds(1)

    package init() {}
}

/// The pure rule of `pack` placement.
package enum LoopPlacementRule {
    /// The loop that accepts: the first, in order, whose utilization is below `target` and that
    /// has not reached its burst in this interval; else the least busy that has not; nil when
    /// every loop has reached its burst (the caller starts a new round).
    package static func acceptor(utilization: [Double], saturated: [Bool], target: Double) -> Int? {
        precondition(utilization.count == saturated.count)
        let open = utilization.indices.filter { !saturated[$0] }
        if let first = open.first(where: { utilization[$0] < target }) { return first }
        return open.min { utilization[$0] < utilization[$1] }
    }

    /// How many of its `connections` devices loop `index` moves now: none unless its
    /// utilization is at least `above` (> 0) and another loop's is below `target`; then the
    /// share that would even the two out if every device cost the same, at most `limit`.
    package static func moves(
        from index: Int,
        utilization: [Double],
        connections: Int,
        target: Double,
        above: Double,
        limit: Int
    ) -> Int {
        let hot = utilization[index]
        guard above > 0, hot >= above, connections > 1 else { return 0 }
        let others = utilization.indices.filter { $0 != index }.map { utilization[$0] }
        guard let cold = others.min(), cold < target else { return 0 }
        let share = (hot - cold) / (2 * hot)
        return min(limit, Int((Double(connections) * share).rounded(.up)))
    }
}

/// `pack` placement across one listener's per-loop server channels: each loop samples its own
/// CPU and counts its accepts (`LoopAcceptGate`); this decides which loop accepts and tells the
/// gates. Called from any loop; the state is behind one lock, touched a few times a second per
/// loop and once per burst.
///
/// Exactly one loop accepts at a time. The server channels share one listening socket, and NIO
/// expects a readable listener to yield a connection (a debug build asserts it): two loops
/// woken for one connection would break that. So a change closes every other loop first, and
/// opens the new one only once they have; each gate reads the current decision when it runs,
/// so a stale "open" never runs after a newer decision.
package final class LoopPlacement: Sendable {
    private struct State {
        var utilization: [Double]
        var saturated: [Bool]
        var acceptor: Int
        var gates: [NIOLoopBound<LoopAcceptGate>?]
        var lastMove: [NIODeadline?]
        var lastAccept: [NIODeadline?]
        var moved: [Int]
    }

    /// Moves `count` devices off loop `loop` (by its index); called on another loop.
    package typealias Mover = @Sendable (_ loop: Int, _ count: Int) -> Void

    package let settings: LoopPlacementSettings
    private let state: Mutex<State>
    private let mover: Mover

    package init(settings: LoopPlacementSettings, loopCount: Int, mover: @escaping Mover) {
        self.settings = settings
        self.mover = mover
        self.state = Mutex(
            State(
                utilization: Array(repeating: 0, count: loopCount),
                saturated: Array(repeating: false, count: loopCount),
                acceptor: 0,
                gates: Array(repeating: nil, count: loopCount),
                lastMove: Array(repeating: nil, count: loopCount),
                lastAccept: Array(repeating: nil, count: loopCount),
                moved: Array(repeating: 0, count: loopCount)
            )
        )
    }

    /// Each loop's last utilization sample, whether it is the one that accepts, and how many
    /// devices it has moved since start (for metrics and tests).
    package var snapshot: [(utilization: Double, accepting: Bool, moved: Int)] {
        self.state.withLock { state in
            state.utilization.indices.map { (state.utilization[$0], $0 == state.acceptor, state.moved[$0]) }
        }
    }

    /// Whether `index` is the loop that accepts now.
    func isAcceptor(_ index: Int) -> Bool { self.state.withLock { $0.acceptor == index } }

    /// A loop's gate, on its loop, before its channel is active.
    func register(_ gate: LoopAcceptGate, loop index: Int, on eventLoop: any EventLoop) {
        self.state.withLock { $0.gates[index] = NIOLoopBound(gate, eventLoop: eventLoop) }
    }

    /// A loop's sample: its utilization since the last one, the connections it accepted within it
    /// and the device connections it holds; its burst count starts again. If it is hot while
    /// another loop is not, it moves some of its devices (`LoopPlacementRule.moves`) from another
    /// loop: at most once per `moveInterval`, and not within `moveInterval` of accepting, when its
    /// heat may be handshakes (moving devices during a reconnect storm would feed the storm).
    package func sampled(
        loop index: Int,
        utilization: Double,
        accepted: Int = 0,
        connections: Int,
        now: NIODeadline = .now()
    ) {
        self.decide {
            $0.utilization[index] = utilization
            $0.saturated[index] = false
        }
        let move: (count: Int, on: (any EventLoop)?)? = self.state.withLock { state in
            if accepted > 0 { state.lastAccept[index] = now }
            if let last = state.lastMove[index], now - last < self.settings.moveInterval { return nil }
            if let last = state.lastAccept[index], now - last < self.settings.moveInterval { return nil }
            let count = LoopPlacementRule.moves(
                from: index,
                utilization: state.utilization,
                connections: connections,
                target: self.settings.targetUtilization,
                above: self.settings.rebalanceAbove,
                limit: self.settings.rebalanceRate
            )
            guard count > 0 else { return nil }
            state.lastMove[index] = now
            state.moved[index] += count
            // The least busy other loop picks the devices (the hot one has no time to spare).
            let other = state.utilization.indices.filter { $0 != index }.min {
                state.utilization[$0] < state.utilization[$1]
            }
            return (count, other.flatMap { state.gates[$0]?.eventLoop })
        }
        guard let move else { return }
        guard let eventLoop = move.on else { return self.mover(index, move.count) }
        let mover = self.mover
        eventLoop.execute { mover(index, move.count) }
    }

    /// A loop reached its burst within this interval.
    func saturated(loop index: Int) {
        self.decide { $0.saturated[index] = true }
    }

    private func decide(_ update: (inout State) -> Void) {
        let change: (NIOLoopBound<LoopAcceptGate>?, [NIOLoopBound<LoopAcceptGate>])? = self.state.withLock { state in
            update(&state)
            var chosen = LoopPlacementRule.acceptor(
                utilization: state.utilization,
                saturated: state.saturated,
                target: self.settings.targetUtilization
            )
            if chosen == nil {
                // Every loop took its burst: a new round.
                state.saturated = Array(repeating: false, count: state.saturated.count)
                chosen = LoopPlacementRule.acceptor(
                    utilization: state.utilization,
                    saturated: state.saturated,
                    target: self.settings.targetUtilization
                )
            }
            guard let chosen, chosen != state.acceptor else { return nil }
            state.acceptor = chosen
            let others = state.gates.indices.filter { $0 != chosen }.compactMap { state.gates[$0] }
            return (state.gates[chosen], others)
        }
        guard let (next, others) = change else { return }
        let closed = others.map { gate in gate.eventLoop.submit { gate.value.recheck() } }
        guard let next else { return }
        EventLoopFuture.andAllComplete(closed, on: next.eventLoop).whenComplete { _ in next.value.recheck() }
    }
}

/// One loop's server channel under `pack` placement: counts what it accepts, samples its
/// loop's thread CPU (and connections) every `sampleInterval`, and accepts only while `LoopPlacement` says it is
/// the loop that does (through `AcceptPauseHandler`, which also pauses it after a failed
/// accept).
final class LoopAcceptGate: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    private let placement: LoopPlacement
    private let index: Int
    private let pause: AcceptPauseHandler
    /// The device connections open on this loop (read on it).
    private let connections: () -> Int
    private var context: ChannelHandlerContext?
    private var sampler: RepeatedTask?
    private var acceptedInInterval = 0
    private var lastCPU = LoopAcceptGate.threadCPUNanoseconds()
    private var lastWall = NIODeadline.now()

    init(placement: LoopPlacement, index: Int, pause: AcceptPauseHandler, connections: @escaping () -> Int) {
        self.placement = placement
        self.index = index
        self.pause = pause
        self.connections = connections
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let interval = self.placement.settings.sampleInterval
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.sampler = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            bound.value.sample()
        }
        self.placement.register(self, loop: self.index, on: context.eventLoop)
        self.recheck()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.sampler?.cancel()
        self.sampler = nil
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.acceptedInInterval += 1
        // At every multiple: after a new round (every loop took its burst) the count goes on.
        if self.acceptedInInterval % self.placement.settings.burst == 0 {
            self.placement.saturated(loop: self.index)
        }
        context.fireChannelRead(data)
    }

    /// Accepts if this loop is the placement's acceptor now, else stops accepting.
    func recheck() {
        guard let context = self.context else { return }
        self.pause.setAccepting(self.placement.isAcceptor(self.index), context: context)
    }

    private func sample() {
        let cpu = Self.threadCPUNanoseconds()
        let wall = NIODeadline.now()
        let elapsed = (wall - self.lastWall).nanoseconds
        let utilization = elapsed > 0 ? Double(cpu - self.lastCPU) / Double(elapsed) : 0
        let accepted = self.acceptedInInterval
        (self.lastCPU, self.lastWall, self.acceptedInInterval) = (cpu, wall, 0)
        self.placement.sampled(
            loop: self.index,
            utilization: min(1, max(0, utilization)),
            accepted: accepted,
            connections: self.connections(),
            now: wall
        )
    }

    /// CPU time of the calling thread (the loop's, when called on it).
    static func threadCPUNanoseconds() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}

@available(*, unavailable)
extension LoopAcceptGate: Sendable {}
