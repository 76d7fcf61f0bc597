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

    func run() async throws {
        guard let colon = self.listen.lastIndex(of: ":"),
            let port = Int(self.listen[self.listen.index(after: colon)...])
        else {
            throw ValidationError("--listen must be HOST:PORT")
        }
        let host = String(self.listen[..<colon])
        let logger = Logger(label: "terminus-echo-backend")
        let counter = MessageCounter()
        let server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                address: .ipv4(host: host, port: port),
                transportSecurity: .plaintext,
                // Each answer is flushed at once: flush coalescing would hold a lone answer back
                // by up to 100 µs on a timer (the gateway turns it off for the same reason).
                config: .defaults { $0.connection.flushCoalescing = nil }
            ),
            services: [
                EchoReceiver(logger: logger, quiet: self.quiet, failEvery: max(0, self.failEvery), counter: counter)
            ]
        )
        logger.info("listening", metadata: ["address": "\(self.listen)"])
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.serve() }
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
    let logger: Logger
    let quiet: Bool
    let failEvery: Int
    let counter: MessageCounter

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
                let seen = self.counter.value.wrappingAdd(1, ordering: .relaxed).newValue
                var result = Terminus_V1_DeliverResult()
                if self.failEvery > 0 && seen % self.failEvery == 0 {
                    result.status = .rejected
                    result.retryable = true
                    result.reason = "refused by --fail-every"
                    answer.results.append(result)
                    continue
                }
                result.status = .accepted
                answer.results.append(result)
                if self.quiet { continue }
                self.logger.info(
                    "message",
                    metadata: [
                        "subscription": "\(batch.subscription)", "device": "\(message.deviceID)",
                        "topic": "\(message.topic)", "delivery_id": "\(message.deliveryID)",
                        "bytes": "\(message.payload.count)",
                    ]
                )
            }
            try await response.write(answer)
        }
    }
}

/// Messages received since start (shared by every stream).
final class MessageCounter: Sendable {
    let value = Atomic<Int>(0)
}
