// A thin module over the system OpenSSL 3 (libssl-dev): what the lean TLS engine
// (TerminusLeanTLS) calls for its handshake and TLS 1.2's PRF. Only what Swift cannot call
// directly is here (OpenSSL's macros, and loops over EVP calls that would cost a crossing
// each). Records are sealed and opened with swift-nio-ssl's BoringSSL (`AEADContext`).
#ifndef C_TERMINUS_OPENSSL_H
#define C_TERMINUS_OPENSSL_H

#include <stddef.h>
#include <stdint.h>

// MARK: the handshake, by OpenSSL over memory BIOs

/// A server TLS context (OpenSSL's SSL_CTX): certificate, key, client CA, versions, suites.
/// Shared by every event loop; made once, off the loops.
typedef struct terminus_tls_server terminus_tls_server;

/// `client_auth`: 0 none, 1 optional, 2 required (then `client_ca_file` is needed).
/// `min_version`: 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3). `tickets`: TLS 1.3 session tickets sent
/// after each handshake (0: none, and no TLS 1.2 tickets either). Ticket keys are derived from
/// `ticket_secret` (32 to 64 bytes; NULL or shorter: 32 random bytes, this process's own) for
/// each period of `rotation_seconds` of wall-clock time; a ticket resumes during the period
/// after the one it was made in at most. NULL on failure, with the reason in `error`.
terminus_tls_server *terminus_tls_server_new(const char *certificate_chain_file, const char *private_key_file,
                                             const char *client_ca_file, int client_auth, int min_version,
                                             size_t tickets, const uint8_t *ticket_secret,
                                             size_t ticket_secret_length, int64_t rotation_seconds, char *error,
                                             size_t error_capacity);
/// Moves the ticket keys' clock by `seconds` (tests of rotation).
void terminus_tls_server_set_clock_offset(terminus_tls_server *server, int64_t seconds);
void terminus_tls_server_free(terminus_tls_server *server);

/// One connection's handshake: OpenSSL's SSL object between two memory BIOs. Freed as soon
/// as the handshake is over; the record layer keeps only the keys it yields.
typedef struct terminus_tls_handshake terminus_tls_handshake;

terminus_tls_handshake *terminus_tls_handshake_new(terminus_tls_server *server);
void terminus_tls_handshake_free(terminus_tls_handshake *handshake);

enum {
    TERMINUS_HANDSHAKE_FAILED = -1,
    TERMINUS_HANDSHAKE_WANTS_MORE = 0,
    TERMINUS_HANDSHAKE_DONE = 1,
};

/// Gives OpenSSL `length` bytes the peer sent (the caller feeds one record at a time, so that
/// OpenSSL never reads past the handshake) and runs the handshake as far as they allow.
int terminus_tls_handshake_advance(terminus_tls_handshake *handshake, const uint8_t *bytes, size_t length);

/// What OpenSSL has written for the peer (handshake records, tickets, an alert): its length,
/// and a copy of up to `capacity` bytes of it, which are then taken.
size_t terminus_tls_handshake_pending_output(terminus_tls_handshake *handshake);
size_t terminus_tls_handshake_read_output(terminus_tls_handshake *handshake, uint8_t *buffer, size_t capacity);

/// Why the handshake failed (OpenSSL's error queue), into `buffer`.
void terminus_tls_handshake_error(terminus_tls_handshake *handshake, char *buffer, size_t capacity);

/// What the record layer needs once the handshake is done.
typedef struct {
    /// 0x0304 (TLS 1.3) or 0x0303 (TLS 1.2).
    uint16_t version;
    /// The IANA id of the negotiated suite (0x1301, 0xC02B, ...).
    uint16_t cipher_suite;
    /// TLS 1.3: the application traffic secrets (`secret_length` bytes each).
    uint8_t client_secret[48];
    uint8_t server_secret[48];
    uint8_t secret_length;
    /// TLS 1.3: records OpenSSL already wrote with the server's application keys (its
    /// NewSessionTicket messages): the server's next record has this sequence number.
    uint64_t server_application_records;
    /// TLS 1.2: the key block (RFC 5246, 6.3) from the master secret by the TLS PRF, cut as
    /// client key, server key, client IV, server IV (`key_length` and `iv_length` bytes each;
    /// an AEAD suite has no MAC keys).
    uint8_t key_block[88];
    uint8_t key_length;
    uint8_t iv_length;
    /// Whether the handshake resumed a session (a ticket).
    int resumed;
} terminus_tls_keys;

/// Fills `keys`; 1 when the handshake is done and every secret was seen, else 0.
int terminus_tls_handshake_keys(terminus_tls_handshake *handshake, terminus_tls_keys *keys);

/// TLS 1.2's PRF (RFC 5246, 5) with SHA-256, or SHA-384 when `sha384` is 1: `length` bytes of
/// PRF(secret, label, seed) into `output`. 1 on success.
int terminus_tls12_prf(int sha384, const uint8_t *secret, size_t secret_length, const char *label,
                       const uint8_t *seed, size_t seed_length, uint8_t *output, size_t length);

/// The peer's certificate in DER, verified by OpenSSL (mTLS): its length (0 when there is
/// none), copied when `capacity` allows.
size_t terminus_tls_handshake_peer_certificate(terminus_tls_handshake *handshake, uint8_t *buffer, size_t capacity);

#endif
