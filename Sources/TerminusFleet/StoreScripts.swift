package import TerminusRedis

/// The scripts of the offline message store. Per device (prefix `terminus:` by default):
///
/// - `{prefix}store:{id}`: a Redis stream, one entry per stored message in the order stored,
///   fields `e` (expiry, Unix ms), `t` (topic), `p` (payload). The key expires with its
///   latest message.
/// - `{prefix}store:{id}:bytes`: the topics' and payloads' bytes in the stream (the byte cap).
///
/// Expired entries are removed by `take` (a delivery), by `add` when a cap is reached, or with
/// the key (it expires with its latest message); a script reads at most the stream's whole
/// length, which the caps bound (`fleet.store.max_messages`, `max_bytes`).
package enum StoreScripts {
    /// KEYS: stream, bytes, device record. ARGV: now (ms), expiry (ms), topic, payload, max
    /// messages, max bytes, prefix, this pod, device id. Appends the message unless a cap would
    /// be passed (expired messages are removed first, then not counted). Returns `{'OK' | 'FULL', pod}`, `pod` being the live pod that holds the device
    /// (false when none); when that is another pod, tells it (`stored|{id}` on its channel).
    package static let add = RedisScript(
        """
        local now = tonumber(ARGV[1])
        local count = redis.call('XLEN', KEYS[1])
        local bytes = tonumber(redis.call('GET', KEYS[2]) or '0')
        local size = #ARGV[3] + #ARGV[4]
        if count + 1 > tonumber(ARGV[5]) or bytes + size > tonumber(ARGV[6]) then
          -- At a cap: expired messages do not count.
          count = 0
          for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
            local f = entry[2]
            if tonumber(f[2]) <= now then
              redis.call('XDEL', KEYS[1], entry[1])
              bytes = bytes - #f[4] - #f[6]
            else
              count = count + 1
            end
          end
          if bytes < 0 then bytes = 0 end
        end
        local pod = false
        local record = redis.call('GET', KEYS[3])
        if record then
          local holder = string.match(record, '^([^|]*)')
          if redis.call('EXISTS', ARGV[7] .. 'pod:' .. holder) == 1 then pod = holder end
        end
        if count + 1 > tonumber(ARGV[5]) or bytes + size > tonumber(ARGV[6]) then
          if count == 0 then
            redis.call('DEL', KEYS[1], KEYS[2])
          else
            redis.call('SET', KEYS[2], bytes, 'KEEPTTL')
          end
          return {'FULL', pod}
        end
        redis.call('XADD', KEYS[1], '*', 'e', ARGV[2], 't', ARGV[3], 'p', ARGV[4])
        redis.call('SET', KEYS[2], bytes + size, 'KEEPTTL')
        local expiry = tonumber(ARGV[2])
        local ttl = redis.call('PTTL', KEYS[1])
        if ttl < 0 or now + ttl < expiry then
          redis.call('PEXPIREAT', KEYS[1], expiry)
          redis.call('PEXPIREAT', KEYS[2], expiry)
        end
        if pod and pod ~= ARGV[8] then
          redis.call('PUBLISH', ARGV[7] .. 'pod:' .. pod .. ':control', 'stored|' .. ARGV[9])
        end
        return {'OK', pod}
        """
    )

    /// KEYS: stream, bytes. ARGV: now (ms), at most how many. The oldest live messages, as a
    /// flat list `id, topic, payload, …`; removes the expired ones it passes.
    package static let take = RedisScript(
        """
        local now = tonumber(ARGV[1])
        local limit = tonumber(ARGV[2])
        local out = {}
        local freed = 0
        for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
          local f = entry[2]
          if tonumber(f[2]) <= now then
            redis.call('XDEL', KEYS[1], entry[1])
            freed = freed + #f[4] + #f[6]
          elseif #out < limit * 3 then
            table.insert(out, entry[1])
            table.insert(out, f[4])
            table.insert(out, f[6])
          end
        end
        if freed > 0 then redis.call('DECRBY', KEYS[2], freed) end
        if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
        return out
        """
    )

    /// KEYS: stream, bytes. ARGV: entry id. Removes one message (the device acknowledged it).
    /// Returns 1 when it was there.
    package static let remove = RedisScript(
        """
        local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
        if #entries == 0 then return 0 end
        local f = entries[1][2]
        redis.call('XDEL', KEYS[1], ARGV[1])
        if redis.call('XLEN', KEYS[1]) == 0 then
          redis.call('DEL', KEYS[1], KEYS[2])
        else
          redis.call('DECRBY', KEYS[2], #f[4] + #f[6])
        end
        return 1
        """
    )

    /// KEYS: stream. ARGV: now (ms). How many live messages are stored (expired ones are left
    /// for the scripts that write).
    package static let count = RedisScript(
        """
        local now = tonumber(ARGV[1])
        local count = 0
        for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
          if tonumber(entry[2][2]) > now then count = count + 1 end
        end
        return count
        """
    )
}
