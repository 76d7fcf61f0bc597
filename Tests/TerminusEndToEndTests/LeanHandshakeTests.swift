import COpenSSLTestClient
import Foundation
import NIOCore
import NIOEmbedded
import NIOSSL
import TerminusLeanTLS
import TerminusServer
import Testing

/// The lean engine's handshake: OpenSSL on memory BIOs, fed record by record, against
/// swift-nio-ssl's client (BoringSSL); then records both ways under the keys it leaves.
@Suite("Lean TLS: OpenSSL's handshake, then the lean record layer")
struct LeanHandshakeTests {
    struct Files {
        let directory: String
        let ca: CertificateFactory.Issued

        init() throws {
            self.directory = NSTemporaryDirectory() + "lean-tls-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
            self.ca = try CertificateFactory.makeCA(commonName: "lean test CA")
            let server = try CertificateFactory.issueServer(
                ca: self.ca,
                commonName: "localhost",
                dnsNames: ["localhost"],
                ipAddresses: [[127, 0, 0, 1]]
            )
            try self.ca.certificatePEM.write(toFile: self.path("ca.pem"), atomically: true, encoding: .utf8)
            try server.certificatePEM.write(toFile: self.path("server.pem"), atomically: true, encoding: .utf8)
            try server.privateKeyPEM.write(toFile: self.path("server-key.pem"), atomically: true, encoding: .utf8)
        }

        func path(_ name: String) -> String { self.directory + "/" + name }
        func remove() { try? FileManager.default.removeItem(atPath: self.directory) }
    }

    /// Runs the handshake between `client` and `handshake`, feeding OpenSSL one record at a
    /// time, until OpenSSL is done; returns how many records it was fed.
    static func run(_ handshake: LeanHandshake, with client: EmbeddedChannel) throws -> (LeanHandshake.Progress, Int) {
        var fromClient = ByteBufferAllocator().buffer(capacity: 0)
        var fed = 0
        for _ in 0..<20 {
            while let bytes = try client.readOutbound(as: ByteBuffer.self) { fromClient.writeImmutableBuffer(bytes) }
            var progress = LeanHandshake.Progress.wantsMore
            while progress == .wantsMore, let record = try TLSRecordFramer.nextRecord(from: &fromClient) {
                progress = handshake.advance(record)
                fed += 1
            }
            var toClient = ByteBufferAllocator().buffer(capacity: 0)
            handshake.takeOutput(into: &toClient)
            // A failed handshake's alert makes the client throw: what it shows is checked by the
            // caller.
            if toClient.readableBytes > 0 { _ = try? client.writeInbound(toClient) }
            if progress != .wantsMore {
                // Nothing of the client's may be left unread by OpenSSL but what follows it.
                #expect(fromClient.readableBytes == 0)
                return (progress, fed)
            }
        }
        return (.wantsMore, fed)
    }

    static func client(
        _ files: Files,
        version: TLSVersion,
        certificate: CertificateFactory.Issued? = nil
    ) throws -> EmbeddedChannel {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = version
        configuration.maximumTLSVersion = version
        configuration.trustRoots = .certificates([
            try NIOSSLCertificate(bytes: Array(files.ca.certificatePEM.utf8), format: .pem)
        ])
        if let certificate {
            configuration.certificateChain = [
                .certificate(try NIOSSLCertificate(bytes: Array(certificate.certificatePEM.utf8), format: .pem))
            ]
            configuration.privateKey = .privateKey(
                try NIOSSLPrivateKey(bytes: Array(certificate.privateKeyPEM.utf8), format: .pem)
            )
        }
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            NIOSSLClientHandler(context: try NIOSSLContext(configuration: configuration), serverHostname: "localhost")
        )
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 7883), promise: nil)
        channel.embeddedEventLoop.run()
        return channel
    }

    @Test(
        "TLS 1.3 with two session tickets: the keys OpenSSL leaves carry records both ways, the server's from sequence 2"
    )
    func tls13() throws {
        let files = try Files()
        defer { files.remove() }
        let context = try LeanTLSServerContext(
            certificateChainFile: files.path("server.pem"),
            privateKeyFile: files.path("server-key.pem"),
            tickets: 2
        )
        let client = try Self.client(files, version: .tlsv13)
        let handshake = try LeanHandshake(context: context)
        let (progress, fed) = try Self.run(handshake, with: client)
        #expect(progress == .done)
        #expect(fed >= 2)  // ClientHello, (CCS), Finished
        var keys = try handshake.finish()
        #expect(keys.version == 0x0304 && !keys.resumed && keys.peerCertificate == nil)
        #expect(keys.write.sequence == 2 && keys.read.sequence == 0)

        let aead = AEADContext()
        let allocator = ByteBufferAllocator()
        // Client to server.
        try client.writeOutbound(ByteBuffer(string: "hello from the device"))
        var wire = allocator.buffer(capacity: 0)
        while let bytes = try client.readOutbound(as: ByteBuffer.self) { wire.writeImmutableBuffer(bytes) }
        let record = try #require(try TLS13Records.nextRecord(from: &wire))
        let opened = try TLS13Records.open(record, keys: &keys.read, context: aead, allocator: allocator)
        #expect(opened.type == .applicationData && opened.content == ByteBuffer(string: "hello from the device"))
        // Server to client, after the two tickets.
        var out = allocator.buffer(capacity: 0)
        try TLS13Records.seal(
            ByteBuffer(string: "hello from the gateway"),
            type: .applicationData,
            keys: &keys.write,
            context: aead,
            into: &out
        )
        try client.writeInbound(out)
        #expect(try client.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "hello from the gateway"))
    }

    @Test("mutual TLS: OpenSSL verifies the client's certificate and hands it over before it is freed")
    func mutualTLS() throws {
        let files = try Files()
        defer { files.remove() }
        let device = try CertificateFactory.issueClient(ca: files.ca, deviceID: "printer-0042")
        let context = try LeanTLSServerContext(
            certificateChainFile: files.path("server.pem"),
            privateKeyFile: files.path("server-key.pem"),
            clientCAFile: files.path("ca.pem"),
            clientAuthentication: .required,
            minimumVersion: 0x0304
        )
        let client = try Self.client(files, version: .tlsv13, certificate: device)
        let handshake = try LeanHandshake(context: context)
        #expect(try Self.run(handshake, with: client).0 == .done)
        let keys = try handshake.finish()
        let der = try #require(keys.peerCertificate)
        let certificate = try NIOSSLCertificate(bytes: der, format: .der)
        let pem = try NIOSSLCertificate(bytes: Array(device.certificatePEM.utf8), format: .pem)
        #expect(certificate == pem)
        #expect(keys.write.sequence == 0)  // no tickets

        // Without a certificate the handshake fails in OpenSSL, which writes an alert.
        let anonymous = try Self.client(files, version: .tlsv13)
        let refused = try LeanHandshake(context: context)
        let (progress, _) = try Self.run(refused, with: anonymous)
        guard case .failed(let reason) = progress else {
            Issue.record("a client without a certificate was accepted: \(progress)")
            return
        }
        #expect(reason.contains("certificate"), "\(reason)")
    }

    @Test("a certificate and a key that do not match are refused when the context is made")
    func mismatchedKey() throws {
        let files = try Files()
        defer { files.remove() }
        let other = try CertificateFactory.issueServer(
            ca: files.ca,
            commonName: "other",
            dnsNames: ["other"],
            ipAddresses: []
        )
        try other.privateKeyPEM.write(toFile: files.path("other-key.pem"), atomically: true, encoding: .utf8)
        #expect(throws: LeanTLSError.self) {
            try LeanTLSServerContext(
                certificateChainFile: files.path("server.pem"),
                privateKeyFile: files.path("other-key.pem")
            )
        }
    }
}

/// OpenSSL's own client (in process, over memory BIOs) against `LeanTLSServerHandler` on an
/// `EmbeddedChannel`: data both ways, KeyUpdate in both directions, close_notify, tampering.
@Suite("Lean TLS: OpenSSL's client against the lean handler")
struct LeanHandlerInteropTests {
    final class Client {
        let pointer: OpaquePointer
        var closedByPeer = false
        var failed = false

        init(
            caFile: String,
            version: Int32 = 0x0304,
            ciphers: String? = nil,
            session: UnsafeMutableRawPointer? = nil
        )
            throws
        {
            guard let pointer = terminus_test_client_new_resuming(caFile, "localhost", version, ciphers, session) else {
                throw LeanTLSError.internalError("no OpenSSL client")
            }
            self.pointer = pointer
        }

        deinit { terminus_test_client_free(self.pointer) }

        func output() -> [UInt8] {
            var buffer = [UInt8](repeating: 0, count: 1 << 17)
            let count = terminus_test_client_take_output(self.pointer, &buffer, buffer.count)
            return Array(buffer.prefix(count))
        }

        func receive(_ bytes: [UInt8]) {
            switch terminus_test_client_receive(self.pointer, bytes, bytes.count) {
            case 0: self.closedByPeer = true
            case -1: self.failed = true
            default: break
            }
        }

        func data() -> String {
            var buffer = [UInt8](repeating: 0, count: 1 << 17)
            let count = terminus_test_client_take_data(self.pointer, &buffer, buffer.count)
            return String(decoding: buffer.prefix(count), as: UTF8.self)
        }

        func send(_ text: String) -> Bool {
            terminus_test_client_send(self.pointer, Array(text.utf8), text.utf8.count) == 1
        }
    }

    /// Moves bytes both ways until neither side has anything to send; `tamper` may change what
    /// the client sends.
    static func pump(_ client: Client, _ server: EmbeddedChannel, tamper: (inout [UInt8]) -> Void = { _ in }) throws {
        for _ in 0..<20 {
            var moved = false
            var bytes = client.output()
            if !bytes.isEmpty, server.isActive {
                tamper(&bytes)
                try server.writeInbound(ByteBuffer(bytes: bytes))
                moved = true
            }
            while let out = try server.readOutbound(as: ByteBuffer.self) {
                client.receive(Array(out.readableBytesView))
                moved = true
            }
            if !moved { return }
        }
    }

    static func server(_ files: LeanHandshakeTests.Files, minimumVersion: UInt16 = 0x0304) throws -> EmbeddedChannel {
        try Self.server(
            LeanTLSServerContext(
                certificateChainFile: files.path("server.pem"),
                privateKeyFile: files.path("server-key.pem"),
                minimumVersion: minimumVersion,
                tickets: 1
            )
        )
    }

    static func server(_ context: LeanTLSServerContext, aead: AEADContext? = nil) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            LeanTLSServerHandler(context: context, aead: aead ?? AEADContext())
        )
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 50_000), promise: nil)
        return channel
    }

    static func received(_ server: EmbeddedChannel) throws -> String {
        var text = ""
        while let buffer = try server.readInbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
        return text
    }

    @Test(
        "records up to 2 KiB reuse the loop's buffers (sealed) and arena (opened): records still waiting to be written or read, on this connection or another of the loop, keep their bytes"
    )
    func smallRecordsReused() throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let context = try LeanTLSServerContext(
            certificateChainFile: files.path("server.pem"),
            privateKeyFile: files.path("server-key.pem"),
            tickets: 1
        )
        // Two connections of one loop: one AEAD context, one small-record buffer.
        let aead = AEADContext()
        let servers = [try Self.server(context, aead: aead), try Self.server(context, aead: aead)]
        var clients: [Client] = []
        for server in servers {
            let client = try Client(caFile: files.path("ca.pem"))
            try Self.pump(client, server)
            #expect(terminus_test_client_connected(client.pointer) == 1)
            clients.append(client)
        }
        // Small records, each still held by its channel (unflushed, or flushed and not yet
        // read out) when the next is sealed; a large one between them takes a buffer of its own.
        var expected = ["", ""]
        for round in 0..<8 {
            for (index, server) in servers.enumerated() {
                let text = round == 5 ? String(repeating: "L\(index)", count: 300) : "ack-\(index)-\(round)"
                expected[index] += text
                if round % 3 == 2 {
                    server.write(ByteBuffer(string: text), promise: nil)
                } else {
                    try server.writeAndFlush(ByteBuffer(string: text)).wait()
                }
            }
        }
        for (server, client) in zip(servers, clients) {
            server.flush()
            try Self.pump(client, server)
        }
        #expect(clients.map { $0.data() } == expected)
        #expect(clients.allSatisfy { !$0.failed })
        // Read out and released, the buffer is reused; what it carries is still right.
        try servers[0].writeAndFlush(ByteBuffer(string: "again")).wait()
        try Self.pump(clients[0], servers[0])
        #expect(clients[0].data() == "again")
        #expect(aead.reusableCount > 0)

        // Opened records: plaintexts the session still holds (left unread here), of every size
        // class and beyond, keep their bytes while later records of both connections open.
        var sent = ["", ""]
        for round in 0..<10 {
            for (index, client) in clients.enumerated() {
                let length = [5, 60, 100, 300, 700, 1_500, 2_040, 3_000, 16_000, 40][round]
                let text = String((0..<length).map { _ in Character(UnicodeScalar(UInt8(97 + (round + index) % 26))) })
                sent[index] += text
                #expect(client.send(text))
                try servers[index].writeInbound(ByteBuffer(bytes: client.output()))
                // The first connection's plaintexts are read (and let go of) as they come.
                if index == 0 { #expect(try Self.received(servers[0]) == text) }
            }
        }
        #expect(try Self.received(servers[1]) == sent[1])
    }

    @Test("data both ways, a KeyUpdate from the client asking for ours, then close_notify")
    func conversation() throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let server = try Self.server(files)
        let client = try Client(caFile: files.path("ca.pem"))
        try Self.pump(client, server)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        #expect(!client.failed)

        #expect(client.send("ping"))
        try Self.pump(client, server)
        #expect(try Self.received(server) == "ping")
        try server.writeAndFlush(ByteBuffer(string: "pong")).wait()
        try Self.pump(client, server)
        #expect(client.data() == "pong")

        // The client updates its keys and asks for ours: the server answers with its own
        // KeyUpdate; data keeps flowing both ways under the new keys.
        #expect(terminus_test_client_key_update(client.pointer, 1) == 1)
        #expect(client.send("after the update"))
        try Self.pump(client, server)
        #expect(try Self.received(server) == "after the update")
        try server.writeAndFlush(ByteBuffer(string: "under new keys")).wait()
        try Self.pump(client, server)
        #expect(client.data() == "under new keys")
        #expect(terminus_test_client_key_update(client.pointer, 0) == 1)
        #expect(client.send("once more"))
        try Self.pump(client, server)
        #expect(try Self.received(server) == "once more")
        #expect(!client.failed)

        // close_notify from the client closes the server's channel.
        #expect(terminus_test_client_close(client.pointer) == 1)
        try Self.pump(client, server)
        #expect(!server.isActive)
    }

    /// Every suite the lean record layer protects, by version: OpenSSL's names and IANA ids.
    static let suites: [(version: Int32, name: String, id: UInt16)] = [
        (0x0304, "TLS_AES_128_GCM_SHA256", 0x1301),
        (0x0304, "TLS_AES_256_GCM_SHA384", 0x1302),
        (0x0304, "TLS_CHACHA20_POLY1305_SHA256", 0x1303),
        (0x0303, "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02B),
        (0x0303, "ECDHE-ECDSA-AES256-GCM-SHA384", 0xC02C),
        (0x0303, "ECDHE-ECDSA-CHACHA20-POLY1305", 0xCCA9),
    ]

    @Test(
        "every suite, TLS 1.3 and TLS 1.2: data both ways in records of random sizes, split and coalesced, up to 2^14 and past it, then close_notify",
        arguments: 0..<6
    )
    func everySuite(index: Int) throws {
        let suite = Self.suites[index]
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let server = try Self.server(files, minimumVersion: 0x0303)
        let client = try Client(caFile: files.path("ca.pem"), version: suite.version, ciphers: suite.name)
        try Self.pump(client, server)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        #expect(terminus_test_client_cipher(client.pointer) == Int32(suite.id))
        var generator = SystemRandomNumberGenerator()
        for round in 0..<12 {
            let length = round == 0 ? 16_384 : round == 1 ? 40_000 : Int.random(in: 0...3_000, using: &generator)
            let text = String((0..<length).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
            if length > 0 { #expect(client.send(text)) }
            // The client's bytes reach the server split at a random point, or with the next
            // round's records coalesced behind them.
            var bytes = client.output()
            let cut = bytes.isEmpty ? 0 : Int.random(in: 0...bytes.count, using: &generator)
            try server.writeInbound(ByteBuffer(bytes: bytes[0..<cut]))
            try server.writeInbound(ByteBuffer(bytes: bytes[cut...]))
            bytes.removeAll()
            #expect(try Self.received(server) == text)
            try server.writeAndFlush(ByteBuffer(string: text)).wait()
            try Self.pump(client, server)
            #expect(client.data() == text)
        }
        #expect(!client.failed)
        #expect(terminus_test_client_close(client.pointer) == 1)
        try Self.pump(client, server)
        #expect(!server.isActive)
    }

    /// A full handshake with `context`, data both ways (so that a TLS 1.3 client reads its
    /// ticket), and the session the client keeps.
    static func connect(
        _ files: LeanHandshakeTests.Files,
        _ context: LeanTLSServerContext,
        version: Int32,
        session: UnsafeMutableRawPointer? = nil
    ) throws -> (resumed: Bool, session: UnsafeMutableRawPointer?) {
        let server = try Self.server(context)
        let client = try Client(caFile: files.path("ca.pem"), version: version, session: session)
        try Self.pump(client, server)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        #expect(client.send("ping"))
        try Self.pump(client, server)
        #expect(try Self.received(server) == "ping")
        try server.writeAndFlush(ByteBuffer(string: "pong")).wait()
        try Self.pump(client, server)
        #expect(client.data() == "pong")
        #expect(!client.failed)
        // An orderly close: OpenSSL's client marks a session it did not shut down unresumable.
        #expect(terminus_test_client_close(client.pointer) == 1)
        try Self.pump(client, server)
        #expect(!server.isActive)
        return (terminus_test_client_resumed(client.pointer) == 1, terminus_test_client_session(client.pointer))
    }

    @Test(
        "resumption, TLS 1.3 and TLS 1.2: a ticket resumes (records flow under the resumed keys), in its key's period and the next, on another context with the same secret; not later, nor with another secret",
        arguments: [Int32(0x0304), 0x0303]
    )
    func resumption(version: Int32) throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let secret = [UInt8](repeating: 0x42, count: 48)
        func context(_ secret: [UInt8]?) throws -> LeanTLSServerContext {
            try LeanTLSServerContext(
                certificateChainFile: files.path("server.pem"),
                privateKeyFile: files.path("server-key.pem"),
                tickets: 1,
                ticketSecret: secret,
                ticketKeyRotation: 3_600
            )
        }
        let pod = try context(secret)
        let first = try Self.connect(files, pod, version: version)
        #expect(!first.resumed)
        let ticket = try #require(first.session)
        defer { terminus_test_client_session_free(ticket) }

        let again = try Self.connect(files, pod, version: version, session: ticket)
        #expect(again.resumed)
        terminus_test_client_session_free(again.session)
        // Another pod with the same secret resumes it; one with its own secret does not.
        let samePod = try Self.connect(files, try context(secret), version: version, session: ticket)
        let otherSecret = try Self.connect(files, try context(nil), version: version, session: ticket)
        #expect(samePod.resumed && !otherSecret.resumed)
        // The next period: the previous key still opens it. The one after: a full handshake.
        pod.moveTicketClock(bySeconds: 3_600)
        let nextPeriod = try Self.connect(files, pod, version: version, session: ticket)
        pod.moveTicketClock(bySeconds: 2 * 3_600)
        let later = try Self.connect(files, pod, version: version, session: ticket)
        #expect(nextPeriod.resumed && !later.resumed)
        for session in [samePod.session, otherSecret.session, nextPeriod.session, later.session] {
            terminus_test_client_session_free(session)
        }
    }

    @Test("no tickets configured: no resumption, TLS 1.3 and TLS 1.2", arguments: [Int32(0x0304), 0x0303])
    func noTickets(version: Int32) throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let context = try LeanTLSServerContext(
            certificateChainFile: files.path("server.pem"),
            privateKeyFile: files.path("server-key.pem"),
            tickets: 0
        )
        let first = try Self.connect(files, context, version: version)
        let second = try Self.connect(files, context, version: version, session: first.session)
        #expect(!first.resumed && !second.resumed)
        terminus_test_client_session_free(first.session)
        terminus_test_client_session_free(second.session)
    }

    @Test("TLS 1.2: a renegotiation (a new ClientHello) ends the connection")
    func renegotiationRefused() throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let server = try Self.server(files, minimumVersion: 0x0303)
        let client = try Client(caFile: files.path("ca.pem"), version: 0x0303)
        try Self.pump(client, server)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        #expect(terminus_test_client_renegotiate(client.pointer) == 1)
        var caught: (any Error)?
        do { try Self.pump(client, server) } catch { caught = error }
        guard case .unexpectedMessage = caught as? LeanTLSError else {
            Issue.record("a renegotiation was not refused: \(String(describing: caught))")
            return
        }
        #expect(!server.isActive)
    }

    @Test(
        "KeyUpdates asking for ours: one answer before the server's next record, none while it writes nothing; more than 32 in a row end the connection"
    )
    func keyUpdateFlood() throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let server = try Self.server(files)
        let client = try Client(caFile: files.path("ca.pem"))
        try Self.pump(client, server)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        // Three requests while the server writes nothing: nothing is queued for the client.
        for _ in 0..<3 {
            #expect(terminus_test_client_key_update(client.pointer, 1) == 1)
            try server.writeInbound(ByteBuffer(bytes: client.output()))
        }
        #expect(try server.readOutbound(as: ByteBuffer.self) == nil)
        // The next write carries one KeyUpdate, then the data, which the client reads.
        try server.writeAndFlush(ByteBuffer(string: "after three requests")).wait()
        try Self.pump(client, server)
        #expect(client.data() == "after three requests")
        #expect(!client.failed)
        // Data resets the count: 32 more are allowed, the 33rd ends the connection.
        #expect(client.send("data"))
        try Self.pump(client, server)
        #expect(try Self.received(server) == "data")
        var caught: (any Error)?
        for _ in 0..<(LeanTLSServerHandler.maxRecordsWithoutData + 1) where caught == nil {
            #expect(terminus_test_client_key_update(client.pointer, 0) == 1)
            do { try server.writeInbound(ByteBuffer(bytes: client.output())) } catch { caught = error }
        }
        guard case .unexpectedMessage = caught as? LeanTLSError else {
            Issue.record("33 KeyUpdates in a row were accepted: \(String(describing: caught))")
            return
        }
        #expect(!server.isActive)
    }

    @Test("a record header announcing more than TLS allows ends the connection before its body arrives")
    func oversizedHeader() throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let server = try Self.server(files)
        let client = try Client(caFile: files.path("ca.pem"))
        try Self.pump(client, server)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        #expect(throws: LeanTLSError.recordOverflow) {
            try server.writeInbound(ByteBuffer(bytes: [23, 3, 3, 0x41, 0x01, 0, 0, 0]))
        }
        #expect(!server.isActive)
    }

    @Test("a changed byte in the client's record: the server answers bad_record_mac and closes")
    func tampering() throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        let server = try Self.server(files)
        let client = try Client(caFile: files.path("ca.pem"))
        try Self.pump(client, server)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        #expect(client.send("genuine"))
        var caught: (any Error)?
        do {
            try Self.pump(client, server) { bytes in bytes[bytes.count - 3] ^= 0x40 }
        } catch {
            caught = error
        }
        #expect(caught as? LeanTLSError == .badRecordMAC)
        #expect(!server.isActive)
        // The fatal alert the server sent before closing: OpenSSL's client reads it as an error.
        while let out = try server.readOutbound(as: ByteBuffer.self) { client.receive(Array(out.readableBytesView)) }
        #expect(client.failed)
    }

    @Test(
        "a close without close_notify is unclean once the client sent something; a probe that sends nothing and the server's own close are not"
    )
    func uncleanShutdown() throws {
        let files = try LeanHandshakeTests.Files()
        defer { files.remove() }
        // After the handshake: the client's FIN without close_notify.
        let established = try Self.server(files)
        let client = try Client(caFile: files.path("ca.pem"))
        try Self.pump(client, established)
        #expect(terminus_test_client_connected(client.pointer) == 1)
        established.pipeline.fireChannelInactive()
        #expect(throws: LeanTLSError.uncleanShutdown) { try established.throwIfErrorCaught() }

        // During the handshake, after the ClientHello.
        let halfway = try Self.server(files)
        let second = try Client(caFile: files.path("ca.pem"))
        try halfway.writeInbound(ByteBuffer(bytes: second.output()))
        #expect(try halfway.readOutbound(as: ByteBuffer.self) != nil, "the server's flight")
        halfway.pipeline.fireChannelInactive()
        #expect(throws: LeanTLSError.uncleanShutdown) { try halfway.throwIfErrorCaught() }

        // A probe (a load balancer's health check): connected, nothing sent, closed.
        let probe = try Self.server(files)
        probe.pipeline.fireChannelInactive()
        #expect(throws: Never.self) { try probe.throwIfErrorCaught() }

        // The server closes: close_notify goes out; the socket stays open, reading, until the
        // client's close_notify; nothing more is written; the end is not reported as unclean.
        let closing = try Self.server(files)
        let third = try Client(caFile: files.path("ca.pem"))
        try Self.pump(third, closing)
        #expect(terminus_test_client_connected(third.pointer) == 1)
        let closed = closing.close()
        try Self.pump(third, closing)
        #expect(third.closedByPeer, "the client read close_notify")
        #expect(closing.isActive, "waiting for the client's close_notify")
        #expect(throws: LeanTLSError.self) { try closing.writeAndFlush(ByteBuffer(string: "too late")).wait() }
        #expect(terminus_test_client_close(third.pointer) == 1)
        try Self.pump(third, closing)
        #expect(!closing.isActive)
        try closed.wait()
        #expect(throws: Never.self) { try closing.throwIfErrorCaught() }

        // A client that never answers: the socket closes after `closeTimeout`.
        let silent = try Self.server(files)
        let fourth = try Client(caFile: files.path("ca.pem"))
        try Self.pump(fourth, silent)
        let timedOut = silent.close()
        silent.embeddedEventLoop.advanceTime(by: LeanTLSServerHandler.closeTimeout - .milliseconds(1))
        #expect(silent.isActive)
        silent.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!silent.isActive)
        try timedOut.wait()
        #expect(throws: Never.self) { try silent.throwIfErrorCaught() }
    }
}
