import Foundation
import TerminusServer
import Testing

/// `docs/configuration.md` is the reference for the configuration file: every key it lists must
/// be one the loader reads, and every key the loader reads must be listed.
@Suite("docs/configuration.md and the loader agree")
struct ConfigurationDocumentTests {
    static var document: String {
        get throws {
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            return try String(contentsOf: root.appendingPathComponent("docs/configuration.md"), encoding: .utf8)
        }
    }

    /// The keys of the document's tables. Keys in the `services` section's table are relative to
    /// one list entry (`services[].`); "list of `{a, b}`" names the keys of a list's entries.
    static func documentedKeys(_ text: String) -> Set<String> {
        var keys = Set<String>()
        var prefix = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("### ") {
                prefix = line.contains("`services`") ? "services[]." : ""
                continue
            }
            guard line.hasPrefix("| `") else { continue }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            guard cells.count > 3 else { continue }
            for name in cells[1].split(separator: ",") {
                let key = name.trimmingCharacters(in: .whitespaces).trimmingCharacters(
                    in: CharacterSet(charactersIn: "`")
                )
                guard !key.isEmpty else { continue }
                if let open = cells[3].range(of: "list of `{"),
                    let close = cells[3][open.upperBound...].range(of: "}`")
                {
                    for member in cells[3][open.upperBound..<close.lowerBound].split(separator: ",") {
                        keys.insert(prefix + key + "[]." + member.trimmingCharacters(in: .whitespaces))
                    }
                } else {
                    keys.insert(prefix + key)
                }
            }
        }
        return keys
    }

    @Test("every documented key is known to the loader, and every key the loader reads is documented")
    func keysAgree() throws {
        let documented = Self.documentedKeys(try Self.document)
        let known = ConfigurationLoader.knownKeys
        #expect(documented.count > 60, "the tables were found: \(documented.count) keys")
        #expect(documented.subtracting(known).sorted() == [], "documented but not read by the loader")
        #expect(known.subtracting(documented).sorted() == [], "read by the loader but not documented")
    }

    @Test("an unknown key is refused with its path, in every section, including list entries")
    func unknownKeys() throws {
        let base = "device: { listen: \"127.0.0.1:0\", transport: plaintext }\nauth: { secrets_file: s.yaml }\n"
        let cases: [(String, String)] = [
            ("bogus: 1\n", "bogus"),
            ("limits: { rate: { per_minute: 5 } }\n", "limits.rate.per_minute"),
            (
                "services:\n  - { name: a, target: \"h:1\", topics: [\"#\"], retry: { tries: 2 } }\n",
                "services[0].retry.tries"
            ),
            ("compression: { dictionaries: [ { id: 1, file: d, level: 9 } ] }\n", "compression.dictionaries[0].level"),
        ]
        for (extra, key) in cases {
            #expect {
                _ = try ConfigurationLoader.load(yaml: base + extra)
            } throws: { error in
                (error as? ConfigurationError)?.key == key && "\(error)".contains("is not a known key")
            }
        }
    }
}
