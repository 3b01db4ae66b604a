
/*
 * fuzz_policy: the policy loader, ngx_http_stream_mod_policy_load(), on a
 * policy text, and ngx_http_stream_mod_policy_check() of the loaded policy
 * on a fixed set of requests.
 *
 * Input: the policy file's text, in an allocation of exactly its size.
 *
 * The results are checked against a second, independent reading of SPEC
 * section 5 and docs/policy.md, written here from the documents:
 *   - the loader accepts exactly the files that the documented schema
 *     allows (top-level keys, rule keys, types, known action names,
 *     "users" or "roles", "limits" on allow rules only); a refused file
 *     logs an emerg line naming the file;
 *   - each request is decided as documented (call_cids, protected users,
 *     first matching rule, limits, default deny), with the same rule
 *     ("1", "2", ..., "default", "call_cids", "protected_users");
 *   - a request that targets a protected user is never allowed.
 */


#include "fuzz_common.h"


typedef struct {
    const char   *what;
    ngx_uint_t    action;
    const char   *user;
    const char   *claims;         /* JSON, or NULL: variable identity */
    const char   *body;           /* JSON, or NULL: no body */
    const char   *targets[4];
    const char   *type;           /* call actions */
    const char   *id;
} fuzz_preq_t;


static fuzz_preq_t  fuzz_preqs[] = {

    { "moderator bans carol for 30 min", NGX_HTTP_STREAM_MOD_BAN, "bob",
      "{\"user_id\":\"bob\",\"role\":\"moderator\"}",
      "{\"target_user_id\":\"carol\",\"timeout\":30}",
      { "carol" }, NULL, NULL },

    { "moderator ip-bans alice for 90 min", NGX_HTTP_STREAM_MOD_BAN, "bob",
      "{\"user_id\":\"bob\",\"role\":[\"moderator\",\"support\"]}",
      "{\"target_user_id\":\"alice\",\"timeout\":90,\"ip_ban\":true,"
      "\"shadow\":false}",
      { "alice" }, NULL, NULL },

    { "variable identity bans without timeout", NGX_HTTP_STREAM_MOD_BAN,
      "mod-1", NULL, "{\"target_user_id\":\"u-2\",\"reason\":\"spam\"}",
      { "u-2" }, NULL, NULL },

    { "mute of three for 5 min", NGX_HTTP_STREAM_MOD_MUTE, "alice",
      "{\"user_id\":\"alice\",\"role\":\"admin\"}",
      "{\"target_ids\":[\"a\",\"b\",\"c\"],\"timeout\":5}",
      { "a", "b", "c" }, NULL, NULL },

    { "mute all in a default call", NGX_HTTP_STREAM_MOD_MUTE_USERS, "bob",
      "{\"user_id\":\"bob\",\"role\":[\"moderator\"],"
      "\"call_cids\":[\"default:c1\"]}",
      "{\"mute_all_users\":true,\"audio\":true}",
      { NULL }, "default", "c1" },

    { "kick outside the token's calls", NGX_HTTP_STREAM_MOD_KICK_USER,
      "carol", "{\"user_id\":\"carol\",\"call_cids\":[\"livestream:c2\"]}",
      "{\"user_id\":\"dave\",\"block\":true}",
      { "dave" }, "audio_room", "c2" },

    { "kick in an audio room", NGX_HTTP_STREAM_MOD_KICK_USER, "bob",
      "{\"user_id\":\"bob\",\"role\":\"moderator\",\"call_cids\":\"x\"}",
      "{\"user_id\":\"dave\"}",
      { "dave" }, "audio_room", "c2" },

    { "deactivate a protected user", NGX_HTTP_STREAM_MOD_DEACTIVATE_USER,
      "alice", "{\"user_id\":\"alice\"}", "{}",
      { "system-bot" }, NULL, NULL },

    { "blocked users, no body", NGX_HTTP_STREAM_MOD_BLOCKED_USERS, "eve",
      NULL, NULL, { NULL }, NULL, NULL },

    { "request permission", NGX_HTTP_STREAM_MOD_REQUEST_PERMISSION, "eve",
      "{\"user_id\":\"eve\",\"role\":42}",
      "{\"permissions\":[\"send-audio\"]}",
      { NULL }, "default", "c3" },

    { "end call", NGX_HTTP_STREAM_MOD_END_CALL, "bob",
      "{\"user_id\":\"bob\",\"role\":[\"host\",7]}", "{}",
      { NULL }, "audio_room", "c4" }
};

#define FUZZ_NPREQS  (sizeof(fuzz_preqs) / sizeof(fuzz_preqs[0]))


static json_t  *fuzz_claims[FUZZ_NPREQS];
static json_t  *fuzz_bodies[FUZZ_NPREQS];


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_uint_t  i;

    fuzz_init();

    /* parsed once, kept for the whole run, read only */

    for (i = 0; i < FUZZ_NPREQS; i++) {
        if (fuzz_preqs[i].claims) {
            fuzz_claims[i] = json_loads(fuzz_preqs[i].claims, 0, NULL);
            if (fuzz_claims[i] == NULL) {
                abort();
            }
        }

        if (fuzz_preqs[i].body) {
            fuzz_bodies[i] = json_loads(fuzz_preqs[i].body, 0, NULL);
            if (fuzz_bodies[i] == NULL) {
                abort();
            }
        }
    }

    return 0;
}


/* ---- the documented schema -------------------------------------------- */


static ngx_uint_t
fuzz_strings(json_t *v)
{
    size_t   i;
    json_t  *e;

    if (!json_is_array(v)) {
        return 0;
    }

    json_array_foreach(v, i, e) {
        if (!json_is_string(e) || json_string_length(e) == 0) {
            return 0;
        }
    }

    return 1;
}


static ngx_uint_t
fuzz_known_action(json_t *v)
{
    ngx_str_t  name;

    name.data = (u_char *) json_string_value(v);
    name.len = json_string_length(v);

    if (name.len == 1 && name.data[0] == '*') {
        return 1;
    }

    return ngx_http_stream_mod_action_find(&name) != NULL;
}


static ngx_uint_t
fuzz_valid_rule(json_t *r)
{
    size_t       i;
    json_t      *v, *e;
    const char  *key, *s;
    ngx_uint_t   allow;

    if (!json_is_object(r)) {
        return 0;
    }

    json_object_foreach(r, key, v) {
        if (strcmp(key, "effect") != 0 && strcmp(key, "actions") != 0
            && strcmp(key, "users") != 0 && strcmp(key, "roles") != 0
            && strcmp(key, "call_types") != 0 && strcmp(key, "when") != 0
            && strcmp(key, "limits") != 0)
        {
            return 0;
        }
    }

    v = json_object_get(r, "effect");
    s = json_string_value(v);

    if (s == NULL || (strcmp(s, "allow") != 0 && strcmp(s, "deny") != 0)
        || strlen(s) != json_string_length(v))
    {
        return 0;
    }

    allow = (strcmp(s, "allow") == 0);

    v = json_object_get(r, "actions");
    if (!fuzz_strings(v)) {
        return 0;
    }

    json_array_foreach(v, i, e) {
        if (!fuzz_known_action(e)) {
            return 0;
        }
    }

    if (json_object_get(r, "users") == NULL
        && json_object_get(r, "roles") == NULL)
    {
        return 0;
    }

    if ((json_object_get(r, "users")
         && !fuzz_strings(json_object_get(r, "users")))
        || (json_object_get(r, "roles")
            && !fuzz_strings(json_object_get(r, "roles")))
        || (json_object_get(r, "call_types")
            && !fuzz_strings(json_object_get(r, "call_types"))))
    {
        return 0;
    }

    v = json_object_get(r, "when");
    if (v && !json_is_object(v)) {
        return 0;
    }

    v = json_object_get(r, "limits");
    if (v == NULL) {
        return 1;
    }

    if (!allow || !json_is_object(v)) {
        return 0;
    }

    json_object_foreach(v, key, e) {
        if (strcmp(key, "max_timeout") == 0
            || strcmp(key, "max_targets") == 0)
        {
            if (!json_is_integer(e) || json_integer_value(e) < 0) {
                return 0;
            }

        } else if (strcmp(key, "allow_ip_ban") == 0
                   || strcmp(key, "allow_mute_all") == 0)
        {
            if (!json_is_boolean(e)) {
                return 0;
            }

        } else {
            return 0;
        }
    }

    return 1;
}


static ngx_uint_t
fuzz_valid_policy(json_t *root)
{
    size_t       i;
    json_t      *v, *e;
    const char  *key;

    if (!json_is_object(root)) {
        return 0;
    }

    json_object_foreach(root, key, v) {
        if (strcmp(key, "roles") != 0 && strcmp(key, "role_claim") != 0
            && strcmp(key, "protected_users") != 0
            && strcmp(key, "rules") != 0)
        {
            return 0;
        }
    }

    v = json_object_get(root, "roles");

    if (v) {
        if (!json_is_object(v)) {
            return 0;
        }

        json_object_foreach(v, key, e) {
            if (!fuzz_strings(e)) {
                return 0;
            }
        }
    }

    v = json_object_get(root, "role_claim");
    if (v && (!json_is_string(v) || json_string_length(v) == 0)) {
        return 0;
    }

    v = json_object_get(root, "protected_users");
    if (v && !fuzz_strings(v)) {
        return 0;
    }

    v = json_object_get(root, "rules");
    if (v == NULL) {
        return 1;
    }

    if (!json_is_array(v)) {
        return 0;
    }

    json_array_foreach(v, i, e) {
        if (!fuzz_valid_rule(e)) {
            return 0;
        }
    }

    return 1;
}


/* ---- the documented decision ------------------------------------------ */


static ngx_uint_t
fuzz_in(json_t *list, const char *s, size_t len, ngx_uint_t star)
{
    size_t   i;
    json_t  *e;

    json_array_foreach(list, i, e) {
        if (!json_is_string(e)) {
            continue;
        }

        if (star && json_string_length(e) == 1
            && json_string_value(e)[0] == '*')
        {
            return 1;
        }

        if (json_string_length(e) == len
            && memcmp(json_string_value(e), s, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_uint_t
fuzz_has_role(json_t *root, fuzz_preq_t *q, json_t *claims, json_t *wanted)
{
    size_t       i;
    json_t      *mine, *claim, *e, *rc;
    const char  *role;

    rc = json_object_get(root, "role_claim");
    mine = json_object_get(json_object_get(root, "roles"), q->user);
    claim = (rc && claims) ? json_object_get(claims, json_string_value(rc))
                           : NULL;

    json_array_foreach(wanted, i, e) {
        role = json_string_value(e);

        if (strcmp(role, "*") == 0 && json_string_length(e) == 1) {
            return 1;
        }

        if (mine && fuzz_in(mine, role, json_string_length(e), 0)) {
            return 1;
        }

        if (json_is_string(claim) && json_equal(claim, e)) {
            return 1;
        }

        if (json_is_array(claim)
            && fuzz_in(claim, role, json_string_length(e), 0))
        {
            return 1;
        }
    }

    return 0;
}


static ngx_uint_t
fuzz_when(json_t *when, json_t *body)
{
    json_t      *want, *have;
    const char  *key;

    json_object_foreach(when, key, want) {
        have = body ? json_object_get(body, key) : NULL;

        if (have == NULL) {
            if (!json_is_false(want) && !json_is_null(want)) {
                return 0;
            }

        } else if (!json_equal(have, want)) {
            return 0;
        }
    }

    return 1;
}


/* 1: allow, 0: deny; *rule: the deciding rule's name */

static ngx_uint_t
fuzz_decide(json_t *root, fuzz_preq_t *q, json_t *claims, json_t *body,
    char *rule, size_t size)
{
    size_t                         i, ntargets, len;
    char                           call[64];
    json_t                        *r, *v, *cids, *prot, *limits;
    ngx_http_stream_mod_action_t  *action;

    action = ngx_http_stream_mod_action_get(q->action);

    for (ntargets = 0; ntargets < 4 && q->targets[ntargets]; ntargets++) {
        /* void */
    }

    cids = claims ? json_object_get(claims, "call_cids") : NULL;

    if (action->call && cids) {
        len = snprintf(call, sizeof(call), "%s:%s", q->type, q->id);

        if (!json_is_array(cids) || !fuzz_in(cids, call, len, 0)) {
            snprintf(rule, size, "call_cids");
            return 0;
        }
    }

    prot = json_object_get(root, "protected_users");

    for (i = 0; prot && i < ntargets; i++) {
        if (fuzz_in(prot, q->targets[i], strlen(q->targets[i]), 0)) {
            snprintf(rule, size, "protected_users");
            return 0;
        }
    }

    json_array_foreach(json_object_get(root, "rules"), i, r) {

        if (!fuzz_in(json_object_get(r, "actions"),
                     (char *) action->name.data, action->name.len, 1))
        {
            continue;
        }

        v = json_object_get(r, "users");

        if (!(v && fuzz_in(v, q->user, strlen(q->user), 1))) {
            v = json_object_get(r, "roles");

            if (!(v && fuzz_has_role(root, q, claims, v))) {
                continue;
            }
        }

        v = json_object_get(r, "call_types");

        if (v && !(action->call && fuzz_in(v, q->type, strlen(q->type), 1)))
        {
            continue;
        }

        v = json_object_get(r, "when");

        if (v && !fuzz_when(v, body)) {
            continue;
        }

        snprintf(rule, size, "%zu", i + 1);

        if (strcmp(json_string_value(json_object_get(r, "effect")), "allow")
            != 0)
        {
            return 0;
        }

        limits = json_object_get(r, "limits");

        v = json_object_get(limits, "max_timeout");

        if (v && (q->action == NGX_HTTP_STREAM_MOD_BAN
                  || q->action == NGX_HTTP_STREAM_MOD_MUTE))
        {
            json_t  *t = body ? json_object_get(body, "timeout") : NULL;

            if (t == NULL || json_integer_value(t) > json_integer_value(v)) {
                return 0;
            }
        }

        v = json_object_get(limits, "allow_ip_ban");

        if (json_is_false(v) && body
            && json_is_true(json_object_get(body, "ip_ban")))
        {
            return 0;
        }

        v = json_object_get(limits, "allow_mute_all");

        if (json_is_false(v) && q->action == NGX_HTTP_STREAM_MOD_MUTE_USERS
            && body && json_is_true(json_object_get(body, "mute_all_users")))
        {
            return 0;
        }

        v = json_object_get(limits, "max_targets");

        if (v && (json_int_t) ntargets > json_integer_value(v)) {
            return 0;
        }

        return 1;
    }

    snprintf(rule, size, "default");
    return 0;
}


/* ---- the target ------------------------------------------------------- */


static ngx_uint_t  fuzz_emerg;


static void
fuzz_policy_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf, size_t len)
{
    if (level == NGX_LOG_EMERG
        && ngx_strlcasestrn(buf, buf + len, (u_char *) "policy \"", 8 - 1))
    {
        fuzz_emerg++;
    }
}


static void
fuzz_check_request(ngx_pool_t *pool, ngx_http_stream_mod_policy_t *policy,
    json_t *root, ngx_uint_t n)
{
    char                           rule[32];
    ngx_int_t                      rc;
    ngx_str_t                     *t;
    fuzz_req_t                     fr;
    ngx_uint_t                     i, allow;
    fuzz_preq_t                   *q;
    ngx_http_stream_mod_ctx_t     *ctx;

    q = &fuzz_preqs[n];

    fuzz_request(pool, &fr);
    ctx = fr.ctx;

    ctx->action = ngx_http_stream_mod_action_get(q->action);
    ctx->user.data = (u_char *) q->user;
    ctx->user.len = strlen(q->user);
    ctx->claims = fuzz_claims[n];
    /* the module reads the body as the gate does; the oracle uses jansson */
    if (q->body
        && ngx_http_stream_mod_json_parse(pool, (u_char *) q->body,
                                          strlen(q->body), &ctx->body)
           != NGX_OK)
    {
        abort();
    }

    if (q->type) {
        ctx->params[0].data = (u_char *) q->type;
        ctx->params[0].len = strlen(q->type);
        ctx->params[1].data = (u_char *) q->id;
        ctx->params[1].len = strlen(q->id);
        ctx->call.len = ctx->params[0].len + 1 + ctx->params[1].len;
        ctx->call.data = ngx_pnalloc(pool, ctx->call.len);
        if (ctx->call.data == NULL) {
            abort();
        }
        ngx_sprintf(ctx->call.data, "%V:%V", &ctx->params[0],
                    &ctx->params[1]);
    }

    for (i = 0; i < 4 && q->targets[i]; i++) {
        if (ctx->targets.elts == NULL
            && ngx_array_init(&ctx->targets, pool, 4, sizeof(ngx_str_t))
               != NGX_OK)
        {
            abort();
        }

        t = ngx_array_push(&ctx->targets);
        if (t == NULL) {
            abort();
        }

        t->data = (u_char *) q->targets[i];
        t->len = strlen(q->targets[i]);
    }

    if (q->action == NGX_HTTP_STREAM_MOD_MUTE_USERS && fuzz_bodies[n]) {
        ctx->mute_all = json_is_true(json_object_get(fuzz_bodies[n],
                                                     "mute_all_users"));
    }

    rc = ngx_http_stream_mod_policy_check(fr.r, policy, ctx);

    allow = fuzz_decide(root, q, ctx->claims, fuzz_bodies[n], rule,
                        sizeof(rule));

    FUZZ_ASSERT(rc == NGX_OK || rc == NGX_HTTP_FORBIDDEN,
                "%s: unexpected result %ld", q->what, (long) rc);

    FUZZ_ASSERT((rc == NGX_OK) == allow,
                "%s: %s by rule %.*s, the documents say %s by rule %s",
                q->what, rc == NGX_OK ? "allowed" : "denied",
                (int) ctx->rule.len, ctx->rule.data,
                allow ? "allow" : "deny", rule);

    FUZZ_ASSERT(ctx->rule.len == strlen(rule)
                && ngx_memcmp(ctx->rule.data, rule, ctx->rule.len) == 0,
                "%s: decided by rule %.*s, the documents say rule %s",
                q->what, (int) ctx->rule.len, ctx->rule.data, rule);

    if (rc == NGX_OK) {
        FUZZ_ASSERT(ctx->decision == NGX_HTTP_STREAM_MOD_ALLOW,
                    "%s: allowed without an allow decision", q->what);

    } else {
        FUZZ_ASSERT(ctx->decision == NGX_HTTP_STREAM_MOD_DENY
                    && ctx->err_status == NGX_HTTP_FORBIDDEN
                    && ctx->err_code == NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED
                    && ctx->err_message.len > 0,
                    "%s: denial not recorded as 403, code 17", q->what);
    }

    /* whatever the rules say */
    for (i = 0; i < 4 && q->targets[i]; i++) {
        FUZZ_ASSERT(rc != NGX_OK
                    || !fuzz_in(json_object_get(root, "protected_users"),
                                q->targets[i], strlen(q->targets[i]), 0),
                    "%s: a protected user was targeted and allowed",
                    q->what);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                        *text;
    json_t                        *root;
    ngx_str_t                      file;
    ngx_uint_t                     i, valid;
    ngx_pool_t                    *pool, *temp_pool;
    ngx_conf_t                     cf;
    ngx_log_t                      log;
    ngx_conf_file_t                conf_file;
    ngx_http_stream_mod_policy_t  *policy;

    if (size > 256 * 1024) {
        return -1;
    }

    pool = fuzz_pool();
    temp_pool = fuzz_pool();

    /* a log that counts the loader's emerg lines */
    log = *fuzz_log();
    log.writer = fuzz_policy_writer;
    fuzz_emerg = 0;

    ngx_memzero(&conf_file, sizeof(ngx_conf_file_t));
    conf_file.file.fd = 0;
    ngx_str_set(&conf_file.file.name, "/fuzz/nginx.conf");
    conf_file.file.log = &log;
    conf_file.line = 7;

    ngx_memzero(&cf, sizeof(ngx_conf_t));
    cf.name = "stream_mod_policy";
    cf.cycle = fuzz_cycle();
    cf.pool = pool;
    cf.temp_pool = temp_pool;
    cf.conf_file = &conf_file;
    cf.log = &log;
    cf.module_type = NGX_HTTP_MODULE;
    cf.cmd_type = NGX_HTTP_LOC_CONF;

    ngx_str_set(&file, "/fuzz/policy.json");

    text = fuzz_copy(temp_pool, data, size, 0);

    policy = ngx_http_stream_mod_policy_load(&cf, &file, text, size);

    root = json_loadb((char *) data, size, JSON_REJECT_DUPLICATES, NULL);
    valid = (root != NULL && fuzz_valid_policy(root));

    FUZZ_ASSERT((policy != NULL) == valid,
                "the loader %s a policy the documents %s: \"%.*s\"",
                policy ? "accepted" : "refused",
                valid ? "allow" : "refuse", (int) ngx_min(size, 2000),
                data);

    if (policy == NULL) {
        FUZZ_ASSERT(fuzz_emerg > 0, "a refused policy logged no emerg "
                    "line naming the file");

    } else {
        for (i = 0; i < FUZZ_NPREQS; i++) {
            fuzz_check_request(pool, policy, root, i);
        }
    }

    json_decref(root);

    ngx_destroy_pool(temp_pool);
    ngx_destroy_pool(pool);

    return 0;
}
