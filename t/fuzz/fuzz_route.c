
/*
 * fuzz_route: the router, ngx_http_stream_mod_route(), on the request URI
 * exactly as a client sent it ($request_uri).
 *
 * Input: the first byte picks the method (GET, POST, DELETE, PUT: byte % 4);
 * the rest is r->unparsed_uri, in an allocation of exactly its size.
 *
 * The result is checked against a second, independent reading of the
 * table in SPEC section 4 (written here from the SPEC, not from the
 * module):
 *   - a path that is not "/..." , that has a dot segment, an empty
 *     segment, '%', '\' or '#', is 400 (or 404 beyond 8 segments);
 *   - a gateway path with its method routes to that action (the query of
 *     unban and blocked_users may still be refused: 400); a parameter
 *     outside [A-Za-z0-9@_-]{1,64} is 400;
 *   - a known path with another method is 405, and Allow names exactly
 *     the methods that path has;
 *   - anything else is 404.
 * When routed: call actions have ctx->call "type:id", deactivate_user and
 * reactivate_user have their path user among the targets, and what is
 * forwarded of the query names only parameters the upstream operation
 * defines (never api_key).
 */


#include "fuzz_common.h"


typedef struct {
    ngx_uint_t    method;
    const char   *path;       /* "*": a path parameter */
    const char   *action;
} fuzz_route_t;


static const fuzz_route_t  fuzz_routes[] = {
    { NGX_HTTP_POST,   "/moderation/ban", "ban" },
    { NGX_HTTP_POST,   "/moderation/unban", "unban" },
    { NGX_HTTP_DELETE, "/moderation/ban", "unban" },
    { NGX_HTTP_POST,   "/moderation/mute", "mute" },
    { NGX_HTTP_POST,   "/moderation/unmute", "unmute" },
    { NGX_HTTP_POST,   "/moderation/block", "block_user" },
    { NGX_HTTP_POST,   "/moderation/unblock", "unblock_user" },
    { NGX_HTTP_GET,    "/moderation/blocked", "blocked_users" },
    { NGX_HTTP_POST,   "/moderation/users/*/deactivate", "deactivate_user" },
    { NGX_HTTP_POST,   "/moderation/users/*/reactivate", "reactivate_user" },
    { NGX_HTTP_POST,   "/moderation/users/deactivate", "deactivate_users" },
    { NGX_HTTP_POST,   "/moderation/users/reactivate", "reactivate_users" },
    { NGX_HTTP_POST,   "/moderation/users/export", "export_users" },
    { NGX_HTTP_GET,    "/moderation/tasks/*", "get_task" },
    { NGX_HTTP_POST,   "/calls/*/*/mute_users", "mute_users" },
    { NGX_HTTP_POST,   "/calls/*/*/block", "block_call_user" },
    { NGX_HTTP_POST,   "/calls/*/*/unblock", "unblock_call_user" },
    { NGX_HTTP_POST,   "/calls/*/*/kick", "kick_user" },
    { NGX_HTTP_POST,   "/calls/*/*/user_permissions",
                       "update_user_permissions" },
    { NGX_HTTP_POST,   "/calls/*/*/mark_ended", "end_call" },
    { NGX_HTTP_POST,   "/calls/*/*/request_permission",
                       "request_permission" },
    { 0, NULL, NULL }
};


static const struct {
    ngx_uint_t   method;
    ngx_str_t    name;
} fuzz_methods[4] = {
    { NGX_HTTP_GET, ngx_string("GET") },
    { NGX_HTTP_POST, ngx_string("POST") },
    { NGX_HTTP_DELETE, ngx_string("DELETE") },
    { NGX_HTTP_PUT, ngx_string("PUT") }
};


#define FUZZ_MAX_SEGS  32


typedef struct {
    ngx_int_t                status;     /* NGX_OK, 400, 404, 405 */
    const char              *action;
    ngx_uint_t               allow;      /* 405: methods of the path */
    ngx_uint_t               deep;       /* more than 8 segments */
    ngx_str_t                params[2];
} fuzz_expect_t;


/* 1: matches ignoring parameter validity; *valid: the parameters are ok */

static ngx_uint_t
fuzz_match(const char *pattern, ngx_str_t *segs, ngx_uint_t n,
    ngx_str_t *params, ngx_uint_t *valid)
{
    size_t       len;
    ngx_uint_t   i, np;
    const char  *p, *e;

    p = pattern + 1;
    np = 0;
    *valid = 1;
    ngx_str_null(&params[0]);
    ngx_str_null(&params[1]);

    for (i = 0; i < n; i++) {
        if (*p == '\0') {
            return 0;
        }

        e = strchr(p, '/');
        len = e ? (size_t) (e - p) : strlen(p);

        if (len == 1 && *p == '*') {
            if (!fuzz_valid_id(segs[i].data, segs[i].len,
                               NGX_HTTP_STREAM_MOD_MAX_PARAM))
            {
                *valid = 0;
            }

            params[np++] = segs[i];

        } else if (segs[i].len != len
                   || ngx_memcmp(segs[i].data, p, len) != 0)
        {
            return 0;
        }

        p += len;
        if (*p == '/') {
            p++;
        }
    }

    return *p == '\0';
}


static void
fuzz_expect(ngx_uint_t method, u_char *path, size_t len, fuzz_expect_t *x)
{
    u_char              *p, *last, *s;
    ngx_str_t            segs[FUZZ_MAX_SEGS], params[2];
    ngx_uint_t           n, valid;
    const fuzz_route_t  *rt;

    ngx_memzero(x, sizeof(fuzz_expect_t));
    last = path + len;

    if (len == 0 || path[0] != '/') {
        x->status = NGX_HTTP_BAD_REQUEST;
        return;
    }

    n = 0;
    s = path + 1;

    for (p = path + 1; ; p++) {
        if (p == last || *p == '/') {
            if (n == FUZZ_MAX_SEGS) {
                /* no route is that deep: only the 400 checks matter */
                break;
            }

            segs[n].data = s;
            segs[n].len = p - s;
            n++;

            if (p == last) {
                break;
            }

            s = p + 1;
        }
    }

    x->deep = (n > 8);

    for (p = path; p < last; p++) {
        if (*p == '%' || *p == '\\' || *p == '#') {
            x->status = NGX_HTTP_BAD_REQUEST;
            return;
        }
    }

    for (valid = 0; valid < n; valid++) {
        /* an empty segment, except an empty last one ("/a/"), is 400 */
        if ((segs[valid].len == 0 && valid + 1 < n)
            || (segs[valid].len == 1 && segs[valid].data[0] == '.')
            || (segs[valid].len == 2 && segs[valid].data[0] == '.'
                && segs[valid].data[1] == '.'))
        {
            x->status = NGX_HTTP_BAD_REQUEST;
            return;
        }
    }

    for (rt = fuzz_routes; rt->path; rt++) {
        if (!fuzz_match(rt->path, segs, n, params, &valid)) {
            continue;
        }

        if (rt->method != method) {
            x->allow |= rt->method;
            continue;
        }

        if (!valid) {
            x->status = NGX_HTTP_BAD_REQUEST;
            return;
        }

        x->status = NGX_OK;
        x->action = rt->action;
        x->params[0] = params[0];
        x->params[1] = params[1];
        return;
    }

    x->status = x->allow ? NGX_HTTP_NOT_ALLOWED : NGX_HTTP_NOT_FOUND;
}


static ngx_uint_t
fuzz_query_defined(ngx_http_stream_mod_action_t *action, u_char *name,
    size_t len)
{
    const char  **q;

    for (q = action->query; q && *q; q++) {
        if (strlen(*q) == len && ngx_memcmp(*q, name, len) == 0) {
            return 1;
        }
    }

    return 0;
}


static void
fuzz_check_value(ngx_str_t *v, const char *what)
{
    size_t  i;

    for (i = 0; i < v->len; i++) {
        FUZZ_ASSERT(v->data[i] > 0x20 && v->data[i] < 0x7f
                    && v->data[i] != '&' && v->data[i] != '='
                    && v->data[i] != '%' && v->data[i] != '+'
                    && v->data[i] != '#' && v->data[i] != '?',
                    "%s \"%.*s\" would need escaping", what, (int) v->len,
                    v->data);
    }
}


static void
fuzz_check_routed(fuzz_req_t *fr, fuzz_expect_t *x, u_char *query,
    size_t qlen)
{
    u_char                        *p, *last, *start, *eq;
    ngx_str_t                     *t;
    ngx_uint_t                     i, found;
    ngx_http_stream_mod_ctx_t     *ctx;
    ngx_http_stream_mod_action_t  *action;

    ctx = fr->ctx;
    action = ctx->action;

    FUZZ_ASSERT(action != NULL, "routed without an action");
    FUZZ_ASSERT(x->action && strlen(x->action) == action->name.len
                && ngx_memcmp(x->action, action->name.data,
                              action->name.len) == 0,
                "routed to %.*s, the SPEC says %s (status %ld)",
                (int) action->name.len, action->name.data,
                x->action ? x->action : "-", (long) x->status);

    for (i = 0; i < 2; i++) {
        FUZZ_ASSERT(ctx->params[i].len == x->params[i].len
                    && (x->params[i].len == 0
                        || ctx->params[i].data == x->params[i].data),
                    "path parameter %lu differs", (unsigned long) i);
    }

    if (action->call) {
        FUZZ_ASSERT(ctx->call.len == x->params[0].len + 1 + x->params[1].len
                    && ngx_memcmp(ctx->call.data, x->params[0].data,
                                  x->params[0].len) == 0
                    && ctx->call.data[x->params[0].len] == ':'
                    && ngx_memcmp(ctx->call.data + x->params[0].len + 1,
                                  x->params[1].data, x->params[1].len) == 0,
                    "ctx->call is not \"type:id\"");

    } else {
        FUZZ_ASSERT(ctx->call.len == 0, "ctx->call set for %s", x->action);
    }

    if (action->param_target) {
        found = 0;
        t = ctx->targets.elts;

        for (i = 0; i < ctx->targets.nelts; i++) {
            if (t[i].len == x->params[0].len
                && ngx_memcmp(t[i].data, x->params[0].data, t[i].len) == 0)
            {
                found = 1;
            }
        }

        FUZZ_ASSERT(found, "the path user is not among the targets");
    }

    /* the query that is forwarded: only parameters the operation defines */

    if (ctx->query_target.len) {
        FUZZ_ASSERT(action->query_target.len, "query target for %s",
                    x->action);
        fuzz_check_value(&ctx->query_target, "query target");
    }

    if (ctx->query_actor.len) {
        FUZZ_ASSERT(action->query_actor.len, "query actor for %s", x->action);
        fuzz_check_value(&ctx->query_actor, "query actor");
    }

    if (ctx->query_extra.len == 0) {
        return;
    }

    FUZZ_ASSERT(action->query != NULL, "query forwarded for %s", x->action);
    FUZZ_ASSERT(ctx->query_extra.len <= qlen, "forwarded query is longer "
                "than the client's");

    p = ctx->query_extra.data;
    last = p + ctx->query_extra.len;

    while (p < last) {
        FUZZ_ASSERT(*p == '&', "forwarded query does not start with '&'");
        start = ++p;

        while (p < last && *p != '&') {
            p++;
        }

        eq = ngx_strlchr(start, p, '=');
        FUZZ_ASSERT(eq != NULL, "forwarded query parameter without '='");
        FUZZ_ASSERT(fuzz_query_defined(action, start, eq - start),
                    "forwarded undefined query parameter \"%.*s\"",
                    (int) (eq - start), start);
        FUZZ_ASSERT(!(action->query_target.len == (size_t) (eq - start)
                      && ngx_memcmp(start, action->query_target.data,
                                    eq - start) == 0)
                    && !(action->query_actor.len == (size_t) (eq - start)
                         && ngx_memcmp(start, action->query_actor.data,
                                       eq - start) == 0),
                    "the target or actor parameter is forwarded raw");
    }
}


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_init();

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char         *uri, *q, *last, *p;
    size_t          len;
    ngx_int_t       rc;
    fuzz_req_t      fr;
    ngx_uint_t      m, allow, i;
    fuzz_expect_t   x;

    if (size < 1 || size > 8192) {
        return -1;
    }

    fuzz_request(fuzz_pool(), &fr);

    m = data[0] % 4;
    fr.r->method = fuzz_methods[m].method;
    fr.r->method_name = fuzz_methods[m].name;

    len = size - 1;
    uri = fuzz_copy(fr.pool, data + 1, len, 0);
    fr.r->unparsed_uri.data = uri;
    fr.r->unparsed_uri.len = len;

    last = uri + len;
    q = memchr(uri, '?', len);
    if (q == NULL) {
        q = last;
    }

    fuzz_expect(fr.r->method, uri, q - uri, &x);

    rc = ngx_http_stream_mod_route(fr.r, fr.ctx);

    FUZZ_ASSERT(rc == NGX_OK || rc == NGX_HTTP_BAD_REQUEST
                || rc == NGX_HTTP_NOT_FOUND || rc == NGX_HTTP_NOT_ALLOWED,
                "unexpected result %ld", (long) rc);

    if (rc != NGX_OK) {
        FUZZ_ASSERT(fr.ctx->err_status == rc
                    && fr.ctx->decision == NGX_HTTP_STREAM_MOD_REJECT
                    && fr.ctx->err_message.len > 0,
                    "refusal %ld not recorded", (long) rc);
    }

    switch (x.status) {

    case NGX_OK:
        /* only a defined query parameter can still be refused */
        FUZZ_ASSERT(rc == NGX_OK
                    || (rc == NGX_HTTP_BAD_REQUEST && q < last
                        && fr.ctx->action && fr.ctx->action->query),
                    "%s %.*s is %s, got %ld", fuzz_methods[m].name.data,
                    (int) len, uri, x.action, (long) rc);
        break;

    case NGX_HTTP_BAD_REQUEST:
        FUZZ_ASSERT(rc == NGX_HTTP_BAD_REQUEST
                    || (rc == NGX_HTTP_NOT_FOUND && x.deep),
                    "%s %.*s is 400, got %ld", fuzz_methods[m].name.data,
                    (int) len, uri, (long) rc);
        break;

    case NGX_HTTP_NOT_ALLOWED:
        FUZZ_ASSERT(rc == NGX_HTTP_NOT_ALLOWED,
                    "%s %.*s is 405, got %ld", fuzz_methods[m].name.data,
                    (int) len, uri, (long) rc);
        break;

    default: /* 404 */
        FUZZ_ASSERT(rc == NGX_HTTP_NOT_FOUND,
                    "%s %.*s is 404, got %ld", fuzz_methods[m].name.data,
                    (int) len, uri, (long) rc);
    }

    if (rc == NGX_OK) {
        fuzz_check_routed(&fr, &x, q, last - q);
    }

    if (rc == NGX_HTTP_NOT_ALLOWED) {
        /* Allow: exactly the methods of the path, as "GET, POST, DELETE" */
        allow = 0;
        p = fr.ctx->err_allow.data;
        last = p + fr.ctx->err_allow.len;

        FUZZ_ASSERT(fr.ctx->err_allow.len > 0, "405 without Allow");

        while (p < last) {
            for (i = 0; i < 3; i++) {
                len = fuzz_methods[i].name.len;

                if ((size_t) (last - p) >= len
                    && ngx_memcmp(p, fuzz_methods[i].name.data, len) == 0)
                {
                    allow |= fuzz_methods[i].method;
                    p += len;
                    break;
                }
            }

            FUZZ_ASSERT(i < 3, "Allow \"%.*s\" is malformed",
                        (int) fr.ctx->err_allow.len, fr.ctx->err_allow.data);

            if (p < last) {
                FUZZ_ASSERT(last - p > 2 && p[0] == ',' && p[1] == ' ',
                            "Allow \"%.*s\" is malformed",
                            (int) fr.ctx->err_allow.len,
                            fr.ctx->err_allow.data);
                p += 2;
            }
        }

        FUZZ_ASSERT(allow == x.allow && !(allow & fr.r->method),
                    "Allow \"%.*s\" is not the path's methods",
                    (int) fr.ctx->err_allow.len, fr.ctx->err_allow.data);
    }

    ngx_destroy_pool(fr.pool);

    return 0;
}
