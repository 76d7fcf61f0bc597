/// One series: a metric name and its labels, in a fixed order.
package struct SeriesKey: Hashable, Sendable {
    package let name: String
    package let labels: [Label]

    package struct Label: Hashable, Sendable {
        package let name: String
        package let value: String
    }

    package init(_ name: String, _ labels: KeyValuePairs<String, String> = [:]) {
        self.name = name
        self.labels = labels.map { Label(name: $0.key, value: $0.value) }
    }

    package init(name: String, labels: [Label]) {
        self.name = name
        self.labels = labels
    }

    var labelPairs: [(String, String)] { self.labels.map { ($0.name, $0.value) } }
}

/// A histogram with fixed upper bounds, for one event loop: `record` is a short scan over a
/// dozen bounds and two additions, no lock. Loops' histograms are merged when scraped.
package struct LoopHistogram: Sendable, Equatable {
    /// Upper bounds, ascending (the `+Inf` bucket is implicit).
    package let bounds: [Double]
    /// Observations per bucket, not cumulative; the last entry is above every bound.
    package private(set) var counts: [Int]
    package private(set) var sum: Double = 0

    package init(bounds: [Double]) {
        precondition(bounds == bounds.sorted() && !bounds.isEmpty)
        self.bounds = bounds
        self.counts = Array(repeating: 0, count: bounds.count + 1)
    }

    package var count: Int { self.counts.reduce(0, +) }

    /// Records `value` `times` times (a batch's messages share one latency).
    package mutating func record(_ value: Double, times: Int = 1) {
        guard times > 0 else { return }
        var index = 0
        while index < self.bounds.count && value > self.bounds[index] { index += 1 }
        self.counts[index] += times
        self.sum += value * Double(times)
    }

    package mutating func merge(_ other: LoopHistogram) {
        guard other.bounds == self.bounds else { return }
        for index in self.counts.indices { self.counts[index] += other.counts[index] }
        self.sum += other.sum
    }

    /// Latencies in seconds: 100 µs to 10 s.
    package static let latencyBounds: [Double] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]
    /// Messages per backend batch.
    package static let batchSizeBounds: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
}

/// Figures gathered at a scrape: counters (totals since start), gauges (values now) and
/// histograms. Sources add theirs; the exporter sums what several loops reported.
package struct MetricsSnapshot: Sendable {
    package private(set) var counters: [SeriesKey: Double] = [:]
    package private(set) var gauges: [SeriesKey: Double] = [:]
    package private(set) var histograms: [SeriesKey: LoopHistogram] = [:]

    package init() {}

    package mutating func count(_ key: SeriesKey, _ value: Int) {
        self.counters[key, default: 0] += Double(value)
    }

    package mutating func count(_ key: SeriesKey, _ value: Double) {
        self.counters[key, default: 0] += value
    }

    /// Gauges of several sources (loops) with the same key add up.
    package mutating func gauge(_ key: SeriesKey, _ value: Double) {
        self.gauges[key, default: 0] += value
    }

    package mutating func gauge(_ key: SeriesKey, _ value: Int) {
        self.gauge(key, Double(value))
    }

    package mutating func histogram(_ key: SeriesKey, _ value: LoopHistogram) {
        if self.histograms[key] == nil {
            self.histograms[key] = value
        } else {
            self.histograms[key]!.merge(value)
        }
    }

    package mutating func merge(_ other: MetricsSnapshot) {
        for (key, value) in other.counters { self.counters[key, default: 0] += value }
        for (key, value) in other.gauges { self.gauges[key, default: 0] += value }
        for (key, value) in other.histograms { self.histogram(key, value) }
    }
}
