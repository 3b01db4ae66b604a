
/*
 * A minimal NGINX runtime for the fuzz targets.  Linked with every object
 * of a static NGINX build (the module included) except main().
 */


#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>


static ngx_log_t          fuzz_log_s;
static ngx_open_file_t    fuzz_log_file;
static ngx_cycle_t        fuzz_cycle_s;
static ngx_connection_t   fuzz_connection;
static ngx_uint_t         fuzz_verbose;


/* drops every line, or copies it to stderr with FUZZ_VERBOSE=1 */

static void
fuzz_log_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf, size_t len)
{
    if (fuzz_verbose) {
        (void) fwrite(buf, 1, len, stderr);
    }
}


void
fuzz_init(void)
{
    ngx_uint_t         n;

    static ngx_uint_t  done;

    if (done) {
        return;
    }

    done = 1;

    fuzz_verbose = (getenv("FUZZ_VERBOSE") != NULL);

    /* a deterministic hash seed: the same input takes the same path */
    json_object_seed(1);

    if (ngx_strerror_init() != NGX_OK) {
        fprintf(stderr, "fuzz: ngx_strerror_init() failed\n");
        abort();
    }

    ngx_time_init();

    ngx_pagesize = getpagesize();
    for (ngx_pagesize_shift = 0; (ngx_pagesize >> ngx_pagesize_shift) > 1;
         ngx_pagesize_shift++)
    {
        /* void */
    }
    ngx_cacheline_size = NGX_CPU_CACHE_LINE;
    ngx_pid = ngx_getpid();
    ngx_use_stderr = 0;

    /* every message is formatted (debug included), then dropped */
    fuzz_log_file.fd = NGX_INVALID_FILE;
    ngx_str_set(&fuzz_log_file.name, "fuzz");
    fuzz_log_s.file = &fuzz_log_file;
    fuzz_log_s.log_level = NGX_LOG_DEBUG | NGX_LOG_DEBUG_ALL;
    fuzz_log_s.writer = fuzz_log_writer;

    if (ngx_preinit_modules() != NGX_OK) {
        fprintf(stderr, "fuzz: ngx_preinit_modules() failed\n");
        abort();
    }

    fuzz_cycle_s.log = &fuzz_log_s;
    fuzz_cycle_s.modules = ngx_modules;
    for (n = 0; ngx_modules[n]; n++) { /* void */ }
    fuzz_cycle_s.modules_n = n;
    ngx_str_set(&fuzz_cycle_s.prefix, "/nonexistent/");
    ngx_str_set(&fuzz_cycle_s.conf_prefix, "/nonexistent/");
    ngx_cycle = &fuzz_cycle_s;

    /* as ngx_http_block() does: sets ngx_http_stream_mod_module.ctx_index */
    ngx_http_max_module = ngx_count_modules(&fuzz_cycle_s, NGX_HTTP_MODULE);

    fuzz_connection.fd = (ngx_socket_t) -1;
    fuzz_connection.log = &fuzz_log_s;
    fuzz_connection.number = 1;
}


ngx_log_t *
fuzz_log(void)
{
    return &fuzz_log_s;
}


ngx_cycle_t *
fuzz_cycle(void)
{
    return &fuzz_cycle_s;
}


ngx_pool_t *
fuzz_pool(void)
{
    ngx_pool_t  *pool;

    fuzz_init();

    pool = ngx_create_pool(NGX_DEFAULT_POOL_SIZE, &fuzz_log_s);
    if (pool == NULL) {
        fprintf(stderr, "fuzz: ngx_create_pool() failed\n");
        abort();
    }

    return pool;
}


static void *
fuzz_must(void *p)
{
    if (p == NULL) {
        fprintf(stderr, "fuzz: out of memory\n");
        abort();
    }

    return p;
}


void
fuzz_request(ngx_pool_t *pool, fuzz_req_t *fr)
{
    ngx_http_request_t               *r;
    ngx_http_stream_mod_ctx_t        *ctx;
    ngx_http_stream_mod_loc_conf_t   *lcf;
    ngx_http_stream_mod_main_conf_t  *mcf;

    r = fuzz_must(ngx_pcalloc(pool, sizeof(ngx_http_request_t)));

    r->pool = pool;
    r->connection = &fuzz_connection;
    r->main = r;
    r->signature = NGX_HTTP_MODULE;
    r->http_version = NGX_HTTP_VERSION_11;
    r->headers_in.content_length_n = -1;
    r->headers_out.content_length_n = -1;

    r->ctx = fuzz_must(ngx_pcalloc(pool,
                                   sizeof(void *) * ngx_http_max_module));
    r->main_conf = fuzz_must(ngx_pcalloc(pool,
                                        sizeof(void *) * ngx_http_max_module));
    r->srv_conf = fuzz_must(ngx_pcalloc(pool,
                                       sizeof(void *) * ngx_http_max_module));
    r->loc_conf = fuzz_must(ngx_pcalloc(pool,
                                       sizeof(void *) * ngx_http_max_module));

    if (ngx_list_init(&r->headers_in.headers, pool, 4,
                      sizeof(ngx_table_elt_t))
        != NGX_OK
        || ngx_list_init(&r->headers_out.headers, pool, 4,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        fuzz_must(NULL);
    }

    /* the loc conf as merge_loc_conf leaves it for "stream_mod on" */

    lcf = fuzz_must(ngx_pcalloc(pool,
                                sizeof(ngx_http_stream_mod_loc_conf_t)));
    lcf->enable = 1;
    ngx_str_set(&lcf->api_key, "fuzz-key");
    lcf->identity = NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN;
    lcf->leeway = 5;
    lcf->max_body_size = 64 * 1024;

    mcf = fuzz_must(ngx_pcalloc(pool,
                                sizeof(ngx_http_stream_mod_main_conf_t)));

    r->loc_conf[ngx_http_stream_mod_module.ctx_index] = lcf;
    r->main_conf[ngx_http_stream_mod_module.ctx_index] = mcf;

    ctx = fuzz_must(ngx_pcalloc(pool, sizeof(ngx_http_stream_mod_ctx_t)));
    ctx->phase_status = NGX_DONE;
    ngx_http_set_ctx(r, ctx, ngx_http_stream_mod_module);

    fr->pool = pool;
    fr->r = r;
    fr->ctx = ctx;
    fr->lcf = lcf;
}


u_char *
fuzz_copy(ngx_pool_t *pool, const void *data, size_t len, ngx_uint_t nul)
{
    u_char  *p;

    /* NGX_DEBUG_PALLOC: an allocation of exactly this size, ASan-checked */
    p = fuzz_must(ngx_pnalloc(pool, len + (nul ? 1 : 0) + (len == 0)));

    if (len) {
        ngx_memcpy(p, data, len);
    }

    if (nul) {
        p[len] = '\0';
    }

    return p;
}


ngx_int_t
fuzz_hs256(const char *key, const u_char *data, size_t len, u_char *out)
{
    u_char        mac[EVP_MAX_MD_SIZE];
    unsigned int  maclen;
    ngx_str_t     src, dst;

    if (HMAC(EVP_sha256(), key, (int) strlen(key), data, len, mac, &maclen)
        == NULL)
    {
        return NGX_ERROR;
    }

    src.data = mac;
    src.len = maclen;
    dst.data = out;
    ngx_encode_base64url(&dst, &src);

    return (dst.len == 43) ? NGX_OK : NGX_ERROR;
}


ngx_int_t
fuzz_sign_jwt(ngx_pool_t *pool, const char *key, const u_char *header,
    size_t hlen, const u_char *payload, size_t plen, ngx_str_t *out)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   src, dst;

    len = ngx_base64_encoded_length(hlen) + 1
          + ngx_base64_encoded_length(plen) + 1 + 43;

    p = fuzz_must(ngx_pnalloc(pool, len));
    out->data = p;

    src.data = (u_char *) header;
    src.len = hlen;
    dst.data = p;
    ngx_encode_base64url(&dst, &src);
    p += dst.len;
    *p++ = '.';

    src.data = (u_char *) payload;
    src.len = plen;
    dst.data = p;
    ngx_encode_base64url(&dst, &src);
    p += dst.len;

    if (fuzz_hs256(key, out->data, p - out->data, p + 1) != NGX_OK) {
        return NGX_ERROR;
    }

    *p++ = '.';
    p += 43;

    out->len = p - out->data;

    return NGX_OK;
}


ngx_uint_t
fuzz_valid_id(const u_char *p, size_t len, size_t max)
{
    size_t  i;

    if (len < 1 || len > max) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '@' || p[i] == '_'
              || p[i] == '-'))
        {
            return 0;
        }
    }

    return 1;
}


ngx_http_stream_mod_field_t *
fuzz_actor_field(ngx_http_stream_mod_action_t *action)
{
    ngx_uint_t  i;

    for (i = 0; i < action->nfields; i++) {
        if (action->fields[i].flags & NGX_HTTP_STREAM_MOD_F_ACTOR) {
            return &action->fields[i];
        }
    }

    return NULL;
}


void
fuzz_fail(const char *file, int line, const char *cond, const char *fmt,
    ...)
{
    va_list  args;

    fprintf(stderr, "\n==fuzz invariant violated== %s:%d: %s\n  ", file,
            line, cond);

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fprintf(stderr, "\n");
    fflush(stderr);

    abort();
}
