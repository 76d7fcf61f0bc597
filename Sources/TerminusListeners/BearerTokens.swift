/// Bearer tokens of an HTTP or gRPC listener (the backend API's `api.tokens_file`, the admin
/// API's `admin.tokens_file`), compared without stopping early or on length: constant time in
/// the presented token's content. A reload replaces the whole value (see `Reloadable`).
package struct BearerTokens: Sendable {
    private let tokens: [[UInt8]]

    package init(_ tokens: [String]) {
        self.tokens = tokens.map { Array($0.utf8) }
    }

    package var isEmpty: Bool { self.tokens.isEmpty }

    package var count: Int { self.tokens.count }

    /// Whether `authorization` (an `Authorization` header's value) is `Bearer ` and one of the
    /// tokens. False when there are no tokens: the caller decides what an empty set means.
    package func accepts(authorization: String?) -> Bool {
        guard let header = authorization, header.hasPrefix("Bearer ") else { return false }
        return self.accepts(Array(header.utf8.dropFirst(7)))
    }

    package func accepts(_ presented: [UInt8]) -> Bool {
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
