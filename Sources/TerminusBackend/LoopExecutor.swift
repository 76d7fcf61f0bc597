package import NIOCore
internal import NIOPosix

/// A `TaskExecutor` that runs jobs on one event loop.
///
/// The tasks a service's delivery keeps on one loop (one per Deliver connection, for its life:
/// connect, wait for the stream to end, back off, reconnect) run with this executor as their
/// preference, so that their steps are entries in the loop's task queue, not wake-ups of
/// another thread. Messages themselves take no task (`ServiceDelivery`). (SwiftNIO 2.101 makes
/// an event loop a `SerialExecutor` for actors, not a `TaskExecutor`.)
package final class LoopExecutor: TaskExecutor, Sendable {
    package let eventLoop: any EventLoop

    package init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

/// A `TaskExecutor` over the gateway's event loops that keeps a task on the loop that woke it:
/// a job enqueued from one of the group's loops runs on that loop, any other on the next loop.
///
/// The API server's calls run with it as their preference: a `Send` read from the API connection
/// runs on that connection's loop, and once the device's ACK arrives (on the device's loop) the
/// rest of the call runs there, so a call crosses threads at most where the API connection and
/// the device live on different loops, instead of through the global executor's threads.
final class GroupExecutor: TaskExecutor, Sendable {
    private let group: any EventLoopGroup
    private let loops: Set<ObjectIdentifier>

    init(_ group: any EventLoopGroup) {
        self.group = group
        self.loops = Set(group.makeIterator().map { ObjectIdentifier($0) })
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let loop: any EventLoop
        if let current = MultiThreadedEventLoopGroup.currentEventLoop, self.loops.contains(ObjectIdentifier(current)) {
            loop = current
        } else {
            loop = self.group.next()
        }
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
