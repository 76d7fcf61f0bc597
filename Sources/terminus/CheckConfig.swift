import ArgumentParser
import Foundation
import Logging
import TerminusServer

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and the files it names; exit 0 when it is usable."
    )

    @Argument(help: "The YAML configuration file.")
    var file: String

    func run() async throws {
        do {
            let configuration = try ConfigurationLoader.load(file: self.file)
            // Load what the file points at too: certificates, keys, secrets, dictionaries.
            let gateway = try Gateway(configuration: configuration, logger: Logger(label: "check-config"))
            _ = gateway
            print(
                "\(self.file): OK (device listener \(configuration.deviceListen), \(configuration.transport.rawValue))"
            )
        } catch let error as ConfigurationError {
            FileHandle.standardError.write(Data("\(self.file): \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}
