internal import Logging
internal import NIOCore
internal import NIOSSL
internal import NIOTLS
internal import Synchronization
internal import TerminusCompression
internal import TerminusProtocol
internal import TerminusSessions

#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Drives one device connection: HELLO and authentication, PUBLISH validation and inflation,
/// ACKs from sink outcomes, keepalive, GOAWAY. Sits last in the pipeline, after TLS, and
/// decodes frames itself; confined to the channel's event loop.
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

    private let shared: EdgeShared
    private unowned let loop: EdgeLoopContext
    private var machine: DeviceSessionStateMachine
    private var context: ChannelHandlerContext?
    private let connectionID: UInt64
    private var clientAddress = "?"
    private var certificateDeviceID: String?
    private var handle: SessionHandle?
    private var aliases: [UInt16: String]?
    private var pendingRead = false
    private var needsFlush = false
    private var closeCode: TerminusCode?
    /// Downlink messages waiting for the device's ACK; allocated on the first QoS 1 push.
    private var pendingPushes: [UInt32: (promise: EventLoopPromise<PushOutcome>, timeout: Scheduled<Void>)]?
    private var nextPushID: UInt32 = 0
    private var deviceCapabilities: Capabilities = []
    /// The largest PUSH frame this device accepts (HELLO's announcement, else the gateway's).
    private var maxPushFrameSize: UInt32 = 0
    /// Numbers what this connection hands to the sink (events and messages), for `delivery_id`.
    private var sequence: UInt32 = 0
    /// The disconnected event waits for the connection's last uplink outcome.
    private var disconnectedEventCode: String?
    private var frameDecoder: FrameDecoder
    /// Bytes of a frame not complete yet; nil between frames (the usual idle state).
    private var partialFrame: ByteBuffer?
    var armedTick: Int?

    init(shared: EdgeShared, loop: EdgeLoopContext, now: NIODeadline = .now()) {
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
            rateLimits: settings.rateLimits
        )
    }

    var deviceID: String? { self.handle?.deviceID }

    // MARK: Pipeline events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let remote = context.channel.remoteAddress { self.clientAddress = Self.format(remote) }
        let now = NIODeadline.now()
        self.loop.wheel.schedule(self, at: self.machine.deadline, now: now)
        self.loop.trackUnauthenticated(self, now: now)
    }

    /// Not authenticated yet (TLS handshake or HELLO pending).
    var isAwaitingAuthentication: Bool {
        self.machine.state == .awaitingHandshake || self.machine.state == .awaitingHello
    }

    /// Closed to make room for a new connection at the connection cap.
    func evict() {
        self.closeSession(.serverBusy, reconnectAfterMilliseconds: 5_000, message: "evicted: not authenticated in time")
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        if self.closeCode == nil && self.machine.state != .closed {
            // The device went away without GOAWAY: in the middle of a frame it is unclean.
            self.closeCode = self.partialFrame == nil ? nil : .uncleanShutdown
        }
        self.machine.closed()
        self.aliases = nil
        self.partialFrame = nil
        if let pending = self.pendingPushes {
            self.pendingPushes = nil
            for (_, entry) in pending {
                entry.timeout.cancel()
                entry.promise.succeed(.connectionClosed)
            }
        }
        if let handle = self.handle {
            self.shared.directory.unregister(handle)
            let code = self.closeCode?.name ?? "PEER_CLOSED"
            self.shared.logger.info(
                "device disconnected",
                metadata: ["device": "\(handle.deviceID)", "client": "\(self.clientAddress)", "code": "\(code)"]
            )
            // Backends see the disconnected event after every message of the connection: it
            // waits for the last outcome (the handle stays until then, released after).
            self.disconnectedEventCode = code
            if self.machine.pending == 0 { self.publishDisconnectedEvent() }
        }
        context.fireChannelInactive()
    }

    private func publishDisconnectedEvent() {
        guard let handle = self.handle, let code = self.disconnectedEventCode else { return }
        self.disconnectedEventCode = nil
        self.publishEvent(DeviceEvents.disconnected, handle: handle, extra: #","code":"\#(code)""#)
        // The handle's control refers back to this handler: drop it to break the cycle.
        self.handle = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let header as ProxyHeaderReceived:
            if let source = header.source { self.clientAddress = source }
        case let tls as TLSUserEvent:
            if case .handshakeCompleted = tls {
                if self.shared.readsClientCertificates,
                    let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
                {
                    self.certificateDeviceID = CertificateIdentity.deviceID(of: certificate)
                }
                self.machine.handshakeCompleted(now: .now())
                self.loop.wheel.schedule(self, at: self.machine.deadline, now: .now())
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
        let now = NIODeadline.now()
        switch self.machine.writabilityChanged(writable: context.channel.isWritable, now: now) {
        case .pause:
            self.shared.outputStalls.wrappingAdd(1, ordering: .relaxed)
            self.loop.wheel.schedule(self, at: self.machine.deadline, now: now)
        case .resume:
            self.resumeReading(context: context)
        case .none:
            break
        }
        context.fireChannelWritabilityChanged()
    }

    /// Reading may go on: first the bytes held back while it was paused, then the socket.
    private func resumeReading(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        self.machine.partialFrame(false, now: now)  // the frame timeout restarts
        if let held = self.partialFrame {
            self.partialFrame = nil
            self.decode(held, context: context)
        }
        if self.pendingRead && !self.machine.readsPaused && self.machine.state != .closed {
            self.pendingRead = false
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case let error as ProtocolError:
            self.closeSession(error.code, message: error.message)
        case NIOSSLError.uncleanShutdown:
            self.closeForTransport(.uncleanShutdown, "closed without TLS close_notify")
        case let error as IOError where error.errnoCode == ECONNRESET || error.errnoCode == EPIPE:
            self.closeForTransport(.connectionReset, "\(error)")
        case let error as NIOSSLError:
            self.closeForTransport(.tlsFailed, "\(error)")
        case let error as BoringSSLError:
            self.closeForTransport(.tlsFailed, "\(error)")
        default:
            self.closeForTransport(self.handle == nil ? .tlsFailed : .internalError, "\(error)")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        if var partial = self.partialFrame {
            self.partialFrame = nil
            partial.writeBuffer(&buffer)
            buffer = partial
        }
        self.decode(buffer, context: context)
    }

    /// Decodes and handles every complete frame in `buffer`, unless decoding is held (then the
    /// bytes wait, at most one read's worth, since reading is paused too); keeps the rest.
    private func decode(_ input: ByteBuffer, context: ChannelHandlerContext) {
        var buffer = input
        while self.machine.state != .closed && !self.machine.decodingHeld {
            let frame: Frame?
            do {
                frame = try self.frameDecoder.decode(buffer: &buffer)
            } catch let error as ProtocolError {
                self.closeSession(error.code, message: error.message)
                return
            } catch {
                self.closeSession(.malformedFrame, message: "\(error)")
                return
            }
            guard let frame else { break }
            self.frameReceived(frame, context: context)
        }
        guard self.machine.state != .closed else { return }
        let buffered = buffer.readableBytes > 0
        if buffered {
            // Keep only the bytes not handled yet.
            if buffer.readerIndex > 0 { buffer.discardReadBytes() }
            self.partialFrame = buffer
        }
        // The usual read ends on a frame boundary with no frame pending: no clock read.
        guard buffered || self.machine.hasPartialFrame else { return }
        let now = NIODeadline.now()
        self.machine.partialFrame(buffered, now: now)
        if buffered { self.loop.wheel.schedule(self, at: self.machine.deadline, now: now) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.flushAcks()
        context.fireChannelReadComplete()
    }

    private func frameReceived(_ frame: Frame, context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        self.machine.frameReceived(now: now)
        do throws(ProtocolError) {
            switch (self.machine.state, frame) {
            case (.awaitingHello, .hello(let hello)):
                try self.handleHello(hello, context: context, now: now)
            case (.established, .publish(let message)):
                try self.handlePublish(message, now: now)
            case (.established, .ping(let opaque)):
                // Flushed once per read (channelReadComplete): a burst of PINGs costs one write.
                self.write(.pong(opaque), context: context)
                self.needsFlush = true
            case (.established, .ack(let ack)):
                self.pushAcknowledged(ack)
            case (.awaitingHello, .goAway), (.established, .goAway):
                self.closeCode = .ok
                context.close(promise: nil)
            case (.closing, _), (.closed, _):
                break  // the device's frames no longer matter
            default:
                throw ProtocolError(.unexpectedFrame, "\(frame.type) is not valid in state \(self.machine.state)")
            }
        } catch {
            // A device closed for its rate should not come straight back.
            let reconnectAfter: UInt32 = error.code == .rateLimited ? 10_000 : 0
            self.closeSession(error.code, reconnectAfterMilliseconds: reconnectAfter, message: error.message)
        }
    }

    // MARK: HELLO

    private func handleHello(_ hello: Hello, context: ChannelHandlerContext, now: NIODeadline) throws(ProtocolError) {
        if self.loop.draining {
            self.closeSession(
                .shuttingDown,
                reconnectAfterMilliseconds: self.drainDelay(),
                message: "gateway is draining"
            )
            return
        }
        let settings = self.shared.settings
        if let wait = self.shared.authThrottle.refusal(for: self.clientAddress, now: now) {
            self.closeSession(
                .authenticationThrottled,
                reconnectAfterMilliseconds: wait,
                message: "too many failed authentications from this address"
            )
            return
        }
        let deviceID: String
        do {
            deviceID = try self.shared.authenticator.authenticate(
                hello,
                certificateDeviceID: self.certificateDeviceID,
                maxDeviceIDLength: settings.maxDeviceIDLength
            )
        } catch {
            self.shared.authThrottle.failed(self.clientAddress, now: now)
            throw error
        }
        let keepalive = settings.negotiatedKeepalive(requested: hello.keepaliveSeconds)
        self.deviceCapabilities = hello.capabilities
        let gatewayLimit = UInt32(clamping: settings.maxPushFrameSize ?? settings.maxFrameSize)
        self.maxPushFrameSize = hello.maxReceiveFrameSize.map { min($0, gatewayLimit) } ?? gatewayLimit
        self.machine.established(keepalive: keepalive, now: now)
        let handle = SessionHandle(
            deviceID: deviceID,
            connectionID: self.connectionID,
            clientAddress: self.clientAddress,
            connectedAt: WallClock.nowMilliseconds(),
            eventLoop: context.eventLoop,
            control: SessionControl(handler: self, eventLoop: context.eventLoop)
        )
        self.handle = handle
        if let displaced = self.shared.directory.register(handle) {
            displaced.control.goAway(.replaced, reconnectAfterMilliseconds: WireProtocol.doNotReconnect, message: "")
        }
        let welcome = Welcome(
            keepaliveSeconds: keepalive,
            maxFrameSize: UInt32(settings.maxFrameSize),
            maxInflight: UInt16(clamping: settings.maxInflight),
            maxPayloadSize: UInt32(clamping: settings.inflateLimits.maxInflatedSize),
            maxTopicAliases: UInt16(clamping: settings.maxTopicAliases),
            capabilities: settings.maxTopicAliases > 0 ? [.topicAliases] : [],
            deviceID: deviceID,
            gatewayID: settings.instanceID
        )
        self.write(.welcome(welcome), context: context)
        context.flush()
        self.loop.wheel.schedule(self, at: self.machine.deadline, now: now)
        self.shared.logger.info(
            "device connected",
            metadata: [
                "device": "\(deviceID)", "client": "\(self.clientAddress)", "keepalive": "\(keepalive)",
                "auth": "\(self.certificateDeviceID != nil ? "certificate" : "token")",
            ]
        )
        self.publishEvent(DeviceEvents.connected, handle: handle, extra: "")
    }

    /// Hands a connect/disconnect event to the sink as an ordinary QoS 0 message on a reserved
    /// topic, so that backends subscribe to it like to any other topic. The connected event
    /// holds the device's messages until its outcome (see `connectedEventPublished`).
    private func publishEvent(_ topic: String, handle: SessionHandle, extra: String) {
        guard self.shared.settings.publishEvents else { return }
        let json =
            #"{"device_id":"\#(DeviceEvents.jsonEscaped(handle.deviceID))","client_address":"\#(DeviceEvents.jsonEscaped(handle.clientAddress))","#
            + #""gateway_instance":"\#(DeviceEvents.jsonEscaped(self.shared.settings.instanceID))","at_unix_ms":\#(WallClock.nowMilliseconds())\#(extra)}"#
        self.sequence &+= 1
        let event = UplinkMessage(
            deviceID: handle.deviceID,
            topic: topic,
            messageID: 0,
            qos: .atMostOnce,
            payload: ByteBuffer(string: json),
            receivedAt: WallClock.nowMilliseconds(),
            clientAddress: handle.clientAddress,
            connectionID: handle.connectionID,
            epoch: self.shared.epoch,
            sequence: self.sequence
        )
        if topic == DeviceEvents.connected {
            self.machine.connectedEventPublished()
            self.loop.batcher.enqueue(event, waiter: self, kind: .connectedEvent)
        } else {
            self.loop.batcher.enqueue(event, waiter: nil, kind: .atMostOnce)
        }
    }

    // MARK: PUBLISH

    private func handlePublish(_ message: Message, now: NIODeadline) throws(ProtocolError) {
        let settings = self.shared.settings
        let topic = try self.resolveTopic(message)
        try Topic.validatePublishTopic(topic, maxLength: settings.maxTopicLength)
        var payload = message.payload
        if message.compressed {
            do {
                payload = try self.loop.inflater.inflate(
                    message.payload,
                    dictionaryID: message.dictionaryID,
                    allocator: self.loop.allocator
                )
            } catch {
                switch error.kind {
                case .limitExceeded: throw ProtocolError(.inflateLimitExceeded, error.message)
                case .unknownDictionary: throw ProtocolError(.unknownDictionary, error.message)
                case .corrupt, .zlib: throw ProtocolError(.decompressionFailed, error.message)
                }
            }
        } else if payload.storageCapacity > 2 * payload.readableBytes + 256 {
            // A slice of the read buffer would keep the whole buffer (often 16 KiB or more)
            // alive for as long as the message waits for its backends, which under a slow
            // backend is seconds, for thousands of messages. An exact copy is ~100 ns.
            var copy = self.loop.allocator.buffer(capacity: payload.readableBytes)
            copy.writeImmutableBuffer(payload)
            payload = copy
        }
        switch try self.machine.publishReceived(
            qos: message.qos,
            payloadBytes: payload.readableBytes,
            limits: settings.rateLimits,
            now: now
        ) {
        case .deliver(let pause):
            if pause {
                self.shared.readPauses.wrappingAdd(1, ordering: .relaxed)
                self.shared.logger.debug(
                    "pending limit reached; reads paused",
                    metadata: ["device": "\(self.deviceID ?? "?")"]
                )
            }
        case .refuse(let seconds):
            self.shared.rateLimited.wrappingAdd(1, ordering: .relaxed)
            if message.qos == .atLeastOnce, let context = self.context {
                let ack = Ack(messageID: message.messageID, status: .rateLimited, retryAfterSeconds: seconds)
                self.write(.ack(ack), context: context)
                self.needsFlush = true
                self.flushAcks()
            }
            return
        case .drop:
            self.shared.droppedQoS0.wrappingAdd(1, ordering: .relaxed)
            return
        }
        self.sequence &+= 1
        let uplink = UplinkMessage(
            deviceID: self.handle!.deviceID,
            topic: topic,
            messageID: message.messageID,
            qos: message.qos,
            payload: payload,
            receivedAt: WallClock.nowMilliseconds(),
            clientAddress: self.clientAddress,
            connectionID: self.connectionID,
            epoch: self.shared.epoch,
            sequence: self.sequence,
            idempotencyKey: message.idempotencyKey.map { key in
                // An exact copy: a slice would pin the whole read buffer (see the payload above).
                var copy = self.loop.allocator.buffer(capacity: key.readableBytes)
                copy.writeImmutableBuffer(key)
                return copy
            }
        )
        self.loop.batcher.enqueue(uplink, waiter: self, kind: message.qos == .atLeastOnce ? .atLeastOnce : .atMostOnce)
    }

    private func resolveTopic(_ message: Message) throws(ProtocolError) -> String {
        guard let alias = message.topicAlias else { return message.topic }
        guard Int(alias) <= self.shared.settings.maxTopicAliases else {
            throw ProtocolError(.unknownTopicAlias, "topic alias \(alias) above the maximum")
        }
        if message.topic.isEmpty {
            guard let topic = self.aliases?[alias] else {
                throw ProtocolError(.unknownTopicAlias, "topic alias \(alias) is not bound")
            }
            return topic
        }
        if self.aliases == nil { self.aliases = [:] }
        self.aliases![alias] = message.topic
        return message.topic
    }

    // MARK: Downlink

    /// Writes a PUSH; called on the loop by `SessionControl.push`.
    func push(topic: String, payload: ByteBuffer, qos: QoS, timeout: TimeAmount) -> EventLoopFuture<PushOutcome> {
        guard let context = self.context, self.machine.state == .established else {
            return self.loop.eventLoop.makeSucceededFuture(.connectionClosed)
        }
        guard self.machine.acceptsPushes else {
            // The device does not read what it is sent: nothing more is queued toward it.
            return self.loop.eventLoop.makeSucceededFuture(.rejected(.slowConsumer))
        }
        var body = payload
        var compressed = false
        let threshold = self.shared.settings.pushCompressionThreshold
        if self.deviceCapabilities.contains(.compressedPush), threshold > 0, payload.readableBytes >= threshold,
            let deflated = try? self.loop.deflater.deflate(payload, allocator: context.channel.allocator),
            deflated.readableBytes < payload.readableBytes
        {
            body = deflated
            compressed = true
        }
        repeat { self.nextPushID &+= 1 } while self.nextPushID == 0 || self.pendingPushes?[self.nextPushID] != nil
        let id = qos == .atLeastOnce ? self.nextPushID : 0
        let message = Message(messageID: id, qos: qos, compressed: compressed, topic: topic, payload: body)
        // length prefix, type, flags, message id, topic length, topic, payload
        let frameSize = 4 + 2 + 4 + 2 + topic.utf8.count + body.readableBytes
        guard frameSize - 4 <= Int(self.maxPushFrameSize) else {
            return context.eventLoop.makeSucceededFuture(.rejected(.frameTooLarge))
        }
        self.write(.push(message), context: context)
        context.flush()
        guard qos == .atLeastOnce else { return context.eventLoop.makeSucceededFuture(.delivered) }
        let promise = context.eventLoop.makePromise(of: PushOutcome.self)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let scheduled = context.eventLoop.scheduleTask(in: timeout) {
            loopBound.value.pushTimedOut(id)
        }
        if self.pendingPushes == nil { self.pendingPushes = [:] }
        self.pendingPushes![id] = (promise, scheduled)
        return promise.futureResult
    }

    private func pushTimedOut(_ id: UInt32) {
        guard let entry = self.pendingPushes?.removeValue(forKey: id) else { return }
        entry.promise.succeed(.timeout)
    }

    private func pushAcknowledged(_ ack: Ack) {
        guard let entry = self.pendingPushes?.removeValue(forKey: ack.messageID) else { return }
        entry.timeout.cancel()
        entry.promise.succeed(ack.status == .ok ? .delivered : .rejected(ack.status))
    }

    // MARK: Outcomes

    func deliveryCompleted(messageID: UInt32, kind: DeliveryKind, outcome: DeliveryOutcome) {
        let read: DeviceSessionStateMachine.ReadAction
        var closeNow = false
        switch kind {
        case .connectedEvent:
            read = self.machine.connectedEventCompleted()
        case .atMostOnce:
            (read, closeNow) = self.machine.deliveryCompleted(qos: .atMostOnce)
        case .atLeastOnce:
            (read, closeNow) = self.machine.deliveryCompleted(qos: .atLeastOnce)
        }
        if self.disconnectedEventCode != nil && self.machine.pending == 0 { self.publishDisconnectedEvent() }
        guard let context = self.context, self.machine.state != .closed else { return }
        if kind == .atLeastOnce {
            self.write(.ack(outcome.ack(for: messageID)), context: context)
            self.needsFlush = true
        }
        if read == .resume { self.resumeReading(context: context) }
        if closeNow {
            self.flushAcks()
            context.close(promise: nil)
        }
    }

    func flushAcks() {
        guard self.needsFlush, let context = self.context else { return }
        self.needsFlush = false
        context.flush()
    }

    // MARK: Closing

    /// Ends the session with `code`: GOAWAY when a frame can still be sent, then close.
    func closeSession(_ code: TerminusCode, reconnectAfterMilliseconds: UInt32 = 0, message: String = "") {
        guard let context = self.context else { return }
        let now = NIODeadline.now()
        let (action, closeNow) = self.machine.close(
            code,
            reconnectAfterMilliseconds: reconnectAfterMilliseconds,
            message: message,
            now: now
        )
        switch action {
        case .none:
            return
        case .closeSilently(let code):
            self.closeCode = code
            self.logClose(code, message)
            context.close(promise: nil)
            return
        case .goAway(let goAway):
            self.closeCode = code
            self.logClose(code, message)
            self.write(.goAway(goAway), context: context)
        }
        self.needsFlush = false
        if closeNow {
            context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)))
                .assumeIsolated()
                .whenComplete { _ in context.close(promise: nil) }
        } else {
            context.flush()
        }
        self.loop.wheel.schedule(self, at: self.machine.deadline, now: now)
    }

    private func closeForTransport(_ code: TerminusCode, _ message: String) {
        guard let context = self.context, self.machine.state != .closed else { return }
        self.machine.closed()
        self.closeCode = code
        self.logClose(code, message)
        context.close(promise: nil)
    }

    private func logClose(_ code: TerminusCode, _ message: String) {
        var metadata: Logger.Metadata = [
            "code": "\(code.name)", "client": "\(self.clientAddress)", "connection": "\(self.connectionID)",
        ]
        if let device = self.deviceID { metadata["device"] = "\(device)" }
        if !message.isEmpty { metadata["reason"] = "\(message)" }
        if code.isOrderlyClose {
            self.shared.logger.info("closing device connection", metadata: metadata)
            return
        }
        // Failures come in floods (a scanner, a fuzzer, a network blip resetting thousands of
        // devices): at most 20 such lines a second, then a count of those held back.
        let (log, suppressed) = self.shared.transportLog.admit(
            nowSeconds: NIODeadline.now().uptimeNanoseconds / 1_000_000_000
        )
        guard log else { return }
        if suppressed > 0 { metadata["suppressed_before"] = "\(suppressed)" }
        self.shared.logger.notice("closing device connection", metadata: metadata)
    }

    private func drainDelay() -> UInt32 {
        let window = self.loop.drainReconnectWindowMilliseconds
        return window == 0 ? 0 : UInt32.random(in: 0...window)
    }

    // MARK: Timer wheel

    func timerFired(tick: Int, now: NIODeadline) -> NIODeadline? {
        guard let code = self.machine.timerFired(now: now) else {
            return self.machine.state == .closed ? nil : self.machine.deadline
        }
        if self.machine.state == .closing {
            self.machine.closed()
            self.context?.close(promise: nil)
            return nil
        }
        self.closeSession(code, message: "timeout")
        return nil
    }

    // MARK: Helpers

    private func write(_ frame: Frame, context: ChannelHandlerContext) {
        var buffer = self.loop.allocator.buffer(capacity: 32)
        buffer.writeFrame(frame)
        context.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    static func format(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress, let port = address.port else { return address.description }
        if case .v6 = address { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }
}

/// Lets other threads (the directory, the backend API) act on a session on its own loop.
final class SessionControl: DeviceSessionControl {
    private let handler: NIOLoopBound<DeviceSessionHandler>

    init(handler: DeviceSessionHandler, eventLoop: any EventLoop) {
        self.handler = NIOLoopBound(handler, eventLoop: eventLoop)
    }

    func goAway(_ code: TerminusCode, reconnectAfterMilliseconds: UInt32, message: String) {
        let handler = self.handler
        handler.eventLoop.execute {
            handler.value.closeSession(code, reconnectAfterMilliseconds: reconnectAfterMilliseconds, message: message)
        }
    }

    func push(topic: String, payload: ByteBuffer, qos: QoS, timeout: TimeAmount) -> EventLoopFuture<PushOutcome> {
        let handler = self.handler
        return handler.eventLoop.flatSubmit {
            handler.value.push(topic: topic, payload: payload, qos: qos, timeout: timeout)
        }
    }
}
