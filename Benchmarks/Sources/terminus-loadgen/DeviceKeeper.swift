import NIOCore
import Synchronization
import TerminusClient

/// `--reconnect`: keeps each device connected as a real one would. Acknowledges its pushes;
/// when its connection drops (its gateway process was killed), connects it again after a
/// random delay of up to `jitter` seconds, retrying until it succeeds or the run ends.
final class DeviceKeeper: Sendable {
    private struct State {
        var current: [Int: TerminusConnection] = [:]
        var lost = 0
        var reconnected = 0
        var firstLoss: ContinuousClock.Instant?
        var lastReconnect: ContinuousClock.Instant?
    }

    private let jitter: Double
    private let group: any EventLoopGroup
    private let configuration: @Sendable (Int) -> TerminusClientConfiguration
    private let state = Mutex(State())
    private let stopped = StopFlag()

    init(
        jitter: Double,
        group: any EventLoopGroup,
        configuration: @escaping @Sendable (Int) -> TerminusClientConfiguration
    ) {
        self.jitter = jitter
        self.group = group
        self.configuration = configuration
    }

    /// Runs for device `index` (its first connection made) until `finish()`.
    func keep(_ index: Int, _ first: TerminusConnection) async {
        var connection = first
        while true {
            self.state.withLock { $0.current[index] = connection }
            let current = connection
            let acks = Task {
                for await push in current.pushes where push.qos == .atLeastOnce { current.acknowledge(push) }
            }
            _ = await connection.closeReason()
            acks.cancel()
            if self.stopped.isSet { return }
            self.state.withLock { state in
                state.lost += 1
                if state.firstLoss == nil { state.firstLoss = .now }
            }
            while true {
                try? await Task.sleep(for: .milliseconds(Int.random(in: 0...max(0, Int(self.jitter * 1000)))))
                if self.stopped.isSet { return }
                if let next = try? await TerminusConnection.connect(self.configuration(index), group: self.group) {
                    connection = next
                    self.state.withLock { state in
                        state.reconnected += 1
                        state.lastReconnect = .now
                    }
                    break
                }
            }
        }
    }

    /// Stops reconnecting; what was lost and reconnected.
    func finish() -> FleetReport.Reconnects {
        self.stopped.set()
        return self.state.withLock { state in
            var seconds = 0.0
            if let first = state.firstLoss, let last = state.lastReconnect {
                seconds = FleetRun.seconds(last - first)
            }
            return FleetReport.Reconnects(lost: state.lost, reconnected: state.reconnected, seconds: seconds)
        }
    }

    /// The devices' connections now.
    var current: [any FleetConnection] { self.state.withLock { Array($0.current.values) } }
}
