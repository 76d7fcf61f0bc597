import ArgumentParser
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
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

    func run() async throws {
        guard let colon = self.listen.lastIndex(of: ":"),
            let port = Int(self.listen[self.listen.index(after: colon)...])
        else {
            throw ValidationError("--listen must be HOST:PORT")
        }
        let host = String(self.listen[..<colon])
        let logger = Logger(label: "terminus-echo-backend")
        let server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                address: .ipv4(host: host, port: port),
                transportSecurity: .plaintext
            ),
            services: [EchoReceiver(logger: logger)]
        )
        logger.info("listening", metadata: ["address": "\(self.listen)"])
        try await server.serve()
    }
}

struct EchoReceiver: Terminus_V1_UplinkReceiver.SimpleServiceProtocol {
    let logger: Logger

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
                self.logger.info(
                    "message",
                    metadata: [
                        "subscription": "\(batch.subscription)", "device": "\(message.deviceID)",
                        "topic": "\(message.topic)", "delivery_id": "\(message.deliveryID)",
                        "bytes": "\(message.payload.count)",
                    ]
                )
                var result = Terminus_V1_DeliverResult()
                result.status = .accepted
                answer.results.append(result)
            }
            try await response.write(answer)
        }
    }
}
