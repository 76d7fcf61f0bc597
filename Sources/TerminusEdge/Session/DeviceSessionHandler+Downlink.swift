internal import NIOCore
internal import TerminusCompression
internal import TerminusProtocol
internal import TerminusSessions

/// Frames to the device that backends asked for (PUSH), and the device's ACKs of them.
extension DeviceSessionHandler {
    /// Writes a PUSH; called on the loop by `SessionControl.push`.
    func push(topic: String, payload: ByteBuffer, qos: QoS, timeout: TimeAmount) -> EventLoopFuture<PushOutcome> {
        guard let context = self.context else { return self.loop.eventLoop.makeSucceededFuture(.connectionClosed) }
        switch self.machine.pushRequested() {
        case .write:
            break
        case .refuseSlowConsumer:
            // The device does not read what it is sent: nothing more is queued toward it.
            return context.eventLoop.makeSucceededFuture(.rejected(.slowConsumer))
        case .notConnected:
            return context.eventLoop.makeSucceededFuture(.connectionClosed)
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

    func pushAcknowledged(_ ack: Ack) {
        guard let entry = self.pendingPushes?.removeValue(forKey: ack.messageID) else { return }
        entry.timeout.cancel()
        entry.promise.succeed(ack.status == .ok ? .delivered : .rejected(ack.status))
    }

    /// The connection is gone: every push still waiting for its ACK ends `connectionClosed`.
    func failPendingPushes() {
        guard let pending = self.pendingPushes else { return }
        self.pendingPushes = nil
        for (_, entry) in pending {
            entry.timeout.cancel()
            entry.promise.succeed(.connectionClosed)
        }
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
            handler.value.close(
                SessionCloseReason(requested: code),
                reconnectAfterMilliseconds: reconnectAfterMilliseconds,
                message: message
            )
        }
    }

    func push(topic: String, payload: ByteBuffer, qos: QoS, timeout: TimeAmount) -> EventLoopFuture<PushOutcome> {
        let handler = self.handler
        return handler.eventLoop.flatSubmit {
            handler.value.push(topic: topic, payload: payload, qos: qos, timeout: timeout)
        }
    }
}
