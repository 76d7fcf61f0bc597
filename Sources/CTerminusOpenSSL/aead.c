#include "CTerminusOpenSSL.h"

#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>

struct terminus_aead_context {
    EVP_CIPHER_CTX *cipher_context;
    EVP_CIPHER *ciphers[4];  // by terminus_aead; [0] unused
    /// The AEAD the context was last initialised with: the next record with the same one only
    /// sets key and nonce, keeping OpenSSL's provider context (no new one per record).
    terminus_aead current;
};

terminus_aead_context *terminus_aead_context_new(void) {
    terminus_aead_context *context = calloc(1, sizeof(*context));
    if (context == NULL) return NULL;
    context->cipher_context = EVP_CIPHER_CTX_new();
    context->ciphers[TERMINUS_AEAD_AES_128_GCM] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    context->ciphers[TERMINUS_AEAD_AES_256_GCM] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    context->ciphers[TERMINUS_AEAD_CHACHA20_POLY1305] = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (context->cipher_context == NULL || context->ciphers[1] == NULL || context->ciphers[2] == NULL ||
        context->ciphers[3] == NULL) {
        terminus_aead_context_free(context);
        return NULL;
    }
    return context;
}

void terminus_aead_context_free(terminus_aead_context *context) {
    if (context == NULL) return;
    EVP_CIPHER_CTX_free(context->cipher_context);
    for (int i = 1; i < 4; i++) EVP_CIPHER_free(context->ciphers[i]);
    free(context);
}

static int aead_crypt(terminus_aead_context *context, terminus_aead aead, const uint8_t *key, const uint8_t *nonce,
                      const uint8_t *aad, size_t aad_length, const uint8_t *input, uint8_t *output, size_t length,
                      uint8_t *tag, int encrypt) {
    if (aead < TERMINUS_AEAD_AES_128_GCM || aead > TERMINUS_AEAD_CHACHA20_POLY1305) return 0;
    if (length > INT_MAX || aad_length > INT_MAX) return 0;
    EVP_CIPHER_CTX *ctx = context->cipher_context;
    int out = 0;
    // Both AEADs take a 12-byte nonce by default.
    const EVP_CIPHER *cipher = context->current == aead ? NULL : context->ciphers[aead];
    if (EVP_CipherInit_ex2(ctx, cipher, key, nonce, encrypt, NULL) != 1) {
        context->current = 0;
        return 0;
    }
    context->current = aead;
    if (aad_length > 0 && EVP_CipherUpdate(ctx, NULL, &out, aad, (int)aad_length) != 1) goto fail;
    if (length > 0 && EVP_CipherUpdate(ctx, output, &out, input, (int)length) != 1) goto fail;
    if (!encrypt && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1) goto fail;
    if (EVP_CipherFinal_ex(ctx, output + length, &out) != 1) goto fail;
    if (encrypt && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1) goto fail;
    return 1;
fail:
    // A failure (a record that does not authenticate, above all) leaves the context to be set up
    // afresh for the next record.
    context->current = 0;
    return 0;
}

int terminus_aead_seal(terminus_aead_context *context, terminus_aead aead, const uint8_t *key,
                       const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                       const uint8_t *input, uint8_t *output, size_t length, uint8_t *tag) {
    return aead_crypt(context, aead, key, nonce, aad, aad_length, input, output, length, tag, 1);
}

int terminus_aead_open(terminus_aead_context *context, terminus_aead aead, const uint8_t *key,
                       const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                       const uint8_t *input, uint8_t *output, size_t length, const uint8_t *tag) {
    return aead_crypt(context, aead, key, nonce, aad, aad_length, input, output, length, (uint8_t *)tag, 0);
}
