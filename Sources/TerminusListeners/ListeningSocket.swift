internal import NIOCore

#if canImport(Glibc)
internal import Glibc
#endif

/// A TCP listening socket made here rather than by NIO, so that several server channels (one
/// per event loop, each given a duplicate of the descriptor) can accept from one queue. Errors
/// are `IOError`s with the errno of the failed call, as NIO's own bind reports them.
package struct ListeningSocket {
    private let descriptor: CInt

    package init(host: String, port: Int, reusePort: Bool, backlog: Int32) throws {
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let fd = Glibc.socket(address.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        do {
            try Self.setOption(fd, SO_REUSEADDR, 1)
            if reusePort { try Self.setOption(fd, SO_REUSEPORT, 1) }
            let bound = address.withSockAddr { pointer, length in Glibc.bind(fd, pointer, socklen_t(length)) }
            guard bound == 0 else { throw IOError(errnoCode: errno, reason: "bind") }
            guard Glibc.listen(fd, backlog) == 0 else { throw IOError(errnoCode: errno, reason: "listen") }
        } catch {
            Glibc.close(fd)
            throw error
        }
        self.descriptor = fd
    }

    /// A new descriptor for the same socket (close-on-exec); its owner closes it.
    package func duplicate() throws -> CInt {
        let fd = fcntl(self.descriptor, F_DUPFD_CLOEXEC, 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "dup") }
        return fd
    }

    /// Sets the queue length again (listening again on a listening socket only changes it).
    package func listen(backlog: Int32) throws {
        guard Glibc.listen(self.descriptor, backlog) == 0 else { throw IOError(errnoCode: errno, reason: "listen") }
    }

    /// Closes this descriptor; duplicates keep the socket open.
    package func close() {
        Glibc.close(self.descriptor)
    }

    private static func setOption(_ fd: CInt, _ option: Int32, _ value: Int32) throws {
        var value = value
        guard setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw IOError(errnoCode: errno, reason: "setsockopt")
        }
    }
}
