
/*
 * Body inspection.  A request body filter copies the body into memory as
 * it arrives (so a body NGINX spools to a temporary file is still seen
 * whole, and never read back from disk); the gate then parses it once,
 * checks it against the operation's schema and stamps the actor field.
 * What goes upstream is the client's bytes with only the actor inserted.
 */


#include "ngx_http_stream_mod.h"


static ngx_int_t ngx_http_stream_mod_request_body_filter(
    ngx_http_request_t *r, ngx_chain_t *in);
static ngx_int_t ngx_http_stream_mod_check_names(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, json_t *body);
static ngx_int_t ngx_http_stream_mod_check_field(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_field_t *f,
    json_t *v);
static ngx_int_t ngx_http_stream_mod_check_string(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_field_t *f,
    json_t *v);
static size_t ngx_http_stream_mod_fold(u_char *dst, u_char *src, size_t len);
static int ngx_libc_cdecl ngx_http_stream_mod_cmp_str(const void *one,
    const void *two);
static ngx_chain_t *ngx_http_stream_mod_body_buf(ngx_http_request_t *r,
    u_char *pos, u_char *last);


static ngx_http_request_body_filter_pt  ngx_http_next_request_body_filter;


ngx_int_t
ngx_http_stream_mod_body_init(ngx_conf_t *cf)
{
    ngx_http_next_request_body_filter = ngx_http_top_request_body_filter;
    ngx_http_top_request_body_filter = ngx_http_stream_mod_request_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_request_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in)
{
    u_char                     *p;
    size_t                      size, n;
    ngx_chain_t                *cl;
    ngx_http_stream_mod_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    if (ctx == NULL || !ctx->capture) {
        return ngx_http_next_request_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {

        if (cl->buf->in_file && !ngx_buf_in_memory(cl->buf)) {
            /* cannot happen before the save filter; fail closed */
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        size = cl->buf->last - cl->buf->pos;

        if (size == 0) {
            continue;
        }

        if (size > ctx->raw_max - ctx->raw_len) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                            NGX_HTTP_STREAM_MOD_E_TOO_BIG,
                                            "request body is larger than "
                                            "%uz bytes", ctx->raw_max);
        }

        if (ctx->raw_len + size > ctx->raw_size) {
            n = ngx_max(ctx->raw_size * 2, ctx->raw_len + size);
            n = ngx_min(n, ctx->raw_max);

            p = ngx_pnalloc(r->pool, n);
            if (p == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            if (ctx->raw_len) {
                ngx_memcpy(p, ctx->raw, ctx->raw_len);
            }

            ctx->raw = p;
            ctx->raw_size = n;
        }

        ngx_memcpy(ctx->raw + ctx->raw_len, cl->buf->pos, size);
        ctx->raw_len += size;
    }

    return ngx_http_next_request_body_filter(r, in);
}


static ngx_http_stream_mod_field_t *
ngx_http_stream_mod_actor_field(ngx_http_stream_mod_action_t *action)
{
    ngx_uint_t  i;

    for (i = 0; i < action->nfields; i++) {
        if (action->fields[i].flags & NGX_HTTP_STREAM_MOD_F_ACTOR) {
            return &action->fields[i];
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_stream_mod_inspect_body(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx)
{
    json_t                        *body, *v;
    ngx_int_t                      rc;
    ngx_str_t                      target;
    ngx_uint_t                     i;
    json_error_t                   err;
    ngx_http_stream_mod_field_t   *f;
    ngx_http_stream_mod_action_t  *action;

    action = ctx->action;

    if (ctx->raw_len == 0) {
        body = json_object();

    } else {
        /* jansson refuses invalid UTF-8, NUL escapes and trailing data */
        body = json_loadb((char *) ctx->raw, ctx->raw_len,
                          JSON_REJECT_DUPLICATES|JSON_DECODE_ANY, &err);

        if (body == NULL && json_error_code(&err) == json_error_duplicate_key) {
            /* the upstream must see exactly what was checked */
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "duplicate key in JSON body at "
                                            "line %d, column %d", err.line,
                                            err.column);
        }

        if (body == NULL) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "invalid JSON body at line %d, "
                                            "column %d", err.line,
                                            err.column);
        }
    }

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_stream_mod_json_pool(r->pool, body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!json_is_object(body)) {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "body must be a JSON object");
    }

    ctx->body = body;

    rc = ngx_http_stream_mod_check_names(r, ctx, body);
    if (rc != NGX_OK) {
        return rc;
    }

    for (i = 0; i < action->nfields; i++) {
        f = &action->fields[i];

        v = json_object_get(body, (char *) f->name.data);

        if (v == NULL) {
            if (f->flags & NGX_HTTP_STREAM_MOD_F_REQUIRED) {
                return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "%V is a required field",
                                            &f->name);
            }

            continue;
        }

        rc = ngx_http_stream_mod_check_field(r, ctx, f, v);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    if (action->id == NGX_HTTP_STREAM_MOD_MUTE_USERS) {
        ctx->mute_all = json_is_true(json_object_get(body, "mute_all_users"));
    }

    if (action->query_target.len == 0) {
        return NGX_OK;
    }

    /* unban: the target comes in the query, or in the body of DELETE */

    v = json_object_get(body, (char *) action->query_target.data);

    if (v) {
        target.data = (u_char *) json_string_value(v);
        target.len = json_string_length(v);

        if (ctx->query_target.len
            && (ctx->query_target.len != target.len
                || ngx_strncmp(ctx->query_target.data, target.data,
                               target.len) != 0))
        {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "%V differs between query and "
                                            "body", &action->query_target);
        }

        if (ctx->query_target.len) {
            /* the body's value is already among the targets */
            return NGX_OK;
        }

        ctx->query_target = target;
        return NGX_OK;
    }

    if (ctx->query_target.len == 0) {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "%V is a required field",
                                        &action->query_target);
    }

    rc = ngx_http_stream_mod_add_target(r, ctx, &ctx->query_target);

    if (rc == NGX_DECLINED) {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "%V is not a valid user id",
                                        &action->query_target);
    }

    return (rc == NGX_OK) ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/*
 * Stream's decoder matches field names without regard to case (Go's
 * folding: ASCII, plus U+017F and U+212A, which fold to "s" and "k").
 * So a near-spelling of a known field, or two keys that fold alike,
 * would let Stream act on a value the gate did not check.
 */

static ngx_int_t
ngx_http_stream_mod_check_names(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, json_t *body)
{
    u_char                        *buf;
    size_t                         len;
    json_t                        *v;
    ngx_str_t                     *keys;
    ngx_uint_t                     n, i, j;
    const char                    *key;
    ngx_http_stream_mod_field_t   *f;
    ngx_http_stream_mod_action_t  *action;

    n = json_object_size(body);

    if (n == 0) {
        return NGX_OK;
    }

    keys = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
    if (keys == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    action = ctx->action;
    i = 0;

    json_object_foreach(body, key, v) {
        len = ngx_strlen(key);

        buf = ngx_pnalloc(r->pool, len + 1);
        if (buf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        keys[i].data = buf;
        keys[i].len = ngx_http_stream_mod_fold(buf, (u_char *) key, len);

        for (j = 0; j < action->nfields; j++) {
            f = &action->fields[j];

            if (f->name.len != keys[i].len
                || ngx_strncmp(f->name.data, keys[i].data, f->name.len) != 0)
            {
                continue;
            }

            if (len != f->name.len
                || ngx_strncmp(f->name.data, key, len) != 0)
            {
                return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "field name must be spelled "
                                            "exactly \"%V\"", &f->name);
            }
        }

        i++;
    }

    ngx_qsort(keys, n, sizeof(ngx_str_t), ngx_http_stream_mod_cmp_str);

    for (i = 1; i < n; i++) {
        if (keys[i].len == keys[i - 1].len
            && ngx_memcmp(keys[i].data, keys[i - 1].data, keys[i].len) == 0)
        {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "two fields differ only in case");
        }
    }

    return NGX_OK;
}


static size_t
ngx_http_stream_mod_fold(u_char *dst, u_char *src, size_t len)
{
    u_char  *p, *last, c;

    p = dst;
    last = src + len;

    while (src < last) {
        c = *src++;

        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;

        } else if (c == 0xc5 && src < last && *src == 0xbf) {
            /* U+017F LATIN SMALL LETTER LONG S */
            c = 's';
            src++;

        } else if (c == 0xe2 && last - src >= 2 && src[0] == 0x84
                   && src[1] == 0xaa)
        {
            /* U+212A KELVIN SIGN */
            c = 'k';
            src += 2;
        }

        *p++ = c;
    }

    return p - dst;
}


static int ngx_libc_cdecl
ngx_http_stream_mod_cmp_str(const void *one, const void *two)
{
    ngx_int_t         rc;
    const ngx_str_t  *a = one, *b = two;

    rc = ngx_memcmp(a->data, b->data, ngx_min(a->len, b->len));

    if (rc != 0) {
        return (int) rc;
    }

    return (a->len < b->len) ? -1 : (a->len > b->len);
}


static ngx_int_t
ngx_http_stream_mod_check_field(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_field_t *f,
    json_t *v)
{
    size_t      n, i;
    ngx_int_t   rc;
    ngx_str_t   s;

    switch (f->type) {

    case NGX_HTTP_STREAM_MOD_T_OBJECT:
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_FORBIDDEN,
                                        NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                        "%V is not accepted: send the "
                                        "user id field instead", &f->name);

    case NGX_HTTP_STREAM_MOD_T_BOOL:
        if (!json_is_boolean(v)) {
            goto invalid;
        }

        return NGX_OK;

    case NGX_HTTP_STREAM_MOD_T_UINT:
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            goto invalid;
        }

        return NGX_OK;

    case NGX_HTTP_STREAM_MOD_T_STRINGS:
        if (!json_is_array(v)) {
            goto invalid;
        }

        n = json_array_size(v);

        if (n < f->min_items || (f->max_items && n > f->max_items)) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "%V must have between %ui and "
                                            "%ui items", &f->name,
                                            f->min_items,
                                            f->max_items ? f->max_items
                                                         : NGX_MAX_INT_T_VALUE);
        }

        for (i = 0; i < n; i++) {
            rc = ngx_http_stream_mod_check_string(r, ctx, f,
                                                  json_array_get(v, i));
            if (rc != NGX_OK) {
                return rc;
            }
        }

        return NGX_OK;

    default: /* NGX_HTTP_STREAM_MOD_T_STRING */
        rc = ngx_http_stream_mod_check_string(r, ctx, f, v);
        if (rc != NGX_OK) {
            return rc;
        }

        if (!(f->flags & NGX_HTTP_STREAM_MOD_F_ACTOR)) {
            return NGX_OK;
        }

        s.data = (u_char *) json_string_value(v);
        s.len = json_string_length(v);

        if (s.len != ctx->user.len
            || ngx_strncmp(s.data, ctx->user.data, s.len) != 0)
        {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "acting user mismatch: %V must "
                                            "be the caller", &f->name);
        }

        return NGX_OK;
    }

invalid:

    return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                    NGX_HTTP_BAD_REQUEST,
                                    NGX_HTTP_STREAM_MOD_E_INPUT,
                                    "%V has the wrong type", &f->name);
}


static ngx_int_t
ngx_http_stream_mod_check_string(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_field_t *f,
    json_t *v)
{
    ngx_int_t     rc;
    ngx_str_t     s;
    const char  **e;

    if (!json_is_string(v)) {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "%V has the wrong type", &f->name);
    }

    s.data = (u_char *) json_string_value(v);
    s.len = json_string_length(v);

    if (f->values) {
        for (e = f->values; *e; e++) {
            if (ngx_strlen(*e) == s.len
                && ngx_strncmp(*e, s.data, s.len) == 0)
            {
                break;
            }
        }

        if (*e == NULL) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "%V has a value outside its "
                                            "enum", &f->name);
        }
    }

    if (!(f->flags & NGX_HTTP_STREAM_MOD_F_USER_ID)) {
        return NGX_OK;
    }

    if (!ngx_http_stream_mod_valid_id(s.data, s.len,
                                      NGX_HTTP_STREAM_MOD_MAX_USER_ID))
    {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "%V is not a valid user id",
                                        &f->name);
    }

    if (!(f->flags & NGX_HTTP_STREAM_MOD_F_TARGET)) {
        return NGX_OK;
    }

    rc = ngx_http_stream_mod_add_target(r, ctx, &s);

    return (rc == NGX_OK) ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


ngx_int_t
ngx_http_stream_mod_add_target(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_str_t *target)
{
    ngx_str_t  *t;

    if (!ngx_http_stream_mod_valid_id(target->data, target->len,
                                      NGX_HTTP_STREAM_MOD_MAX_USER_ID))
    {
        return NGX_DECLINED;
    }

    if (ctx->targets.elts == NULL
        && ngx_array_init(&ctx->targets, r->pool, 4, sizeof(ngx_str_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    t = ngx_array_push(&ctx->targets);
    if (t == NULL) {
        return NGX_ERROR;
    }

    *t = *target;

    return NGX_OK;
}


/* blocked_users: the user_id query parameter is the actor */

ngx_int_t
ngx_http_stream_mod_check_query_actor(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx)
{
    if (ctx->query_actor.len == 0
        || (ctx->query_actor.len == ctx->user.len
            && ngx_strncmp(ctx->query_actor.data, ctx->user.data,
                           ctx->user.len) == 0))
    {
        return NGX_OK;
    }

    return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                    NGX_HTTP_FORBIDDEN,
                                    NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                    "acting user mismatch: user_id must be "
                                    "the caller");
}


/*
 * The upstream body: the client's bytes, with the actor field inserted
 * after the opening brace when the client left it out.
 */

ngx_int_t
ngx_http_stream_mod_stamp_body(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx)
{
    u_char                       *p, *brace, *last;
    size_t                        len;
    ngx_chain_t                  *head, *tail;
    ngx_http_stream_mod_field_t  *actor;

    if (!ctx->action->body) {
        return NGX_OK;
    }

    if (ctx->raw_len == 0) {
        ctx->raw = (u_char *) "{}";
        ctx->raw_len = 2;
    }

    actor = ngx_http_stream_mod_actor_field(ctx->action);

    if (actor && json_object_get(ctx->body, (char *) actor->name.data)) {
        actor = NULL;
    }

    last = ctx->raw + ctx->raw_len;

    /*
     * The client's bytes are not copied again: the body goes out as the
     * captured buffer, or as a small head (up to the brace, plus the actor)
     * followed by the rest of the captured buffer.
     */

    tail = ngx_http_stream_mod_body_buf(r, ctx->raw, last);
    if (tail == NULL) {
        return NGX_ERROR;
    }

    head = tail;

    if (actor) {
        brace = ngx_strlchr(ctx->raw, last, '{');

        if (brace == NULL) {
            /* the parser accepted an object: there is a brace */
            return NGX_ERROR;
        }

        /* user ids are [A-Za-z0-9@_-]: nothing to escape */
        len = brace + 1 - ctx->raw + sizeof("\"\":\"\",") - 1
              + actor->name.len + ctx->user.len;

        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        head = ngx_http_stream_mod_body_buf(r, p, p);
        if (head == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(p, ctx->raw, brace + 1 - ctx->raw);
        p = ngx_sprintf(p, "\"%V\":\"%V\"", &actor->name, &ctx->user);

        if (json_object_size(ctx->body)) {
            *p++ = ',';
        }

        head->buf->last = p;
        head->buf->last_buf = 0;
        head->buf->last_in_chain = 0;
        head->next = tail;

        tail->buf->pos = brace + 1;
    }

    if (r->request_body == NULL) {
        r->request_body = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
        if (r->request_body == NULL) {
            return NGX_ERROR;
        }
    }

    /* proxy_pass sends these bufs and takes its Content-Length from here */
    r->request_body->bufs = head;
    r->headers_in.content_length_n = (head->buf->last - head->buf->pos)
                                     + (head != tail
                                        ? tail->buf->last - tail->buf->pos
                                        : 0);

    return NGX_OK;
}


static ngx_chain_t *
ngx_http_stream_mod_body_buf(ngx_http_request_t *r, u_char *pos, u_char *last)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NULL;
    }

    b->pos = pos;
    b->last = last;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NULL;
    }

    cl->buf = b;
    cl->next = NULL;

    return cl;
}

