
/*
 * The request body's JSON, read in one pass over the client's bytes.
 *
 * The body is on the hot path of every request, so it is not built into a
 * jansson tree (a malloc per value, a hash table per object): this scanner
 * checks the whole text as strictly as jansson's decoder does
 * (JSON_REJECT_DUPLICATES, no NUL, valid UTF-8, no surrogate halves,
 * integers that fit in 64 bits, reals that do not overflow, at most 2048
 * levels), reports the first error at the same line and column, and keeps
 * only the top-level members: their keys, their raw bytes and, for the
 * scalars and the items of arrays, their values.  Strings without escapes
 * point into the client's buffer; the rest comes from the request pool.
 * jansson is still what the policy's "when" values are compared with.
 */


#include "ngx_http_stream_mod.h"

#include <math.h>


/* jansson's JSON_PARSER_MAX_DEPTH: values, scalars too, nest 2048 deep */
#define NGX_HTTP_STREAM_MOD_JSON_DEPTH  2048

/* keys of the open objects kept on the stack before the pool is used */
#define NGX_HTTP_STREAM_MOD_JSON_KEYS   32


typedef struct {
    ngx_str_t                          key;       /* decoded */
    u_char                            *end;       /* the closing quote */
} ngx_http_stream_mod_json_key_t;


typedef struct {
    u_char                            *p;
    u_char                            *last;
    ngx_pool_t                        *pool;

    /* keys of the objects being read, innermost last */
    ngx_http_stream_mod_json_key_t    *keys;
    ngx_uint_t                         nkeys;
    ngx_uint_t                         nalloc;

    u_char                            *error;     /* where parsing stopped */
    u_char                            *dup;       /* the first duplicate */
    ngx_uint_t                         nomem;
} ngx_http_stream_mod_json_parser_t;


static ngx_int_t ngx_http_stream_mod_json_value(
    ngx_http_stream_mod_json_parser_t *ps, ngx_http_stream_mod_json_t *json,
    ngx_http_stream_mod_json_value_t *v, ngx_uint_t depth);
static ngx_int_t ngx_http_stream_mod_json_object(
    ngx_http_stream_mod_json_parser_t *ps, ngx_http_stream_mod_json_t *json,
    ngx_uint_t depth);
static ngx_int_t ngx_http_stream_mod_json_array(
    ngx_http_stream_mod_json_parser_t *ps, ngx_http_stream_mod_json_value_t *v,
    ngx_uint_t depth);
static ngx_int_t ngx_http_stream_mod_json_string(
    ngx_http_stream_mod_json_parser_t *ps, ngx_str_t *out);
static ngx_int_t ngx_http_stream_mod_json_number(
    ngx_http_stream_mod_json_parser_t *ps, ngx_http_stream_mod_json_value_t *v);
static ssize_t ngx_http_stream_mod_json_unescape(u_char *dst, u_char *src,
    u_char *last);
static ngx_int_t ngx_http_stream_mod_json_unexpected(
    ngx_http_stream_mod_json_parser_t *ps);
static ngx_uint_t ngx_http_stream_mod_json_xdigit(u_char c);
static ngx_uint_t ngx_http_stream_mod_json_hex(u_char *p);
static size_t ngx_http_stream_mod_json_utf8(u_char *p, u_char *last);
static void ngx_http_stream_mod_json_dups(
    ngx_http_stream_mod_json_parser_t *ps, ngx_uint_t base);
static int ngx_libc_cdecl ngx_http_stream_mod_json_cmp_keys(const void *one,
    const void *two);
static double ngx_http_stream_mod_json_real(ngx_str_t *raw, ngx_uint_t *inf);


/* string bytes that need no second look: printable ASCII but '"' and '\\' */
static const u_char  ngx_http_stream_mod_json_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 0x10 */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,     /* 0x20 '"' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,     /* 0x30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,     /* 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,     /* 0x50 '\\' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,     /* 0x60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,     /* 0x70 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 0x80 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
};


/* the end of the input, or an unexpected byte: the error is there */
#define ngx_http_stream_mod_json_fail(ps, at)                                \
    ((ps)->error = ((at) < (ps)->last) ? (at) : (ps)->last - 1,             \
     NGX_DECLINED)

/* jansson stops before a byte it cannot decode, after one it can */
#define ngx_http_stream_mod_json_read(p, last)                               \
    ((*(p) >= 0x80 && ngx_http_stream_mod_json_utf8(p, last) == 0)           \
     ? (p) - 1 : (p))

#define ngx_http_stream_mod_json_ws(ps)                                      \
    while ((ps)->p < (ps)->last                                              \
           && (*(ps)->p == ' ' || *(ps)->p == '\n' || *(ps)->p == '\r'       \
               || *(ps)->p == '\t'))                                         \
    {                                                                        \
        (ps)->p++;                                                           \
    }


/*
 * NGX_OK: valid JSON, json->type says of what; NGX_DECLINED: refused,
 * json->duplicate, json->line and json->column say why and where;
 * NGX_ERROR: out of memory.
 */

ngx_int_t
ngx_http_stream_mod_json_parse(ngx_pool_t *pool, u_char *text, size_t len,
    ngx_http_stream_mod_json_t *json)
{
    u_char                             *p, *at;
    ngx_int_t                           rc;
    ngx_http_stream_mod_json_key_t      keys[NGX_HTTP_STREAM_MOD_JSON_KEYS];
    ngx_http_stream_mod_json_value_t    root;
    ngx_http_stream_mod_json_parser_t   ps;

    ngx_memzero(json, sizeof(ngx_http_stream_mod_json_t));
    ngx_memzero(&ps, sizeof(ngx_http_stream_mod_json_parser_t));

    /* the keys are needed only while reading: on the stack, unless many */
    ps.keys = keys;
    ps.nalloc = NGX_HTTP_STREAM_MOD_JSON_KEYS;

    if (len == 0) {
        json->line = 1;
        return NGX_DECLINED;
    }

    ps.p = text;
    ps.last = text + len;
    ps.pool = pool;

    ngx_http_stream_mod_json_ws(&ps);

    rc = ngx_http_stream_mod_json_value(&ps, json, &root, 0);

    if (rc == NGX_OK) {
        ngx_http_stream_mod_json_ws(&ps);

        if (ps.p != ps.last) {
            rc = ngx_http_stream_mod_json_unexpected(&ps);
        }
    }

    if (ps.nomem) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK && ps.dup == NULL) {
        json->type = root.type;
        return NGX_OK;
    }

    /* nothing of a refused text is kept */
    json->members = NULL;
    json->nmembers = 0;

    /* a duplicate key is always before any other error that was found */

    if (ps.dup) {
        json->duplicate = 1;
        at = ps.dup;

    } else {
        at = ps.error;
    }

    /*
     * jansson's position: where its reader stands after the byte at "at";
     * lines from 1, columns in characters (not bytes)
     */

    json->line = 1;

    for (p = text; p <= at; p++) {
        if (*p == '\n') {
            json->line++;
            json->column = 0;

        } else if ((*p & 0xc0) != 0x80) {
            json->column++;
        }
    }

    return NGX_DECLINED;
}


/* v: where to keep the value, or NULL; depth: how many values enclose it */

static ngx_int_t
ngx_http_stream_mod_json_value(ngx_http_stream_mod_json_parser_t *ps,
    ngx_http_stream_mod_json_t *json, ngx_http_stream_mod_json_value_t *v,
    ngx_uint_t depth)
{
    u_char     *start, *p;
    size_t      n;
    ngx_int_t   rc;
    ngx_str_t  *out;

    if (ps->p == ps->last) {
        return ngx_http_stream_mod_json_fail(ps, ps->p);
    }

    if (depth >= NGX_HTTP_STREAM_MOD_JSON_DEPTH) {
        /* jansson reads the token, then finds it too deep */
        return ngx_http_stream_mod_json_unexpected(ps);
    }

    start = ps->p;

    if (v) {
        ngx_memzero(v, sizeof(ngx_http_stream_mod_json_value_t));
    }

    switch (*ps->p) {

    case '{':
        ps->p++;

        /* only the top-level object's members are kept */
        rc = ngx_http_stream_mod_json_object(ps, depth == 0 ? json : NULL,
                                             depth + 1);
        if (v) {
            v->type = NGX_HTTP_STREAM_MOD_J_OBJECT;
        }

        break;

    case '[':
        ps->p++;

        /* the items of a top-level member's array are kept */
        rc = ngx_http_stream_mod_json_array(ps, depth == 1 ? v : NULL,
                                            depth + 1);
        if (v) {
            v->type = NGX_HTTP_STREAM_MOD_J_ARRAY;
        }

        break;

    case '"':
        ps->p++;
        out = v ? &v->str : NULL;

        rc = ngx_http_stream_mod_json_string(ps, out);
        if (v) {
            v->type = NGX_HTTP_STREAM_MOD_J_STRING;
        }

        break;

    case 't':
    case 'f':
    case 'n':
        /* jansson reads a word of letters, then looks it up */

        for (p = ps->p; p < ps->last && ((*p | 0x20) >= 'a'
                                         && (*p | 0x20) <= 'z'); p++)
        {
            /* void */
        }

        n = p - ps->p;

        if (n == 4 && ngx_strncmp(ps->p, "true", 4) == 0) {
            rc = NGX_HTTP_STREAM_MOD_J_TRUE;

        } else if (n == 5 && ngx_strncmp(ps->p, "false", 5) == 0) {
            rc = NGX_HTTP_STREAM_MOD_J_FALSE;

        } else if (n == 4 && ngx_strncmp(ps->p, "null", 4) == 0) {
            rc = NGX_HTTP_STREAM_MOD_J_NULL;

        } else {
            return ngx_http_stream_mod_json_fail(ps, p - 1);
        }

        if (v) {
            v->type = rc;
        }

        ps->p = p;
        rc = NGX_OK;
        break;

    default:
        if (*ps->p != '-' && (*ps->p < '0' || *ps->p > '9')) {
            return ngx_http_stream_mod_json_unexpected(ps);
        }

        rc = ngx_http_stream_mod_json_number(ps, v);
        break;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    if (v) {
        v->raw.data = start;
        v->raw.len = ps->p - start;
    }

    return NGX_OK;
}


/* json: the top-level object, whose members are kept */

static ngx_int_t
ngx_http_stream_mod_json_object(ngx_http_stream_mod_json_parser_t *ps,
    ngx_http_stream_mod_json_t *json, ngx_uint_t depth)
{
    ngx_int_t                           rc;
    ngx_str_t                           key;
    ngx_uint_t                          base, n;
    ngx_array_t                         members;
    ngx_http_stream_mod_json_key_t     *k;
    ngx_http_stream_mod_json_value_t   *v;
    ngx_http_stream_mod_json_member_t  *m;

    base = ps->nkeys;
    members.elts = NULL;

    ngx_http_stream_mod_json_ws(ps);

    if (ps->p < ps->last && *ps->p == '}') {
        ps->p++;
        return NGX_OK;
    }

    for ( ;; ) {

        if (ps->p == ps->last || *ps->p != '"') {
            rc = ngx_http_stream_mod_json_unexpected(ps);
            goto done;
        }

        ps->p++;

        rc = ngx_http_stream_mod_json_string(ps, &key);
        if (rc != NGX_OK) {
            goto done;
        }

        /* every key is kept until the object ends, for the duplicates */

        if (ps->nkeys == ps->nalloc) {
            n = ps->nalloc * 2;

            k = ngx_palloc(ps->pool,
                           n * sizeof(ngx_http_stream_mod_json_key_t));
            if (k == NULL) {
                ps->nomem = 1;
                rc = NGX_ERROR;
                goto done;
            }

            if (ps->nkeys) {
                ngx_memcpy(k, ps->keys,
                           ps->nkeys * sizeof(ngx_http_stream_mod_json_key_t));
            }

            ps->keys = k;
            ps->nalloc = n;
        }

        k = &ps->keys[ps->nkeys++];
        k->key = key;
        k->end = ps->p - 1;

        ngx_http_stream_mod_json_ws(ps);

        if (ps->p == ps->last || *ps->p != ':') {
            rc = ngx_http_stream_mod_json_unexpected(ps);
            goto done;
        }

        ps->p++;
        ngx_http_stream_mod_json_ws(ps);

        v = NULL;

        if (json) {
            if (members.elts == NULL
                && ngx_array_init(&members, ps->pool, 8,
                                  sizeof(ngx_http_stream_mod_json_member_t))
                   != NGX_OK)
            {
                ps->nomem = 1;
                rc = NGX_ERROR;
                goto done;
            }

            m = ngx_array_push(&members);
            if (m == NULL) {
                ps->nomem = 1;
                rc = NGX_ERROR;
                goto done;
            }

            m->key = key;
            v = &m->value;
        }

        rc = ngx_http_stream_mod_json_value(ps, NULL, v, depth);
        if (rc != NGX_OK) {
            goto done;
        }

        ngx_http_stream_mod_json_ws(ps);

        if (ps->p < ps->last && *ps->p == ',') {
            ps->p++;
            ngx_http_stream_mod_json_ws(ps);
            continue;
        }

        if (ps->p < ps->last && *ps->p == '}') {
            ps->p++;
            rc = NGX_OK;
            goto done;
        }

        rc = ngx_http_stream_mod_json_unexpected(ps);
        goto done;
    }

done:

    if (json && members.elts) {
        json->members = members.elts;
        json->nmembers = members.nelts;
    }

    /* also on an error: a duplicate before it is the first error */
    ngx_http_stream_mod_json_dups(ps, base);
    ps->nkeys = base;

    return rc;
}


/* v: a top-level member's array, whose items are kept, or NULL */

static ngx_int_t
ngx_http_stream_mod_json_array(ngx_http_stream_mod_json_parser_t *ps,
    ngx_http_stream_mod_json_value_t *v, ngx_uint_t depth)
{
    ngx_int_t                          rc;
    ngx_uint_t                         n;
    ngx_array_t                        items;
    ngx_http_stream_mod_json_value_t  *item;

    ngx_http_stream_mod_json_ws(ps);

    if (ps->p < ps->last && *ps->p == ']') {
        ps->p++;
        return NGX_OK;
    }

    if (v && ngx_array_init(&items, ps->pool, 8,
                            sizeof(ngx_http_stream_mod_json_value_t))
             != NGX_OK)
    {
        ps->nomem = 1;
        return NGX_ERROR;
    }

    n = 0;

    for ( ;; ) {
        item = NULL;

        if (v) {
            item = ngx_array_push(&items);
            if (item == NULL) {
                ps->nomem = 1;
                return NGX_ERROR;
            }
        }

        rc = ngx_http_stream_mod_json_value(ps, NULL, item, depth);
        if (rc != NGX_OK) {
            return rc;
        }

        n++;

        ngx_http_stream_mod_json_ws(ps);

        if (ps->p < ps->last && *ps->p == ',') {
            ps->p++;
            ngx_http_stream_mod_json_ws(ps);
            continue;
        }

        if (ps->p < ps->last && *ps->p == ']') {
            ps->p++;
            break;
        }

        return ngx_http_stream_mod_json_unexpected(ps);
    }

    if (v) {
        v->items = items.elts;
        v->nitems = n;
    }

    return NGX_OK;
}


/*
 * After the opening quote.  out: where to put the decoded string (NULL:
 * only checked); without escapes it is the client's bytes.
 */

static ngx_int_t
ngx_http_stream_mod_json_string(ngx_http_stream_mod_json_parser_t *ps,
    ngx_str_t *out)
{
    u_char      *p, *start, *last, *dst, c;
    size_t       n;
    ssize_t      len;
    ngx_uint_t   escapes;

    p = ps->p;
    last = ps->last;
    start = p;
    escapes = 0;

    for ( ;; ) {

        while (p < last && ngx_http_stream_mod_json_plain[*p]) {
            p++;
        }

        if (p == last) {
            return ngx_http_stream_mod_json_fail(ps, p);
        }

        c = *p;

        if (c == '"') {
            break;
        }

        if (c < 0x20) {
            /* jansson puts a control character back before it fails */
            return ngx_http_stream_mod_json_fail(ps, p - 1);
        }

        if (c == '\\') {
            escapes = 1;
            p++;

            if (p == last) {
                return ngx_http_stream_mod_json_fail(ps, p);
            }

            switch (*p) {

            case 'u':
                for (n = 1; n < 5; n++) {
                    if (p + n == last) {
                        return ngx_http_stream_mod_json_fail(ps, last);
                    }

                    if (ngx_http_stream_mod_json_xdigit(p[n]) > 15) {
                        return ngx_http_stream_mod_json_fail(ps,
                                ngx_http_stream_mod_json_read(p + n, last));
                    }
                }

                p += 5;
                continue;

            case '"': case '\\': case '/':
            case 'b': case 'f': case 'n': case 'r': case 't':
                p++;
                continue;

            default:
                return ngx_http_stream_mod_json_fail(ps,
                                   ngx_http_stream_mod_json_read(p, last));
            }
        }

        n = ngx_http_stream_mod_json_utf8(p, last);
        if (n == 0) {
            /* jansson fails before it counts an undecodable byte */
            return ngx_http_stream_mod_json_fail(ps, p - 1);
        }

        p += n;
    }

    ps->p = p + 1;

    if (!escapes) {
        if (out) {
            out->data = start;
            out->len = p - start;
        }

        return NGX_OK;
    }

    dst = NULL;

    if (out) {
        dst = ngx_pnalloc(ps->pool, p - start);
        if (dst == NULL) {
            ps->nomem = 1;
            return NGX_ERROR;
        }
    }

    /* a surrogate half or a NUL: jansson refuses the whole string */

    len = ngx_http_stream_mod_json_unescape(dst, start, p);
    if (len < 0) {
        return ngx_http_stream_mod_json_fail(ps, p);
    }

    if (out) {
        out->data = dst;
        out->len = len;
    }

    return NGX_OK;
}


/* a checked string's escapes, into dst (or only checked if dst is NULL) */

static ssize_t
ngx_http_stream_mod_json_unescape(u_char *dst, u_char *src, u_char *last)
{
    u_char      *d, c;
    ngx_uint_t   u, lo;

    d = dst;

    while (src < last) {
        c = *src++;

        if (c != '\\') {
            if (d) {
                *d++ = c;
            }

            continue;
        }

        c = *src++;

        switch (c) {
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': break;
        default: break;   /* '"', '\\', '/' */
        }

        if (c != 'u') {
            if (d) {
                *d++ = c;
            }

            continue;
        }

        u = ngx_http_stream_mod_json_hex(src);
        src += 4;

        if (u == 0) {
            return -1;
        }

        if (u >= 0xdc00 && u <= 0xdfff) {
            return -1;
        }

        if (u >= 0xd800 && u <= 0xdbff) {
            if (last - src < 6 || src[0] != '\\' || src[1] != 'u') {
                return -1;
            }

            lo = ngx_http_stream_mod_json_hex(src + 2);

            if (lo < 0xdc00 || lo > 0xdfff) {
                return -1;
            }

            src += 6;
            u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
        }

        if (d == NULL) {
            continue;
        }

        if (u < 0x80) {
            *d++ = (u_char) u;

        } else if (u < 0x800) {
            *d++ = (u_char) (0xc0 | (u >> 6));
            *d++ = (u_char) (0x80 | (u & 0x3f));

        } else if (u < 0x10000) {
            *d++ = (u_char) (0xe0 | (u >> 12));
            *d++ = (u_char) (0x80 | ((u >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (u & 0x3f));

        } else {
            *d++ = (u_char) (0xf0 | (u >> 18));
            *d++ = (u_char) (0x80 | ((u >> 12) & 0x3f));
            *d++ = (u_char) (0x80 | ((u >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (u & 0x3f));
        }
    }

    return d - dst;
}


/*
 * An unexpected token at ps->p: jansson reads the whole token before it
 * says so, and the error is where the token ends.
 */

static ngx_int_t
ngx_http_stream_mod_json_unexpected(ngx_http_stream_mod_json_parser_t *ps)
{
    u_char     *p, *last, c;
    ngx_int_t   rc;

    p = ps->p;
    last = ps->last;

    if (p == last) {
        return ngx_http_stream_mod_json_fail(ps, p);
    }

    c = *p;

    /* a string or a number is read as such, with its own errors */

    if (c == '"' || c == '-' || (c >= '0' && c <= '9')) {

        if (c == '"') {
            ps->p++;
            rc = ngx_http_stream_mod_json_string(ps, NULL);

        } else {
            rc = ngx_http_stream_mod_json_number(ps, NULL);
        }

        if (rc == NGX_OK) {
            return ngx_http_stream_mod_json_fail(ps, ps->p - 1);
        }

        return rc;
    }

    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') {
        while (p + 1 < last && (p[1] | 0x20) >= 'a' && (p[1] | 0x20) <= 'z') {
            p++;
        }

        return ngx_http_stream_mod_json_fail(ps, p);
    }

    p = ngx_http_stream_mod_json_read(p, last);

    return ngx_http_stream_mod_json_fail(ps, p);
}


/* a hex digit's value, or 16 */

static ngx_uint_t
ngx_http_stream_mod_json_xdigit(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return 16;
}


/* four hex digits (checked by the scan) as a number */

static ngx_uint_t
ngx_http_stream_mod_json_hex(u_char *p)
{
    ngx_uint_t  i, u;

    u = 0;

    for (i = 0; i < 4; i++) {
        u = u * 16 + ngx_http_stream_mod_json_xdigit(p[i]);
    }

    return u;
}


/*
 * The length of a valid UTF-8 sequence at p, or 0: no overlong forms, no
 * surrogates, nothing above U+10FFFF.
 */

static size_t
ngx_http_stream_mod_json_utf8(u_char *p, u_char *last)
{
    u_char  c, lo, hi;
    size_t  n, i;

    c = p[0];
    lo = 0x80;
    hi = 0xbf;

    if (c < 0xc2) {
        return 0;

    } else if (c < 0xe0) {
        n = 2;

    } else if (c < 0xf0) {
        n = 3;

        if (c == 0xe0) {
            lo = 0xa0;

        } else if (c == 0xed) {
            hi = 0x9f;
        }

    } else if (c < 0xf5) {
        n = 4;

        if (c == 0xf0) {
            lo = 0x90;

        } else if (c == 0xf4) {
            hi = 0x8f;
        }

    } else {
        return 0;
    }

    if ((size_t) (last - p) < n || p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return 0;
        }
    }

    return n;
}


/* jansson's grammar, and its limits: int64 integers, finite reals */

static ngx_int_t
ngx_http_stream_mod_json_number(ngx_http_stream_mod_json_parser_t *ps,
    ngx_http_stream_mod_json_value_t *v)
{
    u_char      *p, *start, *last;
    uint64_t     n, max;
    ngx_str_t    raw;
    ngx_uint_t   negative, real, inf;

    p = ps->p;
    last = ps->last;
    start = p;
    negative = 0;
    real = 0;

    if (*p == '-') {
        negative = 1;
        p++;
    }

    /* jansson puts back the byte that does not fit: the error is before */

    if (p == last) {
        return ngx_http_stream_mod_json_fail(ps, p);
    }

    if (*p == '0') {
        p++;

        if (p < last && *p >= '0' && *p <= '9') {
            return ngx_http_stream_mod_json_fail(ps, p - 1);
        }

    } else if (*p >= '1' && *p <= '9') {
        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }

    } else {
        return ngx_http_stream_mod_json_fail(ps, p - 1);
    }

    if (p < last && *p == '.') {
        real = 1;
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return ngx_http_stream_mod_json_fail(ps, p - 1);
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < last && (*p == 'e' || *p == 'E')) {
        real = 1;
        p++;

        if (p < last && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == last || *p < '0' || *p > '9') {
            return ngx_http_stream_mod_json_fail(ps, p - 1);
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    ps->p = p;

    if (real) {
        raw.data = start;
        raw.len = p - start;

        (void) ngx_http_stream_mod_json_real(&raw, &inf);

        if (inf) {
            return ngx_http_stream_mod_json_fail(ps, p - 1);
        }

        if (v) {
            v->type = NGX_HTTP_STREAM_MOD_J_REAL;
        }

        return NGX_OK;
    }

    /* |INT64_MIN| is one more than INT64_MAX */
    max = (uint64_t) INT64_MAX + negative;
    n = 0;

    for (p = start + negative; p < ps->p; p++) {
        if (n > (max - (*p - '0')) / 10) {
            return ngx_http_stream_mod_json_fail(ps, ps->p - 1);
        }

        n = n * 10 + (*p - '0');
    }

    if (v) {
        v->type = NGX_HTTP_STREAM_MOD_J_INTEGER;
        v->integer = negative ? (int64_t) (0 - n) : (int64_t) n;
    }

    return NGX_OK;
}


/* a checked real, with strtod() in the C locale NGINX runs in */

static double
ngx_http_stream_mod_json_real(ngx_str_t *raw, ngx_uint_t *inf)
{
    u_char   buf[64], *s;
    double   d;

    *inf = 0;

    /* reals are rare in moderation requests: long ones are not kept */
    if (raw->len >= sizeof(buf)) {
        s = ngx_alloc(raw->len + 1, ngx_cycle->log);
        if (s == NULL) {
            *inf = 1;
            return 0;
        }

    } else {
        s = buf;
    }

    ngx_memcpy(s, raw->data, raw->len);
    s[raw->len] = '\0';

    errno = 0;
    d = strtod((char *) s, NULL);

    if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL)) {
        *inf = 1;
    }

    if (s != buf) {
        ngx_free(s);
    }

    return d;
}


/*
 * Duplicates among the keys of one object (ps->keys from base on): the
 * first one jansson would have met is the one whose second occurrence
 * ends earliest.
 */

static void
ngx_http_stream_mod_json_dups(ngx_http_stream_mod_json_parser_t *ps,
    ngx_uint_t base)
{
    u_char                          *dup;
    ngx_uint_t                       i, j, n;
    ngx_http_stream_mod_json_key_t  *k;

    n = ps->nkeys - base;

    if (n < 2) {
        return;
    }

    k = &ps->keys[base];
    dup = NULL;

    if (n <= 16) {
        for (j = 1; j < n; j++) {
            for (i = 0; i < j; i++) {
                if (k[i].key.len == k[j].key.len
                    && ngx_memcmp(k[i].key.data, k[j].key.data,
                                  k[j].key.len) == 0)
                {
                    if (dup == NULL || k[j].end < dup) {
                        dup = k[j].end;
                    }

                    break;
                }
            }
        }

    } else {
        /* by key, then by position: a run's second is its first repeat */

        ngx_qsort(k, n, sizeof(ngx_http_stream_mod_json_key_t),
                  ngx_http_stream_mod_json_cmp_keys);

        for (i = 1; i < n; i++) {
            if (k[i].key.len == k[i - 1].key.len
                && ngx_memcmp(k[i].key.data, k[i - 1].key.data,
                              k[i].key.len) == 0
                && (i < 2 || k[i - 2].key.len != k[i].key.len
                    || ngx_memcmp(k[i].key.data, k[i - 2].key.data,
                                  k[i].key.len) != 0))
            {
                if (dup == NULL || k[i].end < dup) {
                    dup = k[i].end;
                }
            }
        }
    }

    if (dup && (ps->dup == NULL || dup < ps->dup)) {
        ps->dup = dup;
    }
}


static int ngx_libc_cdecl
ngx_http_stream_mod_json_cmp_keys(const void *one, const void *two)
{
    ngx_int_t                              rc;
    const ngx_http_stream_mod_json_key_t  *a = one, *b = two;

    if (a->key.len != b->key.len) {
        return (a->key.len < b->key.len) ? -1 : 1;
    }

    rc = ngx_memcmp(a->key.data, b->key.data, a->key.len);

    if (rc != 0) {
        return (int) rc;
    }

    return (a->end < b->end) ? -1 : (a->end > b->end);
}


ngx_http_stream_mod_json_value_t *
ngx_http_stream_mod_json_get(ngx_http_stream_mod_json_t *json, u_char *name,
    size_t len)
{
    ngx_uint_t                          i;
    ngx_http_stream_mod_json_member_t  *m;

    m = json->members;

    for (i = 0; i < json->nmembers; i++) {
        if (m[i].key.len == len && ngx_memcmp(m[i].key.data, name, len) == 0) {
            return &m[i].value;
        }
    }

    return NULL;
}


/* json_equal() of a body value and a policy value: types must match */

ngx_uint_t
ngx_http_stream_mod_json_equal(ngx_http_stream_mod_json_value_t *v,
    json_t *want)
{
    double       d;
    json_t      *have;
    ngx_uint_t   eq, inf;

    switch (json_typeof(want)) {

    case JSON_NULL:
        return v->type == NGX_HTTP_STREAM_MOD_J_NULL;

    case JSON_TRUE:
        return v->type == NGX_HTTP_STREAM_MOD_J_TRUE;

    case JSON_FALSE:
        return v->type == NGX_HTTP_STREAM_MOD_J_FALSE;

    case JSON_INTEGER:
        return v->type == NGX_HTTP_STREAM_MOD_J_INTEGER
               && v->integer == json_integer_value(want);

    case JSON_REAL:
        if (v->type != NGX_HTTP_STREAM_MOD_J_REAL) {
            return 0;
        }

        d = ngx_http_stream_mod_json_real(&v->raw, &inf);

        return !inf && d == json_real_value(want);

    case JSON_STRING:
        return v->type == NGX_HTTP_STREAM_MOD_J_STRING
               && v->str.len == json_string_length(want)
               && ngx_memcmp(v->str.data, json_string_value(want),
                             v->str.len) == 0;

    default:
        /* an object or an array in "when": rare, so jansson compares */

        if (v->type != (json_is_object(want) ? NGX_HTTP_STREAM_MOD_J_OBJECT
                                              : NGX_HTTP_STREAM_MOD_J_ARRAY))
        {
            return 0;
        }

        have = json_loadb((char *) v->raw.data, v->raw.len,
                          JSON_REJECT_DUPLICATES, NULL);
        if (have == NULL) {
            return 0;
        }

        eq = json_equal(have, want);
        json_decref(have);

        return eq;
    }
}
