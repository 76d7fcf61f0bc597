#if canImport(Glibc)
import Glibc
import Logging
import NIOCore
import NIOEmbedded
import TerminusAuth
import TerminusCompression
@testable import TerminusEdge
import TerminusProtocol
import TerminusSessions
import Testing

/// glibc's `malloc_usable_size` (declared in <malloc.h>, which the Glibc module does not export).
@_silgen_name("malloc_usable_size")
private func mallocUsableSize(_ pointer: UnsafeMutableRawPointer?) -> Int

/// The memory budget of issue 2: our own per-session state (session handler with its state
/// machine, frame decoder, session handle and its control, registry entry) must stay within
/// ~1 KiB on top of what the channel and TLS cost. Measured with malloc_usable_size on the
/// live objects of an established session.
@Suite("Per-session memory budget")
struct SessionMemoryBudgetTests {
    static func usable(_ object: AnyObject) -> Int {
        mallocUsableSize(Unmanaged.passUnretained(object).toOpaque())
    }

    @Test("an established session's own objects stay under 1 KiB")
    func budget() throws {
        let loop = EmbeddedEventLoop()
        var settings = EdgeSettings()
        settings.maxBatchSize = 16
        let directory = LocalSessionDirectory()
        let secret = Array("budget-secret-0123456789".utf8)
        let sink = InMemorySink()
        let contexts = try EdgeLoopContexts(
            group: loop,
            settings: settings,
            dictionaries: .init(),
            sink: sink
        )
        let shared = EdgeShared(
            settings: settings,
            authenticator: DeviceAuthenticator(secrets: SecretStore(prefixes: ["": secret]), now: { 1_000 }),
            directory: directory,
            logger: Logger(label: "budget"),
            contexts: contexts,
            usesTLS: false,
            readsClientCertificates: false
        )
        let handler = DeviceSessionHandler(shared: shared, loop: contexts.context(for: loop), now: loop.now)
        let channel = EmbeddedChannel(handlers: [handler], loop: loop)
        try channel.connect(to: .init(ipAddress: "10.1.2.3", port: 40000)).wait()

        var hello = ByteBuffer()
        let token = DeviceToken.make(deviceID: "spk-00012345", secret: secret, expiresAt: 2_000)
        hello.writeFrame(
            .hello(
                Hello(
                    keepaliveSeconds: 0,
                    capabilities: [],
                    deviceID: "spk-00012345",
                    authMethod: .token,
                    credential: ByteBuffer(string: token)
                )
            )
        )
        try channel.writeInbound(hello)
        var welcome = try #require(try channel.readOutbound(as: ByteBuffer.self))
        var frameDecoder = FrameDecoder(maxFrameLength: 1 << 16)
        guard case .welcome = try frameDecoder.decode(buffer: &welcome) else {
            Issue.record("no WELCOME")
            return
        }
        let handle = try #require(directory.lookup("spk-00012345"))

        let handlerBytes = Self.usable(handler)
        let handleBytes = Self.usable(handle)
        let controlBytes = Self.usable(handle.control)
        // A dictionary entry (String key + reference) at a 75 % load factor, rounded up.
        let registryEntryBytes = 2 * (MemoryLayout<String>.stride + MemoryLayout<SessionHandle>.stride)
        let total = handlerBytes + handleBytes + controlBytes + registryEntryBytes
        print(
            "session memory: handler (frame decoder inside)=\(handlerBytes) handle=\(handleBytes) control=\(controlBytes) registry≈\(registryEntryBytes) total=\(total) bytes"
        )
        #expect(handlerBytes > 0 && handleBytes > 0)
        #expect(total <= 1024, "our per-session state must stay within ~1 KiB")

        _ = try channel.finish()
        contexts.context(for: loop).shutdown()  // the wheel and the loop's lists refer to the handler
    }
}
#endif
