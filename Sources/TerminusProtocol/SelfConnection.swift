package import NIOCore

extension Channel {
    /// Whether this connection reached itself: a connect to a local port that nothing listens
    /// on can get that very port as its own source port, and TCP's simultaneous open then
    /// connects the socket to itself. It only happens to ports in the kernel's ephemeral range
    /// (`ip_local_port_range`), rarely, and only while retrying a local peer that is down: the
    /// gateway would then talk to itself, and hold the port its restarting backend or Redis
    /// needs to bind. Reconnect loops close such a connection and count it as a failed
    /// connect, as Go's `net.Dial` does.
    package var isConnectedToItself: Bool {
        guard let local = self.localAddress, let remote = self.remoteAddress else { return false }
        return local == remote
    }
}
