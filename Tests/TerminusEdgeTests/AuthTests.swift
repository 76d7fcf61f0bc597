import NIOCore
import TerminusAuth
import TerminusEdge
import TerminusProtocol
import Testing

@Suite("Device tokens and authentication")
struct AuthTests {
    let secret = Array("0123456789abcdef-secret".utf8)

    @Test("a token verifies for its device and secret until it expires")
    func token() {
        let token = Array(DeviceToken.make(deviceID: "spk-1", secret: self.secret, expiresAt: 2_000).utf8)
        #expect(
            DeviceToken.verify(token: token, deviceID: "spk-1", secret: self.secret, now: 1_999)
                == .valid(expiresAt: 2_000)
        )
        #expect(
            DeviceToken.verify(token: token, deviceID: "spk-1", secret: self.secret, now: 2_001)
                == .expired(expiresAt: 2_000)
        )
        #expect(DeviceToken.verify(token: token, deviceID: "spk-2", secret: self.secret, now: 1_000) == .invalid)
        #expect(
            DeviceToken.verify(token: token, deviceID: "spk-1", secret: Array("other-secret-0123".utf8), now: 1_000)
                == .invalid
        )
    }

    @Test("a token with a changed expiry or mangled syntax is invalid")
    func tampered() {
        let text = DeviceToken.make(deviceID: "spk-1", secret: self.secret, expiresAt: 2_000)
        let parts = text.split(separator: ".")
        let forged = "v1.9999999999.\(parts[2])"
        for candidate in [forged, "", "v1..", "v2.2000.\(parts[2])", "v1.2000.!!!", "v1.-5.\(parts[2])", text + "x"] {
            #expect(
                DeviceToken.verify(token: Array(candidate.utf8), deviceID: "spk-1", secret: self.secret, now: 1_000)
                    == .invalid
            )
        }
    }

    @Test("the token format matches the documented test vector")
    func vector() {
        // docs/protocol.md, "Tokens": device "demo-1", secret "terminus-demo-secret", expiry 1767225600.
        let token = DeviceToken.make(
            deviceID: "demo-1",
            secret: Array("terminus-demo-secret".utf8),
            expiresAt: 1_767_225_600
        )
        #expect(token == "v1.1767225600.\(Self.documentedMAC)")
    }

    static let documentedMAC = "3jDTlIy7PRRhZHnB2xyZfDIMgZw1laIXd_d13EqSzrY"

    @Test("secrets: exact id first, then the longest prefix")
    func secretStore() {
        let store = SecretStore(
            devices: ["spk-0001": [1]],
            prefixes: ["spk-": [2], "spk-00": [3], "": [4]]
        )
        #expect(store.secret(for: "spk-0001") == [1])
        #expect(store.secret(for: "spk-0002") == [3])
        #expect(store.secret(for: "spk-9") == [2])
        #expect(store.secret(for: "printer") == [4])
        #expect(SecretStore(prefixes: ["a": [1]]).secret(for: "b") == nil)
    }

    func hello(_ device: String, token: String, method: AuthMethod = .token) -> Hello {
        Hello(
            keepaliveSeconds: 0,
            capabilities: [],
            deviceID: device,
            authMethod: method,
            credential: ByteBuffer(string: token)
        )
    }

    func code(_ body: () throws -> String) -> TerminusCode? {
        do {
            _ = try body()
            return nil
        } catch {
            return (error as? ProtocolError)?.code ?? .internalError
        }
    }

    @Test(
        "a token valid for longer than the maximum lifetime is refused; an unknown device is refused like a bad token"
    )
    func lifetimeAndUnknown() throws {
        let auth = DeviceAuthenticator(
            secrets: SecretStore(prefixes: ["spk-": self.secret]),
            maxTokenLifetimeSeconds: 3_600,
            now: { 1_000 }
        )
        let withinLifetime = DeviceToken.make(deviceID: "spk-1", secret: self.secret, expiresAt: 4_600)
        #expect(
            try auth.authenticate(
                self.hello("spk-1", token: withinLifetime),
                certificateDeviceID: nil,
                maxDeviceIDLength: 64
            )
                == "spk-1"
        )
        let tooLong = DeviceToken.make(deviceID: "spk-1", secret: self.secret, expiresAt: 4_601)
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("spk-1", token: tooLong),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .tokenLifetimeExceeded
        )
        // A forged token for an unknown id and for a known one: the same answer (and the same
        // HMAC work, against a decoy secret; measured in the AuthRefusal benchmarks).
        let forged = DeviceToken.make(deviceID: "ghost-1", secret: Array("guess".utf8), expiresAt: 2_000)
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("ghost-1", token: forged),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .authenticationFailed
        )
        let forgedKnown = DeviceToken.make(deviceID: "spk-2", secret: Array("guess".utf8), expiresAt: 2_000)
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("spk-2", token: forgedKnown),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .authenticationFailed
        )
        // Lifetime 0 accepts any expiry.
        let unlimited = DeviceAuthenticator(
            secrets: SecretStore(prefixes: ["spk-": self.secret]),
            maxTokenLifetimeSeconds: 0,
            now: { 1_000 }
        )
        let year2286 = DeviceToken.make(deviceID: "spk-1", secret: self.secret, expiresAt: 9_999_999_999)
        #expect(
            try unlimited.authenticate(
                self.hello("spk-1", token: year2286),
                certificateDeviceID: nil,
                maxDeviceIDLength: 64
            )
                == "spk-1"
        )
    }

    @Test("the authenticator maps every refusal to its code")
    func authenticator() throws {
        let auth = DeviceAuthenticator(secrets: SecretStore(prefixes: ["spk-": self.secret]), now: { 1_000 })
        let good = DeviceToken.make(deviceID: "spk-1", secret: self.secret, expiresAt: 2_000)
        #expect(
            try auth.authenticate(self.hello("spk-1", token: good), certificateDeviceID: nil, maxDeviceIDLength: 64)
                == "spk-1"
        )
        let expired = DeviceToken.make(deviceID: "spk-1", secret: self.secret, expiresAt: 999)
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("spk-1", token: expired),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .tokenExpired
        )
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("spk-1", token: "nope"),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .authenticationFailed
        )
        #expect(
            self.code {
                try auth.authenticate(self.hello("other", token: good), certificateDeviceID: nil, maxDeviceIDLength: 64)
            } == .authenticationFailed
        )
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("spk-1", token: "", method: .certificate),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .authenticationFailed
        )
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("bad id", token: good),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .invalidDeviceID
        )
        // mTLS: the certificate names the device.
        #expect(
            try auth.authenticate(
                self.hello("", token: "", method: .certificate),
                certificateDeviceID: "cert-dev",
                maxDeviceIDLength: 64
            ) == "cert-dev"
        )
        #expect(
            self.code {
                try auth.authenticate(
                    self.hello("spk-1", token: good),
                    certificateDeviceID: "cert-dev",
                    maxDeviceIDLength: 64
                )
            } == .certificateRequired
        )
        let strict = DeviceAuthenticator(secrets: SecretStore(), requireCertificate: true, now: { 1_000 })
        #expect(
            self.code {
                try strict.authenticate(
                    self.hello("spk-1", token: good),
                    certificateDeviceID: nil,
                    maxDeviceIDLength: 64
                )
            } == .certificateRequired
        )
    }
}
