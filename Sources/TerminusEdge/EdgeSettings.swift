package import NIOCore
package import TerminusCompression

/// The device-side limits and timeouts of one gateway. Every field has a safe default;
/// `docs/configuration.md` documents each under its YAML key.
package struct EdgeSettings: Sendable {
    /// `instance_id`: this gateway's name. One value under one name in the code; on the wire it
    /// is WELCOME's `gateway_id` and the `gateway_instance` of events and `UplinkMessage`.
    package var instanceID: String = "terminus"
    /// `limits.max_connections`: connections above this are closed at accept.
    package var maxConnections: Int = 100_000
    /// `limits.new_connections_per_second`, `limits.new_connection_burst`,
    /// `limits.max_handshakes`, `limits.max_connections_per_address`, `limits.reconnect.*`.
    package var admission = AdmissionControl.Settings()
    /// `limits.buffer_arena_slots`: 32 KiB slots reserved (address space only) for the large
    /// per-connection TLS buffers; nil sizes it from `maxConnections`, 0 turns the arena off.
    package var bufferArenaSlots: Int? = nil
    /// `limits.evict_unauthenticated_after`: at the connection cap, a new connection closes the
    /// oldest connection on its event loop that has not authenticated for this long, instead of
    /// being refused (a flood of idle handshakes cannot lock real devices out).
    package var unauthenticatedEvictionAge: TimeAmount = .seconds(2)
    /// `device.placement`: which event loops take new connections (`spread` or `pack`).
    package var placement = LoopPlacementSettings()
    /// `limits.accept_backoff`: how long the listener waits before accepting again after an
    /// accept failed (out of file descriptors or memory).
    package var acceptBackoff: TimeAmount = .milliseconds(250)
    /// `auth.throttle`: failed authentications per client address before it is refused.
    package var authThrottle = AuthenticationThrottle.Settings()
    /// `limits.max_frame_size`: the largest length prefix accepted.
    package var maxFrameSize: Int = 64 * 1024
    /// `limits.max_inflight`: unacknowledged QoS 1 PUBLISH frames per device.
    package var maxInflight: Int = 32
    /// `limits.max_pending`: uplinks of either QoS per device waiting for their backends; reading
    /// pauses at this count (QoS 0 counts too, so a QoS 0 flood cannot queue without bound).
    /// nil: twice `maxInflight`.
    package var maxPending: Int? = nil
    /// `limits.rate`: per-device message and byte rates (token buckets).
    package var rateLimits = UplinkRateLimits()
    /// `limits.outbound_buffer`: bytes queued toward one device (after TLS) above which the
    /// gateway stops reading from it until the device reads; it resumes at half.
    package var outboundBufferBytes: Int = 64 * 1024
    /// `limits.max_push_frame`: the largest PUSH frame sent to a device that did not announce a
    /// smaller limit in HELLO (nil: the WELCOME's `max_frame_size`).
    package var maxPushFrameSize: Int? = nil
    /// `limits.max_topic_length` in bytes.
    package var maxTopicLength: Int = 256
    /// `limits.max_device_id_length` in bytes (at most 255).
    package var maxDeviceIDLength: Int = 128
    /// `limits.max_topic_aliases` per connection (0 disables aliases).
    package var maxTopicAliases: Int = 16
    /// `compression.max_inflated_size`, `max_inflate_ratio`, `ratio_floor`.
    package var inflateLimits = InflateLimits()
    /// `timeouts.handshake`: from accept until the TLS handshake completes.
    package var handshakeTimeout: TimeAmount = .seconds(10)
    /// `timeouts.hello`: from the handshake (or accept, for plain TCP) until HELLO.
    package var helloTimeout: TimeAmount = .seconds(10)
    /// `timeouts.close_grace`: how long a closing session may take to flush before it is cut.
    package var closeGrace: TimeAmount = .seconds(5)
    /// `timeouts.frame`: from the first bytes of a frame until its last (while the gateway
    /// reads); a frame that trickles in slower is `FRAME_TIMEOUT`.
    package var frameTimeout: TimeAmount = .seconds(30)
    /// `timeouts.write_stall`: how long output toward a device may stay above
    /// `outboundBufferBytes` before the connection is closed (`SLOW_CONSUMER`).
    package var writeStallTimeout: TimeAmount = .seconds(30)
    /// `keepalive.default`, `keepalive.min`, `keepalive.max` in seconds. A session is closed
    /// when nothing arrives for 1.5 × the negotiated value. Defaults stay well under a cloud
    /// load balancer's idle timeout (Tencent CLB: 900 s).
    package var keepaliveDefault: UInt16 = 240
    package var keepaliveMin: UInt16 = 30
    package var keepaliveMax: UInt16 = 540
    /// `limits.batch_size`: the most messages handed to the sink in one call per event loop.
    package var maxBatchSize: Int = 256
    /// `downlink.compress_above`: PUSH payloads of at least this many bytes are deflated for
    /// devices that announced COMPRESSED_PUSH (0 disables).
    package var pushCompressionThreshold: Int = 256
    /// `events.enabled`: publish `$terminus/events/connected` and `…/disconnected` messages.
    package var publishEvents = true
    /// The timer wheel's tick; timeouts fire within one tick of their deadline.
    package var timerTick: TimeAmount = .seconds(1)

    package init() {}

    /// The arena's slot count: `bufferArenaSlots`, or two per connection (swift-nio-ssl keeps a
    /// plaintext and an outbound buffer) plus 1,024 for transient large reads.
    package var effectiveBufferArenaSlots: Int {
        self.bufferArenaSlots ?? (2 * self.maxConnections + 1_024)
    }

    /// The per-session timeouts, for `DeviceSessionStateMachine`.
    package var sessionTimeouts: DeviceSessionStateMachine.Timeouts {
        .init(
            handshake: self.handshakeTimeout,
            hello: self.helloTimeout,
            closeGrace: self.closeGrace,
            frame: self.frameTimeout,
            writeStall: self.writeStallTimeout
        )
    }

    /// The keepalive a session gets for a HELLO asking for `requested` seconds (0: default).
    package func negotiatedKeepalive(requested: UInt16) -> UInt16 {
        if requested == 0 { return self.keepaliveDefault }
        return min(max(requested, self.keepaliveMin), self.keepaliveMax)
    }
}
