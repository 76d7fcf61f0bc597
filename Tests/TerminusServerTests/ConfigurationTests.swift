import Foundation
import Logging
import NIOCore
import TerminusAuth
import TerminusBackend
import TerminusCompression
import TerminusEdge
import TerminusFleet
import TerminusListeners
import TerminusProtocol
import TerminusRedis
import TerminusRouting
import TerminusServer
import Testing

@Suite("Configuration")
struct ConfigurationTests {
    static let minimal = """
        device:
          listen: "0.0.0.0:7883"
          transport: plaintext
        auth:
          secrets_file: /etc/terminus/devices.yaml
        """

    /// A TLS device listener with `extra` lines in `device.tls`.
    static func tls(_ extra: String) -> String {
        "device:\n  transport: tls\n  tls:\n    certificate_chain: a\n    private_key: b\n    \(extra)\n"
            + "auth:\n  secrets_file: s\n"
    }

    @Test(
        "the lean engine is the default; its ticket settings load; their defaults: one ticket, a 12 h rotation, own keys"
    )
    func ticketSettings() throws {
        let defaults = try #require(try ConfigurationLoader.load(yaml: Self.tls("min_version: \"1.3\"")).tls)
        #expect(defaults.engine == .lean)
        #expect(
            defaults.sessionTickets == 1 && defaults.ticketKeyRotation == .hours(12) && defaults.ticketKeyFile == nil
        )
        let boring = try #require(try ConfigurationLoader.load(yaml: Self.tls("engine: nio-ssl")).tls)
        #expect(boring.engine == .nioSSL)
        let set = try #require(
            try ConfigurationLoader.load(
                yaml: Self.tls(
                    "engine: lean\n    session_tickets: 0\n    ticket_key_file: t.key\n    ticket_key_rotation: 6h"
                ),
                baseDirectory: "/etc/terminus"
            ).tls
        )
        #expect(set.sessionTickets == 0 && set.ticketKeyRotation == .hours(6))
        #expect(set.ticketKeyFile == "/etc/terminus/t.key")
    }

    static let ticketErrorCases: [(String, String)] = [
        (Self.tls("engine: nio-ssl\n    session_tickets: 2"), "device.tls"),
        (Self.tls("engine: lean\n    session_tickets: 9"), "device.tls.session_tickets"),
        (Self.tls("engine: lean\n    ticket_key_rotation: 10s"), "device.tls.ticket_key_rotation"),
    ]

    @Test(
        "ticket settings: refused with nio-ssl, and out of range, naming the key",
        arguments: Self.ticketErrorCases
    )
    func ticketErrors(yaml: String, key: String) {
        self.namedErrors(yaml: yaml, key: key)
    }

    @Test("a minimal file gets safe defaults for every limit")
    func defaults() throws {
        let config = try ConfigurationLoader.load(yaml: Self.minimal)
        #expect(!config.developmentMode)
        #expect(config.transport == .plaintext)
        #expect(config.deviceListen == .init(host: "0.0.0.0", port: 7883))
        #expect(config.edge.maxFrameSize == 65536)
        #expect(config.edge.maxInflight == 32)
        #expect(config.edge.inflateLimits.maxInflatedSize == 262_144)
        #expect(config.edge.keepaliveDefault == 240)
        #expect(config.edge.keepaliveMax < 900, "below Tencent CLB's idle timeout")
        #expect(!config.maxConnectionsConfigured)
        #expect(config.edge.bufferArenaSlots == nil, "sized from max_connections")
        #expect(config.drainGrace == .seconds(30) && config.drainUnreadyDelay == .seconds(5))
        #expect(config.logFormat == .text)
        #expect(config.heapTrim.interval == .seconds(1) && config.heapTrim.freeBytes == 16 * 1024 * 1024)
        #expect(config.edge.placement == LoopPlacementSettings(), "pack")
        #expect(config.edge.placement.policy == .pack)
        #expect(config.edge.placement.rebalanceAbove == 0.85)
    }

    @Test("device.placement: policy, target, burst and moves; out of range or unknown, naming the key")
    func placement() throws {
        let device = Self.minimal.replacingOccurrences(
            of: "  transport: plaintext",
            with: "  transport: plaintext\n  placement:\n    policy: pack\n    target_utilization: 70\n    burst: 64"
                + "\n    rebalance_above: 90\n    rebalance_rate: 20"
        )
        let config = try ConfigurationLoader.load(yaml: device)
        #expect(config.edge.placement.policy == .pack)
        #expect(config.edge.placement.targetUtilization == 0.7)
        #expect(config.edge.placement.burst == 64)
        #expect(config.edge.placement.rebalanceAbove == 0.9)
        #expect(config.edge.placement.rebalanceRate == 20)
        let never = Self.minimal.replacingOccurrences(
            of: "  transport: plaintext",
            with: "  transport: plaintext\n  placement:\n    policy: spread\n    rebalance_above: 0"
        )
        #expect(try ConfigurationLoader.load(yaml: never).edge.placement.rebalanceAbove == 0)
        #expect(try ConfigurationLoader.load(yaml: never).edge.placement.policy == .spread)
        for (line, key) in [
            ("policy: fill", "device.placement.policy"),
            ("target_utilization: 99", "device.placement.target_utilization"),
            ("burst: 0", "device.placement.burst"), ("weight: 2", "device.placement.weight"),
            ("rebalance_above: 50", "device.placement.rebalance_above"),
            ("rebalance_above: 101", "device.placement.rebalance_above"),
            ("rebalance_rate: 0", "device.placement.rebalance_rate"),
        ] {
            let yaml = Self.minimal.replacingOccurrences(
                of: "  transport: plaintext",
                with: "  transport: plaintext\n  placement:\n    \(line)"
            )
            self.namedErrors(yaml: yaml, key: key)
        }
    }

    @Test("every documented key is read")
    func full() throws {
        let yaml = """
            instance_id: gw-7
            log_level: debug
            event_loop_threads: 4
            device:
              listen: "[::]:8883"
              transport: tls
              tls:
                certificate_chain: tls/chain.pem
                private_key: /abs/key.pem
                client_ca: tls/ca.pem
                client_auth: optional
                min_version: "1.3"
              proxy_protocol: v2
              proxy_header_max_size: 2048
            auth:
              secrets_file: secrets.yaml
            limits:
              max_connections: 50_000
              max_frame_size: 32768
              max_inflight: 8
              max_topic_length: 128
              max_device_id_length: 64
              max_topic_aliases: 4
              batch_size: 512
              buffer_arena_slots: 120000
              heap_trim:
                interval: 5s
                free_bytes: 67108864
            compression:
              max_inflated_size: 65536
              max_inflate_ratio: 50
              ratio_floor: 1024
              dictionaries:
                - id: 1
                  file: dict/payments-v1.bin
            timeouts:
              handshake: 5s
              hello: 2500ms
              close_grace: 3s
            keepalive:
              default: 120s
              min: 20s
              max: 300s
            drain:
              grace: 45s
              reconnect_window: 2m
              unready_delay: 0s
            log:
              format: json
            sink:
              type: log
            admin:
              listen: "127.0.0.1:9090"
            """
        let config = try ConfigurationLoader.load(yaml: yaml, baseDirectory: "/etc/terminus")
        #expect(config.instanceID == "gw-7")
        #expect(config.edge.instanceID == "gw-7")
        #expect(config.logLevel == .debug)
        #expect(config.eventLoopThreads == 4)
        #expect(config.deviceListen == .init(host: "::", port: 8883))
        #expect(config.tls?.certificateChain == "/etc/terminus/tls/chain.pem")
        #expect(config.tls?.privateKey == "/abs/key.pem")
        #expect(config.tls?.clientAuth == .optional)
        #expect(config.tls?.minimumVersion == "1.3")
        #expect(config.proxyProtocol == .v2)
        #expect(config.proxyHeaderMaxSize == 2048)
        #expect(config.secretsFile == "/etc/terminus/secrets.yaml")
        #expect(config.edge.maxConnections == 50_000)
        #expect(config.maxConnectionsConfigured)
        #expect(config.edge.maxFrameSize == 32768)
        #expect(config.edge.maxInflight == 8)
        #expect(config.edge.maxTopicLength == 128)
        #expect(config.edge.maxDeviceIDLength == 64)
        #expect(config.edge.maxTopicAliases == 4)
        #expect(config.edge.maxBatchSize == 512)
        #expect(config.edge.bufferArenaSlots == 120_000)
        #expect(config.heapTrim.interval == .seconds(5) && config.heapTrim.freeBytes == 64 * 1024 * 1024)
        let off = try ConfigurationLoader.load(yaml: Self.minimal + "\nlimits:\n  heap_trim: {interval: 0}\n")
        #expect(off.heapTrim.interval == .zero)
        #expect(config.edge.inflateLimits == .init(maxInflatedSize: 65536, maxRatio: 50, ratioFloor: 1024))
        #expect(config.dictionaries == [.init(id: 1, file: "/etc/terminus/dict/payments-v1.bin")])
        #expect(config.edge.handshakeTimeout == .seconds(5))
        #expect(config.edge.helloTimeout == .milliseconds(2500))
        #expect(config.edge.closeGrace == .seconds(3))
        #expect(config.edge.keepaliveDefault == 120)
        #expect(config.edge.keepaliveMin == 20)
        #expect(config.edge.keepaliveMax == 300)
        #expect(config.drainGrace == .seconds(45))
        #expect(config.drainReconnectWindow == .seconds(120))
        #expect(config.drainUnreadyDelay == .zero)
        #expect(config.logFormat == .json)
        #expect(config.adminListen == .init(host: "127.0.0.1", port: 9090))
    }

    @Test(
        "errors name the offending key",
        arguments: [
            ("device:\n  transport: tls\nauth:\n  secrets_file: s", "device.tls"),
            ("device:\n  transport: plaintext\n", "auth.secrets_file"),
            ("device:\n  transport: quic\n", "device.transport"),
            ("device:\n  listen: nowhere\n  transport: plaintext\n", "device.listen"),
            (Self.minimal + "\nlimits:\n  max_inflight: 0\n", "limits.max_inflight"),
            (Self.minimal + "\nlimits:\n  max_frame_size: big\n", "limits.max_frame_size"),
            (Self.minimal + "\nlimits:\n  max_frames: 1\n", "limits.max_frames"),
            (Self.minimal + "\nlimits:\n  buffer_arena_slots: -1\n", "limits.buffer_arena_slots"),
            (Self.minimal + "\nlimits:\n  heap_trim: {free_bytes: 1000}\n", "limits.heap_trim.free_bytes"),
            (Self.minimal + "\nlimits:\n  heap_trim: {interval: soon}\n", "limits.heap_trim.interval"),
            (Self.minimal + "\ntimeouts:\n  hello: soon\n", "timeouts.hello"),
            (Self.minimal + "\nkeepalive:\n  default: 1000s\n", "keepalive"),
            (Self.minimal + "\nunknown_section: {}\n", "unknown_section"),
            (
                Self.minimal + "\ncompression:\n  dictionaries:\n    - id: 0\n      file: x\n",
                "compression.dictionaries[0].id"
            ),
            (Self.minimal + "\nsink:\n  type: kafka\n", "sink.type"),
            (
                "device:\n  transport: tls\n  tls:\n    certificate_chain: a\n    private_key: b\n    client_auth: required\n",
                "device.tls.client_ca"
            ),
            ("device: [1, 2]\n", "device"),
            (Self.minimal + "\ndrain:\n  grace: 5s\n  unready_delay: 5s\n", "drain.unready_delay"),
            (Self.minimal + "\ndrain:\n  unready_delay: soon\n", "drain.unready_delay"),
            (Self.minimal + "\nlog:\n  format: xml\n", "log.format"),
            (Self.minimal + "\nlog:\n  level: loud\n", "log.level"),
        ]
    )
    func namedErrors(yaml: String, key: String) {
        do {
            _ = try ConfigurationLoader.load(yaml: yaml)
            Issue.record("accepted invalid configuration for \(key)")
        } catch let error as ConfigurationError {
            #expect(error.key == key, "\(error)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("fuzz regression: a duration that overflows is refused, not trapped on")
    func durationOverflow() {
        // Fuzz/Regressions/fuzz-config/duration-overflow
        let yaml = """
            device: {transport: plaintext}
            auth: {secrets_file: s}
            timeouts: {hello: 9223372036854775807h}
            """
        #expect(throws: ConfigurationError.self) { _ = try ConfigurationLoader.load(yaml: yaml) }
    }

    @Test("the hardening keys load: rate, pending, outbound buffer, timeouts, throttle, listener limits")
    func hardeningKeys() throws {
        let yaml = """
            device:
              transport: plaintext
            limits:
              max_pending: 10
              outbound_buffer: 8192
              max_push_frame: 4096
              accept_backoff: 100ms
              evict_unauthenticated_after: 3s
              reserved_descriptors: 64
              rate:
                messages_per_second: 5
                message_burst: 7
                bytes_per_second: 0
                byte_burst: 100
                close_after: 2
            timeouts:
              frame: 4s
              write_stall: 6s
            auth:
              secrets_file: /etc/terminus/devices.yaml
              max_token_lifetime: 720h
              throttle: {failures: 3, window: 2m, max_addresses: 9}
            api: {max_connections: 5, idle_timeout: 1m}
            admin: {max_connections: 2, idle_timeout: 5s}
            """
        let config = try ConfigurationLoader.load(yaml: yaml)
        #expect(config.edge.maxPending == 10)
        #expect(config.edge.outboundBufferBytes == 8192)
        #expect(config.edge.maxPushFrameSize == 4096)
        #expect(config.edge.acceptBackoff == .milliseconds(100))
        #expect(config.edge.unauthenticatedEvictionAge == .seconds(3))
        #expect(config.reservedDescriptors == 64)
        #expect(
            config.edge.rateLimits
                == UplinkRateLimits(
                    messagesPerSecond: 5,
                    messageBurst: 7,
                    bytesPerSecond: 0,
                    byteBurst: 100,
                    refusalsBeforeClose: 2
                )
        )
        #expect(config.edge.frameTimeout == .seconds(4))
        #expect(config.edge.writeStallTimeout == .seconds(6))
        #expect(config.maxTokenLifetimeSeconds == 720 * 3600)
        #expect(config.edge.authThrottle == .init(failures: 3, window: .seconds(120), maxAddresses: 9))
        #expect(config.apiLimits == .init(maxConnections: 5, idleTimeout: .seconds(60)))
        #expect(config.adminLimits == .init(maxConnections: 2, idleTimeout: .seconds(5)))
        #expect(throws: ConfigurationError.self) {
            _ = try ConfigurationLoader.load(yaml: Self.minimal + "\nlimits:\n  rate:\n    per_minute: 1\n")
        }
    }

    @Test("durations and addresses parse")
    func parsing() {
        #expect(GatewayConfiguration.HostPort(parsing: ":7883") == .init(host: "0.0.0.0", port: 7883))
        #expect(GatewayConfiguration.HostPort(parsing: "[::1]:1") == .init(host: "::1", port: 1))
        #expect(GatewayConfiguration.HostPort(parsing: "host:99999") == nil)
        #expect(GatewayConfiguration.HostPort(parsing: "[::1]:1")?.description == "[::1]:1")
    }

    @Test("secrets file: text, hex and base64 secrets; short secrets and unknown keys are refused")
    func secrets() throws {
        let store = try SecretsFile.parse(
            yaml: """
                devices:
                  printer-0001: "a-long-enough-secret"
                  printer-0002: "hex:000102030405060708090a0b0c0d0e0f"
                prefixes:
                  "spk-": "base64:AAECAwQFBgcICQoLDA0ODw=="
                """
        )
        #expect(store.secret(for: "printer-0001") == Array("a-long-enough-secret".utf8))
        #expect(store.secret(for: "printer-0002") == Array(0...15))
        #expect(store.secret(for: "spk-9") == Array(0...15))
        #expect(throws: ConfigurationError.self) { _ = try SecretsFile.parse(yaml: "devices:\n  a: short\n") }
        #expect(throws: ConfigurationError.self) { _ = try SecretsFile.parse(yaml: "people:\n  a: b\n") }
        #expect(throws: ConfigurationError.self) { _ = try SecretsFile.parse(yaml: "devices: {}\n") }
    }

    @Test("development mode creates its CA, certificate and secret once and reuses them")
    func developmentMode() throws {
        let directory = NSTemporaryDirectory() + "terminus-dev-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try DevelopmentMode.prepare(directory: directory)
        #expect(first.created)
        #expect(first.deviceSecret.count == 48)
        let second = try DevelopmentMode.prepare(directory: directory)
        #expect(!second.created)
        #expect(second.deviceSecret == first.deviceSecret)
        #expect(first.apiToken.count == 48 && second.apiToken == first.apiToken)
        #expect(first.apiToken != first.deviceSecret)
        var config = DevelopmentMode.configuration(material: second)
        #expect(config.apiListen == nil, "the API listens only when asked (--api-listen)")
        #expect(config.developmentMode)
        #expect(config.deviceListen.host == "127.0.0.1", "development mode listens on loopback only")
        #expect(
            try SecretsFile.load(path: config.secretsFile!).secret(for: "any-device") == Array(first.deviceSecret.utf8)
        )
        for secretFile in ["server-key.pem", "api-token.txt", "device-secret.txt"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: directory + "/" + secretFile)
            #expect((attributes[.posixPermissions] as? Int) == 0o600, "\(secretFile)")
        }
        DevelopmentMode.enableAPI(&config, material: second, listen: .init(host: "127.0.0.1", port: 7884))
        #expect(config.apiListen == .init(host: "127.0.0.1", port: 7884))
        #expect(config.apiTokens == [first.apiToken])
        // A directory from before the API token existed gets one, and keeps its secret.
        try FileManager.default.removeItem(atPath: directory + "/api-token.txt")
        let upgraded = try DevelopmentMode.prepare(directory: directory)
        #expect(!upgraded.created && upgraded.deviceSecret == first.deviceSecret)
        #expect(upgraded.apiToken.count == 48 && upgraded.apiToken != first.apiToken)
    }

    @Test("services, api and events are read; their errors name the key")
    func servicesAndAPI() throws {
        let directory = NSTemporaryDirectory() + "terminus-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = FileManager.default.createFile(
            atPath: directory + "/api-tokens",
            contents: Data("# backend tokens\nbilling-token-0123456789\n\naudit-token-0123456789\n".utf8)
        )
        let yaml =
            Self.minimal + """

                services:
                  - name: billing
                    target: "dns:///billing.payments.svc:50051"
                    topics: ["pay/#", "$terminus/events/#"]
                    tls: { ca: ca.pem, server_name: billing.internal }
                    batch_size: 128
                    linger: 20ms
                    window: 1000
                    deadline: 2s
                    retry: { attempts: 5, initial_backoff: 50ms, max_backoff: 1s, retry_after: 7s }
                    connections: 3
                    batches_in_flight: 4
                    rebalance: 10m
                    ping_timeout: 1500ms
                  - name: audit
                    target: "audit:9000"
                    topics: ["+/done"]
                    ping_timeout: 0s
                api:
                  listen: "127.0.0.1:7443"
                  tokens_file: api-tokens
                  send_timeout: 3s
                  max_concurrent_calls: 200
                  max_request_size: 65536
                  compress_push_above: 512
                events:
                  enabled: false
                """
        let config = try ConfigurationLoader.load(yaml: yaml, baseDirectory: directory)
        #expect(config.services.map(\.name) == ["billing", "audit"])
        let billing = try #require(config.services.first)
        #expect(billing.host == "billing.payments.svc" && billing.port == 50051)
        #expect(billing.filters.map(\.text) == ["pay/#", "$terminus/events/#"])
        #expect(billing.batchSize == 128 && billing.window == 1000 && billing.deadlineMilliseconds == 2000)
        #expect(billing.lingerMilliseconds == 20)
        #expect(config.services.last?.lingerMilliseconds == 0)
        #expect(
            billing.retry.maxAttempts == 5 && billing.retry.initialBackoff == .milliseconds(50)
                && billing.retry.maxBackoff == .seconds(1)
        )
        #expect(billing.retryAfterSeconds == 7 && billing.connections == 3 && billing.rebalanceSeconds == 600)
        #expect(billing.batchesInFlight == 4 && config.services.last?.batchesInFlight == 16)
        #expect(billing.pingTimeoutMilliseconds == 1500 && config.services.last?.pingTimeoutMilliseconds == 0)
        #expect(config.apiListen == .init(host: "127.0.0.1", port: 7443))
        #expect(config.apiTokens == ["billing-token-0123456789", "audit-token-0123456789"])
        #expect(config.apiSendTimeoutMilliseconds == 3000)
        #expect(config.apiMaxConcurrentCalls == 200 && config.apiMaxRequestSize == 65536)
        #expect(config.edge.pushCompressionThreshold == 512)
        #expect(!config.edge.publishEvents)

        for (bad, key) in [
            ("services:\n  - name: a\n    topics: [x]\n", "services[0].target"),
            ("services:\n  - name: a\n    target: h:1\n    topics: [a/#/b]\n", "services[0].topics[0]"),
            ("services:\n  - name: a\n    target: h:1\n", "services[0].topics"),
            (
                "services:\n  - name: a\n    target: h:1\n    topics: [x]\n  - name: a\n    target: h:2\n    topics: [y]\n",
                "services[1].name"
            ),
            ("api:\n  listen: \"127.0.0.1:1\"\n", "api.tokens_file"),
            (
                "api:\n  listen: \"127.0.0.1:1\"\n  tls: { certificate_chain: a.pem, private_key: k.pem }\n",
                "api.tokens_file"
            ),
            (
                "api:\n  listen: \"127.0.0.1:1\"\n  tls: { certificate_chain: a.pem, client_ca: ca.pem }\n",
                "api.tls.private_key"
            ),
            (
                "api:\n  listen: \"127.0.0.1:1\"\n  tls: { certificate_chain: a.pem, private_key: k.pem, ca: x }\n",
                "api.tls.ca"
            ),
            ("events:\n  enabled: maybe\n", "events.enabled"),
            (
                "services:\n  - name: a\n    target: h:1\n    topics: [x]\n    ping_timeout: 2m\n",
                "services[0].ping_timeout"
            ),
            (
                "services:\n  - name: a\n    target: h:1\n    topics: [x]\n    ping_timeout: soon\n",
                "services[0].ping_timeout"
            ),
        ] {
            do {
                _ = try ConfigurationLoader.load(yaml: Self.minimal + "\n" + bad, baseDirectory: directory)
                Issue.record("accepted \(key)")
            } catch let error as ConfigurationError {
                #expect(error.key == key, "\(error)")
            }
        }
    }

    @Test(
        "check-config refuses a service target the gateway cannot use, and says why",
        arguments: [
            ("http://billing:50051", "the scheme http:// is not supported"),
            ("unix:///run/billing.sock", "the scheme unix:// is not supported"),
            ("billing", "has no port"),
            ("billing:0", "outside 1…65535"),
            ("billing:70000", "outside 1…65535"),
            (":50051", "the host is missing"),
            ("0.0.0.0:50051", "the any-address"),
            ("::1:50051", "in brackets"),
            ("[billing]:50051", "is not an IPv6 address"),
            ("bill ing:50051", "not a valid host name"),
            ("-billing:50051", "not a valid host name"),
            ("999.1.1.1:50051", "not a valid host name"),
        ]
    )
    func unusableServiceTarget(target: String, reason: String) {
        let yaml = Self.minimal + "\nservices:\n  - name: a\n    target: \"\(target)\"\n    topics: [x]\n"
        do {
            _ = try ConfigurationLoader.load(yaml: yaml)
            Issue.record("accepted the target \(target)")
        } catch let error as ConfigurationError {
            #expect(error.key == "services[0].target")
            #expect("\(error)".contains(reason), "\(error)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("usable service targets: names, IPv4, bracketed IPv6, dns:///")
    func usableServiceTargets() throws {
        for (target, host, port) in [
            ("dns:///billing.payments.svc.cluster.local:50051", "billing.payments.svc.cluster.local", 50051),
            ("billing:1", "billing", 1), ("10.0.0.7:443", "10.0.0.7", 443), ("[fd00::7]:50051", "fd00::7", 50051),
            ("_grpc.billing:50051", "_grpc.billing", 50051),
        ] {
            let yaml = Self.minimal + "\nservices:\n  - name: a\n    target: \"\(target)\"\n    topics: [x]\n"
            let service = try #require(try ConfigurationLoader.load(yaml: yaml).services.first)
            #expect(service.host == host && service.port == port, "\(target)")
        }
    }

    @Test(
        "a quoted number is refused with the key; the admin listener is on loopback unless configured, off turns it off"
    )
    func quotedNumbersAndAdminDefault() throws {
        for (bad, key) in [
            ("limits:\n  max_inflight: \"32\"\n", "limits.max_inflight"),
            ("limits:\n  rate:\n    messages_per_second: '10'\n", "limits.rate.messages_per_second"),
            ("services:\n  - name: a\n    target: h:1\n    topics: [x]\n    window: \"100\"\n", "services[0].window"),
        ] {
            do {
                _ = try ConfigurationLoader.load(yaml: Self.minimal + "\n" + bad)
                Issue.record("accepted a quoted number for \(key)")
            } catch let error as ConfigurationError {
                #expect(error.key == key)
                #expect("\(error)".contains("not a quoted string"), "\(error)")
            }
        }
        #expect(
            try ConfigurationLoader.load(yaml: Self.minimal + "\nlimits:\n  max_inflight: 32\n").edge.maxInflight == 32
        )
        #expect(try ConfigurationLoader.load(yaml: Self.minimal).adminListen == .init(host: "127.0.0.1", port: 7885))
        #expect(try ConfigurationLoader.load(yaml: Self.minimal + "\nadmin:\n  listen: off\n").adminListen == nil)
        #expect(
            try ConfigurationLoader.load(yaml: Self.minimal + "\nadmin:\n  listen: \"0.0.0.0:9090\"\n").adminListen
                == .init(host: "0.0.0.0", port: 9090)
        )
    }

    @Test("fleet: Redis address, ACL user, password file, TLS, lease; its errors name the key")
    func fleet() throws {
        let directory = NSTemporaryDirectory() + "terminus-fleet-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "redis-password-0123\n".write(toFile: directory + "/redis-password", atomically: true, encoding: .utf8)
        try "# pods\nfleet-token-new-0123456789\nfleet-token-old-0123456789\n".write(
            toFile: directory + "/fleet-tokens",
            atomically: true,
            encoding: .utf8
        )
        let yaml =
            Self.minimal + """

                instance_id: gw-3
                fleet:
                  listen: "0.0.0.0:9786"
                  internal_address: "10.1.2.3:9786"
                  token_file: fleet-tokens
                  store:
                    max_messages: 150
                    max_bytes: 262144
                    max_ttl: 24h
                    push_timeout: 5s
                  lease: 20s
                  flush_interval: 10ms
                  redis:
                    address: "redis.internal:6380"
                    username: gateway
                    password_file: redis-password
                    database: 2
                    key_prefix: "prod:"
                    tls:
                      server_name: redis.internal
                """
        let config = try ConfigurationLoader.load(yaml: yaml, baseDirectory: directory)
        let fleet = try #require(config.fleet)
        #expect(fleet.redis.host == "redis.internal" && fleet.redis.port == 6380)
        #expect(fleet.redis.username == "gateway" && fleet.redis.password == "redis-password-0123")
        #expect(fleet.redis.database == 2 && fleet.redis.tls != nil && fleet.redis.serverName == "redis.internal")
        #expect(fleet.registry.podID == "gw-3", "the pod id defaults to instance_id")
        #expect(fleet.registry.podAddress == "10.1.2.3:9786" && fleet.registry.keyPrefix == "prod:")
        #expect(fleet.listen == .init(host: "0.0.0.0", port: 9786))
        #expect(fleet.tokens == ["fleet-token-new-0123456789", "fleet-token-old-0123456789"])
        #expect(fleet.store.maxMessages == 150 && fleet.store.maxBytes == 262_144)
        #expect(fleet.store.maxTTL == .seconds(86_400) && fleet.store.pushTimeout == .seconds(5))
        // Without internal_address, the gateway advertises its listener once bound.
        let derived = try ConfigurationLoader.load(
            yaml: yaml.replacingOccurrences(of: "  internal_address: \"10.1.2.3:9786\"\n", with: ""),
            baseDirectory: directory
        )
        #expect(derived.fleet?.registry.podAddress == "")
        #expect(
            Gateway.internalAddress(.init(host: "10.0.0.7", port: 0), port: 41_000) == "10.0.0.7:41000"
        )
        #expect(Gateway.internalAddress(.init(host: "::1", port: 0), port: 41_000) == "[::1]:41000")
        #expect(!Gateway.internalAddress(.init(host: "0.0.0.0", port: 7886), port: 7886).hasPrefix("0.0.0.0"))
        #expect(fleet.registry.lease == .seconds(20) && fleet.registry.flushInterval == .milliseconds(10))
        #expect(config.fleetPasswordFile == directory + "/redis-password")
        #expect(try ConfigurationLoader.load(yaml: Self.minimal).fleet == nil)

        for (bad, key) in [
            ("fleet:\n  lease: 20s\n", "fleet.redis.address"),
            ("fleet:\n  redis:\n    address: nowhere\n", "fleet.redis.address"),
            ("fleet:\n  pod_id: \"a|b\"\n  redis:\n    address: \"r:1\"\n", "fleet.pod_id"),
            ("fleet:\n  lease: 1s\n  redis:\n    address: \"r:1\"\n", "fleet.lease"),
            ("fleet:\n  redis:\n    address: \"r:1\"\n    database: \"2\"\n", "fleet.redis.database"),
            (
                "fleet:\n  redis:\n    address: \"r:1\"\n    password_file: /nonexistent/pw\n",
                "fleet.redis.password_file"
            ),
            ("fleet:\n  redis:\n    address: \"r:1\"\n    sentinel: x\n", "fleet.redis.sentinel"),
            ("fleet:\n  redis:\n    address: \"r:1\"\n", "fleet.token_file"),
            ("fleet:\n  token_file: /nonexistent/t\n  redis:\n    address: \"r:1\"\n", "fleet.token_file"),
            ("fleet:\n  listen: nowhere\n  redis:\n    address: \"r:1\"\n", "fleet.listen"),
            (
                "fleet:\n  token_file: \(directory)/fleet-tokens\n  redis:\n    address: \"r:1\"\n  store:\n    max_ttl: 800h\n",
                "fleet.store.max_ttl"
            ),
            (
                "fleet:\n  token_file: \(directory)/fleet-tokens\n  redis:\n    address: \"r:1\"\n  store:\n    max_messages: 0\n",
                "fleet.store.max_messages"
            ),
            (
                "fleet:\n  token_file: \(directory)/fleet-tokens\n  redis:\n    address: \"r:1\"\n  store:\n    keep: 1\n",
                "fleet.store.keep"
            ),
            (
                "fleet:\n  internal_address: \"0.0.0.0:7886\"\n  redis:\n    address: \"r:1\"\n",
                "fleet.internal_address"
            ),
        ] {
            do {
                _ = try ConfigurationLoader.load(yaml: Self.minimal + "\n" + bad)
                Issue.record("accepted \(key)")
            } catch let error as ConfigurationError {
                #expect(error.key == key, "\(error)")
            }
        }
    }

    @Test("api.tls with client_ca needs no tokens file; paths resolve against the file's directory")
    func apiMutualTLS() throws {
        let yaml =
            Self.minimal + """

                api:
                  listen: "0.0.0.0:7443"
                  tls:
                    certificate_chain: api.pem
                    private_key: api-key.pem
                    client_ca: backends-ca.pem
                """
        let config = try ConfigurationLoader.load(yaml: yaml, baseDirectory: "/etc/terminus")
        let tls = try #require(config.apiTLS)
        #expect(tls.certificateChain == "/etc/terminus/api.pem")
        #expect(tls.privateKey == "/etc/terminus/api-key.pem")
        #expect(tls.clientCA == "/etc/terminus/backends-ca.pem")
        #expect(config.apiTokens.isEmpty)
    }
}
