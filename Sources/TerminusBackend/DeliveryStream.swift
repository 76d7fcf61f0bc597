internal import Logging
internal import NIOCore
internal import NIOPosix
internal import NIOSSL
internal import SwiftProtobuf
internal import Synchronization
internal import TerminusAPI
internal import TerminusProtocol

/// Why a batch sent on a `DeliveryStream` got no answer.
enum DeliveryStreamFailure: Error, CustomStringConvertible {
    /// No stream is open on this connection right now (connecting, or backing off).
    case notConnected
    /// The stream ended or failed before the batch was answered.
    case streamEnded
    /// No answer within the deadline.
    case deadlineExceeded
    /// A batch got no answer within its deadline, nothing at all arrived on the connection since
    /// it was written, and a PING got no answer within `ping_timeout` either: the connection
    /// was closed as dead.
    case silentConnection(pingTimeout: TimeAmount)
    /// The gateway's shutdown deadline (`drain.grace`) passed with the batch unanswered.
    case shutdownDeadline
    /// The connection reached itself, not the backend (`Channel.isConnectedToItself`).
    case connectedToItself

    var description: String {
        switch self {
        case .shutdownDeadline: "the gateway's shutdown deadline (drain.grace) passed"
        case .connectedToItself: "the connection reached itself (a local port nothing listens on)"
        case .notConnected: "no open Deliver stream"
        case .streamEnded: "the Deliver stream ended before the batch was answered"
        case .deadlineExceeded: "no answer within the deadline"
        case .silentConnection(let timeout):
            "nothing arrived on the connection for a batch's whole deadline, nor an answer to a PING within \(timeout.nanoseconds / 1_000_000) ms: closed as dead"
        }
    }
}

/// Where a service's Deliver streams connect, and how (made once per pool).
struct DeliveryTarget: Sendable {
    var host: String
    var port: Int
    /// nil: plaintext (HTTP/2 with prior knowledge).
    var tls: NIOSSLContext?
    /// The TLS server name to send and verify (nil for an IP address without `server_name`).
    var serverName: String?
    /// `:authority`.
    var authority: String
    var connectTimeout: TimeAmount

    init(subscription: Subscription) throws {
        self.host = subscription.host
        self.port = subscription.port
        let isAddress = (try? SocketAddress(ipAddress: subscription.host, port: 0)) != nil
        switch subscription.security {
        case .plaintext:
            self.tls = nil
            self.serverName = nil
            self.authority = "\(subscription.host):\(subscription.port)"
        case .tls(let caFile, let certificateFile, let keyFile, let serverName):
            var configuration = TLSConfiguration.makeClientConfiguration()
            if let caFile { configuration.trustRoots = .file(caFile) }
            if let certificateFile, let keyFile {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map {
                    .certificate($0)
                }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            }
            // gRPC over TLS is HTTP/2 negotiated by ALPN.
            configuration.applicationProtocols = ["h2"]
            self.tls = try NIOSSLContext(configuration: configuration)
            self.serverName = serverName ?? (isAddress ? nil : subscription.host)
            self.authority = serverName ?? "\(subscription.host):\(subscription.port)"
        }
        self.connectTimeout = .milliseconds(min(10_000, max(1_000, subscription.deadlineMilliseconds)))
    }
}

/// One long-lived bidirectional `Deliver` stream on its own HTTP/2 connection, written and read
/// on one event loop as HTTP/2 frames (gRPC's length-prefixed protobuf messages in DATA frames)
/// by `GRPCStreamConnection`.
///
/// Not grpc-swift-2's client: measured with lone one-message batches, as devices send them,
/// its client on the same loop cost 1.4–1.6 times these frames' CPU per round trip
/// (`terminus-grpc-probe --lone-rate`, docs/benchmarks.md). A batch is encoded by the caller and
/// written by the loop; the answer is parsed on the loop and resumes the caller; there is no
/// writer or reader task and no per-call state beyond the batch's waiter.
///
/// Batches are written as they come (several may be unanswered at once) and matched to their
/// answers by `batch_id`, so a backend may answer out of order. A batch fails with
/// `deadlineExceeded` when its deadline passes, and with `streamEnded` when the stream breaks;
/// the caller retries it (on another stream, after backoff). The connection and stream are
/// re-opened after a backoff while `close()` has not been called.
///
/// At most `batchesInFlight` batches are written and unanswered at once; further batches wait
/// for one of them to be answered *before* they are written and before their deadline starts.
/// A backend that answers a stream's batches one after another would otherwise see every
/// batch of the service's window queued on its stream, most of them past their deadline by
/// the time it gets to them (retried, so delivered twice, and the devices told RETRY_LATER).
final class DeliveryStream: Sendable {
    /// The answer to a batch, or why there is none; called on the loop.
    typealias Completion = @Sendable (Result<Terminus_V1_DeliverResponse, any Error>) -> Void

    private struct Waiter {
        var completion: Completion
        var deadline: NIODeadline
        /// `reads` when the batch was written: unchanged at its deadline means the connection
        /// was silent all along.
        var readsAtWrite: UInt64
    }

    private struct State {
        /// The open stream's connection; nil while none is open.
        var stream: (any Channel)?
        var waiting: [UInt64: Waiter] = [:]
        var nextBatchID: UInt64 = 1
        var closed = false
        /// The backend sent GOAWAY: the open stream takes no new batch (it was half-closed) and
        /// a new connection is made once it ends.
        var goingAway = false
        /// Whether the open stream has answered anything yet.
        var answered = false
        /// The first error the open connection reported (a TLS handshake that failed, a
        /// connection reset), logged when it ends.
        var connectionError: (any Error)?
        /// A PING sent because a batch expired on a silent connection: when, and `reads` then.
        var ping: (sentAt: NIODeadline, reads: UInt64)?
    }

    private let loop: any EventLoop
    private let target: DeliveryTarget
    private let subscription: String
    private let logger: Logger
    private let state = Mutex(State())
    private let sweepInterval: TimeAmount
    private let batchesInFlight: Int
    /// How long a PING sent on a silent connection may go unanswered (nil: never sent).
    private let pingTimeout: TimeAmount?
    /// Reads on the connection (any bytes, a PING's answer too), counted by `GRPCStreamConnection`.
    private let reads = Atomic<UInt64>(0)
    /// How a stream that cannot open is re-opened (`Subscription.reconnect`).
    private let reconnect: TerminusProtocol.RetryPolicy

    /// Connections made and failed, for `terminus_backend_connects_total`.
    private let connects: ConnectCounts

    init(
        target: DeliveryTarget,
        subscription: Subscription,
        on loop: any EventLoop,
        logger: Logger,
        connects: ConnectCounts = ConnectCounts()
    ) {
        self.connects = connects
        self.loop = loop
        self.target = target
        self.subscription = subscription.name
        self.logger = logger
        let quarter = max(10, min(250, subscription.deadlineMilliseconds / 4))
        self.sweepInterval = .milliseconds(quarter)
        self.batchesInFlight = max(1, subscription.batchesInFlight)
        self.pingTimeout =
            subscription.pingTimeoutMilliseconds > 0 ? .milliseconds(subscription.pingTimeoutMilliseconds) : nil
        self.reconnect = subscription.reconnect
    }

    /// Whether a stream is open and takes batches, and its load.
    var room: (open: Bool, load: Int) {
        self.state.withLock { state in
            (state.stream != nil && !state.closed && !state.goingAway, state.waiting.count)
        }
    }

    /// Whether `load` unanswered batches leave room for one more (`batches_in_flight`).
    func hasRoom(load: Int) -> Bool { load < self.batchesInFlight }

    /// Whether batches written on it still wait for their answers.
    var hasBatchesInFlight: Bool { self.state.withLock { !$0.waiting.isEmpty } }

    /// Writes one batch (called on the loop); `completion` gets its answer, or the failure
    /// (`notConnected`, `streamEnded`, `deadlineExceeded`), on the loop: at once when the
    /// stream is not open.
    /// - Parameter messages: serialized `terminus.v1.UplinkMessage`s (`UplinkEncoder.encode`).
    func send(_ messages: some Collection<ByteBuffer>, deadline: Duration, completion: @escaping Completion) {
        let opened = self.state.withLock { state -> (any Channel, UInt64)? in
            guard let stream = state.stream, !state.closed, !state.goingAway else { return nil }
            let id = state.nextBatchID
            state.nextBatchID &+= 1
            state.waiting[id] = Waiter(
                completion: completion,
                deadline: .now() + .nanoseconds(Int64(deadline / .nanoseconds(1))),
                readsAtWrite: self.reads.load(ordering: .relaxed)
            )
            return (stream, id)
        }
        guard let (stream, id) = opened else {
            return completion(.failure(DeliveryStreamFailure.notConnected))
        }
        let request = UplinkEncoder.deliverRequest(
            messages,
            subscription: self.subscription,
            batchID: id,
            allocator: stream.allocator,
            asDataFrame: true
        )
        if stream.eventLoop.inEventLoop {
            stream.writeAndFlush(request, promise: nil)
        } else {
            stream.eventLoop.execute { stream.writeAndFlush(request, promise: nil) }
        }
    }

    /// Keeps a stream open until `close()` (or cancellation): connects, opens the stream,
    /// re-opens both after a backoff when they end.
    func run() async {
        let sweep = self.loop.scheduleRepeatedTask(initialDelay: self.sweepInterval, delay: self.sweepInterval) { _ in
            self.sweepExpired()
        }
        defer { sweep.cancel() }
        var failures = 0
        while !Task.isCancelled, !self.state.withLock({ $0.closed }) {
            do {
                let connection = try await self.open()
                self.connects.succeeded.wrappingAdd(1, ordering: .relaxed)
                let opened = self.state.withLock { state -> Bool in
                    guard !state.closed else { return false }
                    state.stream = connection
                    state.answered = false
                    state.goingAway = false
                    state.connectionError = nil
                    state.ping = nil
                    return true
                }
                if opened {
                    // Until the stream ends (answered and ended by the backend after `close()`,
                    // broken, or the connection lost: each closes the connection);
                    // cancellation closes the connection.
                    await withTaskCancellationHandler {
                        try? await connection.closeFuture.get()
                    } onCancel: {
                        connection.close(promise: nil)
                    }
                }
                connection.close(promise: nil)
                try? await connection.closeFuture.get()
                if let error = self.state.withLock({ $0.connectionError }) {
                    self.logFailure(error, failures: failures)
                }
            } catch {
                self.connects.failed.wrappingAdd(1, ordering: .relaxed)
                self.logFailure(error, failures: failures)
            }
            let answered = self.state.withLock { state in
                state.stream = nil
                return state.answered
            }
            self.failAll(DeliveryStreamFailure.streamEnded)
            if self.state.withLock({ $0.closed }) { break }
            // A stream that broke after working is re-opened at once; one that cannot open
            // backs off by the service's reconnect policy.
            failures = answered ? 0 : failures + 1
            if failures > 0 {
                try? await Task.sleep(for: self.reconnect.delay(afterFailures: failures))
            }
        }
        self.state.withLock { $0.stream = nil }
        self.failAll(DeliveryStreamFailure.streamEnded)
    }

    /// The first failure of a run of them at warning, the rest at debug (the reconnect policy
    /// bounds how often they come).
    private func logFailure(_ error: any Error, failures: Int) {
        guard !self.state.withLock({ $0.closed }) else { return }
        self.logger.log(
            level: failures == 0 ? .warning : .debug,
            "Deliver stream failed",
            metadata: ["service": "\(self.subscription)", "error": "\(error)"]
        )
    }

    /// An error the connection's pipeline reported (kept for the log when the stream ends).
    fileprivate func connectionFailed(_ error: any Error) {
        self.state.withLock { state in
            if state.connectionError == nil { state.connectionError = error }
        }
    }

    /// Connects (TLS when configured), speaks HTTP/2 and opens the Deliver stream.
    private func open() async throws -> any Channel {
        let target = self.target
        let configuration = GRPCStreamConnection.Configuration(
            path: "/terminus.v1.UplinkReceiver/Deliver",
            scheme: target.tls == nil ? "http" : "https",
            authority: target.authority
        )
        let channel = try await ClientBootstrap(group: self.loop)
            .connectTimeout(target.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: target.host, port: target.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls = target.tls {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls, serverHostname: target.serverName)
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        GRPCStreamConnection(
                            configuration: configuration,
                            delegate: .init(
                                read: { self.noteRead() },
                                message: { try self.complete($0) },
                                goingAway: { self.goingAway() },
                                ended: { self.ended($0) },
                                failed: { self.connectionFailed($0) }
                            ),
                            allocator: channel.allocator
                        )
                    )
                    return channel
                }
            }
        if channel.isConnectedToItself {
            channel.close(promise: nil)
            throw DeliveryStreamFailure.connectedToItself
        }
        return channel
    }

    /// Takes no new batches and half-closes the stream; batches already written still get
    /// their answers (or fail at their deadline). `run()` returns once the backend ends it.
    func close() {
        let stream = self.state.withLock { state -> (any Channel)? in
            state.closed = true
            return state.stream
        }
        if let stream { Self.halfClose(stream) }
    }

    /// The shutdown deadline passed: every batch still unanswered fails now (its messages are
    /// answered `RETRY_LATER`) and the connection closes, whatever the backend does.
    func abort() {
        let stream = self.state.withLock { state -> (any Channel)? in
            state.closed = true
            return state.stream
        }
        self.failAll(.shutdownDeadline)
        if let stream { stream.close(promise: nil) }
    }

    /// The backend is going away (GOAWAY: a graceful shutdown, a restart): no new batch on this
    /// stream, which is half-closed so the backend can answer what it has and end it; `run()`
    /// then connects again (a Kubernetes Service picks another pod).
    fileprivate func goingAway() {
        let stream = self.state.withLock { state -> (any Channel)? in
            guard !state.goingAway else { return nil }
            state.goingAway = true
            return state.stream
        }
        if let stream { Self.halfClose(stream) }
    }

    private static func halfClose(_ stream: any Channel) {
        stream.eventLoop.execute {
            stream.triggerUserOutboundEvent(GRPCStreamConnection.OutboundEvent.end, promise: nil)
        }
    }

    /// An answer read from the stream (on the loop); throws if it is not a `DeliverResponse`.
    fileprivate func complete(_ message: ByteBuffer) throws {
        let response = try DeliverResponseDecoder.decode(message)
        let waiter = self.state.withLock { state in
            state.answered = true
            return state.waiting.removeValue(forKey: response.batchID)
        }
        guard let waiter else {
            // Answered after its deadline, or an id we never sent.
            self.logger.debug(
                "answer for a batch nobody waits for",
                metadata: ["service": "\(self.subscription)", "batch_id": "\(response.batchID)"]
            )
            return
        }
        waiter.completion(.success(response))
    }

    /// The stream ends for a reason an operator should see (the backend's error status, an
    /// answer that is not a `DeliverResponse`, a compressed message): logged; its batches are
    /// retried.
    fileprivate func ended(_ reason: String) {
        self.logger.warning(
            "Deliver stream ended",
            metadata: ["service": "\(self.subscription)", "reason": "\(reason)"]
        )
    }

    private func fail(_ id: UInt64, _ failure: DeliveryStreamFailure) {
        let waiter = self.state.withLock { $0.waiting.removeValue(forKey: id) }
        waiter?.completion(.failure(failure))
    }

    private func failAll(_ failure: DeliveryStreamFailure) {
        let waiters = self.state.withLock { state in
            defer { state.waiting.removeAll() }
            return Array(state.waiting.values)
        }
        guard !waiters.isEmpty else { return }
        if self.loop.inEventLoop {
            for waiter in waiters { waiter.completion(.failure(failure)) }
        } else {
            self.loop.execute {
                for waiter in waiters { waiter.completion(.failure(failure)) }
            }
        }
    }

    /// Something was read on the connection (on the loop).
    fileprivate func noteRead() {
        self.reads.wrappingAdd(1, ordering: .relaxed)
    }

    /// Fails batches past their deadline, and watches for a dead connection (a repeated task on
    /// the loop).
    ///
    /// A backend pod that vanished without closing its connections (its node failed, a network
    /// partition) leaves them open for the ~15 minutes TCP takes to give up, and every batch
    /// written on them would wait out its deadline (retried, then `RETRY_LATER`). So when a
    /// batch expires and *nothing* arrived on its connection since it was written, the stream
    /// sends an HTTP/2 PING; if nothing arrives within `ping_timeout` either, the connection is
    /// closed and re-made (a Kubernetes Service picks a live pod). A backend that is alive but
    /// slow answers the PING from its HTTP/2 layer and keeps its connection. PINGs are sent only
    /// then, never on a timer, so servers' ping policies (`too_many_pings`) are not provoked.
    private func sweepExpired() {
        let now = NIODeadline.now()
        let reads = self.reads.load(ordering: .relaxed)
        let pingTimeout = self.pingTimeout
        let (expired, ping, dead) = self.state.withLock { state -> ([Waiter], (any Channel)?, (any Channel)?) in
            let ids = state.waiting.compactMap { $0.value.deadline <= now ? $0.key : nil }
            let expired = ids.compactMap { state.waiting.removeValue(forKey: $0) }
            guard let pingTimeout, let connection = state.stream else { return (expired, nil, nil) }
            if let ping = state.ping {
                if ping.reads != reads {
                    state.ping = nil
                } else if now - ping.sentAt >= pingTimeout {
                    state.ping = nil
                    if state.connectionError == nil {
                        state.connectionError = DeliveryStreamFailure.silentConnection(pingTimeout: pingTimeout)
                    }
                    return (expired, nil, connection)
                }
            }
            guard state.ping == nil, expired.contains(where: { $0.readsAtWrite == reads }) else {
                return (expired, nil, nil)
            }
            state.ping = (now, reads)
            return (expired, connection, nil)
        }
        ping?.triggerUserOutboundEvent(GRPCStreamConnection.OutboundEvent.ping(0x7465_726d), promise: nil)
        // Closing fails the stream's other batches (retried elsewhere) and `run()` reconnects.
        dead?.close(promise: nil)
        for waiter in expired { waiter.completion(.failure(DeliveryStreamFailure.deadlineExceeded)) }
    }
}

/// Connections a service's streams opened and failed to open (rare: atomics will do).
final class ConnectCounts: Sendable {
    let succeeded = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
}
