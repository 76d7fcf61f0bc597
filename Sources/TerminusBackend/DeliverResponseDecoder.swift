package import NIOCore
internal import SwiftProtobuf
package import TerminusAPI

/// Decodes the backend's `DeliverResponse`, one per batch on the per-message path, straight from
/// the bytes read.
///
/// The fast path reads the form every protobuf encoder writes for this message: field 1 (a
/// `DeliverResult`: status, reason, retryable) and field 2 (the batch id), in any order and
/// number, each with its declared wire type. Anything else (an unknown or mistyped field, a
/// varint longer than 9 bytes, a reason that is not ASCII, a length past the end) goes to
/// SwiftProtobuf, which decides: the answer is then exactly what SwiftProtobuf makes of those
/// bytes, and the fast path agrees with it on every input it takes (`DeliverResponseDecoderTests`
/// compares them on generated and mutated answers). SwiftProtobuf's generic decoder cost about 2 %
/// of a lone message's CPU (`perf`, 5,000 devices × 1 msg/s), with a copy of the bytes first.
package enum DeliverResponseDecoder {
    package static func decode(_ message: ByteBuffer) throws -> Terminus_V1_DeliverResponse {
        let fast = message.withUnsafeReadableBytes { bytes -> Terminus_V1_DeliverResponse? in
            var reader = Reader(bytes: bytes)
            return reader.response()
        }
        if let fast { return fast }
        return try Terminus_V1_DeliverResponse(serializedBytes: Array(message.readableBytesView))
    }

    /// The fast path over one buffer; nil hands the bytes to SwiftProtobuf.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        var index = 0

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        /// A varint of at most 9 bytes (63 bits), or nil.
        @inline(__always)
        mutating func varint(end: Int) -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while self.index < end, shift < 63 {
                let byte = self.bytes[self.index]
                self.index += 1
                value |= UInt64(byte & 0x7F) &<< shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
            return nil
        }

        /// The end of a length-delimited field's body, or nil when it runs past `end`.
        @inline(__always)
        mutating func body(end: Int) -> Int? {
            guard let length = self.varint(end: end), length <= UInt64(end - self.index) else { return nil }
            return self.index + Int(length)
        }

        mutating func response() -> Terminus_V1_DeliverResponse? {
            var response = Terminus_V1_DeliverResponse()
            let end = self.bytes.count
            // The results' array sized once: appended to one by one it is regrown at 1, 2, 4, …
            // results (2.4 allocations for an answer to three messages, `Benchmarks/profile
            // --tool mallocs`). Bound: one result per two bytes of the answer.
            response.results.reserveCapacity(self.resultCount())
            while self.index < end {
                switch self.bytes[self.index] {
                case 0x0A:  // results (1), length-delimited
                    self.index += 1
                    guard let resultEnd = self.body(end: end), let result = self.result(end: resultEnd) else {
                        return nil
                    }
                    response.results.append(result)
                case 0x10:  // batch_id (2), varint
                    self.index += 1
                    guard let id = self.varint(end: end) else { return nil }
                    response.batchID = id
                default:
                    return nil
                }
            }
            return response
        }

        /// How many results (field 1) the answer holds, counted by skipping from field to field
        /// without reading them; stops, with the count so far, at anything `response()` would
        /// hand to SwiftProtobuf.
        func resultCount() -> Int {
            var reader = self
            var count = 0
            let end = self.bytes.count
            while reader.index < end {
                switch reader.bytes[reader.index] {
                case 0x0A:
                    reader.index += 1
                    guard let resultEnd = reader.body(end: end) else { return count }
                    reader.index = resultEnd
                    count += 1
                case 0x10:
                    reader.index += 1
                    guard reader.varint(end: end) != nil else { return count }
                default:
                    return count
                }
            }
            return count
        }

        mutating func result(end: Int) -> Terminus_V1_DeliverResult? {
            var result = Terminus_V1_DeliverResult()
            while self.index < end {
                switch self.bytes[self.index] {
                case 0x08:  // status (1), varint; an open enum, as SwiftProtobuf reads it
                    self.index += 1
                    guard let raw = self.varint(end: end) else { return nil }
                    if let status = Terminus_V1_DeliverResult.Status(rawValue: Int(Int32(truncatingIfNeeded: raw))) {
                        result.status = status
                    }
                case 0x12:  // reason (2), length-delimited: ASCII here, anything else to SwiftProtobuf
                    self.index += 1
                    guard let reasonEnd = self.body(end: end) else { return nil }
                    let text = UnsafeRawBufferPointer(rebasing: self.bytes[self.index..<reasonEnd])
                    var union: UInt8 = 0
                    for byte in text { union |= byte }
                    guard union < 0x80 else { return nil }
                    result.reason = String(decoding: text, as: UTF8.self)
                    self.index = reasonEnd
                case 0x18:  // retryable (3), varint
                    self.index += 1
                    guard let value = self.varint(end: end) else { return nil }
                    result.retryable = value != 0
                default:
                    return nil
                }
            }
            return result
        }
    }
}
