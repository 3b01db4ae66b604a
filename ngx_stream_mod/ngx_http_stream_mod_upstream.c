
/*
 * The rewrite for a plain proxy_pass (SPEC section 7): Stream's path and
 * query, the server token, and client headers by allowlist only.  The
 * proxy module then builds the upstream request from r->uri, r->args,
 * r->headers_in and the stamped body.
 */


#include "ngx_http_stream_mod.h"


static ngx_table_elt_t *ngx_http_stream_mod_push_header(ngx_list_t *list,
    ngx_table_elt_t *header, ngx_str_t *value);
static ngx_uint_t ngx_http_stream_mod_allowed_header(ngx_table_elt_t *h);


static ngx_str_t  ngx_http_stream_mod_client =
    ngx_string("ngx_stream_mod/" NGX_HTTP_STREAM_MOD_VERSION);


/* in the order of NGX_HTTP_STREAM_MOD_H_*: names, and their lower case */
static ngx_str_t  ngx_http_stream_mod_header_names[][2] = {
    { ngx_string("Authorization"), ngx_string("authorization") },
    { ngx_string("stream-auth-type"), ngx_string("stream-auth-type") },
    { ngx_string("Content-Type"), ngx_string("content-type") },
    { ngx_string("X-Stream-Client"), ngx_string("x-stream-client") }
};


/* the added headers' keys and hashes, once per configuration */

void
ngx_http_stream_mod_upstream_headers(ngx_table_elt_t *headers)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_STREAM_MOD_NHEADERS; i++) {
        headers[i].key = ngx_http_stream_mod_header_names[i][0];
        headers[i].lowcase_key = ngx_http_stream_mod_header_names[i][1].data;
        headers[i].hash = ngx_hash_key(headers[i].lowcase_key,
                                       headers[i].key.len);
    }
}


ngx_int_t
ngx_http_stream_mod_rewrite(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    u_char                           *p, *s, *last;
    size_t                            len;
    ngx_str_t                         value;
    ngx_uint_t                        i, seen;
    ngx_list_t                        headers;
    ngx_list_part_t                  *part;
    ngx_table_elt_t                  *h, *elt, *auth, *ct, *hs;
    ngx_http_stream_mod_action_t     *action;
    ngx_http_stream_mod_main_conf_t  *smcf;

    action = ctx->action;

    /* path: "$0" and "$1" are the validated path parameters */

    len = action->upstream_path.len + ctx->params[0].len + ctx->params[1].len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    r->uri.data = p;
    s = action->upstream_path.data;
    last = s + action->upstream_path.len;

    while (s < last) {
        if (*s == '$' && s + 1 < last && (s[1] == '0' || s[1] == '1')) {
            p = ngx_cpymem(p, ctx->params[s[1] - '0'].data,
                           ctx->params[s[1] - '0'].len);
            s += 2;
            continue;
        }

        *p++ = *s++;
    }

    r->uri.len = p - r->uri.data;

    /* query: api_key exactly once, then what the operation defines */

    len = sizeof("api_key=") - 1 + lcf->api_key.len
          + sizeof("&target_user_id=") - 1 + ctx->query_target.len
          + sizeof("&user_id=") - 1 + ctx->user.len
          + ctx->query_extra.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    r->args.data = p;
    p = ngx_cpymem(p, "api_key=", sizeof("api_key=") - 1);
    p = ngx_cpymem(p, lcf->api_key.data, lcf->api_key.len);

    if (action->query_target.len) {
        *p++ = '&';
        p = ngx_cpymem(p, action->query_target.data,
                       action->query_target.len);
        *p++ = '=';
        p = ngx_cpymem(p, ctx->query_target.data, ctx->query_target.len);
    }

    if (action->query_actor.len) {
        *p++ = '&';
        p = ngx_cpymem(p, action->query_actor.data, action->query_actor.len);
        *p++ = '=';
        p = ngx_cpymem(p, ctx->user.data, ctx->user.len);
    }

    if (ctx->query_extra.len) {
        p = ngx_cpymem(p, ctx->query_extra.data, ctx->query_extra.len);
    }

    r->args.len = p - r->args.data;

    /* the proxy module builds its request line from r->uri and r->args */
    r->valid_unparsed_uri = 0;
    r->quoted_uri = 0;
    r->plus_in_uri = 0;

    if (r->method_name.len != action->upstream_method.len
        || ngx_strncmp(r->method_name.data, action->upstream_method.data,
                       action->upstream_method.len) != 0)
    {
        /* DELETE /moderation/ban is Stream's POST .../unban */
        r->method_name = action->upstream_method;
        r->method = NGX_HTTP_POST;
    }

    /* headers: the client's by allowlist, then ours */

    if (ngx_list_init(&headers, r->pool, 8, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    seen = 0;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        len = ngx_http_stream_mod_allowed_header(&h[i]);

        /* each allowed header once: the first one */
        if (len == 0 || (seen & len)) {
            continue;
        }

        seen |= len;

        elt = ngx_list_push(&headers);
        if (elt == NULL) {
            return NGX_ERROR;
        }

        *elt = h[i];
    }

    if (action->user_token) {
        value = ctx->token;

    } else {
        value = lcf->secret->server_token;
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_stream_mod_module);
    hs = smcf->headers;

    auth = ngx_http_stream_mod_push_header(&headers,
                                     &hs[NGX_HTTP_STREAM_MOD_H_AUTHORIZATION],
                                     &value);

    ngx_str_set(&value, "jwt");
    elt = ngx_http_stream_mod_push_header(&headers,
                                         &hs[NGX_HTTP_STREAM_MOD_H_AUTH_TYPE],
                                         &value);

    ngx_str_set(&value, "application/json");
    ct = ngx_http_stream_mod_push_header(&headers,
                                      &hs[NGX_HTTP_STREAM_MOD_H_CONTENT_TYPE],
                                      &value);

    if (auth == NULL || elt == NULL || ct == NULL
        || ngx_http_stream_mod_push_header(&headers,
                                           &hs[NGX_HTTP_STREAM_MOD_H_CLIENT],
                                           &ngx_http_stream_mod_client)
           == NULL)
    {
        return NGX_ERROR;
    }

    r->headers_in.headers = headers;
    r->headers_in.authorization = auth;
    r->headers_in.content_type = ct;
    r->headers_in.content_length = NULL;
    r->headers_in.transfer_encoding = NULL;
    r->headers_in.expect = NULL;
    r->headers_in.cookies.nelts = 0;

#if (NGX_HTTP_X_FORWARDED_FOR)
    r->headers_in.x_forwarded_for.nelts = 0;
#endif

    if (!action->body) {
        r->headers_in.content_length_n = -1;
    }

    return NGX_OK;
}


/* a bit per allowed header, 0 for every other */

static ngx_uint_t
ngx_http_stream_mod_allowed_header(ngx_table_elt_t *h)
{
    static struct {
        ngx_str_t   name;
        ngx_uint_t  bit;
    } allowed[] = {
        { ngx_string("Accept"), 0x01 },
        { ngx_string("Accept-Encoding"), 0x02 },
        { ngx_string("X-Client-Request-Id"), 0x04 },
        { ngx_null_string, 0 }
    };

    ngx_uint_t  i;

    for (i = 0; allowed[i].bit; i++) {
        if (h->key.len == allowed[i].name.len
            && ngx_strncasecmp(h->key.data, allowed[i].name.data,
                               h->key.len) == 0)
        {
            return allowed[i].bit;
        }
    }

    return 0;
}


/* hashed like NGINX's own parsed headers, so proxy_set_header overrides */

static ngx_table_elt_t *
ngx_http_stream_mod_push_header(ngx_list_t *list, ngx_table_elt_t *header,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(list);
    if (h == NULL) {
        return NULL;
    }

    *h = *header;
    h->value = *value;

    return h;
}
