package import Logging
package import NIOCore
internal import ServiceLifecycle
internal import Synchronization
internal import TerminusBackend
package import TerminusMetrics
internal import TerminusProtocol
package import TerminusRedis
package import TerminusSessions

/// Offline store-and-forward: messages sent with `store_ttl_ms` to a device that is offline, or
/// that did not acknowledge in time, are kept in Redis (`StoreScripts`: per device, in order,
/// capped by count and bytes, each expiring at its TTL) and delivered when the device connects
/// to any pod, before new stored-class messages, each removed only after the device's ACK.
///
/// Delivery ("replay") runs on the pod that holds the device: at its connect (the registry's
/// write tells how many messages wait), when this pod stores one for it, and when another pod
/// does (`stored|{id}` on this pod's channel). One message at a time, in order, each pushed as
/// QoS 1 with `pushTimeout`: an ACK (or a refusal by the device) removes it; no ACK in time, or
/// the connection closing, stops the replay and leaves it for the next connect.
///
/// While a device's replay runs, or from its connect until the registry's write has told
/// whether anything is stored (`mustQueue`), new stored-class messages for it are appended to
/// the store, not pushed, so that they arrive after the older ones.
package final class DeviceMessageStore: MessageStoring, Service, Sendable {
    package struct Configuration: Sendable {
        /// Messages kept per device, at most (`fleet.store.max_messages`).
        package var maxMessages = 200
        /// Topic and payload bytes kept per device, at most (`fleet.store.max_bytes`).
        package var maxBytes = 1_048_576
        /// The longest TTL (`fleet.store.max_ttl`).
        package var maxTTL: Duration = .seconds(72 * 3600)
        /// How long a replayed message waits for the device's ACK (`fleet.store.push_timeout`).
        package var pushTimeout: Duration = .seconds(10)
        /// Messages read from Redis per round trip of a replay.
        package var batch = 16

        package init() {}
    }

    /// A device this pod holds whose stored messages are being delivered, or not known yet.
    private struct Replay {
        /// The session it is for: a reconnect starts over.
        var connectionID: UInt64
        var running = false
        /// Something was stored meanwhile: read again before finishing.
        var again = false
    }

    private enum Outcome: String, CaseIterable {
        case stored, full, delivered, rejected, failed
    }

    package let configuration: Configuration
    private let client: RedisClient
    private let prefix: String
    private let podID: String
    private let local: @Sendable (String) -> SessionHandle?
    private let logger: Logger
    private let replays = Mutex<[String: Replay]>([:])
    /// Replays to begin: a device and the connection its replay is for.
    private let starts: AsyncStream<(deviceID: String, connectionID: UInt64)>
    private let start: AsyncStream<(deviceID: String, connectionID: UInt64)>.Continuation
    private let counters = Mutex<[Int]>(Array(repeating: 0, count: Outcome.allCases.count))

    /// - Parameter local: this pod's session of a device, if any.
    package init(
        configuration: Configuration,
        client: RedisClient,
        keyPrefix: String,
        podID: String,
        local: @escaping @Sendable (String) -> SessionHandle?,
        logger: Logger
    ) {
        self.configuration = configuration
        self.client = client
        self.prefix = keyPrefix
        self.podID = podID
        self.local = local
        self.logger = logger
        (self.starts, self.start) = AsyncStream.makeStream()
    }

    package var maxTTLMilliseconds: UInt32 {
        let (seconds, attoseconds) = self.configuration.maxTTL.components
        return UInt32(clamping: seconds * 1_000 + attoseconds / 1_000_000_000_000_000)
    }

    private func streamKey(_ id: String) -> RedisArgument { RedisArgument(self.prefix + "store:" + id) }
    private func bytesKey(_ id: String) -> RedisArgument { RedisArgument(self.prefix + "store:" + id + ":bytes") }

    private static func nowMilliseconds() -> Int64 { SessionRegistry.nowMilliseconds() }

    private func count(_ outcome: Outcome, _ amount: Int = 1) {
        self.counters.withLock { $0[Outcome.allCases.firstIndex(of: outcome)!] += amount }
    }

    // MARK: MessageStoring

    package func mustQueue(_ deviceID: String) -> Bool {
        self.replays.withLock { $0[deviceID] != nil }
    }

    package func store(
        deviceID: String,
        topic: String,
        payload: ByteBuffer,
        ttlMilliseconds: UInt32
    ) async throws -> Bool {
        let now = Self.nowMilliseconds()
        let ttl = min(ttlMilliseconds, self.maxTTLMilliseconds)
        let answer = try await self.client.run(
            StoreScripts.add,
            keys: [
                self.streamKey(deviceID), self.bytesKey(deviceID), RedisArgument(self.prefix + "device:" + deviceID),
            ],
            arguments: [
                RedisArgument(now), RedisArgument(now + Int64(ttl)), RedisArgument(topic), RedisArgument(payload),
                RedisArgument(self.configuration.maxMessages), RedisArgument(self.configuration.maxBytes),
                RedisArgument(self.prefix), RedisArgument(self.podID), RedisArgument(deviceID),
            ]
        )
        guard let parts = answer.array, parts.count == 2, let result = parts[0].string else {
            self.count(.failed)
            throw RedisError(.server, "store: unexpected answer \(answer)")
        }
        guard result == "OK" else {
            self.count(.full)
            return false
        }
        self.count(.stored)
        // Held here: deliver it (after what is already being delivered).
        if parts[1].string == self.podID { self.waiting(deviceID, count: 1) }
        return true
    }

    package func counts(_ deviceIDs: [String]) async throws -> [String: Int] {
        guard !deviceIDs.isEmpty else { return [:] }
        let now = RedisArgument(Self.nowMilliseconds())
        let answers = try await self.client.send(
            deviceIDs.map { StoreScripts.count.evalSHA(keys: [self.streamKey($0)], arguments: [now]) }
        )
        var counts: [String: Int] = [:]
        for (id, answer) in zip(deviceIDs, answers) {
            if case .error(let message) = answer {
                guard message.hasPrefix("NOSCRIPT") else { throw RedisError(.server, "store count: \(message)") }
                // Scripts flushed on the server: load it once, then ask again.
                let value = try await self.client.run(StoreScripts.count, keys: [self.streamKey(id)], arguments: [now])
                counts[id] = Int(value.int ?? 0)
                continue
            }
            counts[id] = Int(answer.int ?? 0)
        }
        return counts
    }

    // MARK: the sessions of this pod

    /// A device connected here: until the registry's write tells how many messages wait, new
    /// stored-class messages for it queue in the store.
    package func sessionStarted(_ handle: SessionHandle) {
        self.replays.withLock { $0[handle.deviceID] = Replay(connectionID: handle.connectionID) }
    }

    package func sessionEnded(_ handle: SessionHandle) {
        self.replays.withLock { replays in
            if replays[handle.deviceID]?.connectionID == handle.connectionID { replays[handle.deviceID] = nil }
        }
    }

    /// `count` messages wait for `deviceID` (at its connect, or stored since): starts its
    /// replay if this pod holds it and none runs.
    package func waiting(_ deviceID: String, count: Int) {
        guard let session = self.local(deviceID) else { return }
        let begin = self.replays.withLock { replays -> Bool in
            var replay = replays[deviceID] ?? Replay(connectionID: session.connectionID)
            if replay.connectionID != session.connectionID { replay = Replay(connectionID: session.connectionID) }
            if replay.running {
                replay.again = replay.again || count > 0
                replays[deviceID] = replay
                return false
            }
            guard count > 0 else {
                // Nothing stored: messages go straight to the device from now on.
                replays[deviceID] = nil
                return false
            }
            replay.running = true
            replays[deviceID] = replay
            return true
        }
        if begin { self.start.yield((deviceID, session.connectionID)) }
    }

    /// Runs the replays until graceful shutdown.
    package func run() async throws {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                for await begin in self.starts {
                    group.addTask { await self.replay(begin.deviceID, for: begin.connectionID) }
                }
            }
        } onGracefulShutdown: {
            self.start.finish()
        }
    }

    /// Delivers `deviceID`'s stored messages in order to this pod's session of it, connection
    /// `connectionID`. It stops when that connection is no longer the device's here: a new
    /// connection of the device starts a replay of its own, and two replays for one connection
    /// would push the same messages twice.
    private func replay(_ deviceID: String, for connectionID: UInt64) async {
        while !Task.isShuttingDownGracefully {
            guard let session = self.local(deviceID), session.connectionID == connectionID,
                self.replays.withLock({ $0[deviceID]?.connectionID }) == connectionID
            else { return self.finish(deviceID, connectionID) }
            let entries: [(id: RedisArgument, topic: String, payload: ByteBuffer)]
            do {
                entries = try await self.take(deviceID)
            } catch {
                self.logger.warning(
                    "stored messages not delivered: the store cannot be read",
                    metadata: ["device_id": "\(deviceID)", "error": "\(error)"]
                )
                return self.finish(deviceID, session.connectionID)
            }
            if entries.isEmpty {
                let done = self.replays.withLock { replays -> Bool in
                    guard var replay = replays[deviceID], replay.connectionID == session.connectionID else {
                        return true
                    }
                    if replay.again {
                        replay.again = false
                        replays[deviceID] = replay
                        return false
                    }
                    replays[deviceID] = nil
                    return true
                }
                if done { return }
                continue
            }
            for entry in entries {
                let outcome = try? await session.control.push(
                    topic: entry.topic,
                    payload: entry.payload,
                    qos: .atLeastOnce,
                    timeout: TimeAmount(self.configuration.pushTimeout)
                ).get()
                switch outcome {
                case .rejected(.slowConsumer):
                    // Not refused by the device: it is not reading. Kept for the next connect.
                    return self.finish(deviceID, session.connectionID)
                case .delivered, .rejected:
                    // Acknowledged, or refused by the device (counted): either way it is done.
                    if case .rejected = outcome { self.count(.rejected) } else { self.count(.delivered) }
                    _ = try? await self.client.run(
                        StoreScripts.remove,
                        keys: [self.streamKey(deviceID), self.bytesKey(deviceID)],
                        arguments: [entry.id]
                    )
                case .timeout, .connectionClosed, nil:
                    // Kept for the next connect.
                    return self.finish(deviceID, session.connectionID)
                }
            }
        }
    }

    /// The replay for `connectionID` ended; a newer connection's entry stays.
    private func finish(_ deviceID: String, _ connectionID: UInt64) {
        self.replays.withLock { replays in
            if replays[deviceID]?.connectionID == connectionID { replays[deviceID] = nil }
        }
    }

    private func take(_ deviceID: String) async throws -> [(id: RedisArgument, topic: String, payload: ByteBuffer)] {
        let answer = try await self.client.run(
            StoreScripts.take,
            keys: [self.streamKey(deviceID), self.bytesKey(deviceID)],
            arguments: [RedisArgument(Self.nowMilliseconds()), RedisArgument(self.configuration.batch)]
        )
        let flat = answer.array ?? []
        var entries: [(id: RedisArgument, topic: String, payload: ByteBuffer)] = []
        var index = 0
        while index + 2 < flat.count {
            if case .bulkString(let id) = flat[index], let topic = flat[index + 1].string,
                case .bulkString(let payload) = flat[index + 2]
            {
                entries.append((RedisArgument(id), topic, payload))
            }
            index += 3
        }
        return entries
    }

    /// `terminus_store_messages_total{outcome}` and `terminus_store_replays`.
    package func collect(into snapshot: inout MetricsSnapshot) {
        let counts = self.counters.withLock { $0 }
        for (index, outcome) in Outcome.allCases.enumerated() {
            snapshot.count(SeriesKey("terminus_store_messages_total", ["outcome": outcome.rawValue]), counts[index])
        }
        snapshot.gauge(
            SeriesKey("terminus_store_replays"),
            self.replays.withLock { $0.values.filter(\.running).count }
        )
    }
}
