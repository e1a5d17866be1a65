/* Validating Wayland wire codec; see wlcodec.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>

#include "wlcodec.h"

struct objmap {
    struct wlc_obj *v;
    uint32_t count; /* high-water mark: highest index ever used + 1 */
    uint32_t cap;
};

struct wlc_conn {
    const struct wlc_tables *t;
    uint32_t max_msg_size;
    uint32_t max_objects;
    uint32_t live_objects;
    uint32_t fds[2]; /* fds received but not yet matched, per direction */
    uint64_t nmsgs[2]; /* messages validated so far, per direction (for rate limits) */
    struct objmap client; /* ids 1 .. : index = id */
    struct objmap server; /* ids 0xff000000 .. : index = id - start */
    uint8_t *mask;
    char err[512];
};

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int map_reserve(struct objmap *m, uint32_t idx)
{
    if (idx < m->cap)
        return 0;
    uint32_t cap = m->cap ? m->cap : 64;
    while (cap <= idx)
        cap *= 2;
    struct wlc_obj *v = realloc(m->v, (size_t)cap * sizeof(*v));
    if (!v)
        return -1;
    memset(v + m->cap, 0, (size_t)(cap - m->cap) * sizeof(*v));
    m->v = v;
    m->cap = cap;
    return 0;
}

static struct objmap *map_for(struct wlc_conn *c, uint32_t id, uint32_t *idx)
{
    if (id >= WLC_SERVER_ID_START) {
        *idx = id - WLC_SERVER_ID_START;
        return &c->server;
    }
    *idx = id;
    return &c->client;
}

static struct wlc_obj *lookup(struct wlc_conn *c, uint32_t id)
{
    uint32_t idx;
    struct objmap *m = map_for(c, id, &idx);
    if (id == 0 || idx >= m->count || m->v[idx].state == WLC_OBJ_FREE)
        return NULL;
    return &m->v[idx];
}

struct wlc_conn *wlc_new(const struct wlc_tables *t, uint32_t max_msg_size, uint32_t max_objects)
{
    struct wlc_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->t = t;
    c->max_msg_size = max_msg_size;
    c->max_objects = max_objects;
    c->mask = calloc(t->n_msgs ? t->n_msgs : 1, 1);
    if (!c->mask || map_reserve(&c->client, 1) < 0) {
        wlc_free(c);
        return NULL;
    }
    c->client.v[1].iface = t->display_iface;
    c->client.v[1].state = WLC_OBJ_ALIVE;
    c->client.v[1].version = 1;
    c->client.count = 2;
    c->live_objects = 1;
    return c;
}

void wlc_free(struct wlc_conn *c)
{
    if (!c)
        return;
    free(c->client.v);
    free(c->server.v);
    free(c->mask);
    free(c);
}

uint8_t *wlc_mask(struct wlc_conn *c) { return c->mask; }
const char *wlc_error(struct wlc_conn *c) { return c->err; }
uint32_t wlc_pending_fds(struct wlc_conn *c, int dir) { return c->fds[dir & 1]; }
uint32_t wlc_object_count(struct wlc_conn *c) { return c->live_objects; }
uint64_t wlc_message_count(struct wlc_conn *c, int dir) { return c->nmsgs[dir & 1]; }
void wlc_set_max_objects(struct wlc_conn *c, uint32_t n) { c->max_objects = n; }

int wlc_lookup(struct wlc_conn *c, uint32_t id, struct wlc_obj *out)
{
    uint32_t idx;
    struct objmap *m = map_for(c, id, &idx);
    if (id == 0 || idx >= m->count)
        return -1;
    *out = m->v[idx];
    return m->v[idx].state == WLC_OBJ_FREE ? -1 : 0;
}

static void put(struct wlc_conn *c, uint32_t id, uint16_t iface, uint32_t version)
{
    uint32_t idx;
    struct objmap *m = map_for(c, id, &idx);
    if (m->v[idx].state == WLC_OBJ_FREE)
        c->live_objects++;
    m->v[idx].iface = iface;
    m->v[idx].state = WLC_OBJ_ALIVE;
    m->v[idx].version = version;
    if (idx >= m->count)
        m->count = idx + 1;
}

static void drop(struct wlc_conn *c, uint32_t id)
{
    uint32_t idx;
    struct objmap *m = map_for(c, id, &idx);
    if (id == 0 || idx >= m->count || m->v[idx].state == WLC_OBJ_FREE)
        return;
    m->v[idx].state = WLC_OBJ_FREE;
    c->live_objects--;
    /* count stays the high-water mark, as in libwayland's id map: a new id
     * may take any freed slot or the one just past the highest ever used */
}

int wlc_insert(struct wlc_conn *c, uint32_t id, uint16_t iface, uint32_t version)
{
    uint32_t idx;
    struct objmap *m = map_for(c, id, &idx);
    if (id == 0 || iface >= c->t->n_ifaces || map_reserve(m, idx) < 0)
        return -1;
    put(c, id, iface, version);
    return 0;
}

int wlc_remove(struct wlc_conn *c, uint32_t id)
{
    if (!lookup(c, id))
        return -1;
    drop(c, id);
    return 0;
}

int wlc_iface_by_name(const struct wlc_tables *t, const char *name, uint32_t len)
{
    uint32_t lo = 0, hi = t->n_ifaces;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        const char *n = t->ifaces[t->by_name[mid]].name;
        int r = strncmp(n, name, len);
        if (r == 0) {
            /* equal over len bytes: a NUL inside `name` stopped the
             * comparison early, and no interface name holds a NUL (nor may
             * n[len] be read then: n may be shorter than len) */
            if (memchr(name, 0, len))
                return -1;
            if (n[len] != '\0')
                r = 1;
        }
        if (r == 0)
            return t->by_name[mid];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Error with a formatted message; returns the wl_display error code. */
static int fail(struct wlc_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
    return code;
}

/* A pending new object from one message, applied only once the whole
 * message has validated. */
struct newobj {
    uint32_t id;
    uint16_t iface;
    uint32_t version;
};

#define MAX_NEW 8

/* Validate one complete message of `size` bytes; on success apply its effect
 * on the object map and return -1, else return a wl_display error code with
 * c->err set and *err_obj naming the object the error is posted on. */
static int check(struct wlc_conn *c, int dir, const uint8_t *p, uint32_t size,
                 uint16_t *iface_out, uint32_t *nfds_out, uint32_t *err_obj)
{
    const struct wlc_tables *t = c->t;
    uint32_t id = rd32(p);
    uint32_t opcode = rd32(p + 4) & 0xffff;
    struct wlc_obj *o = lookup(c, id);
    const char *dirname = dir == WLC_REQUEST ? "request" : "event";
    /* Error codes follow libwayland's server: an unknown or destroyed target
     * object is invalid_object; everything else (bad opcode, version, size,
     * arguments, including bad object and new_id arguments) is
     * invalid_method; both are posted on wl_display@1. */
    *err_obj = 1;
    *iface_out = WLC_NO_IFACE;
    *nfds_out = 0;
    if (!o) {
        if (dir == WLC_EVENT) {
            /* libwayland clients discard events for objects they do not know;
             * nothing to validate against, so pass them through untouched. */
            return -1;
        }
        return fail(c, WLC_ERR_INVALID_OBJECT, "invalid object %u", id);
    }
    const struct wlc_iface *ifc = &t->ifaces[o->iface];
    *iface_out = o->iface;
    if (dir == WLC_REQUEST && o->state == WLC_OBJ_ZOMBIE)
        return fail(c, WLC_ERR_INVALID_OBJECT, "invalid object %u (%s@%u was destroyed)", id,
                    ifc->name, id);
    if (opcode >= ifc->nmsgs[dir])
        return fail(c, WLC_ERR_INVALID_METHOD, "invalid %s opcode %u for %s@%u (it has %u)",
                    dirname, opcode, ifc->name, id, ifc->nmsgs[dir]);
    const struct wlc_msg *m = &t->msgs[ifc->first_msg[dir] + opcode];
    if (m->since > o->version)
        return fail(c, WLC_ERR_INVALID_METHOD,
                    "invalid %s opcode %u for %s@%u: needs version %u, object has version %u",
                    dirname, opcode, ifc->name, id, m->since, o->version);
    if (m->nfds > c->fds[dir])
        return fail(c, WLC_ERR_INVALID_METHOD, "%s@%u %s %u: missing fd (%u expected, %u received)",
                    ifc->name, id, dirname, opcode, m->nfds, c->fds[dir]);

    struct newobj news[MAX_NEW];
    uint32_t nnew = 0;
    uint32_t off = 8;
    for (uint32_t i = 0; i < m->nargs; i++) {
        const struct wlc_arg *a = &t->args[m->first_arg + i];
        uint32_t v;
        if (a->type == WLC_ARG_FD)
            continue;
        if (off + 4 > size)
            return fail(c, WLC_ERR_INVALID_METHOD, "%s@%u %s %u: message too short (argument %u)",
                        ifc->name, id, dirname, opcode, i);
        v = rd32(p + off);
        off += 4;
        switch (a->type) {
        case WLC_ARG_INT:
        case WLC_ARG_UINT:
        case WLC_ARG_FIXED:
            break;
        case WLC_ARG_STRING:
        case WLC_ARG_ARRAY: {
            if (v == 0) {
                if (a->type == WLC_ARG_STRING && !(a->flags & WLC_ARG_NULLABLE))
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: argument %u: null string not allowed", ifc->name,
                                id, dirname, opcode, i);
                break;
            }
            uint32_t padded = (v + 3u) & ~3u;
            if (v > size || padded > size - off)
                return fail(c, WLC_ERR_INVALID_METHOD,
                            "%s@%u %s %u: argument %u: %s length %u runs past the message end",
                            ifc->name, id, dirname, opcode, i,
                            a->type == WLC_ARG_STRING ? "string" : "array", v);
            if (a->type == WLC_ARG_STRING && p[off + v - 1] != 0)
                return fail(c, WLC_ERR_INVALID_METHOD,
                            "%s@%u %s %u: argument %u: string not NUL-terminated", ifc->name,
                            id, dirname, opcode, i);
            off += padded;
            break;
        }
        case WLC_ARG_OBJECT: {
            if (v == 0) {
                if (!(a->flags & WLC_ARG_NULLABLE))
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: argument %u: null object not allowed", ifc->name,
                                id, dirname, opcode, i);
                break;
            }
            struct wlc_obj *ao = lookup(c, v);
            if (!ao || (dir == WLC_REQUEST && ao->state == WLC_OBJ_ZOMBIE))
                return fail(c, WLC_ERR_INVALID_METHOD, "%s@%u %s %u: argument %u: invalid object %u",
                            ifc->name, id, dirname, opcode, i, v);
            if (a->iface != WLC_NO_IFACE && ao->iface != a->iface)
                return fail(c, WLC_ERR_INVALID_METHOD,
                            "%s@%u %s %u: argument %u: object %u is a %s, expected %s",
                            ifc->name, id, dirname, opcode, i, v, t->ifaces[ao->iface].name,
                            t->ifaces[a->iface].name);
            break;
        }
        case WLC_ARG_NEW_ID: {
            uint16_t niface = a->iface;
            uint32_t nversion = o->version;
            if (a->iface == WLC_NO_IFACE) {
                /* string interface, uint version, then the id */
                uint32_t slen = v;
                uint32_t padded = (slen + 3u) & ~3u;
                if (slen == 0)
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: argument %u: null string not allowed (interface name)",
                                ifc->name, id, dirname, opcode, i);
                if (slen > size || padded > size - off)
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: argument %u: string length %u runs past the message end",
                                ifc->name, id, dirname, opcode, i, slen);
                if (p[off + slen - 1] != 0)
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: argument %u: string not NUL-terminated", ifc->name,
                                id, dirname, opcode, i);
                int found = wlc_iface_by_name(t, (const char *)p + off, slen - 1);
                if (found < 0)
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: unknown interface '%s'", ifc->name, id, dirname,
                                opcode, (const char *)p + off);
                niface = (uint16_t)found;
                off += padded;
                if (off + 8 > size)
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: message too short (argument %u)", ifc->name, id,
                                dirname, opcode, i);
                nversion = rd32(p + off);
                v = rd32(p + off + 4);
                off += 8;
                if (nversion == 0 || nversion > t->ifaces[niface].version)
                    return fail(c, WLC_ERR_INVALID_METHOD,
                                "%s@%u %s %u: %s version %u is not supported (1..%u)", ifc->name,
                                id, dirname, opcode, t->ifaces[niface].name, nversion,
                                t->ifaces[niface].version);
            }
            if (v == 0) {
                if (a->flags & WLC_ARG_NULLABLE)
                    break;
                return fail(c, WLC_ERR_INVALID_METHOD, "%s@%u %s %u: argument %u: new id 0",
                            ifc->name, id, dirname, opcode, i);
            }
            int client_range = v < WLC_SERVER_ID_START;
            if ((dir == WLC_REQUEST) != client_range)
                return fail(c, WLC_ERR_INVALID_METHOD,
                            "%s@%u %s %u: new id %u is outside the %s's id range", ifc->name, id,
                            dirname, opcode, v, dir == WLC_REQUEST ? "client" : "server");
            uint32_t idx;
            struct objmap *mp = map_for(c, v, &idx);
            if (idx > mp->count)
                return fail(c, WLC_ERR_INVALID_METHOD,
                            "%s@%u %s %u: new id %u is not the next free id (%u)", ifc->name,
                            id, dirname, opcode, v,
                            client_range ? mp->count : mp->count + WLC_SERVER_ID_START);
            int in_use = idx < mp->count && mp->v[idx].state != WLC_OBJ_FREE;
            for (uint32_t k = 0; k < nnew; k++)
                in_use |= news[k].id == v;
            if (in_use && dir == WLC_REQUEST)
                return fail(c, WLC_ERR_INVALID_METHOD, "%s@%u %s %u: new id %u is already in use",
                            ifc->name, id, dirname, opcode, v);
            if (nnew == MAX_NEW)
                return fail(c, WLC_ERR_IMPLEMENTATION, "too many new ids in one message");
            news[nnew].id = v;
            news[nnew].iface = niface;
            news[nnew].version = nversion;
            nnew++;
            break;
        }
        default:
            return fail(c, WLC_ERR_IMPLEMENTATION, "bad signature table");
        }
    }
    if (off != size)
        return fail(c, WLC_ERR_INVALID_METHOD,
                    "%s@%u %s %u: %u bytes of arguments, but the message carries %u", ifc->name,
                    id, dirname, opcode, off - 8, size - 8);
    if (dir == WLC_REQUEST && nnew && c->live_objects + nnew > c->max_objects) {
        *err_obj = id;
        return fail(c, WLC_ERR_NO_MEMORY, "object limit of %u reached", c->max_objects);
    }

    /* Valid: apply the effects. */
    for (uint32_t k = 0; k < nnew; k++) {
        uint32_t idx;
        struct objmap *mp = map_for(c, news[k].id, &idx);
        if (map_reserve(mp, idx) < 0) {
            *err_obj = id;
            return fail(c, WLC_ERR_NO_MEMORY, "out of memory");
        }
        put(c, news[k].id, news[k].iface, news[k].version);
    }
    if (m->flags & WLC_MSG_DESTRUCTOR) {
        /* Client ids live on as zombies until the server's delete_id; server
         * ids are gone at once. */
        if (id < WLC_SERVER_ID_START)
            lookup(c, id)->state = WLC_OBJ_ZOMBIE;
        else
            drop(c, id);
    }
    if (dir == WLC_EVENT && *iface_out == t->display_iface && opcode == 1 && size >= 12) {
        uint32_t gone = rd32(p + 8); /* wl_display.delete_id */
        if (gone < WLC_SERVER_ID_START && gone != 1)
            drop(c, gone);
    }
    c->fds[dir] -= m->nfds;
    *nfds_out = m->nfds;
    return -1;
}

uint32_t wlc_feed(struct wlc_conn *c, int dir, const uint8_t *buf, uint32_t len, uint32_t new_fds,
                  struct wlc_rec *out, uint32_t out_cap, uint32_t *consumed)
{
    uint32_t pos = 0, n = 0;
    dir &= 1;
    c->fds[dir] += new_fds;
    *consumed = 0;
    if (out_cap < 2)
        return 0;
    while (len - pos >= 8 && n + 1 < out_cap) {
        const uint8_t *p = buf + pos;
        uint32_t id = rd32(p);
        uint32_t w = rd32(p + 4);
        uint32_t size = w >> 16, opcode = w & 0xffff;
        uint32_t err_obj = 1;
        int code = -1;
        uint16_t iface = WLC_NO_IFACE;
        uint32_t nfds = 0;
        if (size < 8)
            code = fail(c, WLC_ERR_INVALID_METHOD, "message size %u is below the 8-byte header (object %u, opcode %u)", size, id, opcode);
        else if (size & 3)
            code = fail(c, WLC_ERR_INVALID_METHOD, "message size %u is not a multiple of 4 (object %u, opcode %u)", size, id, opcode);
        else if (size > c->max_msg_size)
            code = fail(c, WLC_ERR_INVALID_METHOD, "message size %u exceeds the limit of %u (object %u, opcode %u)", size, c->max_msg_size, id, opcode);
        else if (len - pos < size)
            break; /* partial message: wait for more bytes */
        else
            code = check(c, dir, p, size, &iface, &nfds, &err_obj);
        if (code >= 0) {
            struct wlc_rec *r = &out[n++];
            r->kind = WLC_REC_ERROR;
            r->start = pos;
            r->len = size;
            r->obj = err_obj;
            r->iface = iface;
            r->opcode = (uint16_t)opcode;
            r->nfds = 0;
            r->code = (uint16_t)code;
            *consumed = pos;
            return n;
        }
        int want = iface != WLC_NO_IFACE &&
                   c->mask[c->t->ifaces[iface].first_msg[dir] + opcode];
        if (!want && n > 0 && out[n - 1].kind == WLC_REC_PASS &&
            out[n - 1].start + out[n - 1].len == pos) {
            out[n - 1].len += size;
            out[n - 1].nfds += nfds;
        } else {
            struct wlc_rec *r = &out[n++];
            r->kind = want ? WLC_REC_MSG : WLC_REC_PASS;
            r->start = pos;
            r->len = size;
            r->obj = id;
            r->iface = iface;
            r->opcode = (uint16_t)opcode;
            r->nfds = (uint16_t)nfds;
            r->code = 0;
        }
        pos += size;
        c->nmsgs[dir]++;
    }
    *consumed = pos;
    return n;
}
