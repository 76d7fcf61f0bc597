import Foundation
import GRPCCore
import NIOCore
import NIOPosix
import Synchronization
import TerminusAPI
import TerminusBackend
import TerminusClient
import TerminusEdge
import TerminusMetrics
import TerminusProtocol
import TerminusRouting
import TerminusServer
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Hot reload: secrets, API tokens and certificates without a restart", .serialized, .gatewayScope)
struct ReloadTests {
    /// The serial number of the certificate a TLS handshake on `port` shows, as
    /// `openssl s_client` prints it.
    static func servedSerial(_ port: Int) throws -> String? {
        let output = NSTemporaryDirectory() + "terminus-serial-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: output) }
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let process = try ChildProcess(
            "/bin/sh",
            [
                "-c",
                "openssl s_client -connect 127.0.0.1:\(port) -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial",
            ],
            standardOutput: .file(output)
        )
        process.waitUntilExit()
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        return text.hasPrefix("serial=") ? text.trimmingCharacters(in: .whitespacesAndNewlines) : nil
    }

    static func serial(ofPEM pem: String) throws -> String? {
        let file = TestPKI.shared.write(pem, name: "serial-\(UUID().uuidString).pem")
        let output = file + ".out"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let process = try ChildProcess(
            "/bin/sh",
            ["-c", "openssl x509 -noout -serial -in \(file)"],
            standardOutput: .file(output)
        )
        process.waitUntilExit()
        return (try? String(contentsOfFile: output, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test(
        "reload under load: new secrets, API tokens and certificate apply to new sessions, calls and handshakes; none dropped; a bad one is refused"
    )
    func reloadUnderLoad() async throws {
        let pki = TestPKI.shared
        let oldToken = "reload-api-token-one-0123456789"
        let newToken = "reload-api-token-two-0123456789"
        let gateway = try await TestGateway.start {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = [oldToken]
        }
        let oldSerial = try #require(try Self.servedSerial(gateway.port))
        #expect(oldSerial == (try Self.serial(ofPEM: String(contentsOfFile: pki.serverChain, encoding: .utf8))))

        // A device keeps publishing through every reload below.
        let device = try await gateway.connect("reload-steady")
        let publisher = Task {
            var statuses: [TerminusCode] = []
            for index in 0..<150 {
                let ack = try await device.publish(topic: "t/steady", payload: ByteBuffer(string: "m\(index)"))
                statuses.append(ack.status)
                try await Task.sleep(for: .milliseconds(10))
            }
            return statuses
        }

        // The next configuration: another device secret, another token, a new certificate.
        let newSecret = "reload-device-secret-9876543210"
        let renewed = try CertificateFactory.issueServer(
            ca: pki.ca,
            commonName: "localhost",
            dnsNames: ["localhost"],
            ipAddresses: [[127, 0, 0, 1]]
        )
        var next = gateway.configuration
        next.secretsFile = pki.write("prefixes:\n  \"\": \"\(newSecret)\"\n", name: "devices-reloaded.yaml")
        next.tls = .init(
            certificateChain: pki.write(renewed.certificatePEM, name: "renewed.pem"),
            privateKey: pki.write(renewed.privateKeyPEM, name: "renewed-key.pem")
        )
        next.apiTokens = [newToken]
        // First a configuration that cannot be used: refused, and nothing changes.
        var broken = next
        broken.tls = .init(certificateChain: next.tls!.certificateChain, privateKey: pki.serverKey)
        #expect(!gateway.gateway.reload { broken }, "a key that does not match its certificate")
        var missing = next
        missing.secretsFile = pki.directory + "/no-such-secrets.yaml"
        #expect(!gateway.gateway.reload { missing })
        #expect(try Self.servedSerial(gateway.port) == oldSerial)
        let stillOld = try await RawClient.connect(port: gateway.port, tls: true)
        #expect(try await stillOld.handshake("reload-old-ok").deviceID == "reload-old-ok")

        #expect(gateway.gateway.reload { next })
        // New handshakes show the renewed certificate.
        let newSerial = try #require(try Self.serial(ofPEM: renewed.certificatePEM))
        #expect(newSerial != oldSerial)
        #expect(try Self.servedSerial(gateway.port) == newSerial)
        // New HELLOs are checked against the new secret; the old one is refused.
        let oldHello = try await RawClient.connect(port: gateway.port, tls: true)
        try await oldHello.send(TestGateway.hello("reload-old"))
        #expect(await oldHello.goAwayOnClose()?.code == .authenticationFailed)
        let newHello = try await RawClient.connect(port: gateway.port, tls: true)
        try await newHello.send(TestGateway.hello("reload-new", secret: newSecret))
        #expect(await RawClient.poll(5) { newHello.frames.contains { if case .welcome = $0 { true } else { false } } })
        // API calls: the new token only.
        let delivered = try await DownlinkAPITests.withAPI(gateway, token: newToken) { api, metadata in
            try await api.send(DownlinkAPITests.send("reload-steady", "hi", qos: 0), metadata: metadata).outcome
        }
        #expect(delivered == .delivered)
        await #expect(throws: RPCError.self) {
            try await DownlinkAPITests.withAPI(gateway, token: oldToken) { api, metadata in
                try await api.send(DownlinkAPITests.send("reload-steady", "hi", qos: 0), metadata: metadata).outcome
            }
        }

        // The sessions from before the reload were never dropped.
        let statuses = try await publisher.value
        #expect(statuses.count == 150 && statuses.allSatisfy { $0 == .ok })
        #expect(!stillOld.isClosed)
        let metrics = try await gateway.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(metrics.contains("terminus_config_reloads_total{outcome=\"applied\"} 1"))
        #expect(metrics.contains("terminus_config_reloads_total{outcome=\"refused\"} 2"))
        await device.close()
    }

    @Test(
        "reload under load swaps the route table, the services, the limits and the admin tokens; no session dropped"
    )
    func reloadRoutesAndLimits() async throws {
        let billing = try await TestBackend.start()
        let audit = try await TestBackend.start()
        let oldAdmin = "reload-admin-token-one-0123456789"
        let newAdmin = "reload-admin-token-two-0123456789"
        let services = [
            try BackendRoutingTests.service("billing", port: billing.port, topics: ["pay/#"]),
            try BackendRoutingTests.service("audit", port: audit.port, topics: ["audit/#"]),
        ]
        let gateway = try await TestGateway.start(routed: true) {
            $0.services = services
            $0.adminListen = .init(host: "127.0.0.1", port: 0)
            $0.adminTokens = [oldAdmin]
        }
        let admin = try #require(gateway.gateway.boundAdminAddress?.port)
        #expect(AdminAPITests.request(admin, "GET", "/admin/devices", token: oldAdmin)?.0 == 200)

        // A device keeps publishing to billing through every reload below.
        let steady = try await gateway.connect("routes-steady")
        let publisher = Task {
            var statuses: [TerminusCode] = []
            for index in 0..<100 {
                let ack = try await steady.publish(topic: "pay/done", payload: ByteBuffer(string: "p\(index)"))
                statuses.append(ack.status)
                try await Task.sleep(for: .milliseconds(10))
            }
            return statuses
        }
        let device = try await gateway.connect("routes-speaker")
        #expect(try await device.publish(topic: "speaker/volume", payload: ByteBuffer(string: "v1")).status == .noRoute)

        // New topics for audit, a reconnect limit of one, a new admin token.
        var next = gateway.configuration
        next.services[1].filters = [try TopicFilter("audit/#"), try TopicFilter("speaker/#")]
        next.edge.admission.reconnectMax = 1
        next.adminTokens = [newAdmin]
        #expect(gateway.gateway.reload { next })
        #expect(try await device.publish(topic: "speaker/volume", payload: ByteBuffer(string: "v2")).status == .ok)
        #expect(audit.receiver.payloads == ["v2"])
        // The limit applies from the next HELLO: a second authentication within the window is refused.
        let first = try await RawClient.connect(port: gateway.port, tls: true)
        _ = try await first.handshake("routes-flapper")
        await first.close()
        let second = try await RawClient.connect(port: gateway.port, tls: true)
        try await second.send(TestGateway.hello("routes-flapper"))
        #expect(await second.goAwayOnClose()?.code == .reconnectingTooOften)
        #expect(AdminAPITests.request(admin, "GET", "/admin/devices", token: oldAdmin)?.0 == 401)
        #expect(AdminAPITests.request(admin, "GET", "/admin/devices", token: newAdmin)?.0 == 200)

        // Another service set: audit removed, a new service for the speakers; billing unchanged
        // keeps its connections and goes on acknowledging the steady device.
        let speakers = try await TestBackend.start()
        var moved = next
        moved.services = [
            next.services[0],
            try BackendRoutingTests.service("speakers", port: speakers.port, topics: ["speaker/#"]),
        ]
        moved.edge.admission.reconnectMax = 0
        #expect(gateway.gateway.reload { moved })
        // The new service's connections are made by the reload; a message sent before any is open
        // is retried within the service's retry budget (here a few 20-100 ms backoffs, which a
        // loaded CI machine outlasted once) and then answered RETRY_LATER. Wait for one stream per
        // loop first: what is tested here is the swap, not the connect time.
        #expect(await eventually(10) { speakers.receiver.streams.withLock { $0 } >= 2 })
        let v3 = try await device.publish(topic: "speaker/volume", payload: ByteBuffer(string: "v3"))
        #expect(v3.status == .ok, "\(v3)")
        #expect(speakers.receiver.payloads == ["v3"])
        #expect(audit.receiver.payloads == ["v2"])
        #expect(try await device.publish(topic: "audit/x", payload: ByteBuffer(string: "a1")).status == .noRoute)
        let metrics = try await gateway.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(metrics.contains("service=\"speakers\""))
        #expect(!metrics.contains("service=\"audit\""), "a removed service leaves the scrape")
        let third = try await RawClient.connect(port: gateway.port, tls: true)
        #expect(try await third.handshake("routes-flapper").deviceID == "routes-flapper", "reconnect limit lifted")

        let statuses = try await publisher.value
        #expect(statuses.count == 100 && statuses.allSatisfy { $0 == .ok })
        #expect(billing.receiver.payloads.count == 100)
        await steady.close()
        await device.close()
        await third.close()
        await gateway.stop()
        await billing.stop()
        await audit.stop()
        await speakers.stop()
    }

    @Test(
        "reload swaps the API listener's certificate for new connections; turning on client certificates needs a restart"
    )
    func reloadAPICertificate() async throws {
        let pki = TestPKI.shared
        let gateway = try await TestGateway.start {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = ["reload-api-tls-token-0123456789"]
            $0.apiTLS = .init(certificateChain: pki.serverChain, privateKey: pki.serverKey)
        }
        let port = try #require(gateway.gateway.boundAPIPort)
        let oldSerial = try #require(try Self.servedSerial(port))
        let renewed = try CertificateFactory.issueServer(
            ca: pki.ca,
            commonName: "localhost",
            dnsNames: ["localhost"],
            ipAddresses: [[127, 0, 0, 1]]
        )
        let renewedSerial = try #require(try Self.serial(ofPEM: renewed.certificatePEM))
        #expect(renewedSerial != oldSerial)
        var next = gateway.configuration
        next.apiTLS = .init(
            certificateChain: pki.write(renewed.certificatePEM, name: "api-renewed.pem"),
            privateKey: pki.write(renewed.privateKeyPEM, name: "api-renewed-key.pem")
        )
        #expect(gateway.gateway.reload { next })
        #expect(try Self.servedSerial(port) == renewedSerial)
        // Calls still work over the renewed certificate.
        let answer = try await DownlinkAPITests.withTLSAPI(
            gateway,
            clientCertificate: nil,
            token: "reload-api-tls-token-0123456789"
        ) { try await DownlinkAPITests.presence($0, $1) }
        #expect(answer.devices.count == 1)
        // Another kind of security (client certificates required) waits for a restart: the
        // reload applies, the listener keeps the certificate it has.
        var mutual = next
        mutual.apiTLS = .init(certificateChain: pki.serverChain, privateKey: pki.serverKey, clientCA: pki.caFile)
        #expect(gateway.gateway.reload { mutual })
        #expect(try Self.servedSerial(port) == renewedSerial)
        await gateway.stop()
    }

    @Test("terminus run reloads on SIGHUP and when a watched file is replaced (a ConfigMap's symlink swap)")
    func binaryReloads() async throws {
        for watch in [false, true] {
            let directory = NSTemporaryDirectory() + "terminus-reload-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let port = try await TestBackend.unusedPort()
            // As Kubernetes mounts a Secret: the file is a link through `..data` to a directory
            // that an update replaces.
            func publish(_ secret: String, _ version: String) throws {
                let data = directory + "/" + version
                try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
                try "prefixes:\n  \"\": \"\(secret)\"\n".write(
                    toFile: data + "/devices.yaml",
                    atomically: true,
                    encoding: .utf8
                )
                let link = directory + "/..data"
                try? FileManager.default.removeItem(atPath: link + ".tmp")
                try FileManager.default.createSymbolicLink(atPath: link + ".tmp", withDestinationPath: version)
                guard rename(link + ".tmp", link) == 0 else { throw POSIXError(.EIO) }
            }
            try publish("reload-first-secret-0123456789", "v1")
            try FileManager.default.createSymbolicLink(
                atPath: directory + "/devices.yaml",
                withDestinationPath: "..data/devices.yaml"
            )
            let config = """
                instance_id: reload-test
                event_loop_threads: 1
                device:
                  listen: "127.0.0.1:\(port)"
                  transport: plaintext
                auth:
                  secrets_file: \(directory)/devices.yaml
                drain:
                  unready_delay: 0s
                reload:
                  watch_interval: \(watch ? "200ms" : "0s")
                admin:
                  listen: "127.0.0.1:0"
                """
            try config.write(toFile: directory + "/terminus.yaml", atomically: true, encoding: .utf8)
            let process = try ChildProcess(
                DescriptorExhaustionTests.binary,
                ["run", "--config", directory + "/terminus.yaml"],
                standardError: .file(directory + "/gateway.log")
            )
            defer { if process.isRunning { process.signal(SIGKILL) } }
            func accepted(_ secret: String) async -> Bool {
                guard let device = try? await RawClient.connect(port: port, tls: false) else { return false }
                try? await device.send(TestGateway.hello("reload-bin", secret: secret))
                _ = await device.waitUntil(5) { !device.frames.isEmpty || device.isClosed }
                let welcomed = device.frames.contains { if case .welcome = $0 { true } else { false } }
                await device.close()
                return welcomed
            }
            var listening = false
            for _ in 0..<100 where !listening {
                if let probe = try? await RawClient.connect(port: port, tls: false) {
                    listening = true
                    await probe.close()
                } else {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(listening)
            #expect(await accepted("reload-first-secret-0123456789"))
            try publish("reload-second-secret-0123456789", "v2")
            if !watch { process.signal(SIGHUP) }
            var reloaded = false
            for _ in 0..<50 where !reloaded {
                reloaded = await accepted("reload-second-secret-0123456789")
                if !reloaded { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(reloaded, "the new secret was not taken (watch: \(watch))")
            #expect(!(await accepted("reload-first-secret-0123456789")))
            let log = (try? String(contentsOfFile: directory + "/gateway.log", encoding: .utf8)) ?? ""
            #expect(log.contains("configuration reloaded"), "\(log)")
            process.terminate()
            process.waitUntilExit()
        }
    }
}
