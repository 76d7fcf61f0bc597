internal import Synchronization
internal import TerminusCompression

/// A lock-protected table of zlib contexts by event loop.
final class NIOLockedDeflaters: @unchecked Sendable {
    private let table = Mutex<[ObjectIdentifier: Box]>([:])

    final class Box: @unchecked Sendable {
        let deflater: Deflater
        let inflater: Inflater
        init(_ pair: (Deflater, Inflater)) {
            self.deflater = pair.0
            self.inflater = pair.1
        }
    }

    func get(_ key: ObjectIdentifier, make: () throws -> (Deflater, Inflater)) throws -> (Deflater, Inflater) {
        try self.table.withLock { table in
            if let box = table[key] { return (box.deflater, box.inflater) }
            let box = Box(try make())
            table[key] = box
            return (box.deflater, box.inflater)
        }
    }
}
