package import NIOCore

/// Backs a listening channel off when `accept` fails (out of file descriptors, out of memory):
/// stops reading from the listening socket for `backoff`, then resumes.
///
/// NIO's `AcceptBackoffHandler` delays the next `read()`, but on Linux a failed `accept` leaves
/// the server channel's read pending and registered with epoll, so the loop wakes at once and
/// accepts again: measured here, 10,000 failed `accept4` calls in 2 s at the open-file limit.
/// Turning `autoRead` off unregisters the socket from epoll; turning it back on after the
/// backoff registers it again. Put it first in the server channel's pipeline.
package final class AcceptPauseHandler: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = NIOAny

    private let backoff: TimeAmount
    private let onError: (IOError) -> Void
    private var paused = false
    /// Whether the listener should accept at all (`LoopPlacement` turns it off and on); a
    /// backoff that ends leaves a listener that should not accept paused.
    private var accepting = true

    /// - Parameter onError: told of every failed accept, on the listener's event loop (count and
    ///   log it there, at a bounded rate).
    package init(backoff: TimeAmount, onError: @escaping (IOError) -> Void = { _ in }) {
        self.backoff = backoff
        self.onError = onError
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        self.onError(error)
        guard !self.paused, let options = context.channel.syncOptions else { return }
        self.paused = true
        try? options.setOption(.autoRead, value: false)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: self.backoff) {
            let (handler, context) = loopBound.value
            handler.paused = false
            if handler.accepting { try? context.channel.syncOptions?.setOption(.autoRead, value: true) }
        }
    }

    /// Turns accepting off or on (on the channel's loop); a running backoff still holds it off
    /// until it ends.
    package func setAccepting(_ accepting: Bool, context: ChannelHandlerContext) {
        self.accepting = accepting
        guard !self.paused else { return }
        try? context.channel.syncOptions?.setOption(.autoRead, value: accepting)
    }
}

@available(*, unavailable)
extension AcceptPauseHandler: Sendable {}
