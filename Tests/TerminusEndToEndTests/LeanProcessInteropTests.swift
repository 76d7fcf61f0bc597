import Foundation
import NIOCore
import NIOPosix
import TerminusLeanTLS
import TerminusServer
import TerminusTestSupport
import Testing

/// The lean engine against TLS clients in their own processes: `openssl s_client` (KeyUpdate
/// both ways, session files for resumption) and Python's `ssl` module (records of random sizes,
/// split and coalesced). In process, OpenSSL's client is tested in `LeanHandlerInteropTests`.
@Suite("Lean TLS: s_client and Python's ssl, as separate processes", .serialized, .gatewayScope)
struct LeanProcessInteropTests {
    /// Echoes what it reads; closes after a line "BYE".
    final class Echo: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var tail: [UInt8] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = Self.unwrapInboundIn(data)
            self.tail = Array((self.tail + buffer.readableBytesView).suffix(4))
            context.writeAndFlush(Self.wrapOutboundOut(buffer), promise: nil)
            if self.tail == Array("BYE\n".utf8) { context.close(promise: nil) }
        }
    }

    /// A loopback echo server behind `LeanTLSServerHandler`.
    static func withEchoServer(_ body: (Int) async throws -> Void) async throws {
        let pki = TestPKI.shared
        let context = try LeanTLSServerContext(
            certificateChainFile: pki.serverChain,
            privateKeyFile: pki.serverKey,
            minimumVersion: 0x0303,
            tickets: 1
        )
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        LeanTLSServerHandler(context: context, aead: AEADContext())
                    )
                    try channel.pipeline.syncOperations.addHandler(Echo())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        do {
            try await body(channel.localAddress!.port!)
        } catch {
            try? await channel.close()
            try? await group.shutdownGracefully()
            throw error
        }
        try await channel.close()
        try await group.shutdownGracefully()
    }

    /// Runs `script` with /bin/sh; returns its standard output and error, and its exit status.
    static func shell(_ script: String) throws -> (output: String, status: Int32) {
        let log = NSTemporaryDirectory() + "lean-interop-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let child = try ChildProcess("/bin/sh", ["-c", script], standardOutput: .file(log), standardError: .file(log))
        child.waitUntilExit()
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return (output, child.terminationStatus)
    }

    @Test(
        "openssl s_client: lines of random length echoed, with KeyUpdates asking for ours between them (TLS 1.3)",
        arguments: ["-tls1_3", "-tls1_2"]
    )
    func sClient(version: String) async throws {
        try await Self.withEchoServer { port in
            var lines: [String] = []
            var script = "("
            for index in 0..<24 {
                let length = index == 5 ? 9_000 : Int.random(in: 1...2_000)
                let line = "\(index):" + String(repeating: "abcdefgh".randomElement()!, count: length)
                lines.append(line)
                script += "printf '%s\\n' '\(line)'; sleep 0.05; "
                // s_client turns a line holding only K (k) into a KeyUpdate asking (not asking)
                // for the server's.
                if version == "-tls1_3", index % 4 == 1 { script += "printf 'K\\n'; sleep 0.05; " }
                if version == "-tls1_3", index % 4 == 3 { script += "printf 'k\\n'; sleep 0.05; " }
            }
            script += "printf 'BYE\\n'; sleep 0.5) | timeout 30 openssl s_client -connect 127.0.0.1:\(port) "
            // No -ign_eof (it turns the K and k commands off): the end of input, half a second after
            // BYE, ends s_client.
            script += "-servername localhost -CAfile \(TestPKI.shared.caFile) -verify_return_error \(version)"
            let (output, _) = try Self.shell(script)
            #expect(output.contains(version == "-tls1_3" ? "TLSv1.3" : "TLSv1.2"))
            #expect(output.contains("Verify return code: 0 (ok)"))
            if version == "-tls1_3" { #expect(output.contains("KEYUPDATE")) }
            for line in lines {
                #expect(output.contains(line), "line \(line.prefix(8))… was not echoed")
            }
            #expect(output.contains("BYE"))
        }
    }

    @Test("Python's ssl: records of random sizes, several written before reading, TLS 1.3 and TLS 1.2 suites")
    func python() async throws {
        try await Self.withEchoServer { port in
            let program = """
                import random, socket, ssl, sys
                port, ca = int(sys.argv[1]), sys.argv[2]
                cases = [(ssl.TLSVersion.TLSv1_3, None), (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
                         (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384"),
                         (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305")]
                for version, cipher in cases:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.load_verify_locations(ca)
                    context.minimum_version = context.maximum_version = version
                    if cipher: context.set_ciphers(cipher)
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                        with context.wrap_socket(raw, server_hostname="localhost") as tls:
                            sent = bytearray()
                            received = bytearray()
                            for burst in range(30):
                                for _ in range(random.randint(1, 4)):
                                    chunk = random.randbytes(random.choice([1, 17, random.randint(1, 5000), 16384, 20000]))
                                    tls.sendall(chunk)
                                    sent += chunk
                                while len(received) < len(sent):
                                    received += tls.recv(65536)
                            assert received == sent, "echo differs"
                            print("ok", tls.version(), tls.cipher()[0], len(sent), flush=True)
                """
            let file = NSTemporaryDirectory() + "lean-interop-\(UUID().uuidString).py"
            try program.write(toFile: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: file) }
            let (output, status) = try Self.shell("timeout 60 python3 \(file) \(port) \(TestPKI.shared.caFile)")
            #expect(status == 0, "\(output)")
            #expect(output.contains("ok TLSv1.3 TLS_AES_"))
            #expect(output.contains("ok TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256"))
            #expect(output.contains("ok TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384"))
            #expect(output.contains("ok TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305"))
        }
    }

    @Test(
        "resumption through the gateway (s_client session files): a ticket from one gateway resumes on another sharing ticket_key_file, and after a restart; not on one with its own keys",
        arguments: ["-tls1_3", "-tls1_2"]
    )
    func gatewayResumption(version: String) async throws {
        let directory = NSTemporaryDirectory() + "lean-tickets-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let keyFile = directory + "/ticket.key"
        try (String(repeating: "q3", count: 24) + "\n").write(toFile: keyFile, atomically: true, encoding: .utf8)
        let session = directory + "/session.pem"
        func lean(_ keys: String?) -> (inout GatewayConfiguration) -> Void {
            {
                $0.tls?.engine = .lean
                $0.tls?.ticketKeyFile = keys
            }
        }
        /// One s_client connection: "New" or "Reused", and the protocol.
        func connect(_ port: Int, resume: Bool) throws -> String {
            let (output, _) = try Self.shell(
                "sleep 1 | timeout 20 openssl s_client -connect 127.0.0.1:\(port) -servername localhost "
                    + "-CAfile \(TestPKI.shared.caFile) -verify_return_error \(version) "
                    + (resume ? "-sess_in \(session)" : "-sess_out \(session)")
            )
            let line = output.split(separator: "\n").first { $0.hasPrefix("New, ") || $0.hasPrefix("Reused, ") }
            return line.map(String.init) ?? output
        }
        let protocolName = version == "-tls1_3" ? "TLSv1.3" : "TLSv1.2"
        let first = try await TestGateway.start(configure: lean(keyFile))
        #expect(try connect(first.port, resume: false).hasPrefix("New, \(protocolName)"))
        let otherPod = try await TestGateway.start(configure: lean(keyFile))
        #expect(try connect(otherPod.port, resume: true).hasPrefix("Reused, \(protocolName)"))
        let ownKeys = try await TestGateway.start(configure: lean(nil))
        #expect(try connect(ownKeys.port, resume: true).hasPrefix("New, \(protocolName)"))
        await first.stop()
        let restarted = try await TestGateway.start(configure: lean(keyFile))
        #expect(try connect(restarted.port, resume: true).hasPrefix("Reused, \(protocolName)"))
    }
}
