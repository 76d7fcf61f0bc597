import Synchronization
import TerminusServer
import Testing

/// Every gateway a test starts belongs to that test. When the test ends, the scope stops each
/// one and awaits it (a test needs no `defer` for it, and cannot leave it running for the next
/// test); then the test fails if a gateway is still running.
/// Apply it to every suite that starts gateways: `TestGateway.start` outside it is an issue.
struct GatewayScope: SuiteTrait, TestTrait, TestScoping {
    /// The gateways started in the current test.
    final class Started: Sendable {
        private let gateways = Mutex<[TestGateway]>([])

        func add(_ gateway: TestGateway) {
            self.gateways.withLock { $0.append(gateway) }
        }

        var all: [TestGateway] { self.gateways.withLock { $0 } }
    }

    @TaskLocal static var current: Started?

    var isRecursive: Bool { true }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> GatewayScope? {
        test.isSuite ? nil : self
    }

    func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        let started = Started()
        do {
            try await Self.$current.withValue(started) { try await function() }
        } catch {
            await Self.stopAll(started)
            throw error
        }
        await Self.stopAll(started)
        for gateway in started.all {
            // `isRunning` turns false only when `run()` returned: listeners closed, clients
            // retired, event loops shut down.
            #expect(!gateway.gateway.isRunning, "a gateway this test started still runs after it stopped")
        }
    }

    private static func stopAll(_ started: Started) async {
        await withDiscardingTaskGroup { group in
            for gateway in started.all { group.addTask { await gateway.stop() } }
        }
    }
}

extension Trait where Self == GatewayScope {
    /// See `GatewayScope`.
    static var gatewayScope: GatewayScope { GatewayScope() }
}
