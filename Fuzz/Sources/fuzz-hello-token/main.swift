// Decodes a HELLO body (the bytes after type and flags) and verifies its credential with
// DeviceToken.verify under a fixed secret; also verifies the whole input as a token for "demo-1".
//
// Checks: a token is valid or expired only with a MAC made from the same secret (re-made with
// DeviceToken.make it verifies the same way, and never under another secret), the expiry in the
// verdict is the token's own, and a token made for the HELLO's device id always verifies.
import NIOCore
import TerminusAuth
import TerminusProtocol

private let secret = Array("terminus-demo-secret".utf8)
private let otherSecret = Array("terminus-demo-secreT".utf8)
private let now: Int64 = 1_767_225_600

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)

    checkToken(Array(input), deviceID: "demo-1")

    var body = ByteBufferAllocator().buffer(capacity: input.count)
    body.writeBytes(input)
    let frame: Frame
    do {
        frame = try Frame.decode(type: FrameType.hello.rawValue, flags: 0, body: &body)
    } catch {
        precondition(error.code.rawValue >= 200 && error.code.rawValue < 300, "HELLO decode: \(error)")
        return 0
    }
    guard case .hello(let hello) = frame else { preconditionFailure("HELLO decoded as \(frame)") }
    precondition(body.readableBytes == 0, "HELLO decoded with trailing bytes")
    precondition(hello.version == WireProtocol.version)

    // What the gateway would check next (the device id rules come before authentication).
    let idValid = (try? Topic.validateDeviceID(hello.deviceID, maxLength: 255)) != nil
    if idValid {
        precondition(hello.deviceID.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") })
    }
    if hello.authMethod == .token {
        checkToken(Array(hello.credential.readableBytesView), deviceID: hello.deviceID)
    }

    // Whatever the device id, a token made for it with the right secret verifies.
    let expiry = Int64(hello.capabilities.rawValue) &* 1_000 &+ Int64(hello.keepaliveSeconds)
    let made = DeviceToken.make(deviceID: hello.deviceID, secret: secret, expiresAt: expiry)
    let verdict = DeviceToken.verify(token: Array(made.utf8), deviceID: hello.deviceID, secret: secret, now: now)
    precondition(verdict == (expiry >= now ? .valid(expiresAt: expiry) : .expired(expiresAt: expiry)))
    return 0
}

private func checkToken(_ token: [UInt8], deviceID: String) {
    let verdict = DeviceToken.verify(token: token, deviceID: deviceID, secret: secret, now: now)
    let expiry: Int64
    switch verdict {
    case .invalid:
        return
    case .valid(let at):
        precondition(at >= now, "valid token with expiry \(at) before now")
        expiry = at
    case .expired(let at):
        precondition(at < now, "expired token with expiry \(at) not before now")
        expiry = at
    }
    // Accepted: the token must be v1.<expiry>.<mac> with that expiry…
    let parts = token.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
    precondition(parts.count == 3 && Int64(String(decoding: parts[1], as: UTF8.self)) == expiry)
    // …the MAC must not verify under another secret…
    precondition(DeviceToken.verify(token: token, deviceID: deviceID, secret: otherSecret, now: now) == .invalid)
    // …and the canonical token for the same expiry text verifies the same way. (Only when the
    // expiry is written canonically: "v1.007.…" signs the text "007", which make() never writes.)
    if String(expiry) == String(decoding: parts[1], as: UTF8.self) {
        let made = DeviceToken.make(deviceID: deviceID, secret: secret, expiresAt: expiry)
        let again = DeviceToken.verify(token: Array(made.utf8), deviceID: deviceID, secret: secret, now: now)
        precondition(again == verdict, "the canonical token verifies as \(again), the input as \(verdict)")
    }
}
