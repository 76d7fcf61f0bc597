#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Raises the process's open-file soft limit to its hard limit; each connection needs one.
package enum FileDescriptorLimit {
    /// Descriptors kept back for listeners, files, logs, health probes and backend connections
    /// (`limits.reserved_descriptors`).
    package static let reserved = 256

    /// - Returns: (previous soft limit, new soft limit), or nil when the limit cannot be read.
    @discardableResult
    package static func raiseToHardLimit() -> (before: UInt64, after: UInt64)? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        let before = UInt64(limit.rlim_cur)
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 { return (before, before) }
        }
        var after = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &after) == 0 else { return (before, before) }
        return (before, UInt64(after.rlim_cur))
    }

    /// How many device connections a soft limit of `limit` leaves room for.
    package static func connectionCapacity(softLimit limit: UInt64, reserved: Int = Self.reserved) -> Int {
        max(0, Int(min(limit, UInt64(Int.max))) - reserved)
    }
}
