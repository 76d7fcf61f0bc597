import ArgumentParser
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Synchronization
import TerminusAPI

/// An example backend: implements the one method a Terminus backend needs (Deliver), logs every
/// message and accepts it. Start it, then list it under `services` in the gateway configuration.
@main
struct EchoBackend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "terminus-echo-backend",
        abstract: "A Terminus backend that logs and accepts every uplink message."
    )

    @Option(name: .long, help: "Address to listen on (HOST:PORT).")
    var listen: String = "127.0.0.1:50051"

    @Flag(name: .long, help: "Count messages and log a total every 10 s instead of a line per message.")
    var quiet = false

    @Option(name: .long, help: "Refuse every Nth message as retryable (0: accept all), to test retries.")
    var failEvery: Int = 0

    enum Engine: String, ExpressibleByArgument, CaseIterable {
        /// grpc-swift-2's server and the generated service protocol: the example to read.
        case grpc
        /// HTTP/2 frames on SwiftNIO's loops (FramesReceiver): what a lean gRPC layer costs.
        case frames
    }

    @Option(
        name: .long,
        help: "grpc: grpc-swift-2's server (the example to read); frames: HTTP/2 frames on the event loops, no tasks."
    )
    var engine: Engine = .grpc

    @Option(name: .long, help: "frames engine: the largest DeliverRequest accepted, in bytes.")
    var maxMessageSize: Int = 4 * 1024 * 1024

    func run() async throws {
        guard let colon = self.listen.lastIndex(of: ":"),
            let port = Int(self.listen[self.listen.index(after: colon)...])
        else {
            throw ValidationError("--listen must be HOST:PORT")
        }
        let host = String(self.listen[..<colon])
        let logger = Logger(label: "terminus-echo-backend")
        let counter = MessageCounter()
        let options = EchoOptions(
            quiet: self.quiet,
            failEvery: max(0, self.failEvery),
            maxMessageSize: max(1, self.maxMessageSize),
            counter: counter,
            logger: logger
        )
        logger.info("listening", metadata: ["address": "\(self.listen)", "engine": "\(self.engine.rawValue)"])
        try await withThrowingDiscardingTaskGroup { group in
            switch self.engine {
            case .grpc:
                let server = GRPCServer(
                    transport: HTTP2ServerTransport.Posix(
                        address: .ipv4(host: host, port: port),
                        transportSecurity: .plaintext,
                        // Each answer is flushed at once: flush coalescing would hold a lone answer
                        // back by up to 100 µs on a timer (the gateway turns it off for the same
                        // reason).
                        config: .defaults { $0.connection.flushCoalescing = nil }
                    ),
                    services: [EchoReceiver(options: options)]
                )
                group.addTask { try await server.serve() }
            case .frames:
                group.addTask { try await FramesReceiver.serve(host: host, port: port, options: options) }
            }
            if self.quiet {
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: .seconds(10))
                        logger.info(
                            "received",
                            metadata: ["messages_total": "\(counter.value.load(ordering: .relaxed))"]
                        )
                    }
                }
            }
        }
    }
}

struct EchoReceiver: Terminus_V1_UplinkReceiver.SimpleServiceProtocol {
    let options: EchoOptions

    /// One Deliver stream per gateway connection: answer each batch with its batch_id and one
    /// result per message, in order.
    func deliver(
        request: RPCAsyncSequence<Terminus_V1_DeliverRequest, any Error>,
        response: RPCWriter<Terminus_V1_DeliverResponse>,
        context: ServerContext
    ) async throws {
        for try await batch in request {
            var answer = Terminus_V1_DeliverResponse()
            answer.batchID = batch.batchID
            for message in batch.messages {
                answer.results.append(EchoAnswer.result(for: message, of: batch, options: self.options))
            }
            try await response.write(answer)
        }
    }
}

/// What both engines answer for one message: accepted (logged unless quiet), or every
/// `failEvery`-th message refused as retryable.
enum EchoAnswer {
    static func result(
        for message: Terminus_V1_UplinkMessage,
        of batch: Terminus_V1_DeliverRequest,
        options: EchoOptions
    ) -> Terminus_V1_DeliverResult {
        let seen = options.counter.value.wrappingAdd(1, ordering: .relaxed).newValue
        var result = Terminus_V1_DeliverResult()
        if options.failEvery > 0 && seen % options.failEvery == 0 {
            result.status = .rejected
            result.retryable = true
            result.reason = "refused by --fail-every"
            if !options.quiet {
                options.logger.info(
                    "refused",
                    metadata: ["device": "\(message.deviceID)", "delivery_id": "\(message.deliveryID)"]
                )
            }
            return result
        }
        result.status = .accepted
        if !options.quiet {
            options.logger.info(
                "message",
                metadata: [
                    "subscription": "\(batch.subscription)", "device": "\(message.deviceID)",
                    "topic": "\(message.topic)", "delivery_id": "\(message.deliveryID)",
                    "bytes": "\(message.payload.count)",
                ]
            )
        }
        return result
    }
}

/// What both engines share: the flags, and the counter every stream adds to.
struct EchoOptions: Sendable {
    var quiet: Bool
    var failEvery: Int
    /// frames engine only (grpc-swift-2's server has its own limit, 4 MiB by default).
    var maxMessageSize: Int
    var counter: MessageCounter
    var logger: Logger
}

/// Messages received since start (shared by every stream).
final class MessageCounter: Sendable {
    let value = Atomic<Int>(0)
}
