package import NIOCore

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
