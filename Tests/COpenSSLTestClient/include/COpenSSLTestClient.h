// An OpenSSL 3 TLS client over memory BIOs, for the lean engine's interoperability tests:
// OpenSSL's own client (key updates included) against Terminus's record layer, in process.
#ifndef C_OPENSSL_TEST_CLIENT_H
#define C_OPENSSL_TEST_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct terminus_test_client terminus_test_client;

/// A client that trusts `ca_file`, checks the name `host`, and speaks only `version`
/// (0x0303 or 0x0304), offering only `ciphers` when not NULL (OpenSSL's cipher list for TLS 1.2,
/// its ciphersuites for TLS 1.3). NULL on failure.
terminus_test_client *terminus_test_client_new(const char *ca_file, const char *host, int version,
                                               const char *ciphers);
/// The same, offering `session` (from `terminus_test_client_session`) for resumption.
terminus_test_client *terminus_test_client_new_resuming(const char *ca_file, const char *host, int version,
                                                        const char *ciphers, void *session);
/// The client's session with its ticket, once it has one (TLS 1.3: after reading the server's
/// NewSessionTicket), or NULL; free it with `terminus_test_client_session_free`.
void *terminus_test_client_session(terminus_test_client *client);
void terminus_test_client_session_free(void *session);
/// 1 when the handshake resumed the offered session.
int terminus_test_client_resumed(terminus_test_client *client);
/// The suite negotiated (its IANA id), once connected.
int terminus_test_client_cipher(terminus_test_client *client);
void terminus_test_client_free(terminus_test_client *client);

/// Feeds bytes the server sent, then advances: the handshake until it is done, then reads
/// what application data arrived into the client's buffer. Returns 1 while all is well, 0 when
/// the peer closed (close_notify), -1 on an error.
int terminus_test_client_receive(terminus_test_client *client, const uint8_t *bytes, size_t length);
/// 1 once the handshake is done.
int terminus_test_client_connected(terminus_test_client *client);
/// Bytes for the server: copied into `buffer`, up to `capacity`; returns how many.
size_t terminus_test_client_take_output(terminus_test_client *client, uint8_t *buffer, size_t capacity);
/// Application data received so far: copied and cleared; returns how many bytes.
size_t terminus_test_client_take_data(terminus_test_client *client, uint8_t *buffer, size_t capacity);
/// Sends application data (SSL_write). 1 on success.
int terminus_test_client_send(terminus_test_client *client, const uint8_t *bytes, size_t length);
/// Sends a KeyUpdate (`requested`: ask the server to update its keys too). 1 on success.
int terminus_test_client_key_update(terminus_test_client *client, int requested);
/// Starts a renegotiation (TLS 1.2: a new ClientHello). 1 on success.
int terminus_test_client_renegotiate(terminus_test_client *client);
/// Sends close_notify. 1 on success.
int terminus_test_client_close(terminus_test_client *client);

#endif
