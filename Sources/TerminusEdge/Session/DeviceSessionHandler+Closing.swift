internal import Logging
internal import NIOCore
internal import TerminusProtocol

/// Every way the connection ends: carrying out the machine's `CloseAction`, transport
/// failures, eviction, and the one log line each close gets.
extension DeviceSessionHandler {
    /// Ends the session for `reason` (takeover, kick, drain: `SessionControl`; eviction).
    func close(_ reason: SessionCloseReason, reconnectAfterMilliseconds: UInt32? = nil, message: String = "") {
        // A drain answers what is still in flight when it ends: the session waits for that,
        // however short its close grace.
        let action = self.machine.close(
            reason,
            reconnectAfterMilliseconds: reconnectAfterMilliseconds,
            outcomesUntil: reason == .shuttingDown ? self.loop.drainOutcomesBy : nil,
            now: self.now
        )
        self.execute(action, message: message)
    }

    /// Closed to make room for a new connection at the connection cap.
    func evict() {
        self.close(.evicted, message: "evicted: not authenticated in time")
    }

    /// Carries out a close the machine decided: GOAWAY when a frame can still be sent, then
    /// close, now or once the outcomes still owed are written (the close grace bounds both).
    /// - Parameter claimedDevice: the device id a refused HELLO named (logged; not trusted).
    func execute(_ action: DeviceSessionStateMachine.CloseAction, message: String, claimedDevice: String? = nil) {
        guard let context = self.context else { return }
        switch action {
        case .none:
            return
        case .closeSilently(let reason):
            self.logClose(reason, message, claimedDevice: claimedDevice)
            context.close(promise: nil)
        case .goAway(let reason, let reconnectAfter, let closeNow):
            self.logClose(reason, message, claimedDevice: claimedDevice)
            let goAway = GoAway(
                code: TerminusCode(reason),
                reconnectAfterMilliseconds: reconnectAfter,
                message: message
            )
            self.write(.goAway(goAway), context: context)
            self.needsFlush = false
            if closeNow {
                context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)))
                    .assumeIsolated()
                    .whenComplete { _ in context.close(promise: nil) }
            } else {
                context.flush()
            }
            // The close grace: a GOAWAY stuck behind output the device does not read, or
            // outcomes that never come, cannot keep the connection.
            self.loop.wheel.schedule(self, at: self.machine.deadline, now: self.now)
        }
    }

    /// The transport failed (reset, TLS error): close without a frame.
    func closeForTransport(_ reason: SessionCloseReason, _ message: String) {
        guard let context = self.context, let reason = self.machine.transportFailed(reason, now: self.now) else {
            return
        }
        self.logClose(reason, message)
        context.close(promise: nil)
    }

    func logClose(_ reason: SessionCloseReason, _ message: String, claimedDevice: String? = nil) {
        let code = TerminusCode(reason)
        var metadata: Logger.Metadata = [
            "code": "\(code.name)", "client": "\(self.clientAddress)", "connection": "\(self.connectionID)",
        ]
        if let device = self.deviceID {
            metadata["device"] = "\(device)"
        } else if let claimed = claimedDevice, !claimed.isEmpty {
            // What the device said it was; at most 128 characters of it (the log escapes the rest).
            metadata["device"] = "\(claimed.prefix(128))"
        }
        if !message.isEmpty { metadata["reason"] = "\(message)" }
        if reason.isOrderly {
            self.shared.logger.info("closing device connection", metadata: metadata)
            return
        }
        // Failures come in floods (a scanner, a fuzzer, a network blip resetting thousands of
        // devices): at most 20 such lines a second, then a count of those held back.
        let (log, suppressed) = self.shared.transportLog.admit(nowSeconds: self.now.uptimeNanoseconds / 1_000_000_000)
        guard log else { return }
        if suppressed > 0 { metadata["suppressed_before"] = "\(suppressed)" }
        self.shared.logger.notice("closing device connection", metadata: metadata)
    }

    /// A random reconnect delay within `drain.reconnect_window`, so that drained devices do not
    /// all come back at once.
    func drainDelay() -> UInt32 {
        let window = self.loop.drainReconnectWindowMilliseconds
        return window == 0 ? 0 : UInt32.random(in: 0...window)
    }
}
