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

#define MAX_NEW 8

/* One message while its arguments are checked.  New objects are only
 * collected here and applied once the whole message has validated. */
struct walk {
    struct wlc_conn *c;
    const uint8_t *p;
    uint32_t size;
    uint32_t off; /* next unread byte */
    int dir;
    uint32_t id, opcode;
    const struct wlc_iface *ifc;
    const struct wlc_obj *o;
    uint32_t nnew;
    struct {
        uint32_t id;
        uint16_t iface;
        uint32_t version;
    } news[MAX_NEW];
};

static const char *const dirnames[2] = {"request", "event"};

/* An invalid message: the text names it ("wl_surface@3 request 1: ...").
 * libwayland's server posts all of these as invalid_method. */
static int bad(const struct walk *w, const char *fmt, ...)
{
    char *e = w->c->err;
    size_t cap = sizeof(w->c->err);
    int n = snprintf(e, cap, "%s@%u %s %u: ", w->ifc->name, w->id, dirnames[w->dir], w->opcode);
    size_t at = n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e + at, cap - at, fmt, ap);
    va_end(ap);
    return WLC_ERR_INVALID_METHOD;
}

/* The next argument word; 0 when the message ends first. */
static int take(struct walk *w, uint32_t *v)
{
    if (w->off + 4 > w->size)
        return 0;
    *v = rd32(w->p + w->off);
    w->off += 4;
    return 1;
}

/* The bytes of a string or array whose length word `len` was just taken:
 * they must fit in the message, padded to 4, and a string ends in NUL.
 * `what` follows the null-string text (an interface name says so). */
static int blob(struct walk *w, uint32_t i, uint32_t len, int type, int null_ok, const char *what)
{
    if (len == 0)
        return null_ok ? -1 : bad(w, "argument %u: null string not allowed%s", i, what);
    uint32_t padded = (len + 3u) & ~3u;
    if (len > w->size || padded > w->size - w->off)
        return bad(w, "argument %u: %s length %u runs past the message end", i,
                   type == WLC_ARG_STRING ? "string" : "array", len);
    if (type == WLC_ARG_STRING && w->p[w->off + len - 1] != 0)
        return bad(w, "argument %u: string not NUL-terminated", i);
    w->off += padded;
    return -1;
}

static int object_arg(struct walk *w, uint32_t i, const struct wlc_arg *a, uint32_t v)
{
    const struct wlc_tables *t = w->c->t;
    if (v == 0)
        return a->flags & WLC_ARG_NULLABLE ? -1 : bad(w, "argument %u: null object not allowed", i);
    struct wlc_obj *ao = lookup(w->c, v);
    if (!ao || (w->dir == WLC_REQUEST && ao->state == WLC_OBJ_ZOMBIE))
        return bad(w, "argument %u: invalid object %u", i, v);
    if (a->iface != WLC_NO_IFACE && ao->iface != a->iface)
        return bad(w, "argument %u: object %u is a %s, expected %s", i, v, t->ifaces[ao->iface].name,
                   t->ifaces[a->iface].name);
    return -1;
}

/* A new_id the XML gives no interface (wl_registry.bind) comes as the
 * interface's name, the version, then the id; `*v` held the name's length
 * and is left holding the id. */
static int untyped_new_id(struct walk *w, uint32_t i, uint32_t *v, uint16_t *iface, uint32_t *version)
{
    const struct wlc_tables *t = w->c->t;
    const char *name = (const char *)w->p + w->off;
    uint32_t len = *v;
    int r = blob(w, i, len, WLC_ARG_STRING, 0, " (interface name)");
    if (r >= 0)
        return r;
    int found = wlc_iface_by_name(t, name, len - 1);
    if (found < 0)
        return bad(w, "unknown interface '%s'", name);
    *iface = (uint16_t)found;
    if (!take(w, version) || !take(w, v))
        return bad(w, "message too short (argument %u)", i);
    if (*version == 0 || *version > t->ifaces[found].version)
        return bad(w, "%s version %u is not supported (1..%u)", t->ifaces[found].name, *version,
                   t->ifaces[found].version);
    return -1;
}

/* A new id must be in the sender's range and, as in libwayland's id map,
 * the next free one or a freed one; the server may reuse a live id. */
static int new_id_arg(struct walk *w, uint32_t i, const struct wlc_arg *a, uint32_t v)
{
    uint16_t iface = a->iface;
    uint32_t version = w->o->version;
    if (a->iface == WLC_NO_IFACE) {
        int r = untyped_new_id(w, i, &v, &iface, &version);
        if (r >= 0)
            return r;
    }
    if (v == 0)
        return a->flags & WLC_ARG_NULLABLE ? -1 : bad(w, "argument %u: new id 0", i);
    int client_range = v < WLC_SERVER_ID_START;
    if ((w->dir == WLC_REQUEST) != client_range)
        return bad(w, "new id %u is outside the %s's id range", v,
                   w->dir == WLC_REQUEST ? "client" : "server");
    uint32_t idx;
    struct objmap *m = map_for(w->c, v, &idx);
    if (idx > m->count)
        return bad(w, "new id %u is not the next free id (%u)", v,
                   client_range ? m->count : m->count + WLC_SERVER_ID_START);
    int in_use = idx < m->count && m->v[idx].state != WLC_OBJ_FREE;
    for (uint32_t k = 0; k < w->nnew; k++)
        in_use |= w->news[k].id == v;
    if (in_use && w->dir == WLC_REQUEST)
        return bad(w, "new id %u is already in use", v);
    if (w->nnew == MAX_NEW)
        return fail(w->c, WLC_ERR_IMPLEMENTATION, "too many new ids in one message");
    w->news[w->nnew].id = v;
    w->news[w->nnew].iface = iface;
    w->news[w->nnew].version = version;
    w->nnew++;
    return -1;
}

/* The arguments, one signature entry at a time (fds travel out of band). */
static int walk_args(struct walk *w, const struct wlc_msg *m)
{
    const struct wlc_arg *args = &w->c->t->args[m->first_arg];
    for (uint32_t i = 0; i < m->nargs; i++) {
        const struct wlc_arg *a = &args[i];
        uint32_t v;
        int r = -1;
        if (a->type == WLC_ARG_FD)
            continue;
        if (!take(w, &v))
            return bad(w, "message too short (argument %u)", i);
        switch (a->type) {
        case WLC_ARG_INT:
        case WLC_ARG_UINT:
        case WLC_ARG_FIXED:
            break;
        case WLC_ARG_STRING:
            r = blob(w, i, v, a->type, a->flags & WLC_ARG_NULLABLE, "");
            break;
        case WLC_ARG_ARRAY:
            r = blob(w, i, v, a->type, 1, "");
            break;
        case WLC_ARG_OBJECT:
            r = object_arg(w, i, a, v);
            break;
        case WLC_ARG_NEW_ID:
            r = new_id_arg(w, i, a, v);
            break;
        default:
            r = fail(w->c, WLC_ERR_IMPLEMENTATION, "bad signature table");
        }
        if (r >= 0)
            return r;
    }
    if (w->off != w->size)
        return bad(w, "%u bytes of arguments, but the message carries %u", w->off - 8, w->size - 8);
    return -1;
}

/* The message's effect on the object map: its new objects, a destructor,
 * wl_display.delete_id.  Fails only if memory runs out. */
static int apply(struct walk *w, const struct wlc_msg *m, uint32_t *err_obj)
{
    struct wlc_conn *c = w->c;
    for (uint32_t k = 0; k < w->nnew; k++) {
        uint32_t idx;
        struct objmap *mp = map_for(c, w->news[k].id, &idx);
        if (map_reserve(mp, idx) < 0) {
            *err_obj = w->id;
            return fail(c, WLC_ERR_NO_MEMORY, "out of memory");
        }
        put(c, w->news[k].id, w->news[k].iface, w->news[k].version);
    }
    if (m->flags & WLC_MSG_DESTRUCTOR) {
        /* Client ids live on as zombies until the server's delete_id; server
         * ids are gone at once. */
        if (w->id < WLC_SERVER_ID_START)
            lookup(c, w->id)->state = WLC_OBJ_ZOMBIE;
        else
            drop(c, w->id);
    }
    /* not w->o->iface: map_reserve may have moved the object array */
    if (w->dir == WLC_EVENT && w->ifc == &c->t->ifaces[c->t->display_iface] && w->opcode == 1 &&
        w->size >= 12) {
        uint32_t gone = rd32(w->p + 8); /* wl_display.delete_id */
        if (gone < WLC_SERVER_ID_START && gone != 1)
            drop(c, gone);
    }
    c->fds[w->dir] -= m->nfds;
    return -1;
}

/* Validate one complete message of `size` bytes; on success apply its effect
 * on the object map and return -1, else return a wl_display error code with
 * c->err set and *err_obj naming the object the error is posted on. */
static int check(struct wlc_conn *c, int dir, const uint8_t *p, uint32_t size,
                 uint16_t *iface_out, uint32_t *nfds_out, uint32_t *err_obj)
{
    struct walk w; /* not "= {...}": that would zero news[] for every message */
    w.c = c;
    w.p = p;
    w.size = size;
    w.off = 8;
    w.dir = dir;
    w.id = rd32(p);
    w.opcode = rd32(p + 4) & 0xffff;
    w.nnew = 0;
    w.o = lookup(c, w.id);
    /* Error codes follow libwayland's server: an unknown or destroyed target
     * object is invalid_object; everything else (bad opcode, version, size,
     * arguments, including bad object and new_id arguments) is
     * invalid_method; both are posted on wl_display@1. */
    *err_obj = 1;
    *iface_out = WLC_NO_IFACE;
    *nfds_out = 0;
    if (!w.o) {
        /* libwayland clients discard events for objects they do not know;
         * nothing to validate against, so pass them through untouched. */
        if (dir == WLC_EVENT)
            return -1;
        return fail(c, WLC_ERR_INVALID_OBJECT, "invalid object %u", w.id);
    }
    w.ifc = &c->t->ifaces[w.o->iface];
    *iface_out = w.o->iface;
    if (dir == WLC_REQUEST && w.o->state == WLC_OBJ_ZOMBIE)
        return fail(c, WLC_ERR_INVALID_OBJECT, "invalid object %u (%s@%u was destroyed)", w.id,
                    w.ifc->name, w.id);
    if (w.opcode >= w.ifc->nmsgs[dir])
        return fail(c, WLC_ERR_INVALID_METHOD, "invalid %s opcode %u for %s@%u (it has %u)",
                    dirnames[dir], w.opcode, w.ifc->name, w.id, w.ifc->nmsgs[dir]);
    const struct wlc_msg *m = &c->t->msgs[w.ifc->first_msg[dir] + w.opcode];
    if (m->since > w.o->version)
        return fail(c, WLC_ERR_INVALID_METHOD,
                    "invalid %s opcode %u for %s@%u: needs version %u, object has version %u",
                    dirnames[dir], w.opcode, w.ifc->name, w.id, m->since, w.o->version);
    if (m->nfds > c->fds[dir])
        return bad(&w, "missing fd (%u expected, %u received)", m->nfds, c->fds[dir]);
    int r = walk_args(&w, m);
    if (r >= 0)
        return r;
    if (dir == WLC_REQUEST && w.nnew && c->live_objects + w.nnew > c->max_objects) {
        *err_obj = w.id;
        return fail(c, WLC_ERR_NO_MEMORY, "object limit of %u reached", c->max_objects);
    }
    r = apply(&w, m, err_obj);
    if (r < 0)
        *nfds_out = m->nfds;
    return r;
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
            out[n++] = (struct wlc_rec){WLC_REC_ERROR, pos, size, err_obj, iface, (uint16_t)opcode, 0,
                                        (uint16_t)code};
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
            out[n++] = (struct wlc_rec){want ? WLC_REC_MSG : WLC_REC_PASS, pos, size, id, iface,
                                        (uint16_t)opcode, (uint16_t)nfds, 0};
        }
        pos += size;
        c->nmsgs[dir]++;
    }
    *consumed = pos;
    return n;
}
