
/*
 * fuzz_body: body inspection and actor stamping,
 * ngx_http_stream_mod_inspect_body() then ngx_http_stream_mod_stamp_body().
 *
 * Input: the first byte picks the action (byte % NACTIONS); with its high
 * bit set, the request also has a target in the query (target_user_id=u-2,
 * as the router leaves it for unban); the rest is the raw body as the
 * client sent it, in an allocation of exactly its size.  The caller is
 * "mod-1".  For deactivate_user and reactivate_user the path user "u-9" is
 * a target already, as the router leaves it.
 *
 * Invariants (SPEC section 4), abort() when broken:
 *   - inspection answers NGX_OK, 400, 403 or 500; a refusal is recorded;
 *   - when it passes, the body is a JSON object, every target is a valid
 *     user id, and the stamped body (r->request_body->bufs) parses as a
 *     JSON object whose actor field, when the action has one, is "mod-1"
 *     (the buffers are in memory, only the last one is marked last);
 *   - stamping adds the actor field and changes nothing else: the stamped
 *     object less the actor equals the client's object, its length is the
 *     client's plus the actor member, and a body that already names the
 *     caller (or whose action has no actor) goes upstream byte for byte;
 *   - Content-Length (headers_in.content_length_n) is the stamped size;
 *   - the module's JSON reader (json.c) agrees with jansson, the decoder it
 *     stands in for (JSON_REJECT_DUPLICATES|JSON_DECODE_ANY): the same
 *     texts refused, as a duplicate key or as invalid, at the same line and
 *     column; for an accepted object the same members, in the same order,
 *     with the same types and values.  One difference on purpose: a NUL
 *     byte after a number, which jansson skips, is refused.
 */


#include "fuzz_common.h"


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_init();

    return 0;
}


static void
fuzz_check_stamped(fuzz_req_t *fr, const uint8_t *raw, size_t raw_len)
{
    u_char                        *p;
    size_t                         len, want;
    json_t                        *client, *stamped, *actor_v;
    ngx_buf_t                     *b;
    ngx_chain_t                   *cl;
    json_error_t                   err;
    ngx_http_stream_mod_ctx_t     *ctx;
    ngx_http_stream_mod_field_t   *actor;
    ngx_http_stream_mod_action_t  *action;

    ctx = fr->ctx;
    action = ctx->action;

    if (!action->body) {
        FUZZ_ASSERT(fr->r->request_body == NULL,
                    "%s takes no body but one was set", action->name.data);
        return;
    }

    FUZZ_ASSERT(fr->r->request_body && fr->r->request_body->bufs,
                "no stamped body for %s", action->name.data);

    /* in-memory buffers, the last one marked last: concatenated here */

    len = 0;

    for (cl = fr->r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        FUZZ_ASSERT(b != NULL && b->memory && !b->in_file
                    && b->last >= b->pos,
                    "stamped body: a buffer not in memory");
        FUZZ_ASSERT((cl->next == NULL) == (b->last_buf != 0),
                    "stamped body: last_buf %s the last buffer",
                    b->last_buf ? "before" : "missing on");

        len += b->last - b->pos;
    }

    FUZZ_ASSERT(fr->r->headers_in.content_length_n == (off_t) len,
                "Content-Length %ld for a body of %zu bytes",
                (long) fr->r->headers_in.content_length_n, len);

    /* an exact-size copy: an overread shows */
    p = ngx_pnalloc(fr->pool, len ? len : 1);
    FUZZ_ASSERT(p != NULL, "out of memory");
    len = 0;

    for (cl = fr->r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        if (b->last > b->pos) {
            ngx_memcpy(p + len, b->pos, b->last - b->pos);
            len += b->last - b->pos;
        }
    }

    stamped = json_loadb((char *) p, len, JSON_REJECT_DUPLICATES, &err);

    FUZZ_ASSERT(json_is_object(stamped),
                "%s: stamped body is not a JSON object: %s: \"%.*s\"",
                action->name.data, err.text, (int) len, p);

    if (raw_len) {
        client = json_loadb((char *) raw, raw_len, JSON_REJECT_DUPLICATES,
                            NULL);
    } else {
        client = json_object();
    }

    FUZZ_ASSERT(json_is_object(client), "accepted a body that is not a "
                "JSON object");

    actor = fuzz_actor_field(action);

    if (actor == NULL
        || json_object_get(client, (char *) actor->name.data) != NULL)
    {
        /* nothing to stamp: the client's bytes, unchanged */

        if (raw_len) {
            FUZZ_ASSERT(len == raw_len && ngx_memcmp(p, raw, len) == 0,
                        "%s: the body was changed: \"%.*s\"",
                        action->name.data, (int) len, p);
        } else {
            FUZZ_ASSERT(len == 2 && ngx_memcmp(p, "{}", 2) == 0,
                        "an empty body is not sent as {}");
        }

        if (actor) {
            actor_v = json_object_get(stamped, (char *) actor->name.data);
            FUZZ_ASSERT(json_is_string(actor_v)
                        && strcmp(json_string_value(actor_v), FUZZ_USER)
                           == 0,
                        "%s: accepted a body whose %s is not the caller",
                        action->name.data, actor->name.data);
        }

        json_decref(client);
        json_decref(stamped);
        return;
    }

    actor_v = json_object_get(stamped, (char *) actor->name.data);

    FUZZ_ASSERT(json_is_string(actor_v)
                && strcmp(json_string_value(actor_v), FUZZ_USER) == 0,
                "%s: stamped %s is not \"" FUZZ_USER "\": \"%.*s\"",
                action->name.data, actor->name.data, (int) len, p);

    /* "actor":"mod-1" and a comma unless the object was empty */
    want = (raw_len ? raw_len : 2) + actor->name.len
           + sizeof("\"\":\"" FUZZ_USER "\"") - 1
           + (json_object_size(client) ? 1 : 0);

    FUZZ_ASSERT(len == want, "%s: stamped body is %zu bytes, not %zu: "
                "\"%.*s\"", action->name.data, len, want, (int) len, p);

    FUZZ_ASSERT(json_object_size(stamped) == json_object_size(client) + 1,
                "stamping changed the number of members");

    (void) json_object_del(stamped, (char *) actor->name.data);

    FUZZ_ASSERT(json_equal(stamped, client),
                "%s: stamping changed more than the actor: \"%.*s\"",
                action->name.data, (int) len, p);

    json_decref(client);
    json_decref(stamped);
}


static ngx_uint_t
fuzz_same_value(ngx_http_stream_mod_json_value_t *v, json_t *j,
    ngx_uint_t top)
{
    size_t   i;
    json_t  *raw;

    switch (json_typeof(j)) {

    case JSON_NULL:
        return v->type == NGX_HTTP_STREAM_MOD_J_NULL;

    case JSON_TRUE:
        return v->type == NGX_HTTP_STREAM_MOD_J_TRUE;

    case JSON_FALSE:
        return v->type == NGX_HTTP_STREAM_MOD_J_FALSE;

    case JSON_INTEGER:
        return v->type == NGX_HTTP_STREAM_MOD_J_INTEGER
               && v->integer == json_integer_value(j);

    case JSON_REAL:
        return v->type == NGX_HTTP_STREAM_MOD_J_REAL;

    case JSON_STRING:
        return v->type == NGX_HTTP_STREAM_MOD_J_STRING
               && v->str.len == json_string_length(j)
               && ngx_memcmp(v->str.data, json_string_value(j),
                             v->str.len) == 0;

    case JSON_ARRAY:
        if (v->type != NGX_HTTP_STREAM_MOD_J_ARRAY) {
            return 0;
        }

        if (top) {
            if (v->nitems != json_array_size(j)) {
                return 0;
            }

            for (i = 0; i < v->nitems; i++) {
                if (!fuzz_same_value(&v->items[i], json_array_get(j, i), 0)) {
                    return 0;
                }
            }
        }

        break;

    default:
        if (v->type != NGX_HTTP_STREAM_MOD_J_OBJECT) {
            return 0;
        }

        break;
    }

    /* the raw bytes of the value are the value */

    raw = json_loadb((char *) v->raw.data, v->raw.len,
                     JSON_REJECT_DUPLICATES|JSON_DECODE_ANY, NULL);
    i = json_equal(raw, j);
    json_decref(raw);

    return i;
}


static void
fuzz_check_reader(fuzz_req_t *fr, const uint8_t *raw, size_t raw_len,
    ngx_int_t rc)
{
    char                                want[128];
    json_t                             *j, *jv;
    size_t                              i;
    const char                         *key;
    json_error_t                        err;
    ngx_http_stream_mod_ctx_t          *ctx;
    ngx_http_stream_mod_json_member_t  *m;

    ctx = fr->ctx;

    if (raw_len == 0) {
        return;
    }

    j = json_loadb((char *) raw, raw_len,
                   JSON_REJECT_DUPLICATES|JSON_DECODE_ANY, &err);

    if (memchr(raw, '\0', raw_len)) {
        /*
         * jansson 2.14 skips a NUL byte that follows a number (putting the
         * byte back looks like an empty buffer), so it may accept the text,
         * or fail further on: the module refuses it where it is.
         */
        FUZZ_ASSERT(rc == NGX_HTTP_BAD_REQUEST
                    && (ngx_strncmp(ctx->err_message.data, "invalid JSON", 12)
                        == 0
                        || ngx_strncmp(ctx->err_message.data,
                                       "duplicate key", 13) == 0),
                    "a NUL byte passed: %ld \"%.*s\"", (long) rc,
                    (int) ctx->err_message.len, ctx->err_message.data);
        json_decref(j);
        return;
    }

    if (j == NULL) {
        snprintf(want, sizeof(want), "%s at line %d, column %d",
                 json_error_code(&err) == json_error_duplicate_key
                 ? "duplicate key in JSON body" : "invalid JSON body",
                 err.line, err.column);

        FUZZ_ASSERT(rc == NGX_HTTP_BAD_REQUEST
                    && ctx->err_message.len == strlen(want)
                    && ngx_memcmp(ctx->err_message.data, want,
                                  ctx->err_message.len) == 0,
                    "jansson: \"%s\" (%s), the module: %ld \"%.*s\"",
                    want, err.text, (long) rc, (int) ctx->err_message.len,
                    ctx->err_message.data);
        return;
    }

    FUZZ_ASSERT(ctx->err_message.len == 0
                || (ngx_strncmp(ctx->err_message.data, "invalid JSON", 12)
                    != 0
                    && ngx_strncmp(ctx->err_message.data, "duplicate key",
                                   13) != 0),
                "jansson accepts what the module refuses: \"%.*s\"",
                (int) ctx->err_message.len, ctx->err_message.data);

    if (!json_is_object(j)) {
        FUZZ_ASSERT(ctx->body.type != NGX_HTTP_STREAM_MOD_J_OBJECT,
                    "the module reads an object, jansson does not");
        json_decref(j);
        return;
    }

    FUZZ_ASSERT(ctx->body.type == NGX_HTTP_STREAM_MOD_J_OBJECT
                && ctx->body.nmembers == json_object_size(j),
                "%zu members for the module, %zu for jansson",
                (size_t) ctx->body.nmembers, json_object_size(j));

    /* jansson keeps insertion order */

    i = 0;

    json_object_foreach(j, key, jv) {
        m = &ctx->body.members[i++];

        FUZZ_ASSERT(m->key.len == strlen(key)
                    && ngx_memcmp(m->key.data, key, m->key.len) == 0,
                    "member %zu: key \"%.*s\", jansson \"%s\"", i,
                    (int) m->key.len, m->key.data, key);

        FUZZ_ASSERT(fuzz_same_value(&m->value, jv, 1),
                    "member \"%s\": the module reads another value", key);
    }

    json_decref(j);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_int_t                      rc;
    ngx_str_t                     *t, path_user;
    fuzz_req_t                     fr;
    ngx_uint_t                     i;
    ngx_http_stream_mod_ctx_t     *ctx;
    ngx_http_stream_mod_action_t  *action;

    if (size < 1 || size > 64 * 1024) {
        return -1;
    }

    fuzz_request(fuzz_pool(), &fr);
    ctx = fr.ctx;

    action = ngx_http_stream_mod_action_get(data[0]
                                            % NGX_HTTP_STREAM_MOD_NACTIONS);
    FUZZ_ASSERT(action != NULL, "no action %d", data[0]);

    ctx->action = action;
    ngx_str_set(&ctx->user, FUZZ_USER);

    /* what the router leaves in ctx */

    if (action->call) {
        ngx_str_set(&ctx->params[0], "default");
        ngx_str_set(&ctx->params[1], "call-1");
        ngx_str_set(&ctx->call, "default:call-1");
    }

    if (action->param_target) {
        ngx_str_set(&path_user, "u-9");
        ctx->params[0] = path_user;

        if (ngx_http_stream_mod_add_target(fr.r, ctx, &path_user) != NGX_OK) {
            abort();
        }
    }

    if ((data[0] & 0x80) && action->query_target.len) {
        ngx_str_set(&ctx->query_target, "u-2");
    }

    /* the body filter's capture: raw_size may exceed raw_len */
    ctx->raw_len = size - 1;
    ctx->raw_size = size - 1;
    ctx->raw_max = fr.lcf->max_body_size;
    ctx->raw = (size > 1) ? fuzz_copy(fr.pool, data + 1, size - 1, 0) : NULL;

    rc = ngx_http_stream_mod_inspect_body(fr.r, ctx);

    FUZZ_ASSERT(rc == NGX_OK || rc == NGX_HTTP_BAD_REQUEST
                || rc == NGX_HTTP_FORBIDDEN
                || rc == NGX_HTTP_INTERNAL_SERVER_ERROR,
                "unexpected result %ld", (long) rc);

    fuzz_check_reader(&fr, data + 1, size - 1, rc);

    if (rc != NGX_OK) {
        FUZZ_ASSERT(rc == NGX_HTTP_INTERNAL_SERVER_ERROR
                    || (ctx->err_status == rc && ctx->err_message.len > 0
                        && ctx->decision == NGX_HTTP_STREAM_MOD_REJECT),
                    "refusal %ld not recorded", (long) rc);
        goto done;
    }

    FUZZ_ASSERT(ctx->body.type == NGX_HTTP_STREAM_MOD_J_OBJECT,
                "passed without a JSON object");

    t = ctx->targets.elts;

    for (i = 0; i < ctx->targets.nelts; i++) {
        FUZZ_ASSERT(fuzz_valid_id(t[i].data, t[i].len,
                                  NGX_HTTP_STREAM_MOD_MAX_USER_ID),
                    "invalid target \"%.*s\"", (int) t[i].len, t[i].data);
    }

    if (action->query_target.len) {
        FUZZ_ASSERT(ctx->query_target.len > 0, "%s passed without a target",
                    action->name.data);
    }

    rc = ngx_http_stream_mod_stamp_body(fr.r, ctx);

    FUZZ_ASSERT(rc == NGX_OK, "stamping failed: %ld", (long) rc);

    fuzz_check_stamped(&fr, data + 1, size - 1);

done:

    ngx_destroy_pool(fr.pool);

    return 0;
}
