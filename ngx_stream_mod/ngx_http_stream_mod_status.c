
/*
 * Counters (SPEC section 8): one shared zone, atomics per action and
 * outcome, so figures are exact across workers and survive a reload (the
 * zone keeps its name, size and tag).  The status handler renders them as
 * JSON or in the Prometheus text format.
 */


#include "ngx_http_stream_mod.h"


#define NGX_HTTP_STREAM_MOD_C_ALLOWED   0
#define NGX_HTTP_STREAM_MOD_C_DENIED    1
#define NGX_HTTP_STREAM_MOD_C_LIMITED   2
#define NGX_HTTP_STREAM_MOD_C_REJECTED  3
#define NGX_HTTP_STREAM_MOD_C_2XX       4
#define NGX_HTTP_STREAM_MOD_C_4XX       5
#define NGX_HTTP_STREAM_MOD_C_5XX       6
#define NGX_HTTP_STREAM_MOD_NCOUNTERS   7

/* the last row counts requests that matched no action */
#define NGX_HTTP_STREAM_MOD_UNROUTED    NGX_HTTP_STREAM_MOD_NACTIONS


typedef struct {
    ngx_atomic_t   c[NGX_HTTP_STREAM_MOD_NACTIONS + 1]
                    [NGX_HTTP_STREAM_MOD_NCOUNTERS];
} ngx_http_stream_mod_counters_t;


static ngx_int_t ngx_http_stream_mod_status_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static ngx_int_t ngx_http_stream_mod_status_handler(ngx_http_request_t *r);
static ngx_http_stream_mod_counters_t *ngx_http_stream_mod_counters(
    ngx_http_request_t *r);


static const char  *ngx_http_stream_mod_counter_names[] = {
    "allowed", "denied", "limited", "rejected",
    "upstream_2xx", "upstream_4xx", "upstream_5xx"
};

static const char  *ngx_http_stream_mod_decision_names[] = {
    "allow", "deny", "limit", "reject"
};

static const char  *ngx_http_stream_mod_class_names[] = {
    "2xx", "4xx", "5xx"
};


ngx_int_t
ngx_http_stream_mod_status_zone(ngx_conf_t *cf)
{
    ngx_str_t                         name;
    ngx_shm_zone_t                   *shm_zone;
    ngx_http_stream_mod_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_stream_mod_module);

    if (smcf->status_zone) {
        return NGX_OK;
    }

    ngx_str_set(&name, "stream_mod_status");

    shm_zone = ngx_shared_memory_add(cf, &name, 8 * ngx_pagesize,
                                     &ngx_http_stream_mod_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_stream_mod_status_init_zone;

    smcf->status_zone = shm_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_status_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t  *shpool;

    if (data) {
        /* reload: keep counting where the old cycle left off */
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    shm_zone->data = ngx_slab_calloc(shpool,
                                     sizeof(ngx_http_stream_mod_counters_t));
    if (shm_zone->data == NULL) {
        return NGX_ERROR;
    }

    shpool->data = shm_zone->data;

    return NGX_OK;
}


static ngx_http_stream_mod_counters_t *
ngx_http_stream_mod_counters(ngx_http_request_t *r)
{
    ngx_http_stream_mod_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_stream_mod_module);

    if (smcf->status_zone == NULL) {
        return NULL;
    }

    return smcf->status_zone->data;
}


/* once per request, from the log phase: the gate's decision */

void
ngx_http_stream_mod_count(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx)
{
    ngx_uint_t                       row, col;
    ngx_http_stream_mod_counters_t  *counters;

    if (ctx->counted || ctx->decision == NGX_HTTP_STREAM_MOD_NONE) {
        return;
    }

    ctx->counted = 1;

    counters = ngx_http_stream_mod_counters(r);
    if (counters == NULL) {
        return;
    }

    row = ctx->action ? ctx->action->id : NGX_HTTP_STREAM_MOD_UNROUTED;
    col = ctx->decision - NGX_HTTP_STREAM_MOD_ALLOW;

    (void) ngx_atomic_fetch_add(&counters->c[row][col], 1);
}


void
ngx_http_stream_mod_count_upstream(ngx_http_request_t *r,
    ngx_http_stream_mod_ctx_t *ctx, ngx_uint_t status)
{
    ngx_uint_t                       col;
    ngx_http_stream_mod_counters_t  *counters;

    counters = ngx_http_stream_mod_counters(r);
    if (counters == NULL || ctx->action == NULL) {
        return;
    }

    if (status >= 500) {
        col = NGX_HTTP_STREAM_MOD_C_5XX;

    } else if (status >= 400) {
        col = NGX_HTTP_STREAM_MOD_C_4XX;

    } else if (status >= 200 && status < 300) {
        col = NGX_HTTP_STREAM_MOD_C_2XX;

    } else {
        return;
    }

    (void) ngx_atomic_fetch_add(&counters->c[ctx->action->id][col], 1);
}


char *
ngx_http_stream_mod_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_stream_mod_status_handler;

    if (ngx_http_stream_mod_status_zone(cf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_stream_mod_status_handler(ngx_http_request_t *r)
{
    size_t                             len;
    ngx_int_t                          rc;
    ngx_buf_t                         *b;
    ngx_str_t                          format;
    ngx_uint_t                         i, j, prometheus;
    ngx_array_t                        zones;
    ngx_chain_t                        out;
    ngx_http_stream_mod_counters_t    *counters;
    ngx_http_stream_mod_zone_stats_t  *z;
    ngx_http_stream_mod_action_t      *a;

    if (r->method != NGX_HTTP_GET && r->method != NGX_HTTP_HEAD) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    counters = ngx_http_stream_mod_counters(r);
    if (counters == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    prometheus = 0;

    if (ngx_http_arg(r, (u_char *) "format", 6, &format) == NGX_OK) {
        if (format.len == 10
            && ngx_strncmp(format.data, "prometheus", 10) == 0)
        {
            prometheus = 1;

        } else if (format.len != 4
                   || ngx_strncmp(format.data, "json", 4) != 0)
        {
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    if (ngx_array_init(&zones, r->pool, 4,
                       sizeof(ngx_http_stream_mod_zone_stats_t))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_stream_mod_limit_stats(r, &zones) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    z = zones.elts;

    len = 2048 + (NGX_HTTP_STREAM_MOD_NACTIONS + 1)
                 * NGX_HTTP_STREAM_MOD_NCOUNTERS * (NGX_ATOMIC_T_LEN + 96);

    for (i = 0; i < zones.nelts; i++) {
        len += 8 * (z[i].name.len + 8 * NGX_ATOMIC_T_LEN + 96);
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (prometheus) {
        b->last = ngx_cpymem(b->last,
            "# HELP stream_mod_requests_total Requests decided by the "
            "gateway, by action and decision.\n"
            "# TYPE stream_mod_requests_total counter\n",
            sizeof("# HELP stream_mod_requests_total Requests decided by the "
                   "gateway, by action and decision.\n"
                   "# TYPE stream_mod_requests_total counter\n") - 1);

        for (i = 0; i < NGX_HTTP_STREAM_MOD_NACTIONS; i++) {
            a = ngx_http_stream_mod_action_get(i);

            for (j = 0; j < 4; j++) {
                b->last = ngx_sprintf(b->last,
                              "stream_mod_requests_total{action=\"%V\","
                              "decision=\"%s\"} %uA\n", &a->name,
                              ngx_http_stream_mod_decision_names[j],
                              counters->c[i][j]);
            }
        }

        b->last = ngx_sprintf(b->last,
                      "stream_mod_requests_total{action=\"none\","
                      "decision=\"reject\"} %uA\n",
                      counters->c[NGX_HTTP_STREAM_MOD_UNROUTED]
                                 [NGX_HTTP_STREAM_MOD_C_REJECTED]);

        b->last = ngx_sprintf(b->last,
            "# HELP stream_mod_upstream_responses_total Responses from "
            "Stream to forwarded requests, by action and status class.\n"
            "# TYPE stream_mod_upstream_responses_total counter\n");

        for (i = 0; i < NGX_HTTP_STREAM_MOD_NACTIONS; i++) {
            a = ngx_http_stream_mod_action_get(i);

            for (j = 0; j < 3; j++) {
                b->last = ngx_sprintf(b->last,
                              "stream_mod_upstream_responses_total{action="
                              "\"%V\",class=\"%s\"} %uA\n", &a->name,
                              ngx_http_stream_mod_class_names[j],
                              counters->c[i][NGX_HTTP_STREAM_MOD_C_2XX + j]);
            }
        }

#define NGX_HTTP_STREAM_MOD_GAUGE(metric, type, help, field, fmt)            \
        b->last = ngx_sprintf(b->last, "# HELP " metric " " help "\n"         \
                              "# TYPE " metric " " type "\n");                \
        for (i = 0; i < zones.nelts; i++) {                                   \
            b->last = ngx_sprintf(b->last, metric "{zone=\"%V\"} " fmt "\n",  \
                                  &z[i].name, z[i].field);                    \
        }

        NGX_HTTP_STREAM_MOD_GAUGE("stream_mod_zone_size_bytes", "gauge",
                                  "Size of the limit zone.", size, "%uz")
        NGX_HTTP_STREAM_MOD_GAUGE("stream_mod_zone_entries", "gauge",
                                  "Buckets held in the limit zone.",
                                  entries, "%ui")
        NGX_HTTP_STREAM_MOD_GAUGE("stream_mod_zone_evictions_total", "counter",
                                  "Drained buckets evicted to make room.",
                                  evictions, "%ui")
        NGX_HTTP_STREAM_MOD_GAUGE("stream_mod_zone_full_refusals_total",
                                  "counter",
                                  "Requests refused because the zone was "
                                  "full of active buckets.",
                                  full_refusals, "%ui")
        NGX_HTTP_STREAM_MOD_GAUGE("stream_mod_zone_dry_run_hits_total",
                                  "counter",
                                  "Limit hits let through in dry-run mode.",
                                  dry_run_hits, "%ui")

        for (j = 0, i = 0; i < zones.nelts; i++) {
            j += (z[i].redis.len != 0);
        }

        if (j) {
        NGX_HTTP_STREAM_MOD_GAUGE("stream_mod_zone_redis_errors_total",
                                  "counter",
                                  "Checks Redis did not answer (zones kept "
                                  "in Redis).", redis_errors, "%ui")
        NGX_HTTP_STREAM_MOD_GAUGE("stream_mod_zone_redis_fallbacks_total",
                                  "counter",
                                  "Checks answered by the local zone while "
                                  "Redis was unavailable.",
                                  redis_fallbacks, "%ui")
        }

#undef NGX_HTTP_STREAM_MOD_GAUGE

        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4");

    } else {
        b->last = ngx_sprintf(b->last, "{\"version\":\"%s\",\"actions\":{",
                              NGX_HTTP_STREAM_MOD_VERSION);

        for (i = 0; i < NGX_HTTP_STREAM_MOD_NACTIONS; i++) {
            a = ngx_http_stream_mod_action_get(i);

            b->last = ngx_sprintf(b->last, "%s\"%V\":{", i ? "," : "",
                                  &a->name);

            for (j = 0; j < NGX_HTTP_STREAM_MOD_NCOUNTERS; j++) {
                b->last = ngx_sprintf(b->last, "%s\"%s\":%uA", j ? "," : "",
                                      ngx_http_stream_mod_counter_names[j],
                                      counters->c[i][j]);
            }

            *b->last++ = '}';
        }

        b->last = ngx_sprintf(b->last, "},\"unrouted\":{\"rejected\":%uA},"
                              "\"zones\":{",
                              counters->c[NGX_HTTP_STREAM_MOD_UNROUTED]
                                         [NGX_HTTP_STREAM_MOD_C_REJECTED]);

        for (i = 0; i < zones.nelts; i++) {
            b->last = ngx_sprintf(b->last,
                          "%s\"%V\":{\"size\":%uz,\"entries\":%ui,"
                          "\"evictions\":%ui,\"expired\":%ui,"
                          "\"full_refusals\":%ui,\"dry_run_hits\":%ui,"
                          "\"rate\":\"%uir/%s\"",
                          i ? "," : "", &z[i].name, z[i].size, z[i].entries,
                          z[i].evictions, z[i].expired, z[i].full_refusals,
                          z[i].dry_run_hits, z[i].rate,
                          z[i].per_minute ? "m" : "s");

            if (z[i].redis.len) {
                b->last = ngx_sprintf(b->last,
                              ",\"redis\":\"%V\",\"redis_errors\":%ui,"
                              "\"redis_fallbacks\":%ui",
                              &z[i].redis, z[i].redis_errors,
                              z[i].redis_fallbacks);
            }

            *b->last++ = '}';
        }

        b->last = ngx_cpymem(b->last, "}}\n", 3);

        ngx_str_set(&r->headers_out.content_type, "application/json");
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
