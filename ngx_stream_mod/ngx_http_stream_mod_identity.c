
/*
 * Identity: the caller's Stream user token (a JWS compact HS256 token), or
 * a trusted NGINX variable; and the server token sent upstream.
 */


#include "ngx_http_stream_mod.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>


/* base64url of a 32-byte HMAC-SHA256, no padding */
#define NGX_HTTP_STREAM_MOD_SIG_LEN  43


static ngx_int_t ngx_http_stream_mod_token(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
static ngx_int_t ngx_http_stream_mod_variable_identity(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
static json_t *ngx_http_stream_mod_decode_segment(ngx_http_request_t *r,
    u_char *p, size_t len);
static ngx_int_t ngx_http_stream_mod_sign(ngx_http_stream_mod_secret_t *key,
    u_char *data,
    size_t len, u_char *out);
static ngx_int_t ngx_http_stream_mod_time_claim(json_t *claims,
    const char *name, double *value);
static ngx_int_t ngx_http_stream_mod_unauthorized(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_int_t code, const char *message);
static ngx_http_stream_mod_token_entry_t *ngx_http_stream_mod_token_lookup(
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_str_t *token);
static void ngx_http_stream_mod_token_store(
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_str_t *token, json_t *claims,
    ngx_uint_t api_secret, ngx_log_t *log);


ngx_int_t
ngx_http_stream_mod_identify(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    if (lcf->identity == NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN) {
        return ngx_http_stream_mod_token(r, lcf, ctx);
    }

    return ngx_http_stream_mod_variable_identity(r, lcf, ctx);
}


static ngx_int_t
ngx_http_stream_mod_variable_identity(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_http_variable_value_t  *vv;

    vv = ngx_http_get_indexed_variable(r, lcf->identity);

    if (vv == NULL || vv->not_found || vv->len == 0) {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_AUTH,
                                                "unauthenticated");
    }

    if (!ngx_http_stream_mod_valid_id(vv->data, vv->len,
                                      NGX_HTTP_STREAM_MOD_MAX_USER_ID))
    {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_AUTH,
                                                "invalid user id");
    }

    ctx->user.data = ngx_pnalloc(r->pool, vv->len);
    if (ctx->user.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(ctx->user.data, vv->data, vv->len);
    ctx->user.len = vv->len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_token(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    u_char              *p, *last, *dot1, *dot2;
    u_char               sig[NGX_HTTP_STREAM_MOD_SIG_LEN];
    double               now, leeway, t;
    json_t              *header, *claims, *v;
    ngx_str_t                           token;
    ngx_int_t                           rc;
    ngx_uint_t                          i, n, verified;
    ngx_http_stream_mod_secret_t       *key;
    ngx_http_stream_mod_token_entry_t  *entry;

    if (r->headers_in.authorization == NULL) {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_AUTH,
                                                "missing user token");
    }

    token = r->headers_in.authorization->value;

    /* Stream's SDKs send the raw token; "Bearer <jwt>" is accepted too */

    if (token.len > 7 && ngx_strncasecmp(token.data, (u_char *) "Bearer ", 7)
                         == 0)
    {
        token.data += 7;
        token.len -= 7;
    }

    if (token.len == 0 || token.len > NGX_HTTP_STREAM_MOD_MAX_TOKEN) {
        goto malformed;
    }

    entry = ngx_http_stream_mod_token_lookup(lcf, &token);

    if (entry) {
        /* verified before by this worker: the claims are known good */
        claims = json_incref(entry->claims);

        if (ngx_http_stream_mod_json_pool(r->pool, claims) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->claims = claims;
        ctx->api_secret_token = entry->api_secret;

        goto times;
    }

    /* three non-empty base64url segments, nothing else */

    dot1 = NULL;
    dot2 = NULL;
    last = token.data + token.len;

    for (p = token.data; p < last; p++) {

        if (*p == '.') {
            if (dot1 == NULL) {
                dot1 = p;

            } else if (dot2 == NULL) {
                dot2 = p;

            } else {
                goto malformed;
            }

            continue;
        }

        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
        {
            goto malformed;
        }
    }

    if (dot1 == NULL || dot2 == NULL || dot1 == token.data
        || dot2 == dot1 + 1 || dot2 + 1 == last)
    {
        goto malformed;
    }

    /*
     * Nearly every token carries the same header: one that passed the
     * checks below is not decoded again.  Its bytes alone decide, so no
     * signature is involved yet.
     */

    n = dot1 - token.data;

    if (n != lcf->jwt_header.len
        || ngx_memcmp(token.data, lcf->jwt_header.data, n) != 0)
    {
        header = ngx_http_stream_mod_decode_segment(r, token.data, n);
        if (header == NULL) {
            goto malformed;
        }

        v = json_object_get(header, "alg");

        if (!json_is_string(v)
            || ngx_strcmp(json_string_value(v), "HS256") != 0
            || json_object_get(header, "crit") != NULL)
        {
            return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_AUTH,
                                                "only HS256 tokens are "
                                                "accepted");
        }

        if (lcf->jwt_header.data && n <= NGX_HTTP_STREAM_MOD_JWT_HEADER) {
            ngx_memcpy(lcf->jwt_header.data, token.data, n);
            lcf->jwt_header.len = n;
        }
    }

    /*
     * Compare base64url text, not decoded bytes: a signature has exactly
     * one encoding that verifies.
     */

    if (last - (dot2 + 1) != NGX_HTTP_STREAM_MOD_SIG_LEN) {
        goto bad_signature;
    }

    verified = 0;

    if (lcf->token_secrets) {
        key = lcf->token_secrets->elts;
        n = lcf->token_secrets->nelts;

    } else {
        key = lcf->secret;
        n = 1;
    }

    for (i = 0; i < n; i++) {
        if (ngx_http_stream_mod_sign(&key[i], token.data, dot2 - token.data,
                                     sig)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /* try every key, so timing does not tell which one matched */
        if (CRYPTO_memcmp(sig, dot2 + 1, NGX_HTTP_STREAM_MOD_SIG_LEN) == 0) {
            verified = 1;

            ctx->api_secret_token =
                (key[i].secret.len == lcf->secret->secret.len
                 && CRYPTO_memcmp(key[i].secret.data, lcf->secret->secret.data,
                                  key[i].secret.len) == 0);
        }
    }

    if (!verified) {
        goto bad_signature;
    }

    claims = ngx_http_stream_mod_decode_segment(r, dot1 + 1, dot2 - dot1 - 1);
    if (claims == NULL) {
        goto malformed;
    }

    ctx->claims = claims;

    v = json_object_get(claims, "user_id");

    if (v == NULL) {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_AUTH,
                                                "token has no user_id; "
                                                "server tokens are not "
                                                "accepted");
    }

    if (!json_is_string(v)
        || !ngx_http_stream_mod_valid_id((u_char *) json_string_value(v),
                                         json_string_length(v),
                                         NGX_HTTP_STREAM_MOD_MAX_USER_ID))
    {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_AUTH,
                                                "invalid user_id claim");
    }

times:

    now = (double) ngx_time();
    leeway = (double) lcf->leeway;

    rc = ngx_http_stream_mod_time_claim(claims, "exp", &t);
    if (rc == NGX_ERROR) {
        goto malformed;
    }

    if (rc == NGX_OK && now > t + leeway) {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_EXPIRED,
                                                "token has expired");
    }

    rc = ngx_http_stream_mod_time_claim(claims, "nbf", &t);
    if (rc == NGX_ERROR) {
        goto malformed;
    }

    if (rc == NGX_OK && now + leeway < t) {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_NOT_YET,
                                                "token is not valid yet");
    }

    rc = ngx_http_stream_mod_time_claim(claims, "iat", &t);
    if (rc == NGX_ERROR) {
        goto malformed;
    }

    if (rc == NGX_OK && now + leeway < t) {
        return ngx_http_stream_mod_unauthorized(r, ctx,
                                                NGX_HTTP_STREAM_MOD_E_IAT,
                                                "token used before issued "
                                                "at (iat)");
    }

    if (entry == NULL) {
        ngx_http_stream_mod_token_store(lcf, &token, claims,
                                        ctx->api_secret_token,
                                        r->connection->log);
    }

    v = json_object_get(claims, "user_id");

    ctx->user.data = (u_char *) json_string_value(v);
    ctx->user.len = json_string_length(v);
    ctx->token = token;

    return NGX_OK;

malformed:

    return ngx_http_stream_mod_unauthorized(r, ctx, NGX_HTTP_STREAM_MOD_E_AUTH,
                                            "malformed user token");

bad_signature:

    return ngx_http_stream_mod_unauthorized(r, ctx,
                                            NGX_HTTP_STREAM_MOD_E_SIGNATURE,
                                            "token signature is invalid");
}


static ngx_int_t
ngx_http_stream_mod_unauthorized(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_int_t code, const char *message)
{
    return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                    NGX_HTTP_UNAUTHORIZED, code, "%s",
                                    message);
}


/* a JSON object, duplicate keys refused; freed with the request pool */

static json_t *
ngx_http_stream_mod_decode_segment(ngx_http_request_t *r, u_char *p,
    size_t len)
{
    json_t              *json;
    ngx_str_t            src, dst;
    json_error_t         err;

    src.data = p;
    src.len = len;

    dst.data = ngx_pnalloc(r->pool, ngx_base64_decoded_length(len));
    if (dst.data == NULL) {
        return NULL;
    }

    if (ngx_decode_base64url(&dst, &src) != NGX_OK) {
        return NULL;
    }

    json = json_loadb((char *) dst.data, dst.len, JSON_REJECT_DUPLICATES,
                      &err);
    if (json == NULL) {
        return NULL;
    }

    if (!json_is_object(json)) {
        json_decref(json);
        return NULL;
    }

    if (ngx_http_stream_mod_json_pool(r->pool, json) != NGX_OK) {
        return NULL;
    }

    return json;
}


/* NGX_OK: present and numeric; NGX_DECLINED: absent; NGX_ERROR: not a number */

static ngx_int_t
ngx_http_stream_mod_time_claim(json_t *claims, const char *name,
    double *value)
{
    json_t  *v;

    v = json_object_get(claims, name);

    if (v == NULL) {
        return NGX_DECLINED;
    }

    if (!json_is_number(v)) {
        return NGX_ERROR;
    }

    *value = json_number_value(v);

    return NGX_OK;
}


/*
 * HMAC-SHA256 from a context keyed once at configuration: OpenSSL 3's
 * one-shot HMAC() fetches the algorithm and sets the key on every call.
 * EVP_MAC_init() without a key restarts from the keyed state; each worker
 * process has its own copy of the context, and nothing else uses it
 * between init and final.
 */

static ngx_int_t
ngx_http_stream_mod_sign(ngx_http_stream_mod_secret_t *key, u_char *data,
    size_t len, u_char *out)
{
    u_char     mac[EVP_MAX_MD_SIZE];
    size_t     maclen;
    ngx_str_t  src, dst;

    maclen = 0;

    if (EVP_MAC_init(key->mac, NULL, 0, NULL) != 1
        || EVP_MAC_update(key->mac, data, len) != 1
        || EVP_MAC_final(key->mac, mac, &maclen, sizeof(mac)) != 1)
    {
        return NGX_ERROR;
    }

    src.data = mac;
    src.len = maclen;
    dst.data = out;

    ngx_encode_base64url(&dst, &src);

    return (dst.len == NGX_HTTP_STREAM_MOD_SIG_LEN) ? NGX_OK : NGX_ERROR;
}


/* the JWT of {"server":true}, as Stream's server SDKs make it */

ngx_int_t
ngx_http_stream_mod_make_server_token(ngx_pool_t *pool,
    ngx_http_stream_mod_secret_t *secret)
{
    ngx_str_t  *token;

    u_char     *p;
    size_t      len;
    ngx_str_t   header, payload, src;

    token = &secret->server_token;

    ngx_str_set(&header, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}");
    ngx_str_set(&payload, "{\"server\":true}");

    len = ngx_base64_encoded_length(header.len) + 1
          + ngx_base64_encoded_length(payload.len) + 1
          + NGX_HTTP_STREAM_MOD_SIG_LEN;

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    token->data = p;

    src.data = p;
    ngx_encode_base64url(&src, &header);
    p += src.len;
    *p++ = '.';

    src.data = p;
    ngx_encode_base64url(&src, &payload);
    p += src.len;

    if (ngx_http_stream_mod_sign(secret, token->data, p - token->data, p + 1)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    *p++ = '.';
    p += NGX_HTTP_STREAM_MOD_SIG_LEN;

    token->len = p - token->data;

    return NGX_OK;
}


static void
ngx_http_stream_mod_secret_cleanup(void *data)
{
    ngx_http_stream_mod_secret_t  *secret = data;

    OPENSSL_cleanse(secret->secret.data, secret->secret.len);
    EVP_MAC_CTX_free(secret->mac);
}


/*
 * The first line of the file is the secret.  Read at configuration time
 * only: never in the request path.
 */

char *
ngx_http_stream_mod_read_secret(ngx_conf_t *cf, ngx_str_t *path,
    ngx_http_stream_mod_secret_t *s)
{
    ngx_str_t  *secret = &s->secret;

    u_char              *p, buf[4096];
    ssize_t              n;
    ngx_fd_t             fd;
    ngx_file_info_t      fi;
    ngx_pool_cleanup_t  *cln;

    if (ngx_conf_full_name(cf->cycle, path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(path->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", path->data);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%s\" failed", path->data);
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    if (ngx_file_access(&fi) & S_IROTH) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "secret file \"%s\" is readable by others",
                           path->data);
    }

    n = ngx_read_fd(fd, buf, sizeof(buf));
    ngx_close_file(fd);

    if (n == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_read_fd_n " \"%s\" failed", path->data);
        return NGX_CONF_ERROR;
    }

    p = ngx_strlchr(buf, buf + n, '\n');
    if (p == NULL) {
        p = buf + n;
    }

    if (p > buf && p[-1] == '\r') {
        p--;
    }

    if (p == buf) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "secret file \"%s\" is empty", path->data);
        OPENSSL_cleanse(buf, sizeof(buf));
        return NGX_CONF_ERROR;
    }

    secret->len = p - buf;
    secret->data = ngx_pnalloc(cf->pool, secret->len);
    if (secret->data == NULL) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(secret->data, buf, secret->len);
    OPENSSL_cleanse(buf, sizeof(buf));

    /*
     * The cleanup keeps its own copy: "s" may live in an array that moves
     * when it grows.  The secret's bytes and the MAC context do not move.
     */

    cln = ngx_pool_cleanup_add(cf->pool, sizeof(ngx_http_stream_mod_secret_t));
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_stream_mod_secret_cleanup;
    ngx_memzero(cln->data, sizeof(ngx_http_stream_mod_secret_t));

    if (ngx_http_stream_mod_secret_init(s, cf->log) != NGX_OK) {
        EVP_MAC_CTX_free(s->mac);
        OPENSSL_cleanse(secret->data, secret->len);
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(cln->data, s, sizeof(ngx_http_stream_mod_secret_t));

    return NGX_CONF_OK;
}


/* the HMAC context of a secret, keyed once */

ngx_int_t
ngx_http_stream_mod_secret_init(ngx_http_stream_mod_secret_t *s,
    ngx_log_t *log)
{
    EVP_MAC     *mac;
    OSSL_PARAM   params[2];

    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) {
        ngx_log_error(NGX_LOG_EMERG, log, 0, "EVP_MAC_fetch(HMAC) failed");
        return NGX_ERROR;
    }

    s->mac = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac);

    if (s->mac == NULL) {
        return NGX_ERROR;
    }

    params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *) "SHA256",
                                                 0);
    params[1] = OSSL_PARAM_construct_end();

    if (EVP_MAC_init(s->mac, s->secret.data, s->secret.len, params) != 1) {
        ngx_log_error(NGX_LOG_EMERG, log, 0, "EVP_MAC_init() failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The token cache: direct-mapped, per worker, per location configuration.
 * Entries are compared in constant time, so a cached token (someone
 * else's) cannot be guessed byte by byte from response times.
 */

static ngx_uint_t
ngx_http_stream_mod_token_slot(ngx_str_t *token)
{
    size_t  n;

    /* the tail is the signature: random for every token worth caching */
    n = ngx_min(token->len, 16);

    return ngx_hash_key(token->data + token->len - n, n)
           % NGX_HTTP_STREAM_MOD_TOKEN_CACHE;
}


static ngx_http_stream_mod_token_entry_t *
ngx_http_stream_mod_token_lookup(ngx_http_stream_mod_loc_conf_t *lcf,
    ngx_str_t *token)
{
    ngx_http_stream_mod_token_entry_t  *e;

    if (lcf->token_cache == NULL) {
        return NULL;
    }

    e = &lcf->token_cache[ngx_http_stream_mod_token_slot(token)];

    if (e->token == NULL || e->len != token->len
        || CRYPTO_memcmp(e->token, token->data, token->len) != 0)
    {
        return NULL;
    }

    return e;
}


static void
ngx_http_stream_mod_token_store(ngx_http_stream_mod_loc_conf_t *lcf,
    ngx_str_t *token, json_t *claims, ngx_uint_t api_secret, ngx_log_t *log)
{
    u_char                             *p;
    ngx_http_stream_mod_token_entry_t  *e;

    if (lcf->token_cache == NULL) {
        return;
    }

    p = ngx_alloc(token->len, log);
    if (p == NULL) {
        return;
    }

    e = &lcf->token_cache[ngx_http_stream_mod_token_slot(token)];

    if (e->token) {
        ngx_free(e->token);
        json_decref(e->claims);
    }

    ngx_memcpy(p, token->data, token->len);

    e->token = p;
    e->len = token->len;
    e->claims = json_incref(claims);
    e->api_secret = api_secret;
}


static void
ngx_http_stream_mod_token_cache_cleanup(void *data)
{
    ngx_http_stream_mod_token_entry_t *cache = data;

    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_STREAM_MOD_TOKEN_CACHE; i++) {
        if (cache[i].token) {
            ngx_free(cache[i].token);
            json_decref(cache[i].claims);
            cache[i].token = NULL;
        }
    }
}


ngx_int_t
ngx_http_stream_mod_token_cache_init(ngx_conf_t *cf,
    ngx_http_stream_mod_loc_conf_t *lcf)
{
    ngx_pool_cleanup_t  *cln;

    lcf->token_cache = ngx_pcalloc(cf->pool,
                                   NGX_HTTP_STREAM_MOD_TOKEN_CACHE
                                   * sizeof(ngx_http_stream_mod_token_entry_t));
    if (lcf->token_cache == NULL) {
        return NGX_ERROR;
    }

    lcf->jwt_header.data = ngx_pnalloc(cf->pool,
                                       NGX_HTTP_STREAM_MOD_JWT_HEADER);
    if (lcf->jwt_header.data == NULL) {
        return NGX_ERROR;
    }

    lcf->jwt_header.len = 0;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_stream_mod_token_cache_cleanup;
    cln->data = lcf->token_cache;

    return NGX_OK;
}
