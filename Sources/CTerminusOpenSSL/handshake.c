#include "CTerminusOpenSSL.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <time.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/// One ticket key: what encrypts (AES-256-CBC) and authenticates (HMAC-SHA256) session
/// tickets in one rotation period, and the name that tickets carry to find it again.
struct ticket_key {
    int64_t epoch;
    uint8_t name[16];
    uint8_t aes[32];
    uint8_t hmac[32];
};

struct terminus_tls_server {
    SSL_CTX *context;
    /// Ticket keys are derived from this secret for each rotation period (epoch = wall-clock
    /// seconds / rotation): every process holding the same secret derives the same keys, so a
    /// ticket from one pod resumes on another, and keys rotate without any coordination.
    uint8_t ticket_secret[64];
    size_t ticket_secret_length;
    int64_t rotation_seconds;
    int64_t clock_offset;  // tests move the clock
    pthread_mutex_t lock;  // guards the cached keys (any event loop may ask)
    struct ticket_key keys[2];
    int key_count;
    EVP_CIPHER *ticket_cipher;
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
static int server_index = -1;
static pthread_once_t indices_once = PTHREAD_ONCE_INIT;

static void make_indices(void) {
    handshake_index = SSL_get_ex_new_index(0, "terminus handshake", NULL, NULL, NULL);
    server_index = SSL_CTX_get_ex_new_index(0, "terminus server", NULL, NULL, NULL);
}

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

/// HMAC-SHA256(secret, "terminus ticket key" || epoch || label): 32 bytes.
static int derive(const struct terminus_tls_server *server, int64_t epoch, uint8_t label, uint8_t output[32]) {
    uint8_t data[19 + 8 + 1];
    memcpy(data, "terminus ticket key", 19);
    for (int i = 0; i < 8; i++) data[19 + i] = (uint8_t)((uint64_t)epoch >> (56 - 8 * i));
    data[27] = label;
    size_t length = 0;
    return EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, server->ticket_secret, server->ticket_secret_length, data,
                     sizeof(data), output, 32, &length) != NULL &&
           length == 32;
}

/// The key of `epoch`, derived once and kept while it is current or previous. Under the lock.
static const struct ticket_key *key_for(struct terminus_tls_server *server, int64_t epoch) {
    for (int i = 0; i < server->key_count; i++) {
        if (server->keys[i].epoch == epoch) return &server->keys[i];
    }
    struct ticket_key key;
    uint8_t name[32];
    key.epoch = epoch;
    if (!derive(server, epoch, 1, name) || !derive(server, epoch, 2, key.aes) || !derive(server, epoch, 3, key.hmac)) {
        return NULL;
    }
    memcpy(key.name, name, 16);
    // Keep the newest two: the current period's key and the one before it.
    if (server->key_count < 2) {
        server->keys[server->key_count++] = key;
        return &server->keys[server->key_count - 1];
    }
    int older = server->keys[0].epoch < server->keys[1].epoch ? 0 : 1;
    if (epoch < server->keys[older].epoch) return NULL;  // older than both: never asked for
    server->keys[older] = key;
    return &server->keys[older];
}

static int64_t epoch_now(const struct terminus_tls_server *server) {
    return ((int64_t)time(NULL) + server->clock_offset) / server->rotation_seconds;
}

/// Session tickets (TLS 1.2 and 1.3) under the current period's key; a ticket made under the
/// previous period's key still resumes, and is replaced by a new one (return 2); older tickets
/// fall back to a full handshake.
static int ticket_key_callback(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                               EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac, int encrypt) {
    struct terminus_tls_server *server = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), server_index);
    if (server == NULL) return -1;
    struct ticket_key key;
    int result = 0;
    pthread_mutex_lock(&server->lock);
    int64_t epoch = epoch_now(server);
    if (encrypt) {
        const struct ticket_key *current = key_for(server, epoch);
        if (current != NULL) {
            key = *current;
            result = 1;
        } else {
            result = -1;
        }
    } else {
        for (int64_t candidate = epoch; candidate >= epoch - 1 && result == 0; candidate--) {
            const struct ticket_key *found = key_for(server, candidate);
            if (found != NULL && CRYPTO_memcmp(found->name, key_name, 16) == 0) {
                key = *found;
                result = candidate == epoch ? 1 : 2;
            }
        }
    }
    pthread_mutex_unlock(&server->lock);
    if (result <= 0) return result;
    if (encrypt) {
        memcpy(key_name, key.name, 16);
        if (RAND_bytes(iv, 16) != 1) return -1;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, 32),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_CipherInit_ex(cipher, server->ticket_cipher, NULL, key.aes, iv, encrypt) == 1 &&
             EVP_MAC_CTX_set_params(mac, params) == 1;
    OPENSSL_cleanse(&key, sizeof(key));
    return ok ? result : -1;
}

terminus_tls_server *terminus_tls_server_new(const char *certificate_chain_file, const char *private_key_file,
                                             const char *client_ca_file, int client_auth, int min_version,
                                             size_t tickets, const uint8_t *ticket_secret,
                                             size_t ticket_secret_length, int64_t rotation_seconds, char *error,
                                             size_t error_capacity) {
    pthread_once(&indices_once, make_indices);
    if (handshake_index < 0 || server_index < 0) {
        set_error(error, error_capacity, "OpenSSL's ex_data indices");
        return NULL;
    }
    if (rotation_seconds <= 0 || ticket_secret_length > 64) {
        set_error(error, error_capacity, "ticket key rotation or secret");
        return NULL;
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
    server->rotation_seconds = rotation_seconds;
    pthread_mutex_init(&server->lock, NULL);
    if (ticket_secret != NULL && ticket_secret_length >= 32) {
        memcpy(server->ticket_secret, ticket_secret, ticket_secret_length);
        server->ticket_secret_length = ticket_secret_length;
    } else if (RAND_bytes(server->ticket_secret, 32) == 1) {
        server->ticket_secret_length = 32;
    }
    server->ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (server->ticket_secret_length == 0 || server->ticket_cipher == NULL ||
        SSL_CTX_set_ex_data(context, server_index, server) != 1 ||
        SSL_CTX_set_tlsext_ticket_key_evp_cb(context, ticket_key_callback) != 1) {
        set_error(error, error_capacity, "session ticket keys");
        terminus_tls_server_free(server);
        return NULL;
    }
    // A ticket is valid for one rotation period after it is made (its key is kept one more).
    SSL_CTX_set_timeout(context, (long)rotation_seconds);
    return server;
}

void terminus_tls_server_set_clock_offset(terminus_tls_server *server, int64_t seconds) {
    pthread_mutex_lock(&server->lock);
    server->clock_offset = seconds;
    pthread_mutex_unlock(&server->lock);
}

void terminus_tls_server_free(terminus_tls_server *server) {
    if (server == NULL) return;
    SSL_CTX_free(server->context);
    EVP_CIPHER_free(server->ticket_cipher);
    pthread_mutex_destroy(&server->lock);
    OPENSSL_cleanse(server, sizeof(*server));
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
    // TLS 1.2 AEAD suites: AES-GCM has a 4-byte implicit IV (the rest of the nonce is explicit
    // in each record), ChaCha20-Poly1305 a 12-byte one (RFC 7905); the PRF's hash is the suite's.
    int chacha = keys->cipher_suite == 0xCCA8 || keys->cipher_suite == 0xCCA9;
    int aes256 = keys->cipher_suite == 0xC02C || keys->cipher_suite == 0xC030;
    int sha384 = aes256;  // the _SHA384 suites
    keys->key_length = (chacha || aes256) ? 32 : 16;
    keys->iv_length = chacha ? 12 : 4;
    uint8_t master[48];
    uint8_t seed[64];
    SSL_SESSION *session = SSL_get_session(ssl);
    if (session == NULL || SSL_SESSION_get_master_key(session, master, 48) != 48) return 0;
    // key_block = PRF(master_secret, "key expansion", server_random + client_random).
    if (SSL_get_server_random(ssl, seed, 32) != 32 || SSL_get_client_random(ssl, seed + 32, 32) != 32) return 0;
    size_t length = 2 * (size_t)keys->key_length + 2 * (size_t)keys->iv_length;
    int ok = terminus_tls12_prf(sha384, master, 48, "key expansion", seed, 64, keys->key_block, length);
    OPENSSL_cleanse(master, sizeof(master));
    return ok;
}

int terminus_tls12_prf(int sha384, const uint8_t *secret, size_t secret_length, const char *label,
                       const uint8_t *seed, size_t seed_length, uint8_t *output, size_t length) {
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
    if (kdf == NULL) return 0;
    EVP_KDF_CTX *context = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (context == NULL) return 0;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, sha384 ? "SHA384" : "SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)secret, secret_length),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)label, strlen(label)),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)seed, seed_length),
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_KDF_derive(context, output, length, params) == 1;
    EVP_KDF_CTX_free(context);
    return ok;
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
