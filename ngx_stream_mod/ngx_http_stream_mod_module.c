
/*
 * ngx_stream_mod: module glue.  Directives and configuration, the gate
 * (identity, route, body, policy, limits, rewrite) and the variables.
 *
 * The gate runs in the PRECONTENT phase, not ACCESS: "satisfy any" skips
 * the remaining ACCESS handlers once one of them allows, and the gate must
 * never be skipped.  Subrequests and internal redirects into a stream_mod
 * location are refused.
 */


#include "ngx_http_stream_mod.h"


static ngx_int_t ngx_http_stream_mod_handler(ngx_http_request_t *r);
static void ngx_http_stream_mod_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_stream_mod_finish(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
static ngx_int_t ngx_http_stream_mod_forward(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
static ngx_int_t ngx_http_stream_mod_json_content(ngx_http_request_t *r);
static void ngx_http_stream_mod_scrub(void *data);
static void ngx_http_stream_mod_json_cleanup(void *data);
static ngx_int_t ngx_http_stream_mod_log_handler(ngx_http_request_t *r);

static ngx_int_t ngx_http_stream_mod_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_stream_mod_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_stream_mod_target_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static void *ngx_http_stream_mod_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_stream_mod_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_stream_mod_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_stream_mod_enable(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_stream_mod_api_secret_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_stream_mod_token_secret_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_stream_mod_identity(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_stream_mod_cors_origins(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_stream_mod_init(ngx_conf_t *cf);
static void ngx_http_stream_mod_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_stream_mod_commands[] = {

    { ngx_string("stream_mod"),
      NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_http_stream_mod_enable,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_stream_mod_loc_conf_t, enable),
      NULL },

    { ngx_string("stream_mod_api_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_stream_mod_loc_conf_t, api_key),
      NULL },

    { ngx_string("stream_mod_api_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_stream_mod_api_secret_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("stream_mod_identity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_stream_mod_identity,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("stream_mod_token_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_stream_mod_token_secret_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("stream_mod_token_leeway"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_stream_mod_loc_conf_t, leeway),
      NULL },

    { ngx_string("stream_mod_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_stream_mod_loc_conf_t, max_body_size),
      NULL },

    { ngx_string("stream_mod_policy"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_stream_mod_policy,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("stream_mod_limit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_stream_mod_limit_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("stream_mod_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE123,
      ngx_http_stream_mod_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("stream_mod_limit_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_stream_mod_loc_conf_t, limit_dry_run),
      NULL },

    { ngx_string("stream_mod_cors_origins"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_stream_mod_cors_origins,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("stream_mod_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_stream_mod_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_stream_mod_module_ctx = {
    ngx_http_stream_mod_add_variables,     /* preconfiguration */
    ngx_http_stream_mod_init,              /* postconfiguration */

    ngx_http_stream_mod_create_main_conf,  /* create main configuration */
    ngx_http_stream_mod_limit_init_main,   /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_stream_mod_create_loc_conf,   /* create location configuration */
    ngx_http_stream_mod_merge_loc_conf     /* merge location configuration */
};


ngx_module_t  ngx_http_stream_mod_module = {
    NGX_MODULE_V1,
    &ngx_http_stream_mod_module_ctx,       /* module context */
    ngx_http_stream_mod_commands,          /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_stream_mod_exit_process,      /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* variables for the audit trail, SPEC section 8 */

#define NGX_HTTP_STREAM_MOD_V_USER      0
#define NGX_HTTP_STREAM_MOD_V_ACTION    1
#define NGX_HTTP_STREAM_MOD_V_CALL      2
#define NGX_HTTP_STREAM_MOD_V_DECISION  3
#define NGX_HTTP_STREAM_MOD_V_REASON    4
#define NGX_HTTP_STREAM_MOD_V_RULE      5


static ngx_http_variable_t  ngx_http_stream_mod_vars[] = {

    { ngx_string("stream_mod_user"), NULL, ngx_http_stream_mod_variable,
      NGX_HTTP_STREAM_MOD_V_USER, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("stream_mod_action"), NULL, ngx_http_stream_mod_variable,
      NGX_HTTP_STREAM_MOD_V_ACTION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("stream_mod_target"), NULL,
      ngx_http_stream_mod_target_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("stream_mod_call"), NULL, ngx_http_stream_mod_variable,
      NGX_HTTP_STREAM_MOD_V_CALL, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("stream_mod_decision"), NULL, ngx_http_stream_mod_variable,
      NGX_HTTP_STREAM_MOD_V_DECISION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("stream_mod_reason"), NULL, ngx_http_stream_mod_variable,
      NGX_HTTP_STREAM_MOD_V_REASON, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("stream_mod_rule"), NULL, ngx_http_stream_mod_variable,
      NGX_HTTP_STREAM_MOD_V_RULE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_stream_mod_decisions[] = {
    ngx_null_string,
    ngx_string("allow"),
    ngx_string("deny"),
    ngx_string("limit"),
    ngx_string("reject")
};


static ngx_int_t
ngx_http_stream_mod_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_http_stream_mod_ctx_t       *ctx;
    ngx_http_stream_mod_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_stream_mod_module);

    if (!lcf->enable) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    if (ctx) {
        /* phases resumed after the body was read */
        return ctx->phase_status;
    }

    if (r != r->main || r->internal) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_stream_mod_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_set_ctx(r, ctx, ngx_http_stream_mod_module);

        /* the gate sees what the client sent: no detours into it */
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_FORBIDDEN,
                                        NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                        "internal redirects and subrequests "
                                        "into a stream_mod location are "
                                        "refused");
    }

    ctx = ngx_http_stream_mod_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_stream_mod_cors(r, lcf, ctx);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    rc = ngx_http_stream_mod_route(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_stream_mod_identify(r, lcf, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->action->user_token
        && !(lcf->identity == NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN
             && ctx->api_secret_token))
    {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_FORBIDDEN,
                                        NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED,
                                        "request_permission runs as the "
                                        "caller: it needs a user token "
                                        "signed with the API secret");
    }

    rc = ngx_http_stream_mod_check_query_actor(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!ctx->action->body) {
        if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
            return ngx_http_stream_mod_fail(r, ctx,
                                            NGX_HTTP_STREAM_MOD_REJECT,
                                            NGX_HTTP_BAD_REQUEST,
                                            NGX_HTTP_STREAM_MOD_E_INPUT,
                                            "%V takes no request body",
                                            &ctx->action->name);
        }

        return ngx_http_stream_mod_finish(r, lcf, ctx);
    }

    if ((r->headers_in.content_length_n > 0 || r->headers_in.chunked)
        && ngx_http_stream_mod_json_content(r) != NGX_OK)
    {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                        NGX_HTTP_STREAM_MOD_E_INPUT,
                                        "Content-Type must be "
                                        "application/json");
    }

    if (r->headers_in.content_length_n > (off_t) lcf->max_body_size) {
        return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_REJECT,
                                        NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                        NGX_HTTP_STREAM_MOD_E_TOO_BIG,
                                        "request body is larger than %uz "
                                        "bytes", lcf->max_body_size);
    }

    ctx->raw_max = lcf->max_body_size;
    ctx->capture = 1;

    if (r->headers_in.content_length_n > 0) {
        ctx->raw_size = (size_t) r->headers_in.content_length_n;
        ctx->raw = ngx_pnalloc(r->pool, ctx->raw_size);
        if (ctx->raw == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_stream_mod_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);

    return NGX_DONE;
}


static void
ngx_http_stream_mod_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_http_stream_mod_ctx_t       *ctx;
    ngx_http_stream_mod_loc_conf_t  *lcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);
    lcf = ngx_http_get_module_loc_conf(r, ngx_http_stream_mod_module);

    ctx->capture = 0;

    rc = ngx_http_stream_mod_inspect_body(r, ctx);

    if (rc == NGX_OK) {
        rc = ngx_http_stream_mod_finish(r, lcf, ctx);
    }

    ctx->phase_status = rc;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/* the gate's state for a main request of a stream_mod location */

ngx_http_stream_mod_ctx_t *
ngx_http_stream_mod_create_ctx(ngx_http_request_t *r)
{
    ngx_http_cleanup_t         *cln;
    ngx_http_stream_mod_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_stream_mod_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    /* tokens never reach a log through $http_authorization */

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_stream_mod_scrub;
    cln->data = r;

    ctx->phase_status = NGX_DONE;

    ngx_http_set_ctx(r, ctx, ngx_http_stream_mod_module);

    /*
     * Errors here are answered as Stream's APIError JSON: an inherited
     * error_page must not turn them into an HTML page elsewhere.
     */
    r->error_page = 1;

    return ctx;
}


/*
 * A jansson value lives as long as the pool; jansson allocates with
 * malloc, so the pool's cleanup releases it.  On failure it is released
 * at once.
 */

ngx_int_t
ngx_http_stream_mod_json_pool(ngx_pool_t *pool, json_t *json)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        json_decref(json);
        return NGX_ERROR;
    }

    cln->handler = ngx_http_stream_mod_json_cleanup;
    cln->data = json;

    return NGX_OK;
}


static void
ngx_http_stream_mod_json_cleanup(void *data)
{
    json_decref((json_t *) data);
}


/*
 * Policy and limits, then stamping and rewrite.  NGX_DECLINED hands over
 * to proxy_pass; NGX_DONE: a Redis limit answers later (resume below).
 */

static ngx_int_t
ngx_http_stream_mod_finish(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_int_t  rc;

    rc = ngx_http_stream_mod_policy_check(r, lcf->policy, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_stream_mod_limit_check(r, lcf, ctx);

    if (rc == NGX_AGAIN) {
        return NGX_DONE;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_stream_mod_forward(r, lcf, ctx);
}


/* a Redis limit answered: continue the gate where it stopped */

void
ngx_http_stream_mod_resume(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t                *c;
    ngx_http_stream_mod_ctx_t       *ctx;
    ngx_http_stream_mod_loc_conf_t  *lcf;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);
    lcf = ngx_http_get_module_loc_conf(r, ngx_http_stream_mod_module);

    if (rc == NGX_OK) {
        rc = ngx_http_stream_mod_forward(r, lcf, ctx);
    }

    ctx->phase_status = rc;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_stream_mod_forward(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    if (ngx_http_stream_mod_stamp_body(r, ctx) != NGX_OK
        || ngx_http_stream_mod_rewrite(r, lcf, ctx) != NGX_OK)
    {
        /* fail closed: nothing half-rewritten goes upstream */
        ctx->decision = NGX_HTTP_STREAM_MOD_REJECT;
        ngx_str_set(&ctx->reason, "internal error");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->forwarded = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "stream_mod: %V by \"%V\" forwarded",
                   &ctx->action->name, &ctx->user);

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_stream_mod_json_content(ngx_http_request_t *r)
{
    u_char     c;
    ngx_str_t  *ct;

    if (r->headers_in.content_type == NULL) {
        return NGX_DECLINED;
    }

    ct = &r->headers_in.content_type->value;

    if (ct->len < 16
        || ngx_strncasecmp(ct->data, (u_char *) "application/json", 16) != 0)
    {
        return NGX_DECLINED;
    }

    if (ct->len == 16) {
        return NGX_OK;
    }

    c = ct->data[16];

    return (c == ';' || c == ' ' || c == '\t') ? NGX_OK : NGX_DECLINED;
}


static void
ngx_http_stream_mod_scrub(void *data)
{
    ngx_http_request_t  *r = data;

    if (r->headers_in.authorization) {
        r->headers_in.authorization->value.len = 0;
    }
}


static ngx_int_t
ngx_http_stream_mod_log_handler(ngx_http_request_t *r)
{
    ngx_http_stream_mod_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    if (ctx && r == r->main) {
        ngx_http_stream_mod_count(r, ctx);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_stream_mod_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                   s;
    ngx_http_stream_mod_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    ngx_str_null(&s);

    if (ctx) {
        switch (data) {

        case NGX_HTTP_STREAM_MOD_V_USER:
            s = ctx->user;
            break;

        case NGX_HTTP_STREAM_MOD_V_ACTION:
            if (ctx->action) {
                s = ctx->action->name;
            }
            break;

        case NGX_HTTP_STREAM_MOD_V_CALL:
            s = ctx->call;
            break;

        case NGX_HTTP_STREAM_MOD_V_DECISION:
            s = ngx_http_stream_mod_decisions[ctx->decision];
            break;

        case NGX_HTTP_STREAM_MOD_V_REASON:
            s = ctx->reason;
            break;

        default: /* NGX_HTTP_STREAM_MOD_V_RULE */
            s = ctx->rule;
        }
    }

    if (s.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s.len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = s.data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_target_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                     *p;
    size_t                      len;
    ngx_str_t                  *t;
    ngx_uint_t                  i;
    ngx_http_stream_mod_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    if (ctx == NULL || ctx->targets.nelts == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    t = ctx->targets.elts;
    len = 0;

    for (i = 0; i < ctx->targets.nelts; i++) {
        len += t[i].len + 1;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;

    for (i = 0; i < ctx->targets.nelts; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, t[i].data, t[i].len);
    }

    v->len = p - v->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static void *
ngx_http_stream_mod_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_stream_mod_main_conf_t  *smcf;

    smcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_stream_mod_main_conf_t));
    if (smcf == NULL) {
        return NULL;
    }

    ngx_http_stream_mod_upstream_headers(smcf->headers);

    return smcf;
}


static void *
ngx_http_stream_mod_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_stream_mod_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_stream_mod_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->api_key = { 0, NULL };
     *     conf->secret = NULL;
     *     conf->token_secrets = NULL;
     *     conf->policy = NULL;
     *     conf->policy_set = 0;
     *     conf->limits = NULL;
     *     conf->cors_origins = NULL;
     */

    conf->enable = NGX_CONF_UNSET;
    conf->identity = NGX_CONF_UNSET;
    conf->leeway = NGX_CONF_UNSET;
    conf->max_body_size = NGX_CONF_UNSET_SIZE;
    conf->limit_dry_run = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_stream_mod_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_stream_mod_loc_conf_t *prev = parent;
    ngx_http_stream_mod_loc_conf_t *conf = child;

    ngx_uint_t                    i, n;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_stream_mod_limit_t  *limits;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_str_value(conf->api_key, prev->api_key, "");

    if (conf->secret == NULL) {
        conf->secret = prev->secret;
    }

    if (conf->token_secrets == NULL) {
        conf->token_secrets = prev->token_secrets;
    }

    ngx_conf_merge_value(conf->identity, prev->identity,
                         NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN);
    ngx_conf_merge_sec_value(conf->leeway, prev->leeway, 5);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              64 * 1024);
    ngx_conf_merge_value(conf->limit_dry_run, prev->limit_dry_run, 0);

    if (!conf->policy_set) {
        conf->policy = prev->policy;
        conf->policy_set = prev->policy_set;
    }

    if (conf->limits == NULL) {
        conf->limits = prev->limits;
    }

    if (conf->cors_origins == NULL) {
        conf->cors_origins = prev->cors_origins;
    }

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"stream_mod\" requires \"proxy_pass\" in the "
                           "same location");
        return NGX_CONF_ERROR;
    }

    if (conf->api_key.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"stream_mod\" requires \"stream_mod_api_key\"");
        return NGX_CONF_ERROR;
    }

    if (conf->secret == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"stream_mod\" requires "
                           "\"stream_mod_api_secret_file\"");
        return NGX_CONF_ERROR;
    }

    if (conf->identity == NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN
        && ngx_http_stream_mod_token_cache_init(cf, conf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (conf->limits) {
        limits = conf->limits->elts;
        n = 0;

        for (i = 0; i < conf->limits->nelts; i++) {
            n += ngx_http_stream_mod_limit_remote(&limits[i]);
        }

        if (n > 1) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "a location may use one Redis limit zone "
                               "at most");
            return NGX_CONF_ERROR;
        }
    }

    if (conf->policy == NULL) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"stream_mod\" has no \"stream_mod_policy\": "
                           "every action will be denied");
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_stream_mod_enable(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *rv;

    rv = ngx_conf_set_flag_slot(cf, cmd, conf);

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_http_stream_mod_status_zone(cf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_stream_mod_api_secret_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_stream_mod_loc_conf_t *lcf = conf;

    char                          *rv;
    ngx_str_t                     *value;
    ngx_http_stream_mod_secret_t  *secret;

    if (lcf->secret) {
        return "is duplicate";
    }

    value = cf->args->elts;

    secret = ngx_pcalloc(cf->pool, sizeof(ngx_http_stream_mod_secret_t));
    if (secret == NULL) {
        return NGX_CONF_ERROR;
    }

    rv = ngx_http_stream_mod_read_secret(cf, &value[1], secret);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /* once per secret, never per request */
    if (ngx_http_stream_mod_make_server_token(cf->pool, secret) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    lcf->secret = secret;

    return NGX_CONF_OK;
}


static char *
ngx_http_stream_mod_token_secret_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_stream_mod_loc_conf_t *lcf = conf;

    ngx_str_t                     *value;
    ngx_http_stream_mod_secret_t  *s;

    value = cf->args->elts;

    if (lcf->token_secrets == NULL) {
        lcf->token_secrets = ngx_array_create(cf->pool, 2,
                                        sizeof(ngx_http_stream_mod_secret_t));
        if (lcf->token_secrets == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    s = ngx_array_push(lcf->token_secrets);
    if (s == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(s, sizeof(ngx_http_stream_mod_secret_t));

    return ngx_http_stream_mod_read_secret(cf, &value[1], s);
}


static char *
ngx_http_stream_mod_identity(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_stream_mod_loc_conf_t *lcf = conf;

    ngx_str_t  *value;

    if (lcf->identity != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "token") == 0) {
        lcf->identity = NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN;
        return NGX_CONF_OK;
    }

    if (value[1].len < 2 || value[1].data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\": use \"token\" or a "
                           "$variable", &value[1]);
        return NGX_CONF_ERROR;
    }

    value[1].len--;
    value[1].data++;

    lcf->identity = ngx_http_get_variable_index(cf, &value[1]);
    if (lcf->identity == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_stream_mod_cors_origins(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_stream_mod_loc_conf_t *lcf = conf;

    ngx_str_t   *value, *o;
    ngx_uint_t   i;

    if (lcf->cors_origins) {
        return "is duplicate";
    }

    value = cf->args->elts;

    lcf->cors_origins = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                         sizeof(ngx_str_t));
    if (lcf->cors_origins == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "http://", 7) != 0
            && ngx_strncmp(value[i].data, "https://", 8) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid origin \"%V\": an origin is "
                               "scheme://host[:port]", &value[i]);
            return NGX_CONF_ERROR;
        }

        o = ngx_array_push(lcf->cors_origins);
        if (o == NULL) {
            return NGX_CONF_ERROR;
        }

        *o = value[i];
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_stream_mod_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_stream_mod_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_stream_mod_log_handler;

    if (ngx_http_stream_mod_filter_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_stream_mod_body_init(cf);
}


static void
ngx_http_stream_mod_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_stream_mod_limit_exit(cycle);
}
