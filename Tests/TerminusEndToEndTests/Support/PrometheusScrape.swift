import Foundation
import TerminusTestSupport

/// Scrapes a `/metrics` endpoint and parses it with the Python `prometheus_client` library's
/// text parser (an independent reader of the format: a malformed exposition fails the parse).
enum PrometheusScrape {
    /// Installs prometheus-client with pip when it is missing (the README's `swift test` must
    /// pass on a fresh machine). Once per process.
    static let installed: Bool = {
        func run(_ arguments: [String]) -> Int32 {
            guard let process = try? ChildProcess("/usr/bin/env", arguments) else { return -1 }
            process.waitUntilExit()
            return process.terminationStatus
        }
        if run(["python3", "-c", "import prometheus_client"]) == 0 { return true }
        _ = run(["python3", "-m", "pip", "install", "-q", "prometheus-client"])
        return run(["python3", "-c", "import prometheus_client"]) == 0
    }()

    /// One sample: its full name (with `_bucket`, `_sum`, … suffixes), labels, value; and the
    /// family's type.
    struct Sample: Decodable {
        let name: String
        let labels: [String: String]
        let value: Double
        let type: String
    }

    static let script = """
        import json, sys, urllib.request
        from prometheus_client.parser import text_string_to_metric_families
        response = urllib.request.urlopen(sys.argv[1], timeout=10)
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), response.headers["Content-Type"]
        text = response.read().decode("utf-8")
        samples = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value, "type": family.type})
        print(json.dumps(samples))
        """

    /// Every sample at `url`, parsed; throws when the scrape or the parse fails.
    static func samples(_ url: String) throws -> [Sample] {
        guard Self.installed else {
            throw ScrapeError(message: "prometheus-client is missing and pip could not install it")
        }
        let output = NSTemporaryDirectory() + "terminus-scrape-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: output) }
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let process = try ChildProcess(
            "/usr/bin/env",
            ["python3", "-c", Self.script, url],
            standardOutput: .file(output),
            standardError: .inherit
        )
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ScrapeError(message: "the scrape or its parse failed (exit \(process.terminationStatus))")
        }
        return try JSONDecoder().decode([Sample].self, from: Data(contentsOf: URL(fileURLWithPath: output)))
    }

    struct ScrapeError: Error {
        let message: String
    }
}

extension [PrometheusScrape.Sample] {
    /// The value of the sample named `name` whose labels include `labels`; nil when none.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        self.first { sample in
            sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value }
        }?.value
    }

    /// The sum over every sample named `name` whose labels include `labels`.
    func total(_ name: String, _ labels: [String: String] = [:]) -> Double {
        self.filter { sample in
            sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value }
        }.reduce(0) { $0 + $1.value }
    }
}
