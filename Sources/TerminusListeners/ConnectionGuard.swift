package import Logging
package import NIOCore
internal import Synchronization
package import TerminusMetrics

/// Bounds what one internal listener (the backend API, the admin port) can be made to hold:
/// at most `maxConnections` connections at once (more are closed at accept), and none that
/// sends nothing for `idleTimeout` (closed).
///
/// One guard per listener, shared by its connections; `handler()` gives each accepted channel
/// the `ChannelHandler` to put first in its pipeline (before TLS), so it sees every byte.
package final class ConnectionGuard: Sendable {
    package struct Limits: Hashable, Sendable {
        package var maxConnections: Int
        package var idleTimeout: TimeAmount

        package init(maxConnections: Int, idleTimeout: TimeAmount) {
            self.maxConnections = maxConnections
            self.idleTimeout = idleTimeout
        }
    }

    package let name: String
    package let limits: Limits
    private let logger: Logger
    private let open = Atomic<Int>(0)
    private let accepted = Atomic<Int>(0)
    private let refused = Atomic<Int>(0)
    private let idleClosed = Atomic<Int>(0)
    private let lastRefusalLog = Atomic<UInt64>(0)

    package init(name: String, limits: Limits, logger: Logger) {
        self.name = name
        self.limits = limits
        self.logger = logger
    }

    /// Connections open now.
    package var openConnections: Int { self.open.load(ordering: .relaxed) }
    /// Connections closed at accept for the cap, since start.
    package var refusedConnections: Int { self.refused.load(ordering: .relaxed) }
    /// Connections closed for sending nothing within the idle timeout, since start.
    package var idleClosedConnections: Int { self.idleClosed.load(ordering: .relaxed) }

    /// This listener's figures, labelled `listener` with the guard's name.
    package func collect(into snapshot: inout MetricsSnapshot) {
        let listener = self.name
        snapshot.gauge(
            SeriesKey("terminus_connections", ["listener": listener, "state": "open"]),
            self.openConnections
        )
        snapshot.count(
            SeriesKey("terminus_connections_accepted_total", ["listener": listener]),
            self.accepted.load(ordering: .relaxed)
        )
        snapshot.count(
            SeriesKey("terminus_connections_refused_total", ["listener": listener, "reason": "max_connections"]),
            self.refusedConnections
        )
        snapshot.count(
            SeriesKey("terminus_connections_idle_closed_total", ["listener": listener]),
            self.idleClosedConnections
        )
    }

    /// Admits `channel` (returns false and closes it when the listener is full) and, when
    /// admitted, adds the idle handler first in its pipeline. Call on the channel's loop.
    package func admit(_ channel: any Channel) throws -> Bool {
        self.accepted.wrappingAdd(1, ordering: .relaxed)
        let count = self.open.wrappingAdd(1, ordering: .relaxed).newValue
        channel.closeFuture.whenComplete { _ in self.open.wrappingSubtract(1, ordering: .relaxed) }
        guard count <= self.limits.maxConnections else {
            self.refused.wrappingAdd(1, ordering: .relaxed)
            let second = NIODeadline.now().uptimeNanoseconds / 1_000_000_000
            if self.lastRefusalLog.exchange(second, ordering: .relaxed) != second {
                self.logger.warning(
                    "connection refused: listener full",
                    metadata: [
                        "listener": "\(self.name)", "max_connections": "\(self.limits.maxConnections)",
                        "refused_total": "\(self.refusedConnections)",
                    ]
                )
            }
            channel.close(promise: nil)
            return false
        }
        try channel.pipeline.syncOperations.addHandler(IdleHandler(guard: self), position: .first)
        return true
    }

    fileprivate func closedIdle() {
        self.idleClosed.wrappingAdd(1, ordering: .relaxed)
    }

    /// Closes its channel when nothing was read for the guard's idle timeout. One scheduled
    /// task per connection: these listeners hold few connections, unlike the device port.
    private final class IdleHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = NIOAny

        private let owner: ConnectionGuard
        private var lastRead = NIODeadline.now()
        private var timer: Scheduled<Void>?

        init(guard owner: ConnectionGuard) {
            self.owner = owner
        }

        func handlerAdded(context: ChannelHandlerContext) {
            self.arm(context: context, at: .now() + self.owner.limits.idleTimeout)
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            self.timer?.cancel()
            self.timer = nil
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.lastRead = .now()
            context.fireChannelRead(data)
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.timer?.cancel()
            self.timer = nil
            context.fireChannelInactive()
        }

        private func arm(context: ChannelHandlerContext, at deadline: NIODeadline) {
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            self.timer = context.eventLoop.scheduleTask(deadline: deadline) {
                let (handler, context) = loopBound.value
                handler.fired(context: context)
            }
        }

        private func fired(context: ChannelHandlerContext) {
            let due = self.lastRead + self.owner.limits.idleTimeout
            if due > .now() {
                self.arm(context: context, at: due)  // bytes arrived since: wait the rest
                return
            }
            self.owner.closedIdle()
            self.timer = nil
            context.close(promise: nil)
        }
    }
}
