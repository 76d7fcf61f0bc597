import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Plain BSD sockets on 127.0.0.1, for tests that need what NIO hides: a small receive buffer,
/// `SO_LINGER` resets, or more connections than a gateway has descriptors.
package enum LoopbackSocket {
    /// A TCP connection to 127.0.0.1:`port`, or nil when refused (or out of descriptors here).
    /// `receiveBuffer` is set before connecting, so that it bounds the TCP window.
    package static func connect(port: Int, receiveBuffer: Int32? = nil) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = Self.address(port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// A port nothing listens on right now, for a child process to bind later.
    ///
    /// Taken below the kernel's ephemeral range (`ip_local_port_range`), so that no outgoing
    /// connection of a test is given it as its source port before the child binds it, and
    /// never handed out twice by this process. A port the kernel picked for `bind(0)` is in
    /// the ephemeral range: between our `close` and the child's `bind`, any `connect` may get it.
    package static func freePort() -> Int {
        let ephemeralStart = Self.ephemeralRangeStart()
        let low = max(1024, ephemeralStart - 12_000)
        return Self.handedOut.withLock { handed in
            for _ in 0..<10_000 {
                let port = Int.random(in: low..<ephemeralStart)
                guard !handed.contains(port), Self.bindable(port) else { continue }
                handed.insert(port)
                return port
            }
            fatalError("no free port in \(low)..<\(ephemeralStart)")
        }
    }

    private static let handedOut = Mutex<Set<Int>>([])

    /// The first port of `net.ipv4.ip_local_port_range` (32768 when unreadable).
    private static func ephemeralRangeStart() -> Int {
        let fd = open("/proc/sys/net/ipv4/ip_local_port_range", O_RDONLY)
        guard fd >= 0 else { return 32_768 }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0,
            let first = String(decoding: bytes[..<count], as: UTF8.self).split(whereSeparator: \.isWhitespace).first,
            let start = Int(first), start > 2_048
        else { return 32_768 }
        return start
    }

    /// Whether a listening socket could bind 127.0.0.1:`port` now.
    private static func bindable(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.address(port: port)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    private static func address(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }
}
