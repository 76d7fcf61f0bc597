import Foundation
import Histogram

struct Percentiles: Codable, Sendable {
    var count: UInt64
    var p50: UInt64
    var p90: UInt64
    var p99: UInt64
    var p999: UInt64
    var max: UInt64

    init(_ histogram: Histogram<UInt64>) {
        self.count = histogram.totalCount
        self.p50 = histogram.totalCount == 0 ? 0 : histogram.valueAtPercentile(50)
        self.p90 = histogram.totalCount == 0 ? 0 : histogram.valueAtPercentile(90)
        self.p99 = histogram.totalCount == 0 ? 0 : histogram.valueAtPercentile(99)
        self.p999 = histogram.totalCount == 0 ? 0 : histogram.valueAtPercentile(99.9)
        self.max = histogram.totalCount == 0 ? 0 : histogram.maxRecorded
    }
}

struct TimelinePoint: Codable, Sendable {
    var second: Int
    var ackedPerSecond: Int
    var backendPerSecond: Int
    var p50Micros: UInt64
    var p99Micros: UInt64
    var gatewayCPUPercent: Double?
    var gatewayRSSBytes: Int?
}

struct FleetReport: Codable, Sendable {
    struct Connect: Codable, Sendable {
        var connected: Int
        var failed: Int
        var seconds: Double
        var perSecond: Double
        /// Gateway CPU per connection: TCP accept, TLS handshake, HELLO, token check, session.
        var gatewayCPUMicrosPerConnection: Double?
    }

    struct Memory: Codable, Sendable {
        var rssBeforeBytes: Int
        var rssConnectedBytes: Int
        var bytesPerDevice: Double
        var rssAfterLargeRecordBytes: Int?
        var bytesPerDeviceAfterLargeRecord: Double?
        /// With a sink: how many of the large records it received before the sample, and when.
        var largeRecordsDelivered: Int?
        var largeRecordsDeliveredSeconds: Double?
    }

    struct Publish: Codable, Sendable {
        var mode: String
        var targetRate: Int
        var seconds: Double
        var sent: Int
        var acked: Int
        var statuses: [String: Int]
        var failures: Int
        /// Devices the gateway moved (`GOAWAY(SHUTTING_DOWN)`) that connected again and went on.
        var devicesMoved = 0
        var ackedPerSecond: Double
        var backendReceived: Int
        /// Deliver batches the sink received (messages / batches = the mean batch size).
        var backendBatches: Int
        var gatewayCPUMicrosPerMessage: Double?
        /// CPU of `--consumer-pid` (the backend or the MQTT subscriber) per acknowledged message.
        var consumerCPUMicrosPerMessage: Double?
        /// The kernel's share of it (system time): syscalls and the loopback network stack.
        var gatewaySystemCPUMicrosPerMessage: Double?
        var gatewayCPUPercent: Double?
        /// Voluntary context switches of the server's threads per acknowledged message: how
        /// often it slept and was woken for one.
        var gatewaySwitchesPerMessage: Double?
        var publishToAckMicros: Percentiles
        var deviceToBackendMicros: Percentiles
    }

    struct Downlink: Codable, Sendable {
        var targetRate: Int
        var sent: Int
        var outcomes: [String: Int]
        var latencyMicros: Percentiles
        /// Gateway CPU per Send answered in the measured window (only without uplink traffic).
        var gatewayCPUMicrosPerSend: Double?
        /// With named API endpoints (`--api NAME@HOST:PORT,…`): Sends answered by the pod
        /// called (the device was there) and those it forwarded to another pod.
        var localMicros: Percentiles?
        var forwardedMicros: Percentiles?
    }

    /// `--reconnect`: devices that lost their connection and connected again.
    struct Reconnects: Codable, Sendable {
        var lost: Int
        var reconnected: Int
        /// From the first loss to the last reconnect.
        var seconds: Double
    }

    var label: String
    var date: String
    var machine: String
    var devices: Int
    var traffic: String
    var compression: String
    var connect: Connect
    var memory: Memory?
    var publish: Publish?
    var downlink: Downlink?
    var reconnects: Reconnects?
    var timeline: [TimelinePoint]

    static func machineDescription() -> String {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model =
            cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
        return "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(model), "
            + "\(ProcessInfo.processInfo.physicalMemory / 1_073_741_824) GiB"
    }

    func markdown() -> String {
        var lines: [String] = []
        lines.append("## \(self.label)")
        lines.append("")
        lines.append(
            "\(self.date) · \(self.machine) · \(self.devices) devices · traffic \(self.traffic) · compression \(self.compression)"
        )
        lines.append("")
        lines.append("| figure | value |")
        lines.append("|---|---:|")
        let c = self.connect
        lines.append("| connected / failed | \(c.connected) / \(c.failed) |")
        lines.append("| connect rate | \(Self.f(c.perSecond, 0))/s |")
        if let cpu = c.gatewayCPUMicrosPerConnection {
            lines.append("| gateway CPU per connection (TLS handshake + HELLO) | \(Self.f(cpu, 0)) µs |")
        }
        if let m = self.memory {
            lines.append("| gateway RSS per connected device | \(Self.f(m.bytesPerDevice / 1024, 1)) KiB |")
            if let large = m.bytesPerDeviceAfterLargeRecord {
                lines.append("| … after a 16 KB record through each | \(Self.f(large / 1024, 1)) KiB |")
            }
        }
        if let p = self.publish {
            lines.append("| publish mode / target rate | \(p.mode) / \(p.targetRate)/s |")
            lines.append("| acked / sent (failures) | \(p.acked) / \(p.sent) (\(p.failures)) |")
            if p.devicesMoved > 0 {
                lines.append("| devices moved by the gateway, connected again | \(p.devicesMoved) |")
            }
            lines.append("| throughput | \(Self.f(p.ackedPerSecond, 0)) msg/s |")
            if let cpu = p.gatewayCPUMicrosPerMessage {
                let system = p.gatewaySystemCPUMicrosPerMessage.map { " (kernel \(Self.f($0, 2)) µs)" } ?? ""
                lines.append("| gateway CPU per message | \(Self.f(cpu, 2)) µs\(system) |")
            }
            if let percent = p.gatewayCPUPercent { lines.append("| gateway CPU | \(Self.f(percent, 0)) % of a core |") }
            if let switches = p.gatewaySwitchesPerMessage {
                lines.append("| gateway voluntary context switches per message | \(Self.f(switches, 3)) |")
            }
            if let consumer = p.consumerCPUMicrosPerMessage {
                lines.append("| consumer CPU per message | \(Self.f(consumer, 2)) µs |")
            }
            if p.backendBatches > 0 {
                let mean = Double(p.backendReceived) / Double(p.backendBatches)
                lines.append("| backend batches (mean size) | \(p.backendBatches) (\(Self.f(mean, 1))) |")
            }
            let l = p.publishToAckMicros
            lines.append(
                "| publish→ack p50 / p90 / p99 / p99.9 / max | \(Self.ms(l.p50)) / \(Self.ms(l.p90)) / \(Self.ms(l.p99)) / \(Self.ms(l.p999)) / \(Self.ms(l.max)) ms |"
            )
            let b = p.deviceToBackendMicros
            lines.append(
                "| device→backend p50 / p90 / p99 / p99.9 / max | \(Self.ms(b.p50)) / \(Self.ms(b.p90)) / \(Self.ms(b.p99)) / \(Self.ms(b.p999)) / \(Self.ms(b.max)) ms |"
            )
            lines.append(
                "| statuses | \(p.statuses.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) |"
            )
        }
        if let d = self.downlink {
            lines.append("| downlink Send sent (rate) | \(d.sent) (\(d.targetRate)/s) |")
            if let cpu = d.gatewayCPUMicrosPerSend { lines.append("| gateway CPU per Send | \(Self.f(cpu, 2)) µs |") }
            lines.append(
                "| downlink outcomes | \(d.outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) |"
            )
            lines.append("| Send p50 / p99 | \(Self.ms(d.latencyMicros.p50)) / \(Self.ms(d.latencyMicros.p99)) ms |")
            if let local = d.localMicros, let forwarded = d.forwardedMicros {
                lines.append(
                    "| Send p50 / p99, device on the pod called (\(local.count)) | \(Self.ms(local.p50)) / \(Self.ms(local.p99)) ms |"
                )
                lines.append(
                    "| Send p50 / p99, forwarded to another pod (\(forwarded.count)) | \(Self.ms(forwarded.p50)) / \(Self.ms(forwarded.p99)) ms |"
                )
            }
        }
        if let r = self.reconnects {
            lines.append(
                "| devices lost / reconnected | \(r.lost) / \(r.reconnected) in \(Self.f(r.seconds, 1)) s |"
            )
        }
        lines.append("")
        return lines.joined(separator: "\n")
    }

    /// Throughput (left axis) and publish→ack p50/p99 (right axis) per second.
    func svg() -> String {
        let width = 800.0
        let height = 360.0
        let left = 60.0
        let right = 60.0
        let top = 30.0
        let bottom = 40.0
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom
        let points = self.timeline
        let maxSecond = Double(max(1, points.map(\.second).max() ?? 1))
        let maxRate = Double(max(1, points.map(\.ackedPerSecond).max() ?? 1)) * 1.1
        let maxLatency = Double(max(1, points.map(\.p99Micros).max() ?? 1)) / 1000 * 1.1
        func x(_ second: Int) -> Double { left + Double(second) / maxSecond * plotWidth }
        func yRate(_ rate: Int) -> Double { top + plotHeight - Double(rate) / maxRate * plotHeight }
        func yLatency(_ micros: UInt64) -> Double { top + plotHeight - Double(micros) / 1000 / maxLatency * plotHeight }
        func polyline(_ coordinates: [(Double, Double)], color: String, dash: String = "") -> String {
            let list = coordinates.map { "\(Self.f($0.0, 1)),\(Self.f($0.1, 1))" }.joined(separator: " ")
            let dashAttribute = dash.isEmpty ? "" : " stroke-dasharray=\"\(dash)\""
            return "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"\(dashAttribute) points=\"\(list)\"/>"
        }
        var svg: [String] = []
        svg.append(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">"
        )
        svg.append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>")
        svg.append(
            "<text x=\"\(left)\" y=\"18\" font-size=\"14\">\(Self.escape(self.label)): throughput and publish→ack latency</text>"
        )
        svg.append(
            "<line x1=\"\(left)\" y1=\"\(top + plotHeight)\" x2=\"\(left + plotWidth)\" y2=\"\(top + plotHeight)\" stroke=\"#999\"/>"
        )
        svg.append("<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(top + plotHeight)\" stroke=\"#999\"/>")
        svg.append(
            "<line x1=\"\(left + plotWidth)\" y1=\"\(top)\" x2=\"\(left + plotWidth)\" y2=\"\(top + plotHeight)\" stroke=\"#999\"/>"
        )
        for step in 0...4 {
            let fraction = Double(step) / 4
            let y = top + plotHeight - fraction * plotHeight
            svg.append(
                "<text x=\"\(left - 6)\" y=\"\(Self.f(y + 4, 1))\" text-anchor=\"end\" fill=\"#1f77b4\">\(Self.f(maxRate * fraction, 0))</text>"
            )
            svg.append(
                "<text x=\"\(left + plotWidth + 6)\" y=\"\(Self.f(y + 4, 1))\" fill=\"#d62728\">\(Self.f(maxLatency * fraction, 1))</text>"
            )
        }
        svg.append(
            "<text x=\"\(left + plotWidth / 2)\" y=\"\(height - 8)\" text-anchor=\"middle\">seconds (\(Int(maxSecond)))</text>"
        )
        svg.append("<text x=\"10\" y=\"\(top - 8)\" fill=\"#1f77b4\">msg/s</text>")
        svg.append("<text x=\"\(width - 50)\" y=\"\(top - 8)\" fill=\"#d62728\">ms</text>")
        svg.append(polyline(points.map { (x($0.second), yRate($0.ackedPerSecond)) }, color: "#1f77b4"))
        svg.append(polyline(points.map { (x($0.second), yLatency($0.p99Micros)) }, color: "#d62728"))
        svg.append(polyline(points.map { (x($0.second), yLatency($0.p50Micros)) }, color: "#ff9896", dash: "4 3"))
        svg.append(
            "<text x=\"\(left + 10)\" y=\"\(top + 14)\"><tspan fill=\"#1f77b4\">acked msg/s</tspan>  <tspan fill=\"#d62728\">p99 ms</tspan>  <tspan fill=\"#ff9896\">p50 ms</tspan></text>"
        )
        svg.append("</svg>")
        return svg.joined(separator: "\n")
    }

    static func f(_ value: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", value) }
    static func ms(_ micros: UInt64) -> String { String(format: "%.2f", Double(micros) / 1000) }
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
    }

    func write(to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let base = directory + "/" + self.label
        try encoder.encode(self).write(to: URL(fileURLWithPath: base + ".json"))
        try Data(self.markdown().utf8).write(to: URL(fileURLWithPath: base + ".md"))
        try Data(self.svg().utf8).write(to: URL(fileURLWithPath: base + ".svg"))
    }
}

func progress(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
