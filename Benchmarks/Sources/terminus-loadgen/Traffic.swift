import Foundation
import NIOCore

/// Device traffic that looks like a real fleet: payment speakers announce payments (short JSON,
/// ~200 bytes), cloud printers report jobs and status (longer JSON, ~300 bytes). Each message
/// carries the send time in microseconds (`"ts"`), which the sink backend reads to measure
/// device→backend latency.
enum Traffic: String, CaseIterable, Sendable {
    case speaker
    case printer
    case mixed

    /// A preset dictionary a fleet would ship for these messages (id 1).
    static let dictionary = Array(
        (#"{"type":"payment","order":"2026","amount":,"currency":"CNY","merchant":"M-","store":"S-","device":"spk-","#
            + #""voice":"payment-received","channel":"wxpay","alipay","ts":17,"seq":}"#
            + #"{"type":"print-job","printer":"prn-","job":"J-","state":"done","printing","queued","paper":"ok","low","#
            + #""pages":,"toner":,"temp_c":,"queue":,"firmware":"3.4.1"}"#).utf8
    )

    func topic(device: String, sequence: Int) -> String {
        switch self.kind(sequence) {
        case .speaker: "tenant-\(Self.tenant(device))/\(device)/pay/done"
        case .printer: "tenant-\(Self.tenant(device))/\(device)/print/status"
        }
    }

    private enum Kind { case speaker, printer }

    private func kind(_ sequence: Int) -> Kind {
        switch self {
        case .speaker: .speaker
        case .printer: .printer
        case .mixed: sequence % 3 == 0 ? .printer : .speaker
        }
    }

    private static func tenant(_ device: String) -> Int {
        var hash = 0
        for byte in device.utf8 { hash = (hash &* 31 &+ Int(byte)) & 0xFFFF }
        return hash % 500
    }

    /// The payload of message `sequence` from `device`, sent at `micros`.
    func payload(device: String, sequence: Int, micros: Int64) -> ByteBuffer {
        var random = SystemRandomNumberGenerator()
        let text: String
        switch self.kind(sequence) {
        case .speaker:
            let amount = Int.random(in: 100...99_999, using: &random)
            let channel = sequence % 2 == 0 ? "wxpay" : "alipay"
            text =
                #"{"type":"payment","order":"2026113003\#(String(format: "%08d", sequence % 100_000_000))","#
                + #""amount":\#(amount),"currency":"CNY","merchant":"M-\#(20_000 + sequence % 997)","store":"S-0042","#
                + #""device":"\#(device)","voice":"payment-received","channel":"\#(channel)","ts":\#(micros),"seq":\#(sequence)}"#
        case .printer:
            let state = ["done", "printing", "queued"][sequence % 3]
            text =
                #"{"type":"print-job","printer":"\#(device)","job":"J-\#(sequence)","state":"\#(state)","#
                + #""paper":"\#(sequence % 17 == 0 ? "low" : "ok")","pages":\#(1 + sequence % 4),"#
                + #""toner":\#(100 - sequence % 90),"temp_c":\#(38 + sequence % 9),"queue":\#(sequence % 5),"#
                + #""firmware":"3.4.1","ts":\#(micros),"seq":\#(sequence)}"#
        }
        return ByteBuffer(string: text)
    }

    /// The `"ts"` field of a payload (send time, microseconds), or nil.
    static func sentMicros(_ payload: some Collection<UInt8>) -> Int64? {
        let key = Array(#""ts":"#.utf8)
        let bytes = Array(payload)
        guard bytes.count > key.count else { return nil }
        var index = 0
        while index + key.count <= bytes.count {
            if bytes[index] == key[0] && Array(bytes[index..<index + key.count]) == key {
                var value: Int64 = 0
                var cursor = index + key.count
                var digits = 0
                while cursor < bytes.count, bytes[cursor] >= 48, bytes[cursor] <= 57 {
                    value = value * 10 + Int64(bytes[cursor] - 48)
                    cursor += 1
                    digits += 1
                }
                return digits > 0 ? value : nil
            }
            index += 1
        }
        return nil
    }
}

enum Clock {
    /// Wall-clock microseconds (the sink compares them with the device's, same host).
    static func micros() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1_000
    }
}
