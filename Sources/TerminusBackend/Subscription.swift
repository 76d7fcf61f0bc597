package import TerminusProtocol
package import TerminusRouting

/// One backend service and what it subscribes to (`services[]` in the configuration).
package struct Subscription: Sendable {
    package enum Security: Sendable {
        case plaintext
        /// TLS to the service; `caFile` nil means the system trust store. With a client
        /// certificate and key, mTLS.
        case tls(caFile: String?, certificateFile: String?, keyFile: String?, serverName: String?)
    }

    /// Unique name, used in logs and in `DeliverRequest.subscription`.
    package var name: String
    /// DNS name (or IP) and port of the service, usually a Kubernetes Service or a load balancer.
    package var host: String
    package var port: Int
    package var security: Security = .plaintext
    package var filters: [TopicFilter]
    /// Most messages in one batch on a Deliver stream.
    package var batchSize: Int = 256
    /// How long messages may wait to fill a batch (milliseconds; 0: send each edge batch at once).
    package var lingerMilliseconds: UInt64 = 0
    /// Most messages in flight to this service at once; further batches wait, and devices
    /// feeding them stop being read once their own inflight windows fill.
    package var window: Int = 8192
    /// How long to wait for a batch's answer, in milliseconds.
    package var deadlineMilliseconds: Int64 = 5000
    /// Attempts per batch (`retry.attempts`, 1 = no retry) and the backoff between them
    /// (`retry.initial_backoff`, `retry.max_backoff`; full jitter).
    package var retry: RetryPolicy = .backendBatch
    /// How the service's Deliver streams are re-opened and its connections re-made.
    package var reconnect: RetryPolicy = .backendReconnect
    /// The retry-after hint (seconds) devices get when every attempt failed.
    package var retryAfterSeconds: UInt16 = 5
    /// HTTP/2 connections held to the service; a Service behind one virtual IP is balanced
    /// by holding several and replacing the oldest every `rebalanceSeconds`.
    package var connections: Int = 2
    /// Batches written and unanswered at once on one connection's Deliver stream; more wait in
    /// the gateway (their deadline not started) until the backend answers one.
    package var batchesInFlight: Int = 16
    /// When a batch's deadline passes and nothing at all arrived on its connection since it was
    /// written, a PING is sent; unanswered after this many milliseconds, the connection is
    /// closed as dead and re-made (`ping_timeout`; 0: never, and a dead connection is noticed
    /// only when TCP gives up).
    package var pingTimeoutMilliseconds: Int64 = 5000
    package var rebalanceSeconds: Int = 300

    /// The part of this service that event loop `index` of `count` delivers: the window and the
    /// connections are split between the loops as evenly as they go, at least one of each per
    /// loop (so a service has at least as many connections as the gateway has event loops).
    package func share(_ index: Int, of count: Int) -> Subscription {
        func part(_ total: Int) -> Int {
            max(1, total / count + (index < total % count ? 1 : 0))
        }
        var share = self
        share.window = part(self.window)
        share.connections = part(self.connections)
        return share
    }

    package init(name: String, host: String, port: Int, filters: [TopicFilter]) {
        self.name = name
        self.host = host
        self.port = port
        self.filters = filters
    }
}
