package import TerminusRedis

/// The registry's keys and the Lua scripts that change them atomically. Keys (prefix
/// `terminus:` by default, `fleet.redis.key_prefix`):
///
/// - `{prefix}device:{id}` → `pod|epoch|connected_at_ms|client_address`: where a device is
///   connected. No TTL: it is as valid as its pod's liveness key.
/// - `{prefix}pod:{pod}` → the pod's internal address, with a TTL of the lease: the pod is alive
///   while it exists (refreshed every third of the lease).
/// - `{prefix}pod:{pod}:devices`: a set of the device ids the pod registered, so that the
///   survivors can remove a dead pod's records.
/// - `{prefix}pods`: a sorted set of pod ids scored by their last heartbeat (Unix ms).
/// - `{prefix}store:{id}`, `{prefix}store:{id}:bytes`: messages stored for the device
///   (`StoreScripts`).
///
/// The scripts build key names from their arguments: fine for a standalone or primary/replica
/// Redis (TencentDB for Redis standard edition); not for Redis Cluster.
package enum RegistryScripts {
    /// KEYS: device, this pod's set. ARGV: record, device id, pod, prefix. Sets the record,
    /// adds the id to the pod's set, and takes it out of the previous pod's set; returns the
    /// previous record (nil when there was none) and how many messages are stored for the
    /// device (`StoreScripts`; expired ones included).
    package static let register = RedisScript(
        """
        local previous = redis.call('GET', KEYS[1])
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SADD', KEYS[2], ARGV[2])
        if previous then
          local pod = string.match(previous, '^([^|]*)')
          if pod ~= ARGV[3] then redis.call('SREM', ARGV[4] .. 'pod:' .. pod .. ':devices', ARGV[2]) end
        end
        return {previous, redis.call('XLEN', ARGV[4] .. 'store:' .. ARGV[2])}
        """
    )

    /// KEYS: device, this pod's set. ARGV: record, device id. Deletes the record only while it
    /// is still this connection's (same pod and epoch): a device that reconnected elsewhere
    /// keeps its new record. Returns 1 when deleted.
    package static let unregister = RedisScript(
        """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          redis.call('DEL', KEYS[1])
          redis.call('SREM', KEYS[2], ARGV[2])
          return 1
        end
        return 0
        """
    )

    /// KEYS: device. ARGV: prefix. The device's record and its pod's internal address when the
    /// pod is alive (its liveness key exists), else nil.
    package static let lookup = RedisScript(
        """
        local record = redis.call('GET', KEYS[1])
        if not record then return nil end
        local pod = string.match(record, '^([^|]*)')
        local address = redis.call('GET', ARGV[1] .. 'pod:' .. pod)
        if address then return {record, address} end
        return nil
        """
    )

    /// KEYS: device, the pod's set. ARGV: pod, device id. Deletes the record if it still points
    /// at the pod (any epoch), and takes the id out of the pod's set (a resync forgetting a
    /// device that left while Redis was away).
    package static let sweepOne = RedisScript(
        """
        local record = redis.call('GET', KEYS[1])
        if record and string.match(record, '^([^|]*)') == ARGV[1] then redis.call('DEL', KEYS[1]) end
        redis.call('SREM', KEYS[2], ARGV[2])
        return 1
        """
    )

    /// KEYS: the dead pod's liveness key, its set, the pods set. ARGV: pod, prefix, batch size.
    /// Removes up to `batch` of the dead pod's records (those still pointing at it); when its
    /// set is empty, removes the pod. Does nothing while the pod's liveness key exists (it came
    /// back). Returns how many ids are left.
    package static let sweep = RedisScript(
        """
        if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
        local ids = redis.call('SPOP', KEYS[2], tonumber(ARGV[3]))
        for _, id in ipairs(ids) do
          local key = ARGV[2] .. 'device:' .. id
          local record = redis.call('GET', key)
          if record and string.match(record, '^([^|]*)') == ARGV[1] then redis.call('DEL', key) end
        end
        local left = redis.call('SCARD', KEYS[2])
        if left == 0 then redis.call('ZREM', KEYS[3], ARGV[1]) end
        return left
        """
    )
}
