import Foundation
import TerminusTestSupport

/// The Python backend from docs/backend.md in its own process, so that tests can kill it for
/// real (SIGKILL) and start it again on the same port.
final class PythonBackend: @unchecked Sendable {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Installs grpcio and grpcio-tools with pip when they are missing (the README's
    /// `swift test` must pass on a fresh machine, where only `.ci/run` would otherwise add them).
    /// Once per process.
    static let installed: Bool = {
        func run(_ arguments: [String]) -> Int32 {
            guard let process = try? ChildProcess("/usr/bin/env", arguments) else { return -1 }
            process.waitUntilExit()
            return process.terminationStatus
        }
        if run(["python3", "-c", "import grpc, grpc_tools"]) == 0 { return true }
        _ = run(["python3", "-m", "pip", "install", "-q", "grpcio", "grpcio-tools"])
        return run(["python3", "-c", "import grpc, grpc_tools"]) == 0
    }()

    /// Generates the Python stubs (the step documented in docs/backend.md) into a temporary
    /// directory; returns it, or nil when grpcio-tools is missing and cannot be installed.
    static func generateStubs() throws -> String? {
        guard Self.installed else { return nil }
        let work = NSTemporaryDirectory() + "terminus-python-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let protos = Self.repository.appendingPathComponent("Protos").path
        let process = try ChildProcess(
            "/usr/bin/env",
            [
                "python3", "-m", "grpc_tools.protoc", "-I", protos, "--python_out=\(work)",
                "--grpc_python_out=\(work)", "\(protos)/terminus/v1/uplink.proto",
                "\(protos)/terminus/v1/gateway.proto",
            ],
            standardError: .inherit
        )
        process.waitUntilExit()
        return process.terminationStatus == 0 ? work : nil
    }

    let port: Int
    let output: String
    private let process: ChildProcess

    /// Starts the backend and waits (bounded) until it listens.
    init(stubs: String, port: Int, delayMilliseconds: Int = 0, arguments: [String] = []) async throws {
        self.port = port
        self.output = stubs + "/backend-\(port)-\(UUID().uuidString).out"
        _ = FileManager.default.createFile(atPath: self.output, contents: nil)
        self.process = try ChildProcess(
            "/usr/bin/env",
            [
                "python3", Self.repository.appendingPathComponent("docs/examples/python-backend/backend.py").path,
                "--port", "\(port)", "--delay-ms", "\(delayMilliseconds)",
            ] + arguments,
            environment: ProcessInfo.processInfo.environment.merging(["PYTHONPATH": stubs]) { $1 },
            standardOutput: .file(self.output),
            standardError: .inherit
        )
        let output = self.output
        _ = await RawClient.poll(20) {
            ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("LISTENING")
        }
    }

    var text: String { (try? String(contentsOfFile: self.output, encoding: .utf8)) ?? "" }
    var isListening: Bool { self.text.contains("LISTENING") }

    /// (delivery id, topic, payload) per accepted message.
    var received: [(deliveryID: String, topic: String, payload: String)] {
        self.text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
            guard parts.count == 4, parts[0] == "RECEIVED" else { return nil }
            return (String(parts[1]), String(parts[2]), String(parts[3]))
        }
    }

    /// The last `RECEIVED_TOTAL` count printed with `--quiet`.
    var reportedTotal: Int? {
        self.text.split(separator: "\n").last { $0.hasPrefix("RECEIVED_TOTAL ") }
            .flatMap { Int($0.dropFirst("RECEIVED_TOTAL ".count)) }
    }

    /// SIGKILL: the process dies with calls in flight.
    func kill() {
        self.process.signal(SIGKILL)
        self.process.waitUntilExit()
    }

    /// SIGKILL as well: a backend that outlives its test would hold its port.
    func stop() {
        if self.process.isRunning { self.kill() }
    }
}
