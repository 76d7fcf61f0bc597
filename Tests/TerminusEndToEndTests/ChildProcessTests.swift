import Foundation
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The tests' `ChildProcess` (instead of Foundation's `Process`, see its documentation).
@Suite("Child processes of the tests")
struct ChildProcessTests {
    static func run(_ script: String) throws -> (status: Int32, output: String) {
        let output = NSTemporaryDirectory() + "terminus-child-\(UUID().uuidString).out"
        defer { try? FileManager.default.removeItem(atPath: output) }
        let child = try ChildProcess("/bin/sh", ["-c", script], standardOutput: .file(output))
        child.waitUntilExit()
        return (child.terminationStatus, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    @Test("a child inherits no descriptor beyond 0, 1 and 2, and no blocked signal; its exit status comes back")
    func cleanChild() throws {
        // 200 descriptors open here, without close-on-exec.
        let open = (0..<200).map { _ in Glibc.open("/dev/null", O_RDONLY) }
        defer { for descriptor in open { close(descriptor) } }
        #expect(open.allSatisfy { $0 >= 0 })
        let listing = try Self.run("ls /proc/self/fd")
        #expect(listing.status == 0)
        // 0, 1, 2 and the directory `ls` reads.
        let descriptors = listing.output.split(separator: "\n").compactMap { Int($0) }
        #expect(descriptors.filter { $0 > 2 }.count <= 1, "inherited: \(descriptors)")
        let mask = try Self.run("grep -E '^Sig(Blk|Ign)' /proc/self/status")
        #expect(mask.output.contains("SigBlk:\t0000000000000000"), "\(mask.output)")
        #expect(try Self.run("exit 3").status == 3)
    }

    @Test(
        "a child still running when its last reference goes is killed and reaped (a test that threw leaves none behind)"
    )
    func killedWhenDropped() throws {
        var child: ChildProcess? = try ChildProcess("/bin/sleep", ["30"])
        let pid = try #require(child?.processIdentifier)
        #expect(child?.isRunning == true)
        child = nil
        // Reaped: the process id no longer exists (not even as a zombie).
        #expect(kill(pid, 0) == -1 && errno == ESRCH)
    }

    @Test("terminate() ends a running child with SIGTERM")
    func terminate() async throws {
        let child = try ChildProcess("/bin/sleep", ["30"])
        #expect(child.isRunning)
        child.terminate()
        child.waitUntilExit()
        #expect(!child.isRunning)
        #expect(child.terminationStatus == SIGTERM)
    }
}
