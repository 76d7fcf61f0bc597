import Foundation

/// CPU time and resident memory of a process, read from /proc.
struct ProcessSample: Sendable {
    /// User + system CPU time, seconds.
    var cpuSeconds: Double
    /// System (kernel) CPU time alone, seconds: syscalls and the loopback network stack.
    var systemSeconds: Double
    /// Resident set size, bytes.
    var residentBytes: Int
    /// Voluntary context switches of all its threads so far: each is a thread going to sleep
    /// (in `epoll_wait`, mostly) and woken again, the cost a message pays when it arrives alone.
    var voluntarySwitches: Int
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
            voluntarySwitches: Self.voluntarySwitches(pid: pid),
            at: .now
        )
    }

    /// The sum over the process's threads (`/proc/PID/status` counts the main thread alone).
    static func voluntarySwitches(pid: Int32) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var total = 0
        for task in tasks {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8)
            else { continue }
            for line in status.split(separator: "\n") where line.hasPrefix("voluntary_ctxt_switches:") {
                total += Int(line.split(separator: "\t").last?.trimmingCharacters(in: .whitespaces) ?? "") ?? 0
            }
        }
        return total
    }
}

/// Raises this process's open-file soft limit to the hard limit (one descriptor per device).
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}
