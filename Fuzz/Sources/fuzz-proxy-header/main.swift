// Parses the input as the start of a connection with ProxyHeaderParser, in every
// ProxyProtocolMode and with the smallest, default and largest configurable v2 header size.
//
// Checks: a header never claims more bytes than were given, nor more than 107 (v1) or
// maxHeaderSize (v2); v1 is never accepted in mode v2 nor v2 in mode v1; and parsing is
// incremental as ProxyProtocolHandler uses it (it calls parse with everything received so far):
// a prefix that yields a header yields the same header as the whole input, and a prefix that is
// refused means the whole input is refused too.
import NIOCore
import TerminusEdge

private let headerSizes = [232, 1024, 65_551]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    var whole = ByteBufferAllocator().buffer(capacity: input.count)
    whole.writeBytes(input)
    // A few prefixes, as TCP might deliver them: inside the signatures, at the end of the v2 fixed
    // header and of the v4 and v6 address blocks, and two pseudo-random ones.
    var cuts = Set([5, 13, 16, 28, 52].filter { $0 < input.count })
    var x = UInt32(truncatingIfNeeded: input.count) &* 2_654_435_761
    for _ in 0..<2 where input.count > 1 {
        x = x &* 1_103_515_245 &+ 12_345
        cuts.insert(Int(x >> 8) % input.count)
    }

    for mode in ProxyProtocolMode.allCases {
        for size in headerSizes {
            let parser = ProxyHeaderParser(mode: mode, maxHeaderSize: size)
            let full = outcome(parser, whole)
            if case .header(let header) = full {
                check(header, mode: mode, size: size, input: input)
            }
            for cut in cuts {
                let prefix = whole.getSlice(at: whole.readerIndex, length: cut)!
                switch outcome(parser, prefix) {
                case .needMore:
                    break
                case .header(let header):
                    precondition(full == .header(header), "prefix of \(cut) gave \(header), whole input \(full)")
                case .invalid(let reason):
                    guard case .invalid = full else {
                        preconditionFailure("prefix of \(cut) refused (\(reason)), whole input \(full)")
                    }
                }
            }
        }
    }
    return 0
}

private enum Outcome: Equatable {
    case needMore
    case header(ProxyHeaderParser.Header)
    case invalid(String)
}

private func outcome(_ parser: ProxyHeaderParser, _ buffer: ByteBuffer) -> Outcome {
    do {
        guard let header = try parser.parse(buffer) else { return .needMore }
        return .header(header)
    } catch {
        return .invalid(error.reason)
    }
}

private func check(
    _ header: ProxyHeaderParser.Header,
    mode: ProxyProtocolMode,
    size: Int,
    input: UnsafeRawBufferPointer
) {
    precondition(header.length > 0 && header.length <= input.count, "header length \(header.length) of \(input.count)")
    let isV1 = input[0] == UInt8(ascii: "P")
    if isV1 {
        precondition(mode != .v2, "v1 header accepted in mode v2")
        precondition(header.length <= 107, "v1 header of \(header.length) bytes")
        precondition(input[header.length - 2] == 0x0D && input[header.length - 1] == 0x0A, "v1 line without CRLF")
    } else {
        precondition(input[0] == 0x0D && mode != .v1, "v2 header accepted in mode \(mode)")
        precondition(header.length >= 16 && header.length <= size, "v2 header of \(header.length) bytes (max \(size))")
    }
    if let source = header.source {
        precondition(!source.isEmpty && source.utf8.count <= 107, "source \(source)")
    }
}
