internal import NIOCore

/// A `TaskExecutor` that runs jobs on one event loop.
///
/// A service's delivery on one loop (its sender, its batches, its Deliver streams and the gRPC
/// connections under them) runs with this executor as its preference, so a message goes from
/// the device's socket to the backend's connection and its answer comes back on one thread:
/// resuming a task that waits is an entry in the loop's task queue, not a wake-up of another
/// thread. (SwiftNIO 2.101 makes an event loop a `SerialExecutor` for actors, not a
/// `TaskExecutor`.)
final class LoopExecutor: TaskExecutor, Sendable {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
