
/*
 * Body inspection.  A request body filter copies the body into memory as
 * it arrives (so a body NGINX spools to a temporary file is still seen
 * whole, and never read back from disk); the gate then reads it once
 * (json.c), checks it against the operation's schema and stamps the actor
 * field.
 * What goes upstream is the client's bytes with only the actor inserted.
 */


#include "ngx_http_stream_mod.h"


static ngx_int_t ngx_http_stream_mod_request_body_filter(
    ngx_http_request_t *r, ngx_chain_t *in);
static ngx_int_t ngx_http_stream_mod_check_names(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_json_t *body);
static ngx_int_t ngx_http_stream_mod_check_field(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_field_t *f,
    ngx_http_stream_mod_json_value_t *v);
static ngx_int_t ngx_http_stream_mod_check_string(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_field_t *f,
    ngx_http_stream_mod_json_value_t *v);
static ngx_uint_t ngx_http_stream_mod_folds(u_char *p, size_t len);
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
    ngx_int_t                          rc;
    ngx_str_t                          target;
    ngx_uint_t                         i;
    ngx_http_stream_mod_field_t       *f;
    ngx_http_stream_mod_json_t        *body;
    ngx_http_stream_mod_action_t      *action;
    ngx_http_stream_mod_json_value_t  *v;

    action = ctx->action;
    body = &ctx->body;

    if (ctx->raw_len == 0) {
        ngx_memzero(body, sizeof(ngx_http_stream_mod_json_t));
        body->type = NGX_HTTP_STREAM_MOD_J_OBJECT;

    } else {
        /* refuses invalid UTF-8, NUL, duplicate keys and trailing data */
        rc = ngx_http_stream_mod_json_parse(r->pool, ctx->raw, ctx->raw_len,
                                            body);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_DECLINED && body->duplicate) {
            /* the upstream must see exactly what was checked */
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "duplicate key in JSON body at "
                                            "line %ui, column %ui",
                                            body->line, body->column);
        }

        if (rc == NGX_DECLINED) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "invalid JSON body at line %ui, "
                                            "column %ui", body->line,
                                            body->column);
        }
    }

    if (body->type != NGX_HTTP_STREAM_MOD_J_OBJECT) {
        body->nmembers = 0;
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "body must be a JSON object");
    }

    rc = ngx_http_stream_mod_check_names(r, ctx, body);
    if (rc != NGX_OK) {
        return rc;
    }

    for (i = 0; i < action->nfields; i++) {
        f = &action->fields[i];

        v = ngx_http_stream_mod_json_get(body, f->name.data, f->name.len);

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
        v = ngx_http_stream_mod_json_get(body, (u_char *) "mute_all_users",
                                         sizeof("mute_all_users") - 1);
        ctx->mute_all = (v && v->type == NGX_HTTP_STREAM_MOD_J_TRUE);
    }

    if (action->query_target.len == 0) {
        return NGX_OK;
    }

    /* unban: the target comes in the query, or in the body of DELETE */

    v = ngx_http_stream_mod_json_get(body, action->query_target.data,
                                     action->query_target.len);

    if (v) {
        /* a field of the action: checked above to be a string */
        target = v->str;

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
    ngx_http_stream_mod_ctx_t *ctx, ngx_http_stream_mod_json_t *body)
{
    u_char                        *buf;
    ngx_str_t                     *keys, *key;
    ngx_uint_t                     n, i, j;
    ngx_http_stream_mod_field_t   *f;
    ngx_http_stream_mod_action_t  *action;

    n = body->nmembers;
    action = ctx->action;

    /*
     * A key that folding leaves as it is cannot be a near-spelling of a
     * field, and two such keys cannot fold alike (the reader refused exact
     * duplicates): most bodies stop here.
     */

    for (i = 0; i < n; i++) {
        key = &body->members[i].key;

        if (ngx_http_stream_mod_folds(key->data, key->len)) {
            break;
        }
    }

    if (i == n) {
        return NGX_OK;
    }

    keys = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
    if (keys == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < n; i++) {
        key = &body->members[i].key;

        buf = ngx_pnalloc(r->pool, key->len);
        if (buf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        keys[i].data = buf;
        keys[i].len = ngx_http_stream_mod_fold(buf, key->data, key->len);

        for (j = 0; j < action->nfields; j++) {
            f = &action->fields[j];

            if (f->name.len == keys[i].len
                && ngx_strncmp(f->name.data, keys[i].data, keys[i].len) == 0
                && (key->len != f->name.len
                    || ngx_strncmp(f->name.data, key->data, key->len) != 0))
            {
                return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "field name must be spelled "
                                            "exactly \"%V\"", &f->name);
            }
        }
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


/* does Go's folding change this key: capitals, U+017F, U+212A */

static ngx_uint_t
ngx_http_stream_mod_folds(u_char *p, size_t len)
{
    u_char  *last;

    for (last = p + len; p < last; p++) {
        if ((*p >= 'A' && *p <= 'Z') || *p == 0xc5 || *p == 0xe2) {
            return 1;
        }
    }

    return 0;
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
    ngx_http_stream_mod_json_value_t *v)
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
        if (v->type != NGX_HTTP_STREAM_MOD_J_TRUE
            && v->type != NGX_HTTP_STREAM_MOD_J_FALSE)
        {
            goto invalid;
        }

        return NGX_OK;

    case NGX_HTTP_STREAM_MOD_T_UINT:
        if (v->type != NGX_HTTP_STREAM_MOD_J_INTEGER || v->integer < 0) {
            goto invalid;
        }

        return NGX_OK;

    case NGX_HTTP_STREAM_MOD_T_STRINGS:
        if (v->type != NGX_HTTP_STREAM_MOD_J_ARRAY) {
            goto invalid;
        }

        n = v->nitems;

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
            rc = ngx_http_stream_mod_check_string(r, ctx, f, &v->items[i]);
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

        s = v->str;

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
    ngx_http_stream_mod_json_value_t *v)
{
    ngx_int_t     rc;
    ngx_str_t     s;
    const char  **e;

    if (v->type != NGX_HTTP_STREAM_MOD_J_STRING) {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "%V has the wrong type", &f->name);
    }

    s = v->str;

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

    if (actor && ngx_http_stream_mod_json_get(&ctx->body, actor->name.data,
                                              actor->name.len))
    {
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
        *p++ = '"';
        p = ngx_cpymem(p, actor->name.data, actor->name.len);
        p = ngx_cpymem(p, "\":\"", 3);
        p = ngx_cpymem(p, ctx->user.data, ctx->user.len);
        *p++ = '"';

        if (ctx->body.nmembers) {
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

