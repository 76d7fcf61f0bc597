import Foundation

/// CPU time and resident memory of a process, read from /proc.
struct ProcessSample: Sendable {
    /// User + system CPU time, seconds.
    var cpuSeconds: Double
    /// System (kernel) CPU time alone, seconds: syscalls and the loopback network stack.
    var systemSeconds: Double
    /// Resident set size, bytes.
    var residentBytes: Int
    var at: ContinuousClock.Instant

    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func read(pid: Int32) -> ProcessSample? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after the command name: state is field 3; utime 14 and stime 15 (1-based).
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        var rss = 0
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            rss = (Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
        }
        return ProcessSample(
            cpuSeconds: (user + system) / Self.ticksPerSecond,
            systemSeconds: system / Self.ticksPerSecond,
            residentBytes: rss,
            at: .now
        )
    }
}

/// Raises this process's open-file soft limit to the hard limit (one descriptor per device).
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}
