package import NIOCore
package import NIOSSL
internal import NIOTLS

/// The client's certificate, verified by OpenSSL during the lean engine's handshake: fired
/// just before `TLSUserEvent.handshakeCompleted`, for the session to take the device id from.
package struct LeanTLSPeerCertificate: Sendable {
    package let certificate: NIOSSLCertificate
}

/// The lean TLS engine on a server channel (`device.tls.engine: lean`). The handshake runs in
/// OpenSSL, fed one record at a time; once it is done OpenSSL's connection object is freed and
/// only the two directions' keys and sequence numbers stay, with the bytes of an incomplete
/// record when one is pending. Records are sealed and opened with the event loop's
/// `AEADContext`. Fires `TLSUserEvent.handshakeCompleted` as NIOSSL's handler does, so the
/// session code is the same for both engines.
package final class LeanTLSServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    private enum State {
        case handshaking(LeanHandshake)
        case established
        case closed
    }

    private var state: State
    /// Once established: each direction's keys. Stored properties, changed in place: a read can
    /// call back into `write` (the session answers inside `fireChannelRead`).
    private var readKeys: TrafficKeys?
    private var writeKeys: TrafficKeys?
    /// An incomplete record's bytes (copied out of the read buffer, so that nothing larger is
    /// kept), or nil.
    private var pending: ByteBuffer?
    private let aead: AEADContext
    private var sentCloseNotify = false
    /// The client sent something: a close from here on without close_notify is unclean.
    private var receivedBytes = false
    /// The server's close under way: close_notify is sent, and the socket closes when the
    /// client's close_notify arrives, when the client closes, or after `closeTimeout`, as
    /// swift-nio-ssl does. Reading goes on meanwhile, so that the socket is not closed with
    /// bytes unread (the kernel would answer with a reset, and a client may then lose what was
    /// sent last); nothing more is written.
    private var closing: Closing?

    private final class Closing {
        var promise: EventLoopPromise<Void>?
        var timeout: Scheduled<Void>?
        init(promise: EventLoopPromise<Void>?) { self.promise = promise }
    }

    /// How long the server's close waits for the client's close_notify (swift-nio-ssl's
    /// default `shutdownTimeout`).
    package static let closeTimeout = TimeAmount.seconds(5)
    /// The client asked us to update our keys (KeyUpdate, update_requested): our own KeyUpdate
    /// goes before the next record we write (RFC 8446, 4.6.3), one for any number of requests,
    /// so a client that asks again and again without reading makes us write nothing.
    private var keyUpdateOwed = false
    /// Records without application data since the last that had some (KeyUpdates, empty
    /// records, warning alerts): past `maxRecordsWithoutData` the connection ends, as in
    /// BoringSSL (each costs a decryption, a KeyUpdate a key derivation, and none carries data).
    private var recordsWithoutData = 0
    package static let maxRecordsWithoutData = 32
    /// Whether the connection is TLS 1.3 (else TLS 1.2), once established.
    private var isTLS13 = true

    /// - Parameter aead: the event loop's AEAD context (one per loop, shared by its channels).
    package init(context: LeanTLSServerContext, aead: AEADContext) throws {
        self.state = .handshaking(try LeanHandshake(context: context))
        self.aead = aead
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = self.unwrapInboundIn(data)
        self.receivedBytes = true
        if var pending = self.pending {
            self.pending = nil
            pending.writeBuffer(&input)
            input = pending
        }
        do {
            try self.process(&input, context: context)
        } catch let error as LeanTLSError {
            self.fail(error, context: context)
            return
        } catch {
            self.fail(.internalError("\(error)"), context: context)
            return
        }
        if input.readableBytes > 0, case .closed = self.state {
            return
        } else if input.readableBytes > 0 {
            // Room for the whole record at once (its header says how long it is), so that the rest
            // is appended without reallocating.
            var needed = input.readableBytes
            if input.readableBytes >= 5, let length = input.getInteger(at: input.readerIndex + 3, as: UInt16.self) {
                needed = max(needed, 5 + Int(length))
            }
            var kept = context.channel.allocator.buffer(capacity: needed)
            kept.writeBuffer(&input)
            self.pending = kept
        }
    }

    private func process(_ input: inout ByteBuffer, context: ChannelHandlerContext) throws {
        if case .handshaking(let handshake) = self.state {
            while let record = try TLSRecordFramer.nextRecord(from: &input) {
                let progress = handshake.advance(record)
                self.flushHandshakeOutput(handshake, context: context)
                switch progress {
                case .wantsMore:
                    continue
                case .failed(let reason):
                    // OpenSSL wrote its alert above.
                    self.state = .closed
                    context.fireErrorCaught(LeanTLSError.handshakeFailed(reason))
                    context.close(promise: nil)
                    return
                case .done:
                    let keys = try handshake.finish()
                    self.state = .established
                    self.readKeys = keys.read
                    self.writeKeys = keys.write
                    self.isTLS13 = keys.version == 0x0304
                    if let der = keys.peerCertificate,
                        let certificate = try? NIOSSLCertificate(bytes: der, format: .der)
                    {
                        context.fireUserInboundEventTriggered(LeanTLSPeerCertificate(certificate: certificate))
                    }
                    context.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
                }
                break
            }
        }
        guard case .established = self.state else { return }
        while case .established = self.state, let record = try self.nextRecord(from: &input) {
            let opened =
                self.isTLS13
                ? try TLS13Records.open(
                    record,
                    keys: &self.readKeys!,
                    context: self.aead,
                    allocator: context.channel.allocator
                )
                : try TLS12Records.open(
                    record,
                    keys: &self.readKeys!,
                    context: self.aead,
                    allocator: context.channel.allocator
                )
            switch opened.type {
            case .applicationData:
                if opened.content.readableBytes > 0 {
                    self.recordsWithoutData = 0
                    context.fireChannelRead(self.wrapInboundOut(opened.content))
                } else {
                    try self.countRecordWithoutData()
                }
            case .alert:
                try self.received(alert: opened.content, context: context)
            case .handshake:
                try self.received(handshake: opened.content, context: context)
            case .changeCipherSpec:
                throw LeanTLSError.unexpectedMessage("change_cipher_spec after the handshake")
            }
        }
    }

    private func nextRecord(from input: inout ByteBuffer) throws -> ByteBuffer? {
        self.isTLS13
            ? try TLS13Records.nextRecord(from: &input)
            : try TLS12Records.nextRecord(from: &input, suite: self.readKeys!.suite)
    }

    private func countRecordWithoutData() throws {
        self.recordsWithoutData += 1
        guard self.recordsWithoutData <= Self.maxRecordsWithoutData else {
            throw LeanTLSError.unexpectedMessage(
                "more than \(Self.maxRecordsWithoutData) records without data in a row"
            )
        }
    }

    /// close_notify ends the connection quietly; any other alert is fatal in TLS 1.3, and in
    /// TLS 1.2 when its level says so (a TLS 1.2 warning is counted and otherwise ignored).
    private func received(alert: ByteBuffer, context: ChannelHandlerContext) throws {
        guard alert.readableBytes == 2, let level = alert.getInteger(at: alert.readerIndex, as: UInt8.self),
            let description = alert.getInteger(at: alert.readerIndex + 1, as: UInt8.self)
        else { throw LeanTLSError.decodeError("an alert of \(alert.readableBytes) bytes") }
        if !self.isTLS13, level == 1, description != 0 {
            try self.countRecordWithoutData()
            return
        }
        if description != 0 {
            self.state = .closed
            context.fireErrorCaught(LeanTLSError.alertReceived(level: level, description: description))
        }
        self.closeSocket(context: context)
    }

    /// After the handshake a TLS 1.3 client may send KeyUpdate only (RFC 8446, 4.6.3); anything
    /// else, post-handshake authentication included, is refused. A TLS 1.2 client may send
    /// nothing: a ClientHello would be renegotiation, which the lean engine refuses.
    private func received(handshake messages: ByteBuffer, context: ChannelHandlerContext) throws {
        guard self.isTLS13 else {
            throw LeanTLSError.unexpectedMessage("a handshake message after the TLS 1.2 handshake (renegotiation)")
        }
        var messages = messages
        while messages.readableBytes > 0 {
            guard let type = messages.readInteger(as: UInt8.self),
                let high = messages.readInteger(as: UInt8.self),
                let low = messages.readInteger(as: UInt16.self),
                messages.readableBytes >= Int(high) << 16 | Int(low)
            else { throw LeanTLSError.decodeError("a handshake message split across records") }
            let length = Int(high) << 16 | Int(low)
            guard type == 24 else {
                throw LeanTLSError.unexpectedMessage("handshake message \(type) after the handshake")
            }
            guard length == 1, let request = messages.readInteger(as: UInt8.self), request <= 1 else {
                throw LeanTLSError.decodeError("a malformed KeyUpdate")
            }
            try self.countRecordWithoutData()
            self.readKeys!.update()
            if request == 1 { self.keyUpdateOwed = true }
        }
    }

    private func flushHandshakeOutput(_ handshake: LeanHandshake, context: ChannelHandlerContext) {
        var output = context.channel.allocator.buffer(capacity: 0)
        handshake.takeOutput(into: &output)
        if output.readableBytes > 0 { context.writeAndFlush(self.wrapOutboundOut(output), promise: nil) }
    }

    /// Sends the fatal alert `error` calls for (when keys exist), tells the pipeline, closes.
    private func fail(_ error: LeanTLSError, context: ChannelHandlerContext) {
        if error.alertDescription != 0 {
            self.sendAlert(level: 2, description: error.alertDescription, context: context)
        }
        self.state = .closed
        self.pending = nil
        self.readKeys = nil
        self.writeKeys = nil
        context.fireErrorCaught(error)
        self.closeSocket(context: context)
    }

    /// Closes the socket now, completing the server's close if one is under way.
    private func closeSocket(context: ChannelHandlerContext) {
        self.state = .closed
        let promise = self.closing?.promise
        self.closing?.timeout?.cancel()
        self.closing = nil
        context.close(promise: promise)
    }

    /// Seals `content` into a new buffer, after the KeyUpdate the client asked for if one is owed.
    private func seal(_ content: ByteBuffer, type: ContentType, context: ChannelHandlerContext) throws -> ByteBuffer {
        // Each record adds at most 30 bytes: header 5, explicit nonce 8 (TLS 1.2), type 1 (TLS
        // 1.3), tag 16.
        let records = 1 + content.readableBytes / TLS13Records.maxPlaintext + (self.keyUpdateOwed ? 1 : 0)
        var output = self.aead.buffer(
            capacity: content.readableBytes + records * 30,
            allocator: context.channel.allocator
        )
        defer { self.aead.reuse(output) }
        if self.keyUpdateOwed {
            // Our KeyUpdate (update_not_requested) under the current keys, then the next ones.
            try TLS13Records.seal(
                ByteBuffer(bytes: [24, 0, 0, 1, 0]),
                type: .handshake,
                keys: &self.writeKeys!,
                context: self.aead,
                into: &output
            )
            self.writeKeys!.update()
            self.keyUpdateOwed = false
        }
        if self.isTLS13 {
            try TLS13Records.seal(content, type: type, keys: &self.writeKeys!, context: self.aead, into: &output)
        } else {
            try TLS12Records.seal(content, type: type, keys: &self.writeKeys!, context: self.aead, into: &output)
        }
        return output
    }

    /// An alert under the current keys, when the connection has them; best effort.
    private func sendAlert(level: UInt8, description: UInt8, context: ChannelHandlerContext) {
        guard case .established = self.state, self.writeKeys != nil, self.closing == nil,
            let output = try? self.seal(ByteBuffer(bytes: [level, description]), type: .alert, context: context)
        else { return }
        context.writeAndFlush(self.wrapOutboundOut(output), promise: nil)
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // After close_notify nothing more may be sent (RFC 8446, 6.1).
        guard case .established = self.state, self.writeKeys != nil, self.closing == nil else {
            promise?.fail(LeanTLSError.unexpectedMessage("a write before the handshake is done or after close"))
            return
        }
        let output: ByteBuffer
        do {
            output = try self.seal(self.unwrapOutboundIn(data), type: .applicationData, context: context)
        } catch {
            // Only the sequence number's end can fail a seal: the connection must end.
            promise?.fail(error)
            self.fail(error as? LeanTLSError ?? .internalError("\(error)"), context: context)
            return
        }
        context.write(self.wrapOutboundOut(output), promise: promise)
    }

    /// A full close of an established connection sends close_notify and waits for the
    /// client's (see `closing`); any other closes at once.
    package func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        if let closing = self.closing {
            // Already closing: this close ends with that one.
            if let promise {
                if let first = closing.promise {
                    first.futureResult.cascade(to: promise)
                } else {
                    closing.promise = promise
                }
            }
            return
        }
        guard case .established = self.state, self.writeKeys != nil, !self.sentCloseNotify else {
            self.state = .closed
            context.close(mode: mode, promise: promise)
            return
        }
        self.sentCloseNotify = true
        self.sendAlert(level: 1, description: 0, context: context)
        let closing = Closing(promise: promise)
        closing.timeout = context.eventLoop.assumeIsolated().scheduleTask(in: Self.closeTimeout) {
            self.closeSocket(context: context)
        }
        self.closing = closing
        // The client's close_notify is read even while the session holds reads back.
        context.read()
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        if self.closing != nil { context.read() }
        context.fireChannelReadComplete()
    }

    package func channelInactive(context: ChannelHandlerContext) {
        // Closed by the peer without close_notify, as swift-nio-ssl reports it: after the
        // handshake, or during it once the client sent something.
        let unclean: Bool
        switch self.state {
        case .established: unclean = self.closing == nil
        case .handshaking: unclean = self.receivedBytes
        case .closed: unclean = false
        }
        if unclean { context.fireErrorCaught(LeanTLSError.uncleanShutdown) }
        if let closing = self.closing {
            // The client closed first: the server's close is complete.
            closing.timeout?.cancel()
            self.closing = nil
            closing.promise?.succeed(())
        }
        self.state = .closed
        self.pending = nil
        self.readKeys = nil
        self.writeKeys = nil
        context.fireChannelInactive()
    }
}
