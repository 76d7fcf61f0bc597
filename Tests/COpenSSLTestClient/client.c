#include "COpenSSLTestClient.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

struct terminus_test_client {
    SSL_CTX *context;
    SSL *ssl;
    BIO *input;
    BIO *output;
    uint8_t data[1 << 17];
    size_t data_length;
};

terminus_test_client *terminus_test_client_new(const char *ca_file, const char *host, int version,
                                               const char *ciphers) {
    return terminus_test_client_new_resuming(ca_file, host, version, ciphers, NULL);
}

terminus_test_client *terminus_test_client_new_resuming(const char *ca_file, const char *host, int version,
                                                        const char *ciphers, void *session) {
    struct terminus_test_client *client = calloc(1, sizeof(*client));
    if (client == NULL) return NULL;
    client->context = SSL_CTX_new(TLS_client_method());
    if (client->context == NULL) goto fail;
    int v = version == 0x0304 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(client->context, v);
    SSL_CTX_set_max_proto_version(client->context, v);
    if (ciphers != NULL) {
        int ok = v == TLS1_3_VERSION ? SSL_CTX_set_ciphersuites(client->context, ciphers)
                                     : SSL_CTX_set_cipher_list(client->context, ciphers);
        if (ok != 1) goto fail;
    }
    if (SSL_CTX_load_verify_locations(client->context, ca_file, NULL) != 1) goto fail;
    SSL_CTX_set_verify(client->context, SSL_VERIFY_PEER, NULL);
    client->ssl = SSL_new(client->context);
    client->input = BIO_new(BIO_s_mem());
    client->output = BIO_new(BIO_s_mem());
    if (client->ssl == NULL || client->input == NULL || client->output == NULL) goto fail;
    BIO_set_mem_eof_return(client->input, -1);
    SSL_set_bio(client->ssl, client->input, client->output);
    SSL_set_tlsext_host_name(client->ssl, host);
    SSL_set1_host(client->ssl, host);
    SSL_set_connect_state(client->ssl);
    if (session != NULL && SSL_set_session(client->ssl, (SSL_SESSION *)session) != 1) goto fail;
    SSL_do_handshake(client->ssl);  // writes the ClientHello
    return client;
fail:
    terminus_test_client_free(client);
    return NULL;
}

void terminus_test_client_free(terminus_test_client *client) {
    if (client == NULL) return;
    if (client->ssl != NULL) {
        SSL_free(client->ssl);
    } else {
        BIO_free(client->input);
        BIO_free(client->output);
    }
    SSL_CTX_free(client->context);
    free(client);
}

int terminus_test_client_receive(terminus_test_client *client, const uint8_t *bytes, size_t length) {
    if (length > 0 && BIO_write(client->input, bytes, (int)length) != (int)length) return -1;
    if (!SSL_is_init_finished(client->ssl)) {
        int result = SSL_do_handshake(client->ssl);
        if (result != 1) {
            int reason = SSL_get_error(client->ssl, result);
            return reason == SSL_ERROR_WANT_READ ? 1 : -1;
        }
    }
    for (;;) {
        size_t room = sizeof(client->data) - client->data_length;
        if (room == 0) return 1;
        size_t read = 0;
        int result = SSL_read_ex(client->ssl, client->data + client->data_length, room, &read);
        if (result == 1) {
            client->data_length += read;
            continue;
        }
        int reason = SSL_get_error(client->ssl, result);
        if (reason == SSL_ERROR_WANT_READ) return 1;
        if (reason == SSL_ERROR_ZERO_RETURN) return 0;
        return -1;
    }
}

int terminus_test_client_connected(terminus_test_client *client) { return SSL_is_init_finished(client->ssl); }

int terminus_test_client_cipher(terminus_test_client *client) {
    const SSL_CIPHER *cipher = SSL_get_current_cipher(client->ssl);
    return cipher == NULL ? 0 : SSL_CIPHER_get_protocol_id(cipher);
}

size_t terminus_test_client_take_output(terminus_test_client *client, uint8_t *buffer, size_t capacity) {
    int read = BIO_read(client->output, buffer, (int)capacity);
    return read > 0 ? (size_t)read : 0;
}

size_t terminus_test_client_take_data(terminus_test_client *client, uint8_t *buffer, size_t capacity) {
    size_t count = client->data_length < capacity ? client->data_length : capacity;
    memcpy(buffer, client->data, count);
    memmove(client->data, client->data + count, client->data_length - count);
    client->data_length -= count;
    return count;
}

int terminus_test_client_send(terminus_test_client *client, const uint8_t *bytes, size_t length) {
    size_t written = 0;
    return SSL_write_ex(client->ssl, bytes, length, &written) == 1 && written == length;
}

int terminus_test_client_key_update(terminus_test_client *client, int requested) {
    if (SSL_key_update(client->ssl, requested ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) != 1) return 0;
    // The KeyUpdate goes out with the next write; an empty SSL_do_handshake sends it now.
    return SSL_do_handshake(client->ssl) == 1;
}

int terminus_test_client_close(terminus_test_client *client) { return SSL_shutdown(client->ssl) >= 0; }

int terminus_test_client_renegotiate(terminus_test_client *client) {
    if (SSL_renegotiate(client->ssl) != 1) return 0;
    SSL_do_handshake(client->ssl);  // writes the ClientHello
    return 1;
}

void *terminus_test_client_session(terminus_test_client *client) {
    SSL_SESSION *session = SSL_get1_session(client->ssl);
    if (session != NULL && !SSL_SESSION_is_resumable(session)) {
        SSL_SESSION_free(session);
        return NULL;
    }
    return session;
}

void terminus_test_client_session_free(void *session) { SSL_SESSION_free((SSL_SESSION *)session); }

int terminus_test_client_resumed(terminus_test_client *client) { return SSL_session_reused(client->ssl); }
