import ArgumentParser
import TerminusMetrics

@main
struct Terminus: AsyncParsableCommand {
    static let version = BuildInfo.description

    static let configuration = CommandConfiguration(
        commandName: "terminus",
        abstract: "Terminus: a device message gateway.",
        version: Self.version,
        subcommands: [Run.self, CheckConfig.self, Token.self, Device.self, Send.self, Ctl.self]
    )
}
