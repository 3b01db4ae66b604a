
/*
 * Per-moderator rate limits (SPEC section 6): a leaky bucket per key with
 * millisecond accounting, as limit_req ... nodelay does, in a shared zone
 * (rbtree + LRU queue under the slab mutex).  Keys are verified user ids
 * only.  Unlike limit_req, a full zone never evicts a bucket that still
 * holds excess: the request is refused instead (fail closed).
 */


#include "ngx_http_stream_mod.h"

#include <ngx_md5.h>


/*
 * A bucket, laid over the rbtree node from its color byte on.  The node's
 * key is 64 bits of the MD5 of the moderator's key (user id, and action
 * with per=action), and nothing else is stored: the whole node takes 60
 * bytes, one 64-byte slab chunk, whatever the user id's length.
 */

typedef struct {
    u_char                          color;
    u_char                          dummy;
    u_short                         pad;
    /* excess requests * 1000; burst is capped so that it fits */
    uint32_t                        excess;
    ngx_queue_t                     queue;
    /* ngx_current_msec, truncated: only differences are used */
    uint32_t                        last;
} ngx_http_stream_mod_limit_node_t;


typedef struct {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     queue;
    ngx_uint_t                      entries;
    ngx_atomic_t                    evictions;
    ngx_atomic_t                    expired;
    ngx_atomic_t                    full_refusals;
    ngx_atomic_t                    dry_run_hits;
    ngx_atomic_t                    redis_errors;
    ngx_atomic_t                    redis_fallbacks;
} ngx_http_stream_mod_limit_shctx_t;


/* what one request accounted in one zone, to give back */
typedef struct {
    ngx_http_stream_mod_limit_node_t   *node;
    ngx_uint_t                          excess;
    ngx_msec_t                          last;
    ngx_msec_t                          now;
    u_char                              key[16];
} ngx_http_stream_mod_limit_undo_t;


typedef struct {
    ngx_http_stream_mod_limit_shctx_t  *sh;
    ngx_slab_pool_t                    *shpool;
    /* requests per 1000 seconds */
    ngx_uint_t                          rate;
    ngx_uint_t                          scale;     /* 1 or 60 */
    ngx_uint_t                          per;       /* rate as written */
    ngx_str_t                           name;
    ngx_http_stream_mod_redis_t         redis;     /* addr.len: in Redis */
} ngx_http_stream_mod_limit_ctx_t;


/* one request's accounting across the location's zones */
typedef struct {
    ngx_uint_t                          remote;    /* index, or nelts */
    ngx_http_stream_mod_limit_undo_t   *undo;
} ngx_http_stream_mod_limit_state_t;


/*
 * A request waiting for Redis.  Allocated outside the request pool: the
 * reply may come after the request is gone, and frees it.
 */
typedef struct {
    ngx_http_request_t                 *request;
    ngx_http_stream_mod_redis_t        *redis;
    ngx_event_t                         timer;
} ngx_http_stream_mod_limit_wait_t;


static ngx_int_t ngx_http_stream_mod_limit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_stream_mod_limit_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_stream_mod_limit_lookup(
    ngx_http_stream_mod_limit_t *limit, u_char *key,
    ngx_http_stream_mod_limit_undo_t *undo, ngx_uint_t *ep);
static ngx_int_t ngx_http_stream_mod_limit_local(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx,
    ngx_uint_t i, ngx_uint_t *excess);
static ngx_int_t ngx_http_stream_mod_limit_refuse(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx,
    ngx_uint_t i, ngx_uint_t excess);
static ngx_int_t ngx_http_stream_mod_limit_unavailable(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
static void ngx_http_stream_mod_limit_give_back(
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx);
static void ngx_http_stream_mod_limit_reply(void *data, ngx_int_t rc,
    ngx_uint_t excess);
static void ngx_http_stream_mod_limit_timeout(ngx_event_t *ev);
static void ngx_http_stream_mod_limit_cancel(void *data);
static ngx_http_stream_mod_limit_node_t *ngx_http_stream_mod_limit_find(
    ngx_http_stream_mod_limit_ctx_t *ctx, u_char *key);
static ngx_uint_t ngx_http_stream_mod_limit_expire(
    ngx_http_stream_mod_limit_ctx_t *ctx, ngx_uint_t n);


char *
ngx_http_stream_mod_limit_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_stream_mod_main_conf_t *smcf = conf;

    u_char                           *p;
    size_t                            len;
    ssize_t                           size;
    ngx_str_t                        *value, name, s, redis, prefix;
    ngx_int_t                         rate, scale;
    ngx_msec_t                        timeout;
    ngx_uint_t                        on_error, options;
    ngx_uint_t                        i;
    ngx_list_part_t                  *part;
    ngx_shm_zone_t                   *shm_zone, *oshm, **zp;
    ngx_http_stream_mod_limit_ctx_t  *ctx;

    value = cf->args->elts;

    size = 0;
    rate = 0;
    scale = 1;
    name.len = 0;
    ngx_str_null(&redis);
    ngx_str_set(&prefix, "stream_mod:");
    timeout = 200;
    on_error = NGX_HTTP_STREAM_MOD_ON_ERROR_DENY;
    options = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;

            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL || p == name.data) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {

            len = value[i].len;
            p = value[i].data + len - 3;

            if (len > 8 && ngx_strncmp(p, "r/s", 3) == 0) {
                scale = 1;

            } else if (len > 8 && ngx_strncmp(p, "r/m", 3) == 0) {
                scale = 60;

            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid rate \"%V\": use Nr/s or Nr/m",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            rate = ngx_atoi(value[i].data + 5, len - 8);
            if (rate <= 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid rate \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "redis=", 6) == 0) {
            redis.len = value[i].len - 6;
            redis.data = value[i].data + 6;

            if (redis.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty redis address");
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "prefix=", 7) == 0) {
            prefix.len = value[i].len - 7;
            prefix.data = value[i].data + 7;
            options = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.len = value[i].len - 8;
            s.data = value[i].data + 8;

            timeout = ngx_parse_time(&s, 0);
            if (timeout == (ngx_msec_t) NGX_ERROR || timeout == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid timeout \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            options = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "on_error=deny") == 0) {
            on_error = NGX_HTTP_STREAM_MOD_ON_ERROR_DENY;
            options = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "on_error=local") == 0) {
            on_error = NGX_HTTP_STREAM_MOD_ON_ERROR_LOCAL;
            options = 1;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0 || rate == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" and \"rate\" parameters",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /*
     * A zone that changes size would be created anew and every bucket
     * reset: refuse, so the running configuration keeps serving.
     */

    part = &cf->cycle->old_cycle->shared_memory.part;
    oshm = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            oshm = part->elts;
            i = 0;
        }

        if (oshm[i].tag == &ngx_http_stream_mod_module
            && oshm[i].shm.name.len == name.len
            && ngx_strncmp(oshm[i].shm.name.data, name.data, name.len) == 0
            && oshm[i].shm.size != (size_t) size)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "zone \"%V\" cannot change its size from %uz "
                               "to %uz on reload: the buckets would be lost; "
                               "restart NGINX or use a new zone name",
                               &name, oshm[i].shm.size, (size_t) size);
            return NGX_CONF_ERROR;
        }
    }

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_stream_mod_limit_ctx_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    ctx->rate = rate * 1000 / scale;
    ctx->scale = scale;
    ctx->per = rate;
    ctx->name = name;

    if (redis.len) {
        if (ngx_http_stream_mod_redis_parse(cf, &ctx->redis, &redis)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        /* "<prefix><zone>:" and 32 hex digits fit the command's key */
        if (prefix.len + name.len > 95) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"prefix\" and the zone name of \"%V\" "
                               "are longer than 95 bytes together", &name);
            return NGX_CONF_ERROR;
        }

        ctx->redis.prefix = prefix;
        ctx->redis.timeout = timeout;
        ctx->redis.on_error = on_error;

    } else if (options) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"prefix\", \"timeout\" and \"on_error\" "
                           "need \"redis\"");
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_stream_mod_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V \"%V\" is already defined", &cmd->name, &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_stream_mod_limit_init_zone;
    shm_zone->data = ctx;

    if (smcf->zones == NULL) {
        smcf->zones = ngx_array_create(cf->pool, 2, sizeof(ngx_shm_zone_t *));
        if (smcf->zones == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    zp = ngx_array_push(smcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = shm_zone;

    return NGX_CONF_OK;
}


char *
ngx_http_stream_mod_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_stream_mod_loc_conf_t *lcf = conf;

    ngx_int_t                     burst;
    ngx_str_t                    *value, s;
    ngx_uint_t                    i, per_action;
    ngx_shm_zone_t                   *shm_zone;
    ngx_http_stream_mod_limit_t      *limit, *limits;
    ngx_http_stream_mod_limit_ref_t  *ref;
    ngx_http_stream_mod_main_conf_t  *smcf;

    value = cf->args->elts;

    shm_zone = NULL;
    burst = 0;
    per_action = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            s.len = value[i].len - 5;
            s.data = value[i].data + 5;

            shm_zone = ngx_shared_memory_add(cf, &s, 0,
                                             &ngx_http_stream_mod_module);
            if (shm_zone == NULL) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0) {

            burst = ngx_atoi(value[i].data + 6, value[i].len - 6);

            /* the bucket's excess is 32 bits, in requests * 1000 */
            if (burst < 0 || burst > 4000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid burst value \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "per=action") == 0) {
            per_action = 1;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (shm_zone == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (lcf->limits == NULL) {
        lcf->limits = ngx_array_create(cf->pool, 1,
                                       sizeof(ngx_http_stream_mod_limit_t));
        if (lcf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    limits = lcf->limits->elts;

    for (i = 0; i < lcf->limits->nelts; i++) {
        if (shm_zone == limits[i].shm_zone
            && per_action == limits[i].per_action)
        {
            return "is duplicate";
        }
    }

    limit = ngx_array_push(lcf->limits);
    if (limit == NULL) {
        return NGX_CONF_ERROR;
    }

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_stream_mod_module);

    if (smcf->refs == NULL) {
        smcf->refs = ngx_array_create(cf->pool, 4,
                                      sizeof(ngx_http_stream_mod_limit_ref_t));
        if (smcf->refs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    ref = ngx_array_push(smcf->refs);
    if (ref == NULL) {
        return NGX_CONF_ERROR;
    }

    ref->shm_zone = shm_zone;
    ref->file = cf->conf_file->file.name;
    ref->line = cf->conf_file->line;

    limit->shm_zone = shm_zone;
    limit->burst = burst * 1000;
    limit->per_action = per_action;

    return NGX_CONF_OK;
}


/*
 * Once the http block is parsed: every zone a stream_mod_limit names must
 * be defined, reported at the line that uses it.
 */

char *
ngx_http_stream_mod_limit_init_main(ngx_conf_t *cf, void *conf)
{
    ngx_http_stream_mod_main_conf_t *smcf = conf;

    ngx_uint_t                        i;
    ngx_http_stream_mod_limit_ref_t  *ref;

    if (smcf->refs == NULL) {
        return NGX_CONF_OK;
    }

    ref = smcf->refs->elts;

    for (i = 0; i < smcf->refs->nelts; i++) {
        if (ref[i].shm_zone->init == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"stream_mod_limit\" uses unknown zone \"%V\" "
                          "in %V:%ui", &ref[i].shm_zone->shm.name,
                          &ref[i].file, ref[i].line);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_stream_mod_limit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_stream_mod_limit_ctx_t  *octx = data;

    size_t                            len;
    ngx_http_stream_mod_limit_ctx_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        /* reload: the buckets stay, a new rate applies from now on */
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;

        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;

        return NGX_OK;
    }

    ctx->sh = ngx_slab_calloc(ctx->shpool,
                              sizeof(ngx_http_stream_mod_limit_shctx_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    ngx_http_stream_mod_limit_insert_value);

    ngx_queue_init(&ctx->sh->queue);

    len = sizeof(" in stream_mod_limit_zone \"\"") + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in stream_mod_limit_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is handled (and logged) by the module */
    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_http_stream_mod_limit_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t  **p;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            /* cannot happen: a key is looked up before it is inserted */
            p = &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


ngx_int_t
ngx_http_stream_mod_limit_check(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_int_t                           rc;
    ngx_uint_t                          i, n, excess;
    ngx_md5_t                           md5;
    ngx_http_cleanup_t                 *cln;
    ngx_http_stream_mod_limit_t        *limit;
    ngx_http_stream_mod_limit_ctx_t    *zctx;
    ngx_http_stream_mod_limit_wait_t   *w;
    ngx_http_stream_mod_limit_state_t  *st;

    if (lcf->limits == NULL) {
        return NGX_OK;
    }

    limit = lcf->limits->elts;
    n = lcf->limits->nelts;

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_stream_mod_limit_state_t)
                              + n * sizeof(ngx_http_stream_mod_limit_undo_t));
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->undo = (ngx_http_stream_mod_limit_undo_t *) (st + 1);
    st->remote = n;
    ctx->limit_state = st;

    for (i = 0; i < n; i++) {

        ngx_md5_init(&md5);
        ngx_md5_update(&md5, ctx->user.data, ctx->user.len);

        if (limit[i].per_action) {
            ngx_md5_update(&md5, "\0", 1);
            ngx_md5_update(&md5, ctx->action->name.data,
                           ctx->action->name.len);
        }

        ngx_md5_final(st->undo[i].key, &md5);

        zctx = limit[i].shm_zone->data;

        if (zctx->redis.addr.len) {
            /* at most one per location (checked at configuration) */
            st->remote = i;
            continue;
        }

        rc = ngx_http_stream_mod_limit_local(r, lcf, ctx, i, &excess);

        if (rc != NGX_OK) {
            return rc;
        }
    }

    if (st->remote == n) {
        return NGX_OK;
    }

    i = st->remote;
    zctx = limit[i].shm_zone->data;

    w = ngx_alloc(sizeof(ngx_http_stream_mod_limit_wait_t), r->connection->log);
    if (w == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(w, sizeof(ngx_http_stream_mod_limit_wait_t));

    if (ngx_http_stream_mod_redis_check(&zctx->redis, &zctx->name,
                                        st->undo[i].key, zctx->rate,
                                        limit[i].burst, r->connection->log,
                                        ngx_http_stream_mod_limit_reply, w)
        != NGX_OK)
    {
        ngx_free(w);
        return ngx_http_stream_mod_limit_unavailable(r, lcf, ctx);
    }

    /* the request waits; the reply or the timer resumes it */

    w->request = r;
    w->redis = &zctx->redis;
    w->timer.handler = ngx_http_stream_mod_limit_timeout;
    w->timer.data = w;
    w->timer.log = r->connection->log;

    ngx_add_timer(&w->timer, zctx->redis.timeout);

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        /* the reply frees w; the request must not be resumed twice */
        w->request = NULL;
        ngx_del_timer(&w->timer);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_stream_mod_limit_cancel;
    cln->data = r;

    ctx->limit_wait = w;

    return NGX_AGAIN;
}


/* a local zone: account, or refuse and give back what earlier zones took */

static ngx_int_t
ngx_http_stream_mod_limit_local(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx,
    ngx_uint_t i, ngx_uint_t *excess)
{
    ngx_int_t                           rc;
    ngx_http_stream_mod_limit_t        *limit;
    ngx_http_stream_mod_limit_ctx_t    *zctx;
    ngx_http_stream_mod_limit_state_t  *st;

    limit = lcf->limits->elts;
    zctx = limit[i].shm_zone->data;
    st = ctx->limit_state;

    ngx_shmtx_lock(&zctx->shpool->mutex);

    rc = ngx_http_stream_mod_limit_lookup(&limit[i], st->undo[i].key,
                                          &st->undo[i], excess);

    ngx_shmtx_unlock(&zctx->shpool->mutex);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    if (lcf->limit_dry_run) {
        (void) ngx_atomic_fetch_add(rc == NGX_BUSY
                                    ? &zctx->sh->dry_run_hits
                                    : &zctx->sh->full_refusals, 1);

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "stream_mod: %s in zone \"%V\" by user \"%V\" "
                      "(dry run)",
                      rc == NGX_BUSY ? "limit exceeded" : "zone full",
                      &limit[i].shm_zone->shm.name, &ctx->user);

        st->undo[i].node = NULL;
        return NGX_OK;
    }

    if (rc == NGX_DECLINED) {
        /* the zone is full of active buckets */
        (void) ngx_atomic_fetch_add(&zctx->sh->full_refusals, 1);

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "stream_mod: zone \"%V\" is full of active "
                      "buckets, request refused; make the zone larger",
                      &limit[i].shm_zone->shm.name);

        *excess = limit[i].burst + 1000;
    }

    return ngx_http_stream_mod_limit_refuse(r, lcf, ctx, i, *excess);
}


static ngx_int_t
ngx_http_stream_mod_limit_refuse(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx,
    ngx_uint_t i, ngx_uint_t excess)
{
    ngx_uint_t                          burst;
    ngx_msec_t                          ms;
    ngx_http_stream_mod_limit_t        *limit;
    ngx_http_stream_mod_limit_ctx_t    *zctx;

    limit = lcf->limits->elts;

    /* give back what the other local zones accounted for this request */
    ngx_http_stream_mod_limit_give_back(lcf, ctx);

    zctx = limit[i].shm_zone->data;
    burst = limit[i].burst;

    /*
     * "excess" includes this request: it would pass once the bucket
     * has leaked excess - burst; the whole allowance (burst + 1 quick
     * requests, as for a new moderator) is back once it leaked excess.
     */
    ms = (excess - burst) * 1000 / zctx->rate;

    ctx->rl_headers = 1;
    ctx->retry_after = (ms + 999) / 1000;
    ctx->retry_after = ngx_max(ctx->retry_after, 1);
    ctx->rl_limit = burst / 1000 + 1;
    ctx->rl_remaining = 0;
    ctx->rl_reset = ngx_time() + (excess * 1000 / zctx->rate + 999) / 1000;

    return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_LIMIT,
                                    NGX_HTTP_TOO_MANY_REQUESTS,
                                    NGX_HTTP_STREAM_MOD_E_RATE_LIMIT,
                                    "rate limit exceeded (zone %V)",
                                    &limit[i].shm_zone->shm.name);
}


/* Redis did not answer: on_error=deny refuses, on_error=local falls back */

static ngx_int_t
ngx_http_stream_mod_limit_unavailable(ngx_http_request_t *r,
    ngx_http_stream_mod_loc_conf_t *lcf, ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_uint_t                          i, excess;
    ngx_http_stream_mod_limit_t        *limit;
    ngx_http_stream_mod_limit_ctx_t    *zctx;
    ngx_http_stream_mod_limit_state_t  *st;

    limit = lcf->limits->elts;
    st = ctx->limit_state;
    i = st->remote;
    zctx = limit[i].shm_zone->data;

    (void) ngx_atomic_fetch_add(&zctx->sh->redis_errors, 1);

    if (lcf->limit_dry_run
        && zctx->redis.on_error == NGX_HTTP_STREAM_MOD_ON_ERROR_DENY)
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "stream_mod: redis %V unavailable, zone \"%V\" "
                      "lets the request through (dry run)",
                      &zctx->redis.addr, &zctx->name);
        return NGX_OK;
    }

    if (zctx->redis.on_error == NGX_HTTP_STREAM_MOD_ON_ERROR_LOCAL) {
        (void) ngx_atomic_fetch_add(&zctx->sh->redis_fallbacks, 1);

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "stream_mod: redis %V unavailable, zone \"%V\" "
                      "falls back to its local buckets",
                      &zctx->redis.addr, &zctx->name);

        return ngx_http_stream_mod_limit_local(r, lcf, ctx, i, &excess);
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "stream_mod: redis %V unavailable, zone \"%V\" refuses",
                  &zctx->redis.addr, &zctx->name);

    ngx_http_stream_mod_limit_give_back(lcf, ctx);

    return ngx_http_stream_mod_fail(r, ctx, NGX_HTTP_STREAM_MOD_LIMIT,
                                    NGX_HTTP_SERVICE_UNAVAILABLE,
                                    NGX_HTTP_STREAM_MOD_E_INTERNAL,
                                    "rate limit store unavailable "
                                    "(zone %V)", &zctx->name);
}


/* give back what the local zones accounted for a refused request */

static void
ngx_http_stream_mod_limit_give_back(ngx_http_stream_mod_loc_conf_t *lcf,
    ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_uint_t                          j;
    ngx_http_stream_mod_limit_t        *limit;
    ngx_http_stream_mod_limit_ctx_t    *zctx;
    ngx_http_stream_mod_limit_node_t   *lr;
    ngx_http_stream_mod_limit_state_t  *st;

    limit = lcf->limits->elts;
    st = ctx->limit_state;

    for (j = 0; j < lcf->limits->nelts; j++) {
        if (st->undo[j].node == NULL) {
            continue;
        }

        zctx = limit[j].shm_zone->data;

        ngx_shmtx_lock(&zctx->shpool->mutex);

        lr = ngx_http_stream_mod_limit_find(zctx, st->undo[j].key);

        if (lr && lr->last == (uint32_t) st->undo[j].now) {
            lr->excess = (uint32_t) st->undo[j].excess;
            lr->last = (uint32_t) st->undo[j].last;
        }

        ngx_shmtx_unlock(&zctx->shpool->mutex);

        st->undo[j].node = NULL;
    }
}


static void
ngx_http_stream_mod_limit_reply(void *data, ngx_int_t rc, ngx_uint_t excess)
{
    ngx_http_stream_mod_limit_wait_t *w = data;

    ngx_http_request_t                 *r;
    ngx_http_stream_mod_ctx_t          *ctx;
    ngx_http_stream_mod_limit_t        *limit;
    ngx_http_stream_mod_loc_conf_t     *lcf;
    ngx_http_stream_mod_limit_ctx_t    *zctx;
    ngx_http_stream_mod_limit_state_t  *st;

    r = w->request;

    if (w->timer.timer_set) {
        ngx_del_timer(&w->timer);
    }

    ngx_free(w);

    if (r == NULL) {
        /* timed out, or the request is gone */
        return;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);
    lcf = ngx_http_get_module_loc_conf(r, ngx_http_stream_mod_module);

    ctx->limit_wait = NULL;

    st = ctx->limit_state;

    if (rc == NGX_BUSY && lcf->limit_dry_run) {
        limit = lcf->limits->elts;
        zctx = limit[st->remote].shm_zone->data;

        (void) ngx_atomic_fetch_add(&zctx->sh->dry_run_hits, 1);

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "stream_mod: limit exceeded in zone \"%V\" by user "
                      "\"%V\" (dry run)", &zctx->name, &ctx->user);
        rc = NGX_OK;
    }

    if (rc == NGX_BUSY) {
        rc = ngx_http_stream_mod_limit_refuse(r, lcf, ctx, st->remote, excess);

    } else if (rc == NGX_ERROR) {
        rc = ngx_http_stream_mod_limit_unavailable(r, lcf, ctx);
    }

    ngx_http_stream_mod_resume(r, rc);
}


static void
ngx_http_stream_mod_limit_timeout(ngx_event_t *ev)
{
    ngx_http_stream_mod_limit_wait_t *w = ev->data;

    ngx_int_t                        rc;
    ngx_http_request_t              *r;
    ngx_http_stream_mod_ctx_t       *ctx;
    ngx_http_stream_mod_loc_conf_t  *lcf;

    r = w->request;

    /* the reply, now or when the connection is dropped, frees w */
    w->request = NULL;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);
    lcf = ngx_http_get_module_loc_conf(r, ngx_http_stream_mod_module);

    ctx->limit_wait = NULL;

    rc = ngx_http_stream_mod_limit_unavailable(r, lcf, ctx);

    /* a Redis that does not answer in time is dropped and reconnected */
    ngx_http_stream_mod_redis_reset(w->redis, ev->log);

    ngx_http_stream_mod_resume(r, rc);
}


/* the request ends while it waits: the reply must not touch it */

static void
ngx_http_stream_mod_limit_cancel(void *data)
{
    ngx_http_request_t *r = data;

    ngx_http_stream_mod_ctx_t         *ctx;
    ngx_http_stream_mod_limit_wait_t  *w;

    ctx = ngx_http_get_module_ctx(r, ngx_http_stream_mod_module);

    if (ctx == NULL || ctx->limit_wait == NULL) {
        return;
    }

    w = ctx->limit_wait;
    ctx->limit_wait = NULL;

    w->request = NULL;

    if (w->timer.timer_set) {
        ngx_del_timer(&w->timer);
    }
}


ngx_uint_t
ngx_http_stream_mod_limit_remote(ngx_http_stream_mod_limit_t *limit)
{
    ngx_http_stream_mod_limit_ctx_t  *zctx;

    zctx = limit->shm_zone->data;

    return zctx && zctx->redis.addr.len;
}


static ngx_http_stream_mod_limit_node_t *
ngx_http_stream_mod_limit_find(ngx_http_stream_mod_limit_ctx_t *ctx,
    u_char *key)
{
    ngx_rbtree_key_t    hash;
    ngx_rbtree_node_t  *node, *sentinel;

    ngx_memcpy(&hash, key, sizeof(ngx_rbtree_key_t));

    node = ctx->sh->rbtree.root;
    sentinel = ctx->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        return (ngx_http_stream_mod_limit_node_t *) &node->color;
    }

    return NULL;
}


/*
 * NGX_OK: accounted; NGX_BUSY: over the limit; NGX_DECLINED: no room for
 * a new bucket.  Called with the zone locked.
 */

static ngx_int_t
ngx_http_stream_mod_limit_lookup(ngx_http_stream_mod_limit_t *limit,
    u_char *key, ngx_http_stream_mod_limit_undo_t *undo, ngx_uint_t *ep)
{
    size_t                             size;
    ngx_int_t                          excess;
    ngx_msec_t                         now;
    ngx_msec_int_t                     ms;
    ngx_rbtree_key_t                   hash;
    ngx_rbtree_node_t                 *node;
    ngx_http_stream_mod_limit_ctx_t   *ctx;
    ngx_http_stream_mod_limit_node_t  *lr;

    now = ngx_current_msec;
    ctx = limit->shm_zone->data;

    ngx_memcpy(&hash, key, sizeof(ngx_rbtree_key_t));

    undo->node = NULL;

    lr = ngx_http_stream_mod_limit_find(ctx, key);

    if (lr) {
        ngx_queue_remove(&lr->queue);
        ngx_queue_insert_head(&ctx->sh->queue, &lr->queue);

        ms = (int32_t) ((uint32_t) now - lr->last);

        if (ms < -60000) {
            /*
             * The 32-bit time wrapped: idle for more than 24 days, so
             * the bucket has drained whatever it held.
             */
            ms = NGX_MAX_INT32_VALUE;

        } else if (ms < 0) {
            ms = 0;
        }

        excess = lr->excess - ctx->rate * ms / 1000 + 1000;

        if (excess < 0) {
            excess = 0;
        }

        *ep = excess;

        if ((ngx_uint_t) excess > limit->burst) {
            return NGX_BUSY;
        }

        undo->node = lr;
        undo->excess = lr->excess;
        undo->last = lr->last;
        undo->now = now;

        lr->excess = (uint32_t) excess;
        lr->last = (uint32_t) now;

        return NGX_OK;
    }

    *ep = 0;

    (void) ngx_http_stream_mod_limit_expire(ctx, 2);

    size = offsetof(ngx_rbtree_node_t, color)
           + sizeof(ngx_http_stream_mod_limit_node_t);

    node = ngx_slab_alloc_locked(ctx->shpool, size);

    if (node == NULL) {
        /* free drained buckets only: never reset an active one */
        if (ngx_http_stream_mod_limit_expire(ctx, 64)) {
            node = ngx_slab_alloc_locked(ctx->shpool, size);
        }

        if (node == NULL) {
            return NGX_DECLINED;
        }
    }

    node->key = hash;

    lr = (ngx_http_stream_mod_limit_node_t *) &node->color;

    lr->excess = 0;
    lr->last = (uint32_t) now;

    ngx_rbtree_insert(&ctx->sh->rbtree, node);
    ngx_queue_insert_head(&ctx->sh->queue, &lr->queue);
    ctx->sh->entries++;

    undo->node = lr;
    undo->excess = 0;
    undo->last = now;
    undo->now = now;

    return NGX_OK;
}


/*
 * Remove up to n drained buckets from the LRU tail; n > 2 is a full zone
 * making room, counted as evictions.  Returns how many were removed.
 */

static ngx_uint_t
ngx_http_stream_mod_limit_expire(ngx_http_stream_mod_limit_ctx_t *ctx,
    ngx_uint_t n)
{
    ngx_int_t                          excess;
    ngx_uint_t                         removed;
    ngx_msec_t                         now;
    ngx_queue_t                       *q;
    ngx_msec_int_t                     ms;
    ngx_rbtree_node_t                 *node;
    ngx_http_stream_mod_limit_node_t  *lr;

    now = ngx_current_msec;
    removed = 0;

    while (removed < n) {

        if (ngx_queue_empty(&ctx->sh->queue)) {
            break;
        }

        q = ngx_queue_last(&ctx->sh->queue);
        lr = ngx_queue_data(q, ngx_http_stream_mod_limit_node_t, queue);

        ms = (int32_t) ((uint32_t) now - lr->last);
        ms = ngx_abs(ms);

        /*
         * Drained: the next request would find the bucket exactly as a
         * fresh one, so removing it gives nobody a new allowance.
         */
        excess = lr->excess - ctx->rate * ms / 1000 + 1000;

        if (excess > 0) {
            /* the oldest bucket is still active: so are the rest */
            break;
        }

        ngx_queue_remove(q);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) lr - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&ctx->sh->rbtree, node);
        ngx_slab_free_locked(ctx->shpool, node);

        ctx->sh->entries--;
        removed++;
    }

    if (removed) {
        (void) ngx_atomic_fetch_add(n > 2 ? &ctx->sh->evictions
                                          : &ctx->sh->expired,
                                    removed);
    }

    return removed;
}


/* figures of every zone, for the status handler */

ngx_int_t
ngx_http_stream_mod_limit_stats(ngx_http_request_t *r, ngx_array_t *out)
{
    ngx_uint_t                         i;
    ngx_shm_zone_t                   **zones;
    ngx_http_stream_mod_zone_stats_t  *st;
    ngx_http_stream_mod_limit_ctx_t   *ctx;
    ngx_http_stream_mod_main_conf_t   *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_stream_mod_module);

    if (smcf->zones == NULL) {
        return NGX_OK;
    }

    zones = smcf->zones->elts;

    for (i = 0; i < smcf->zones->nelts; i++) {
        ctx = zones[i]->data;

        st = ngx_array_push(out);
        if (st == NULL) {
            return NGX_ERROR;
        }

        st->name = zones[i]->shm.name;
        st->size = zones[i]->shm.size;

        ngx_shmtx_lock(&ctx->shpool->mutex);
        st->entries = ctx->sh->entries;
        ngx_shmtx_unlock(&ctx->shpool->mutex);

        st->evictions = ctx->sh->evictions;
        st->expired = ctx->sh->expired;
        st->full_refusals = ctx->sh->full_refusals;
        st->dry_run_hits = ctx->sh->dry_run_hits;
        st->rate = ctx->per;
        st->per_minute = (ctx->scale == 60);
        st->redis = ctx->redis.addr;
        st->redis_errors = ctx->sh->redis_errors;
        st->redis_fallbacks = ctx->sh->redis_fallbacks;
    }

    return NGX_OK;
}


/* worker exit: the Redis connections of every zone */

void
ngx_http_stream_mod_limit_exit(ngx_cycle_t *cycle)
{
    ngx_uint_t                        i;
    ngx_shm_zone_t                  **zones;
    ngx_http_stream_mod_limit_ctx_t  *ctx;
    ngx_http_stream_mod_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_stream_mod_module);

    if (smcf == NULL || smcf->zones == NULL) {
        return;
    }

    zones = smcf->zones->elts;

    for (i = 0; i < smcf->zones->nelts; i++) {
        ctx = zones[i]->data;

        if (ctx->redis.addr.len) {
            ngx_http_stream_mod_redis_exit(&ctx->redis);
        }
    }
}
