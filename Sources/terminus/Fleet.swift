import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import TerminusClient
import TerminusProtocol

extension Device {
    /// Holds many idle devices: a smoke test for a deployment and the tool that measures the
    /// gateway's memory per idle device (`scripts/measure-idle-memory.sh`).
    struct Fleet: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Connect many devices (ids PREFIX0 … PREFIXn-1), keep them idle, then disconnect.",
            helpNames: [.long]
        )

        @OptionGroup var connection: ConnectionOptions

        @Option(name: .long, help: "How many devices.")
        var count: Int = 1000

        @Option(name: .long, help: "Device id prefix.")
        var prefix: String = "fleet-"

        @Option(name: .long, help: "Connections opened at the same time.")
        var concurrency: Int = 64

        @Option(
            name: .long,
            help: "Comma-separated local addresses to connect from, round robin (e.g. 127.0.0.2,127.0.0.3)."
        )
        var sources: String?

        @Option(name: .long, help: "Seconds to hold the devices once all are connected.")
        var hold: Int = 30

        @Option(
            name: .long,
            help: "Publish one QoS 1 message of this many bytes from each device after connecting (0: stay silent)."
        )
        var publishBytes: Int = 0

        @Option(name: .long, help: "Event loop threads for the clients.")
        var threads: Int = 1

        func run() async throws {
            let base = try self.connection.makeConfiguration()
            let sources = self.sources?.split(separator: ",").map(String.init) ?? []
            let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, self.threads))
            let started = Date()
            let failures = Counter()
            var connections: [TerminusConnection] = []
            connections.reserveCapacity(self.count)
            let payload = ByteBuffer(repeating: UInt8(ascii: "x"), count: self.publishBytes)
            let publish = self.publishBytes > 0
            var next = 0
            while next < self.count {
                let upper = min(next + max(1, self.concurrency), self.count)
                let batch = await withTaskGroup(of: TerminusConnection?.self) { tasks in
                    for index in next..<upper {
                        var configuration = base
                        configuration.deviceID = "\(self.prefix)\(index)"
                        if !sources.isEmpty { configuration.localAddress = sources[index % sources.count] }
                        let deviceConfiguration = configuration
                        tasks.addTask {
                            do {
                                let connection = try await TerminusConnection.connect(deviceConfiguration, group: group)
                                if publish { _ = try await connection.publish(topic: "fleet/hello", payload: payload) }
                                return connection
                            } catch {
                                _ = failures.increment()
                                return nil
                            }
                        }
                    }
                    return await tasks.reduce(into: [TerminusConnection]()) { if let c = $1 { $0.append(c) } }
                }
                connections += batch
                next = upper
                if next % 1000 == 0 || next == self.count {
                    standardError("connected \(connections.count)/\(self.count), failed \(failures.current)")
                }
            }
            let elapsed = Date().timeIntervalSince(started)
            print(
                "fleet connected=\(connections.count) failed=\(failures.current) seconds=\(String(format: "%.1f", elapsed))"
                    + " rate=\(String(format: "%.0f", Double(connections.count) / max(elapsed, 0.001)))/s"
            )
            try? await Task.sleep(for: .seconds(self.hold))
            let alive = connections.filter(\.isActive).count
            print("fleet alive_after_hold=\(alive)")
            for connection in connections { await connection.close() }
            try await group.shutdownGracefully()
            if alive < self.count { throw ExitCode(1) }
        }
    }
}
