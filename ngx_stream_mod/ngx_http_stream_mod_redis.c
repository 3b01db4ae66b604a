
/*
 * A Redis-backed limit zone: the bucket lives in Redis, so several NGINX
 * instances share one allowance.  hiredis's asynchronous client is driven
 * by NGINX's event loop (one connection per zone and worker, reused); the
 * leaky bucket is a server-side Lua script called by its SHA1, one round
 * trip per request, with Redis's own clock so instances need not agree on
 * the time.  Nothing here blocks: the address is resolved at configuration
 * time and every command has a timeout.
 */


#include "ngx_http_stream_mod.h"

#include <ngx_sha1.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>


/* a failed connection is retried at most this often */
#define NGX_HTTP_STREAM_MOD_REDIS_RETRY  1000


/*
 * KEYS[1] the bucket; ARGV[1] rate (requests per 1000 s), ARGV[2] burst
 * (requests * 1000).  Returns {0, excess} when accounted, {1, excess}
 * when over the limit: the same arithmetic as the local zone.  The key
 * expires once the bucket has drained, so a fresh one is equivalent.
 */

static ngx_str_t  ngx_http_stream_mod_redis_script = ngx_string(
    "local t = redis.call('TIME')\n"
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
    "local rate = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local v = redis.call('HMGET', KEYS[1], 'e', 'l')\n"
    "local excess = 0\n"
    "if v[1] then\n"
    "  local ms = now - tonumber(v[2])\n"
    "  if ms < 0 then ms = 0 end\n"
    "  excess = tonumber(v[1]) - math.floor(rate * ms / 1000) + 1000\n"
    "  if excess < 0 then excess = 0 end\n"
    "  if excess > burst then return {1, excess} end\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'e', excess, 'l', now)\n"
    "redis.call('PEXPIRE', KEYS[1],"
    " math.floor((excess + 1000) * 1000 / rate) + 1000)\n"
    "return {0, excess}\n");


typedef struct {
    ngx_http_stream_mod_redis_t      *rd;
    ngx_http_stream_mod_redis_done_pt  handler;
    void                             *data;
    u_char                            key[128];
    size_t                            key_len;
    u_char                            rate[NGX_INT_T_LEN];
    size_t                            rate_len;
    u_char                            burst[NGX_INT_T_LEN];
    size_t                            burst_len;
    ngx_uint_t                        retried;
} ngx_http_stream_mod_redis_cmd_t;


static ngx_int_t ngx_http_stream_mod_redis_connect(
    ngx_http_stream_mod_redis_t *rd, ngx_log_t *log);
static ngx_int_t ngx_http_stream_mod_redis_send(
    ngx_http_stream_mod_redis_cmd_t *cmd, ngx_uint_t eval);
static void ngx_http_stream_mod_redis_reply(redisAsyncContext *ac,
    void *reply, void *privdata);
static void ngx_http_stream_mod_redis_connected(const redisAsyncContext *ac,
    int status);
static void ngx_http_stream_mod_redis_disconnected(const redisAsyncContext *ac,
    int status);
static void ngx_http_stream_mod_redis_event(ngx_event_t *ev);
static void ngx_http_stream_mod_redis_add_read(void *data);
static void ngx_http_stream_mod_redis_del_read(void *data);
static void ngx_http_stream_mod_redis_add_write(void *data);
static void ngx_http_stream_mod_redis_del_write(void *data);
static void ngx_http_stream_mod_redis_cleanup(void *data);


/* redis=ADDRESS[:PORT]: resolved now, never in the request path */

ngx_int_t
ngx_http_stream_mod_redis_parse(ngx_conf_t *cf,
    ngx_http_stream_mod_redis_t *rd, ngx_str_t *addr)
{
    u_char      *p, hash[20];
    ngx_url_t    u;
    ngx_sha1_t   sha1;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *addr;
    u.default_port = 6379;

    if (addr->len == 0 || ngx_parse_url(cf->pool, &u) != NGX_OK
        || u.naddrs == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid redis address "
                           "\"%V\": %s", addr, u.err ? u.err : "no address");
        return NGX_ERROR;
    }

    if (u.family != AF_INET && u.family != AF_INET6) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid redis address "
                           "\"%V\": use an IP address or a host name, "
                           "with a port", addr);
        return NGX_ERROR;
    }

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    rd->host.data = p;
    rd->host.len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                                 NGX_SOCKADDR_STRLEN, 0);
    p[rd->host.len] = '\0';
    rd->port = ngx_inet_get_port(u.addrs[0].sockaddr);
    rd->addr = *addr;

    p = ngx_pnalloc(cf->pool, 40);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, ngx_http_stream_mod_redis_script.data,
                    ngx_http_stream_mod_redis_script.len);
    ngx_sha1_final(hash, &sha1);

    ngx_hex_dump(p, hash, 20);

    rd->sha1.data = p;
    rd->sha1.len = 40;

    return NGX_OK;
}


/*
 * Sends the check; the handler is called exactly once, later, with
 * NGX_OK, NGX_BUSY or NGX_ERROR.  NGX_ERROR here: Redis is unavailable
 * now (the handler will not be called).
 */

ngx_int_t
ngx_http_stream_mod_redis_check(ngx_http_stream_mod_redis_t *rd,
    ngx_str_t *zone, u_char *digest, ngx_uint_t rate, ngx_uint_t burst,
    ngx_log_t *log, ngx_http_stream_mod_redis_done_pt handler, void *data)
{
    u_char                           *p;
    ngx_http_stream_mod_redis_cmd_t  *cmd;

    if (rd->ac == NULL
        && ngx_http_stream_mod_redis_connect(rd, log) != NGX_OK)
    {
        return NGX_ERROR;
    }

    cmd = ngx_alloc(sizeof(ngx_http_stream_mod_redis_cmd_t), log);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->rd = rd;
    cmd->handler = handler;
    cmd->data = data;
    cmd->retried = 0;

    p = ngx_snprintf(cmd->key, sizeof(cmd->key) - 32, "%V%V:",
                     &rd->prefix, zone);
    p = ngx_hex_dump(p, digest, 16);
    cmd->key_len = p - cmd->key;

    cmd->rate_len = ngx_sprintf(cmd->rate, "%ui", rate) - cmd->rate;
    cmd->burst_len = ngx_sprintf(cmd->burst, "%ui", burst) - cmd->burst;

    if (ngx_http_stream_mod_redis_send(cmd, 0) != NGX_OK) {
        ngx_free(cmd);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a command that did not answer in time: drop the connection */

void
ngx_http_stream_mod_redis_reset(ngx_http_stream_mod_redis_t *rd,
    ngx_log_t *log)
{
    redisAsyncContext  *ac;

    ac = rd->ac;

    if (ac == NULL) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "stream_mod: redis %V timed out, reconnecting", &rd->addr);

    rd->retry_at = ngx_current_msec + NGX_HTTP_STREAM_MOD_REDIS_RETRY;
    rd->ac = NULL;

    /* every pending callback gets a NULL reply, then the context is freed */
    redisAsyncFree(ac);
}


static ngx_int_t
ngx_http_stream_mod_redis_connect(ngx_http_stream_mod_redis_t *rd,
    ngx_log_t *log)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    if (rd->retry_at
        && (ngx_msec_int_t) (rd->retry_at - ngx_current_msec) > 0)
    {
        return NGX_ERROR;
    }

    rd->retry_at = ngx_current_msec + NGX_HTTP_STREAM_MOD_REDIS_RETRY;

    /* a numeric address: the non-blocking connect does no DNS */
    ac = redisAsyncConnect((char *) rd->host.data, (int) rd->port);

    if (ac == NULL) {
        return NGX_ERROR;
    }

    if (ac->err) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "stream_mod: redis %V: %s", &rd->addr, ac->errstr);
        redisAsyncFree(ac);
        return NGX_ERROR;
    }

    c = ngx_get_connection(ac->c.fd, ngx_cycle->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        return NGX_ERROR;
    }

    c->data = ac;
    c->read->handler = ngx_http_stream_mod_redis_event;
    c->write->handler = ngx_http_stream_mod_redis_event;
    c->read->log = c->log;
    c->write->log = c->log;

    ac->data = rd;
    ac->ev.data = c;
    ac->ev.addRead = ngx_http_stream_mod_redis_add_read;
    ac->ev.delRead = ngx_http_stream_mod_redis_del_read;
    ac->ev.addWrite = ngx_http_stream_mod_redis_add_write;
    ac->ev.delWrite = ngx_http_stream_mod_redis_del_write;
    ac->ev.cleanup = ngx_http_stream_mod_redis_cleanup;

    redisAsyncSetConnectCallback(ac, ngx_http_stream_mod_redis_connected);
    redisAsyncSetDisconnectCallback(ac,
                                    ngx_http_stream_mod_redis_disconnected);

    rd->ac = ac;

    return NGX_OK;
}


static ngx_int_t
ngx_http_stream_mod_redis_send(ngx_http_stream_mod_redis_cmd_t *cmd,
    ngx_uint_t eval)
{
    const char  *argv[6];
    size_t       argvlen[6];

    if (eval) {
        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = (char *) ngx_http_stream_mod_redis_script.data;
        argvlen[1] = ngx_http_stream_mod_redis_script.len;

    } else {
        argv[0] = "EVALSHA";
        argvlen[0] = 7;
        argv[1] = (char *) cmd->rd->sha1.data;
        argvlen[1] = cmd->rd->sha1.len;
    }

    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (char *) cmd->key;
    argvlen[3] = cmd->key_len;
    argv[4] = (char *) cmd->rate;
    argvlen[4] = cmd->rate_len;
    argv[5] = (char *) cmd->burst;
    argvlen[5] = cmd->burst_len;

    if (redisAsyncCommandArgv(cmd->rd->ac, ngx_http_stream_mod_redis_reply,
                              cmd, 6, argv, argvlen)
        != REDIS_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_stream_mod_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    ngx_http_stream_mod_redis_cmd_t *cmd = privdata;

    ngx_int_t    rc;
    ngx_uint_t   excess;
    redisReply  *reply = r;

    rc = NGX_ERROR;
    excess = 0;

    if (reply == NULL) {
        /* disconnected or freed */

    } else if (reply->type == REDIS_REPLY_ERROR) {

        if (!cmd->retried
            && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
            && !(ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)))
        {
            /* first use on this server: EVAL also caches the script */
            cmd->retried = 1;

            if (ngx_http_stream_mod_redis_send(cmd, 1) == NGX_OK) {
                return;
            }
        }

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "stream_mod: redis %V: %s", &cmd->rd->addr,
                      reply->str);

    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
               && reply->element[0]->type == REDIS_REPLY_INTEGER
               && reply->element[1]->type == REDIS_REPLY_INTEGER
               && reply->element[1]->integer >= 0)
    {
        rc = reply->element[0]->integer ? NGX_BUSY : NGX_OK;
        excess = (ngx_uint_t) reply->element[1]->integer;
    }

    cmd->handler(cmd->data, rc, excess);

    ngx_free(cmd);
}


static void
ngx_http_stream_mod_redis_connected(const redisAsyncContext *ac, int status)
{
    ngx_http_stream_mod_redis_t  *rd = ac->data;

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "stream_mod: redis %V: connect failed: %s", &rd->addr,
                      ac->errstr);

        /* hiredis frees the context after this, without a disconnect */
        if (rd->ac == ac) {
            rd->ac = NULL;
        }

        return;
    }

    rd->retry_at = 0;

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "stream_mod: redis %V connected", &rd->addr);
}


static void
ngx_http_stream_mod_redis_disconnected(const redisAsyncContext *ac,
    int status)
{
    ngx_http_stream_mod_redis_t  *rd = ac->data;

    if (rd->ac == ac) {
        rd->ac = NULL;
    }

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "stream_mod: redis %V: connection lost: %s", &rd->addr,
                      ac->errstr);
    }
}


static void
ngx_http_stream_mod_redis_event(ngx_event_t *ev)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    c = ev->data;
    ac = c->data;

    if (ev->write) {
        redisAsyncHandleWrite(ac);

    } else {
        redisAsyncHandleRead(ac);
    }
}


/* level-triggered: hiredis reads what it needs per call */

static void
ngx_http_stream_mod_redis_add_read(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->read->active) {
        (void) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_stream_mod_redis_del_read(void *data)
{
    ngx_connection_t  *c = data;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }
}


static void
ngx_http_stream_mod_redis_add_write(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->write->active) {
        (void) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_stream_mod_redis_del_write(void *data)
{
    ngx_connection_t  *c = data;

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


/* hiredis closes the socket itself: only the NGINX connection is freed */

static void
ngx_http_stream_mod_redis_cleanup(void *data)
{
    ngx_connection_t  *c = data;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->fd = (ngx_socket_t) -1;
    ngx_free_connection(c);
}


/* worker exit: close the connection so no socket is left open */

void
ngx_http_stream_mod_redis_exit(ngx_http_stream_mod_redis_t *rd)
{
    redisAsyncContext  *ac;

    ac = rd->ac;

    if (ac == NULL) {
        return;
    }

    rd->ac = NULL;
    rd->retry_at = (ngx_msec_t) -1;

    redisAsyncFree(ac);
}
