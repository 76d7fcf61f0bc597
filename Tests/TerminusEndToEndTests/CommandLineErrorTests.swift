import Foundation
import NIOCore
import TerminusServer
import TerminusSessions
import Testing

/// What `terminus` prints when something is wrong, as an operator sees it: each message names
/// the address, file or TLS alert involved.
@Suite("Command line: mosquitto-style short flags; errors name what is wrong", .serialized, .gatewayScope)
struct CommandLineErrorTests {
    static var binary: String { DescriptorExhaustionTests.binary }

    /// Runs `terminus` with `arguments`; its exit status and everything it wrote.
    static func terminus(_ arguments: String) async throws -> (status: Int32, output: String) {
        try await DevelopmentModeCLITests.shell("\(Self.binary) \(arguments) 2>&1")
    }

    /// A configuration file in a fresh directory: `device.tls` from `certificate` and `key`,
    /// secrets from `secrets`, plus `extra` YAML.
    static func config(
        certificate: String = TestPKI.shared.serverChain,
        key: String = TestPKI.shared.serverKey,
        secrets: String = "prefixes:\n  \"\": \"a-long-enough-device-secret\"\n",
        extra: String = ""
    ) -> (directory: String, file: String) {
        let directory = NSTemporaryDirectory() + "terminus-cli-errors-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try? secrets.write(toFile: directory + "/devices.yaml", atomically: true, encoding: .utf8)
        let yaml = """
            device:
              listen: "127.0.0.1:0"
              transport: tls
              tls:
                certificate_chain: \(certificate)
                private_key: \(key)
            auth:
              secrets_file: devices.yaml
            admin:
              listen: off
            \(extra)
            """
        try? yaml.write(toFile: directory + "/terminus.yaml", atomically: true, encoding: .utf8)
        return (directory, directory + "/terminus.yaml")
    }

    @Test("check-config names the missing file, the key that does not match, the secrets file, the quoted number")
    func checkConfigErrors() async throws {
        let pki = TestPKI.shared
        let missing = Self.config(certificate: "/nonexistent/renewed.pem")
        let result = try await Self.terminus("check-config \(missing.file)")
        #expect(result.status == 2)
        #expect(
            result.output.contains("device.tls.certificate_chain: the file /nonexistent/renewed.pem does not exist"),
            "\(result.output)"
        )

        let other = try CertificateFactory.issueServer(
            ca: pki.ca,
            commonName: "other",
            dnsNames: ["other"],
            ipAddresses: []
        )
        let otherKey = pki.write(other.privateKeyPEM, name: "other-key-\(UUID().uuidString).pem")
        let mismatch = Self.config(key: otherKey)
        let refused = try await Self.terminus("check-config \(mismatch.file)")
        #expect(refused.status == 2)
        #expect(
            refused.output.contains("the key in \(otherKey) does not match the certificate in \(pki.serverChain)"),
            "\(refused.output)"
        )

        let short = Self.config(secrets: "devices:\n  printer-7: \"short\"\n")
        let badSecret = try await Self.terminus("check-config \(short.file)")
        #expect(badSecret.status == 2)
        #expect(badSecret.output.contains("\(short.directory)/devices.yaml: the secret of devices.printer-7"))
        #expect(!badSecret.output.contains("\"short\""), "the secret itself is never printed")

        let quoted = Self.config(extra: "limits:\n  max_inflight: \"32\"\n")
        let number = try await Self.terminus("check-config \(quoted.file)")
        #expect(number.status == 2)
        #expect(
            number.output.contains("limits.max_inflight: must be an integer, not a quoted string"),
            "\(number.output)"
        )

        let target = Self.config(
            extra: "services:\n  - name: billing\n    target: \"http://billing:50051\"\n    topics: [\"#\"]\n"
        )
        let scheme = try await Self.terminus("check-config \(target.file)")
        #expect(scheme.status == 2)
        #expect(scheme.output.contains("services[0].target"), "\(scheme.output)")
        #expect(scheme.output.contains("the scheme http:// is not supported"), "\(scheme.output)")

        let good = Self.config()
        #expect(try await Self.terminus("check-config \(good.file)").status == 0)
        for directory in [missing, mismatch, short, quoted, target, good].map(\.directory) {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    @Test("terminus run names the listener and the address that is busy")
    func busyAddress() async throws {
        let holder = try await TestGateway.start()
        let setup = Self.config()
        defer { try? FileManager.default.removeItem(atPath: setup.directory) }
        let result = try await Self.terminus(
            "run --config \(setup.file) --device-listen 127.0.0.1:\(holder.port)"
        )
        #expect(result.status != 0)
        #expect(
            result.output.contains(
                "the device listener cannot bind 127.0.0.1:\(holder.port): the address is already in use"
            ),
            "\(result.output)"
        )
        #expect(result.output.contains("set device.listen or --device-listen"))
        await holder.stop()
    }

    @Test("device publish names the TLS alert the gateway sent: certificate_required without a client certificate")
    func tlsAlert() async throws {
        let gateway = try await TestGateway.start {
            $0.tls?.clientCA = TestPKI.shared.caFile
            $0.tls?.clientAuth = .required
        }
        let result = try await Self.terminus(
            "device publish --gateway 127.0.0.1:\(gateway.port) --ca \(TestPKI.shared.caFile) --server-name localhost"
                + " --device alert-1 --secret \(TestGateway.secret) --topic t/x --message hi"
        )
        #expect(result.status == 3, "\(result.output)")
        #expect(
            result.output.contains("ended the TLS handshake with alert certificate_required"),
            "\(result.output)"
        )
        await gateway.stop()
    }

    @Test("device publish takes -h -p -i -t -m -q as mosquitto_pub does; --help is its help")
    func shortFlags() async throws {
        let gateway = try await TestGateway.start()
        let result = try await Self.terminus(
            "device publish -h 127.0.0.1 -p \(gateway.port) -i short-flags-1 -t t/short -q 1 -m hello -m again"
                + " --ca \(TestPKI.shared.caFile) --server-name localhost --secret \(TestGateway.secret)"
        )
        #expect(result.status == 0, "\(result.output)")
        let received = gateway.sink.messages.filter { $0.deviceID == "short-flags-1" }
        #expect(received.map(\.topic) == ["t/short", "t/short"])
        #expect(received.map { String(buffer: $0.payload) } == ["hello", "again"])
        let help = try await Self.terminus("device publish --help")
        #expect(help.status == 0 && help.output.contains("-h <host>") && help.output.contains("-t, --topic"))
        await gateway.stop()
    }
}
