import Foundation
import NIOCore
import TerminusClient
import TerminusMetrics
import TerminusProtocol
import TerminusServer
import Testing

@Suite("Metrics: /metrics on the admin listener, in the Prometheus text format", .serialized, .gatewayScope)
struct MetricsTests {
    @Test("a scripted session's metrics have the right values (the scrape parsed by prometheus_client)")
    func scriptedSession() async throws {
        let backend = try await TestBackend.start()
        let gateway = try await TestGateway.start(routed: true) {
            $0.services = [try! BackendRoutingTests.service("pay", port: backend.port, topics: ["pay/#"])]
            $0.adminListen = .init(host: "127.0.0.1", port: 0)
        }
        let admin = try #require(gateway.gateway.boundAdminAddress?.port)
        let url = "http://127.0.0.1:\(admin)/metrics"

        // One device: five QoS 1 messages that the backend accepts (one compressed), one with no
        // route, two QoS 0.
        let device = try await gateway.connect("metrics-1")
        let payment = ByteBuffer(string: String(repeating: #"{"amount":"12.50","currency":"CNY"}"#, count: 8))
        for index in 0..<5 {
            let ack = try await device.publish(topic: "pay/order", payload: payment, compress: index == 0)
            #expect(ack.status == .ok)
        }
        #expect(try await device.publish(topic: "nowhere/else", payload: payment).status == .noRoute)
        for _ in 0..<2 { _ = try await device.publish(topic: "pay/tick", payload: payment, qos: .atMostOnce) }

        // Refusals: a wrong token, an unknown frame type, and bytes that are not TLS.
        let intruder = try await RawClient.connect(port: gateway.port, tls: true)
        try await intruder.send(TestGateway.hello("metrics-2", secret: "not-the-secret-0123456789"))
        #expect(await intruder.goAwayOnClose()?.code == .authenticationFailed)
        let broken = try await RawClient.connect(port: gateway.port, tls: true)
        _ = try await broken.handshake("metrics-3")
        try await broken.send([0, 0, 0, 2, 0x7F, 0])
        #expect(await broken.goAwayOnClose()?.code == .unknownFrameType)
        let plain = try await RawClient.connect(port: gateway.port, tls: false)
        try await plain.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(await plain.waitUntil(5) { plain.isClosed })

        // Counted when the connections are gone and the QoS 0 messages (no ACK to wait for) are
        // answered: poll (bounded) until both show. Without the second condition a scrape once
        // came while the last QoS 0 message was still with the backend.
        var samples: [PrometheusScrape.Sample] = []
        for _ in 0..<50 {
            samples = try PrometheusScrape.samples(url)
            if samples.total("terminus_tls_handshakes_total", ["outcome": "failure"]) >= 1
                && samples.value("terminus_connections", ["listener": "device", "state": "established"]) == 1
                && samples.value("terminus_uplink_messages_total", ["qos": "0", "outcome": "ok"]) == 2
                && samples.value("terminus_delivery_window_used", ["service": "pay"]) == 0
            {
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }

        // Every family the catalogue has a type for is typed so in the scrape.
        #expect(samples.contains { $0.name == "terminus_build_info" && $0.labels["version"] == BuildInfo.version })
        #expect(samples.value("terminus_uplink_messages_total", ["qos": "1", "outcome": "ok"]) == 5)
        #expect(samples.value("terminus_uplink_messages_total", ["qos": "1", "outcome": "no_route"]) == 1)
        #expect(samples.value("terminus_uplink_messages_total", ["qos": "0", "outcome": "ok"]) == 2)
        #expect(samples.value("terminus_publish_ack_duration_seconds_count") == 6)
        #expect((samples.value("terminus_publish_ack_duration_seconds_sum") ?? 0) > 0)
        #expect(samples.value("terminus_publish_ack_duration_seconds_bucket", ["le": "+Inf"]) == 6)
        #expect(samples.value("terminus_delivery_messages_total", ["service": "pay", "outcome": "accepted"]) == 7)
        #expect(samples.value("terminus_delivery_batch_size_sum", ["service": "pay"]) == 7)
        #expect(samples.value("terminus_delivery_batches_total", ["service": "pay", "outcome": "answered"]) ?? 0 >= 1)
        #expect(samples.value("terminus_delivery_window_used", ["service": "pay"]) == 0)
        #expect(samples.total("terminus_backend_connects_total", ["service": "pay", "outcome": "success"]) >= 1)
        #expect(samples.value("terminus_authentications_total") == 2)
        #expect(samples.value("terminus_auth_refusals_total", ["code": "AUTHENTICATION_FAILED"]) == 1)
        #expect(samples.value("terminus_protocol_errors_total", ["code": "UNKNOWN_FRAME_TYPE"]) == 1)
        #expect(samples.value("terminus_tls_handshakes_total", ["outcome": "success"]) == 3)
        #expect(samples.total("terminus_tls_handshakes_total", ["outcome": "failure"]) == 1)
        #expect(samples.value("terminus_tls_handshake_duration_seconds_count") == 3)
        #expect(samples.value("terminus_connections_accepted_total", ["listener": "device"]) == 4)
        #expect(samples.value("terminus_connections", ["listener": "device", "state": "established"]) == 1)
        #expect(samples.value("terminus_connections", ["listener": "device", "state": "handshake"]) == 0)
        #expect(samples.value("terminus_device_disconnects_total", ["code": "AUTHENTICATION_FAILED"]) == 1)
        // The device's frames: HELLO and eight PUBLISH; the inflated payload is the longer.
        #expect((samples.value("terminus_frames_received_total") ?? 0) >= 9)
        let inflatedIn = samples.value("terminus_inflate_input_bytes_total") ?? 0
        let inflatedOut = samples.value("terminus_inflate_output_bytes_total") ?? 0
        #expect(inflatedIn > 0 && inflatedOut == Double(payment.readableBytes) && inflatedOut > inflatedIn)
        #expect((samples.value("terminus_sent_bytes_total") ?? 0) > 0)
        #expect(samples.value("terminus_ready") == 1 && samples.value("terminus_draining") == 0)
        #expect((samples.value("terminus_process_open_fds") ?? 0) > 0)
        #expect((samples.value("terminus_process_resident_memory_bytes") ?? 0) > 1_000_000)
        #expect(samples.contains { $0.name == "terminus_event_loop_lag_seconds" && $0.labels["loop"] == "1" })
        for sample in samples {
            #expect(sample.name.hasPrefix("terminus_"), "\(sample.name) lacks the terminus_ prefix")
            #expect(sample.labels["device"] == nil && sample.labels["device_id"] == nil, "a per-device label")
        }

        // Counters only grow; the device's close shows at the next scrape.
        await device.close()
        #expect(
            await RawClient.poll(5) {
                let later = (try? PrometheusScrape.samples(url)) ?? []
                return later.value("terminus_connections", ["listener": "device", "state": "established"]) == 0
                    && later.value("terminus_uplink_messages_total", ["qos": "1", "outcome": "ok"]) == 5
            },
            "the closed device still counted as established"
        )
        await gateway.stop()
        await backend.stop()
    }
}

@Suite("Metrics: the documented list")
struct MetricsDocumentationTests {
    @Test("docs/operations.md lists exactly the metrics in MetricCatalogue, each with its type")
    func documentedMetrics() throws {
        let text = try String(
            contentsOf: PythonBackend.repository.appendingPathComponent("docs/operations.md"),
            encoding: .utf8
        )
        var documented: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("| `terminus_") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            documented[cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`"))] = cells[1]
        }
        let catalogue = MetricCatalogue.entries.mapValues(\.kind.rawValue)
        #expect(documented == catalogue)
    }
}
