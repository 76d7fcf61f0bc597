package import TerminusSessions

/// The session directory of a pod in a fleet: this pod's sessions, held locally as before,
/// each registration and removal also written to the fleet's registry in Redis (queued,
/// coalesced: `SessionRegistry`). Lookups answer for this pod's sessions; where another pod's
/// device is, `SessionRegistry.lookup` tells.
package final class FleetSessionDirectory: SessionDirectory {
    package let local: LocalSessionDirectory
    package let registry: SessionRegistry
    /// Told of each session, so that its stored messages come before new ones.
    package let store: DeviceMessageStore?

    package init(local: LocalSessionDirectory, registry: SessionRegistry, store: DeviceMessageStore? = nil) {
        self.local = local
        self.registry = registry
        self.store = store
    }

    package func register(_ handle: SessionHandle) -> SessionHandle? {
        // Before the registry's write, which tells the store what waits for the device.
        self.store?.sessionStarted(handle)
        let displaced = self.local.register(handle)
        self.registry.registered(handle)
        return displaced
    }

    package func unregister(_ handle: SessionHandle) {
        self.local.unregister(handle)
        self.store?.sessionEnded(handle)
        // Deleted in Redis only while the record is still this connection's.
        self.registry.unregistered(handle)
    }

    package func lookup(_ deviceID: String) -> SessionHandle? { self.local.lookup(deviceID) }

    package var count: Int { self.local.count }

    package func all() -> [SessionHandle] { self.local.all() }
}
