package import NIOCore

/// Which PROXY protocol header a listener expects (`device.proxy_protocol`).
package enum ProxyProtocolMode: String, Sendable, CaseIterable {
    case off
    case v1
    case v2
    /// Either version, told apart by the first byte.
    case any
}

/// Parses a PROXY protocol v1 or v2 header (haproxy.org/download/2.9/doc/proxy-protocol.txt).
///
/// Pure: no I/O. `parse` is called with everything received so far and either asks for more
/// bytes, returns the header, or throws for a missing or malformed one.
package struct ProxyHeaderParser: Sendable {
    package struct Header: Hashable, Sendable {
        /// The original client address, or nil for `LOCAL`/`UNKNOWN` (use the socket peer).
        package var source: String?
        /// Bytes the header occupies; the stream after them is the client's own.
        package var length: Int
    }

    package struct Invalid: Error, Hashable, Sendable {
        package var reason: String
    }

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Prefix = Array("PROXY ".utf8)
    static let v1MaxLength = 107

    package var mode: ProxyProtocolMode
    /// The largest v2 header (with TLVs) accepted.
    package var maxHeaderSize: Int

    package init(mode: ProxyProtocolMode, maxHeaderSize: Int = 1024) {
        self.mode = mode
        self.maxHeaderSize = maxHeaderSize
    }

    /// - Returns: nil when more bytes are needed.
    package func parse(_ buffer: ByteBuffer) throws(Invalid) -> Header? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        let wantsV1 = first == UInt8(ascii: "P") && self.mode != .v2
        let wantsV2 = first == 0x0D && self.mode != .v1
        if wantsV1 { return try self.parseV1(buffer) }
        if wantsV2 { return try self.parseV2(buffer) }
        throw Invalid(reason: "no PROXY protocol \(self.mode.rawValue) header")
    }

    private func parseV1(_ buffer: ByteBuffer) throws(Invalid) -> Header? {
        let available = buffer.readableBytesView
        let prefixCount = min(available.count, Self.v1Prefix.count)
        guard available.prefix(prefixCount).elementsEqual(Self.v1Prefix.prefix(prefixCount)) else {
            throw Invalid(reason: "bad PROXY v1 signature")
        }
        guard let lf = available.prefix(Self.v1MaxLength).firstIndex(of: UInt8(ascii: "\n")) else {
            if available.count >= Self.v1MaxLength { throw Invalid(reason: "PROXY v1 line too long") }
            return nil
        }
        let lineEnd = lf - available.startIndex
        guard lineEnd >= 1, available[lf - 1] == UInt8(ascii: "\r") else {
            throw Invalid(reason: "PROXY v1 line must end with CRLF")
        }
        let line = String(decoding: available[available.startIndex..<(lf - 1)], as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count >= 2 else { throw Invalid(reason: "PROXY v1 line has no protocol") }
        switch fields[1] {
        case "UNKNOWN":
            return Header(source: nil, length: lineEnd + 1)
        case "TCP4", "TCP6":
            guard fields.count == 6, let port = UInt16(fields[4]), UInt16(fields[5]) != nil else {
                throw Invalid(reason: "malformed PROXY v1 line")
            }
            let ip = String(fields[2])
            let isV6 = fields[1] == "TCP6"
            guard (try? SocketAddress(ipAddress: ip, port: Int(port))) != nil,
                (try? SocketAddress(ipAddress: String(fields[3]), port: 0)) != nil,
                ip.contains(":") == isV6
            else {
                throw Invalid(reason: "bad address in PROXY v1 line")
            }
            // An unspecified source names no client: like UNKNOWN.
            if ip == "0.0.0.0" || ip == "::" { return Header(source: nil, length: lineEnd + 1) }
            return Header(source: isV6 ? "[\(ip)]:\(port)" : "\(ip):\(port)", length: lineEnd + 1)
        default:
            throw Invalid(reason: "unknown PROXY v1 protocol \(fields[1])")
        }
    }

    private func parseV2(_ buffer: ByteBuffer) throws(Invalid) -> Header? {
        let bytes = buffer.readableBytesView
        let signatureCount = min(bytes.count, Self.v2Signature.count)
        guard bytes.prefix(signatureCount).elementsEqual(Self.v2Signature.prefix(signatureCount)) else {
            throw Invalid(reason: "bad PROXY v2 signature")
        }
        guard bytes.count >= 16 else { return nil }
        let start = bytes.startIndex
        let versionCommand = bytes[start + 12]
        let family = bytes[start + 13]
        let length = Int(bytes[start + 14]) << 8 | Int(bytes[start + 15])
        guard versionCommand >> 4 == 2 else { throw Invalid(reason: "PROXY v2 version is not 2") }
        guard 16 + length <= self.maxHeaderSize else {
            throw Invalid(reason: "PROXY v2 header of \(16 + length) bytes exceeds \(self.maxHeaderSize)")
        }
        guard bytes.count >= 16 + length else { return nil }
        let total = 16 + length
        switch versionCommand & 0x0F {
        case 0x0:  // LOCAL: health checks from the balancer itself
            return Header(source: nil, length: total)
        case 0x1:
            break
        default:
            throw Invalid(reason: "unknown PROXY v2 command")
        }
        let body = bytes[(start + 16)..<(start + total)]
        switch family {
        case 0x11:  // TCP over IPv4
            guard length >= 12 else { throw Invalid(reason: "PROXY v2 IPv4 block too short") }
            let a = body.startIndex
            let ip = "\(body[a]).\(body[a + 1]).\(body[a + 2]).\(body[a + 3])"
            let port = Int(body[a + 8]) << 8 | Int(body[a + 9])
            // 0.0.0.0 names no client (some balancers' health checks): like LOCAL.
            if body[a..<(a + 4)].allSatisfy({ $0 == 0 }) { return Header(source: nil, length: total) }
            return Header(source: "\(ip):\(port)", length: total)
        case 0x21:  // TCP over IPv6
            guard length >= 36 else { throw Invalid(reason: "PROXY v2 IPv6 block too short") }
            let a = body.startIndex
            var groups: [String] = []
            for i in stride(from: 0, to: 16, by: 2) {
                groups.append(String(Int(body[a + i]) << 8 | Int(body[a + i + 1]), radix: 16))
            }
            let port = Int(body[a + 32]) << 8 | Int(body[a + 33])
            // :: names no client: like LOCAL.
            if body[a..<(a + 16)].allSatisfy({ $0 == 0 }) { return Header(source: nil, length: total) }
            return Header(source: "[\(groups.joined(separator: ":"))]:\(port)", length: total)
        case 0x00:  // UNSPEC
            return Header(source: nil, length: total)
        default:
            throw Invalid(reason: "unsupported PROXY v2 address family 0x\(String(family, radix: 16))")
        }
    }
}
