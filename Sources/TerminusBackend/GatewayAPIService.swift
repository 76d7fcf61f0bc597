internal import Foundation
internal import GRPCCore
internal import GRPCNIOTransportHTTP2
internal import NIOCore
internal import TerminusAPI
internal import TerminusProtocol
internal import TerminusSessions

/// The gateway's own gRPC service for backends: Send, Kick, Presence.
struct GatewayAPIService: Terminus_V1_Gateway.SimpleServiceProtocol {
    let directory: any SessionDirectory
    let instanceID: String
    /// Used when a Send asks for no particular ttl.
    let defaultTTLMilliseconds: UInt32
    let maxPayloadSize: Int
    let maxTopicLength: Int

    func send(request: Terminus_V1_SendRequest, context: ServerContext) async throws -> Terminus_V1_SendResponse {
        var response = Terminus_V1_SendResponse()
        response.gatewayInstance = self.instanceID
        // The proto promises REJECTED for an invalid message, with the reason's code in
        // device_status; the same topic rules as for PUBLISH (docs/protocol.md).
        if let code = self.invalid(request) {
            response.outcome = .rejected
            response.deviceStatus = UInt32(code.rawValue)
            return response
        }
        guard let session = self.directory.lookup(request.deviceID) else {
            response.outcome = .offline
            return response
        }
        let ttl = request.ttlMs == 0 ? self.defaultTTLMilliseconds : request.ttlMs
        let outcome = try await session.control.push(
            topic: request.topic,
            payload: ByteBuffer(bytes: request.payload),
            qos: request.qos == 1 ? .atLeastOnce : .atMostOnce,
            timeout: .milliseconds(Int64(ttl))
        ).get()
        switch outcome {
        case .delivered:
            response.outcome = .delivered
        case .rejected(let code):
            response.outcome = .rejected
            response.deviceStatus = UInt32(code.rawValue)
        case .timeout:
            response.outcome = .timeout
        case .connectionClosed:
            response.outcome = .offline
        }
        return response
    }

    /// Why `request` cannot be sent, or nil when it can.
    func invalid(_ request: Terminus_V1_SendRequest) -> TerminusCode? {
        do {
            try Topic.validateDeviceID(request.deviceID, maxLength: 255)
        } catch {
            return .invalidDeviceID
        }
        do {
            try Topic.validatePublishTopic(request.topic, maxLength: self.maxTopicLength)
        } catch {
            return .invalidTopic
        }
        if request.payload.count > self.maxPayloadSize { return .frameTooLarge }
        if request.qos > 1 { return .malformedFrame }
        return nil
    }

    func kick(request: Terminus_V1_KickRequest, context: ServerContext) async throws -> Terminus_V1_KickResponse {
        var response = Terminus_V1_KickResponse()
        guard let session = self.directory.lookup(request.deviceID) else { return response }
        session.control.goAway(.kicked, reconnectAfterMilliseconds: 0, message: String(request.reason.prefix(200)))
        response.kicked = true
        return response
    }

    func presence(
        request: Terminus_V1_PresenceRequest,
        context: ServerContext
    ) async throws
        -> Terminus_V1_PresenceResponse
    {
        guard request.deviceIds.count <= 10_000 else {
            throw RPCError(code: .invalidArgument, message: "at most 10000 device ids per call")
        }
        var response = Terminus_V1_PresenceResponse()
        response.devices = request.deviceIds.map { id in
            var presence = Terminus_V1_DevicePresence()
            presence.deviceID = id
            if let session = self.directory.lookup(id) {
                presence.online = true
                presence.sinceUnixMs = session.connectedAt
                presence.clientAddress = session.clientAddress
                presence.gatewayInstance = self.instanceID
            }
            return presence
        }
        return response
    }
}

/// Admits a call only when the caller authenticated as configured: with
/// `authorization: Bearer <token>` naming a configured token (when tokens are configured), and
/// with a verified client certificate (when the listener is mTLS). Anything else is
/// `unauthenticated`.
struct CallerAuthenticationInterceptor: ServerInterceptor {
    let tokens: [[UInt8]]
    let requireCertificate: Bool

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next:
            @Sendable (_ request: StreamingServerRequest<Input>, _ context: ServerContext) async throws ->
            StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        if self.requireCertificate {
            // The handshake already refused callers without a certificate from the client CA;
            // this holds the line should the transport ever let one through.
            let peer = context.transportSpecific as? HTTP2ServerTransport.Posix.Context
            guard peer?.peerCertificate != nil else {
                return StreamingServerResponse(
                    error: RPCError(code: .unauthenticated, message: "a client certificate is required")
                )
            }
        }
        if !self.tokens.isEmpty {
            let header = request.metadata[stringValues: "authorization"].first(where: { _ in true }) ?? ""
            guard header.hasPrefix("Bearer "), self.accepts(Array(header.utf8.dropFirst(7))) else {
                return StreamingServerResponse(
                    error: RPCError(
                        code: .unauthenticated,
                        message: "a valid 'authorization: Bearer <token>' is required"
                    )
                )
            }
        }
        return try await next(request, context)
    }

    /// Compares against every token without stopping early or on length (constant time in the
    /// presented token's content).
    func accepts(_ presented: [UInt8]) -> Bool {
        var matched = false
        for token in self.tokens {
            var difference = UInt8(token.count == presented.count ? 0 : 1)
            for index in 0..<token.count {
                let byte = index < presented.count ? presented[index] : 0
                difference |= token[index] ^ byte
            }
            matched = matched || difference == 0
        }
        return matched
    }
}
