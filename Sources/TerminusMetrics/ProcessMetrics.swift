internal import Foundation

#if canImport(Glibc)
internal import Glibc
#endif

/// The process's own figures, read from `/proc` and `getrlimit` at each scrape.
package enum ProcessMetrics {
    /// Adds CPU, resident memory, descriptors, the descriptor limit, start time and build info.
    package static func collect(into snapshot: inout MetricsSnapshot) {
        snapshot.gauge(SeriesKey("terminus_build_info", ["version": BuildInfo.version, "commit": BuildInfo.commit]), 1)
        var usage = rusage()
        if getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage) == 0 {
            let seconds =
                Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
                + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
            snapshot.count(SeriesKey("terminus_process_cpu_seconds_total"), seconds)
        }
        // statm: size resident shared ... in pages.
        if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
            let resident = statm.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        {
            snapshot.gauge(
                SeriesKey("terminus_process_resident_memory_bytes"),
                resident * Int(sysconf(Int32(_SC_PAGESIZE)))
            )
        }
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            // Less the descriptor that listed the directory.
            snapshot.gauge(SeriesKey("terminus_process_open_fds"), max(0, entries.count - 1))
        }
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            snapshot.gauge(SeriesKey("terminus_process_max_fds"), Double(limit.rlim_cur))
        }
        snapshot.gauge(SeriesKey("terminus_process_start_time_seconds"), Self.startTime)
    }

    /// When this module was first used: the gateway touches it at start.
    package static let startTime: Double = Date().timeIntervalSince1970
}

/// What `terminus --version` and `terminus_build_info` report: `BuildStamp`, which the image
/// build writes (`deploy/stamp-build`).
package enum BuildInfo {
    package static let version = BuildStamp.version
    /// The commit the binary was built from (`unknown` for a source checkout).
    package static let commit = BuildStamp.commit
    /// `terminus --version`: the version, then the commit.
    package static let description = "\(version) (commit \(commit))"
}
