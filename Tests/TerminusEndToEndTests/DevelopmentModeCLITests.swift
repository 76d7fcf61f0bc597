import Foundation
import TerminusAuth
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The quick start as a user runs it: `terminus run` with no configuration and `--api-listen`,
/// then the two commands its banner prints, pasted into a shell as they are.
@Suite("Development mode: every listener usable, `terminus send`", .serialized)
struct DevelopmentModeCLITests {
    static var binary: String { DescriptorExhaustionTests.binary }

    /// Runs `command` in `sh`, waits (bounded) and returns its exit status and standard output.
    static func shell(_ command: String, seconds: Double = 30) async throws -> (status: Int32, output: String) {
        let output = NSTemporaryDirectory() + "terminus-shell-\(UUID().uuidString).out"
        defer { try? FileManager.default.removeItem(atPath: output) }
        let process = try ChildProcess("/bin/sh", ["-c", command], standardOutput: .file(output))
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            Issue.record("`\(command)` did not finish within \(seconds) s")
        }
        return (process.terminationStatus, Self.text(output))
    }

    static func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    static func waitFor(_ seconds: Double, _ condition: () -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }

    @Test("--api-listen in development mode: the banner's listen and send commands work as printed")
    func bannerCommands() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build the terminus product: \(Self.binary)")
        let directory = NSTemporaryDirectory() + "terminus-devcli-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let devicePort = LoopbackSocket.freePort()
        let apiPort = LoopbackSocket.freePort()
        let adminPort = LoopbackSocket.freePort()
        let log = directory + "/gateway.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let gateway = try ChildProcess(
            Self.binary,
            [
                "run", "--dev-directory", directory + "/dev", "--device-listen", "127.0.0.1:\(devicePort)",
                "--api-listen", "127.0.0.1:\(apiPort)", "--admin-listen", "127.0.0.1:\(adminPort)",
            ],
            standardError: .file(log)
        )
        defer {
            if gateway.isRunning { gateway.terminate() }
            gateway.waitUntilExit()
        }
        #expect(try await Self.waitFor(30) { Self.text(log).contains(" send --api ") }, "banner: \(Self.text(log))")
        let lines = Self.text(log).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let listenLine = try #require(lines.first { $0.contains(" device listen ") })
        let sendLine = try #require(lines.first { $0.contains(" send --api ") })
        let token = try String(contentsOfFile: directory + "/dev/api-token.txt", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count == 48)
        #expect(sendLine.contains("--token \(token)"))

        // The API answers once the gateway is up: nobody is connected yet.
        var offline: (status: Int32, output: String) = (-1, "")
        for _ in 0..<100 {
            offline = try await Self.shell(sendLine)
            if offline.status != 4 { break }  // 4: the call failed (not listening yet)
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(offline.status == 2, "exit status 2 is OFFLINE")
        #expect(offline.output.hasPrefix("OFFLINE gateway=terminus-dev"))

        // A device from the banner's listen command, then the banner's send command.
        let pushes = directory + "/pushes.txt"
        let listener = try ChildProcess(
            "/bin/sh",
            ["-c", "exec \(listenLine) --count 1 > \(pushes) 2> \(directory)/listen.log"]
        )
        defer {
            if listener.isRunning { listener.terminate() }
            listener.waitUntilExit()
        }
        #expect(try await Self.waitFor(20) { Self.text(directory + "/listen.log").contains("connected to") })
        let delivered = try await Self.shell(sendLine)
        #expect(delivered.status == 0)
        #expect(delivered.output == "DELIVERED gateway=terminus-dev\n")
        #expect(try await Self.waitFor(10) { !listener.isRunning }, "the listener exits after its one push")
        #expect(listener.terminationStatus == 0, "device listen --count exits 0")
        #expect(Self.text(pushes).contains("topic=demo/command qos=1 payload=hello, device"))

        // Development mode serves the admin listener too (on loopback; here on a free port).
        #expect(DescriptorExhaustionTests.httpGet(adminPort, "/metrics")?.contains("terminus_build_info") == true)

        // A wrong token is refused by the API, not by the device: exit status 4.
        let refused = try await Self.shell(
            sendLine.replacingOccurrences(of: token, with: String(repeating: "0", count: 48))
        )
        #expect(refused.status == 4)

        gateway.terminate()
        #expect(try await Self.waitFor(20) { !gateway.isRunning }, "SIGTERM stops the gateway")
    }

    @Test(
        "terminus token: the secret from a file or $TERMINUS_DEVICE_SECRET; one shorter than the gateway accepts is refused"
    )
    func tokenSecrets() async throws {
        let file = NSTemporaryDirectory() + "terminus-secret-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try "token-secret-0123456789\n".write(toFile: file, atomically: true, encoding: .utf8)
        let fromFile = try await Self.shell("\(Self.binary) token --device d-1 --secret-file \(file) --ttl 60")
        let fromEnvironment = try await Self.shell(
            "TERMINUS_DEVICE_SECRET=token-secret-0123456789 \(Self.binary) token --device d-1 --ttl 60"
        )
        #expect(fromFile.status == 0 && fromEnvironment.status == 0)
        // Both are valid tokens for d-1 under that secret.
        let now = Int64(Date().timeIntervalSince1970)
        for output in [fromFile.output, fromEnvironment.output] {
            let token = Array(output.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
            let verdict = DeviceToken.verify(
                token: token,
                deviceID: "d-1",
                secret: Array("token-secret-0123456789".utf8),
                now: now
            )
            guard case .valid = verdict else {
                Issue.record("not a valid token: \(output)")
                continue
            }
        }
        let short = try await Self.shell("\(Self.binary) token --device d-1 --secret short-secret 2>&1")
        #expect(short.status == 64, "a 12-byte secret")
        #expect(short.output.contains("at least 16 bytes"), "\(short.output)")
        let missing = try await Self.shell("\(Self.binary) token --device d-1 --secret-file /nonexistent/secret 2>&1")
        #expect(missing.status == 64 && missing.output.contains("/nonexistent/secret"), "\(missing.output)")
    }

    @Test("terminus send refuses bad arguments before calling anything")
    func sendValidation() async throws {
        let base = "\(Self.binary) send --api 127.0.0.1:1 --device d --topic t"
        for arguments in ["", " --message a --file b", " --message a --qos 2", " --message a --timeout soon"] {
            let result = try await Self.shell(base + arguments)
            #expect(result.status == 64, "usage error for `\(arguments)`")  // EX_USAGE
        }
    }
}
