import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Histogram
import NIOPosix
import Synchronization
import TerminusAPI

/// A backend for load runs: accepts every message, counts them and records device→backend
/// latency (now − the `"ts"` the device put in the payload) in an HdrHistogram.
final class SinkReceiver: Terminus_V1_UplinkReceiver.SimpleServiceProtocol, Sendable {
    struct Counters {
        var messages = 0
        var batches = 0
        var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    }

    let counters = Mutex(Counters())
    /// Holds each batch this long before answering (a slow backend), zero by default.
    let delay: Duration

    init(delay: Duration = .zero) {
        self.delay = delay
    }

    func deliver(
        request: RPCAsyncSequence<Terminus_V1_DeliverRequest, any Error>,
        response: RPCWriter<Terminus_V1_DeliverResponse>,
        context: ServerContext
    ) async throws {
        for try await batch in request {
            let now = Clock.micros()
            var answer = Terminus_V1_DeliverResponse()
            answer.batchID = batch.batchID
            answer.results = Array(repeating: Terminus_V1_DeliverResult(), count: batch.messages.count)
            self.counters.withLock { counters in
                counters.messages += batch.messages.count
                counters.batches += 1
                for message in batch.messages {
                    if let sent = Traffic.sentMicros(message.payload), now >= sent {
                        _ = counters.latency.record(UInt64(now - sent))
                    }
                }
            }
            if self.delay > .zero { try await Task.sleep(for: self.delay) }
            try await response.write(answer)
        }
    }

    /// Messages and batches received so far, and the latency histogram since the last call
    /// (then reset).
    func take() -> (messages: Int, batches: Int, latency: Histogram<UInt64>) {
        self.counters.withLock { counters in
            let latency = counters.latency
            counters.latency.reset()
            return (counters.messages, counters.batches, latency)
        }
    }

    var messages: Int { self.counters.withLock { $0.messages } }
}

/// Runs the sink on `host:port` until the task is cancelled... or the process exits: the load
/// generator never cancels it (cancelling a serving GRPCServer trips a debug assertion in
/// grpc-swift-nio-transport), it exits when the run is over.
final class SinkServer: Sendable {
    let receiver: SinkReceiver
    let port: Int
    private let server: GRPCServer<HTTP2ServerTransport.Posix>

    private init(receiver: SinkReceiver, port: Int, server: GRPCServer<HTTP2ServerTransport.Posix>) {
        self.receiver = receiver
        self.port = port
        self.server = server
    }

    static func start(host: String, port: Int, receiver: SinkReceiver) async throws -> SinkServer {
        let server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                address: .ipv4(host: host, port: port),
                transportSecurity: .plaintext,
                // Answers flushed at once, as the gateway and terminus-echo-backend do.
                config: .defaults { $0.connection.flushCoalescing = nil },
                eventLoopGroup: .singletonMultiThreadedEventLoopGroup
            ),
            services: [receiver]
        )
        Task { try await server.serve() }
        guard let address = try await server.listeningAddress, let bound = address.ipv4?.port else {
            throw LoadError("the sink backend did not bind \(host):\(port)")
        }
        return SinkServer(receiver: receiver, port: bound, server: server)
    }

    func stop() {
        self.server.beginGracefulShutdown()
    }
}

struct LoadError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
