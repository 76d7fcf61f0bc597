internal import CTerminusOpenSSL
package import NIOCore

/// The device listener's TLS configuration for the lean engine: OpenSSL's server context
/// (certificate chain, key, client CA, versions, suites), made once off the event loops and
/// shared by all of them.
package final class LeanTLSServerContext: @unchecked Sendable {
    // OpenSSL's SSL_CTX is safe to share between threads once configured (SSL_new from many).
    let pointer: OpaquePointer

    package enum ClientAuthentication: Int32, Sendable {
        case none = 0
        case optional = 1
        case required = 2
    }

    /// - Parameters:
    ///   - minimumVersion: 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3).
    ///   - tickets: TLS 1.3 session tickets sent after each handshake (0: none, and no TLS 1.2
    ///     tickets either: no resumption).
    ///   - ticketSecret: 32 to 64 bytes the ticket keys are derived from, the same in every pod
    ///     that should resume the others' tickets; nil: random, this process's own.
    ///   - ticketKeyRotation: each period of this many seconds of wall-clock time has its own
    ///     ticket key; a ticket resumes until the end of the period after the one it was made in.
    package init(
        certificateChainFile: String,
        privateKeyFile: String,
        clientCAFile: String? = nil,
        clientAuthentication: ClientAuthentication = .none,
        minimumVersion: UInt16 = 0x0303,
        tickets: Int = 0,
        ticketSecret: [UInt8]? = nil,
        ticketKeyRotation: Int64 = 12 * 3600
    ) throws {
        if let ticketSecret, !(32...64).contains(ticketSecret.count) {
            throw LeanTLSError.internalError("a ticket secret has 32 to 64 bytes, not \(ticketSecret.count)")
        }
        var error = [CChar](repeating: 0, count: 512)
        let made = terminus_tls_server_new(
            certificateChainFile,
            privateKeyFile,
            clientCAFile,
            clientAuthentication.rawValue,
            Int32(minimumVersion),
            tickets,
            ticketSecret,
            ticketSecret?.count ?? 0,
            ticketKeyRotation,
            &error,
            error.count
        )
        guard let made else {
            throw LeanTLSError.internalError(
                String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            )
        }
        self.pointer = made
    }

    /// Moves the ticket keys' clock (tests of rotation).
    package func moveTicketClock(bySeconds seconds: Int64) {
        terminus_tls_server_set_clock_offset(self.pointer, seconds)
    }

    deinit { terminus_tls_server_free(self.pointer) }
}

/// What a finished handshake leaves for the record layer: the two directions' keys, and who
/// the peer is.
package struct LeanSessionKeys: Sendable {
    package var read: TrafficKeys
    package var write: TrafficKeys
    package let version: UInt16
    package let resumed: Bool
    /// The client's certificate (DER), verified by OpenSSL, when it presented one.
    package let peerCertificate: [UInt8]?
}

/// One connection's handshake, run by OpenSSL on the connection's event loop between memory
/// BIOs. The caller feeds it one record at a time (`TLSRecordFramer`), so that OpenSSL never
/// reads the first application record; once it is done, `finish()` takes the keys and frees
/// OpenSSL's connection object.
package final class LeanHandshake {
    private var pointer: OpaquePointer?
    /// Kept while the handshake runs: OpenSSL's callbacks (ticket keys) use the context's state,
    /// which a configuration reload may otherwise release mid-handshake.
    private let context: LeanTLSServerContext

    package enum Progress: Equatable, Sendable {
        case wantsMore
        case done
        case failed(String)
    }

    package init(context: LeanTLSServerContext) throws {
        guard let pointer = terminus_tls_handshake_new(context.pointer) else {
            throw LeanTLSError.internalError("no memory for a TLS handshake")
        }
        self.pointer = pointer
        self.context = context
    }

    deinit { terminus_tls_handshake_free(self.pointer) }

    /// Gives OpenSSL one record the peer sent.
    package func advance(_ record: ByteBuffer) -> Progress {
        guard let pointer = self.pointer else { return .failed("the handshake is over") }
        let result = record.withUnsafeReadableBytes { bytes in
            terminus_tls_handshake_advance(
                pointer,
                bytes.baseAddress?.assumingMemoryBound(to: UInt8.self),
                bytes.count
            )
        }
        switch result {
        case Int32(TERMINUS_HANDSHAKE_DONE): return .done
        case Int32(TERMINUS_HANDSHAKE_WANTS_MORE): return .wantsMore
        default:
            var reason = [CChar](repeating: 0, count: 512)
            terminus_tls_handshake_error(pointer, &reason, reason.count)
            return .failed(String(decoding: reason.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }

    /// What OpenSSL wrote for the peer since the last call (handshake records, tickets, an
    /// alert), appended to `buffer`.
    package func takeOutput(into buffer: inout ByteBuffer) {
        guard let pointer = self.pointer else { return }
        let pending = terminus_tls_handshake_pending_output(pointer)
        guard pending > 0 else { return }
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { bytes in
            terminus_tls_handshake_read_output(pointer, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), pending)
        }
    }

    /// Once `advance` said `.done`: the record layer's keys, and the end of OpenSSL's part
    /// (its connection object is freed here).
    package func finish() throws -> LeanSessionKeys {
        guard let pointer = self.pointer else { throw LeanTLSError.internalError("the handshake is over") }
        defer {
            terminus_tls_handshake_free(pointer)
            self.pointer = nil
        }
        var keys = terminus_tls_keys()
        guard terminus_tls_handshake_keys(pointer, &keys) == 1 else {
            throw LeanTLSError.internalError("the handshake's keys are not known")
        }
        let length = terminus_tls_handshake_peer_certificate(pointer, nil, 0)
        var certificate: [UInt8]? = nil
        if length > 0 {
            var der = [UInt8](repeating: 0, count: length)
            _ = terminus_tls_handshake_peer_certificate(pointer, &der, length)
            certificate = der
        }
        guard let suite = LeanCipherSuite(rawValue: keys.cipher_suite), suite.isTLS13 == (keys.version == 0x0304)
        else {
            throw LeanTLSError.internalError("a suite the lean record layer does not protect: \(keys.cipher_suite)")
        }
        if !suite.isTLS13 {
            // TLS 1.2: each side's Finished was the first record under its keys (sequence 0), in a
            // full handshake and in a resumed one alike; NewSessionTicket goes before the
            // server's ChangeCipherSpec, unprotected.
            let block = withUnsafeBytes(of: keys.key_block) { Array($0) }
            let (keyLength, ivLength) = (suite.keyLength, suite.ivLength)
            precondition(Int(keys.key_length) == keyLength && Int(keys.iv_length) == ivLength)
            let clientIV = 2 * keyLength
            return LeanSessionKeys(
                read: TrafficKeys(
                    suite: suite,
                    key: Array(block[0..<keyLength]),
                    iv: Array(block[clientIV..<clientIV + ivLength]),
                    sequence: 1
                ),
                write: TrafficKeys(
                    suite: suite,
                    key: Array(block[keyLength..<2 * keyLength]),
                    iv: Array(block[clientIV + ivLength..<clientIV + 2 * ivLength]),
                    sequence: 1
                ),
                version: keys.version,
                resumed: keys.resumed != 0,
                peerCertificate: certificate
            )
        }
        let count = Int(keys.secret_length)
        let client = withUnsafeBytes(of: keys.client_secret) { Array($0.prefix(count)) }
        let server = withUnsafeBytes(of: keys.server_secret) { Array($0.prefix(count)) }
        return LeanSessionKeys(
            read: TrafficKeys(suite: suite, secret: client),
            write: TrafficKeys(suite: suite, secret: server, sequence: keys.server_application_records),
            version: keys.version,
            resumed: keys.resumed != 0,
            peerCertificate: certificate
        )
    }
}

/// Cuts TLS records out of what the peer sends, whatever their type: the handshake feeds them
/// to OpenSSL one at a time.
package enum TLSRecordFramer {
    /// The largest record body accepted before or during the handshake (2^14 + 2048, TLS 1.2's
    /// bound for ciphertext).
    package static let maxRecordBody = 16_384 + 2_048

    /// One complete record from the front of `buffer`, or nil while it is incomplete.
    package static func nextRecord(from buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard buffer.readableBytes >= 5,
            let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let major = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 3, as: UInt16.self)
        else { return nil }
        guard (20...23).contains(type), major == 3 else {
            throw LeanTLSError.decodeError("not a TLS record (type \(type), version major \(major))")
        }
        guard Int(length) <= Self.maxRecordBody else { throw LeanTLSError.recordOverflow }
        return buffer.readSlice(length: 5 + Int(length))
    }
}
