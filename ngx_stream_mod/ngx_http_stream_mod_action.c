
/*
 * The action table (SPEC section 4) and the router that maps the path the
 * client sent ($request_uri) to an action.  Field lists follow Stream's
 * server-side OpenAPI schemas (v236); request_permission follows the
 * client-side one.
 */


#include "ngx_http_stream_mod.h"


#define S   NGX_HTTP_STREAM_MOD_T_STRING
#define B   NGX_HTTP_STREAM_MOD_T_BOOL
#define U   NGX_HTTP_STREAM_MOD_T_UINT
#define A   NGX_HTTP_STREAM_MOD_T_STRINGS
#define O   NGX_HTTP_STREAM_MOD_T_OBJECT

#define REQ     NGX_HTTP_STREAM_MOD_F_REQUIRED
#define ACTOR   (NGX_HTTP_STREAM_MOD_F_ACTOR|NGX_HTTP_STREAM_MOD_F_USER_ID)
#define TARGET  (NGX_HTTP_STREAM_MOD_F_TARGET|NGX_HTTP_STREAM_MOD_F_USER_ID)

#define F(name, type, flags)  { ngx_string(name), type, flags, 0, 0, NULL }
#define FA(name, flags, min, max, values)                                    \
    { ngx_string(name), A, flags, min, max, values }
#define FE(name, values)  { ngx_string(name), S, 0, 0, 0, values }


static const char  *ngx_http_stream_mod_delete_messages[] = {
    "soft", "pruning", "hard", NULL
};

static const char  *ngx_http_stream_mod_permissions[] = {
    "screenshare", "send-audio", "send-video", NULL
};


static ngx_http_stream_mod_field_t  ngx_http_stream_mod_ban_fields[] = {
    F("banned_by", O, 0),
    F("banned_by_id", S, ACTOR),
    F("channel_cid", S, 0),
    FE("delete_messages", ngx_http_stream_mod_delete_messages),
    F("ip_ban", B, 0),
    F("reason", S, 0),
    F("shadow", B, 0),
    F("target_user_id", S, REQ|TARGET),
    F("timeout", U, 0)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_unban_fields[] = {
    F("unbanned_by", O, 0),
    F("unbanned_by_id", S, ACTOR),
    /* DELETE /moderation/ban may name the target in the body */
    F("target_user_id", S, TARGET)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_mute_fields[] = {
    FA("target_ids", REQ|TARGET, 0, 1000, NULL),
    F("timeout", U, 0),
    F("user", O, 0),
    F("user_id", S, ACTOR)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_unmute_fields[] = {
    FA("target_ids", REQ|TARGET, 0, 1000, NULL),
    F("user", O, 0),
    F("user_id", S, ACTOR)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_block_fields[] = {
    F("blocked_user_id", S, REQ|TARGET),
    F("user", O, 0),
    F("user_id", S, ACTOR)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_deactivate_fields[] = {
    F("created_by", O, 0),
    F("created_by_id", S, ACTOR),
    F("mark_messages_deleted", B, 0)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_reactivate_fields[] = {
    F("created_by", O, 0),
    F("created_by_id", S, ACTOR),
    F("name", S, 0),
    F("restore_messages", B, 0)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_deactivates_fields[] = {
    F("created_by", O, 0),
    F("created_by_id", S, ACTOR),
    F("mark_channels_deleted", B, 0),
    F("mark_messages_deleted", B, 0),
    FA("user_ids", REQ|TARGET, 1, 100, NULL)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_reactivates_fields[] = {
    F("created_by", O, 0),
    F("created_by_id", S, ACTOR),
    F("restore_channels", B, 0),
    F("restore_messages", B, 0),
    FA("user_ids", REQ|TARGET, 1, 100, NULL)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_export_fields[] = {
    FA("user_ids", REQ|TARGET, 1, 25, NULL)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_mute_users_fields[] = {
    F("audio", B, 0),
    F("mute_all_users", B, 0),
    F("muted_by", O, 0),
    F("muted_by_id", S, ACTOR),
    F("screenshare", B, 0),
    F("screenshare_audio", B, 0),
    FA("user_ids", TARGET, 0, 0, NULL),
    F("video", B, 0)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_call_user_fields[] = {
    F("user_id", S, REQ|TARGET)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_kick_fields[] = {
    F("block", B, 0),
    F("kicked_by", O, 0),
    F("kicked_by_id", S, ACTOR),
    F("user_id", S, REQ|TARGET)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_permissions_fields[] = {
    FA("grant_permissions", 0, 0, 0, ngx_http_stream_mod_permissions),
    FA("revoke_permissions", 0, 0, 0, ngx_http_stream_mod_permissions),
    F("user_id", S, REQ|TARGET)
};

static ngx_http_stream_mod_field_t  ngx_http_stream_mod_request_fields[] = {
    FA("permissions", REQ, 0, 0, ngx_http_stream_mod_permissions)
};


static const char  *ngx_http_stream_mod_unban_query[] = {
    "target_user_id", "channel_cid", "created_by", NULL
};

static const char  *ngx_http_stream_mod_blocked_query[] = {
    "user_id", NULL
};


#define FIELDS(f)  f, sizeof(f) / sizeof(ngx_http_stream_mod_field_t)
#define NOFIELDS   NULL, 0
#define POST       ngx_string("POST")
#define GET        ngx_string("GET")
#define NONE       ngx_null_string

/*       name, id, method, upstream path, fields, query, query target,
 *       query actor, body, call, user token, param target */

static ngx_http_stream_mod_action_t  ngx_http_stream_mod_actions[] = {

    { ngx_string("ban"), NGX_HTTP_STREAM_MOD_BAN, POST,
      ngx_string("/api/v2/moderation/ban"),
      FIELDS(ngx_http_stream_mod_ban_fields), NULL, NONE, NONE, 1, 0, 0, 0 },

    { ngx_string("unban"), NGX_HTTP_STREAM_MOD_UNBAN, POST,
      ngx_string("/api/v2/moderation/unban"),
      FIELDS(ngx_http_stream_mod_unban_fields),
      ngx_http_stream_mod_unban_query, ngx_string("target_user_id"), NONE,
      1, 0, 0, 0 },

    { ngx_string("mute"), NGX_HTTP_STREAM_MOD_MUTE, POST,
      ngx_string("/api/v2/moderation/mute"),
      FIELDS(ngx_http_stream_mod_mute_fields), NULL, NONE, NONE, 1, 0, 0, 0 },

    { ngx_string("unmute"), NGX_HTTP_STREAM_MOD_UNMUTE, POST,
      ngx_string("/api/v2/moderation/unmute"),
      FIELDS(ngx_http_stream_mod_unmute_fields), NULL, NONE, NONE,
      1, 0, 0, 0 },

    { ngx_string("block_user"), NGX_HTTP_STREAM_MOD_BLOCK_USER, POST,
      ngx_string("/api/v2/users/block"),
      FIELDS(ngx_http_stream_mod_block_fields), NULL, NONE, NONE,
      1, 0, 0, 0 },

    { ngx_string("unblock_user"), NGX_HTTP_STREAM_MOD_UNBLOCK_USER, POST,
      ngx_string("/api/v2/users/unblock"),
      FIELDS(ngx_http_stream_mod_block_fields), NULL, NONE, NONE,
      1, 0, 0, 0 },

    { ngx_string("blocked_users"), NGX_HTTP_STREAM_MOD_BLOCKED_USERS, GET,
      ngx_string("/api/v2/users/block"), NOFIELDS,
      ngx_http_stream_mod_blocked_query, NONE, ngx_string("user_id"),
      0, 0, 0, 0 },

    { ngx_string("deactivate_user"), NGX_HTTP_STREAM_MOD_DEACTIVATE_USER,
      POST, ngx_string("/api/v2/users/$0/deactivate"),
      FIELDS(ngx_http_stream_mod_deactivate_fields), NULL, NONE, NONE,
      1, 0, 0, 1 },

    { ngx_string("reactivate_user"), NGX_HTTP_STREAM_MOD_REACTIVATE_USER,
      POST, ngx_string("/api/v2/users/$0/reactivate"),
      FIELDS(ngx_http_stream_mod_reactivate_fields), NULL, NONE, NONE,
      1, 0, 0, 1 },

    { ngx_string("deactivate_users"), NGX_HTTP_STREAM_MOD_DEACTIVATE_USERS,
      POST, ngx_string("/api/v2/users/deactivate"),
      FIELDS(ngx_http_stream_mod_deactivates_fields), NULL, NONE, NONE,
      1, 0, 0, 0 },

    { ngx_string("reactivate_users"), NGX_HTTP_STREAM_MOD_REACTIVATE_USERS,
      POST, ngx_string("/api/v2/users/reactivate"),
      FIELDS(ngx_http_stream_mod_reactivates_fields), NULL, NONE, NONE,
      1, 0, 0, 0 },

    { ngx_string("export_users"), NGX_HTTP_STREAM_MOD_EXPORT_USERS, POST,
      ngx_string("/api/v2/export/users"),
      FIELDS(ngx_http_stream_mod_export_fields), NULL, NONE, NONE,
      1, 0, 0, 0 },

    { ngx_string("get_task"), NGX_HTTP_STREAM_MOD_GET_TASK, GET,
      ngx_string("/api/v2/tasks/$0"), NOFIELDS, NULL, NONE, NONE,
      0, 0, 0, 0 },

    { ngx_string("mute_users"), NGX_HTTP_STREAM_MOD_MUTE_USERS, POST,
      ngx_string("/api/v2/video/call/$0/$1/mute_users"),
      FIELDS(ngx_http_stream_mod_mute_users_fields), NULL, NONE, NONE,
      1, 1, 0, 0 },

    { ngx_string("block_call_user"), NGX_HTTP_STREAM_MOD_BLOCK_CALL_USER,
      POST, ngx_string("/api/v2/video/call/$0/$1/block"),
      FIELDS(ngx_http_stream_mod_call_user_fields), NULL, NONE, NONE,
      1, 1, 0, 0 },

    { ngx_string("unblock_call_user"), NGX_HTTP_STREAM_MOD_UNBLOCK_CALL_USER,
      POST, ngx_string("/api/v2/video/call/$0/$1/unblock"),
      FIELDS(ngx_http_stream_mod_call_user_fields), NULL, NONE, NONE,
      1, 1, 0, 0 },

    { ngx_string("kick_user"), NGX_HTTP_STREAM_MOD_KICK_USER, POST,
      ngx_string("/api/v2/video/call/$0/$1/kick"),
      FIELDS(ngx_http_stream_mod_kick_fields), NULL, NONE, NONE,
      1, 1, 0, 0 },

    { ngx_string("update_user_permissions"),
      NGX_HTTP_STREAM_MOD_UPDATE_USER_PERMISSIONS, POST,
      ngx_string("/api/v2/video/call/$0/$1/user_permissions"),
      FIELDS(ngx_http_stream_mod_permissions_fields), NULL, NONE, NONE,
      1, 1, 0, 0 },

    { ngx_string("end_call"), NGX_HTTP_STREAM_MOD_END_CALL, POST,
      ngx_string("/api/v2/video/call/$0/$1/mark_ended"), NOFIELDS,
      NULL, NONE, NONE, 1, 1, 0, 0 },

    { ngx_string("request_permission"), NGX_HTTP_STREAM_MOD_REQUEST_PERMISSION,
      POST, ngx_string("/api/v2/video/call/$0/$1/request_permission"),
      FIELDS(ngx_http_stream_mod_request_fields), NULL, NONE, NONE,
      1, 1, 1, 0 }
};


/* gateway routes: "*" segments are path parameters */

typedef struct {
    ngx_uint_t     method;
    const char    *path;
    ngx_uint_t     action;
} ngx_http_stream_mod_route_t;


static ngx_http_stream_mod_route_t  ngx_http_stream_mod_routes[] = {
    { NGX_HTTP_POST, "/moderation/ban", NGX_HTTP_STREAM_MOD_BAN },
    { NGX_HTTP_DELETE, "/moderation/ban", NGX_HTTP_STREAM_MOD_UNBAN },
    { NGX_HTTP_POST, "/moderation/unban", NGX_HTTP_STREAM_MOD_UNBAN },
    { NGX_HTTP_POST, "/moderation/mute", NGX_HTTP_STREAM_MOD_MUTE },
    { NGX_HTTP_POST, "/moderation/unmute", NGX_HTTP_STREAM_MOD_UNMUTE },
    { NGX_HTTP_POST, "/moderation/block", NGX_HTTP_STREAM_MOD_BLOCK_USER },
    { NGX_HTTP_POST, "/moderation/unblock",
      NGX_HTTP_STREAM_MOD_UNBLOCK_USER },
    { NGX_HTTP_GET, "/moderation/blocked",
      NGX_HTTP_STREAM_MOD_BLOCKED_USERS },
    { NGX_HTTP_POST, "/moderation/users/*/deactivate",
      NGX_HTTP_STREAM_MOD_DEACTIVATE_USER },
    { NGX_HTTP_POST, "/moderation/users/*/reactivate",
      NGX_HTTP_STREAM_MOD_REACTIVATE_USER },
    { NGX_HTTP_POST, "/moderation/users/deactivate",
      NGX_HTTP_STREAM_MOD_DEACTIVATE_USERS },
    { NGX_HTTP_POST, "/moderation/users/reactivate",
      NGX_HTTP_STREAM_MOD_REACTIVATE_USERS },
    { NGX_HTTP_POST, "/moderation/users/export",
      NGX_HTTP_STREAM_MOD_EXPORT_USERS },
    { NGX_HTTP_GET, "/moderation/tasks/*", NGX_HTTP_STREAM_MOD_GET_TASK },
    { NGX_HTTP_POST, "/calls/*/*/mute_users", NGX_HTTP_STREAM_MOD_MUTE_USERS },
    { NGX_HTTP_POST, "/calls/*/*/block", NGX_HTTP_STREAM_MOD_BLOCK_CALL_USER },
    { NGX_HTTP_POST, "/calls/*/*/unblock",
      NGX_HTTP_STREAM_MOD_UNBLOCK_CALL_USER },
    { NGX_HTTP_POST, "/calls/*/*/kick", NGX_HTTP_STREAM_MOD_KICK_USER },
    { NGX_HTTP_POST, "/calls/*/*/user_permissions",
      NGX_HTTP_STREAM_MOD_UPDATE_USER_PERMISSIONS },
    { NGX_HTTP_POST, "/calls/*/*/mark_ended", NGX_HTTP_STREAM_MOD_END_CALL },
    { NGX_HTTP_POST, "/calls/*/*/request_permission",
      NGX_HTTP_STREAM_MOD_REQUEST_PERMISSION },
    { 0, NULL, 0 }
};


#define NGX_HTTP_STREAM_MOD_MAX_SEGMENTS  8


static ngx_int_t ngx_http_stream_mod_match(const char *pattern,
    ngx_str_t *segs, ngx_uint_t nsegs, ngx_str_t *params);
static ngx_int_t ngx_http_stream_mod_parse_query(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, u_char *p, u_char *last);


ngx_http_stream_mod_action_t *
ngx_http_stream_mod_action_get(ngx_uint_t id)
{
    return (id < NGX_HTTP_STREAM_MOD_NACTIONS)
           ? &ngx_http_stream_mod_actions[id] : NULL;
}


ngx_http_stream_mod_action_t *
ngx_http_stream_mod_action_find(ngx_str_t *name)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_STREAM_MOD_NACTIONS; i++) {
        if (name->len == ngx_http_stream_mod_actions[i].name.len
            && ngx_strncmp(name->data, ngx_http_stream_mod_actions[i].name.data,
                           name->len) == 0)
        {
            return &ngx_http_stream_mod_actions[i];
        }
    }

    return NULL;
}


/* Stream user ids and path parameters: [A-Za-z0-9@_-]{1,max} */

ngx_uint_t
ngx_http_stream_mod_valid_id(u_char *p, size_t len, size_t max)
{
    u_char  c;

    if (len == 0 || len > max) {
        return 0;
    }

    while (len--) {
        c = *p++;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || c == '@' || c == '_' || c == '-')
        {
            continue;
        }

        return 0;
    }

    return 1;
}


ngx_int_t
ngx_http_stream_mod_route(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx)
{
    u_char                       *p, *last, *start, *q;
    ngx_str_t                     segs[NGX_HTTP_STREAM_MOD_MAX_SEGMENTS];
    ngx_str_t                     params[2];
    ngx_int_t                     rc;
    ngx_uint_t                    nsegs, i, allow, n;
    ngx_http_stream_mod_route_t  *rt;

    /*
     * Route on what the client sent, not on r->uri: NGINX has already
     * merged slashes and resolved dot segments there.
     */

    p = r->unparsed_uri.data;
    last = p + r->unparsed_uri.len;

    q = ngx_strlchr(p, last, '?');
    if (q == NULL) {
        q = last;
    }

    if (p == q || *p != '/') {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_BAD_REQUEST,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "malformed path");
    }

    nsegs = 0;
    p++;

    for ( ;; ) {
        start = p;

        while (p < q && *p != '/') {
            if (*p == '%' || *p == '\\' || *p == '#') {
                return ngx_http_stream_mod_fail(r, ctx,
                                      NGX_HTTP_STREAM_MOD_REJECT,
                                      NGX_HTTP_BAD_REQUEST,
                                      NGX_HTTP_STREAM_MOD_E_INPUT,
                                      "encoded or escaped characters are not "
                                      "allowed in the path");
            }

            p++;
        }

        if (p == start && p < q) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "empty path segment");
        }

        if ((p - start == 1 && start[0] == '.')
            || (p - start == 2 && start[0] == '.' && start[1] == '.'))
        {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "dot segments are not allowed "
                                            "in the path");
        }

        if (nsegs == NGX_HTTP_STREAM_MOD_MAX_SEGMENTS) {
            goto not_found;
        }

        segs[nsegs].data = start;
        segs[nsegs].len = p - start;
        nsegs++;

        if (p == q) {
            break;
        }

        p++;
    }

    allow = 0;
    n = 0;

    for (rt = ngx_http_stream_mod_routes; rt->path; rt++) {

        rc = ngx_http_stream_mod_match(rt->path, segs, nsegs, params);

        if (rc == NGX_DECLINED) {
            continue;
        }

        if (rt->method != r->method) {
            allow |= rt->method;
            n++;
            continue;
        }

        if (rc == NGX_ERROR) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "invalid path parameter: "
                                            "expected [A-Za-z0-9@_-]{1,64}");
        }

        ctx->action = &ngx_http_stream_mod_actions[rt->action];

        for (i = 0; i < 2; i++) {
            ctx->params[i] = params[i];
        }

        if (ctx->action->call) {
            n = params[0].len + 1 + params[1].len;
            ctx->call.data = ngx_pnalloc(r->pool, n);
            if (ctx->call.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ctx->call.len = ngx_sprintf(ctx->call.data, "%V:%V",
                                        &params[0], &params[1])
                            - ctx->call.data;
        }

        if (ctx->action->param_target) {
            if (ngx_http_stream_mod_add_target(r, ctx, &params[0]) != NGX_OK) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

        return ngx_http_stream_mod_parse_query(r, ctx, q, last);
    }

    if (allow) {
        p = ngx_pnalloc(r->pool, sizeof("GET, POST, DELETE") - 1);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->err_allow.data = p;

        if (allow & NGX_HTTP_GET) {
            p = ngx_cpymem(p, "GET, ", 5);
        }

        if (allow & NGX_HTTP_POST) {
            p = ngx_cpymem(p, "POST, ", 6);
        }

        if (allow & NGX_HTTP_DELETE) {
            p = ngx_cpymem(p, "DELETE, ", 8);
        }

        ctx->err_allow.len = p - ctx->err_allow.data - 2;

        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_NOT_ALLOWED,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "method %V is not allowed here",
                                        &r->method_name);
    }

not_found:

    return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                    NGX_HTTP_NOT_FOUND,
                                    NGX_HTTP_STREAM_MOD_E_NOT_FOUND,
                                    "no moderation endpoint at this path");
}


/*
 * NGX_OK: the pattern matches and the parameters are valid;
 * NGX_ERROR: it matches but a parameter is invalid; NGX_DECLINED: no match.
 */

static ngx_int_t
ngx_http_stream_mod_match(const char *pattern, ngx_str_t *segs,
    ngx_uint_t nsegs, ngx_str_t *params)
{
    size_t       len;
    ngx_int_t    rc;
    ngx_uint_t   i, np;
    const char  *p, *end;

    rc = NGX_OK;
    np = 0;
    params[0].len = 0;
    params[1].len = 0;
    p = pattern + 1;

    for (i = 0; i < nsegs; i++) {

        if (*p == '\0') {
            return NGX_DECLINED;
        }

        end = ngx_strchr(p, '/');
        len = end ? (size_t) (end - p) : ngx_strlen(p);

        if (len == 1 && *p == '*') {
            if (!ngx_http_stream_mod_valid_id(segs[i].data, segs[i].len,
                                              NGX_HTTP_STREAM_MOD_MAX_PARAM))
            {
                rc = NGX_ERROR;
            }

            params[np++] = segs[i];

        } else if (len != segs[i].len
                   || ngx_strncmp(p, segs[i].data, len) != 0)
        {
            return NGX_DECLINED;
        }

        p += len;

        if (*p == '/') {
            p++;
        }
    }

    return (*p == '\0') ? rc : NGX_DECLINED;
}


/* query values that may be forwarded: no escapes, nothing to re-encode */

static ngx_uint_t
ngx_http_stream_mod_valid_query_value(u_char *p, size_t len)
{
    u_char  c;

    if (len == 0 || len > NGX_HTTP_STREAM_MOD_MAX_USER_ID) {
        return 0;
    }

    while (len--) {
        c = *p++;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || c == '@' || c == '_' || c == '-'
            || c == ':' || c == '!' || c == '.')
        {
            continue;
        }

        return 0;
    }

    return 1;
}


/*
 * Keep only the query parameters the upstream operation defines; everything
 * else, a client's api_key included, is dropped.  A defined parameter given
 * twice is refused: Stream must not act on a value we did not check.
 */

static ngx_int_t
ngx_http_stream_mod_parse_query(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, u_char *p, u_char *last)
{
    u_char                        *start, *eq, *out;
    ngx_str_t                      name, value;
    ngx_uint_t                     i, seen;
    const char                   **q;
    ngx_http_stream_mod_action_t  *action;

    action = ctx->action;

    if (action->query == NULL || p == last) {
        return NGX_OK;
    }

    out = ngx_pnalloc(r->pool, last - p);
    if (out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->query_extra.data = out;
    seen = 0;

    for (p++; p < last; p++) {
        start = p;

        while (p < last && *p != '&') {
            p++;
        }

        eq = ngx_strlchr(start, p, '=');
        if (eq == NULL) {
            continue;
        }

        name.data = start;
        name.len = eq - start;
        value.data = eq + 1;
        value.len = p - value.data;

        for (q = action->query, i = 0; *q; q++, i++) {
            if (ngx_strlen(*q) == name.len
                && ngx_strncmp(*q, name.data, name.len) == 0)
            {
                break;
            }
        }

        if (*q == NULL) {
            continue;
        }

        if (seen & (1 << i)) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "query parameter \"%V\" "
                                            "given twice", &name);
        }

        seen |= 1 << i;

        if (!ngx_http_stream_mod_valid_query_value(value.data, value.len)) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "invalid value for query "
                                            "parameter \"%V\"", &name);
        }

        if (action->query_target.len == name.len
            && ngx_strncmp(action->query_target.data, name.data, name.len)
               == 0)
        {
            ctx->query_target = value;
            continue;
        }

        if (action->query_actor.len == name.len
            && ngx_strncmp(action->query_actor.data, name.data, name.len)
               == 0)
        {
            ctx->query_actor = value;
            continue;
        }

        *out++ = '&';
        out = ngx_cpymem(out, start, p - start);
    }

    ctx->query_extra.len = out - ctx->query_extra.data;

    return NGX_OK;
}
