#include "CTerminusOpenSSL.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct terminus_tls_server {
    SSL_CTX *context;
};

struct terminus_tls_handshake {
    SSL *ssl;
    BIO *input;   // what the peer sent, fed record by record
    BIO *output;  // what OpenSSL writes for the peer
    int done;
    uint8_t client_secret[48];
    uint8_t server_secret[48];
    uint8_t secret_length;
    int have_client_secret;
    int have_server_secret;
    uint64_t tickets_written;
};

static int handshake_index = -1;

static void set_error(char *error, size_t capacity, const char *what) {
    if (error == NULL || capacity == 0) return;
    unsigned long code = ERR_peek_last_error();
    if (code != 0) {
        char reason[256];
        ERR_error_string_n(code, reason, sizeof(reason));
        snprintf(error, capacity, "%s: %s", what, reason);
    } else {
        snprintf(error, capacity, "%s", what);
    }
    ERR_clear_error();
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// Parses "LABEL <client random> <secret>" lines (the NSS key log format OpenSSL writes).
static void keylog(const SSL *ssl, const char *line) {
    struct terminus_tls_handshake *handshake = SSL_get_ex_data(ssl, handshake_index);
    if (handshake == NULL) return;
    uint8_t *target = NULL;
    int *flag = NULL;
    const char *rest = NULL;
    if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) {
        target = handshake->client_secret;
        flag = &handshake->have_client_secret;
        rest = line + 24;
    } else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) {
        target = handshake->server_secret;
        flag = &handshake->have_server_secret;
        rest = line + 24;
    } else {
        return;
    }
    const char *secret = strchr(rest, ' ');
    if (secret == NULL) return;
    secret++;
    size_t digits = strlen(secret);
    if (digits % 2 != 0 || digits / 2 > 48) return;
    for (size_t i = 0; i < digits / 2; i++) {
        int high = hex_value(secret[2 * i]), low = hex_value(secret[2 * i + 1]);
        if (high < 0 || low < 0) return;
        target[i] = (uint8_t)(high * 16 + low);
    }
    handshake->secret_length = (uint8_t)(digits / 2);
    *flag = 1;
}

/// Counts the NewSessionTicket messages OpenSSL writes after the handshake (TLS 1.3): each is a
/// record under the server's application keys.
static void message(int write_p, int version, int content_type, const void *buffer, size_t length, SSL *ssl,
                    void *argument) {
    (void)version;
    (void)argument;
    struct terminus_tls_handshake *handshake = SSL_get_ex_data(ssl, handshake_index);
    if (handshake == NULL || !write_p || content_type != SSL3_RT_HANDSHAKE || length < 1) return;
    if (((const uint8_t *)buffer)[0] == SSL3_MT_NEWSESSION_TICKET && SSL_version(ssl) == TLS1_3_VERSION) {
        handshake->tickets_written++;
    }
}

terminus_tls_server *terminus_tls_server_new(const char *certificate_chain_file, const char *private_key_file,
                                             const char *client_ca_file, int client_auth, int min_version,
                                             size_t tickets, char *error, size_t error_capacity) {
    if (handshake_index < 0) {
        handshake_index = SSL_get_ex_new_index(0, "terminus handshake", NULL, NULL, NULL);
    }
    SSL_CTX *context = SSL_CTX_new(TLS_server_method());
    if (context == NULL) {
        set_error(error, error_capacity, "SSL_CTX_new");
        return NULL;
    }
    int ok = SSL_CTX_set_min_proto_version(context, min_version == 0x0304 ? TLS1_3_VERSION : TLS1_2_VERSION) &&
             // TLS 1.2: ECDHE with an AEAD only, the suites the lean record layer protects.
             SSL_CTX_set_cipher_list(context, "ECDHE+AESGCM:ECDHE+CHACHA20") &&
             SSL_CTX_set_ciphersuites(context, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256") &&
             SSL_CTX_set1_groups_list(context, "X25519:P-256:P-384");
    if (!ok) {
        set_error(error, error_capacity, "cipher suites or groups");
        SSL_CTX_free(context);
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(context, certificate_chain_file) != 1) {
        set_error(error, error_capacity, "certificate chain");
        SSL_CTX_free(context);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(context, private_key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(context) != 1) {
        set_error(error, error_capacity, "private key");
        SSL_CTX_free(context);
        return NULL;
    }
    if (client_auth != 0) {
        STACK_OF(X509_NAME) *names = client_ca_file ? SSL_load_client_CA_file(client_ca_file) : NULL;
        if (client_ca_file == NULL || names == NULL ||
            SSL_CTX_load_verify_locations(context, client_ca_file, NULL) != 1) {
            set_error(error, error_capacity, "client CA");
            SSL_CTX_free(context);
            return NULL;
        }
        SSL_CTX_set_client_CA_list(context, names);
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | (client_auth == 2 ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    }
    // No renegotiation (TLS 1.2), no compression, the server's order of suites.
    uint64_t options = SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE;
    if (tickets == 0) options |= SSL_OP_NO_TICKET;
    SSL_CTX_set_options(context, options);
    SSL_CTX_set_num_tickets(context, tickets);
    // Sessions live in tickets only: nothing kept in a server-side cache.
    SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_keylog_callback(context, keylog);
    struct terminus_tls_server *server = calloc(1, sizeof(*server));
    if (server == NULL) {
        SSL_CTX_free(context);
        return NULL;
    }
    server->context = context;
    return server;
}

void terminus_tls_server_free(terminus_tls_server *server) {
    if (server == NULL) return;
    SSL_CTX_free(server->context);
    free(server);
}

terminus_tls_handshake *terminus_tls_handshake_new(terminus_tls_server *server) {
    struct terminus_tls_handshake *handshake = calloc(1, sizeof(*handshake));
    if (handshake == NULL) return NULL;
    handshake->ssl = SSL_new(server->context);
    handshake->input = BIO_new(BIO_s_mem());
    handshake->output = BIO_new(BIO_s_mem());
    if (handshake->ssl == NULL || handshake->input == NULL || handshake->output == NULL) {
        BIO_free(handshake->input);
        BIO_free(handshake->output);
        SSL_free(handshake->ssl);
        free(handshake);
        return NULL;
    }
    // An empty memory BIO reads as "retry later", not as the end of the stream.
    BIO_set_mem_eof_return(handshake->input, -1);
    SSL_set_bio(handshake->ssl, handshake->input, handshake->output);
    SSL_set_ex_data(handshake->ssl, handshake_index, handshake);
    SSL_set_msg_callback(handshake->ssl, message);
    SSL_set_accept_state(handshake->ssl);
    return handshake;
}

void terminus_tls_handshake_free(terminus_tls_handshake *handshake) {
    if (handshake == NULL) return;
    SSL_free(handshake->ssl);  // frees both BIOs
    OPENSSL_cleanse(handshake->client_secret, sizeof(handshake->client_secret));
    OPENSSL_cleanse(handshake->server_secret, sizeof(handshake->server_secret));
    free(handshake);
}

int terminus_tls_handshake_advance(terminus_tls_handshake *handshake, const uint8_t *bytes, size_t length) {
    if (handshake->done) return TERMINUS_HANDSHAKE_DONE;
    if (length > 0 && BIO_write(handshake->input, bytes, (int)length) != (int)length) return TERMINUS_HANDSHAKE_FAILED;
    ERR_clear_error();
    int result = SSL_do_handshake(handshake->ssl);
    if (result == 1) {
        handshake->done = 1;
        return TERMINUS_HANDSHAKE_DONE;
    }
    int reason = SSL_get_error(handshake->ssl, result);
    if (reason == SSL_ERROR_WANT_READ) return TERMINUS_HANDSHAKE_WANTS_MORE;
    return TERMINUS_HANDSHAKE_FAILED;
}

size_t terminus_tls_handshake_pending_output(terminus_tls_handshake *handshake) {
    return BIO_ctrl_pending(handshake->output);
}

size_t terminus_tls_handshake_read_output(terminus_tls_handshake *handshake, uint8_t *buffer, size_t capacity) {
    if (capacity == 0) return 0;
    int read = BIO_read(handshake->output, buffer, capacity > 0x7fffffff ? 0x7fffffff : (int)capacity);
    return read > 0 ? (size_t)read : 0;
}

void terminus_tls_handshake_error(terminus_tls_handshake *handshake, char *buffer, size_t capacity) {
    (void)handshake;
    set_error(buffer, capacity, "TLS handshake failed");
}

int terminus_tls_handshake_keys(terminus_tls_handshake *handshake, terminus_tls_keys *keys) {
    if (!handshake->done) return 0;
    memset(keys, 0, sizeof(*keys));
    SSL *ssl = handshake->ssl;
    keys->version = (uint16_t)SSL_version(ssl);
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    if (cipher == NULL) return 0;
    keys->cipher_suite = SSL_CIPHER_get_protocol_id(cipher);
    keys->resumed = SSL_session_reused(ssl);
    if (keys->version == TLS1_3_VERSION) {
        if (!handshake->have_client_secret || !handshake->have_server_secret) return 0;
        memcpy(keys->client_secret, handshake->client_secret, handshake->secret_length);
        memcpy(keys->server_secret, handshake->server_secret, handshake->secret_length);
        keys->secret_length = handshake->secret_length;
        keys->server_application_records = handshake->tickets_written;
        return 1;
    }
    SSL_SESSION *session = SSL_get_session(ssl);
    if (session == NULL || SSL_SESSION_get_master_key(session, keys->master_secret, 48) != 48) return 0;
    if (SSL_get_client_random(ssl, keys->client_random, 32) != 32) return 0;
    if (SSL_get_server_random(ssl, keys->server_random, 32) != 32) return 0;
    return 1;
}

size_t terminus_tls_handshake_peer_certificate(terminus_tls_handshake *handshake, uint8_t *buffer, size_t capacity) {
    X509 *certificate = SSL_get0_peer_certificate(handshake->ssl);
    if (certificate == NULL) return 0;
    int length = i2d_X509(certificate, NULL);
    if (length <= 0) return 0;
    if ((size_t)length <= capacity && buffer != NULL) {
        unsigned char *cursor = buffer;
        i2d_X509(certificate, &cursor);
    }
    return (size_t)length;
}
