internal import Synchronization

/// Lets at most `linesPerSecond` lines of one kind through each second, and says how many it
/// held back when the next second's first line passes. Lock-free; safe from any thread.
final class LogThrottle: Sendable {
    private let linesPerSecond: Int
    /// The current second (uptime) and the lines seen in it, packed: second << 32 | count.
    private let window = Atomic<UInt64>(0)
    private let suppressed = Atomic<Int>(0)

    init(linesPerSecond: Int) {
        self.linesPerSecond = max(1, linesPerSecond)
    }

    /// Whether a line may be logged now; when it may, also how many were held back before it.
    func admit(nowSeconds: UInt64) -> (log: Bool, suppressedBefore: Int) {
        while true {
            let current = self.window.load(ordering: .relaxed)
            let second = current >> 32
            let count = current & 0xFFFF_FFFF
            let next: UInt64 = second == nowSeconds ? current + 1 : nowSeconds << 32 | 1
            let (exchanged, _) = self.window.compareExchange(
                expected: current,
                desired: next,
                ordering: .relaxed
            )
            guard exchanged else { continue }
            let seen = second == nowSeconds ? Int(count) + 1 : 1
            guard seen <= self.linesPerSecond else {
                self.suppressed.wrappingAdd(1, ordering: .relaxed)
                return (false, 0)
            }
            return (true, seen == 1 ? self.suppressed.exchange(0, ordering: .relaxed) : 0)
        }
    }
}
