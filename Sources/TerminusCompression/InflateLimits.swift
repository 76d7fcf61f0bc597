/// Caps on one inflated payload.
public struct InflateLimits: Hashable, Sendable {
    /// The largest inflated payload in bytes.
    public var maxInflatedSize: Int
    /// The largest accepted ratio of inflated to compressed size…
    public var maxRatio: Int
    /// …applied only above this many inflated bytes, so that tiny messages compressed with a
    /// dictionary (legitimately 10–50×) pass.
    public var ratioFloor: Int

    public init(maxInflatedSize: Int = 256 * 1024, maxRatio: Int = 100, ratioFloor: Int = 4096) {
        self.maxInflatedSize = maxInflatedSize
        self.maxRatio = maxRatio
        self.ratioFloor = ratioFloor
    }

    /// The most bytes a payload of `compressedSize` bytes may inflate to.
    public func allowedOutput(compressedSize: Int) -> Int {
        let (byRatio, overflow) = compressedSize.multipliedReportingOverflow(by: self.maxRatio)
        let ratioCap = overflow ? Int.max : max(self.ratioFloor, byRatio)
        return min(self.maxInflatedSize, ratioCap)
    }
}
