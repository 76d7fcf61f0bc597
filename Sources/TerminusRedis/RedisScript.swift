internal import Crypto

/// A Lua script run with `EVALSHA` (the server caches it by its SHA-1), falling back to `EVAL`
/// once when the server answers `NOSCRIPT` (a restarted or flushed server): what the registry
/// needs to be atomic runs as one script, and a script's text crosses the wire once per server.
package struct RedisScript: Sendable, Hashable {
    package let source: String
    /// The SHA-1 of `source`, in lowercase hex (what `SCRIPT LOAD` answers).
    package let sha1: String

    package init(_ source: String) {
        self.source = source
        let digits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = []
        for byte in Insecure.SHA1.hash(data: Array(source.utf8)) {
            hex += [digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]]
        }
        self.sha1 = String(decoding: hex, as: UTF8.self)
    }

    package func evalSHA(keys: [RedisArgument], arguments: [RedisArgument]) -> RedisCommand {
        RedisCommand("EVALSHA", [RedisArgument(self.sha1), RedisArgument(keys.count)] + keys + arguments)
    }

    package func eval(keys: [RedisArgument], arguments: [RedisArgument]) -> RedisCommand {
        RedisCommand("EVAL", [RedisArgument(self.source), RedisArgument(keys.count)] + keys + arguments)
    }
}
