/// Polls `condition` every 20 ms until it holds or `seconds` have passed; whether it held.
/// A bounded wait for what another process or a background task does.
package func eventually(_ seconds: Double = 5, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}
