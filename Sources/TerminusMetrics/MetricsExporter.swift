package import NIOCore
package import Prometheus
internal import Synchronization

/// Something with figures to export. Counting stays where the work is (a plain integer on an
/// event loop, no lock, no atomic); the exporter asks for the figures only when scraped.
package protocol MetricsSource: Sendable {
    /// This source's figures now. A source confined to event loops reads each on its loop.
    func collectMetrics(on eventLoop: any EventLoop) -> EventLoopFuture<MetricsSnapshot>
}

/// Renders the gateway's metrics in the Prometheus text format (`/metrics`).
///
/// At a scrape it collects every source's snapshot and publishes it into a swift-prometheus
/// `PrometheusCollectorRegistry`: counters grow by what the sources' totals grew since the
/// last scrape, gauges are set, and series no source reported any more are unregistered.
/// Histograms are counted per loop (`LoopHistogram`) and rendered here in the same format:
/// swift-prometheus's histograms take a lock per observation and cannot be merged.
package final class MetricsExporter: Sendable {
    private struct State {
        var sources: [any MetricsSource] = []
        var counters: [SeriesKey: (counter: Prometheus.Counter, published: Double)] = [:]
        var gauges: [SeriesKey: Prometheus.Gauge] = [:]
    }

    /// The registry the scrape renders; a `PrometheusMetricsFactory` over it takes swift-metrics
    /// figures (`MetricsSystem.bootstrap`) into the same scrape.
    package let registry = PrometheusCollectorRegistry()
    private let state = Mutex(State())

    package init() {}

    package func add(_ source: any MetricsSource) {
        self.state.withLock { $0.sources.append(source) }
    }

    /// Collects and renders. Completes on `eventLoop`.
    package func scrape(on eventLoop: any EventLoop) -> EventLoopFuture<String> {
        let sources = self.state.withLock { $0.sources }
        let futures = sources.map { $0.collectMetrics(on: eventLoop) }
        return EventLoopFuture.whenAllComplete(futures, on: eventLoop).map { results in
            var snapshot = MetricsSnapshot()
            for case .success(let part) in results { snapshot.merge(part) }
            return self.render(snapshot)
        }
    }

    /// Publishes `snapshot` into the registry and renders the registry and the histograms.
    package func render(_ snapshot: MetricsSnapshot) -> String {
        self.state.withLock { state in
            for (key, total) in snapshot.counters {
                let entry = Self.entry(key.name, .counter)
                if let existing = state.counters[key] {
                    // A source that went away (a service removed) takes its share with it: a
                    // counter never goes down, it stays until the total passes it again.
                    if total > existing.published {
                        Self.increment(existing.counter, by: total - existing.published)
                        state.counters[key]!.published = total
                    }
                } else {
                    let counter = self.registry.makeCounter(
                        descriptor: Self.descriptor(key.name, entry),
                        labels: key.labelPairs
                    )
                    Self.increment(counter, by: total)
                    state.counters[key] = (counter, total)
                }
            }
            for (key, value) in snapshot.gauges {
                let entry = Self.entry(key.name, .gauge)
                let gauge =
                    state.gauges[key]
                    ?? self.registry.makeGauge(descriptor: Self.descriptor(key.name, entry), labels: key.labelPairs)
                gauge.set(to: value)
                state.gauges[key] = gauge
            }
            for (key, gauge) in state.gauges where snapshot.gauges[key] == nil {
                self.registry.unregisterGauge(gauge)
                state.gauges[key] = nil
            }
        }
        var text = self.registry.emitToString()
        Self.renderHistograms(snapshot.histograms, into: &text)
        return text
    }

    /// Whole numbers as integers (rendered `5`, not `5.0`); CPU seconds as they come.
    private static func increment(_ counter: Prometheus.Counter, by amount: Double) {
        if amount == amount.rounded(), amount < 9e15 {
            counter.increment(by: Int64(amount))
        } else {
            counter.increment(by: amount)
        }
    }

    /// The whole name goes in `metricName` (the unit is part of our names already).
    private static func descriptor(_ name: String, _ entry: MetricCatalogue.Entry) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: entry.help)
    }

    private static func entry(_ name: String, _ kind: MetricCatalogue.Kind) -> MetricCatalogue.Entry {
        guard let entry = MetricCatalogue.entries[name], entry.kind == kind else {
            preconditionFailure("\(name) is not a \(kind) of MetricCatalogue")
        }
        return entry
    }

    private static func renderHistograms(_ histograms: [SeriesKey: LoopHistogram], into text: inout String) {
        let families = Dictionary(grouping: histograms.keys, by: \.name)
        for name in families.keys.sorted() {
            let entry = Self.entry(name, .histogram)
            text += "# HELP \(name) \(entry.help)\n# TYPE \(name) histogram\n"
            for key in families[name]!.sorted(by: { "\($0.labels)" < "\($1.labels)" }) {
                let histogram = histograms[key]!
                let labels = key.labels.map { "\($0.name)=\"\(Self.escaped($0.value))\"" }
                var cumulative = 0
                for (index, bound) in histogram.bounds.enumerated() {
                    cumulative += histogram.counts[index]
                    let all = (labels + ["le=\"\(bound)\""]).joined(separator: ",")
                    text += "\(name)_bucket{\(all)} \(cumulative)\n"
                }
                let all = (labels + ["le=\"+Inf\""]).joined(separator: ",")
                text += "\(name)_bucket{\(all)} \(histogram.count)\n"
                let plain = labels.isEmpty ? "" : "{\(labels.joined(separator: ","))}"
                text += "\(name)_sum\(plain) \(histogram.sum)\n"
                text += "\(name)_count\(plain) \(histogram.count)\n"
            }
        }
    }

    private static func escaped(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}

/// A source that reads only thread-safe values (atomics, the process): collected in place.
package struct ClosureMetricsSource: MetricsSource {
    private let body: @Sendable (inout MetricsSnapshot) -> Void

    package init(_ body: @escaping @Sendable (inout MetricsSnapshot) -> Void) {
        self.body = body
    }

    package func collectMetrics(on eventLoop: any EventLoop) -> EventLoopFuture<MetricsSnapshot> {
        var snapshot = MetricsSnapshot()
        self.body(&snapshot)
        return eventLoop.makeSucceededFuture(snapshot)
    }
}
