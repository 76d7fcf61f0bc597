internal import Logging
internal import NIOCore
internal import NIOSSL
internal import NIOTLS
internal import Synchronization
internal import TerminusLeanTLS
internal import TerminusListeners
internal import TerminusMetrics
internal import TerminusProtocol
internal import TerminusSessions

#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Wire protocol v1's codec for one device connection: turns bytes into frames and frames into
/// `DeviceSessionStateMachine` events, and carries out the actions the machine returns. It
/// decides nothing about the session itself. Sits last in the pipeline, after TLS; confined to
/// the channel's event loop.
///
/// One concept per file: this one holds the state and the pipeline events (reading, decoding,
/// writability, transport errors, timers); `+Uplink` handles HELLO and PUBLISH and their
/// outcomes, `+Downlink` PUSH and its ACKs, `+Events` the connected and disconnected events,
/// `+Closing` every way the connection ends.
///
/// Per-connection cost is kept to this object and its session handle: timers come from the
/// loop's `TimerWheel`, zlib from the loop's `Inflater`, batching from the loop's batcher. The
/// frame decoder lives inside this handler rather than in a `ByteToMessageHandler` of its own:
/// that saves a pipeline context, the handler object and its buffer queue, about 0.4 KiB a
/// session (measured by the idle-memory benchmark).
final class DeviceSessionHandler: ChannelDuplexHandler, TimerWheelTarget, DeliveryWaiter {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let shared: EdgeShared
    /// Held strongly: an `unowned` reference made every `self.loop` a reference count's round
    /// trip (`swift_unownedRetainStrong`, then a release), 549 instructions a message in all
    /// (callgrind `hot-path`: 25,687 → 25,138). The cycle this makes (the loop's wheel, its
    /// unauthenticated list and its batcher refer to sessions) lasts until the session's last
    /// timer entry fires, its batch is answered, or `EdgeLoopContext.shutdown()`.
    let loop: EdgeLoopContext
    var machine: DeviceSessionStateMachine
    var context: ChannelHandlerContext?
    let connectionID: UInt64
    var clientAddress = "?"
    var certificateDeviceID: String?
    var handle: SessionHandle?
    var aliases: [UInt16: String]?
    var pendingRead = false
    var needsFlush = false
    /// ACK frames not written yet (`queueAck`): at most one run of them, the outcomes of this
    /// session's messages in one batch, and only until its `flushAcks`.
    var queuedAcks: ByteBuffer?
    /// Downlink messages waiting for the device's ACK; allocated on the first QoS 1 push.
    var pendingPushes: [UInt32: (promise: EventLoopPromise<PushOutcome>, timeout: Scheduled<Void>)]?
    var nextPushID: UInt32 = 0
    var deviceCapabilities: Capabilities = []
    /// The largest PUSH frame this device accepts (HELLO's announcement, else the gateway's).
    var maxPushFrameSize: UInt32 = 0
    /// Numbers what this connection hands to the sink (events and messages), for `delivery_id`.
    var sequence: UInt32 = 0
    var frameDecoder: FrameDecoder
    /// Bytes of a frame not complete yet; nil between frames (the usual idle state).
    var partialFrame: ByteBuffer?
    var armedTick: Int?
    /// Where `terminus_connections` counts this connection, and whether `terminus_paused_devices`
    /// counts it (the loop's `EdgeLoopMetrics`).
    var metricsPhase = EdgeLoopMetrics.Phase.closed
    var countedPaused = false

    init(shared: EdgeShared, loop: EdgeLoopContext, now: NIODeadline) {
        self.shared = shared
        self.loop = loop
        self.connectionID = shared.makeConnectionID()
        let settings = shared.settings
        self.frameDecoder = FrameDecoder(maxFrameLength: settings.maxFrameSize)
        self.machine = DeviceSessionStateMachine(
            usesTLS: shared.usesTLS,
            now: now,
            timeouts: settings.sessionTimeouts,
            maxInflight: settings.maxInflight,
            maxPending: settings.maxPending,
            rateLimits: shared.rateLimits.value
        )
    }

    var deviceID: String? { self.machine.deviceID }

    /// The loop's clock (virtual under `EmbeddedEventLoop`, so tests control every timeout).
    var now: NIODeadline { self.loop.eventLoop.now }

    /// Not authenticated yet (TLS handshake or HELLO pending).
    var isAwaitingAuthentication: Bool {
        let phase = self.machine.phase
        return phase == .awaitingHandshake || phase == .awaitingCredential
    }

    // MARK: Pipeline events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let remote = context.channel.remoteAddress { self.clientAddress = Self.format(remote) }
        let now = self.now
        self.loop.wheel.schedule(self, at: self.machine.deadline, now: now)
        self.loop.trackUnauthenticated(self, now: now)
        self.loop.metrics.accepted += 1
        self.movePhase(to: self.shared.usesTLS ? .handshake : .authenticating)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let header as ProxyHeaderReceived:
            if let source = header.source {
                self.clientAddress = source
                // The real address is known only now: its connection count is checked here,
                // before the TLS handler sees the device's first bytes.
                let admission = self.shared.admission
                let host = AdmissionControl.host(of: source)
                guard admission.addressOpened(host) else {
                    self.closeForTransport(.evicted, "too many connections from one address")
                    return
                }
                context.channel.closeFuture.whenComplete { _ in admission.addressClosed(host) }
            }
        case let peer as LeanTLSPeerCertificate:
            // The lean engine's handshake: the certificate OpenSSL verified, before it was freed.
            if self.shared.readsClientCertificates {
                self.certificateDeviceID = CertificateIdentity.deviceID(of: peer.certificate)
            }
        case let tls as TLSUserEvent:
            if case .handshakeCompleted = tls {
                if self.shared.readsClientCertificates, self.certificateDeviceID == nil,
                    let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
                {
                    self.certificateDeviceID = CertificateIdentity.deviceID(of: certificate)
                }
                let now = self.now
                if let started = self.machine.handshakeStartedAt {
                    self.shared.admission.handshakeEnded()
                    let metrics = self.loop.metrics
                    metrics.handshakesCompleted += 1
                    metrics.handshakeDuration.record(Double((now - started).nanoseconds) / 1e9)
                    self.movePhase(to: .authenticating)
                }
                self.machine.handshakeCompleted(now: now)
                self.loop.wheel.schedule(self, at: self.machine.deadline, now: now)
            }
        default:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }

    func read(context: ChannelHandlerContext) {
        if self.machine.readsPaused {
            self.pendingRead = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let now = self.now
        switch self.machine.writabilityChanged(writable: context.channel.isWritable, now: now) {
        case .pause:
            self.shared.outputStalls.wrappingAdd(1, ordering: .relaxed)
            self.loop.wheel.schedule(self, at: self.machine.deadline, now: now)
        case .resume:
            self.resumeReading(context: context)
        case .none:
            break
        }
        self.countPaused()
        context.fireChannelWritabilityChanged()
    }

    /// Reading may go on: first the bytes held back while it was paused, then the socket.
    func resumeReading(context: ChannelHandlerContext) {
        self.machine.partialFrame(false, now: self.now)  // the frame timeout restarts
        if let held = self.partialFrame {
            self.partialFrame = nil
            self.decode(held, received: 0, context: context)
        }
        if self.pendingRead && !self.machine.readsPaused && self.machine.isReading {
            self.pendingRead = false
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case let error as ProtocolError:
            self.execute(
                self.machine.protocolViolation(code: error.code.rawValue, now: self.now),
                message: error.message
            )
        case NIOSSLError.uncleanShutdown, LeanTLSError.uncleanShutdown:
            self.closeForTransport(.uncleanShutdown, "closed without TLS close_notify")
        case let error as IOError where error.errnoCode == ECONNRESET || error.errnoCode == EPIPE:
            self.closeForTransport(.connectionReset, "\(error)")
        case let error as NIOSSLError:
            self.closeForTransport(.tlsFailed, "\(error)")
        case let error as BoringSSLError:
            self.closeForTransport(.tlsFailed, "\(error)")
        case let error as LeanTLSError:
            self.closeForTransport(.tlsFailed, "\(error)")
        default:
            self.closeForTransport(self.deviceID == nil ? .tlsFailed : .internalError, "\(error)")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        let received = buffer.readableBytes
        if var partial = self.partialFrame {
            self.partialFrame = nil
            partial.writeBuffer(&buffer)
            buffer = partial
        }
        self.decode(buffer, received: received, context: context)
    }

    /// Decodes and handles every complete frame in `buffer`, unless decoding is held (then the
    /// bytes wait, at most one read's worth, since reading is paused too); keeps the rest.
    /// - Parameter received: the bytes this read brought, counted with its frames.
    func decode(_ input: ByteBuffer, received: Int, context: ChannelHandlerContext) {
        var buffer = input
        // Counted once per read, not per frame: bytes and frames together.
        var frames = 0
        defer {
            if frames > 0 || received > 0 {
                let metrics = self.loop.metrics
                metrics.framesReceived &+= frames
                metrics.bytesReceived &+= received
            }
        }
        // A read that ended on a frame boundary is not decoded once more to find that out: each
        // call is an exclusivity check at run time on `frameDecoder` (a class's stored property
        // whose access spans the decoding) and a read of the buffer's first bytes.
        while buffer.readableBytes > 0 && self.machine.isReading && !self.machine.decodingHeld {
            let frame: Frame?
            do {
                frame = try self.frameDecoder.decode(buffer: &buffer)
            } catch let error as ProtocolError {
                self.execute(
                    self.machine.protocolViolation(code: error.code.rawValue, now: self.now),
                    message: error.message
                )
                return
            } catch {
                let code = TerminusCode.malformedFrame.rawValue
                self.execute(self.machine.protocolViolation(code: code, now: self.now), message: "\(error)")
                return
            }
            guard let frame else { break }
            frames += 1
            self.frameReceived(frame, context: context)
        }
        guard self.machine.isReading else { return }
        let buffered = buffer.readableBytes > 0
        if buffered {
            // Only the bytes not handled yet, in a buffer of their own: the read may be a slice
            // of the loop's shared plaintext (the lean engine opens a tick's small records into
            // one 16 KiB arena), which a frame trickled over minutes must not hold.
            var kept = context.channel.allocator.buffer(capacity: buffer.readableBytes)
            kept.writeBuffer(&buffer)
            self.partialFrame = kept
        }
        // The usual read ends on a frame boundary with no frame pending: no clock read.
        guard buffered || self.machine.hasPartialFrame else { return }
        let now = self.now
        self.machine.partialFrame(buffered, now: now)
        if buffered { self.loop.wheel.schedule(self, at: self.machine.deadline, now: now) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.flushAcks()
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if self.metricsPhase == .handshake { self.shared.admission.handshakeEnded() }
        let inactive = self.machine.channelInactive(partialFrame: self.partialFrame != nil)
        self.loop.metrics.closed(
            code: Self.eventCode(inactive.reason),
            reason: inactive.reason,
            phase: self.metricsPhase,
            usesTLS: self.shared.usesTLS
        )
        self.movePhase(to: .closed)
        self.countPaused()
        self.aliases = nil
        self.partialFrame = nil
        self.failPendingPushes()
        if inactive.wasEstablished, let handle = self.handle {
            self.shared.directory.unregister(handle)
            self.shared.logger.info(
                "device disconnected",
                metadata: [
                    "device": "\(handle.deviceID)", "client": "\(self.clientAddress)",
                    "code": "\(Self.eventCode(inactive.reason))",
                ]
            )
            // Backends see the disconnected event after every message of the connection: it
            // waits for the last outcome (the handle stays until then, released after).
            if inactive.publishDisconnectedEvent { self.publishDisconnectedEvent() }
        }
        context.fireChannelInactive()
    }

    // MARK: Timer wheel

    func timerFired(tick: Int, now: NIODeadline) -> NIODeadline? {
        switch self.machine.timerFired(now: now) {
        case .rearm(let deadline):
            return deadline
        case .close(let action):
            self.execute(action, message: "timeout")  // re-arms the wheel for the close grace
            return nil
        case .forceClose:
            self.context?.close(promise: nil)
            return nil
        case .stop:
            return nil
        }
    }

    // MARK: Helpers

    func write(_ frame: Frame, context: ChannelHandlerContext) {
        // After the ACKs queued before it, in order.
        self.writeQueuedAcks(context: context)
        var buffer = self.loop.allocator.buffer(capacity: 32)
        buffer.writeFrame(frame)
        let metrics = self.loop.metrics
        metrics.framesSent &+= 1
        metrics.bytesSent &+= buffer.readableBytes
        context.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    /// Appends an ACK to this session's run of ACKs, written as one buffer by `flushAcks` (or
    /// before any other frame): one write, so one TLS record, for a device's messages answered
    /// together, not one each.
    func queueAck(_ ack: Ack) {
        let loop = self.loop
        // Worked on in a local: each access to a stored property is checked for exclusivity.
        var buffer: ByteBuffer
        if let queued = self.queuedAcks.take() {
            buffer = queued
        } else if var scratch = loop.ackScratch.take() {
            // Emptied in place when nobody else holds it (see `EdgeLoopContext.ackScratch`).
            scratch.clear()
            buffer = scratch
        } else {
            buffer = loop.allocator.buffer(capacity: 32)
        }
        buffer.writeAck(ack)
        self.queuedAcks = buffer
        loop.metrics.framesSent &+= 1
        self.needsFlush = true
    }

    private func writeQueuedAcks(context: ChannelHandlerContext) {
        guard let buffer = self.queuedAcks.take() else { return }
        self.loop.metrics.bytesSent &+= buffer.readableBytes
        context.write(self.wrapOutboundOut(buffer), promise: nil)
        self.loop.ackScratch = buffer
    }

    func movePhase(to phase: EdgeLoopMetrics.Phase) {
        self.loop.metrics.moved(from: self.metricsPhase, to: phase)
        self.metricsPhase = phase
    }

    /// Keeps `terminus_paused_devices` in step with the machine after anything that may pause
    /// or resume reading (a closed session counts as not paused).
    func countPaused() {
        let paused = self.machine.readsPaused && self.metricsPhase != .closed
        guard paused != self.countedPaused else { return }
        self.countedPaused = paused
        self.loop.metrics.pausedDevices += paused ? 1 : -1
    }

    func flushAcks() {
        guard self.needsFlush, let context = self.context else { return }
        self.writeQueuedAcks(context: context)
        self.needsFlush = false
        context.flush()
    }

    static func format(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress, let port = address.port else { return address.description }
        if case .v6 = address { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }
}
