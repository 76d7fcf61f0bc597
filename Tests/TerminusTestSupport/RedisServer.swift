import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A `redis-server` (Debian's) on 127.0.0.1 for one test: a free port, no persistence, its
/// log in a file removed with the server. When the machine has no `redis-server`, the first start installs Debian's
/// package (`apt-get install redis-server`), so that the README's `swift test` works on a fresh
/// machine as `.ci/run` does.
package final class RedisServer: Sendable {
    package let port: Int
    package let arguments: [String]
    package let logFile: String
    private let process: Mutex<ChildProcess?>

    private static let installed = Mutex<Bool?>(nil)

    /// The server binary, installing it first if need be; nil when that failed.
    package static var executable: String? {
        Self.installed.withLock { installed -> String? in
            let path = "/usr/bin/redis-server"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
            if installed == nil {
                installed = true
                let script =
                    "(apt-get install -y -qq redis-server || (apt-get update -qq && apt-get install -y -qq redis-server))"
                    + " >/dev/null 2>&1"
                let command = "export DEBIAN_FRONTEND=noninteractive; " + script
                if let shell = try? ChildProcess("/bin/sh", ["-c", command]) {
                    shell.waitUntilExit()
                }
            }
            return FileManager.default.isExecutableFile(atPath: path) ? path : nil
        }
    }

    /// Starts a server with `arguments` added to the command line (`--requirepass secret`,
    /// `--user alice on >pw ~* +@all`, TLS options), on `port` (default: a free one), and
    /// waits until it accepts connections.
    package static func start(port: Int? = nil, _ arguments: [String] = []) async throws -> RedisServer {
        guard let executable = Self.executable else {
            throw RedisServerError("redis-server is not installed and apt-get could not install it")
        }
        let server = RedisServer(port: port ?? LoopbackSocket.freePort(), arguments: arguments)
        try server.launch(executable)
        guard await server.waitUntilAccepting(seconds: 10) else {
            server.kill()
            let log = (try? String(contentsOfFile: server.logFile, encoding: .utf8)) ?? ""
            throw RedisServerError("redis-server did not start on \(server.port): \(log.suffix(600))")
        }
        return server
    }

    private init(port: Int, arguments: [String]) {
        self.port = port
        self.arguments = arguments
        self.logFile = NSTemporaryDirectory() + "terminus-redis-\(port)-\(UUID().uuidString).log"
        self.process = Mutex(nil)
    }

    private func launch(_ executable: String) throws {
        let process = try ChildProcess(
            executable,
            [
                "--port", "\(self.port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", "",
            ] + self.arguments,
            standardOutput: .file(self.logFile),
            standardError: .file(self.logFile)
        )
        self.process.withLock { $0 = process }
    }

    private func waitUntilAccepting(seconds: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let fd = LoopbackSocket.connect(port: self.port) {
                close(fd)
                return true
            }
            if self.process.withLock({ $0?.isRunning }) != true { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    package var isRunning: Bool { self.process.withLock { $0?.isRunning ?? false } }

    /// SIGTERM, and waits until it exited.
    package func stop() {
        let process = self.process.withLock { $0 }
        process?.terminate()
        process?.waitUntilExit()
    }

    /// SIGKILL (a crash), and waits until it exited.
    package func kill() {
        let process = self.process.withLock { $0 }
        process?.signal(SIGKILL)
        process?.waitUntilExit()
    }

    /// Starts the server again on the same port with the same arguments (after `stop` or `kill`).
    package func restart() async throws {
        guard let executable = Self.executable else { throw RedisServerError("redis-server is not installed") }
        try self.launch(executable)
        guard await self.waitUntilAccepting(seconds: 10) else {
            throw RedisServerError("redis-server did not start again on \(self.port)")
        }
    }

    /// Kills the server if it still runs and removes its log: a test that wants the log reads it
    /// before letting go of the server (a failed start puts its end in the error).
    deinit {
        self.process.withLock { $0 }?.signal(SIGKILL)
        try? FileManager.default.removeItem(atPath: self.logFile)
    }
}

package struct RedisServerError: Error, CustomStringConvertible {
    package let description: String
    init(_ description: String) { self.description = description }
}
