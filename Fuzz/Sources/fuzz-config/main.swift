// Loads the input as the YAML configuration file with ConfigurationLoader.load(yaml:).
//
// Checks: the loader either throws ConfigurationError or returns a configuration whose values
// are inside the documented ranges (docs/configuration.md).
//
// Inputs naming /dev, /proc or /sys are skipped: api.tokens_file is read while loading, and
// /dev/zero or /dev/stdin would hang the run rather than find a bug. Relative paths resolve
// against a directory that does not exist.
import TerminusEdge
import TerminusRouting
import TerminusServer

private let skipped = ["/dev", "/proc", "/sys"].map { Array($0.utf8) }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    for needle in skipped where contains(input, needle) { return -1 }
    let yaml = String(decoding: input, as: UTF8.self)
    let config: GatewayConfiguration
    do {
        config = try ConfigurationLoader.load(yaml: yaml, baseDirectory: "/nonexistent-terminus-fuzz")
    } catch let error as ConfigurationError {
        _ = error.description
        return 0
    } catch {
        preconditionFailure("ConfigurationLoader threw \(type(of: error)), not ConfigurationError: \(error)")
    }
    let edge = config.edge
    precondition((0...1024).contains(config.eventLoopThreads))
    precondition((0...65_535).contains(config.deviceListen.port))
    precondition((232...65_551).contains(config.proxyHeaderMaxSize) || config.proxyHeaderMaxSize == 1024)
    precondition((64...16_777_216).contains(edge.maxFrameSize))
    precondition((1...65_535).contains(edge.maxInflight))
    precondition((1...65_535).contains(edge.maxTopicLength))
    precondition((1...255).contains(edge.maxDeviceIDLength))
    precondition((0...65_535).contains(edge.maxTopicAliases))
    precondition((1...65_536).contains(edge.maxBatchSize))
    precondition((64...(64 << 20)).contains(edge.inflateLimits.maxInflatedSize))
    precondition((1...100_000).contains(edge.inflateLimits.maxRatio))
    precondition(edge.inflateLimits.ratioFloor >= 0)
    precondition(edge.keepaliveMin <= edge.keepaliveDefault && edge.keepaliveDefault <= edge.keepaliveMax)
    for timeout in [edge.handshakeTimeout, edge.helloTimeout, edge.closeGrace, config.drainGrace] {
        precondition(timeout.nanoseconds > 0, "non-positive timeout \(timeout)")
    }
    precondition(config.drainReconnectWindow.nanoseconds > 0)
    precondition(Set(config.dictionaries.map(\.id)).count == config.dictionaries.count)
    precondition(config.dictionaries.allSatisfy { $0.id != 0 })
    precondition(config.services.count <= ServiceSet.capacity)
    precondition(Set(config.services.map(\.name)).count == config.services.count)
    if config.transport == .tls { precondition(config.tls != nil) }
    if let tls = config.tls, tls.clientAuth != .none { precondition(tls.clientCA != nil) }
    precondition(config.secretsFile != nil || config.tls?.clientAuth == .required)
    return 0
}

private func contains(_ haystack: UnsafeRawBufferPointer, _ needle: [UInt8]) -> Bool {
    guard haystack.count >= needle.count else { return false }
    for i in 0...(haystack.count - needle.count)
    where haystack[i] == needle[0] && haystack[(i + 1)..<(i + needle.count)].elementsEqual(needle[1...]) {
        return true
    }
    return false
}
