
/*
 * The policy file (SPEC section 5): loaded and checked once at
 * configuration time, evaluated per request with no allocation: rules are
 * tried in order and the first match decides; no match denies.
 */


#include "ngx_http_stream_mod.h"


#define NGX_HTTP_STREAM_MOD_UNSET  (-1)
#define NGX_HTTP_STREAM_MOD_MAX_POLICY  (4 * 1024 * 1024)
/* roles gathered on the stack; more take the request pool */
#define NGX_HTTP_STREAM_MOD_MAX_ROLES   32


/* a list of names from the policy, compiled once; "*" sets any */
typedef struct {
    ngx_str_t                      *elts;
    ngx_uint_t                      nelts;
    ngx_uint_t                      any;
    /* a one-hash Bloom filter of the names: most rules fail on one AND */
    uint64_t                        bloom;
} ngx_http_stream_mod_list_t;


typedef struct {
    ngx_uint_t                      allow;
    uint32_t                        actions;       /* bit per action id */
    ngx_http_stream_mod_list_t     *users;         /* or NULL */
    ngx_http_stream_mod_list_t     *roles;         /* or NULL */
    ngx_http_stream_mod_list_t     *call_types;    /* or NULL */
    json_t                         *when;          /* object, or NULL */
    ngx_int_t                       max_timeout;
    ngx_int_t                       allow_ip_ban;
    ngx_int_t                       allow_mute_all;
    ngx_int_t                       max_targets;
    ngx_str_t                       name;          /* "1", "2", ... */
} ngx_http_stream_mod_rule_t;


/* a rule that names an action, with its filters inline for a quick skip */
typedef struct {
    uint64_t                        users;         /* Bloom, or 0 */
    uint64_t                        roles;         /* Bloom, or 0 */
    ngx_http_stream_mod_rule_t     *rule;
} ngx_http_stream_mod_candidate_t;


struct ngx_http_stream_mod_policy_s {
    /* per action id, the rules naming it, in order */
    ngx_http_stream_mod_candidate_t  *candidates[NGX_HTTP_STREAM_MOD_NACTIONS];
    ngx_uint_t                      ncandidates[NGX_HTTP_STREAM_MOD_NACTIONS];
    json_t                         *root;
    json_t                         *roles;         /* user -> [role] */
    ngx_http_stream_mod_list_t     *protected;     /* or NULL */
    const char                     *role_claim;
    ngx_http_stream_mod_rule_t     *rules;
    ngx_uint_t                      nrules;
};


typedef struct {
    ngx_conf_t                     *cf;
    ngx_str_t                      *file;
    u_char                         *text;
    size_t                          len;
} ngx_http_stream_mod_policy_loader_t;


static ngx_int_t ngx_http_stream_mod_policy_compile(
    ngx_http_stream_mod_policy_loader_t *ld,
    ngx_http_stream_mod_policy_t *policy);
static ngx_int_t ngx_http_stream_mod_policy_rule(
    ngx_http_stream_mod_policy_loader_t *ld, json_t *r, ngx_uint_t n,
    ngx_http_stream_mod_rule_t *rule);
static ngx_int_t ngx_http_stream_mod_policy_strings(
    ngx_http_stream_mod_policy_loader_t *ld, json_t *v, const char *path,
    ngx_uint_t n);
static void ngx_http_stream_mod_policy_error(
    ngx_http_stream_mod_policy_loader_t *ld, const char *path, ngx_uint_t n,
    const char *fmt, ...);
static ngx_uint_t ngx_http_stream_mod_policy_locate(u_char *text, size_t len,
    const char *path, ngx_uint_t n, ngx_uint_t *line, ngx_uint_t *column);
static ngx_http_stream_mod_list_t *ngx_http_stream_mod_policy_list(
    ngx_conf_t *cf, json_t *v);
static ngx_uint_t ngx_http_stream_mod_in(json_t *list, ngx_str_t *s);
static uint64_t ngx_http_stream_mod_bloom(ngx_str_t *s);
static ngx_uint_t ngx_http_stream_mod_listed(ngx_http_stream_mod_list_t *list,
    ngx_str_t *s);
static ngx_uint_t ngx_http_stream_mod_caller_roles(
    ngx_http_stream_mod_policy_t *policy, ngx_http_stream_mod_ctx_t *ctx,
    ngx_str_t *roles, ngx_uint_t max);
static ngx_uint_t ngx_http_stream_mod_has_role(
    ngx_http_stream_mod_list_t *wanted, ngx_str_t *roles, ngx_uint_t n);


char *
ngx_http_stream_mod_policy(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_stream_mod_loc_conf_t *lcf = conf;

    u_char                        *text;
    ssize_t                        n;
    ngx_fd_t                       fd;
    ngx_str_t                     *value, file;
    ngx_file_info_t                fi;
    ngx_http_stream_mod_policy_t  *policy;

    if (lcf->policy_set) {
        return "is duplicate";
    }

    value = cf->args->elts;
    file = value[1];

    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", file.data);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > NGX_HTTP_STREAM_MOD_MAX_POLICY)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "policy \"%s\" is unreadable or larger than 4m",
                           file.data);
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    text = ngx_pnalloc(cf->temp_pool, (size_t) ngx_file_size(&fi) + 1);
    if (text == NULL) {
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, text, (size_t) ngx_file_size(&fi));
    ngx_close_file(fd);

    if (n == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_read_fd_n " \"%s\" failed", file.data);
        return NGX_CONF_ERROR;
    }

    policy = ngx_http_stream_mod_policy_load(cf, &file, text, n);
    if (policy == NULL) {
        return NGX_CONF_ERROR;
    }

    lcf->policy = policy;
    lcf->policy_set = 1;

    return NGX_CONF_OK;
}


/* parse and check a policy text; NULL after logging the error */

ngx_http_stream_mod_policy_t *
ngx_http_stream_mod_policy_load(ngx_conf_t *cf, ngx_str_t *file,
    u_char *text, size_t len)
{
    json_t                               *root;
    json_error_t                          err;
    ngx_http_stream_mod_policy_t         *policy;
    ngx_http_stream_mod_policy_loader_t   ld;

    root = json_loadb((char *) text, len, JSON_REJECT_DUPLICATES, &err);

    if (root == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "policy \"%V\", line %d, column %d: %s",
                           file, err.line, err.column, err.text);
        return NULL;
    }

    /* the compiled lists point into it: it lives with the configuration */
    if (ngx_http_stream_mod_json_pool(cf->pool, root) != NGX_OK) {
        return NULL;
    }

    policy = ngx_pcalloc(cf->pool, sizeof(ngx_http_stream_mod_policy_t));
    if (policy == NULL) {
        return NULL;
    }

    policy->root = root;

    ld.cf = cf;
    ld.file = file;
    ld.text = text;
    ld.len = len;

    if (ngx_http_stream_mod_policy_compile(&ld, policy) != NGX_OK) {
        return NULL;
    }

    return policy;
}


static ngx_int_t
ngx_http_stream_mod_policy_compile(ngx_http_stream_mod_policy_loader_t *ld,
    ngx_http_stream_mod_policy_t *policy)
{
    json_t                           *root, *v, *rules;
    size_t                            i;
    ngx_uint_t                        a, n;
    const char                       *key;
    ngx_http_stream_mod_rule_t       *rule;
    ngx_http_stream_mod_candidate_t  *c;

    root = policy->root;

    if (!json_is_object(root)) {
        ngx_http_stream_mod_policy_error(ld, "", 0,
                                         "the policy must be a JSON object");
        return NGX_ERROR;
    }

    json_object_foreach(root, key, v) {
        if (ngx_strcmp(key, "roles") != 0
            && ngx_strcmp(key, "role_claim") != 0
            && ngx_strcmp(key, "protected_users") != 0
            && ngx_strcmp(key, "rules") != 0)
        {
            ngx_http_stream_mod_policy_error(ld, key, 0, "unknown key \"%s\"",
                                             key);
            return NGX_ERROR;
        }
    }

    v = json_object_get(root, "roles");

    if (v) {
        if (!json_is_object(v)) {
            ngx_http_stream_mod_policy_error(ld, "roles", 0,
                                             "\"roles\" must be an object of "
                                             "user id to list of roles");
            return NGX_ERROR;
        }

        json_object_foreach(v, key, rules) {
            if (ngx_http_stream_mod_policy_strings(ld, rules, "roles", 0)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        policy->roles = v;
    }

    v = json_object_get(root, "role_claim");

    if (v) {
        if (!json_is_string(v) || json_string_length(v) == 0) {
            ngx_http_stream_mod_policy_error(ld, "role_claim", 0,
                                             "\"role_claim\" must be a "
                                             "non-empty string");
            return NGX_ERROR;
        }

        policy->role_claim = json_string_value(v);
    }

    v = json_object_get(root, "protected_users");

    if (v) {
        if (ngx_http_stream_mod_policy_strings(ld, v, "protected_users", 0)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        policy->protected = ngx_http_stream_mod_policy_list(ld->cf, v);
        if (policy->protected == NULL) {
            return NGX_ERROR;
        }
    }

    rules = json_object_get(root, "rules");

    if (rules == NULL) {
        ngx_conf_log_error(NGX_LOG_WARN, ld->cf, 0,
                           "policy \"%V\" has no rules: every action is "
                           "denied", ld->file);
        return NGX_OK;
    }

    if (!json_is_array(rules)) {
        ngx_http_stream_mod_policy_error(ld, "rules", 0,
                                         "\"rules\" must be an array");
        return NGX_ERROR;
    }

    policy->nrules = json_array_size(rules);

    policy->rules = ngx_pcalloc(ld->cf->pool, policy->nrules
                                         * sizeof(ngx_http_stream_mod_rule_t));
    if (policy->rules == NULL && policy->nrules) {
        return NGX_ERROR;
    }

    for (i = 0; i < policy->nrules; i++) {
        if (ngx_http_stream_mod_policy_rule(ld, json_array_get(rules, i), i,
                                            &policy->rules[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* per action, the rules to walk */

    for (a = 0; a < NGX_HTTP_STREAM_MOD_NACTIONS; a++) {
        n = 0;

        for (i = 0; i < policy->nrules; i++) {
            n += (policy->rules[i].actions >> a) & 1;
        }

        if (n == 0) {
            continue;
        }

        c = ngx_palloc(ld->cf->pool,
                       n * sizeof(ngx_http_stream_mod_candidate_t));
        if (c == NULL) {
            return NGX_ERROR;
        }

        policy->candidates[a] = c;
        policy->ncandidates[a] = n;

        for (i = 0; i < policy->nrules; i++) {
            rule = &policy->rules[i];

            if (!((rule->actions >> a) & 1)) {
                continue;
            }

            c->users = rule->users ? rule->users->bloom : 0;
            c->roles = rule->roles ? rule->roles->bloom : 0;
            c->rule = rule;
            c++;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_policy_rule(ngx_http_stream_mod_policy_loader_t *ld,
    json_t *r, ngx_uint_t n, ngx_http_stream_mod_rule_t *rule)
{
    u_char                        *p;
    json_t                        *v, *lv;
    size_t                         i;
    ngx_str_t                      name;
    const char                    *key, *s;
    ngx_http_stream_mod_list_t    *list;
    ngx_http_stream_mod_action_t  *action;

    if (!json_is_object(r)) {
        ngx_http_stream_mod_policy_error(ld, "rules", n,
                                         "rule %ui must be an object", n + 1);
        return NGX_ERROR;
    }

    rule->max_timeout = NGX_HTTP_STREAM_MOD_UNSET;
    rule->allow_ip_ban = NGX_HTTP_STREAM_MOD_UNSET;
    rule->allow_mute_all = NGX_HTTP_STREAM_MOD_UNSET;
    rule->max_targets = NGX_HTTP_STREAM_MOD_UNSET;

    p = ngx_pnalloc(ld->cf->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    rule->name.data = p;
    rule->name.len = ngx_sprintf(p, "%ui", n + 1) - p;

    json_object_foreach(r, key, v) {

        if (ngx_strcmp(key, "effect") == 0) {
            s = json_string_value(v);

            if (s && ngx_strcmp(s, "allow") == 0) {
                rule->allow = 1;

            } else if (s == NULL || ngx_strcmp(s, "deny") != 0) {
                ngx_http_stream_mod_policy_error(ld, "effect", n,
                                                 "rule %ui: \"effect\" must "
                                                 "be \"allow\" or \"deny\"",
                                                 n + 1);
                return NGX_ERROR;
            }

        } else if (ngx_strcmp(key, "actions") == 0) {
            if (ngx_http_stream_mod_policy_strings(ld, v, "actions", n)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            for (i = 0; i < json_array_size(v); i++) {
                name.data = (u_char *) json_string_value(json_array_get(v, i));
                name.len = json_string_length(json_array_get(v, i));

                if (name.len == 1 && name.data[0] == '*') {
                    rule->actions = 0xffffffff;
                    continue;
                }

                action = ngx_http_stream_mod_action_find(&name);

                if (action == NULL) {
                    ngx_http_stream_mod_policy_error(ld, "actions", n,
                                                     "rule %ui: unknown "
                                                     "action \"%V\"", n + 1,
                                                     &name);
                    return NGX_ERROR;
                }

                rule->actions |= 1 << action->id;
            }

        } else if (ngx_strcmp(key, "users") == 0
                   || ngx_strcmp(key, "roles") == 0
                   || ngx_strcmp(key, "call_types") == 0)
        {
            if (ngx_http_stream_mod_policy_strings(ld, v, key, n) != NGX_OK) {
                return NGX_ERROR;
            }

            list = ngx_http_stream_mod_policy_list(ld->cf, v);
            if (list == NULL) {
                return NGX_ERROR;
            }

            if (key[0] == 'u') {
                rule->users = list;

            } else if (key[0] == 'r') {
                rule->roles = list;

            } else {
                rule->call_types = list;
            }

        } else if (ngx_strcmp(key, "when") == 0) {
            if (!json_is_object(v)) {
                ngx_http_stream_mod_policy_error(ld, "when", n,
                                                 "rule %ui: \"when\" must be "
                                                 "an object", n + 1);
                return NGX_ERROR;
            }

            rule->when = v;

        } else if (ngx_strcmp(key, "limits") == 0) {
            if (!json_is_object(v)) {
                ngx_http_stream_mod_policy_error(ld, "limits", n,
                                                 "rule %ui: \"limits\" must "
                                                 "be an object", n + 1);
                return NGX_ERROR;
            }

            json_object_foreach(v, s, lv) {

                if (ngx_strcmp(s, "max_timeout") == 0
                    || ngx_strcmp(s, "max_targets") == 0)
                {
                    if (!json_is_integer(lv) || json_integer_value(lv) < 0) {
                        ngx_http_stream_mod_policy_error(ld, s, n,
                                                 "rule %ui: \"%s\" must be "
                                                 "a non-negative integer",
                                                 n + 1, s);
                        return NGX_ERROR;
                    }

                    if (s[4] == 't' && s[5] == 'i') {
                        rule->max_timeout = json_integer_value(lv);

                    } else {
                        rule->max_targets = json_integer_value(lv);
                    }

                } else if (ngx_strcmp(s, "allow_ip_ban") == 0
                           || ngx_strcmp(s, "allow_mute_all") == 0)
                {
                    if (!json_is_boolean(lv)) {
                        ngx_http_stream_mod_policy_error(ld, s, n,
                                                 "rule %ui: \"%s\" must be "
                                                 "true or false", n + 1, s);
                        return NGX_ERROR;
                    }

                    if (s[6] == 'i') {
                        rule->allow_ip_ban = json_is_true(lv);

                    } else {
                        rule->allow_mute_all = json_is_true(lv);
                    }

                } else {
                    ngx_http_stream_mod_policy_error(ld, s, n,
                                                     "rule %ui: unknown "
                                                     "limit \"%s\"", n + 1, s);
                    return NGX_ERROR;
                }
            }

        } else {
            ngx_http_stream_mod_policy_error(ld, key, n,
                                             "rule %ui: unknown key \"%s\"",
                                             n + 1, key);
            return NGX_ERROR;
        }
    }

    if (json_object_get(r, "effect") == NULL
        || json_object_get(r, "actions") == NULL)
    {
        ngx_http_stream_mod_policy_error(ld, "rules", n,
                                         "rule %ui needs \"effect\" and "
                                         "\"actions\"", n + 1);
        return NGX_ERROR;
    }

    if (rule->users == NULL && rule->roles == NULL) {
        ngx_http_stream_mod_policy_error(ld, "rules", n,
                                         "rule %ui needs \"users\" or "
                                         "\"roles\" (use [\"*\"] for anyone)",
                                         n + 1);
        return NGX_ERROR;
    }

    if (!rule->allow && json_object_get(r, "limits")) {
        ngx_http_stream_mod_policy_error(ld, "limits", n,
                                         "rule %ui: \"limits\" apply to "
                                         "allow rules only", n + 1);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* an array of strings (already checked) as names; "*" matches anything */

static ngx_http_stream_mod_list_t *
ngx_http_stream_mod_policy_list(ngx_conf_t *cf, json_t *v)
{
    size_t                       i;
    ngx_str_t                   *e;
    ngx_http_stream_mod_list_t  *list;

    list = ngx_pcalloc(cf->pool, sizeof(ngx_http_stream_mod_list_t));
    if (list == NULL) {
        return NULL;
    }

    list->elts = ngx_palloc(cf->pool,
                            (json_array_size(v) + 1) * sizeof(ngx_str_t));
    if (list->elts == NULL) {
        return NULL;
    }

    for (i = 0; i < json_array_size(v); i++) {
        e = &list->elts[list->nelts];
        e->data = (u_char *) json_string_value(json_array_get(v, i));
        e->len = json_string_length(json_array_get(v, i));

        if (e->len == 1 && e->data[0] == '*') {
            list->any = 1;
            continue;
        }

        list->bloom |= ngx_http_stream_mod_bloom(e);
        list->nelts++;
    }

    if (list->any) {
        list->bloom = (uint64_t) -1;
    }

    return list;
}


static uint64_t
ngx_http_stream_mod_bloom(ngx_str_t *s)
{
    return (uint64_t) 1 << (ngx_hash_key(s->data, s->len) & 63);
}


static ngx_int_t
ngx_http_stream_mod_policy_strings(ngx_http_stream_mod_policy_loader_t *ld,
    json_t *v, const char *path, ngx_uint_t n)
{
    size_t  i;

    if (!json_is_array(v)) {
        goto invalid;
    }

    for (i = 0; i < json_array_size(v); i++) {
        if (!json_is_string(json_array_get(v, i))
            || json_string_length(json_array_get(v, i)) == 0)
        {
            goto invalid;
        }
    }

    return NGX_OK;

invalid:

    ngx_http_stream_mod_policy_error(ld, path, n,
                                     "\"%s\" must be an array of non-empty "
                                     "strings", path);
    return NGX_ERROR;
}


/*
 * jansson gives positions for syntax errors only; for a semantic error
 * the position of the offending key is found in the text.
 */

static void
ngx_http_stream_mod_policy_error(ngx_http_stream_mod_policy_loader_t *ld,
    const char *path, ngx_uint_t n, const char *fmt, ...)
{
    u_char      buf[NGX_MAX_CONF_ERRSTR], *p;
    va_list     args;
    ngx_uint_t  line, column;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    line = 1;
    column = 1;

    (void) ngx_http_stream_mod_policy_locate(ld->text, ld->len, path, n,
                                             &line, &column);

    ngx_conf_log_error(NGX_LOG_EMERG, ld->cf, 0,
                       "policy \"%V\", line %ui, column %ui: %*s",
                       ld->file, line, column, p - buf, buf);
}


/*
 * Find the key "path" as a string token: the first one inside the n-th
 * element of "rules" when the error is about a rule, else the first one
 * in the file.  Good enough to point an operator at the line.
 */

static ngx_uint_t
ngx_http_stream_mod_policy_locate(u_char *text, size_t len, const char *path,
    ngx_uint_t n, ngx_uint_t *line, ngx_uint_t *column)
{
    u_char      *p, *last, *start, *found;
    size_t       plen;
    ngx_uint_t   depth, elem, in_rules, rules_depth;

    last = text + len;
    plen = ngx_strlen(path);
    found = NULL;
    depth = 0;
    elem = 0;
    in_rules = 0;
    rules_depth = 0;

    for (p = text; p < last && found == NULL; p++) {

        switch (*p) {

        case '{':
        case '[':
            depth++;
            break;

        case '}':
        case ']':
            if (in_rules && depth == rules_depth) {
                in_rules = 0;
            }

            depth--;
            break;

        case ',':
            if (in_rules && depth == rules_depth) {
                elem++;
            }

            break;

        case '"':
            start = ++p;

            while (p < last && *p != '"') {
                if (*p == '\\') {
                    p++;
                }

                p++;
            }

            if (p >= last) {
                break;
            }

            if (!in_rules && depth == 1 && p - start == 5
                && ngx_strncmp(start, "rules", 5) == 0)
            {
                in_rules = 1;
                rules_depth = 2;
                elem = 0;

                if (ngx_strcmp(path, "rules") == 0 && n == 0) {
                    found = start - 1;
                }

                break;
            }

            if (in_rules && elem == n && depth > rules_depth
                && (size_t) (p - start) == plen
                && ngx_strncmp(start, path, plen) == 0)
            {
                found = start - 1;
                break;
            }

            if (in_rules && elem == n && depth == rules_depth + 1
                && ngx_strcmp(path, "rules") == 0)
            {
                found = start - 1;
                break;
            }

            if (!in_rules && n == 0 && depth >= 1
                && (size_t) (p - start) == plen
                && ngx_strncmp(start, path, plen) == 0)
            {
                found = start - 1;
            }

            break;
        }
    }

    if (found == NULL) {
        return 0;
    }

    for (p = text; p < found; p++) {
        if (*p == '\n') {
            (*line)++;
            *column = 1;

        } else {
            (*column)++;
        }
    }

    return 1;
}


static ngx_uint_t
ngx_http_stream_mod_in(json_t *list, ngx_str_t *s)
{
    json_t  *v;
    size_t   i;

    json_array_foreach(list, i, v) {
        if (json_string_length(v) == s->len
            && ngx_strncmp(json_string_value(v), s->data, s->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_uint_t
ngx_http_stream_mod_listed(ngx_http_stream_mod_list_t *list, ngx_str_t *s)
{
    ngx_uint_t  i;

    for (i = 0; i < list->nelts; i++) {
        if (list->elts[i].len == s->len
            && ngx_memcmp(list->elts[i].data, s->data, s->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * The caller's roles, gathered once per request from the map and the
 * claim: the first max of them into roles, all of them counted.
 */

static ngx_uint_t
ngx_http_stream_mod_caller_roles(ngx_http_stream_mod_policy_t *policy,
    ngx_http_stream_mod_ctx_t *ctx, ngx_str_t *roles, ngx_uint_t max)
{
    json_t      *list, *v;
    size_t       i;
    ngx_uint_t   n, k;

    n = 0;

    for (k = 0; k < 2; k++) {

        if (k == 0) {
            list = policy->roles ? json_object_getn(policy->roles,
                                                    (char *) ctx->user.data,
                                                    ctx->user.len)
                                 : NULL;

        } else {
            list = (policy->role_claim && ctx->claims)
                   ? json_object_get(ctx->claims, policy->role_claim) : NULL;

            if (json_is_string(list)) {
                if (n < max) {
                    roles[n].data = (u_char *) json_string_value(list);
                    roles[n].len = json_string_length(list);
                }

                n++;
                continue;
            }
        }

        if (!json_is_array(list)) {
            continue;
        }

        json_array_foreach(list, i, v) {
            if (!json_is_string(v)) {
                continue;
            }

            if (n < max) {
                roles[n].data = (u_char *) json_string_value(v);
                roles[n].len = json_string_length(v);
            }

            n++;
        }
    }

    return n;
}


static ngx_uint_t
ngx_http_stream_mod_has_role(ngx_http_stream_mod_list_t *wanted,
    ngx_str_t *roles, ngx_uint_t n)
{
    ngx_uint_t  i;

    if (wanted->any) {
        return 1;
    }

    for (i = 0; i < n; i++) {
        if (ngx_http_stream_mod_listed(wanted, &roles[i])) {
            return 1;
        }
    }

    return 0;
}


static ngx_uint_t
ngx_http_stream_mod_when(json_t *when, ngx_http_stream_mod_json_t *body)
{
    json_t                            *want;
    const char                        *key;
    ngx_http_stream_mod_json_value_t  *have;

    json_object_foreach(when, key, want) {
        have = ngx_http_stream_mod_json_get(body, (u_char *) key,
                                            ngx_strlen(key));

        if (have == NULL) {
            /* a missing field counts as false, or absent */
            if (!json_is_false(want) && !json_is_null(want)) {
                return 0;
            }

            continue;
        }

        if (!ngx_http_stream_mod_json_equal(have, want)) {
            return 0;
        }
    }

    return 1;
}


ngx_int_t
ngx_http_stream_mod_policy_check(ngx_http_request_t *r,
    ngx_http_stream_mod_policy_t *policy, ngx_http_stream_mod_ctx_t *ctx)
{
    json_t                            *cids;
    ngx_str_t                         *t, type;
    ngx_str_t                          stack[NGX_HTTP_STREAM_MOD_MAX_ROLES];
    ngx_str_t                         *roles;
    uint64_t                           user_bloom, roles_bloom;
    ngx_uint_t                         i, n, nc, nroles;
    ngx_http_stream_mod_rule_t        *rule;
    ngx_http_stream_mod_candidate_t   *c;
    ngx_http_stream_mod_json_value_t  *v;

    if (policy == NULL) {
        ngx_str_set(&ctx->rule, "default");
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_DENY,
                                        NGX_HTTP_FORBIDDEN,
                                        NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                        "denied: no policy is configured "
                                        "(default)");
    }

    /* a token limited to some calls (call_cids) is honoured */

    cids = (ctx->action->call && ctx->claims)
           ? json_object_get(ctx->claims, "call_cids") : NULL;

    if (cids && !(json_is_array(cids)
                  && ngx_http_stream_mod_in(cids, &ctx->call)))
    {
        ngx_str_set(&ctx->rule, "call_cids");
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_DENY,
                                        NGX_HTTP_FORBIDDEN,
                                        NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                        "denied: the token is not valid for "
                                        "call %V (call_cids)", &ctx->call);
    }

    t = ctx->targets.elts;
    n = ctx->targets.nelts;

    if (policy->protected) {
        for (i = 0; i < n; i++) {
            if (ngx_http_stream_mod_listed(policy->protected, &t[i])) {
                ngx_str_set(&ctx->rule, "protected_users");
                return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_DENY,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "denied: %V is a protected user "
                                            "(protected_users)", &t[i]);
            }
        }
    }

    type = ctx->params[0];

    /* the caller's roles: on the stack, unless there are many */

    roles = stack;
    nroles = ngx_http_stream_mod_caller_roles(policy, ctx, roles,
                                              NGX_HTTP_STREAM_MOD_MAX_ROLES);

    if (nroles > NGX_HTTP_STREAM_MOD_MAX_ROLES) {
        roles = ngx_palloc(r->pool, nroles * sizeof(ngx_str_t));
        if (roles == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        nroles = ngx_http_stream_mod_caller_roles(policy, ctx, roles, nroles);
    }

    /*
     * The Bloom filters only skip: a rule whose filter passes is checked
     * in full.  A "*" list's filter is all ones; the caller's roles always
     * carry the top bit, so that "roles": ["*"] passes a caller with none.
     */

    user_bloom = ngx_http_stream_mod_bloom(&ctx->user);
    roles_bloom = (uint64_t) 1 << 63;

    for (i = 0; i < nroles; i++) {
        roles_bloom |= ngx_http_stream_mod_bloom(&roles[i]);
    }

    c = policy->candidates[ctx->action->id];
    nc = policy->ncandidates[ctx->action->id];

    for (i = 0; i < nc; i++) {

        if (!((c[i].users & user_bloom) | (c[i].roles & roles_bloom))) {
            continue;
        }

        rule = c[i].rule;

        if (!((rule->users
               && (rule->users->any
                   || ngx_http_stream_mod_listed(rule->users, &ctx->user)))
              || (rule->roles
                  && ngx_http_stream_mod_has_role(rule->roles, roles,
                                                  nroles))))
        {
            continue;
        }

        if (rule->call_types
            && !(ctx->action->call
                 && (rule->call_types->any
                     || ngx_http_stream_mod_listed(rule->call_types,
                                                   &type))))
        {
            continue;
        }

        if (rule->when && !ngx_http_stream_mod_when(rule->when, &ctx->body)) {
            continue;
        }

        ctx->rule = rule->name;

        if (!rule->allow) {
            return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_DENY,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "denied by rule %V", &rule->name);
        }

        /* limits of the allow rule */

        v = ngx_http_stream_mod_json_get(&ctx->body, (u_char *) "timeout",
                                         sizeof("timeout") - 1);

        if (rule->max_timeout != NGX_HTTP_STREAM_MOD_UNSET
            && (ctx->action->id == NGX_HTTP_STREAM_MOD_BAN
                || ctx->action->id == NGX_HTTP_STREAM_MOD_MUTE))
        {
            if (v == NULL) {
                return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_DENY,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "denied by rule %V: no timeout "
                                            "means permanent, which exceeds "
                                            "max_timeout %i", &rule->name,
                                            rule->max_timeout);
            }

            /* checked by the schema: an integer of at least 0 */
            if (v->integer > rule->max_timeout) {
                return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_DENY,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "denied by rule %V: timeout "
                                            "exceeds max_timeout %i",
                                            &rule->name, rule->max_timeout);
            }
        }

        v = ngx_http_stream_mod_json_get(&ctx->body, (u_char *) "ip_ban",
                                         sizeof("ip_ban") - 1);

        if (rule->allow_ip_ban == 0
            && v && v->type == NGX_HTTP_STREAM_MOD_J_TRUE)
        {
            return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_DENY,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "denied by rule %V: ip_ban is "
                                            "not allowed (allow_ip_ban)",
                                            &rule->name);
        }

        if (rule->allow_mute_all == 0 && ctx->mute_all) {
            return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_DENY,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "denied by rule %V: "
                                            "mute_all_users is not allowed "
                                            "(allow_mute_all)", &rule->name);
        }

        if (rule->max_targets != NGX_HTTP_STREAM_MOD_UNSET
            && (ngx_int_t) n > rule->max_targets)
        {
            return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_DENY,
                                            NGX_HTTP_FORBIDDEN,
                                            NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                            "denied by rule %V: %ui targets "
                                            "exceed max_targets %i",
                                            &rule->name, n,
                                            rule->max_targets);
        }

        ctx->decision = NGX_HTTP_STREAM_MOD_ALLOW;
        ngx_str_set(&ctx->reason, "allowed");

        return NGX_OK;
    }

    ngx_str_set(&ctx->rule, "default");

    return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_DENY,
                                    NGX_HTTP_FORBIDDEN,
                                    NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                    "denied: no rule allows %V (default)",
                                    &ctx->action->name);
}
