import TerminusFleet
import Testing

@Suite("Wakeup: the registry loop's sleep")
struct WakeupTests {
    @Test(
        "a signal wakes the waiter at once; one sent before the wait is kept; the timeout and cancellation end a wait"
    )
    func wakes() async throws {
        let wakeup = Wakeup()
        let clock = ContinuousClock()
        // Signalled while waiting.
        let started = clock.now
        async let waited: Void = wakeup.wait(timeout: .seconds(30))
        try await Task.sleep(for: .milliseconds(50))
        wakeup.signal()
        await waited
        #expect(clock.now - started < .seconds(10))
        // Signalled before: returns at once; then nothing is left pending.
        wakeup.signal()
        let before = clock.now
        await wakeup.wait(timeout: .seconds(30))
        #expect(clock.now - before < .seconds(10))
        // The timeout.
        let timed = clock.now
        await wakeup.wait(timeout: .milliseconds(100))
        #expect(clock.now - timed >= .milliseconds(100), "nothing pending after the last signal")
        // Zero: returns.
        await wakeup.wait(timeout: .zero)
        // Cancellation.
        let task = Task { await wakeup.wait(timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
        let cancelled = clock.now
        task.cancel()
        await task.value
        #expect(clock.now - cancelled < .seconds(10))
    }
}
