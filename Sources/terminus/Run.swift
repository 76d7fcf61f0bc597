import ArgumentParser
import Foundation
import Logging
import Metrics
import NIOCore
import Prometheus
import ServiceLifecycle
import TerminusEdge
import TerminusListeners
import TerminusMetrics
import TerminusServer
import UnixSignals

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway. Without --config: development mode on embedded defaults."
    )

    @Option(name: .long, help: "YAML configuration file; turns development mode off.")
    var config: String?

    @Option(name: .long, help: "Device listener address, overriding the file (HOST:PORT).")
    var deviceListen: String?

    @Option(name: .long, help: "Backend API listener (Send, Kick, Presence), overriding the file (HOST:PORT).")
    var apiListen: String?

    @Option(
        name: .long,
        help:
            "Admin HTTP listener (/healthz, /readyz, /metrics, /admin), overriding the file (HOST:PORT, or off; default 127.0.0.1:7885)."
    )
    var adminListen: String?

    @Option(name: .long, help: "Log lines as text or json, overriding log.format.")
    var logFormat: String?

    @Option(name: .long, help: "Development mode's directory for the generated CA, certificate and secret.")
    var devDirectory: String = DevelopmentMode.defaultDirectory

    func validate() throws {
        if let logFormat, TerminusLogHandler.Format(rawValue: logFormat) == nil {
            throw ValidationError("--log-format must be text or json")
        }
    }

    /// The configuration file (or development mode's) with the command line's overrides.
    func loadConfiguration() throws -> (GatewayConfiguration, DevelopmentMode.Material?) {
        var configuration: GatewayConfiguration
        var material: DevelopmentMode.Material?
        if let config {
            do {
                configuration = try ConfigurationLoader.load(file: config)
            } catch let error as ConfigurationError {
                throw ValidationError("configuration error: \(error)")
            }
        } else {
            let prepared = try DevelopmentMode.prepare(directory: self.devDirectory)
            material = prepared
            configuration = DevelopmentMode.configuration(material: prepared)
        }
        if let deviceListen {
            guard let parsed = GatewayConfiguration.HostPort(parsing: deviceListen) else {
                throw ValidationError("--device-listen must be HOST:PORT")
            }
            configuration.deviceListen = parsed
        }
        if let apiListen {
            guard let parsed = GatewayConfiguration.HostPort(parsing: apiListen) else {
                throw ValidationError("--api-listen must be HOST:PORT")
            }
            if let material {
                // Development mode: callers authenticate with the generated token.
                DevelopmentMode.enableAPI(&configuration, material: material, listen: parsed)
            } else {
                guard !configuration.apiTokens.isEmpty || configuration.apiTLS?.clientCA != nil else {
                    throw ValidationError(
                        "--api-listen needs api.tokens_file or api.tls.client_ca in the configuration (callers must authenticate)"
                    )
                }
                configuration.apiListen = parsed
            }
        }
        if let adminListen {
            guard let parsed = GatewayConfiguration.HostPort.parsingOptional(adminListen) else {
                throw ValidationError("--admin-listen must be HOST:PORT or off")
            }
            configuration.adminListen = parsed
        }
        return (configuration, material)
    }

    func run() async throws {
        var (configuration, material) = try self.loadConfiguration()
        let level = configuration.logLevel
        let format = self.logFormat.flatMap(TerminusLogHandler.Format.init(rawValue:)) ?? configuration.logFormat
        LoggingSystem.bootstrap { label in
            TerminusLogHandler(label: label, format: format, level: level)
        }
        let logger = Logger(label: "terminus")
        Self.raiseFileLimit(configuration: &configuration, logger: logger)

        let gateway = try Gateway(configuration: configuration, logger: logger)
        // Whatever a library reports through swift-metrics lands in the gateway's scrape too.
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: gateway.metrics.registry))
        if let material {
            Self.printDevelopmentBanner(material: material, configuration: configuration, logger: logger)
        } else {
            logger.info(
                "configuration loaded",
                metadata: ["file": "\(self.config ?? "")", "instance": "\(configuration.instanceID)"]
            )
        }
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: gateway)], logger: logger)
        )
        let grace = configuration.drainGrace
        let reloadable = self.config != nil
        let command = self
        if reloadable { gateway.configurationSource.replace(with: { try command.loadConfiguration().0 }) }
        // SIGHUP reloads. The first SIGTERM (or SIGINT) drains; a second one exits at once.
        // Whatever the backends do, the process is gone `drain.grace` plus `Self.exitMargin`
        // after the first.
        let signals = Task {
            var received = 0
            for await signal in await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup) {
                if signal == .sighup {
                    if reloadable {
                        logger.info("SIGHUP: reloading the configuration")
                        gateway.reload { try command.loadConfiguration().0 }
                    } else {
                        logger.notice("SIGHUP ignored: development mode has no configuration file to reload")
                    }
                    continue
                }
                received += 1
                if received == 1 {
                    logger.info(
                        "shutdown signal: draining",
                        metadata: [
                            "signal": "\(signal)", "grace_ms": "\(grace.nanoseconds / 1_000_000)",
                        ]
                    )
                    Self.exitAfter(grace + Self.exitMargin, logger: logger)
                    await group.triggerGracefulShutdown()
                } else {
                    logger.warning("second shutdown signal: exiting now", metadata: ["signal": "\(signal)"])
                    Foundation.exit(Self.forcedExitStatus)
                }
            }
        }
        let watcher = Task {
            guard reloadable, configuration.reloadWatchInterval > .zero, let file = command.config else { return }
            await Self.watch(
                [file] + configuration.watchedFiles,
                every: configuration.reloadWatchInterval,
                logger: logger
            ) {
                guard gateway.reload({ try command.loadConfiguration().0 }) else { return nil }
                return [file] + ((try? command.loadConfiguration().0.watchedFiles) ?? [])
            }
        }
        defer {
            signals.cancel()
            watcher.cancel()
        }
        try await group.run()
    }

    /// Reloads when a watched file changed: a Kubernetes ConfigMap or Secret update swaps the
    /// `..data` symlink, so each path is looked at through its links (device, inode, size,
    /// modification time). After a reload the list is taken from the new configuration; a
    /// refused reload is not retried until a file changes again.
    static func watch(
        _ files: [String],
        every interval: TimeAmount,
        logger: Logger,
        reload: @escaping @Sendable () -> [String]?
    ) async {
        var files = files
        var seen = files.map(Self.fingerprint)
        while !Task.isCancelled {
            try? await Task.sleep(for: .nanoseconds(interval.nanoseconds))
            let now = files.map(Self.fingerprint)
            guard now != seen else { continue }
            let changed = zip(files, zip(seen, now)).filter { $1.0 != $1.1 }.map(\.0)
            logger.info("configuration files changed; reloading", metadata: ["files": "\(changed)"])
            if let next = reload() { files = next }
            seen = files.map(Self.fingerprint)
        }
    }

    /// What identifies a file's content without reading it (through its links: the file a
    /// `..data` swap points to now); nil when it cannot be read.
    static func fingerprint(_ path: String) -> [String]? {
        let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: resolved) else { return nil }
        return [
            resolved, "\(attributes[.systemFileNumber] ?? "")", "\(attributes[.size] ?? "")",
            "\((attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)",
        ]
    }

    /// How far past `drain.grace` the process may still be running after the first signal.
    static let exitMargin = TimeAmount.seconds(2)
    /// The exit status when the drain was cut short (a second signal, or the margin passed).
    static let forcedExitStatus: Int32 = 2

    /// A watchdog on its own thread: the graceful shutdown has bounds of its own (every part
    /// stops by `drain.grace`); this holds even if one of them is wrong.
    static func exitAfter(_ delay: TimeAmount, logger: Logger) {
        let thread = Thread {
            Thread.sleep(forTimeInterval: Double(delay.nanoseconds) / 1e9)
            logger.error(
                "graceful shutdown did not finish within drain.grace; exiting",
                metadata: ["after_ms": "\(delay.nanoseconds / 1_000_000)"]
            )
            Foundation.exit(Self.forcedExitStatus)
        }
        thread.start()
    }

    static func raiseFileLimit(configuration: inout GatewayConfiguration, logger: Logger) {
        guard let (before, after) = FileDescriptorLimit.raiseToHardLimit() else {
            logger.warning("cannot read the open-file limit")
            return
        }
        let capacity = FileDescriptorLimit.connectionCapacity(
            softLimit: after,
            reserved: configuration.reservedDescriptors
        )
        let configured = configuration.edge.maxConnections
        // Connections beyond the capacity could only fail at accept (EMFILE), and would take the
        // descriptors that health probes, the API and backends need: the cap never exceeds it.
        configuration.edge.maxConnections = max(
            1,
            configuration.maxConnectionsConfigured ? min(configured, capacity) : capacity
        )
        logger.info(
            "open-file limit",
            metadata: [
                "soft_before": "\(before)", "soft_now": "\(after)",
                "reserved": "\(configuration.reservedDescriptors)",
                "connection_capacity": "\(capacity)",
                "max_connections": "\(configuration.edge.maxConnections)",
            ]
        )
        if configuration.maxConnectionsConfigured && capacity < configured {
            logger.warning(
                "limits.max_connections is above what the open-file limit allows; using the capacity instead",
                metadata: ["configured": "\(configured)", "connection_capacity": "\(capacity)"]
            )
        }
    }

    static func printDevelopmentBanner(
        material: DevelopmentMode.Material,
        configuration: GatewayConfiguration,
        logger: Logger
    ) {
        logger.warning(
            "DEVELOPMENT MODE: no --config given. Loopback only, development certificate, generated device secret, logging sink. Not for production.",
            metadata: [
                "device_listen": "\(configuration.deviceListen)",
                "ca": "\(material.caFile)",
                "files": "\(material.created ? "created" : "reused") in \(material.directory)",
            ]
        )
        var executable = CommandLine.arguments.first ?? "terminus"
        let cwd = FileManager.default.currentDirectoryPath + "/"
        if executable.hasPrefix(cwd) { executable = String(executable.dropFirst(cwd.count)) }
        let line =
            "\(executable) device publish --gateway \(configuration.deviceListen) --ca \(material.caFile)"
            + " --device demo-device-1 --secret \(material.deviceSecret) --topic demo/hello --message 'hello, terminus'"
        var banner = """

            Terminus is running in development mode.
              devices connect to  \(configuration.deviceListen) over TLS (CA: \(material.caFile))
              device secret       \(material.deviceSecret)  (valid for any device id)
            Publish a message from a second terminal:

              \(line)

            """
        if let api = configuration.apiListen {
            let listen =
                "\(executable) device listen --gateway \(configuration.deviceListen) --ca \(material.caFile)"
                + " --device demo-device-1 --secret \(material.deviceSecret)"
            let send =
                "\(executable) send --api \(api) --token \(material.apiToken)"
                + " --device demo-device-1 --topic demo/command --message 'hello, device'"
            banner += """

                Backend API (Send, Kick, Presence) on \(api), plaintext, bearer token \(material.apiToken)
                Keep a device connected in one terminal, push to it from another:

                  \(listen)
                  \(send)

                """
        }
        banner += "\n"
        FileHandle.standardError.write(Data(banner.utf8))
    }
}
