
/*
 * Every error a stream_mod location answers, whether the gate refused the
 * request or NGINX failed to reach the upstream (502, 504, 413 ...), is
 * Stream's APIError JSON.  The gate returns an HTTP status; NGINX then
 * builds its special response and these filters replace its HTML page.
 * CORS headers are added here too, so a browser can read every answer.
 */


#include "ngx_http_stream_mod.h"


#define NGX_HTTP_STREAM_MOD_MAX_MESSAGE  512


static ngx_int_t ngx_http_stream_mod_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_stream_mod_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_stream_mod_error_body(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx);
static ngx_int_t ngx_http_stream_mod_add_header(ngx_http_request_t *r,
    char *name, ngx_str_t *value);
static ngx_int_t ngx_http_stream_mod_cors_headers(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_int_t
ngx_http_stream_mod_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_stream_mod_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_stream_mod_body_filter;

    return NGX_OK;
}


/* record a refusal; the caller returns the status to the phase engine */

ngx_int_t
ngx_http_stream_mod_fail(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_uint_t decision, ngx_int_t status,
    ngx_int_t code, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    p = ngx_pnalloc(r->pool, NGX_HTTP_STREAM_MOD_MAX_MESSAGE);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->err_message.data = p;

    va_start(args, fmt);
    p = ngx_vslprintf(p, p + NGX_HTTP_STREAM_MOD_MAX_MESSAGE, fmt, args);
    va_end(args);

    ctx->err_message.len = p - ctx->err_message.data;
    ctx->err_status = status;
    ctx->err_code = code;
    ctx->decision = decision;
    ctx->reason = ctx->err_message;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "stream_mod: %i %V", status, &ctx->err_message);

    return status;
}


static ngx_int_t
ngx_http_stream_mod_header_filter(ngx_http_request_t *r)
{
    ngx_str_t                        value;
    ngx_table_elt_t                 *acrm;
    ngx_http_stream_mod_ctx_t       *ctx;
    ngx_http_stream_mod_loc_conf_t  *lcf;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    if (ctx == NULL) {
        lcf = ngx_http_get_module_loc_conf(r, ngx_http_stream_mod_module);

        if (!lcf->enable || r->err_status == 0) {
            return ngx_http_next_header_filter(r);
        }

        /*
         * NGINX refused the request before the gate ran (an ACCESS-phase
         * deny, client_max_body_size ...): still an APIError, and still
         * no token in the access log.
         */

        ctx = ngx_http_stream_mod_create_ctx(r);
        if (ctx == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_http_stream_mod_cors_origin(r, lcf, ctx, &acrm);

        if (r->err_status < NGX_HTTP_BAD_REQUEST) {
            /*
             * "/moderation" without the slash: NGINX redirects to the
             * location's prefix; for an API that is an unknown path.
             */
            r->err_status = NGX_HTTP_NOT_FOUND;
            r->headers_out.status = NGX_HTTP_NOT_FOUND;
            ngx_http_clear_location(r);

            (void) ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_NOT_FOUND,
                                            NGX_HTTP_STREAM_MOD_E_NOT_FOUND,
                                            "no moderation endpoint at this "
                                            "path");
        }
    }

    if (ngx_http_stream_mod_cors_headers(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ctx->preflight) {
        return ngx_http_next_header_filter(r);
    }

    if (r->err_status == 0) {
        /* Stream's own answer: passed through unchanged */

        if (ctx->forwarded) {
            ngx_http_stream_mod_count_upstream(r, ctx,
                                               r->headers_out.status);
        }

        return ngx_http_next_header_filter(r);
    }

    /* NGINX's special response: ours, or an upstream failure */

    if (ctx->err_status != (ngx_int_t) r->err_status) {

        ctx->err_status = r->err_status;
        ctx->err_allow.len = 0;
        ctx->rl_headers = 0;

        switch (r->err_status) {

        case NGX_HTTP_BAD_GATEWAY:
            ctx->err_code = NGX_HTTP_STREAM_MOD_E_INTERNAL;
            ngx_str_set(&ctx->err_message, "upstream unavailable");
            break;

        case NGX_HTTP_GATEWAY_TIME_OUT:
            ctx->err_code = NGX_HTTP_STREAM_MOD_E_INTERNAL;
            ngx_str_set(&ctx->err_message, "upstream timed out");
            break;

        case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
            ctx->err_code = NGX_HTTP_STREAM_MOD_E_TOO_BIG;
            ngx_str_set(&ctx->err_message, "request body is too large");
            break;

        case NGX_HTTP_UNAUTHORIZED:
            ctx->err_code = NGX_HTTP_STREAM_MOD_E_AUTH;
            ngx_str_set(&ctx->err_message, "unauthorized");
            break;

        case NGX_HTTP_FORBIDDEN:
            ctx->err_code = NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED;
            ngx_str_set(&ctx->err_message, "forbidden");
            break;

        case NGX_HTTP_NOT_FOUND:
            ctx->err_code = NGX_HTTP_STREAM_MOD_E_NOT_FOUND;
            ngx_str_set(&ctx->err_message, "not found");
            break;

        case NGX_HTTP_REQUEST_TIME_OUT:
            ctx->err_code = 23;
            ngx_str_set(&ctx->err_message, "request timed out");
            break;

        default:
            if (r->err_status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
                ctx->err_code = NGX_HTTP_STREAM_MOD_E_INTERNAL;
                ngx_str_set(&ctx->err_message, "internal error");

            } else {
                ctx->err_code = NGX_HTTP_STREAM_MOD_E_INPUT;
                ngx_str_set(&ctx->err_message, "bad request");
            }
        }

        if (ctx->forwarded) {
            ngx_http_stream_mod_count_upstream(r, ctx, r->err_status);

        } else if (ctx->decision == NGX_HTTP_STREAM_MOD_NONE
                   || ctx->decision == NGX_HTTP_STREAM_MOD_ALLOW)
        {
            /* failed inside the gate: it was not forwarded */
            ctx->decision = NGX_HTTP_STREAM_MOD_REJECT;
            ctx->reason = ctx->err_message;
        }
    }

    if (ngx_http_stream_mod_error_body(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    if (r->err_status == NGX_HTTP_UNAUTHORIZED) {
        ngx_str_set(&value, "Bearer error=\"invalid_token\"");

        if (ngx_http_stream_mod_add_header(r, "WWW-Authenticate", &value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (r->err_status == NGX_HTTP_NOT_ALLOWED && ctx->err_allow.len) {
        if (ngx_http_stream_mod_add_header(r, "Allow", &ctx->err_allow)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ctx->rl_headers) {
        value.data = ngx_pnalloc(r->pool, 4 * NGX_TIME_T_LEN);
        if (value.data == NULL) {
            return NGX_ERROR;
        }

        value.len = ngx_sprintf(value.data, "%T", ctx->retry_after)
                    - value.data;
        if (ngx_http_stream_mod_add_header(r, "Retry-After", &value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        value.data += value.len;
        value.len = ngx_sprintf(value.data, "%i", ctx->rl_limit)
                    - value.data;
        if (ngx_http_stream_mod_add_header(r, "X-RateLimit-Limit", &value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        value.data += value.len;
        value.len = ngx_sprintf(value.data, "%i", ctx->rl_remaining)
                    - value.data;
        if (ngx_http_stream_mod_add_header(r, "X-RateLimit-Remaining", &value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        value.data += value.len;
        value.len = ngx_sprintf(value.data, "%T", ctx->rl_reset)
                    - value.data;
        if (ngx_http_stream_mod_add_header(r, "X-RateLimit-Reset", &value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    r->headers_out.content_length_n = ctx->err_body->last - ctx->err_body->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    ctx->replace_body = 1;

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_stream_mod_error_body(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx)
{
    size_t      len;
    ngx_buf_t  *b;

    len = sizeof("{\"code\":,\"message\":\"\",\"StatusCode\":,"
                 "\"duration\":\"0.00ms\",\"more_info\":\"\","
                 "\"details\":[]}") - 1
          + NGX_INT_T_LEN * 2 + ctx->err_message.len
          + ngx_escape_json(NULL, ctx->err_message.data,
                            ctx->err_message.len);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "{\"code\":%i,\"message\":\"",
                          ctx->err_code);
    b->last = (u_char *) ngx_escape_json(b->last, ctx->err_message.data,
                                         ctx->err_message.len);
    b->last = ngx_sprintf(b->last, "\",\"StatusCode\":%i,"
                          "\"duration\":\"0.00ms\",\"more_info\":\"\","
                          "\"details\":[]}", ctx->err_status);

    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    ctx->err_body = b;

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_chain_t                 out;
    ngx_http_stream_mod_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    if (ctx == NULL || !ctx->replace_body || in == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /* NGINX's HTML error page is dropped; the APIError goes instead */

    if (ctx->body_sent) {
        return NGX_OK;
    }

    ctx->body_sent = 1;

    out.buf = ctx->err_body;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


static ngx_int_t
ngx_http_stream_mod_add_header(ngx_http_request_t *r, char *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;
    h->lowcase_key = NULL;

    return NGX_OK;
}


/*
 * CORS, SPEC section 8.  Called first in the gate: a preflight from a
 * listed origin is answered without a token; from any other origin, 403.
 */

ngx_int_t
ngx_http_stream_mod_cors(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_table_elt_t  *origin, *acrm;

    if (lcf->cors_origins == NULL) {
        return NGX_DECLINED;
    }

    origin = ngx_http_stream_mod_cors_origin(r, lcf, ctx, &acrm);

    if (origin == NULL || r->method != NGX_HTTP_OPTIONS || acrm == NULL) {
        return NGX_DECLINED;
    }

    if (ctx->origin.len == 0) {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_FORBIDDEN,
                                        NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                        "origin not allowed");
    }

    ctx->preflight = 1;

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return NGX_HTTP_NO_CONTENT;
}


/*
 * Sets ctx->origin when the request's Origin is listed; returns the Origin
 * header (and the preflight's Access-Control-Request-Method, if any).
 */

ngx_table_elt_t *
ngx_http_stream_mod_cors_origin(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx,
    ngx_table_elt_t **acrm)
{
    static const char  acrm_name[] = "Access-Control-Request-Method";

    ngx_str_t        *o;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *origin;

    origin = NULL;
    *acrm = NULL;

    if (lcf->cors_origins == NULL) {
        return NULL;
    }

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Origin", 6) == 0)
        {
            origin = &h[i];

        } else if (h[i].key.len == sizeof(acrm_name) - 1
                   && ngx_strncasecmp(h[i].key.data, (u_char *) acrm_name,
                                      sizeof(acrm_name) - 1) == 0)
        {
            *acrm = &h[i];
        }
    }

    if (origin == NULL) {
        return NULL;
    }

    o = lcf->cors_origins->elts;

    for (i = 0; i < lcf->cors_origins->nelts; i++) {
        if (o[i].len == origin->value.len
            && ngx_strncasecmp(o[i].data, origin->value.data, o[i].len) == 0)
        {
            ctx->origin = origin->value;
            break;
        }
    }

    return origin;
}


static ngx_int_t
ngx_http_stream_mod_cors_headers(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_str_t  value;

    if (ctx->origin.len == 0) {
        return NGX_OK;
    }

    if (ngx_http_stream_mod_add_header(r, "Access-Control-Allow-Origin",
                                       &ctx->origin)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&value, "Origin");
    if (ngx_http_stream_mod_add_header(r, "Vary", &value) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ctx->preflight) {
        ngx_str_set(&value, "GET, POST, DELETE");
        if (ngx_http_stream_mod_add_header(r, "Access-Control-Allow-Methods",
                                           &value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_str_set(&value, "Authorization, Content-Type, "
                            "X-Client-Request-Id");
        if (ngx_http_stream_mod_add_header(r, "Access-Control-Allow-Headers",
                                           &value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_str_set(&value, "600");
        return ngx_http_stream_mod_add_header(r, "Access-Control-Max-Age",
                                              &value);
    }

    ngx_str_set(&value, "Retry-After, X-RateLimit-Limit, "
                        "X-RateLimit-Remaining, X-RateLimit-Reset");

    return ngx_http_stream_mod_add_header(r, "Access-Control-Expose-Headers",
                                          &value);
}
