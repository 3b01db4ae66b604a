
/*
 * ngx_stream_mod: a gate in front of Stream's moderation API.
 *
 * Shared types of the module.  Each concern lives in its own file:
 *
 *   ngx_http_stream_mod_module.c    directives, configuration, the gate
 *   ngx_http_stream_mod_identity.c  user tokens (HS256 JWT), server token
 *   ngx_http_stream_mod_action.c    action table and path routing
 *   ngx_http_stream_mod_body.c      body capture, inspection and stamping
 *   ngx_http_stream_mod_json.c      the body's JSON, read in one pass
 *   ngx_http_stream_mod_policy.c    policy file: loading and evaluation
 *   ngx_http_stream_mod_limit.c     per-moderator rate limits (shm zones)
 *   ngx_http_stream_mod_upstream.c  rewrite of the request for proxy_pass
 *   ngx_http_stream_mod_status.c    counters and the status handler
 *   ngx_http_stream_mod_error.c     Stream APIError responses, CORS
 */


#ifndef _NGX_HTTP_STREAM_MOD_H_INCLUDED_
#define _NGX_HTTP_STREAM_MOD_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>


#define NGX_HTTP_STREAM_MOD_VERSION       "0.1.0"

/* longest user id Stream accepts */
#define NGX_HTTP_STREAM_MOD_MAX_USER_ID   255
/* path parameters, SPEC section 4 */
#define NGX_HTTP_STREAM_MOD_MAX_PARAM     64
#define NGX_HTTP_STREAM_MOD_MAX_TOKEN     4096


/* Stream's APIError codes */
#define NGX_HTTP_STREAM_MOD_E_INTERNAL       (-1)
#define NGX_HTTP_STREAM_MOD_E_INPUT          4
#define NGX_HTTP_STREAM_MOD_E_AUTH           5
#define NGX_HTTP_STREAM_MOD_E_RATE_LIMIT     9
#define NGX_HTTP_STREAM_MOD_E_NOT_FOUND      16
#define NGX_HTTP_STREAM_MOD_E_NOT_ALLOWED    17
#define NGX_HTTP_STREAM_MOD_E_TOO_BIG        22
#define NGX_HTTP_STREAM_MOD_E_EXPIRED        40
#define NGX_HTTP_STREAM_MOD_E_NOT_YET        41
#define NGX_HTTP_STREAM_MOD_E_IAT            42
#define NGX_HTTP_STREAM_MOD_E_SIGNATURE      43


/* $stream_mod_decision */
#define NGX_HTTP_STREAM_MOD_NONE    0
#define NGX_HTTP_STREAM_MOD_ALLOW   1
#define NGX_HTTP_STREAM_MOD_DENY    2
#define NGX_HTTP_STREAM_MOD_LIMIT   3
#define NGX_HTTP_STREAM_MOD_REJECT  4


/* actions, SPEC section 4; the order is the status output's order */
enum {
    NGX_HTTP_STREAM_MOD_BAN = 0,
    NGX_HTTP_STREAM_MOD_UNBAN,
    NGX_HTTP_STREAM_MOD_MUTE,
    NGX_HTTP_STREAM_MOD_UNMUTE,
    NGX_HTTP_STREAM_MOD_BLOCK_USER,
    NGX_HTTP_STREAM_MOD_UNBLOCK_USER,
    NGX_HTTP_STREAM_MOD_BLOCKED_USERS,
    NGX_HTTP_STREAM_MOD_DEACTIVATE_USER,
    NGX_HTTP_STREAM_MOD_REACTIVATE_USER,
    NGX_HTTP_STREAM_MOD_DEACTIVATE_USERS,
    NGX_HTTP_STREAM_MOD_REACTIVATE_USERS,
    NGX_HTTP_STREAM_MOD_EXPORT_USERS,
    NGX_HTTP_STREAM_MOD_GET_TASK,
    NGX_HTTP_STREAM_MOD_MUTE_USERS,
    NGX_HTTP_STREAM_MOD_BLOCK_CALL_USER,
    NGX_HTTP_STREAM_MOD_UNBLOCK_CALL_USER,
    NGX_HTTP_STREAM_MOD_KICK_USER,
    NGX_HTTP_STREAM_MOD_UPDATE_USER_PERMISSIONS,
    NGX_HTTP_STREAM_MOD_END_CALL,
    NGX_HTTP_STREAM_MOD_REQUEST_PERMISSION,
    NGX_HTTP_STREAM_MOD_NACTIONS
};


/* body field types, from the upstream OpenAPI schemas */
#define NGX_HTTP_STREAM_MOD_T_STRING   0
#define NGX_HTTP_STREAM_MOD_T_BOOL     1
#define NGX_HTTP_STREAM_MOD_T_UINT     2      /* integer, minimum 0 */
#define NGX_HTTP_STREAM_MOD_T_STRINGS  3      /* array of strings */
#define NGX_HTTP_STREAM_MOD_T_OBJECT   4      /* user object: refused */

/* body field roles */
#define NGX_HTTP_STREAM_MOD_F_REQUIRED  0x01
#define NGX_HTTP_STREAM_MOD_F_ACTOR     0x02
#define NGX_HTTP_STREAM_MOD_F_TARGET    0x04
#define NGX_HTTP_STREAM_MOD_F_USER_ID   0x08  /* values are user ids */


/* JSON value types of the body reader (json.c) */
#define NGX_HTTP_STREAM_MOD_J_NULL     0
#define NGX_HTTP_STREAM_MOD_J_FALSE    1
#define NGX_HTTP_STREAM_MOD_J_TRUE     2
#define NGX_HTTP_STREAM_MOD_J_INTEGER  3
#define NGX_HTTP_STREAM_MOD_J_REAL     4
#define NGX_HTTP_STREAM_MOD_J_STRING   5
#define NGX_HTTP_STREAM_MOD_J_ARRAY    6
#define NGX_HTTP_STREAM_MOD_J_OBJECT   7


typedef struct ngx_http_stream_mod_json_value_s
    ngx_http_stream_mod_json_value_t;

struct ngx_http_stream_mod_json_value_s {
    ngx_uint_t                      type;
    ngx_str_t                       raw;           /* as the client sent it */
    ngx_str_t                       str;           /* J_STRING, decoded */
    int64_t                         integer;       /* J_INTEGER */
    /* J_ARRAY of a top-level member: its items */
    ngx_http_stream_mod_json_value_t  *items;
    ngx_uint_t                      nitems;
};


typedef struct {
    ngx_str_t                       key;           /* decoded */
    ngx_http_stream_mod_json_value_t   value;
} ngx_http_stream_mod_json_member_t;


typedef struct {
    ngx_uint_t                      type;          /* of the whole text */
    /* J_OBJECT: the top-level members, in the client's order */
    ngx_http_stream_mod_json_member_t  *members;
    ngx_uint_t                      nmembers;
    /* a refused text: why and where */
    ngx_uint_t                      duplicate;
    ngx_uint_t                      line;
    ngx_uint_t                      column;
} ngx_http_stream_mod_json_t;


typedef struct {
    ngx_str_t                       name;
    ngx_uint_t                      type;
    ngx_uint_t                      flags;
    ngx_uint_t                      min_items;
    ngx_uint_t                      max_items;     /* 0: unbounded */
    const char                    **values;        /* enum, NULL-ended */
} ngx_http_stream_mod_field_t;


typedef struct {
    ngx_str_t                       name;
    ngx_uint_t                      id;
    ngx_str_t                       upstream_method;
    /* "/api/v2/users/$0/deactivate": $0, $1 are the path parameters */
    ngx_str_t                       upstream_path;
    ngx_http_stream_mod_field_t    *fields;
    ngx_uint_t                      nfields;
    /* query parameters the upstream operation defines, NULL-ended */
    const char                    **query;
    /* the query parameter holding the target, or the actor */
    ngx_str_t                       query_target;
    ngx_str_t                       query_actor;
    unsigned                        body:1;        /* POST with JSON */
    unsigned                        call:1;        /* /calls/{type}/{id} */
    unsigned                        user_token:1;  /* runs as the caller */
    unsigned                        param_target:1;
} ngx_http_stream_mod_action_t;


typedef struct {
    ngx_str_t                       secret;
    /* HMAC-SHA256 keyed once with the secret; restarted per use */
    struct evp_mac_ctx_st          *mac;
    /* HS256 JWT of {"server":true}, made once per secret (API secret) */
    ngx_str_t                       server_token;
} ngx_http_stream_mod_secret_t;


typedef struct ngx_http_stream_mod_policy_s  ngx_http_stream_mod_policy_t;


/* tokens this worker verified, so a repeated token skips HMAC and parsing */
#define NGX_HTTP_STREAM_MOD_TOKEN_CACHE  256
#define NGX_HTTP_STREAM_MOD_JWT_HEADER   128

typedef struct {
    u_char                         *token;         /* malloc'd copy */
    size_t                          len;
    json_t                         *claims;
    ngx_uint_t                      api_secret;
} ngx_http_stream_mod_token_entry_t;


typedef struct {
    ngx_shm_zone_t                 *shm_zone;
    ngx_uint_t                      burst;       /* in requests * 1000 */
    unsigned                        per_action:1;
} ngx_http_stream_mod_limit_t;


struct redisAsyncContext;

typedef void (*ngx_http_stream_mod_redis_done_pt)(void *data, ngx_int_t rc,
    ngx_uint_t excess);

#define NGX_HTTP_STREAM_MOD_ON_ERROR_DENY   0
#define NGX_HTTP_STREAM_MOD_ON_ERROR_LOCAL  1

/* a limit zone kept in Redis (redis=...) */
typedef struct {
    ngx_str_t                       addr;          /* as configured */
    ngx_str_t                       host;          /* numeric, terminated */
    in_port_t                       port;
    ngx_str_t                       prefix;
    ngx_str_t                       sha1;          /* of the script */
    ngx_msec_t                      timeout;
    ngx_uint_t                      on_error;
    /* per worker process */
    struct redisAsyncContext       *ac;
    ngx_msec_t                      retry_at;
} ngx_http_stream_mod_redis_t;


typedef struct {
    ngx_str_t                       name;
    size_t                          size;
    ngx_uint_t                      entries;
    ngx_uint_t                      evictions;
    ngx_uint_t                      expired;
    ngx_uint_t                      full_refusals;
    ngx_uint_t                      dry_run_hits;
    ngx_uint_t                      rate;
    ngx_uint_t                      per_minute;
    ngx_str_t                       redis;
    ngx_uint_t                      redis_errors;
    ngx_uint_t                      redis_fallbacks;
} ngx_http_stream_mod_zone_stats_t;


/* a stream_mod_limit line, checked once the http block is parsed */
typedef struct {
    ngx_shm_zone_t                 *shm_zone;
    ngx_str_t                       file;
    ngx_uint_t                      line;
} ngx_http_stream_mod_limit_ref_t;


/* the headers the gateway adds upstream, hashed once (upstream.c) */
enum {
    NGX_HTTP_STREAM_MOD_H_AUTHORIZATION = 0,
    NGX_HTTP_STREAM_MOD_H_AUTH_TYPE,
    NGX_HTTP_STREAM_MOD_H_CONTENT_TYPE,
    NGX_HTTP_STREAM_MOD_H_CLIENT,
    NGX_HTTP_STREAM_MOD_NHEADERS
};


typedef struct {
    ngx_shm_zone_t                 *status_zone;
    ngx_array_t                    *zones;           /* ngx_shm_zone_t * */
    ngx_array_t                    *refs;            /* limit_ref_t */
    ngx_table_elt_t                 headers[NGX_HTTP_STREAM_MOD_NHEADERS];
} ngx_http_stream_mod_main_conf_t;


typedef struct {
    ngx_flag_t                      enable;
    ngx_str_t                       api_key;
    ngx_http_stream_mod_secret_t   *secret;
    ngx_array_t                    *token_secrets;   /* secret_t */
    ngx_int_t                       identity;        /* -2: token */
    ngx_http_stream_mod_token_entry_t  *token_cache;
    /* the JWT header segment this worker accepted last (not secret) */
    ngx_str_t                       jwt_header;
    time_t                          leeway;
    size_t                          max_body_size;
    ngx_http_stream_mod_policy_t   *policy;
    ngx_uint_t                      policy_set;
    ngx_array_t                    *limits;          /* limit_t */
    ngx_flag_t                      limit_dry_run;
    ngx_array_t                    *cors_origins;    /* ngx_str_t */
} ngx_http_stream_mod_loc_conf_t;


#define NGX_HTTP_STREAM_MOD_IDENTITY_TOKEN  (-2)


typedef struct {
    ngx_int_t                       phase_status;
    ngx_http_stream_mod_action_t   *action;

    ngx_str_t                       params[2];      /* path parameters */
    ngx_str_t                       query_target;
    ngx_str_t                       query_actor;
    ngx_str_t                       query_extra;    /* forwarded, raw */

    ngx_str_t                       user;
    ngx_str_t                       token;          /* raw user token */
    json_t                         *claims;
    /* the body's top-level members (none for actions without a body) */
    ngx_http_stream_mod_json_t      body;
    unsigned                        api_secret_token:1;

    ngx_array_t                     targets;        /* ngx_str_t */
    ngx_uint_t                      mute_all;
    ngx_str_t                       call;           /* "type:id" */

    /* the raw body as the client sent it, captured in memory */
    u_char                         *raw;
    size_t                          raw_len;
    size_t                          raw_size;
    size_t                          raw_max;

    ngx_uint_t                      decision;
    ngx_str_t                       reason;
    ngx_str_t                       rule;

    /* a gateway error being answered */
    ngx_int_t                       err_status;
    ngx_int_t                       err_code;
    ngx_str_t                       err_message;
    ngx_str_t                       err_allow;      /* 405 Allow */
    time_t                          retry_after;
    ngx_int_t                       rl_limit;
    ngx_int_t                       rl_remaining;
    time_t                          rl_reset;

    void                           *limit_state;
    void                           *limit_wait;     /* waiting for Redis */

    ngx_str_t                       origin;         /* allowed CORS origin */
    ngx_buf_t                      *err_body;

    unsigned                        capture:1;
    unsigned                        forwarded:1;
    unsigned                        replace_body:1;
    unsigned                        body_sent:1;
    unsigned                        counted:1;
    unsigned                        rl_headers:1;
    unsigned                        preflight:1;
} ngx_http_stream_mod_ctx_t;


extern ngx_module_t  ngx_http_stream_mod_module;


/* module.c */
ngx_http_stream_mod_ctx_t *ngx_http_stream_mod_create_ctx(
    ngx_http_request_t *r);
ngx_int_t ngx_http_stream_mod_json_pool(ngx_pool_t *pool, json_t *json);
void ngx_http_stream_mod_resume(ngx_http_request_t *r, ngx_int_t rc);

/* action.c */
ngx_int_t ngx_http_stream_mod_route(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx);
ngx_http_stream_mod_action_t *ngx_http_stream_mod_action_find(ngx_str_t *name);
ngx_http_stream_mod_action_t *ngx_http_stream_mod_action_get(ngx_uint_t id);
ngx_uint_t ngx_http_stream_mod_valid_id(u_char *p, size_t len, size_t max);

/* identity.c */
ngx_int_t ngx_http_stream_mod_identify(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
char *ngx_http_stream_mod_read_secret(ngx_conf_t *cf, ngx_str_t *path,
    ngx_http_stream_mod_secret_t *secret);
ngx_int_t ngx_http_stream_mod_token_cache_init(ngx_conf_t *cf,
    ngx_http_stream_mod_loc_conf_t *lcf);
ngx_int_t ngx_http_stream_mod_make_server_token(ngx_pool_t *pool,
    ngx_http_stream_mod_secret_t *secret);
ngx_int_t ngx_http_stream_mod_secret_init(ngx_http_stream_mod_secret_t *s,
    ngx_log_t *log);

/* body.c */
ngx_int_t ngx_http_stream_mod_body_init(ngx_conf_t *cf);
ngx_int_t ngx_http_stream_mod_inspect_body(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx);
ngx_int_t ngx_http_stream_mod_stamp_body(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx);
ngx_int_t ngx_http_stream_mod_check_query_actor(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx);
ngx_int_t ngx_http_stream_mod_add_target(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_str_t *target);

/* json.c */
ngx_int_t ngx_http_stream_mod_json_parse(ngx_pool_t *pool, u_char *text,
    size_t len, ngx_http_stream_mod_json_t *json);
ngx_http_stream_mod_json_value_t *ngx_http_stream_mod_json_get(
    ngx_http_stream_mod_json_t *json, u_char *name, size_t len);
ngx_uint_t ngx_http_stream_mod_json_equal(ngx_http_stream_mod_json_value_t *v,
    json_t *want);

/* policy.c */
char *ngx_http_stream_mod_policy(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_stream_mod_policy_t *ngx_http_stream_mod_policy_load(ngx_conf_t *cf,
    ngx_str_t *file, u_char *text, size_t len);
ngx_int_t ngx_http_stream_mod_policy_check(ngx_http_request_t *r,
    ngx_http_stream_mod_policy_t *policy, ngx_http_stream_mod_ctx_t *ctx);

/* limit.c */
char *ngx_http_stream_mod_limit_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_stream_mod_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_stream_mod_limit_check(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
ngx_int_t ngx_http_stream_mod_limit_stats(ngx_http_request_t *r,
    ngx_array_t *out);
char *ngx_http_stream_mod_limit_init_main(ngx_conf_t *cf, void *conf);
ngx_uint_t ngx_http_stream_mod_limit_remote(ngx_http_stream_mod_limit_t *limit);
void ngx_http_stream_mod_limit_exit(ngx_cycle_t *cycle);

/* redis.c */
ngx_int_t ngx_http_stream_mod_redis_parse(ngx_conf_t *cf,
    ngx_http_stream_mod_redis_t *rd, ngx_str_t *addr);
ngx_int_t ngx_http_stream_mod_redis_check(ngx_http_stream_mod_redis_t *rd,
    ngx_str_t *zone, u_char *digest, ngx_uint_t rate, ngx_uint_t burst,
    ngx_log_t *log, ngx_http_stream_mod_redis_done_pt handler, void *data);
void ngx_http_stream_mod_redis_reset(ngx_http_stream_mod_redis_t *rd,
    ngx_log_t *log);
void ngx_http_stream_mod_redis_exit(ngx_http_stream_mod_redis_t *rd);

/* upstream.c */
void ngx_http_stream_mod_upstream_headers(ngx_table_elt_t *headers);
ngx_int_t ngx_http_stream_mod_rewrite(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);

/* status.c */
ngx_int_t ngx_http_stream_mod_status_zone(ngx_conf_t *cf);
void ngx_http_stream_mod_count(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx);
void ngx_http_stream_mod_count_upstream(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_uint_t status);
char *ngx_http_stream_mod_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* error.c */
ngx_int_t ngx_http_stream_mod_fail(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_uint_t decision, ngx_int_t status,
    ngx_int_t code, const char *fmt, ...);
ngx_int_t ngx_http_stream_mod_filter_init(ngx_conf_t *cf);
ngx_int_t ngx_http_stream_mod_cors(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
ngx_table_elt_t *ngx_http_stream_mod_cors_origin(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx,
    ngx_table_elt_t **acrm);


#endif /* _NGX_HTTP_STREAM_MOD_H_INCLUDED_ */
