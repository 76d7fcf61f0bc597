/// Every metric the gateway exports, with its type and help text: the exporter refuses a name
/// that is not here, and `docs/operations.md` lists exactly these (a test compares the two).
package enum MetricCatalogue {
    package enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    package struct Entry: Sendable {
        package let kind: Kind
        package let help: String
    }

    package static let entries: [String: Entry] = [
        // Build and process.
        "terminus_build_info": Entry(kind: .gauge, help: "Always 1; the labels name the version and commit."),
        "terminus_process_cpu_seconds_total": Entry(kind: .counter, help: "CPU time of the process, user and system."),
        "terminus_process_resident_memory_bytes": Entry(kind: .gauge, help: "Resident memory of the process."),
        "terminus_heap_free_bytes": Entry(
            kind: .gauge,
            help: "Free bytes in the malloc heaps at the last reading, resident or returned."
        ),
        "terminus_heap_trims_total": Entry(
            kind: .counter,
            help: "malloc_trim calls: free heap memory returned to the kernel (limits.heap_trim)."
        ),
        "terminus_heap_trim_seconds_total": Entry(kind: .counter, help: "Time spent in malloc_trim."),
        "terminus_process_open_fds": Entry(kind: .gauge, help: "Open file descriptors."),
        "terminus_process_max_fds": Entry(kind: .gauge, help: "The open-files limit (soft), the connection ceiling."),
        "terminus_process_start_time_seconds": Entry(kind: .gauge, help: "Start time of the process, Unix seconds."),
        "terminus_event_loop_lag_seconds": Entry(
            kind: .gauge,
            help: "Time a task queued on the event loop at the scrape waited to run."
        ),
        "terminus_event_loops": Entry(kind: .gauge, help: "Event loops (threads) serving connections."),
        "terminus_event_loop_connections": Entry(kind: .gauge, help: "Device connections open on each event loop."),
        "terminus_event_loop_utilization": Entry(
            kind: .gauge,
            help: "CPU share of the loop's thread over its last sample (device.placement.policy: pack only)."
        ),
        "terminus_event_loop_accepting": Entry(
            kind: .gauge,
            help: "1 while the loop takes new device connections (device.placement.policy: pack only)."
        ),
        "terminus_event_loop_moves_total": Entry(
            kind: .counter,
            help: "Devices a hot event loop asked to reconnect so that a less busy loop takes them (pack only)."
        ),
        // Listeners and connections.
        "terminus_connections": Entry(
            kind: .gauge,
            help: "Open connections by listener and state (device: handshake, authenticating, established)."
        ),
        "terminus_connections_accepted_total": Entry(kind: .counter, help: "Connections accepted by listener."),
        "terminus_connections_refused_total": Entry(
            kind: .counter,
            help:
                "Connections refused before any TLS work, by listener and reason (max_connections, accept_rate, handshakes, per_address)."
        ),
        "terminus_connections_idle_closed_total": Entry(
            kind: .counter,
            help: "Connections closed for idleness (api, admin)."
        ),
        "terminus_accept_failures_total": Entry(kind: .counter, help: "Failed accepts on the device listener."),
        "terminus_device_disconnects_total": Entry(
            kind: .counter,
            help: "Device connections ended, by wire code (PEER_CLOSED: the device closed)."
        ),
        "terminus_tls_handshakes_total": Entry(
            kind: .counter,
            help: "Device TLS handshakes by outcome; failures by the code the connection ended with."
        ),
        "terminus_tls_handshake_duration_seconds": Entry(
            kind: .histogram,
            help: "From accepting a device connection to its completed TLS handshake."
        ),
        "terminus_tls_handshakes_in_progress": Entry(
            kind: .gauge,
            help: "Device TLS handshakes under way (limits.max_handshakes bounds them)."
        ),
        "terminus_reconnect_refusals_total": Entry(
            kind: .counter,
            help: "Authenticated devices refused for reconnecting too often (RECONNECTING_TOO_OFTEN)."
        ),
        "terminus_authentications_total": Entry(kind: .counter, help: "Devices authenticated (HELLO accepted)."),
        "terminus_auth_refusals_total": Entry(kind: .counter, help: "Authentications refused, by wire code."),
        "terminus_protocol_errors_total": Entry(
            kind: .counter,
            help: "Device connections closed for a protocol error, by wire code."
        ),
        // Device traffic.
        "terminus_frames_received_total": Entry(kind: .counter, help: "Frames received from devices."),
        "terminus_frames_sent_total": Entry(kind: .counter, help: "Frames sent to devices."),
        "terminus_received_bytes_total": Entry(kind: .counter, help: "Bytes received from devices (after TLS)."),
        "terminus_sent_bytes_total": Entry(kind: .counter, help: "Bytes written to devices (before TLS)."),
        "terminus_inflate_input_bytes_total": Entry(kind: .counter, help: "Compressed payload bytes inflated."),
        "terminus_inflate_output_bytes_total": Entry(kind: .counter, help: "Bytes those payloads inflated to."),
        "terminus_uplink_messages_total": Entry(
            kind: .counter,
            help: "Uplink messages by QoS and outcome (the ACK status; rate_limited, dropped: never routed)."
        ),
        "terminus_publish_ack_duration_seconds": Entry(
            kind: .histogram,
            help: "QoS 1 uplink: from the loop tick that read the PUBLISH to its outcome (the ACK)."
        ),
        "terminus_read_pauses_total": Entry(
            kind: .counter,
            help: "Times a device's reads were paused at max_pending or max_inflight."
        ),
        "terminus_paused_devices": Entry(kind: .gauge, help: "Devices whose reads are paused now."),
        "terminus_output_stalls_total": Entry(kind: .counter, help: "Times a device stopped reading its output."),
        // Backends.
        "terminus_delivery_batches_total": Entry(
            kind: .counter,
            help:
                "Batches for a service by outcome: answered; failed (stream broke, deadline passed); unsent (no stream open)."
        ),
        "terminus_delivery_batch_size": Entry(kind: .histogram, help: "Messages per batch sent to a service."),
        "terminus_delivery_duration_seconds": Entry(
            kind: .histogram,
            help: "From writing a batch to a service to its answer (or failure)."
        ),
        "terminus_delivery_messages_total": Entry(
            kind: .counter,
            help: "Messages settled by a service, by outcome (accepted, rejected, retry_later)."
        ),
        "terminus_delivery_retries_total": Entry(kind: .counter, help: "Messages queued again for a retry."),
        "terminus_delivery_window_used": Entry(kind: .gauge, help: "Messages taken from the service's window now."),
        "terminus_delivery_window_size": Entry(kind: .gauge, help: "The service's window (messages)."),
        "terminus_delivery_batches_in_flight": Entry(kind: .gauge, help: "Batches written and not yet answered."),
        "terminus_backend_connects_total": Entry(
            kind: .counter,
            help:
                "Connections (each with its Deliver stream) opened to a service, by outcome; all but the first are reconnects."
        ),
        // Downlink and lifecycle.
        "terminus_downlink_sends_total": Entry(
            kind: .counter,
            help: "Send calls (and each device of a SendMany) by outcome."
        ),
        "terminus_draining": Entry(kind: .gauge, help: "1 once the gateway drains (SIGTERM), else 0."),
        "terminus_ready": Entry(kind: .gauge, help: "1 while /readyz answers 200."),
        "terminus_redis_connected": Entry(
            kind: .gauge,
            help: "1 while the connection to Redis (fleet.redis) is open."
        ),
        "terminus_redis_connects_total": Entry(
            kind: .counter,
            help: "Connections made to Redis (1, then one per reconnect)."
        ),
        "terminus_redis_commands_total": Entry(kind: .counter, help: "Commands sent to Redis."),
        "terminus_redis_round_trips_total": Entry(
            kind: .counter,
            help: "Round trips to Redis: one per pipeline, however many commands it holds."
        ),
        "terminus_registry_changes_total": Entry(
            kind: .counter,
            help:
                "Session registry changes (connects, disconnects) by outcome: written, or dropped (replaced by a resync)."
        ),
        "terminus_registry_queued": Entry(kind: .gauge, help: "Session registry changes waiting for the next flush."),
        "terminus_registry_resyncs_total": Entry(
            kind: .counter,
            help: "Times this pod re-registered every session it holds (a new Redis connection)."
        ),
        "terminus_registry_takeovers_total": Entry(
            kind: .counter,
            help: "Sessions this pod ended (GOAWAY REPLACED) because their device connected through another pod."
        ),
        "terminus_fleet_forwards_total": Entry(
            kind: .counter,
            help:
                "Calls forwarded to the pod holding the device, by method and result: answered, unreachable (answered OFFLINE), refused (answered UNAVAILABLE)."
        ),
        "terminus_fleet_peers": Entry(kind: .gauge, help: "Pods this pod holds a connection to for forwarded calls."),
        "terminus_fleet_forwarded_sends_served_total": Entry(
            kind: .counter,
            help: "Sends other pods forwarded to this pod's devices, by outcome."
        ),
        "terminus_store_messages_total": Entry(
            kind: .counter,
            help:
                "Offline store: messages stored, refused as full, delivered from the store (acknowledged), rejected by the device, or failed (the store could not be written)."
        ),
        "terminus_store_replays": Entry(
            kind: .gauge,
            help: "Devices of this pod whose stored messages are being delivered now."
        ),
        "terminus_registry_dead_pods_swept_total": Entry(
            kind: .counter,
            help: "Dead pods whose records this pod removed."
        ),
        "terminus_config_reloads_total": Entry(
            kind: .counter,
            help: "Configuration reloads (SIGHUP, a changed file) by outcome: applied or refused."
        ),
        "terminus_config_last_reload_timestamp_seconds": Entry(
            kind: .gauge,
            help: "Unix time of the last applied reload (0: none since start)."
        ),
    ]
}
