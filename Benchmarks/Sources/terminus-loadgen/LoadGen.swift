import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Histogram
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import TerminusAPI
import TerminusClient
import TerminusCompression
import TerminusProtocol

@main
struct LoadGen: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "terminus-loadgen",
        abstract: "Fleet load generator for Terminus gateways (and TLS peers measured the same way).",
        subcommands: [Fleet.self, Handshakes.self, ServerHandshakes.self, IdleTLS.self, Sinks.self],
        defaultSubcommand: Fleet.self
    )
}

struct TargetOptions: ParsableArguments {
    @Option(name: .long, help: "Address of the gateway's (or peer's) TLS listener, HOST:PORT.")
    var target: String = "127.0.0.1:7000"

    @Option(name: .long, help: "CA certificate (PEM) that issued the server certificate.")
    var ca: String

    @Option(name: .long, help: "Name checked in the server certificate.")
    var serverName: String = "localhost"

    @Option(
        name: .long,
        help: "Process whose CPU time and resident memory are read from /proc (the gateway or the peer)."
    )
    var pid: Int32?

    @Option(name: .long, help: "Source addresses 127.0.0.2 … (0: let the kernel choose).")
    var sources: Int = 4

    @Option(name: .long, help: "Skip this many source addresses (several load generators: distinct sources).")
    var sourceOffset: Int = 0

    var host: String { (try? HostPort(self.target, option: "--target"))?.host ?? "" }
    var port: Int { (try? HostPort(self.target, option: "--target"))?.port ?? 0 }

    func validate() throws {
        _ = try HostPort(self.target, option: "--target")
    }

    func sample() -> ProcessSample? { self.pid.flatMap(ProcessSample.read(pid:)) }

    /// One TLS connection (plain TCP with a nil context) to the target from source `index`.
    func connect(group: any EventLoopGroup, context: NIOSSLContext?, index: Int) async throws -> any Channel {
        try await RawTLS.connect(
            group: group,
            context: context,
            serverName: self.serverName,
            host: self.host,
            port: self.port,
            source: SourceAddresses(count: self.sources, offset: self.sourceOffset).address(for: index)
        )
    }
}

/// A `HOST:PORT` option value.
struct HostPort: Sendable {
    let host: String
    let port: Int

    init(_ text: String, option: String) throws {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65_535).contains(port), colon > text.startIndex
        else {
            throw ValidationError("\(option) must be HOST:PORT, not \(text)")
        }
        self.host = String(text[..<colon])
        self.port = port
    }
}

enum CompressionMode: String, ExpressibleByArgument, CaseIterable, Sendable {
    case none
    case deflate
    case dictionary
}

extension Traffic: ExpressibleByArgument {}

/// What the fleet's devices speak.
enum FleetProtocol: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// Terminus wire protocol v1 (`TerminusClient`).
    case terminus
    /// MQTT 3.1.1, QoS 1 PUBLISH only (`MQTTConnection`): for Mosquitto side by side.
    case mqtt
}

/// One device connection the fleet publishes on.
protocol FleetConnection: Sendable {
    func publishFuture(
        topic: String,
        payload: ByteBuffer,
        compress: Bool,
        dictionaryID: UInt16?
    ) -> EventLoopFuture<Ack>
    func close() async
}

extension TerminusConnection: FleetConnection {
    func publishFuture(
        topic: String,
        payload: ByteBuffer,
        compress: Bool,
        dictionaryID: UInt16?
    ) -> EventLoopFuture<Ack> {
        self.publishFuture(
            topic: topic,
            payload: payload,
            qos: .atLeastOnce,
            compress: compress,
            dictionaryID: dictionaryID
        )
    }
}

// MARK: - fleet

struct Fleet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect N devices at a ramp rate, publish at a rate, optionally Send downlink; report."
    )

    @OptionGroup var target: TargetOptions

    @Option(name: .long, help: "Device secret (the gateway's secrets file, prefix \"\").")
    var secret: String

    @Option(name: .long, help: "Devices to connect.")
    var devices: Int = 64

    @Option(name: .long, help: "Connections opened per second during the ramp.")
    var ramp: Int = 2000

    @Option(name: .long, help: "Connections in progress at once during the ramp.")
    var connectConcurrency: Int = 256

    @Option(name: .long, help: "Messages per second over the whole fleet (open loop; 0: stay idle).")
    var rate: Int = 1000

    @Option(
        name: .long,
        help: "Closed loop instead: every device keeps this many messages in flight (finds the maximum rate)."
    )
    var closedLoop: Int?

    @Option(name: .long, help: "Seconds of publishing (after the warm-up).")
    var duration: Int = 10

    @Option(name: .long, help: "Seconds of publishing before measuring.")
    var warmup: Int = 2

    @Option(name: .long, help: "Message mix: speaker, printer or mixed.")
    var traffic: Traffic = .mixed

    @Option(
        name: .long,
        help: "Payload compression: none, deflate, or dictionary (preset dictionary id 1; the gateway must have it)."
    )
    var compression: CompressionMode = .none

    @Option(name: .long, help: "Write the preset dictionary for --compression dictionary to this file and exit.")
    var writeDictionary: String?

    @Option(name: .long, help: "Run the sink backend (counts and acks) on HOST:PORT in this process.")
    var sinkListen: String?

    @Option(name: .long, help: "The sink holds each batch this long (a slow backend).")
    var sinkDelayMs: Int = 0

    @Option(
        name: .long,
        help:
            "The gateway's API listener for downlink Send, HOST:PORT; several, comma-separated, each NAME@HOST:PORT to tell Sends answered by the pod called from forwarded ones (a random one per Send)."
    )
    var api: String?

    @Option(name: .long, help: "Wait until this file exists before publishing and sending (runs in step).")
    var startFile: String?

    @Flag(name: .long, help: "Devices whose connection drops connect again after a random delay (--reconnect-jitter).")
    var reconnect = false

    @Option(name: .long, help: "Largest delay before a reconnect, seconds.")
    var reconnectJitter: Double = 2

    @Option(name: .long, help: "Seconds to keep the devices (reconnecting with --reconnect) after the send phase.")
    var hold: Int = 0

    @Option(name: .long, help: "Bearer token for the API listener.")
    var apiToken: String?

    @Option(name: .long, help: "Downlink Send calls per second (needs --api).")
    var sendRate: Int = 0

    @Flag(
        name: .long,
        help: "After publishing, send one 16 KB record through every connection and measure memory again."
    )
    var largeRecord = false

    @Option(
        name: .long,
        help:
            "What devices speak: terminus, or mqtt (MQTT 3.1.1 QoS 1 publishes only, for Mosquitto; no --compression, --send-rate or --large-record)."
    )
    var `protocol`: FleetProtocol = .terminus

    @Option(
        name: .long,
        help:
            "The consumer's process (the gateway's backend, or an MQTT subscriber): its CPU per message is reported too."
    )
    var consumerPid: Int32?

    @Option(name: .long, help: "Device id prefix.")
    var prefix: String = "lg-"

    @Option(name: .long, help: "Directory for LABEL.json, LABEL.md and LABEL.svg.")
    var out: String?

    @Option(name: .long, help: "Name of this run in the report.")
    var label: String = "fleet"

    func validate() throws {
        if self.protocol == .mqtt && (self.compression != .none || self.sendRate > 0 || self.largeRecord) {
            throw ValidationError("--protocol mqtt publishes only: no --compression, --send-rate or --large-record")
        }
    }

    func run() async throws {
        raiseOpenFileLimit()
        if let path = self.writeDictionary {
            try Data(Traffic.dictionary).write(to: URL(fileURLWithPath: path))
            return
        }
        let report = try await FleetRun(options: self).run()
        print(report.markdown())
        if let out = self.out { try report.write(to: out) }
        if report.connect.failed > 0 || (report.publish?.failures ?? 0) > 0 { throw ExitCode(1) }
    }
}

/// Shared counters of one run, updated from the event loops.
final class RunStats: Sendable {
    struct State {
        var sent = 0
        var acked = 0
        var failures = 0
        /// Messages a device had sent when the gateway moved it (GOAWAY(SHUTTING_DOWN) with a
        /// reconnect hint): not accepted, so a device sends them again; not failures.
        var unacceptedAtMove = 0
        var statuses: [String: Int] = [:]
        var total = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var second = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var secondAcked = 0
        /// Messages sent before this (uptime nanoseconds) belong to the warm-up: not counted.
        var measuredFrom: UInt64 = 0
    }

    let state = Mutex(State())

    func sent(at nanos: UInt64) {
        self.state.withLock { state in
            if nanos >= state.measuredFrom { state.sent += 1 }
        }
    }

    func completed(_ result: Result<Ack, any Error>, startedNanos: UInt64) {
        let micros = (DispatchTime.now().uptimeNanoseconds &- startedNanos) / 1_000
        self.state.withLock { state in
            guard startedNanos >= state.measuredFrom else { return }
            switch result {
            case .success(let ack):
                state.statuses[ack.status.name, default: 0] += 1
                if ack.status == .ok {
                    state.acked += 1
                    state.secondAcked += 1
                    _ = state.total.record(micros)
                    _ = state.second.record(micros)
                } else {
                    state.failures += 1
                }
            case .failure(let error) where FleetSlots.isMove(error):
                state.unacceptedAtMove += 1
            case .failure:
                state.failures += 1
                state.statuses["CLIENT_ERROR", default: 0] += 1
            }
        }
    }

    /// Starts the measured window: forgets the warm-up.
    func resetTotals() {
        self.state.withLock { state in
            state.measuredFrom = DispatchTime.now().uptimeNanoseconds
            state.sent = 0
            state.acked = 0
            state.failures = 0
            state.statuses = [:]
            state.total.reset()
        }
    }

    func takeSecond() -> (acked: Int, histogram: Histogram<UInt64>) {
        self.state.withLock { state in
            defer {
                state.secondAcked = 0
                state.second.reset()
            }
            return (state.secondAcked, state.second)
        }
    }
}

/// A value shared between tasks and event loops.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { self.mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout sending Value) throws -> sending R) rethrows -> R {
        try self.mutex.withLock(body)
    }
}

final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { self.value.store(true, ordering: .relaxed) }
    var isSet: Bool { self.value.load(ordering: .relaxed) }
}

struct FleetRun {
    let options: Fleet

    func run() async throws -> FleetReport {
        let o = self.options
        let group = MultiThreadedEventLoopGroup.singleton
        let sink: SinkServer?
        if let listen = o.sinkListen {
            let address = try HostPort(listen, option: "--sink-listen")
            sink = try await SinkServer.start(
                host: address.host,
                port: address.port,
                receiver: SinkReceiver(delay: .milliseconds(o.sinkDelayMs))
            )
            progress("sink backend listening on \(address.host):\(sink!.port)")
        } else {
            sink = nil
        }

        // Ramp.
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(o.target.ca))
        let compression = ClientCompression(dictionaries: try DictionarySet([1: Traffic.dictionary]))
        let sources = SourceAddresses(count: o.target.sources, offset: o.target.sourceOffset)
        let before = o.target.sample()
        let rampStart = ContinuousClock.now
        let failures = Locked(0)
        let mqttContext = o.protocol == .mqtt ? try RawTLS.clientContext(caFile: o.target.ca, tls13Only: false) : nil
        let target = o.target
        let (prefix, secret) = (o.prefix, o.secret)
        let clientTLS = tls
        let makeConfiguration = { @Sendable (index: Int) -> TerminusClientConfiguration in
            var configuration = TerminusClientConfiguration(
                host: target.host,
                port: target.port,
                tls: clientTLS,
                deviceID: "\(prefix)\(index)",
                credential: .secret(Array(secret.utf8), ttlSeconds: 86_400),
                compression: compression
            )
            configuration.serverHostname = target.serverName
            configuration.localAddress = sources.address(for: index)
            configuration.keepaliveSeconds = 540
            return configuration
        }
        let connections = try await withThrowingTaskGroup(of: (Int, (any FleetConnection)?).self) { tasks in
            var result = [(any FleetConnection)?](repeating: nil, count: o.devices)
            var running = 0
            var lastReport = ContinuousClock.now
            for index in 0..<o.devices {
                let due = rampStart + .seconds(Double(index) / Double(max(1, o.ramp)))
                if due > .now { try await Task.sleep(until: due) }
                if running >= o.connectConcurrency, let (i, connection) = try await tasks.next() {
                    result[i] = connection
                    running -= 1
                }
                let config = makeConfiguration(index)
                tasks.addTask {
                    do {
                        if let mqttContext {
                            let connection = try await MQTTConnection.connect(
                                target: o.target,
                                context: mqttContext,
                                group: group,
                                index: index,
                                clientID: config.deviceID
                            )
                            return (index, connection)
                        }
                        return (index, try await TerminusConnection.connect(config, group: group))
                    } catch {
                        let count = failures.withLock { value -> Int in
                            value += 1
                            return value
                        }
                        if count <= 5 { progress("connect \(index) failed: \(error)") }
                        return (index, nil)
                    }
                }
                running += 1
                if ContinuousClock.now - lastReport > .seconds(1) {
                    lastReport = .now
                    progress("ramp: \(index + 1)/\(o.devices) started")
                }
            }
            for try await (i, connection) in tasks { result[i] = connection }
            return result.compactMap { $0 }
        }
        let rampSeconds = Self.seconds(ContinuousClock.now - rampStart)
        let afterRamp = o.target.sample()
        let failed = failures.withLock { $0 }
        progress(
            "connected \(connections.count), failed \(failed), \(String(format: "%.1f", rampSeconds)) s, "
                + "\(String(format: "%.0f", Double(connections.count) / max(rampSeconds, 0.001)))/s"
        )
        var connect = FleetReport.Connect(
            connected: connections.count,
            failed: failed,
            seconds: rampSeconds,
            perSecond: Double(connections.count) / max(rampSeconds, 0.001)
        )
        if let before, let afterRamp, !connections.isEmpty {
            connect.gatewayCPUMicrosPerConnection =
                (afterRamp.cpuSeconds - before.cpuSeconds) * 1_000_000 / Double(connections.count)
        }
        // Let the gateway settle, then read memory per connected device.
        try await Task.sleep(for: .seconds(2))
        var memory: FleetReport.Memory?
        if let before, let settled = o.target.sample(), !connections.isEmpty {
            memory = FleetReport.Memory(
                rssBeforeBytes: before.residentBytes,
                rssConnectedBytes: settled.residentBytes,
                bytesPerDevice: Double(settled.residentBytes - before.residentBytes) / Double(connections.count)
            )
            progress(
                "gateway RSS \(settled.residentBytes / 1_048_576) MiB, \(String(format: "%.1f", memory!.bytesPerDevice / 1024)) KiB per device"
            )
        }

        // Downlink: every device acknowledges its pushes; with --reconnect, a keeper does that
        // and connects the device again when its connection drops.
        var pushTasks: [Task<Void, Never>] = []
        let keeper =
            o.reconnect ? DeviceKeeper(jitter: o.reconnectJitter, group: group, configuration: makeConfiguration) : nil
        if let keeper {
            for (index, connection) in connections.enumerated() {
                guard let connection = connection as? TerminusConnection,
                    let number = Int(connection.welcome.deviceID.dropFirst(o.prefix.count))
                else { continue }
                _ = index
                pushTasks.append(Task { await keeper.keep(number, connection) })
            }
        } else if o.sendRate > 0 {
            for case let connection as TerminusConnection in connections {
                pushTasks.append(
                    Task {
                        for await push in connection.pushes where push.qos == .atLeastOnce {
                            connection.acknowledge(push)
                        }
                    }
                )
            }
        }

        var publish: FleetReport.Publish?
        var downlink: FleetReport.Downlink?
        var timeline: [TimelinePoint] = []
        if let file = o.startFile {
            progress("waiting for \(file)")
            while !FileManager.default.fileExists(atPath: file) { try await Task.sleep(for: .milliseconds(50)) }
        }
        if !connections.isEmpty && (o.rate > 0 || o.closedLoop != nil || o.sendRate > 0) {
            // Devices the gateway moves (a hot loop under `device.placement: pack`) connect again
            // after its hint and go on sending, as a real device would.
            let slots = FleetSlots(connections)
            let followers =
                keeper == nil
                ? connections.indices.map { index in
                    Task { await slots.follow(index, prefix: o.prefix, group: group, configuration: makeConfiguration) }
                } : []
            (publish, downlink, timeline) = try await self.publishPhase(slots, sink: sink, group: group)
            await slots.stopFollowing()
            for follower in followers { follower.cancel() }
            if slots.moved > 0 { progress("devices moved by the gateway and connected again: \(slots.moved)") }
            publish?.devicesMoved = slots.moved
        }
        if o.hold > 0 {
            progress("holding the devices for \(o.hold) s")
            try await Task.sleep(for: .seconds(o.hold))
        }
        let reconnects = keeper?.finish()

        if o.largeRecord, var measured = memory {
            let message = RawTLS.largeMessage(size: 16_000)
            let delivered = sink?.receiver.messages ?? 0
            for case let connection as TerminusConnection in connections { connection.send(.publish(message)) }
            if let sink {
                // What stays after the records, not what is in flight: 18,000 devices send 288 MB
                // at once, which takes the gateway and this process seconds on two cores (the
                // first reached the sink after 2 s, the last after 4.2). Wait until the sink has
                // them all (or receives none for 10 s, at most 60 s), then 2 s more: the gateway
                // reads its heap's free bytes every second by default (`limits.heap_trim`).
                let start = ContinuousClock.now
                var last = (count: delivered, at: start)
                while ContinuousClock.now - start < .seconds(60) {
                    let count = sink.receiver.messages
                    if count - delivered >= connections.count { break }
                    if count != last.count {
                        progress("large records at the sink: \(count - delivered)")
                        last = (count, ContinuousClock.now)
                    } else if ContinuousClock.now - last.at > .seconds(10) {
                        break
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                measured.largeRecordsDelivered = sink.receiver.messages - delivered
                measured.largeRecordsDeliveredSeconds = (ContinuousClock.now - start) / .seconds(1)
                try await Task.sleep(for: .seconds(2))
            } else {
                try await Task.sleep(for: .seconds(3))
            }
            if let after = o.target.sample() {
                measured.rssAfterLargeRecordBytes = after.residentBytes
                measured.bytesPerDeviceAfterLargeRecord =
                    Double(after.residentBytes - measured.rssBeforeBytes) / Double(connections.count)
                progress(
                    "after a 16 KB record each: \(String(format: "%.1f", measured.bytesPerDeviceAfterLargeRecord! / 1024)) KiB per device"
                )
            }
            memory = measured
        }
        for task in pushTasks { task.cancel() }
        let open: [any FleetConnection] = keeper?.current ?? connections
        await withTaskGroup(of: Void.self) { closing in
            for (index, connection) in open.enumerated() {
                closing.addTask { await connection.close() }
                if index % 512 == 511 { await closing.waitForAll() }
            }
        }
        sink?.stop()
        return FleetReport(
            label: o.label,
            date: ISO8601DateFormatter().string(from: Date()),
            machine: FleetReport.machineDescription(),
            devices: o.devices,
            traffic: o.traffic.rawValue,
            compression: o.compression.rawValue,
            connect: connect,
            memory: memory,
            publish: publish,
            downlink: downlink,
            reconnects: reconnects,
            timeline: timeline
        )
    }

    private func publishPhase(
        _ slots: FleetSlots,
        sink: SinkServer?,
        group: any EventLoopGroup
    ) async throws -> (FleetReport.Publish?, FleetReport.Downlink?, [TimelinePoint]) {
        let o = self.options
        let stats = RunStats()
        let stop = StopFlag()
        let sequence = Atomic<Int>(0)
        let compress = o.compression != .none
        let dictionaryID: UInt16? = o.compression == .dictionary ? 1 : nil
        let traffic = o.traffic

        @Sendable func publishOne(_ index: Int, device: String) -> EventLoopFuture<Ack> {
            guard let connection = slots[index] else {
                // Moved, not connected again yet: nothing is sent.
                return group.next().makeFailedFuture(FleetSlots.Reconnecting())
            }
            let n = sequence.wrappingAdd(1, ordering: .relaxed).oldValue
            let started = DispatchTime.now().uptimeNanoseconds
            stats.sent(at: started)
            let future = connection.publishFuture(
                topic: traffic.topic(device: device, sequence: n),
                payload: traffic.payload(device: device, sequence: n, micros: Clock.micros()),
                compress: compress,
                dictionaryID: dictionaryID
            )
            future.whenComplete { stats.completed($0, startedNanos: started) }
            return future
        }

        let devices = (0..<slots.count).map { "\(o.prefix)\($0)" }
        let publishing = o.rate > 0 || o.closedLoop != nil
        let start = ContinuousClock.now
        let end = start + .seconds(o.warmup + o.duration)
        // Publishers.
        let publisher = Task {
            guard publishing else { return }
            if let window = o.closedLoop {
                @Sendable func keepGoing(_ index: Int) {
                    guard !stop.isSet else { return }
                    let future = publishOne(index, device: devices[index])
                    future.whenSuccess { _ in keepGoing(index) }
                    future.whenFailure { error in
                        // Moved: again once the device has connected again.
                        guard FleetSlots.isMove(error) || error is FleetSlots.Reconnecting else {
                            return keepGoing(index)
                        }
                        future.eventLoop.scheduleTask(in: .milliseconds(20)) { keepGoing(index) }
                    }
                }
                for index in 0..<slots.count {
                    for _ in 0..<window { keepGoing(index) }
                }
                return
            }
            var sent = 0
            var next = 0
            while ContinuousClock.now < end {
                let elapsed = ContinuousClock.now - start
                let due = Int(Self.seconds(elapsed) * Double(o.rate)) - sent
                for _ in 0..<max(0, due) {
                    let index = next % slots.count
                    next += 1
                    _ = publishOne(index, device: devices[index])
                }
                sent += max(0, due)
                try? await Task.sleep(for: .milliseconds(1))
            }
        }
        // Downlink sends.
        let downlinkStats = Locked(
            (
                sent: 0, outcomes: [String: Int](),
                latency: Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three),
                local: Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three),
                forwarded: Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
            )
        )
        let sender = Task {
            guard o.sendRate > 0, let api = o.api else { return }
            do {
                // NAME@HOST:PORT, or HOST:PORT alone.
                let endpoints = try api.split(separator: ",").map {
                    entry -> (name: String?, client: GRPCClient<HTTP2ClientTransport.Posix>) in
                    let parts = entry.split(separator: "@", maxSplits: 1)
                    let address = try HostPort(String(parts.last!), option: "--api")
                    let transport = try HTTP2ClientTransport.Posix(
                        target: .ipv4(address: address.host, port: address.port),
                        transportSecurity: .plaintext
                    )
                    return (parts.count == 2 ? String(parts[0]) : nil, GRPCClient(transport: transport))
                }
                try await withThrowingDiscardingTaskGroup { running in
                    for endpoint in endpoints { running.addTask { try await endpoint.client.runConnections() } }
                    defer { for endpoint in endpoints { endpoint.client.beginGracefulShutdown() } }
                    var metadata: Metadata = [:]
                    if let token = o.apiToken { metadata.addString("Bearer \(token)", forKey: "authorization") }
                    let headers = metadata
                    var sent = 0
                    try await withThrowingDiscardingTaskGroup { calls in
                        while ContinuousClock.now < end {
                            let due = Int(Self.seconds(ContinuousClock.now - start) * Double(o.sendRate)) - sent
                            for _ in 0..<max(0, due) {
                                var request = Terminus_V1_SendRequest()
                                request.deviceID = devices[Int.random(in: 0..<devices.count)]
                                request.topic = "cmd/play"
                                request.payload = Data(#"{"voice":"payment-received","amount":1288}"#.utf8)
                                request.qos = 1
                                request.ttlMs = 5000
                                let send = request
                                let endpoint = endpoints[Int.random(in: 0..<endpoints.count)]
                                let gateway = Terminus_V1_Gateway.Client(wrapping: endpoint.client)
                                calls.addTask {
                                    let started = DispatchTime.now().uptimeNanoseconds
                                    let outcome: String
                                    var local: Bool?
                                    do {
                                        let reply = try await gateway.send(send, metadata: headers)
                                        outcome = "\(reply.outcome)"
                                        if let name = endpoint.name, reply.outcome == .delivered {
                                            local = reply.gatewayInstance == name
                                        }
                                    } catch {
                                        outcome = "RPC_ERROR"
                                    }
                                    let micros = (DispatchTime.now().uptimeNanoseconds &- started) / 1_000
                                    downlinkStats.withLock {
                                        $0.sent += 1
                                        $0.outcomes[outcome, default: 0] += 1
                                        _ = $0.latency.record(micros)
                                        if local == true { _ = $0.local.record(micros) }
                                        if local == false { _ = $0.forwarded.record(micros) }
                                    }
                                }
                            }
                            sent += max(0, due)
                            try await Task.sleep(for: .milliseconds(10))
                        }
                    }
                }
            } catch {
                progress("downlink sender failed: \(error)")
            }
        }

        // Progress and timeline, once a second; the measured window starts after the warm-up.
        var timeline: [TimelinePoint] = []
        var measureStart: (ContinuousClock.Instant, ProcessSample?, Int, Int)?
        var consumerStart: ProcessSample?
        var sendsAtStart = 0
        var previous = o.target.sample()
        var previousBackend = sink?.receiver.messages ?? 0
        var second = 0
        while ContinuousClock.now < end {
            try await Task.sleep(for: .seconds(1))
            second += 1
            let (acked, histogram) = stats.takeSecond()
            let now = o.target.sample()
            var cpuPercent: Double?
            if let previous, let now {
                cpuPercent =
                    (now.cpuSeconds - previous.cpuSeconds) / max(0.001, Self.seconds(now.at - previous.at)) * 100
            }
            previous = now
            let backendTotal = sink?.receiver.messages ?? 0
            let backend = backendTotal - previousBackend
            previousBackend = backendTotal
            let point = TimelinePoint(
                second: second,
                ackedPerSecond: acked,
                backendPerSecond: backend,
                p50Micros: histogram.totalCount == 0 ? 0 : histogram.valueAtPercentile(50),
                p99Micros: histogram.totalCount == 0 ? 0 : histogram.valueAtPercentile(99),
                gatewayCPUPercent: cpuPercent,
                gatewayRSSBytes: now?.residentBytes
            )
            timeline.append(point)
            progress(
                "t=\(second)s acked/s=\(acked) backend/s=\(backend) p50=\(FleetReport.ms(point.p50Micros))ms "
                    + "p99=\(FleetReport.ms(point.p99Micros))ms cpu=\(cpuPercent.map { String(format: "%.0f%%", $0) } ?? "-")"
                    + " rss=\(now.map { "\($0.residentBytes / 1_048_576)MiB" } ?? "-")"
                    + (second <= o.warmup ? " (warm-up)" : "")
            )
            if second == o.warmup {
                stats.resetTotals()
                let (messages, batches, _) =
                    sink?.receiver.take() ?? (0, 0, Histogram<UInt64>(highestTrackableValue: 60_000_000))
                measureStart = (.now, o.target.sample(), messages, batches)
                consumerStart = o.consumerPid.flatMap(ProcessSample.read(pid:))
                sendsAtStart = downlinkStats.withLock { $0.sent }
            }
        }
        stop.set()
        await publisher.value
        await sender.value
        let measuredEnd = ContinuousClock.now
        let endSample = o.target.sample()
        let consumerEnd = o.consumerPid.flatMap(ProcessSample.read(pid:))
        let sendsAtEnd = downlinkStats.withLock { $0.sent }
        // Give messages in flight a moment to complete (not counted in the rate).
        try await Task.sleep(for: .milliseconds(500))
        let state = stats.state.withLock { $0 }
        let (backendMessages, backendBatches, backendLatency) =
            sink?.receiver.take() ?? (0, 0, Histogram<UInt64>(highestTrackableValue: 60_000_000))
        var publish: FleetReport.Publish?
        if publishing {
            let startInstant = measureStart?.0 ?? start
            let seconds = Self.seconds(measuredEnd - startInstant)
            var result = FleetReport.Publish(
                mode: o.closedLoop.map { "closed loop, \($0) in flight per device" } ?? "open loop",
                targetRate: o.closedLoop == nil ? o.rate : 0,
                seconds: seconds,
                sent: state.sent,
                acked: state.acked,
                statuses: state.statuses,
                failures: state.failures,
                ackedPerSecond: Double(state.acked) / max(seconds, 0.001),
                backendReceived: backendMessages - (measureStart?.2 ?? 0),
                backendBatches: backendBatches - (measureStart?.3 ?? 0),
                publishToAckMicros: Percentiles(state.total),
                deviceToBackendMicros: Percentiles(backendLatency)
            )
            if let first = measureStart?.1, let endSample, state.acked > 0 {
                let cpu = endSample.cpuSeconds - first.cpuSeconds
                result.gatewayCPUMicrosPerMessage = cpu * 1_000_000 / Double(state.acked)
                result.gatewaySystemCPUMicrosPerMessage =
                    (endSample.systemSeconds - first.systemSeconds) * 1_000_000 / Double(state.acked)
                result.gatewayCPUPercent = cpu / max(seconds, 0.001) * 100
                result.gatewaySwitchesPerMessage =
                    Double(endSample.voluntarySwitches - first.voluntarySwitches) / Double(state.acked)
            }
            if let consumerStart, let consumerEnd, state.acked > 0 {
                result.consumerCPUMicrosPerMessage =
                    (consumerEnd.cpuSeconds - consumerStart.cpuSeconds) * 1_000_000 / Double(state.acked)
            }
            publish = result
        }
        var downlink: FleetReport.Downlink?
        if o.sendRate > 0 {
            let d = downlinkStats.withLock { $0 }
            downlink = FleetReport.Downlink(
                targetRate: o.sendRate,
                sent: d.sent,
                outcomes: d.outcomes,
                latencyMicros: Percentiles(d.latency)
            )
            if d.local.totalCount + d.forwarded.totalCount > 0 {
                downlink?.localMicros = Percentiles(d.local)
                downlink?.forwardedMicros = Percentiles(d.forwarded)
            }
            if !publishing, let first = measureStart?.1, let endSample, sendsAtEnd > sendsAtStart {
                downlink?.gatewayCPUMicrosPerSend =
                    (endSample.cpuSeconds - first.cpuSeconds) * 1_000_000 / Double(sendsAtEnd - sendsAtStart)
            }
        }
        return (publish, downlink, timeline)
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
