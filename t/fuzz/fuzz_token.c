
/*
 * fuzz_token: the user token parser and verifier,
 * ngx_http_stream_mod_identify() with "stream_mod_identity token".
 *
 * Input:
 *   empty                      no Authorization header
 *   0x01 HEADER \0 PAYLOAD     HEADER and PAYLOAD (any bytes, meant to be
 *                              JSON) signed HS256 with the API secret, so
 *                              the claims parser is reached
 *   0x02 HEADER \0 PAYLOAD     the same, sent as "Bearer <jwt>"
 *   0x03 HEADER \0 PAYLOAD     signed with a second key, configured with
 *                              stream_mod_token_secret_file (rotation)
 *   anything else              the raw Authorization header value
 *
 * Invariants (SPEC section 3), abort() when broken:
 *   - the result is NGX_OK, 401 or 500; a 401 carries code 5/40/41/42/43;
 *   - NGX_OK only for a token whose HS256 signature verifies with a
 *     configured key (checked here independently), whose header alg is
 *     "HS256", with a string user_id [A-Za-z0-9@_-]{1,255} that becomes
 *     ctx->user, and exp/nbf/iat within the 5 s leeway;
 *   - ctx->api_secret_token only for tokens signed with the API secret.
 */


#include "fuzz_common.h"


#define FUZZ_MODE_SIGNED   0x01
#define FUZZ_MODE_BEARER   0x02
#define FUZZ_MODE_ROTATED  0x03

#define FUZZ_LEEWAY  5


static ngx_http_stream_mod_secret_t  fuzz_secret;
static ngx_array_t                  *fuzz_token_secrets;


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_pool_t                    *pool;
    ngx_http_stream_mod_secret_t  *s;

    fuzz_init();

    ngx_str_set(&fuzz_secret.secret, FUZZ_API_SECRET);

    /* kept for the whole run */
    pool = ngx_create_pool(NGX_DEFAULT_POOL_SIZE, fuzz_log());

    if (pool == NULL
        || ngx_http_stream_mod_secret_init(&fuzz_secret, fuzz_log()) != NGX_OK
        || ngx_http_stream_mod_make_server_token(pool, &fuzz_secret)
           != NGX_OK)
    {
        abort();
    }

    /* rotation: an old key and the API secret's replacement */
    fuzz_token_secrets = ngx_array_create(pool, 2,
                                         sizeof(ngx_http_stream_mod_secret_t));
    if (fuzz_token_secrets == NULL) {
        abort();
    }

    s = ngx_array_push_n(fuzz_token_secrets, 2);
    if (s == NULL) {
        abort();
    }

    ngx_memzero(s, 2 * sizeof(ngx_http_stream_mod_secret_t));
    ngx_str_set(&s[0].secret, "an-old-key-that-signs-nothing-here");
    ngx_str_set(&s[1].secret, FUZZ_TOKEN_SECRET);

    if (ngx_http_stream_mod_secret_init(&s[0], fuzz_log()) != NGX_OK
        || ngx_http_stream_mod_secret_init(&s[1], fuzz_log()) != NGX_OK)
    {
        abort();
    }

    return 0;
}


#define FUZZ_KEY_NONE   0
#define FUZZ_KEY_API    1
#define FUZZ_KEY_TOKEN  2


/* which configured key, if any, signs this token (strictly, as text) */

static ngx_uint_t
fuzz_signing_key(ngx_str_t *token, ngx_uint_t rotated)
{
    u_char      *dot, sig[43];
    ngx_uint_t   i, dots;

    dot = NULL;
    dots = 0;

    for (i = 0; i < token->len; i++) {
        if (token->data[i] == '.') {
            dots++;
            dot = &token->data[i];
        }
    }

    if (dots != 2 || (size_t) (token->data + token->len - dot - 1) != 43) {
        return FUZZ_KEY_NONE;
    }

    if (rotated) {
        if (fuzz_hs256(FUZZ_TOKEN_SECRET, token->data, dot - token->data, sig)
            == NGX_OK
            && ngx_memcmp(sig, dot + 1, 43) == 0)
        {
            return FUZZ_KEY_TOKEN;
        }

        return FUZZ_KEY_NONE;
    }

    if (fuzz_hs256(FUZZ_API_SECRET, token->data, dot - token->data, sig)
        == NGX_OK
        && ngx_memcmp(sig, dot + 1, 43) == 0)
    {
        return FUZZ_KEY_API;
    }

    return FUZZ_KEY_NONE;
}


static json_t *
fuzz_segment(ngx_pool_t *pool, u_char *p, size_t len)
{
    ngx_str_t  src, dst;

    src.data = p;
    src.len = len;
    dst.data = ngx_pnalloc(pool, ngx_base64_decoded_length(len) + 1);

    if (dst.data == NULL || ngx_decode_base64url(&dst, &src) != NGX_OK) {
        return NULL;
    }

    return json_loadb((char *) dst.data, dst.len, 0, NULL);
}


static void
fuzz_check_time(json_t *claims, const char *name, int sign)
{
    double   now, t;
    json_t  *v;

    v = json_object_get(claims, name);
    if (v == NULL) {
        return;
    }

    FUZZ_ASSERT(json_is_number(v), "%s is not a number", name);

    now = (double) ngx_time();
    t = json_number_value(v);

    if (sign > 0) {
        /* exp: not after */
        FUZZ_ASSERT(!(now > t + FUZZ_LEEWAY), "expired token accepted");

    } else {
        /* nbf, iat: not before */
        FUZZ_ASSERT(!(now + FUZZ_LEEWAY < t), "%s in the future accepted",
                    name);
    }
}


static void
fuzz_check_ok(fuzz_req_t *fr, ngx_str_t *token, ngx_uint_t rotated)
{
    u_char                     *dot1, *dot2;
    json_t                     *header, *claims, *uid, *alg;
    ngx_str_t                   t;
    ngx_uint_t                  key;
    ngx_http_stream_mod_ctx_t  *ctx;

    ctx = fr->ctx;
    t = *token;

    if (t.len > 7 && ngx_strncasecmp(t.data, (u_char *) "Bearer ", 7) == 0) {
        t.data += 7;
        t.len -= 7;
    }

    FUZZ_ASSERT(t.len > 0 && t.len <= NGX_HTTP_STREAM_MOD_MAX_TOKEN,
                "accepted a token of %zu bytes", t.len);

    key = fuzz_signing_key(&t, rotated);
    FUZZ_ASSERT(key != FUZZ_KEY_NONE, "accepted a token no configured key "
                "signs");

    FUZZ_ASSERT(ctx->api_secret_token == (key == FUZZ_KEY_API),
                "api_secret_token is %d for a token signed with key %d",
                (int) ctx->api_secret_token, (int) key);

    FUZZ_ASSERT(ctx->token.len == t.len
                && ngx_memcmp(ctx->token.data, t.data, t.len) == 0,
                "ctx->token is not the token");

    dot1 = ngx_strlchr(t.data, t.data + t.len, '.');
    dot2 = ngx_strlchr(dot1 + 1, t.data + t.len, '.');

    header = fuzz_segment(fr->pool, t.data, dot1 - t.data);
    claims = fuzz_segment(fr->pool, dot1 + 1, dot2 - dot1 - 1);

    FUZZ_ASSERT(json_is_object(header), "accepted a header that is not a "
                "JSON object");
    FUZZ_ASSERT(json_is_object(claims), "accepted claims that are not a "
                "JSON object");

    alg = json_object_get(header, "alg");
    FUZZ_ASSERT(json_is_string(alg) && strcmp(json_string_value(alg), "HS256")
                == 0, "accepted alg other than HS256");

    uid = json_object_get(claims, "user_id");
    FUZZ_ASSERT(json_is_string(uid), "accepted a token without a string "
                "user_id");
    FUZZ_ASSERT(fuzz_valid_id((u_char *) json_string_value(uid),
                              json_string_length(uid),
                              NGX_HTTP_STREAM_MOD_MAX_USER_ID),
                "accepted an invalid user_id");

    FUZZ_ASSERT(ctx->user.len == json_string_length(uid)
                && ngx_memcmp(ctx->user.data, json_string_value(uid),
                              ctx->user.len) == 0,
                "ctx->user \"%.*s\" is not the token's user_id",
                (int) ctx->user.len, ctx->user.data);

    FUZZ_ASSERT(json_is_object(ctx->claims), "no claims kept");

    fuzz_check_time(claims, "exp", 1);
    fuzz_check_time(claims, "nbf", -1);
    fuzz_check_time(claims, "iat", -1);

    json_decref(header);
    json_decref(claims);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char             *sep, *hdr, *payload;
    size_t              hlen, plen;
    ngx_int_t           rc;
    ngx_str_t           token;
    fuzz_req_t          fr;
    ngx_uint_t          mode, rotated;
    ngx_table_elt_t    *h;

    if (size > 2 * NGX_HTTP_STREAM_MOD_MAX_TOKEN) {
        return -1;
    }

    fuzz_request(fuzz_pool(), &fr);

    fr.lcf->identity = NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN;
    fr.lcf->secret = &fuzz_secret;
    fr.lcf->token_secrets = NULL;
    fr.lcf->leeway = FUZZ_LEEWAY;

    mode = size ? data[0] : 0;
    rotated = 0;
    ngx_str_null(&token);

    if (size && mode >= FUZZ_MODE_SIGNED && mode <= FUZZ_MODE_ROTATED) {

        hdr = fuzz_copy(fr.pool, data + 1, size - 1, 0);
        sep = memchr(hdr, '\0', size - 1);

        if (sep) {
            hlen = sep - hdr;
            payload = sep + 1;
            plen = size - 1 - hlen - 1;

        } else {
            hlen = size - 1;
            payload = (u_char *) "";
            plen = 0;
        }

        if (mode == FUZZ_MODE_ROTATED) {
            rotated = 1;
            fr.lcf->token_secrets = fuzz_token_secrets;
        }

        if (fuzz_sign_jwt(fr.pool, rotated ? FUZZ_TOKEN_SECRET
                                           : FUZZ_API_SECRET,
                          hdr, hlen, payload, plen, &token)
            != NGX_OK)
        {
            abort();
        }

        if (mode == FUZZ_MODE_BEARER) {
            u_char  *p = ngx_pnalloc(fr.pool, token.len + 7);

            if (p == NULL) {
                abort();
            }

            ngx_memcpy(p, "Bearer ", 7);
            ngx_memcpy(p + 7, token.data, token.len);
            token.data = p;
            token.len += 7;
        }

    } else if (size) {
        token.data = (u_char *) data;
        token.len = size;
    }

    if (size) {
        /* as NGINX's header parser leaves it: NUL-terminated */
        h = ngx_list_push(&fr.r->headers_in.headers);
        if (h == NULL) {
            abort();
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Authorization");
        h->value.data = fuzz_copy(fr.pool, token.data, token.len, 1);
        h->value.len = token.len;
        h->lowcase_key = (u_char *) "authorization";

        fr.r->headers_in.authorization = h;
        token = h->value;
    }

    rc = ngx_http_stream_mod_identify(fr.r, fr.lcf, fr.ctx);

    FUZZ_ASSERT(rc == NGX_OK || rc == NGX_HTTP_UNAUTHORIZED
                || rc == NGX_HTTP_INTERNAL_SERVER_ERROR,
                "unexpected result %ld", (long) rc);

    if (rc == NGX_HTTP_UNAUTHORIZED) {
        FUZZ_ASSERT(fr.ctx->err_status == NGX_HTTP_UNAUTHORIZED
                    && (fr.ctx->err_code == NGX_HTTP_STREAM_MOD_E_AUTH
                        || fr.ctx->err_code == NGX_HTTP_STREAM_MOD_E_EXPIRED
                        || fr.ctx->err_code == NGX_HTTP_STREAM_MOD_E_NOT_YET
                        || fr.ctx->err_code == NGX_HTTP_STREAM_MOD_E_IAT
                        || fr.ctx->err_code
                           == NGX_HTTP_STREAM_MOD_E_SIGNATURE),
                    "401 with code %ld", (long) fr.ctx->err_code);
        FUZZ_ASSERT(fr.ctx->decision == NGX_HTTP_STREAM_MOD_REJECT
                    && fr.ctx->err_message.len > 0,
                    "401 without a reject decision and a message");
        FUZZ_ASSERT(fr.ctx->user.len == 0, "a caller set on a 401");
    }

    if (rc == NGX_OK) {
        FUZZ_ASSERT(size > 0, "accepted a request without a token");
        fuzz_check_ok(&fr, &token, rotated);
    }

    ngx_destroy_pool(fr.pool);

    return 0;
}
