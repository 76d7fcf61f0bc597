// An OpenSSL 3 TLS client over memory BIOs, for the lean engine's interoperability tests:
// OpenSSL's own client (key updates included) against Terminus's record layer, in process.
#ifndef C_OPENSSL_TEST_CLIENT_H
#define C_OPENSSL_TEST_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct terminus_test_client terminus_test_client;

/// A client that trusts `ca_file`, checks the name `host`, and speaks only `version`
/// (0x0303 or 0x0304). NULL on failure.
terminus_test_client *terminus_test_client_new(const char *ca_file, const char *host, int version);
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
/// Sends close_notify. 1 on success.
int terminus_test_client_close(terminus_test_client *client);

#endif
