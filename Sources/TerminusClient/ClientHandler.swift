public import NIOCore
internal import TerminusCompression
public import TerminusProtocol

/// A message pushed by the gateway (downlink), payload already inflated.
public struct PushMessage: Sendable {
    public var messageID: UInt32
    public var topic: String
    public var qos: QoS
    public var payload: ByteBuffer
}

/// The client side of one connection. Confined to the channel's event loop.
final class ClientHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private var context: ChannelHandlerContext?
    let welcomePromise: EventLoopPromise<Welcome>
    let closedPromise: EventLoopPromise<GoAway?>
    private var welcome: Welcome?
    private var pending: [UInt32: EventLoopPromise<Ack>] = [:]
    private var waiting = CircularBuffer<(Message, EventLoopPromise<Ack>)>()
    private var pings = CircularBuffer<(NIODeadline, EventLoopPromise<TimeAmount>)>()
    private var goAway: GoAway?
    private var nextMessageID: UInt32 = 0
    private let pushes: AsyncStream<PushMessage>.Continuation
    private let inflater: Inflater
    private var keepaliveTask: RepeatedTask?

    init(eventLoop: any EventLoop, pushes: AsyncStream<PushMessage>.Continuation, inflater: Inflater) {
        self.welcomePromise = eventLoop.makePromise()
        self.closedPromise = eventLoop.makePromise()
        self.pushes = pushes
        self.inflater = inflater
    }

    /// The first error the pipeline reported, kept for the close's description.
    private var transportError: (any Error)?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Cancelled and dropped: the task's closure holds this handler (a cycle otherwise).
        self.keepaliveTask?.cancel()
        self.keepaliveTask = nil
        // The first transport error (a TLS alert from the gateway, a reset) says why it closed.
        let error = TerminusClientError(
            .connectionClosed,
            goAway: self.goAway,
            self.transportError.map { "connection closed: \($0)" } ?? "connection closed"
        )
        let refused = TerminusClientError(.refused, goAway: self.goAway, "refused by the gateway")
        self.welcomePromise.fail(self.goAway == nil ? error : refused)
        for promise in self.pending.values { promise.fail(error) }
        self.pending.removeAll()
        while let (_, promise) = self.waiting.popFirst() { promise.fail(error) }
        while let (_, promise) = self.pings.popFirst() { promise.fail(error) }
        self.pushes.finish()
        self.closedPromise.succeed(self.goAway)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.transportError == nil { self.transportError = error }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .welcome(let welcome):
            self.welcome = welcome
            self.welcomePromise.succeed(welcome)
            self.startKeepalive(context: context, seconds: welcome.keepaliveSeconds)
        case .ack(let ack):
            if let promise = self.pending.removeValue(forKey: ack.messageID) {
                promise.succeed(ack)
                self.sendWaiting(context: context)
            }
        case .pong:
            if let (sent, promise) = self.pings.popFirst() { promise.succeed(.now() - sent) }
        case .goAway(let goAway):
            self.goAway = goAway
        case .push(let message):
            self.receivePush(message, context: context)
        case .ping(let opaque):
            context.writeAndFlush(self.wrapOutboundOut(.pong(opaque)), promise: nil)
        case .hello, .publish:
            self.goAway = GoAway(code: .unexpectedFrame, message: "gateway sent a device frame")
            context.close(promise: nil)
        }
    }

    private func receivePush(_ message: Message, context: ChannelHandlerContext) {
        var payload = message.payload
        if message.compressed {
            guard
                let inflated = try? self.inflater.inflate(
                    message.payload,
                    dictionaryID: message.dictionaryID,
                    allocator: context.channel.allocator
                )
            else {
                context.writeAndFlush(
                    self.wrapOutboundOut(.goAway(GoAway(code: .decompressionFailed, message: "bad PUSH payload"))),
                    promise: nil
                )
                context.close(promise: nil)
                return
            }
            payload = inflated
        }
        self.pushes.yield(
            PushMessage(messageID: message.messageID, topic: message.topic, qos: message.qos, payload: payload)
        )
    }

    private func startKeepalive(context: ChannelHandlerContext, seconds: UInt16) {
        guard seconds > 0 else { return }
        // Well inside the gateway's 1.5 × keepalive idle limit.
        let interval = TimeAmount.milliseconds(Int64(seconds) * 1000 * 2 / 3)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.keepaliveTask = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            loopBound.value.sendPing(promise: nil)
        }
    }

    // MARK: Operations (on the loop)

    func publish(_ message: Message, promise: EventLoopPromise<Ack>?) {
        guard let context = self.context else {
            promise?.fail(TerminusClientError(.connectionClosed, "connection closed"))
            return
        }
        var message = message
        guard message.qos == .atLeastOnce, let promise else {
            message.messageID = 0
            context.writeAndFlush(self.wrapOutboundOut(.publish(message)), promise: nil)
            promise?.succeed(Ack(messageID: 0, status: .ok))
            return
        }
        message.messageID = self.takeMessageID()
        let limit = Int(self.welcome?.maxInflight ?? 1)
        if self.pending.count < limit {
            self.pending[message.messageID] = promise
            context.writeAndFlush(self.wrapOutboundOut(.publish(message)), promise: nil)
        } else {
            self.waiting.append((message, promise))
        }
    }

    private func sendWaiting(context: ChannelHandlerContext) {
        let limit = Int(self.welcome?.maxInflight ?? 1)
        var wrote = false
        while self.pending.count < limit, let (message, promise) = self.waiting.popFirst() {
            self.pending[message.messageID] = promise
            context.write(self.wrapOutboundOut(.publish(message)), promise: nil)
            wrote = true
        }
        if wrote { context.flush() }
    }

    private func takeMessageID() -> UInt32 {
        repeat {
            self.nextMessageID &+= 1
        } while self.nextMessageID == 0 || self.pending[self.nextMessageID] != nil
        return self.nextMessageID
    }

    func sendPing(promise: EventLoopPromise<TimeAmount>?) {
        guard let context = self.context else {
            promise?.fail(TerminusClientError(.connectionClosed, "connection closed"))
            return
        }
        if let promise {
            self.pings.append((.now(), promise))
        } else {
            self.pings.append((.now(), context.eventLoop.makePromise()))
        }
        context.writeAndFlush(self.wrapOutboundOut(.ping(context.channel.allocator.buffer(capacity: 0))), promise: nil)
    }

    func acknowledge(messageID: UInt32, status: TerminusCode) {
        self.context?.writeAndFlush(self.wrapOutboundOut(.ack(Ack(messageID: messageID, status: status))), promise: nil)
    }

    func sendFrame(_ frame: Frame) {
        self.context?.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
    }

    var inflight: Int { self.pending.count + self.waiting.count }
}

/// Writes the preamble (e.g. a PROXY header) before TLS starts, then leaves the pipeline.
final class PreambleHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    private let bytes: [UInt8]

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: self.bytes.count)
        buffer.writeBytes(self.bytes)
        context.writeAndFlush(NIOAny(buffer), promise: nil)
        context.fireChannelActive()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
