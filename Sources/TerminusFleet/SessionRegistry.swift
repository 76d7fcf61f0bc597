internal import Foundation
package import Logging
internal import NIOCore
internal import ServiceLifecycle
internal import Synchronization
package import TerminusMetrics
internal import TerminusProtocol
package import TerminusRedis
package import TerminusSessions

/// The fleet's session registry in Redis: which pod holds which device (`RegistryScripts` has
/// the keys).
///
/// - **No write per device per lease.** A device's record has no TTL; it is as valid as its
///   pod's liveness key, which the pod refreshes every third of `lease`. When a pod dies its
///   key expires, lookups stop answering for its devices at once, and a survivor removes its
///   records (`sweep`, a bounded batch per call).
/// - **Coalesced writes.** Connects and disconnects are queued; the first one wakes the loop,
///   which writes what was queued within `flushInterval` as one pipeline (one round trip, one
///   `EVALSHA` per change), however many event loops and devices there are: at most
///   1 s / `flushInterval` round trips a second. Idle, the loop wakes only for the heartbeat
///   and the sweep.
/// - **Epochs.** A record names the connection (`epoch`: this process's random epoch and the
///   connection id); a disconnect deletes the record only while it is still that connection's.
/// - **Redis unavailable.** Changes that cannot be written are dropped; once Redis answers
///   again (a new connection), the pod re-registers every session it holds and forgets the
///   records of devices that left meanwhile (`resync`). The queue is bounded: past
///   `maxQueued` it is dropped the same way and a resync follows.
package final class SessionRegistry: Service, Sendable {
    package struct Configuration: Sendable {
        /// This pod's id (`fleet.pod_id`; default: the host name, the pod's name on Kubernetes).
        package var podID: String
        /// Where other pods reach this one (`fleet.internal_address`); empty until the gateway
        /// knows it (`advertise(_:)`, once its internal listener is bound).
        package var podAddress: String
        package var keyPrefix = "terminus:"
        /// How long a pod counts as alive after its last heartbeat.
        package var lease: Duration = .seconds(15)
        package var flushInterval: Duration = .milliseconds(5)
        /// Changes waiting to be written, at most; beyond, a resync replaces them.
        package var maxQueued = 200_000
        /// Records a sweep removes per call (each call is one short script in Redis).
        package var sweepBatch = 1_000
        /// Commands in one pipeline, at most (a resync of 100,000 sessions goes in parts).
        package var maxPipeline = 10_000

        package init(podID: String, podAddress: String) {
            self.podID = podID
            self.podAddress = podAddress
        }
    }

    /// Where one device is connected.
    package struct Record: Hashable, Sendable {
        package var podID: String
        package var epoch: String
        package var connectedAtMs: Int64
        package var clientAddress: String

        package init(podID: String, epoch: String, connectedAtMs: Int64, clientAddress: String) {
            self.podID = podID
            self.epoch = epoch
            self.connectedAtMs = connectedAtMs
            self.clientAddress = clientAddress
        }

        package var encoded: String { "\(self.podID)|\(self.epoch)|\(self.connectedAtMs)|\(self.clientAddress)" }

        package init?(decoding text: String) {
            let parts = text.split(separator: "|", maxSplits: 3, omittingEmptySubsequences: false)
            guard parts.count == 4, let connectedAt = Int64(parts[2]) else { return nil }
            self.init(
                podID: String(parts[0]),
                epoch: String(parts[1]),
                connectedAtMs: connectedAt,
                clientAddress: String(parts[3])
            )
        }
    }

    private enum Change: Sendable {
        case register(deviceID: String, record: String)
        case unregister(deviceID: String, record: String)
    }

    private struct State {
        var queue: [Change] = []
        /// The client's connection count when the scripts were last loaded and the sessions
        /// last re-registered: a new connection means a resync.
        var syncedAtConnect = 0
        var resyncRequested = false
        var lastHeartbeat: ContinuousClock.Instant?
        var lastSweep: ContinuousClock.Instant?
        /// This pod's internal address as written with the heartbeat.
        var podAddress: String
    }

    package let configuration: Configuration
    package let client: RedisClient
    /// The sessions this pod holds (for a resync).
    private let sessions: @Sendable () -> [SessionHandle]
    /// This pod's session of a device (for a takeover from another pod).
    private let local: @Sendable (String) -> SessionHandle?
    private let logger: Logger
    /// Drawn at start: with the connection id it makes each record's epoch unique across
    /// restarts.
    private let processEpoch = String(UInt64.random(in: 1...UInt64.max), radix: 36)
    private let state: Mutex<State>
    private let written = Atomic<Int>(0)
    private let dropped = Atomic<Int>(0)
    private let resyncs = Atomic<Int>(0)
    private let swept = Atomic<Int>(0)
    private let passCount = Atomic<Int>(0)
    private let takeovers = Atomic<Int>(0)
    /// Wakes the loop when a change is queued.
    private let wakeup = Wakeup()
    /// Told how many messages are stored for a device this pod registered (at its connect,
    /// and when another pod stores one for it).
    private let storedListener = Mutex<(@Sendable (String, Int) -> Void)?>(nil)

    /// - Parameters:
    ///   - sessions: every session this pod holds (a resync registers them).
    ///   - local: this pod's session of a device, if any (a takeover ends it).
    package init(
        configuration: Configuration,
        client: RedisClient,
        logger: Logger,
        sessions: @escaping @Sendable () -> [SessionHandle],
        local: @escaping @Sendable (String) -> SessionHandle?
    ) {
        self.configuration = configuration
        self.state = Mutex(State(podAddress: configuration.podAddress))
        self.client = client
        self.logger = logger
        self.sessions = sessions
        self.local = local
        // Takeovers: another pod that registered one of this pod's devices says so here.
        client.onMessage { [weak self] _, payload in self?.received(String(buffer: payload)) }
        client.subscribe([self.prefix + "pod:" + configuration.podID + ":control"])
    }

    /// `replaced|{epoch}|{device}`: the device connected to another pod; this pod's session of
    /// it gets `GOAWAY(REPLACED)` if it is still the connection with that epoch (a newer one
    /// here stays). `stored|{device}`: another pod stored a message for a device this pod
    /// holds. The device id comes last: it may contain `|`.
    private func received(_ message: String) {
        if message.hasPrefix("stored|") {
            self.storedListener.withLock { $0 }?(String(message.dropFirst("stored|".count)), 1)
            return
        }
        let parts = message.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "replaced" else { return }
        guard let handle = self.local(String(parts[2])), self.record(for: handle).epoch == parts[1] else { return }
        self.takeovers.wrappingAdd(1, ordering: .relaxed)
        handle.control.goAway(.replaced, reconnectAfterMilliseconds: 0, message: "connected through another gateway")
    }

    // MARK: keys

    private var prefix: String { self.configuration.keyPrefix }
    private func deviceKey(_ id: String) -> RedisArgument { RedisArgument(self.prefix + "device:" + id) }
    private func podKey(_ pod: String) -> RedisArgument { RedisArgument(self.prefix + "pod:" + pod) }
    private func podSet(_ pod: String) -> RedisArgument { RedisArgument(self.prefix + "pod:" + pod + ":devices") }
    private var podsKey: RedisArgument { RedisArgument(self.prefix + "pods") }

    /// The record this pod writes for `handle`.
    package func record(for handle: SessionHandle) -> Record {
        Record(
            podID: self.configuration.podID,
            epoch: "\(self.processEpoch).\(handle.connectionID)",
            connectedAtMs: handle.connectedAt,
            clientAddress: handle.clientAddress
        )
    }

    // MARK: changes

    /// `handle` authenticated here: queued, written at the next flush.
    package func registered(_ handle: SessionHandle) {
        self.enqueue(.register(deviceID: handle.deviceID, record: self.record(for: handle).encoded))
    }

    /// `handle` closed: its record goes at the next flush, if it is still this connection's.
    package func unregistered(_ handle: SessionHandle) {
        self.enqueue(.unregister(deviceID: handle.deviceID, record: self.record(for: handle).encoded))
    }

    private func enqueue(_ change: Change) {
        let dropped = self.state.withLock { state -> Int in
            guard state.queue.count < self.configuration.maxQueued else {
                // This change and every queued one: the resync writes what they would have.
                let dropped = state.queue.count + 1
                state.queue.removeAll(keepingCapacity: false)
                state.resyncRequested = true
                return dropped
            }
            state.queue.append(change)
            return 0
        }
        if dropped > 0 { self.dropped.wrappingAdd(dropped, ordering: .relaxed) }
        self.wakeup.signal()
    }

    // MARK: reads

    /// Where `deviceID` is connected, if its pod is alive. Throws `RedisError` (`unavailable`
    /// at once while Redis is down).
    package func lookup(_ deviceID: String) async throws -> Record? {
        let answer = try await self.client.run(
            RegistryScripts.lookup,
            keys: [self.deviceKey(deviceID)],
            arguments: [RedisArgument(self.prefix)]
        )
        return Self.located(answer)?.record
    }

    /// A `lookup` script's answer: the record and its pod's internal address.
    private static func located(_ answer: RESPValue) -> (record: Record, podAddress: String)? {
        guard let parts = answer.array, parts.count == 2, let text = parts[0].string,
            let record = Record(decoding: text), let address = parts[1].string
        else { return nil }
        return (record, address)
    }

    /// Pods whose liveness key exists now.
    package func livePods() async throws -> [String] {
        let answer = try await self.client.execute(RedisCommand("ZRANGE", self.podsKey, 0, -1))
        let pods = answer.array?.compactMap(\.string) ?? []
        guard !pods.isEmpty else { return [] }
        let alive = try await self.client.send(pods.map { RedisCommand("EXISTS", self.podKey($0)) })
        return zip(pods, alive).filter { $0.1.int == 1 }.map(\.0)
    }

    // MARK: the loop

    /// Writes the queued changes every `flushInterval`, the heartbeat every third of the lease,
    /// and sweeps dead pods every lease, until graceful shutdown; then removes this pod's
    /// liveness key, so that others stop routing to it at once.
    package func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while true {
                // Idle, the loop sleeps until the next heartbeat or sweep is due (polling Redis's
                // return every 250 ms while it is away); a queued change wakes it, and the
                // changes of the next `flushInterval` go with it.
                await self.wakeup.wait(timeout: self.idleWait())
                try Task.checkCancellation()
                try await Task.sleep(for: self.configuration.flushInterval)
                await self.tick()
            }
        }
        // The devices' disconnects of the drain, then this pod's liveness.
        if self.client.isConnected { try? await self.flush() }
        _ = try? await self.client.send([
            RedisCommand("DEL", self.podKey(self.configuration.podID)),
            RedisCommand("ZREM", self.podsKey, RedisArgument(self.configuration.podID)),
        ])
    }

    /// How long the loop may sleep with nothing queued: until the next heartbeat or sweep.
    private func idleWait() -> Duration {
        guard self.client.isConnected else { return .milliseconds(250) }
        let now = ContinuousClock.now
        return self.state.withLock { state in
            if state.resyncRequested || !state.queue.isEmpty || state.syncedAtConnect != self.client.connects {
                return .zero
            }
            let heartbeat = state.lastHeartbeat.map { $0 + self.configuration.lease / 3 - now } ?? .zero
            let sweep = state.lastSweep.map { $0 + self.configuration.lease - now } ?? .zero
            return max(.zero, min(heartbeat, sweep))
        }
    }

    /// One pass: resync when the connection is new, flush, heartbeat, sweep (tests call it).
    package func tick() async {
        self.passCount.wrappingAdd(1, ordering: .relaxed)
        guard self.client.isConnected else { return }
        let now = ContinuousClock.now
        let (resync, heartbeat, sweep) = self.state.withLock { state -> (Bool, Bool, Bool) in
            let resync = state.syncedAtConnect != self.client.connects || state.resyncRequested
            let heartbeat = state.lastHeartbeat.map { now - $0 >= self.configuration.lease / 3 } ?? true
            let sweep = state.lastSweep.map { now - $0 >= self.configuration.lease } ?? true
            return (resync, heartbeat, sweep)
        }
        do {
            if heartbeat || resync {
                try await self.heartbeat()
                self.state.withLock { $0.lastHeartbeat = now }
            }
            if resync { try await self.resync() }
            try await self.flush()
            if sweep {
                self.state.withLock { $0.lastSweep = now }
                try await self.sweepDeadPods()
            }
        } catch {
            self.logger.warning("session registry: redis call failed", metadata: ["error": "\(error)"])
            self.state.withLock { $0.resyncRequested = true }
        }
    }

    /// Calls `listener` with a device id and how many messages the store holds for it, for
    /// every device this pod registers (after the write) and for each `stored` notice from
    /// another pod (with 1: at least one).
    package func onStoredMessages(_ listener: @escaping @Sendable (String, Int) -> Void) {
        self.storedListener.withLock { $0 = listener }
    }

    /// Where other pods reach this one from now on (HOST:PORT of its internal listener): written
    /// with the next pass's heartbeat.
    package func advertise(_ address: String) {
        self.state.withLock {
            $0.podAddress = address
            $0.lastHeartbeat = nil
        }
        self.wakeup.signal()
    }

    /// This pod's internal address as advertised.
    package var podAddress: String { self.state.withLock { $0.podAddress } }

    private func heartbeat() async throws {
        let milliseconds =
            self.configuration.lease.components.seconds * 1_000
            + self.configuration.lease.components.attoseconds / 1_000_000_000_000_000
        let answers = try await self.client.send([
            RedisCommand(
                "SET",
                self.podKey(self.configuration.podID),
                RedisArgument(self.podAddress),
                "PX",
                RedisArgument(max(1, milliseconds))
            ),
            RedisCommand(
                "ZADD",
                self.podsKey,
                RedisArgument(Self.nowMilliseconds()),
                RedisArgument(self.configuration.podID)
            ),
        ])
        if case .error(let message) = answers[0] { throw RedisError(.server, "heartbeat: \(message)") }
    }

    /// Writes what is queued: one pipeline per `maxPipeline` changes.
    private func flush() async throws {
        let changes = self.state.withLock { state in
            defer { state.queue.removeAll(keepingCapacity: true) }
            return state.queue
        }
        guard !changes.isEmpty else { return }
        let pod = self.configuration.podID
        let commands = changes.map { change in
            switch change {
            case .register(let id, let record):
                RegistryScripts.register.evalSHA(
                    keys: [self.deviceKey(id), self.podSet(pod)],
                    arguments: [
                        RedisArgument(record), RedisArgument(id), RedisArgument(pod), RedisArgument(self.prefix),
                    ]
                )
            case .unregister(let id, let record):
                RegistryScripts.unregister.evalSHA(
                    keys: [self.deviceKey(id), self.podSet(pod)],
                    arguments: [RedisArgument(record), RedisArgument(id)]
                )
            }
        }
        let answers = try await self.send(commands)
        self.written.wrappingAdd(changes.count, ordering: .relaxed)
        let registered = changes.map { change -> String? in
            if case .register(let id, _) = change { return id }
            return nil
        }
        try await self.announceTakeovers(registered, answers)
    }

    /// For each device this pod just registered (`ids[i]`, nil for other commands): tells the
    /// store how many messages wait for it, and, when its previous record (`answers[i]`) was
    /// another pod's, tells that pod, which ends its session if it is still that connection
    /// (`received`). One round trip for all the notices.
    private func announceTakeovers(_ ids: [String?], _ answers: [RESPValue]) async throws {
        var notices: [RedisCommand] = []
        let stored = self.storedListener.withLock { $0 }
        for (id, answer) in zip(ids, answers) {
            guard let id, let parts = answer.array, parts.count == 2 else { continue }
            stored?(id, Int(parts[1].int ?? 0))
            guard let text = parts[0].string, let previous = Record(decoding: text),
                previous.podID != self.configuration.podID
            else { continue }
            notices.append(
                RedisCommand(
                    "PUBLISH",
                    RedisArgument(self.prefix + "pod:" + previous.podID + ":control"),
                    RedisArgument("replaced|\(previous.epoch)|\(id)")
                )
            )
        }
        if !notices.isEmpty { _ = try await self.send(notices) }
    }

    /// Sends `commands` in pipelines of `maxPipeline` and returns their answers; a `NOSCRIPT`
    /// answer (scripts flushed on the server) asks for a resync, which loads them again.
    private func send(_ commands: [RedisCommand]) async throws -> [RESPValue] {
        var start = 0
        var all: [RESPValue] = []
        while start < commands.count {
            let part = Array(commands[start..<min(commands.count, start + self.configuration.maxPipeline)])
            let answers = try await self.client.send(part)
            if answers.contains(where: { if case .error(let m) = $0 { m.hasPrefix("NOSCRIPT") } else { false } }) {
                self.state.withLock { $0.resyncRequested = true }
            }
            all += answers
            start += part.count
        }
        return all
    }

    /// After a new connection (Redis restarted, or was unreachable): loads the scripts,
    /// registers every session this pod holds, and forgets the records of devices it registered
    /// that are not here any more.
    private func resync() async throws {
        let connects = self.client.connects
        self.state.withLock { state in
            state.resyncRequested = false
            // What is queued is contained in what the resync writes.
            state.queue.removeAll(keepingCapacity: true)
        }
        let scripts = [
            RegistryScripts.register, RegistryScripts.unregister, RegistryScripts.lookup, RegistryScripts.sweep,
            RegistryScripts.sweepOne,
        ]
        let loaded = try await self.client.send(
            scripts.map { RedisCommand("SCRIPT", "LOAD", RedisArgument($0.source)) }
        )
        if let failure = loaded.first(where: { if case .error = $0 { true } else { false } }) {
            throw RedisError(.server, "SCRIPT LOAD: \(failure)")
        }
        let pod = self.configuration.podID
        let held = self.sessions()
        let heldIDs = Set(held.map(\.deviceID))
        let registered = try await self.client.execute(RedisCommand("SMEMBERS", self.podSet(pod)))
        let gone = (registered.array ?? []).compactMap(\.string).filter { !heldIDs.contains($0) }
        var commands = held.map { handle in
            RegistryScripts.register.evalSHA(
                keys: [self.deviceKey(handle.deviceID), self.podSet(pod)],
                arguments: [
                    RedisArgument(self.record(for: handle).encoded), RedisArgument(handle.deviceID), RedisArgument(pod),
                    RedisArgument(self.prefix),
                ]
            )
        }
        // A device that left while Redis was away: its record goes if it still points here.
        for id in gone {
            commands.append(
                RegistryScripts.sweepOne.evalSHA(
                    keys: [self.deviceKey(id), self.podSet(pod)],
                    arguments: [RedisArgument(pod), RedisArgument(id)]
                )
            )
        }
        // A device another pod also holds (it connected there while this pod could not write,
        // or before this pod's first pass): the record now says here, and the other pod's
        // session ends, so that one session survives.
        let answers = try await self.send(commands)
        try await self.announceTakeovers(held.map(\.deviceID) + gone.map { _ in nil }, answers)
        self.state.withLock { $0.syncedAtConnect = connects }
        self.resyncs.wrappingAdd(1, ordering: .relaxed)
        self.logger.info(
            "session registry synchronised",
            metadata: ["sessions": "\(held.count)", "forgotten": "\(gone.count)", "pod": "\(pod)"]
        )
    }

    /// Removes the records of pods whose heartbeat is older than two leases and whose liveness
    /// key is gone: a bounded number of batches per pass.
    private func sweepDeadPods() async throws {
        let lease = self.configuration.lease.components.seconds * 1_000
        let before = Self.nowMilliseconds() - 2 * lease
        let dead = try await self.client.execute(
            RedisCommand("ZRANGEBYSCORE", self.podsKey, "-inf", RedisArgument(before), "LIMIT", 0, 8)
        )
        for pod in (dead.array ?? []).compactMap(\.string) where pod != self.configuration.podID {
            for _ in 0..<10 {
                let left = try await self.client.run(
                    RegistryScripts.sweep,
                    keys: [self.podKey(pod), self.podSet(pod), self.podsKey],
                    arguments: [
                        RedisArgument(pod), RedisArgument(self.prefix), RedisArgument(self.configuration.sweepBatch),
                    ]
                )
                guard let remaining = left.int, remaining > 0 else { break }
            }
            self.swept.wrappingAdd(1, ordering: .relaxed)
            self.logger.notice("session registry: removed a dead pod's records", metadata: ["dead_pod": "\(pod)"])
        }
    }

    /// Unix time in milliseconds (heartbeat scores are compared across pods).
    static func nowMilliseconds() -> Int64 {
        Int64(Date().timeIntervalSince1970 * 1_000)
    }

    // MARK: counts

    /// The registry's and its Redis client's counts, for `/metrics`.
    package func collect(into snapshot: inout MetricsSnapshot) {
        snapshot.gauge(SeriesKey("terminus_redis_connected"), self.client.isConnected ? 1 : 0)
        snapshot.count(SeriesKey("terminus_redis_connects_total"), self.client.connects)
        snapshot.count(SeriesKey("terminus_redis_commands_total"), self.client.commandsSent)
        snapshot.count(SeriesKey("terminus_redis_round_trips_total"), self.client.roundTrips)
        snapshot.count(SeriesKey("terminus_registry_changes_total", ["outcome": "written"]), self.changesWritten)
        snapshot.count(SeriesKey("terminus_registry_changes_total", ["outcome": "dropped"]), self.changesDropped)
        snapshot.gauge(SeriesKey("terminus_registry_queued"), self.queued)
        snapshot.count(SeriesKey("terminus_registry_resyncs_total"), self.resyncCount)
        snapshot.count(SeriesKey("terminus_registry_dead_pods_swept_total"), self.podsSwept)
        snapshot.count(SeriesKey("terminus_registry_takeovers_total"), self.takeoverCount)
    }

    /// Changes written, dropped (queue overflow), resyncs and dead pods swept since start.
    package var changesWritten: Int { self.written.load(ordering: .relaxed) }
    package var changesDropped: Int { self.dropped.load(ordering: .relaxed) }
    package var resyncCount: Int { self.resyncs.load(ordering: .relaxed) }
    package var podsSwept: Int { self.swept.load(ordering: .relaxed) }
    /// Sessions this pod ended because their device connected through another pod.
    package var takeoverCount: Int { self.takeovers.load(ordering: .relaxed) }
    package var queued: Int { self.state.withLock { $0.queue.count } }
    /// Changes dropped (the queue overflowed, or Redis was away) since start.
    package var droppedCount: Int { self.dropped.load(ordering: .relaxed) }
    /// Passes of the loop (`tick`) since start.
    package var passes: Int { self.passCount.load(ordering: .relaxed) }
}

extension SessionRegistry: DeviceLocator {
    /// One `lookup` script per device, pipelined (one round trip per `maxPipeline` ids).
    package func locate(_ deviceIDs: [String]) async throws -> [String: RemoteDevice] {
        var found: [String: RemoteDevice] = [:]
        var start = 0
        while start < deviceIDs.count {
            let part = Array(deviceIDs[start..<min(deviceIDs.count, start + self.configuration.maxPipeline)])
            let answers = try await self.client.send(
                part.map {
                    RegistryScripts.lookup.evalSHA(keys: [self.deviceKey($0)], arguments: [RedisArgument(self.prefix)])
                }
            )
            for (id, var answer) in zip(part, answers) {
                if case .error(let message) = answer {
                    guard message.hasPrefix("NOSCRIPT") else { throw RedisError(.server, "lookup: \(message)") }
                    // Not loaded yet (a new Redis, or scripts flushed): `run` loads it.
                    answer = try await self.client.run(
                        RegistryScripts.lookup,
                        keys: [self.deviceKey(id)],
                        arguments: [RedisArgument(self.prefix)]
                    )
                }
                guard let (record, address) = Self.located(answer) else { continue }
                found[id] = RemoteDevice(
                    podID: record.podID,
                    podAddress: address,
                    connectedAtMs: record.connectedAtMs,
                    clientAddress: record.clientAddress
                )
            }
            start += part.count
        }
        return found
    }
}
