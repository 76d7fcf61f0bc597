internal import NIOCore

/// Something the timer wheel can wake.
protocol TimerWheelTarget: AnyObject {
    /// The wheel fired entry `tick`. Return the next deadline to re-arm, or nil to be dropped.
    func timerFired(tick: Int, now: NIODeadline) -> NIODeadline?
    /// The tick of the entry currently armed for this target (older entries are stale).
    var armedTick: Int? { get set }
}

/// A hashed timing wheel, one per event loop, that drives every per-connection timeout
/// (TLS handshake, HELLO, keepalive, close grace) from a single repeating task.
///
/// A connection holds one deadline and at most one live wheel entry; moving its deadline
/// later (every received frame does) costs nothing: when the entry fires early, the target
/// re-arms itself. No `Scheduled` task per connection, no allocation per frame.
/// Confined to its event loop.
final class TimerWheel {
    private var slots: [[any TimerWheelTarget]]
    private var currentTick = 0
    private let tick: TimeAmount
    private var task: RepeatedTask?

    /// 64 one-second slots: a deadline further out is re-armed when its entry fires (cheap),
    /// and a closed connection is released by the wheel within 64 ticks at the latest.
    init(tick: TimeAmount, slotCount: Int = 64) {
        precondition(slotCount > 1 && tick.nanoseconds > 0)
        self.tick = tick
        self.slots = Array(repeating: [], count: slotCount)
    }

    func start(on eventLoop: any EventLoop) {
        let loop = eventLoop.assumeIsolated()
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        self.task = loop.nonisolated().scheduleRepeatedTask(initialDelay: self.tick, delay: self.tick) { _ in
            bound.value.advance(now: eventLoop.now)  // virtual under EmbeddedEventLoop
        }
    }

    func stop() {
        self.task?.cancel()
        self.task = nil
        for index in self.slots.indices { self.slots[index].removeAll() }
    }

    /// Arms `target` to fire at or up to one tick after `deadline`.
    func schedule(_ target: any TimerWheelTarget, at deadline: NIODeadline, now: NIODeadline) {
        let remaining = max(deadline.uptimeNanoseconds, now.uptimeNanoseconds) - now.uptimeNanoseconds
        let ticksAhead = Int((remaining + UInt64(self.tick.nanoseconds) - 1) / UInt64(self.tick.nanoseconds))
        let clamped = min(max(ticksAhead, 1), self.slots.count - 1)
        let due = self.currentTick + clamped
        if let armed = target.armedTick, armed <= due { return }
        target.armedTick = due
        self.slots[due % self.slots.count].append(target)
    }

    /// Fires the current slot. Exposed for tests; production calls come from the repeating task.
    func advance(now: NIODeadline) {
        self.currentTick += 1
        let index = self.currentTick % self.slots.count
        let due = self.slots[index]
        self.slots[index] = []
        for target in due {
            guard target.armedTick == self.currentTick else { continue }  // stale entry
            target.armedTick = nil
            if let next = target.timerFired(tick: self.currentTick, now: now) {
                self.schedule(target, at: next, now: now)
            }
        }
    }
}
