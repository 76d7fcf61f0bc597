import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOPosix
import Synchronization
import TerminusAPI
import TerminusTestSupport

/// A backend service in the test process: records what it receives and answers as told.
final class RecordingReceiver: Terminus_V1_UplinkReceiver.SimpleServiceProtocol, Sendable {
    let received = Mutex<[Terminus_V1_UplinkMessage]>([])
    /// Batches received, and Deliver streams opened.
    let calls = Mutex(0)
    let streams = Mutex(0)
    /// Messages in batches being answered right now, and the most ever seen at once.
    let concurrency = Mutex((now: 0, peak: 0))
    private let answer: @Sendable (Terminus_V1_UplinkMessage) -> Terminus_V1_DeliverResult
    private let delay: @Sendable (Terminus_V1_DeliverRequest) -> Duration
    /// Answers a stream's batches one after another (like the Python example) instead of
    /// concurrently.
    private let serial: Bool

    init(
        delay: Duration = .zero,
        serial: Bool = false,
        answer: @escaping @Sendable (Terminus_V1_UplinkMessage) -> Terminus_V1_DeliverResult = { _ in .accepted }
    ) {
        self.delay = { _ in delay }
        self.serial = serial
        self.answer = answer
    }

    /// Holds each batch for as long as `delay` says before answering it.
    init(delay: @escaping @Sendable (Terminus_V1_DeliverRequest) -> Duration) {
        self.delay = delay
        self.serial = false
        self.answer = { _ in .accepted }
    }

    /// Answers every batch in a task of its own, so answers can come out of order (as the
    /// protocol allows); one writer task writes them.
    func deliver(
        request: RPCAsyncSequence<Terminus_V1_DeliverRequest, any Error>,
        response: RPCWriter<Terminus_V1_DeliverResponse>,
        context: ServerContext
    ) async throws {
        self.streams.withLock { $0 += 1 }
        if self.serial {
            for try await batch in request { try await response.write(try await self.answer(batch)) }
            return
        }
        let (answers, sink) = AsyncStream.makeStream(of: Terminus_V1_DeliverResponse.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await answer in answers { try await response.write(answer) }
            }
            do {
                try await withThrowingTaskGroup(of: Void.self) { batches in
                    for try await batch in request {
                        batches.addTask { sink.yield(try await self.answer(batch)) }
                    }
                    try await batches.waitForAll()
                }
                sink.finish()
            } catch {
                sink.finish()
                throw error
            }
            try await group.waitForAll()
        }
    }

    private func answer(_ request: Terminus_V1_DeliverRequest) async throws -> Terminus_V1_DeliverResponse {
        self.calls.withLock { $0 += 1 }
        let count = request.messages.count
        self.concurrency.withLock { state in
            state.now += count
            state.peak = max(state.peak, state.now)
        }
        defer { self.concurrency.withLock { $0.now -= count } }
        let delay = self.delay(request)
        if delay > .zero { try await Task.sleep(for: delay) }
        var response = Terminus_V1_DeliverResponse()
        response.batchID = request.batchID
        for message in request.messages {
            let result = self.answer(message)
            if result.status == .accepted { self.received.withLock { $0.append(message) } }
            response.results.append(result)
        }
        return response
    }

    var messages: [Terminus_V1_UplinkMessage] { self.received.withLock { $0 } }
    var payloads: [String] { self.messages.map { String(decoding: $0.payload, as: UTF8.self) } }
}

extension Terminus_V1_DeliverResult {
    static var accepted: Self { Self() }

    static func rejected(_ reason: String, retryable: Bool) -> Self {
        var result = Self()
        result.status = .rejected
        result.reason = reason
        result.retryable = retryable
        return result
    }
}

final class TestBackend: Sendable {
    let port: Int
    let receiver: RecordingReceiver
    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let task: Task<Void, any Error>

    private init(
        port: Int,
        receiver: RecordingReceiver,
        server: GRPCServer<HTTP2ServerTransport.Posix>,
        task: Task<Void, any Error>
    ) {
        self.port = port
        self.receiver = receiver
        self.server = server
        self.task = task
    }

    /// How the backend's listener is secured.
    enum Security {
        case plaintext
        /// TLS with the test PKI's server certificate (for localhost and 127.0.0.1).
        case tls
        /// The same, and a client certificate from the test CA is required.
        case mTLS
    }

    static func start(
        port: Int = 0,
        receiver: RecordingReceiver = RecordingReceiver(),
        security: Security = .plaintext
    ) async throws -> TestBackend {
        let pki = TestPKI.shared
        let chain: [TLSConfig.CertificateSource] = [.file(path: pki.serverChain, format: .pem)]
        let key: TLSConfig.PrivateKeySource = .file(path: pki.serverKey, format: .pem)
        let transportSecurity: HTTP2ServerTransport.Posix.TransportSecurity =
            switch security {
            case .plaintext: .plaintext
            case .tls: .tls(certificateChain: chain, privateKey: key)
            case .mTLS:
                .mTLS(certificateChain: chain, privateKey: key) {
                    $0.trustRoots = .certificates([.file(path: pki.caFile, format: .pem)])
                    $0.clientCertificateVerification = .noHostnameVerification
                }
            }
        let server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                address: .ipv4(host: "127.0.0.1", port: port),
                transportSecurity: transportSecurity
            ),
            services: [receiver]
        )
        let task = Task { try await server.serve() }
        guard let address = try await server.listeningAddress, let ipv4 = address.ipv4 else {
            task.cancel()
            throw CancellationError()
        }
        return TestBackend(port: ipv4.port, receiver: receiver, server: server, task: task)
    }

    func stop() async {
        self.server.beginGracefulShutdown()
        _ = try? await self.task.value
    }

    /// Stops at once, failing calls in flight (a crash, as far as the gateway can tell).
    func kill() async {
        self.task.cancel()
        _ = try? await self.task.value
    }

    /// A port on which nothing listens: `LoopbackSocket.freePort()` (below the kernel's
    /// ephemeral range, never handed out twice in this process).
    static func unusedPort() async throws -> Int { LoopbackSocket.freePort() }
}
