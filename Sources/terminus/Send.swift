import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import TerminusAPI
import TerminusProtocol
import TerminusServer

/// `terminus send`: one downlink message through the gateway's backend API (`Send`), so that
/// an operator needs neither grpcurl nor code to push to a device.
struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Push one message to a device through the gateway's backend API and print the outcome.",
        discussion: """
            Exit status: 0 DELIVERED, 1 REJECTED, 2 OFFLINE, 3 TIMEOUT, 4 the call failed \
            (unreachable, UNAUTHENTICATED, …).
            """
    )

    @Option(name: .long, help: "The gateway's API listener, HOST:PORT (api.listen).")
    var api: String

    @Option(name: .long, help: "Bearer token (one of api.tokens_file). Default: $TERMINUS_API_TOKEN.")
    var token: String?

    @Option(name: .long, help: "Read the bearer token from this file (first line).")
    var tokenFile: String?

    @Flag(name: .long, help: "Call over TLS (api.tls); with --cert/--key, mutual TLS.")
    var tls = false

    @Option(name: .long, help: "CA bundle (PEM) that signed the API listener's certificate (with --tls).")
    var ca: String?

    @Option(name: .long, help: "Client certificate (PEM) for mutual TLS.")
    var cert: String?

    @Option(name: .long, help: "Client certificate's private key (PEM).")
    var key: String?

    @Option(name: .long, help: "Name to verify in the listener's certificate (default: the API host).")
    var serverName: String?

    @Option(name: .long, help: "Device id to push to.")
    var device: String

    @Option(name: .long, help: "Topic of the PUSH.")
    var topic: String

    @Option(name: .long, help: "Payload text.")
    var message: String?

    @Option(name: .long, help: "Read the payload from this file instead.")
    var file: String?

    @Option(name: .long, help: "QoS: 1 waits for the device's ACK, 0 only writes the message.")
    var qos: UInt32 = 1

    @Option(name: .long, help: "How long the gateway waits for the device's ACK (250ms, 10s, …).")
    var timeout: String = "10s"

    @Option(
        name: .long,
        help:
            "Keep the message this long if the device is offline or does not acknowledge (a fleet's store; 1h, 24h, …)."
    )
    var storeTTL: String?

    func validate() throws {
        guard GatewayConfiguration.HostPort(parsing: self.api) != nil else {
            throw ValidationError("--api must be HOST:PORT")
        }
        guard self.qos <= 1 else { throw ValidationError("--qos must be 0 or 1") }
        guard (self.message == nil) != (self.file == nil) else { throw ValidationError("give --message or --file") }
        guard let timeout = ConfigurationLoader.parseDuration(self.timeout), timeout.nanoseconds >= 1_000_000,
            timeout.nanoseconds / 1_000_000 <= Int64(UInt32.max)
        else {
            throw ValidationError("--timeout must be a duration such as 250ms or 10s")
        }
        if let ttl = self.storeTTL {
            guard let amount = ConfigurationLoader.parseDuration(ttl), amount.nanoseconds >= 1_000_000,
                amount.nanoseconds / 1_000_000 <= Int64(UInt32.max)
            else { throw ValidationError("--store-ttl must be a duration such as 1h or 24h") }
            guard self.qos == 1 else { throw ValidationError("--store-ttl needs --qos 1") }
        }
        if (self.cert == nil) != (self.key == nil) { throw ValidationError("--cert and --key go together") }
        if !self.tls && (self.ca != nil || self.cert != nil) {
            throw ValidationError("--ca, --cert and --key need --tls")
        }
    }

    func run() async throws {
        let address = GatewayConfiguration.HostPort(parsing: self.api)!
        let milliseconds = ConfigurationLoader.parseDuration(self.timeout)!.nanoseconds / 1_000_000
        var request = Terminus_V1_SendRequest()
        request.deviceID = self.device
        request.topic = self.topic
        request.qos = self.qos
        request.ttlMs = UInt32(milliseconds)
        if let ttl = self.storeTTL.flatMap(ConfigurationLoader.parseDuration) {
            request.storeTtlMs = UInt32(ttl.nanoseconds / 1_000_000)
        }
        if let file = self.file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read \(file)")
            }
            request.payload = data
        } else {
            request.payload = Data((self.message ?? "").utf8)
        }
        var metadata: Metadata = [:]
        if let token = try self.bearerToken() { metadata.addString("Bearer \(token)", forKey: "authorization") }

        var config = HTTP2ClientTransport.Posix.Config.defaults
        if self.tls { config.http2.authority = self.serverName ?? address.host }
        let transport = try HTTP2ClientTransport.Posix(
            target: address.host.contains(":")
                ? .ipv6(address: address.host, port: address.port)
                : .dns(host: address.host, port: address.port),
            transportSecurity: self.transportSecurity(),
            config: config
        )
        var options = CallOptions.defaults
        // The call itself may take the device's ACK timeout, plus a margin for the network.
        options.timeout = .milliseconds(Int64(milliseconds) + 5_000)
        let response: Terminus_V1_SendResponse
        do {
            response = try await withGRPCClient(transport: transport) { client in
                try await Terminus_V1_Gateway.Client(wrapping: client).send(
                    request,
                    metadata: metadata,
                    options: options
                )
            }
        } catch let error as RPCError {
            standardError("send failed: \(error.code): \(error.message)")
            throw ExitCode(4)
        } catch {
            standardError("send failed: \(error)")
            throw ExitCode(4)
        }
        let (line, status) = Self.describe(response)
        print(line)
        if status != 0 { throw ExitCode(status) }
    }

    /// The line printed for an answer and the exit status it maps to.
    static func describe(_ response: Terminus_V1_SendResponse) -> (String, Int32) {
        let gateway = response.gatewayInstance.isEmpty ? "" : " gateway=\(response.gatewayInstance)"
        switch response.outcome {
        case .delivered:
            return ("DELIVERED\(gateway)", 0)
        case .rejected:
            let code = TerminusCode(rawValue: UInt16(clamping: response.deviceStatus))
            return ("REJECTED device_status=\(code)\(gateway)", 1)
        case .offline:
            return ("OFFLINE\(gateway)", 2)
        case .timeout:
            return ("TIMEOUT\(gateway)", 3)
        case .unavailable:
            return ("UNAVAILABLE\(gateway)", 4)
        case .stored:
            return ("STORED\(gateway)", 5)
        case .UNRECOGNIZED(let value):
            return ("UNKNOWN outcome \(value)\(gateway)", 4)
        }
    }

    private func bearerToken() throws -> String? {
        if let token = self.token { return token }
        if let file = self.tokenFile {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read \(file)")
            }
            let first = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first ?? ""
            return first.trimmingCharacters(in: .whitespaces)
        }
        return ProcessInfo.processInfo.environment["TERMINUS_API_TOKEN"]
    }

    private func transportSecurity() -> HTTP2ClientTransport.Posix.TransportSecurity {
        guard self.tls else { return .plaintext }
        let ca = self.ca
        let configure: (inout HTTP2ClientTransport.Posix.TransportSecurity.TLS) -> Void = { tls in
            if let ca { tls.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
        }
        if let cert = self.cert, let key = self.key {
            return .mTLS(
                certificateChain: [.file(path: cert, format: .pem)],
                privateKey: .file(path: key, format: .pem),
                configure: configure
            )
        }
        return .tls(configure: configure)
    }
}
