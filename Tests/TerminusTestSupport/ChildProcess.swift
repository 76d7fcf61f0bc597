import Foundation
import Synchronization

#if canImport(Glibc)
package import Glibc
#endif

/// A child process the tests start (the gateway binary, the Python backend, a shell), through
/// `posix_spawn`.
///
/// Not Foundation's `Process`: on Linux its `run()` finds the descriptors to close by listing
/// `/proc/self/fd` and copies each directory entry as a whole `struct dirent`, reading up to
/// 256 bytes past the last entry of its buffer (AddressSanitizer: heap-buffer-overflow in
/// `findMaximumOpenFromProcSelfFD`). With thousands of sockets open in the test process, the
/// listing fills that buffer and the read can cross into an unmapped page: CI crashed with
/// SIGSEGV there while other suites held ~1,400 descriptors.
///
/// The child gets `/dev/null` or a file as standard input, output and error, no other
/// descriptor of the test process (`closefrom(3)`), and default signal handling with nothing
/// blocked (the test process's threads block some signals, which children would inherit).
package final class ChildProcess: Sendable {
    package enum Output {
        /// The test process's own.
        case inherit
        case null
        /// Appends to the file (created if missing).
        case file(String)
    }

    package let processIdentifier: pid_t
    /// The wait status once reaped.
    private let status = Mutex<Int32?>(nil)

    package init(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        standardOutput: Output = .null,
        standardError: Output = .null
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        for (descriptor, output) in [(Int32(1), standardOutput), (2, standardError)] {
            switch output {
            case .inherit: break
            case .null: posix_spawn_file_actions_addopen(&actions, descriptor, "/dev/null", O_WRONLY, 0)
            case .file(let path):
                posix_spawn_file_actions_addopen(&actions, descriptor, path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            }
        }
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let environment = environment ?? ProcessInfo.processInfo.environment
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EINVAL) }
        self.processIdentifier = pid
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), which Swift's Glibc
    /// module does not declare.
    private static let addCloseFrom:
        (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
            else { return nil }
            return unsafeBitCast(
                symbol,
                to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self
            )
        }()

    /// Reaps the child if it has exited; true while it runs.
    package var isRunning: Bool {
        self.status.withLock { status in
            guard status == nil else { return false }
            var raw: Int32 = 0
            let rc = waitpid(self.processIdentifier, &raw, WNOHANG)
            if rc == self.processIdentifier {
                status = raw
                return false
            }
            // -1: not our child any more (reaped elsewhere); nothing runs.
            if rc < 0 {
                status = -1
                return false
            }
            return true
        }
    }

    /// Sends `signal` if the child still runs.
    package func signal(_ signal: Int32) {
        if self.isRunning { _ = kill(self.processIdentifier, signal) }
    }

    /// SIGTERM.
    package func terminate() { self.signal(SIGTERM) }

    /// Blocks until the child exits (polling, so no lock is held while it runs).
    package func waitUntilExit() {
        while self.isRunning { usleep(5_000) }
    }

    /// A child still running when its last reference goes (a test that threw before it stopped
    /// it) is killed and reaped: no test leaves a process behind.
    deinit {
        if self.isRunning {
            _ = kill(self.processIdentifier, SIGKILL)
            self.waitUntilExit()
        }
    }

    /// The exit code, or the number of the signal that ended the child, like Foundation's
    /// `terminationStatus`; -1 before it exits.
    package var terminationStatus: Int32 {
        guard !self.isRunning, let raw = self.status.withLock({ $0 }), raw >= 0 else { return -1 }
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : signal
    }
}
