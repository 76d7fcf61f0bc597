import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `terminus ctl`: the admin API from the command line, like `emqx ctl`.
struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Operate a running gateway through its admin API (admin.listen, admin.tokens_file).",
        discussion: """
            Commands: devices [--prefix P] [--after ID] [--limit N] | device ID | kick ID | drain | config | reload.
            Prints the gateway's JSON answer; exits 0 on success, 1 when the gateway refused (not found,
            reload refused), 2 when it could not be reached or the token was refused.
            """
    )

    @Option(name: .long, help: "The gateway's admin listener, HOST:PORT.")
    var admin: String = "127.0.0.1:7885"

    @Option(name: .long, help: "Bearer token (one of admin.tokens_file). Default: $TERMINUS_ADMIN_TOKEN.")
    var token: String?

    @Option(name: .long, help: "Read the bearer token from this file (first line).")
    var tokenFile: String?

    @Option(name: .long, help: "devices: only ids starting with this.")
    var prefix: String?

    @Option(name: .long, help: "devices: the page after this device id (the previous page's \"next\").")
    var after: String?

    @Option(name: .long, help: "devices: at most this many (1…1000).")
    var limit: Int?

    @Argument(help: "devices | device ID | kick ID | drain | config | reload")
    var command: [String]

    func validate() throws {
        guard let first = self.command.first else { throw ValidationError("a command is required") }
        let arity = ["devices": 1, "device": 2, "kick": 2, "drain": 1, "config": 1, "reload": 1]
        guard let expected = arity[first], expected == self.command.count else {
            throw ValidationError("usage: devices | device ID | kick ID | drain | config | reload")
        }
    }

    func run() throws {
        let token: String
        if let given = self.token {
            token = given
        } else if let file = self.tokenFile {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read \(file)")
            }
            token = String(String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first ?? "")
                .trimmingCharacters(in: .whitespaces)
        } else if let env = ProcessInfo.processInfo.environment["TERMINUS_ADMIN_TOKEN"] {
            token = env
        } else {
            throw ValidationError("a token is required: --token, --token-file or $TERMINUS_ADMIN_TOKEN")
        }
        func escaped(_ text: String) -> String {
            text.addingPercentEncoding(
                withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?&="))
            )
                ?? text
        }
        let (method, path): (String, String)
        switch self.command[0] {
        case "devices":
            var query: [String] = []
            if let prefix { query.append("prefix=\(escaped(prefix))") }
            if let after { query.append("after=\(escaped(after))") }
            if let limit { query.append("limit=\(limit)") }
            (method, path) = ("GET", "/admin/devices" + (query.isEmpty ? "" : "?" + query.joined(separator: "&")))
        case "device": (method, path) = ("GET", "/admin/devices/\(escaped(self.command[1]))")
        case "kick": (method, path) = ("POST", "/admin/devices/\(escaped(self.command[1]))/kick")
        case "drain": (method, path) = ("POST", "/admin/drain")
        case "config": (method, path) = ("GET", "/admin/config")
        default: (method, path) = ("POST", "/admin/reload")
        }
        guard let (status, body) = Self.request(self.admin, method: method, path: path, token: token) else {
            FileHandle.standardError.write(Data("cannot reach the admin listener at \(self.admin)\n".utf8))
            throw ExitCode(2)
        }
        print(body.trimmingCharacters(in: .whitespacesAndNewlines))
        switch status {
        case 200..<300: return
        case 401, 403: throw ExitCode(2)
        default: throw ExitCode(1)
        }
    }

    /// One HTTP/1.1 request over a plain TCP connection (`Connection: close`): status and body,
    /// or nil when the listener cannot be reached. Waits at most 10 s.
    static func request(_ address: String, method: String, path: String, token: String) -> (Int, String)? {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            return nil
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, "\(port)", &hints, &list) == 0, let info = list else { return nil }
        defer { freeaddrinfo(list) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else { return nil }
        let request =
            "\(method) \(path) HTTP/1.1\r\nHost: \(address)\r\nAuthorization: Bearer \(token)\r\n"
            + "Content-Length: 0\r\nConnection: close\r\n\r\n"
        let bytes = Array(request.utf8)
        guard bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
            return nil
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            response += buffer[0..<count]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let statusLine = text.split(separator: "\r\n", maxSplits: 1).first,
            let status = statusLine.split(separator: " ").dropFirst().first.flatMap({ Int($0) }),
            let split = text.range(of: "\r\n\r\n")
        else { return nil }
        return (status, String(text[split.upperBound...]))
    }
}
