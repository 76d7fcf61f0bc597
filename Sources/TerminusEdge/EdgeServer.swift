package import Logging
package import NIOCore
internal import NIOPosix
package import NIOSSL
internal import Synchronization
package import TerminusCompression
package import TerminusLeanTLS
internal import TerminusListeners
package import TerminusMetrics
internal import TerminusProtocol
package import TerminusSessions

#if canImport(Glibc)
internal import Glibc
#endif

/// One device listener: address, transport security and PROXY protocol.
package struct DeviceListener: Sendable {
    package enum Security: Sendable {
        /// TLS terminated here with one shared context (built off the event loop).
        case tls(NIOSSLContext, verifiesClientCertificates: Bool)
        /// TLS terminated here by the lean engine (`device.tls.engine: lean`): OpenSSL for the
        /// handshake, then only the record keys per connection.
        case leanTLS(LeanTLSServerContext, verifiesClientCertificates: Bool)
        /// TLS is ended upstream; frames arrive in the clear.
        case plaintext

        /// Whether connections shake hands here (either engine).
        var terminatesTLS: Bool {
            if case .plaintext = self { return false }
            return true
        }
    }

    package var host: String
    package var port: Int
    package var security: Security
    package var proxyProtocol: ProxyProtocolMode
    /// The largest PROXY v2 header accepted (with TLVs).
    package var proxyHeaderMaxSize: Int
    /// `SO_REUSEPORT`: several gateway processes on one host listen on the same port and the
    /// kernel spreads new connections between them (`device.reuse_port`).
    package var reusePort: Bool

    package init(
        host: String,
        port: Int,
        security: Security,
        proxyProtocol: ProxyProtocolMode = .off,
        proxyHeaderMaxSize: Int = 1024,
        reusePort: Bool = false
    ) {
        self.host = host
        self.port = port
        self.security = security
        self.proxyProtocol = proxyProtocol
        self.proxyHeaderMaxSize = proxyHeaderMaxSize
        self.reusePort = reusePort
    }
}

/// The device edge: accepts connections, runs the per-connection pipeline
/// `[PROXY] → [TLS] → DeviceSessionHandler` (which decodes frames itself), and drains on request.
package final class EdgeServer: Sendable {
    private let group: any EventLoopGroup
    private let listener: DeviceListener
    private let shared: EdgeShared
    /// The listener's server channels: one, or one per loop under `pack` placement.
    private let serverChannels = Mutex<[any Channel]>([])
    /// Under `pack` placement with more than one loop: which loops accept.
    package let placement: LoopPlacement?

    package init(
        group: any EventLoopGroup,
        listener: DeviceListener,
        settings: EdgeSettings,
        authenticator: DeviceAuthenticator,
        directory: any SessionDirectory,
        sink: any UplinkSink,
        dictionaries: DictionarySet = DictionarySet(),
        logger: Logger
    ) throws {
        self.group = group
        self.listener = listener
        let contexts = try EdgeLoopContexts(group: group, settings: settings, dictionaries: dictionaries, sink: sink)
        self.placement =
            settings.placement.policy == .pack && contexts.loops.count > 1
            ? LoopPlacement(
                settings: settings.placement,
                loopCount: contexts.loops.count,
                mover: Self.mover(
                    loops: contexts.loops,
                    directory: directory,
                    settings: settings.placement,
                    logger: logger
                )
            ) : nil
        let verifies: Bool
        var tlsContext: NIOSSLContext?
        var leanContext: LeanTLSServerContext?
        switch listener.security {
        case .tls(let context, let verifiesClientCertificates):
            (tlsContext, verifies) = (context, verifiesClientCertificates)
        case .leanTLS(let context, let verifiesClientCertificates):
            (leanContext, verifies) = (context, verifiesClientCertificates)
        case .plaintext: verifies = false
        }
        let usesTLS = tlsContext != nil || leanContext != nil
        self.shared = EdgeShared(
            settings: settings,
            authenticator: authenticator,
            tlsContext: tlsContext,
            leanContext: leanContext,
            directory: directory,
            logger: logger,
            contexts: contexts,
            usesTLS: usesTLS,
            readsClientCertificates: verifies
        )
    }

    /// Binds the listener and starts the per-loop timer wheels.
    /// - Returns: the bound address (useful with port 0).
    package func start() async throws -> SocketAddress {
        let contexts = self.shared.contexts
        for loop in contexts.loops {
            try await loop.submit { contexts.context(for: loop).wheel.start(on: loop) }.get()
        }
        let channels = try await ListenerBindError.binding(
            "device",
            host: self.listener.host,
            port: self.listener.port,
            setting: "device.listen or --device-listen"
        ) { try await self.bindChannels(loops: contexts.loops) }
        self.serverChannels.withLock { $0 = channels }
        let channel = channels[0]
        let address = channel.localAddress!
        self.shared.logger.info(
            "device listener started",
            metadata: [
                "address": "\(address)",
                "tls": "\(self.shared.usesTLS)",
                "proxy_protocol": "\(self.listener.proxyProtocol.rawValue)",
                "placement": "\(self.shared.settings.placement.policy.rawValue)",
                "loops": "\(contexts.loops.count)",
            ]
        )
        return address
    }

    /// The listener's server channels. `spread`: one, its accepted connections given to the
    /// loops in turn (NIO's `next()`). `pack`: one listening socket, and on each loop a server
    /// channel over a duplicate of its descriptor that keeps what it accepts on its own loop;
    /// `LoopPlacement` turns each one's accepting on and off.
    private func bindChannels(loops: [any EventLoop]) async throws -> [any Channel] {
        let allocator = Self.channelAllocator(settings: self.shared.settings, logger: self.shared.logger)
        guard let placement = self.placement else {
            let bootstrap = self.bootstrap(group: self.group, childGroup: self.group, allocator: allocator, gate: nil)
            return [try await bootstrap.bind(host: self.listener.host, port: self.listener.port).get()]
        }
        let socket = try ListeningSocket(
            host: self.listener.host,
            port: self.listener.port,
            reusePort: self.listener.reusePort,
            backlog: Self.backlog
        )
        defer { socket.close() }
        var channels: [any Channel] = []
        do {
            for (index, loop) in loops.enumerated() {
                let bootstrap = self.bootstrap(
                    group: loop,
                    childGroup: loop,
                    allocator: allocator,
                    gate: (placement, index)
                )
                channels.append(try await bootstrap.withBoundSocket(try socket.duplicate()).get())
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        // NIO listens again on a socket it is given, with its default backlog (128).
        try socket.listen(backlog: Self.backlog)
        return channels
    }

    private static let backlog: Int32 = 4096

    private func bootstrap(
        group: any EventLoopGroup,
        childGroup: any EventLoopGroup,
        allocator: ByteBufferAllocator?,
        gate: (LoopPlacement, Int)?
    ) -> ServerBootstrap {
        let shared = self.shared
        let listener = self.listener
        var bootstrap = ServerBootstrap(group: group, childGroup: childGroup)
            .serverChannelOption(.backlog, value: Self.backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.socketOption(Self.reusePort), value: listener.reusePort ? 1 : 0)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: Self.readBuffers)
            // Output toward a device that does not read: above `high` the channel is not
            // writable, and the session stops reading from the device until it drains.
            .childChannelOption(
                .writeBufferWaterMark,
                value: .init(
                    low: max(1, shared.settings.outboundBufferBytes / 2),
                    high: max(2, shared.settings.outboundBufferBytes)
                )
            )
            .serverChannelInitializer { channel in
                // At the open-file limit accept fails at once and the socket stays readable: without
                // a pause the loop spins (see AcceptPauseHandler).
                channel.eventLoop.makeCompletedFuture {
                    let pause = AcceptPauseHandler(backoff: shared.settings.acceptBackoff) { shared.acceptFailed($0) }
                    try channel.pipeline.syncOperations.addHandler(pause)
                    if let (placement, index) = gate {
                        let loop = shared.contexts.context(for: channel.eventLoop)
                        try channel.pipeline.syncOperations.addHandler(
                            LoopAcceptGate(placement: placement, index: index, pause: pause) {
                                loop.metrics.openConnections
                            }
                        )
                    }
                }
            }
            .childChannelInitializer { channel in
                do {
                    try Self.initialize(channel: channel, shared: shared, listener: listener)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        if let allocator {
            bootstrap = bootstrap.childChannelOption(.allocator, value: allocator)
        }
        return bootstrap
    }

    /// `pack`: moves devices off a hot loop. Picks `count` of the loop's authenticated sessions at
    /// random and sends each `GOAWAY(SHUTTING_DOWN)` with a reconnect hint spread over
    /// `moveInterval`; they come back through the loop that accepts then (not a hot one).
    private static func mover(
        loops: [any EventLoop],
        directory: any SessionDirectory,
        settings: LoopPlacementSettings,
        logger: Logger
    ) -> LoopPlacement.Mover {
        let window = UInt32(clamping: max(0, settings.moveInterval.nanoseconds / 1_000_000))
        return { index, count in
            let loop = loops[index]
            let sessions = directory.all().filter { $0.eventLoop === loop }.shuffled().prefix(count)
            logger.info(
                "moving devices to a less busy event loop",
                metadata: ["loop": "\(index)", "devices": "\(sessions.count)"]
            )
            for session in sessions {
                session.control.goAway(
                    .shuttingDown,
                    reconnectAfterMilliseconds: UInt32.random(in: 0...window),
                    message: "moving to a less busy event loop"
                )
            }
        }
    }

    /// The allocator for device channels: `SessionBufferAllocator` (large buffers from the
    /// process's `BufferArena`) unless `limits.buffer_arena_slots` is 0 or the kernel refused
    /// the reservation; nil means NIO's default (`malloc`).
    static func channelAllocator(settings: EdgeSettings, logger: Logger) -> ByteBufferAllocator? {
        let slots = settings.effectiveBufferArenaSlots
        guard slots > 0 else {
            logger.info("buffer arena off (limits.buffer_arena_slots: 0): TLS buffers come from malloc")
            return nil
        }
        SessionBufferAllocator.reserve(slots: slots)
        guard let arena = SessionBufferAllocator.arena else {
            logger.warning(
                "cannot reserve the buffer arena's address space; TLS buffers come from malloc",
                metadata: ["slots": "\(slots)"]
            )
            return nil
        }
        logger.info(
            "buffer arena",
            metadata: [
                "slots": "\(arena.slotCount)", "slot_size": "\(arena.slotSize)",
                "reserved_mib": "\((arena.slotCount * arena.slotSize) >> 20)",
            ]
        )
        return SessionBufferAllocator.allocator
    }

    /// Read buffer sizes for device connections: small messages are the rule, so start at 512
    /// bytes (a TLS record with a ~250-byte message fits one read) and adapt between 64 bytes and
    /// 2 KiB. NIO keeps each channel's last read buffer for its next read and never shrinks it,
    /// so the maximum is what an idle connection holds after a large message: with 64 KiB, a
    /// 16 KB record left ~16 KiB per device (docs/benchmarks.md, "Issue 16"). A large message
    /// takes more reads instead. Public so that the benchmarks' bare-stack server reads the same
    /// way.
    package static let readBuffers = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 2048)

    /// Sets up the device pipeline (PROXY header, TLS, frame decoder, session) on a channel the
    /// caller made, exactly as the listener does for each accepted connection. The benchmarks
    /// drive whole sessions on an `EmbeddedChannel` this way. Call it on the channel's event
    /// loop, which must belong to the group this server was made with.
    package func adopt(_ channel: any Channel) throws {
        try Self.initialize(channel: channel, shared: self.shared, listener: self.listener)
    }

    /// `SO_REUSEPORT`, which `NIOBSDSocket.Option` does not name.
    private static let reusePort = NIOBSDSocket.Option(rawValue: SO_REUSEPORT)

    private static func initialize(channel: any Channel, shared: EdgeShared, listener: DeviceListener) throws {
        let open = shared.openConnections.wrappingAdd(1, ordering: .relaxed).newValue
        channel.closeFuture.whenComplete { _ in
            shared.openConnections.wrappingSubtract(1, ordering: .relaxed)
        }
        let now = NIODeadline.now()
        if open > shared.settings.maxConnections
            && !shared.contexts.context(for: channel.eventLoop).evictOldestUnauthenticated(
                olderThan: shared.settings.unauthenticatedEvictionAge,
                now: now
            )
        {
            shared.refusedAtCap.wrappingAdd(1, ordering: .relaxed)
            Self.refuse(channel, shared: shared, listener: listener, reason: "maximum connections reached")
            return
        }
        // Before any TLS work: the accept rate, the client address's connections (its real
        // address, when no PROXY header is expected; else the session checks it once the
        // header names it), the handshakes in progress.
        let admission = shared.admission
        if admission.admitConnection(now: now) != nil {
            Self.refuse(channel, shared: shared, listener: listener, reason: "new connections above the accept rate")
            return
        }
        if listener.proxyProtocol == .off, let remote = channel.remoteAddress {
            let host = AdmissionControl.host(of: DeviceSessionHandler.format(remote))
            guard admission.addressOpened(host) else {
                Self.refuse(
                    channel,
                    shared: shared,
                    listener: listener,
                    reason: "too many connections from one address"
                )
                return
            }
            channel.closeFuture.whenComplete { _ in admission.addressClosed(host) }
        }
        // Either engine: a handshake in progress costs the same whichever library runs it.
        if listener.security.terminatesTLS, !admission.beginHandshake() {
            Self.refuse(channel, shared: shared, listener: listener, reason: "too many TLS handshakes in progress")
            return
        }
        let sync = channel.pipeline.syncOperations
        if listener.proxyProtocol != .off {
            let parser = ProxyHeaderParser(mode: listener.proxyProtocol, maxHeaderSize: listener.proxyHeaderMaxSize)
            try sync.addHandler(ProxyProtocolHandler(parser: parser, logger: shared.logger))
        }
        let loop = shared.contexts.context(for: channel.eventLoop)
        if let context = shared.tlsContext?.value {
            try sync.addHandler(NIOSSLServerHandler(context: context))
        } else if let context = shared.leanContext?.value {
            try sync.addHandler(LeanTLSServerHandler(context: context, aead: loop.aead()))
        }
        try sync.addHandler(DeviceSessionHandler(shared: shared, loop: loop, now: loop.eventLoop.now))
    }

    /// A configuration reload: new HELLOs are checked against `authenticator` (new secrets),
    /// new connections shake hands with `tlsContext` (a renewed certificate). Sessions already
    /// established keep going. A TLS context on a plaintext listener (or none on a TLS one) is
    /// ignored: the transport changes only at a restart.
    package func reload(
        authenticator: DeviceAuthenticator,
        tlsContext: NIOSSLContext?,
        leanContext: LeanTLSServerContext? = nil
    ) {
        self.shared.authenticator.replace(with: authenticator)
        if let tlsContext, let current = self.shared.tlsContext { current.replace(with: tlsContext) }
        if let leanContext, let current = self.shared.leanContext { current.replace(with: leanContext) }
    }

    /// A configuration reload of the limits that can change while devices are connected: the
    /// admission limits (`limits.new_connections_per_second`, `new_connection_burst`,
    /// `max_handshakes`, `max_connections_per_address`, `reconnect.*`) and `auth.throttle.*` from
    /// the next connection or HELLO on; `limits.rate.*` for sessions that connect from now on
    /// (a connected device keeps the rates it started with). Everything else in `settings` is
    /// ignored: it takes a restart.
    package func reload(limits settings: EdgeSettings) {
        self.shared.admission.reconfigure(settings.admission)
        self.shared.authThrottle.reconfigure(settings.authThrottle)
        self.shared.rateLimits.replace(with: settings.rateLimits)
    }

    /// The limits `reload(limits:)` applies: admission, `auth.throttle` and `limits.rate`.
    package static func reloadableLimitsDiffer(_ old: EdgeSettings, _ new: EdgeSettings) -> Bool {
        old.admission != new.admission || old.authThrottle != new.authThrottle || old.rateLimits != new.rateLimits
    }

    /// Closes a connection the listener does not admit, before any TLS work: with
    /// `GOAWAY(SERVER_BUSY)` and a reconnect hint where a frame can be read (plaintext without
    /// PROXY), else at once. Logged with the transport's budget (20 lines a second).
    private static func refuse(_ channel: any Channel, shared: EdgeShared, listener: DeviceListener, reason: String) {
        let (log, suppressed) = shared.transportLog.admit(
            nowSeconds: NIODeadline.now().uptimeNanoseconds / 1_000_000_000
        )
        if log {
            var metadata: Logger.Metadata = [
                "code": "\(TerminusCode.serverBusy.name)", "reason": "\(reason)",
                "max": "\(shared.settings.maxConnections)", "suppressed_before": "\(suppressed)",
            ]
            if let remote = channel.remoteAddress { metadata["client"] = "\(DeviceSessionHandler.format(remote))" }
            shared.logger.warning("connection refused: \(reason)", metadata: metadata)
        }
        if case .plaintext = listener.security, listener.proxyProtocol == .off {
            var buffer = channel.allocator.buffer(capacity: 16)
            buffer.writeFrame(.goAway(GoAway(code: .serverBusy, reconnectAfterMilliseconds: 5000)))
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    /// Accepts that failed (e.g. out of file descriptors) since start.
    package var acceptFailures: Int { self.shared.acceptFailures.load(ordering: .relaxed) }

    /// Messages refused for their device's rate since start.
    package var rateLimitedMessages: Int { self.shared.rateLimited.load(ordering: .relaxed) }

    /// QoS 0 messages dropped since start because their device had `max_pending` waiting.
    package var droppedQoS0Messages: Int { self.shared.droppedQoS0.load(ordering: .relaxed) }

    /// Times since start that a device stopped reading its output and was paused.
    package var outputStalls: Int { self.shared.outputStalls.load(ordering: .relaxed) }

    /// Connections currently open on this listener (authenticated or not).
    package var openConnections: Int { self.shared.openConnections.load(ordering: .relaxed) }

    /// Connections open on each loop (in the group's order), each read on its loop.
    package func connectionsPerLoop() async -> [Int] {
        let contexts = self.shared.contexts
        var counts: [Int] = []
        for loop in contexts.loops {
            counts.append((try? await loop.submit { contexts.context(for: loop).metrics.openConnections }.get()) ?? 0)
        }
        return counts
    }

    /// Times a device's reads were paused because its inflight window was full (since start).
    package var readPauses: Int { self.shared.readPauses.load(ordering: .relaxed) }

    /// Stops accepting, sends GOAWAY(SHUTTING_DOWN) to every session with a reconnect hint
    /// spread uniformly over `reconnectWindow`, and waits up to `grace` for them to close.
    /// - Parameter outcomesBy: when what the devices sent last is answered at the latest (the
    ///   deliveries' shutdown deadline, plus a margin): sessions owed outcomes stay open until
    ///   then rather than for their close grace. Nil: the close grace.
    package func drain(reconnectWindow: TimeAmount, grace: TimeAmount, outcomesBy: NIODeadline? = nil) async {
        for channel in self.serverChannels.withLock({ $0 }) { try? await channel.close() }
        let windowMilliseconds = UInt32(clamping: max(0, reconnectWindow.nanoseconds / 1_000_000))
        let contexts = self.shared.contexts
        for loop in contexts.loops {
            try? await loop.submit {
                let context = contexts.context(for: loop)
                context.draining = true
                context.drainReconnectWindowMilliseconds = windowMilliseconds
                context.drainOutcomesBy = outcomesBy
            }.get()
        }
        let sessions = self.shared.directory.all()
        self.shared.logger.info(
            "draining",
            metadata: ["sessions": "\(sessions.count)", "reconnect_window_ms": "\(windowMilliseconds)"]
        )
        for session in sessions {
            let delay = windowMilliseconds == 0 ? 0 : UInt32.random(in: 0...windowMilliseconds)
            session.control.goAway(.shuttingDown, reconnectAfterMilliseconds: delay, message: "gateway is draining")
        }
        let deadline = NIODeadline.now() + grace
        // Cancelled (a start that failed elsewhere, or a forced stop): no waiting.
        while self.openConnections > 0 && NIODeadline.now() < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Closes the listener and stops the timer wheels. Open connections close with the
    /// event loop group.
    package func shutdown() async {
        for channel in self.serverChannels.withLock({ $0 }) { try? await channel.close() }
        let contexts = self.shared.contexts
        for loop in contexts.loops {
            try? await loop.submit { contexts.context(for: loop).shutdown() }.get()
        }
    }
}

extension EdgeServer: MetricsSource {
    /// Every loop's counts, each read on its loop; how long that read waited for its loop is
    /// the loop's lag.
    package func collectMetrics(on eventLoop: any EventLoop) -> EventLoopFuture<MetricsSnapshot> {
        let contexts = self.shared.contexts
        let parts = contexts.loops.enumerated().map { index, loop in
            let queued = NIODeadline.now()
            return loop.submit {
                var snapshot = MetricsSnapshot()
                let lag = Double((NIODeadline.now() - queued).nanoseconds) / 1e9
                snapshot.gauge(SeriesKey("terminus_event_loop_lag_seconds", ["loop": "\(index)"]), lag)
                let context = contexts.context(for: loop)
                snapshot.gauge(
                    SeriesKey("terminus_event_loop_connections", ["loop": "\(index)"]),
                    context.metrics.openConnections
                )
                contexts.context(for: loop).metrics.collect(into: &snapshot)
                return snapshot
            }
        }
        let shared = self.shared
        return EventLoopFuture.whenAllSucceed(parts, on: eventLoop).map { parts in
            var snapshot = MetricsSnapshot()
            for part in parts { snapshot.merge(part) }
            snapshot.gauge(SeriesKey("terminus_event_loops"), contexts.loops.count)
            if let placement = self.placement {
                for (index, loop) in placement.snapshot.enumerated() {
                    snapshot.gauge(SeriesKey("terminus_event_loop_utilization", ["loop": "\(index)"]), loop.utilization)
                    snapshot.gauge(
                        SeriesKey("terminus_event_loop_accepting", ["loop": "\(index)"]),
                        loop.accepting ? 1 : 0
                    )
                    snapshot.count(SeriesKey("terminus_event_loop_moves_total", ["loop": "\(index)"]), loop.moved)
                }
            }
            snapshot.count(
                SeriesKey("terminus_connections_refused_total", ["listener": "device", "reason": "max_connections"]),
                shared.refusedAtCap.load(ordering: .relaxed)
            )
            shared.admission.collect(into: &snapshot)
            snapshot.count(SeriesKey("terminus_accept_failures_total"), shared.acceptFailures.load(ordering: .relaxed))
            snapshot.count(SeriesKey("terminus_read_pauses_total"), shared.readPauses.load(ordering: .relaxed))
            snapshot.count(SeriesKey("terminus_output_stalls_total"), shared.outputStalls.load(ordering: .relaxed))
            return snapshot
        }
    }
}
