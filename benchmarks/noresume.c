/*
 * Loaded into wrk with LD_PRELOAD for the full-handshake case.
 *
 * wrk closes a TLS connection with SSL_shutdown + SSL_clear and reuses the SSL object, and
 * SSL_clear keeps the session: every reconnection offers it, so with `Connection: close` a
 * server that issues tickets does resumed handshakes (no certificate signature) instead of
 * full ones. Dropping the session after SSL_clear makes every connection a full handshake.
 * No OpenSSL headers needed: the types stay opaque.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *s, SSL_SESSION *session);

int SSL_clear(SSL *s) {
    static int (*real_clear)(SSL *) = NULL;
    if (real_clear == NULL) {
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    }
    int done = real_clear(s);
    SSL_set_session(s, NULL);
    return done;
}
