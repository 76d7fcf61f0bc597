internal import Logging
internal import NIOCore
internal import Synchronization
internal import TerminusCompression
internal import TerminusListeners
internal import TerminusMetrics
internal import TerminusProtocol
internal import TerminusSessions

/// Frames from the device: HELLO, PUBLISH and their outcomes (ACK), PING, the device's GOAWAY.
extension DeviceSessionHandler {
    func frameReceived(_ frame: Frame, context: ChannelHandlerContext) {
        let now = self.now
        switch frame {
        case .hello(let hello):
            self.helloReceived(hello, context: context, now: now)
        case .publish(let message):
            self.publishReceived(message, now: now)
        case .ping(let opaque):
            switch self.machine.receivedControl(now: now) {
            case .handle:
                // Flushed once per read (channelReadComplete): a burst of PINGs costs one write.
                self.write(.pong(opaque), context: context)
                self.needsFlush = true
            case .close(let action):
                self.execute(action, message: "PING is not valid before HELLO")
            case .ignore:
                break
            }
        case .ack(let ack):
            switch self.machine.receivedControl(now: now) {
            case .handle: self.pushAcknowledged(ack)
            case .close(let action): self.execute(action, message: "ACK is not valid before HELLO")
            case .ignore: break
            }
        case .goAway:
            switch self.machine.receivedGoodbye(now: now) {
            case .closeNow: context.close(promise: nil)
            case .close(let action): self.execute(action, message: "GOAWAY is not valid here")
            case .ignore: break
            }
        case .welcome, .pong, .push:
            // Frames only the gateway sends.
            self.execute(
                self.machine.close(.unexpectedMessage, now: now),
                message: "\(frame.type) is not valid from a device"
            )
        }
    }

    // MARK: HELLO

    private func helloReceived(_ hello: Hello, context: ChannelHandlerContext, now: NIODeadline) {
        let action = self.machine.receivedCredential(
            now: now,
            draining: self.loop.draining,
            drainReconnectAfterMilliseconds: self.loop.draining ? self.drainDelay() : 0,
            throttledForMilliseconds: self.shared.authThrottle.refusal(for: self.clientAddress, now: now)
        )
        switch action {
        case .authenticate:
            break
        case .close(let close):
            self.execute(close, message: Self.refusalMessage(close), claimedDevice: hello.deviceID)
            return
        case .ignore:
            return
        }
        let settings = self.shared.settings
        let deviceID: String
        do {
            deviceID = try self.shared.authenticator.value.authenticate(
                DeviceCredential(
                    hello: hello,
                    certificateDeviceID: self.certificateDeviceID,
                    clientAddress: self.clientAddress
                ),
                maxDeviceIDLength: settings.maxDeviceIDLength
            )
        } catch {
            self.shared.authThrottle.failed(self.clientAddress, now: now)
            self.execute(
                self.machine.authenticationFailed(error, now: now),
                message: error.message,
                claimedDevice: hello.deviceID
            )
            return
        }
        if let wait = self.shared.admission.authenticated(deviceID, now: now) {
            let limits = self.shared.admission.settings
            self.close(
                .reconnectingTooOften,
                reconnectAfterMilliseconds: wait,
                message:
                    "authenticated more than \(limits.reconnectMax) times in \(limits.reconnectWindow.nanoseconds / 1_000_000_000) s"
            )
            return
        }
        let keepalive = settings.negotiatedKeepalive(requested: hello.keepaliveSeconds)
        self.deviceCapabilities = hello.capabilities
        let gatewayLimit = UInt32(clamping: settings.maxPushFrameSize ?? settings.maxFrameSize)
        self.maxPushFrameSize = hello.maxReceiveFrameSize.map { min($0, gatewayLimit) } ?? gatewayLimit
        self.machine.authenticated(deviceID: deviceID, keepaliveSeconds: keepalive, now: now)
        let handle = SessionHandle(
            deviceID: deviceID,
            connectionID: self.connectionID,
            clientAddress: self.clientAddress,
            connectedAt: WallClock.nowMilliseconds(),
            eventLoop: context.eventLoop,
            control: SessionControl(handler: self, eventLoop: context.eventLoop)
        )
        self.handle = handle
        self.loop.metrics.authentications += 1
        self.movePhase(to: .established)
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
        self.publishConnectedEvent(handle)
    }

    private static func refusalMessage(_ action: DeviceSessionStateMachine.CloseAction) -> String {
        switch action {
        case .goAway(.shuttingDown, _, _): "gateway is draining"
        case .goAway(.authenticationThrottled, _, _): "too many failed authentications from this address"
        default: "HELLO is not valid here"
        }
    }

    // MARK: PUBLISH

    /// `Topic.validatePublishTopic`, skipped when the topic is the one this loop validated last
    /// at the same limit (about 700 instructions a message, callgrind; a string compare then).
    private func validate(_ topic: String) throws(ProtocolError) {
        let maxLength = self.shared.settings.maxTopicLength
        let loop = self.loop
        let last = loop.validTopic
        if last.maxLength == maxLength && last.topic == topic { return }
        try Topic.validatePublishTopic(topic, maxLength: maxLength)
        loop.validTopic = ValidTopic(topic: topic, maxLength: maxLength)
    }

    private func publishReceived(_ message: Message, now: NIODeadline) {
        guard self.machine.phase == .established else {
            // Before HELLO (a protocol error) or while closing (ignored): the machine decides.
            if case .close(let action) = self.machine.receivedPublish(qos: message.qos, payloadBytes: 0, now: now) {
                self.execute(action, message: "PUBLISH is not valid before HELLO")
            }
            return
        }
        let payload: ByteBuffer
        let topic: String
        do throws(ProtocolError) {
            topic = try self.resolveTopic(message)
            try self.validate(topic)
            payload = try self.payload(of: message)
        } catch {
            self.execute(self.machine.protocolViolation(code: error.code.rawValue, now: now), message: error.message)
            return
        }
        switch self.machine.receivedPublish(qos: message.qos, payloadBytes: payload.readableBytes, now: now) {
        case .deliver(let pause):
            if pause {
                self.shared.readPauses.wrappingAdd(1, ordering: .relaxed)
                self.countPaused()
                self.shared.logger.debug(
                    "pending limit reached; reads paused",
                    metadata: ["device": "\(self.deviceID ?? "?")"]
                )
            }
        case .refuse(let seconds):
            self.shared.rateLimited.wrappingAdd(1, ordering: .relaxed)
            self.loop.metrics.uplink(qos: message.qos, .rateLimited)
            if message.qos == .atLeastOnce, self.context != nil {
                self.queueAck(Ack(messageID: message.messageID, status: .rateLimited, retryAfterSeconds: seconds))
                self.flushAcks()
            }
            return
        case .drop:
            self.shared.droppedQoS0.wrappingAdd(1, ordering: .relaxed)
            self.loop.metrics.uplink(qos: message.qos, .dropped)
            return
        case .close(let action):
            let text =
                switch action {
                case .goAway(.inflightExceeded, _, _):
                    "more than \(self.shared.settings.maxInflight) unacknowledged messages"
                case .goAway(.rateLimited, _, _): "messages in a row above the rate limit"
                default: "PUBLISH is not valid here"
                }
            self.execute(action, message: text)
            return
        case .ignore:
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
            idempotencyKey: message.idempotencyKey
        )
        self.loop.batcher.enqueue(uplink, waiter: self, kind: message.qos == .atLeastOnce ? .atLeastOnce : .atMostOnce)
    }

    /// The message's payload: inflated when compressed, else a slice of the read.
    private func payload(of message: Message) throws(ProtocolError) -> ByteBuffer {
        if message.compressed {
            do {
                let inflated = try self.loop.inflater.inflate(
                    message.payload,
                    dictionaryID: message.dictionaryID,
                    allocator: self.loop.allocator
                )
                self.loop.metrics.inflateInput &+= message.payload.readableBytes
                self.loop.metrics.inflateOutput &+= inflated.readableBytes
                return inflated
            } catch {
                switch error.kind {
                case .limitExceeded: throw ProtocolError(.inflateLimitExceeded, error.message)
                case .unknownDictionary: throw ProtocolError(.unknownDictionary, error.message)
                case .corrupt, .zlib: throw ProtocolError(.decompressionFailed, error.message)
                }
            }
        }
        // A slice of the read, not a copy: nothing keeps it past the tick's edge batch (the
        // backend router encodes a message before it waits for a service's window; see
        // `UplinkSink`). A copy cost an allocation a message, and with the lean engine's arena
        // of opened records every payload would be copied.
        return message.payload
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

    // MARK: Outcomes

    func deliveryCompleted(messageID: UInt32, kind: DeliveryKind, outcome: DeliveryOutcome, receivedAt: NIODeadline) {
        let qos: QoS? =
            switch kind {
            case .connectedEvent: nil
            case .atMostOnce: .atMostOnce
            case .atLeastOnce: .atLeastOnce
            }
        if let qos { self.countOutcome(outcome, qos: qos, receivedAt: receivedAt) }
        let action = self.machine.deliveryCompleted(qos: qos)
        if action.publishDisconnectedEvent { self.publishDisconnectedEvent() }
        guard let context = self.context else { return }
        if action.acknowledge { self.queueAck(outcome.ack(for: messageID)) }
        if action.resumeReading {
            self.resumeReading(context: context)
            self.countPaused()
        }
        if action.closeNow {
            self.flushAcks()
            context.close(promise: nil)
        }
    }

    /// `terminus_uplink_messages_total` and, for QoS 1, `terminus_publish_ack_duration_seconds`
    /// (from the tick that read the PUBLISH to its outcome).
    private func countOutcome(_ outcome: DeliveryOutcome, qos: QoS, receivedAt: NIODeadline) {
        let counted: EdgeLoopMetrics.UplinkOutcome =
            switch outcome {
            case .accepted: .ok
            case .noRoute: .noRoute
            case .rejected: .rejected
            case .retryLater: .retryLater
            }
        let ackSeconds = qos == .atLeastOnce ? Double((self.now - receivedAt).nanoseconds) / 1e9 : nil
        self.loop.metrics.uplink(qos: qos, counted, ackSeconds: ackSeconds)
    }
}
