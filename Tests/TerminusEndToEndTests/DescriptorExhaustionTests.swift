import Foundation
import NIOCore
import TerminusProtocol
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The gateway binary at its open-file limit: accept must back off (not spin), say so in the
/// log at a bounded rate, keep answering health probes, and serve again once descriptors free up.
@Suite("Descriptor exhaustion", .serialized)
struct DescriptorExhaustionTests {
    /// `terminus`, built beside this test bundle.
    static var binary: String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return bundle.appendingPathComponent("terminus").path
    }

    static func freePort() -> Int { LoopbackSocket.freePort() }

    /// A plain TCP connection (nil when refused or out of descriptors here).
    static func connectTCP(_ port: Int) -> Int32? { LoopbackSocket.connect(port: port) }

    /// CPU seconds (user + system) of `pid` from /proc.
    static func cpuSeconds(_ pid: Int32) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func httpGet(_ port: Int, _ path: String) -> String? {
        guard let fd = connectTCP(port) else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count
        else {
            return nil
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += chunk[..<n]
        }
        return String(decoding: response, as: UTF8.self)
    }

    struct Running {
        let process: ChildProcess
        let devicePort: Int
        let adminPort: Int
        let log: String

        var logText: String { (try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "" }

        func stop() {
            if self.process.isRunning { self.process.terminate() }
            self.process.waitUntilExit()
        }
    }

    static let secret = "fd-test-secret-0123456789"

    /// The gateway binary under a 300-descriptor limit with `max_connections: 100000`.
    static func start(directory: String, reservedDescriptors: Int?) async throws -> Running {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let devicePort = Self.freePort()
        let adminPort = Self.freePort()
        try "prefixes:\n  \"\": \"\(Self.secret)\"\n".write(
            toFile: directory + "/devices.yaml",
            atomically: true,
            encoding: .utf8
        )
        let reserve = reservedDescriptors.map { "\n  reserved_descriptors: \($0)" } ?? ""
        let config = """
            instance_id: fd-test
            event_loop_threads: 1
            device:
              listen: "127.0.0.1:\(devicePort)"
              transport: plaintext
            auth:
              secrets_file: \(directory)/devices.yaml
            limits:
              max_connections: 100000
              accept_backoff: 200ms\(reserve)
            timeouts:
              hello: 60s
            drain:
              unready_delay: 0s
            admin:
              listen: "127.0.0.1:\(adminPort)"
            """
        try config.write(toFile: directory + "/terminus.yaml", atomically: true, encoding: .utf8)
        let log = directory + "/gateway.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let process = try ChildProcess(
            "/usr/bin/prlimit",
            ["--nofile=300:300", Self.binary, "run", "--config", directory + "/terminus.yaml"],
            standardError: .file(log)
        )
        let running = Running(process: process, devicePort: devicePort, adminPort: adminPort, log: log)
        for _ in 0..<100 {
            if Self.httpGet(adminPort, "/healthz")?.contains("200 OK") == true { return running }
            try await Task.sleep(for: .milliseconds(100))
        }
        running.stop()
        throw POSIXError(.ETIMEDOUT)
    }

    /// Whether a HELLO on a new connection gets WELCOME.
    static func served(_ port: Int) -> Bool {
        guard let fd = Self.connectTCP(port) else { return false }
        defer { close(fd) }
        var buffer = ByteBuffer()
        buffer.writeFrame(TestGateway.hello("fd-device", secret: Self.secret))
        let bytes = Array(buffer.readableBytesView)
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var reply = [UInt8](repeating: 0, count: 256)
        let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n > 5 && reply[4] == 0x02  // WELCOME
    }

    /// Opens up to `count` TCP connections and keeps them open.
    static func flood(_ port: Int, count: Int) -> [Int32] {
        (0..<count).compactMap { _ in Self.connectTCP(port) }
    }

    @Test(
        "max_connections above the open-file capacity is lowered: a flood is refused at the cap, health keeps answering"
    )
    func capacityClamp() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build the terminus product: \(Self.binary)")
        let directory = NSTemporaryDirectory() + "terminus-fd-cap-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let gateway = try await Self.start(directory: directory, reservedDescriptors: nil)
        defer { gateway.stop() }
        #expect(gateway.logText.contains("using the capacity instead"))
        let held = Self.flood(gateway.devicePort, count: 400)
        defer { for fd in held { close(fd) } }
        try await Task.sleep(for: .milliseconds(500))
        #expect(
            Self.httpGet(gateway.adminPort, "/healthz")?.contains("200 OK") == true,
            "health answers under the flood"
        )
        let cpuBefore = Self.cpuSeconds(gateway.process.processIdentifier) ?? 0
        try await Task.sleep(for: .seconds(1))
        let cpuAfter = Self.cpuSeconds(gateway.process.processIdentifier) ?? 0
        #expect(cpuAfter - cpuBefore < 0.3, "gateway CPU under the flood: \(cpuAfter - cpuBefore) s in 1 s")
    }

    @Test("out of descriptors: accept backs off instead of spinning, logs at a bounded rate, and recovers")
    func exhaustion() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build the terminus product: \(Self.binary)")
        let directory = NSTemporaryDirectory() + "terminus-fd-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // No reserve: device connections may take every descriptor, so accept itself fails.
        let gateway = try await Self.start(directory: directory, reservedDescriptors: 0)
        defer { gateway.stop() }
        var held = Self.flood(gateway.devicePort, count: 400)
        defer { for fd in held { close(fd) } }
        try await Task.sleep(for: .seconds(1))
        let cpuBefore = Self.cpuSeconds(gateway.process.processIdentifier) ?? 0
        try await Task.sleep(for: .seconds(2))
        let cpuAfter = Self.cpuSeconds(gateway.process.processIdentifier) ?? 0
        // Without the backoff the event loop spun at 100% of a core here.
        #expect(cpuAfter - cpuBefore < 0.5, "gateway CPU at the descriptor limit: \(cpuAfter - cpuBefore) s in 2 s")
        let lines = gateway.logText.split(separator: "\n").filter {
            $0.contains("accepting a device connection failed")
        }
        #expect(!lines.isEmpty, "failed accepts must be logged")
        #expect(lines.count <= 10, "failed accepts are logged at most once a second: \(lines.count) lines")
        for fd in held { close(fd) }
        held = []
        var served = false
        for _ in 0..<50 where !served {
            served = Self.served(gateway.devicePort)
            if !served { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(served, "the gateway serves devices again once descriptors are free")
        #expect(Self.httpGet(gateway.adminPort, "/healthz")?.contains("200 OK") == true)
    }
}
