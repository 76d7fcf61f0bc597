import Foundation
import NIOCore
import TerminusClient
import TerminusListeners
import TerminusProtocol
import TerminusServer
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Admin API and terminus ctl", .serialized, .gatewayScope)
struct AdminAPITests {
    static let token = "admin-api-token-0123456789"

    /// One request to the admin listener: status and body.
    static func request(_ port: Int, _ method: String, _ path: String, token: String? = Self.token) -> (Int, String)? {
        guard let fd = DescriptorExhaustionTests.connectTCP(port) else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let authorization = token.map { "Authorization: Bearer \($0)\r\n" } ?? ""
        let request = Array(
            "\(method) \(path) HTTP/1.1\r\nHost: x\r\n\(authorization)Content-Length: 0\r\nConnection: close\r\n\r\n"
                .utf8
        )
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count
        else { return nil }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += chunk[..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let status = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }),
            let split = text.range(of: "\r\n\r\n")
        else { return nil }
        return (status, String(text[split.upperBound...]))
    }

    static func json(_ body: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
    }

    static let routes: [(String, String)] = [
        ("GET", "/admin/devices"), ("GET", "/admin/devices/adm-a1"), ("POST", "/admin/devices/adm-a1/kick"),
        ("POST", "/admin/drain"), ("GET", "/admin/config"), ("POST", "/admin/reload"),
    ]

    @Test("every admin route refuses a missing or wrong token (401), and all are off without admin.tokens_file (403)")
    func tokens() async throws {
        let gateway = try await TestGateway.start {
            $0.adminListen = .init(host: "127.0.0.1", port: 0)
            $0.adminTokens = [Self.token]
        }
        let port = try #require(gateway.gateway.boundAdminAddress?.port)
        for (method, path) in Self.routes {
            #expect(Self.request(port, method, path, token: nil)?.0 == 401, "\(method) \(path) without a token")
            #expect(Self.request(port, method, path, token: "wrong-token-0123456789")?.0 == 401, "\(method) \(path)")
        }
        // The probes stay open (Kubernetes sends no token).
        #expect(DescriptorExhaustionTests.httpGet(port, "/healthz")?.contains("200 OK") == true)
        #expect(gateway.gateway.isRunning)
        let off = try await TestGateway.start { $0.adminListen = .init(host: "127.0.0.1", port: 0) }
        let offPort = try #require(off.gateway.boundAdminAddress?.port)
        for (method, path) in Self.routes {
            #expect(Self.request(offPort, method, path)?.0 == 403, "\(method) \(path) with the API off")
        }
    }

    @Test("devices (paged, by prefix), one device, kick, config (redacted), reload, drain; and terminus ctl")
    func routes() async throws {
        let gateway = try await TestGateway.start {
            $0.adminListen = .init(host: "127.0.0.1", port: 0)
            $0.adminTokens = [Self.token]
            $0.apiTokens = ["api-token-never-shown-0123456789"]
        }
        let port = try #require(gateway.gateway.boundAdminAddress?.port)
        var devices: [String: RawClient] = [:]
        for id in ["adm-a2", "adm-a1", "adm-b1"] {
            let device = try await RawClient.connect(port: gateway.port, tls: true)
            _ = try await device.handshake(id)
            devices[id] = device
        }
        // Pages of one, by prefix, in id order.
        let first = try #require(Self.request(port, "GET", "/admin/devices?prefix=adm-a&limit=1"))
        #expect(first.0 == 200)
        let firstPage = try #require(Self.json(first.1))
        let listed = (firstPage["devices"] as? [[String: Any]])?.compactMap { $0["device_id"] as? String }
        #expect(listed == ["adm-a1"] && firstPage["next"] as? String == "adm-a1", "\(first.1)")
        let second = try #require(
            Self.json(Self.request(port, "GET", "/admin/devices?prefix=adm-a&after=adm-a1")?.1 ?? "")
        )
        #expect((second["devices"] as? [[String: Any]])?.compactMap { $0["device_id"] as? String } == ["adm-a2"])
        #expect(second["next"] == nil || second["next"] is NSNull)
        // One device.
        let one = try #require(Self.request(port, "GET", "/admin/devices/adm-b1"))
        #expect(one.0 == 200)
        #expect((Self.json(one.1)?["client_address"] as? String)?.hasPrefix("127.0.0.1:") == true)
        #expect(Self.request(port, "GET", "/admin/devices/nobody")?.0 == 404)
        // Kick.
        #expect(Self.request(port, "POST", "/admin/devices/adm-b1/kick")?.0 == 200)
        #expect(await devices["adm-b1"]!.goAwayOnClose()?.code == .kicked)
        // The device may read GOAWAY before the gateway has let go of the session.
        #expect(await eventually { Self.request(port, "POST", "/admin/devices/adm-b1/kick")?.0 == 404 })
        // The configuration, secrets and tokens redacted.
        let config = try #require(Self.request(port, "GET", "/admin/config"))
        #expect(config.0 == 200 && Self.json(config.1) != nil)
        #expect(!config.1.contains(Self.token) && !config.1.contains("api-token-never-shown"))
        #expect(!config.1.contains(TestGateway.secret))
        #expect(config.1.contains("(1 redacted)"))
        // Reload: nothing to read from in this gateway, then a source that works.
        #expect(Self.request(port, "POST", "/admin/reload")?.0 == 422)
        let configuration = gateway.configuration
        gateway.gateway.configurationSource.replace(with: { configuration })
        #expect(Self.request(port, "POST", "/admin/reload")?.1.contains(#""applied":true"#) == true)

        // terminus ctl against the same listener.
        let output = NSTemporaryDirectory() + "terminus-ctl-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: output) }
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let ctl = try ChildProcess(
            DescriptorExhaustionTests.binary,
            ["ctl", "--admin", "127.0.0.1:\(port)", "--token", Self.token, "--prefix", "adm-a", "devices"],
            standardOutput: .file(output)
        )
        ctl.waitUntilExit()
        #expect(ctl.terminationStatus == 0)
        #expect((try? String(contentsOfFile: output, encoding: .utf8))?.contains(#""device_id":"adm-a2""#) == true)
        let refused = try ChildProcess(
            DescriptorExhaustionTests.binary,
            ["ctl", "--admin", "127.0.0.1:\(port)", "--token", "wrong-token-0123456789", "devices"],
            standardOutput: .file(output)
        )
        refused.waitUntilExit()
        #expect(refused.terminationStatus == 2)

        // Drain: not ready, every device told to go; the process keeps running.
        #expect(Self.request(port, "POST", "/admin/drain")?.0 == 202)
        #expect(await devices["adm-a1"]!.goAwayOnClose()?.code == .shuttingDown)
        #expect(DescriptorExhaustionTests.httpGet(port, "/readyz")?.contains("503") == true)
        #expect(gateway.gateway.isRunning)
        for device in devices.values { await device.close() }
    }
}
