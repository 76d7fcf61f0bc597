import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOPosix
import Synchronization
import TerminusAPI

/// Measures the two ways the gateway could carry uplink batches to a backend, side by side in
/// one run on loopback: one unary `Deliver` call per batch, and batches pipelined over one
/// long-lived bidirectional stream. Reports messages/s and CPU per message (client and server
/// in this one process, so the CPU figure covers both ends). Build with `-c release`.
@main
struct GRPCProbe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "terminus-grpc-probe",
        abstract: "Unary batch calls vs a bidirectional stream, measured side by side (loopback)."
    )

    @Option(name: .long, help: "Seconds per measurement.")
    var seconds: Double = 3

    @Option(name: .long, parsing: .upToNextOption, help: "Batch sizes (messages per call or per stream message).")
    var batch: [Int] = [1, 16, 256]

    @Option(name: .long, help: "Calls (unary) or batches (stream) outstanding at once.")
    var concurrency: Int = 8

    @Option(name: .long, help: "Payload bytes per message.")
    var payloadBytes: Int = 200

    @Option(
        name: .long,
        help: """
            Lone messages instead: this many one-message batches a second in all, each alone, to \
            the Deliver service at --target (terminus-echo-backend --quiet), by grpc-swift-2's \
            client on the loop, by HTTP/2 frames on a stream channel (h2) and on the connection's \
            own channel (h2conn), side by side.
            """
    )
    var loneRate: Int?

    @Option(name: .long, help: "With --lone-rate: the backend (HOST:PORT).")
    var target: String = "127.0.0.1:50051"

    @Option(name: .long, help: "With --lone-rate: event loops (one connection and stream each).")
    var loops: Int = 2

    @Option(name: .long, help: "With --lone-rate: rounds of every mode, interleaved.")
    var rounds: Int = 3

    func run() async throws {
        if let loneRate { return try await self.lone(rate: loneRate) }
        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                address: .ipv4(host: "127.0.0.1", port: 0),
                transportSecurity: .plaintext,
                eventLoopGroup: serverGroup
            ),
            services: [ProbeService()]
        )
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.serve() }
            guard let port = try await server.listeningAddress?.ipv4?.port else { throw CancellationError() }
            let transport = try HTTP2ClientTransport.Posix(
                target: .ipv4(address: "127.0.0.1", port: port),
                transportSecurity: .plaintext,
                eventLoopGroup: clientGroup
            )
            try await withGRPCClient(transport: transport) { client in
                let probe = Terminus_Probe_V1_Probe.Client(wrapping: client)
                print("| batch | mode | messages/s | CPU µs/message (both ends) |")
                print("|------:|------|-----------:|---------------------------:|")
                for size in self.batch {
                    let request = Self.request(batch: size, payloadBytes: self.payloadBytes)
                    let unary = try await self.measure { deadline, counter in
                        try await Self.unary(
                            probe,
                            request,
                            concurrency: self.concurrency,
                            until: deadline,
                            counter: counter
                        )
                    }
                    print("| \(size) | unary | \(Int(unary.rate)) | \(String(format: "%.2f", unary.cpuMicros)) |")
                    let stream = try await self.measure { deadline, counter in
                        try await Self.stream(
                            probe,
                            request,
                            concurrency: self.concurrency,
                            until: deadline,
                            counter: counter
                        )
                    }
                    print("| \(size) | stream | \(Int(stream.rate)) | \(String(format: "%.2f", stream.cpuMicros)) |")
                }
            }
            server.beginGracefulShutdown()
        }
        // The event loop groups end with the process (shutting them down here races the
        // transports' own teardown).
    }

    func lone(rate: Int) async throws {
        let parts = self.target.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]), rate > 0, self.loops > 0 else {
            throw ValidationError("--target HOST:PORT, --lone-rate and --loops above 0")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: self.loops)
        let template = Self.request(batch: 1, payloadBytes: self.payloadBytes)
        print("| round | mode | answered | CPU µs/message (client) | p50 µs | p99 µs |")
        print("|------:|------|---------:|------------------------:|-------:|-------:|")
        for round in 1...self.rounds {
            for mode in LoneMessages.Mode.allCases {
                let result = try await LoneMessages.measure(
                    mode,
                    host: String(parts[0]),
                    port: port,
                    rate: rate,
                    seconds: self.seconds,
                    group: group,
                    template: template
                )
                print(
                    "| \(round) | \(mode.rawValue) | \(result.answered) | "
                        + String(
                            format: "%.1f | %.0f | %.0f |",
                            result.cpuMicrosPerMessage,
                            result.p50Micros,
                            result.p99Micros
                        )
                )
            }
        }
    }

    static func request(batch: Int, payloadBytes: Int) -> Terminus_V1_DeliverRequest {
        var request = Terminus_V1_DeliverRequest()
        request.subscription = "probe"
        request.messages = (0..<batch).map { index in
            var message = Terminus_V1_UplinkMessage()
            message.deviceID = "spk-\(100_000 + index)"
            message.topic = "pay/done"
            message.messageID = UInt32(index + 1)
            message.payload = Data(repeating: UInt8(ascii: "x"), count: payloadBytes)
            message.qos = .atLeastOnce
            message.receivedAtUnixMs = 1_796_000_000_000
            message.clientAddress = "203.0.113.9:40000"
            message.gatewayInstance = "gw-0"
            message.deliveryID = "gw-0/12345/\(index + 1)"
            return message
        }
        return request
    }

    func measure(
        _ body: (ContinuousClock.Instant, Counter) async throws -> Void
    ) async throws -> (rate: Double, cpuMicros: Double) {
        let counter = Counter()
        let cpuBefore = Self.cpuSeconds()
        let start = ContinuousClock.now
        try await body(start + .milliseconds(Int64(self.seconds * 1000)), counter)
        let elapsed = ContinuousClock.now - start
        let cpu = Self.cpuSeconds() - cpuBefore
        let wall = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let messages = Double(counter.value)
        return (messages / wall, messages > 0 ? cpu * 1e6 / messages : 0)
    }

    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    static func unary(
        _ probe: Terminus_Probe_V1_Probe.Client<HTTP2ClientTransport.Posix>,
        _ request: Terminus_V1_DeliverRequest,
        concurrency: Int,
        until deadline: ContinuousClock.Instant,
        counter: Counter
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    while ContinuousClock.now < deadline {
                        let response = try await probe.unary(request)
                        counter.add(response.results.count)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    static func stream(
        _ probe: Terminus_Probe_V1_Probe.Client<HTTP2ClientTransport.Posix>,
        _ request: Terminus_V1_DeliverRequest,
        concurrency: Int,
        until deadline: ContinuousClock.Instant,
        counter: Counter
    ) async throws {
        // Credits keep at most `concurrency` batches outstanding, like the unary case.
        let (credits, creditSink) = AsyncStream<Void>.makeStream()
        for _ in 0..<concurrency { creditSink.yield() }
        let sent = Counter()
        try await probe.stream { writer in
            for await _ in credits {
                if ContinuousClock.now >= deadline { break }
                try await writer.write(request)
                sent.add(1)
            }
        } onResponse: { response in
            var received = 0
            for try await message in response.messages {
                counter.add(message.results.count)
                received += 1
                creditSink.yield()
                if ContinuousClock.now >= deadline && received >= sent.value { break }
            }
            creditSink.finish()
        }
    }
}

final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int) { self.count.wrappingAdd(n, ordering: .relaxed) }
    var value: Int { self.count.load(ordering: .relaxed) }
}

struct ProbeService: Terminus_Probe_V1_Probe.SimpleServiceProtocol {
    static func answer(_ request: Terminus_V1_DeliverRequest) -> Terminus_V1_DeliverResponse {
        var response = Terminus_V1_DeliverResponse()
        response.results = Array(repeating: Terminus_V1_DeliverResult(), count: request.messages.count)
        return response
    }

    func unary(request: Terminus_V1_DeliverRequest, context: ServerContext) async throws -> Terminus_V1_DeliverResponse
    {
        Self.answer(request)
    }

    func stream(
        request: RPCAsyncSequence<Terminus_V1_DeliverRequest, any Error>,
        response: RPCWriter<Terminus_V1_DeliverResponse>,
        context: ServerContext
    ) async throws {
        for try await batch in request {
            try await response.write(Self.answer(batch))
        }
    }
}
