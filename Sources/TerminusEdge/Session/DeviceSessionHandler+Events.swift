internal import NIOCore
internal import TerminusProtocol
internal import TerminusSessions

/// The session's connected and disconnected events: ordinary QoS 0 messages on reserved topics
/// (`$terminus/events/…`), so that backends subscribe to them like to any other topic, in order
/// with the connection's messages.
extension DeviceSessionHandler {
    /// Holds the device's messages until the event's outcome (`connectedEventPublished`), so
    /// that no backend sees a message of this connection before its connected event.
    func publishConnectedEvent(_ handle: SessionHandle) {
        guard let event = self.makeEvent(DeviceEvents.connected, handle: handle, extra: "") else { return }
        self.machine.connectedEventPublished()
        self.loop.batcher.enqueue(event, waiter: self, kind: .connectedEvent)
    }

    /// Sent once the connection is gone and every message of it has its outcome.
    func publishDisconnectedEvent() {
        guard let handle = self.handle else { return }
        let code = Self.eventCode(self.machine.closeReason)
        if let event = self.makeEvent(DeviceEvents.disconnected, handle: handle, extra: #","code":"\#(code)""#) {
            self.loop.batcher.enqueue(event, waiter: nil, kind: .atMostOnce)
        }
        // The handle's control refers back to this handler: drop it to break the cycle.
        self.handle = nil
    }

    /// The `code` of the disconnected event and of the "device disconnected" log line.
    static func eventCode(_ reason: SessionCloseReason?) -> String {
        reason.map { TerminusCode($0).name } ?? "PEER_CLOSED"
    }

    private func makeEvent(_ topic: String, handle: SessionHandle, extra: String) -> UplinkMessage? {
        guard self.shared.settings.publishEvents else { return nil }
        let json =
            #"{"device_id":"\#(DeviceEvents.jsonEscaped(handle.deviceID))","client_address":"\#(DeviceEvents.jsonEscaped(handle.clientAddress))","#
            + #""gateway_instance":"\#(DeviceEvents.jsonEscaped(self.shared.settings.instanceID))","at_unix_ms":\#(WallClock.nowMilliseconds())\#(extra)}"#
        self.sequence &+= 1
        return UplinkMessage(
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
    }
}
