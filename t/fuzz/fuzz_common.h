
/*
 * Shared scaffolding of the libFuzzer targets: a minimal NGINX runtime
 * (modules counted, cached time, a log that drops everything), a fake
 * connection and request per input, and helpers for the invariants.
 *
 * Each input gets its own pool; destroying it runs the module's cleanups
 * (json_decref of what it parsed), so LeakSanitizer sees any leak.
 */


#ifndef _FUZZ_COMMON_H_INCLUDED_
#define _FUZZ_COMMON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include <stdint.h>

#include "ngx_http_stream_mod.h"


/* the fixed secrets that tokens and seeds are signed with */
#define FUZZ_API_SECRET    "fuzz-api-secret-0123456789abcdef"
#define FUZZ_TOKEN_SECRET  "fuzz-token-secret-rotated-key-2"

/* the verified caller for body and policy inputs */
#define FUZZ_USER          "mod-1"


typedef struct {
    ngx_pool_t                       *pool;
    ngx_http_request_t               *r;
    ngx_http_stream_mod_ctx_t        *ctx;
    ngx_http_stream_mod_loc_conf_t   *lcf;
} fuzz_req_t;


/* once, from LLVMFuzzerInitialize */
void fuzz_init(void);

ngx_log_t *fuzz_log(void);
ngx_cycle_t *fuzz_cycle(void);

/* a pool per input; ngx_destroy_pool() at the end of the input */
ngx_pool_t *fuzz_pool(void);

/* a request on the fake connection, with ctx, loc and main conf set up */
void fuzz_request(ngx_pool_t *pool, fuzz_req_t *fr);

/* a copy of the input in its own allocation; nul: add a '\0' after it */
u_char *fuzz_copy(ngx_pool_t *pool, const void *data, size_t len,
    ngx_uint_t nul);

/* "b64url(header).b64url(payload).b64url(HS256)" */
ngx_int_t fuzz_sign_jwt(ngx_pool_t *pool, const char *key,
    const u_char *header, size_t hlen, const u_char *payload, size_t plen,
    ngx_str_t *out);

/* HS256 of data, base64url, into out (at least 43 bytes) */
ngx_int_t fuzz_hs256(const char *key, const u_char *data, size_t len,
    u_char *out);

/* [A-Za-z0-9@_-]{1,max}, written from the SPEC, not from the module */
ngx_uint_t fuzz_valid_id(const u_char *p, size_t len, size_t max);

/* the action's actor field (F_ACTOR), or NULL */
ngx_http_stream_mod_field_t *fuzz_actor_field(
    ngx_http_stream_mod_action_t *action);

void fuzz_fail(const char *file, int line, const char *cond,
    const char *fmt, ...) __attribute__((noreturn, format(printf, 4, 5)));

#define FUZZ_ASSERT(cond, ...)                                               \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);               \
        }                                                                    \
    } while (0)

#define fuzz_streq(s, lit)                                                   \
    ((s)->len == sizeof(lit) - 1                                             \
     && ngx_memcmp((s)->data, lit, sizeof(lit) - 1) == 0)


#endif /* _FUZZ_COMMON_H_INCLUDED_ */
