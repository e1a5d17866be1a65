/* The guest half's surfaces and shm buffers, and the pixels a commit sends; see surface.h. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wlcodec.h"
#include "shm.h"
#include "surface.h"

#define ROWS_CAP 8192
#define OUT_CAP 4096
#define MERGE_GAP 256
#define MIN_DIRECT (1u << 16)   /* smaller damage is always diffed */
#define FULL_RECT INT32_MAX

struct sf_region {
    uint32_t n, full;          /* full: the whole buffer */
    int32_t r[4 * SF_RECTS];   /* x, y, w, h */
};

struct sf_buffer {
    struct sf_pool *pool;
    int32_t offset, width, height, stride;
    uint32_t format, bpp, mode, gen;
    struct sf_region stale;    /* the shadow is out of date here (after DIRECT commits) */
};

struct sf_missed {             /* damage a buffer missed while another was attached */
    uint32_t id, gen;
    struct sf_region region;
};

struct sf_surface {
    int64_t pending;           /* buffer attached since the last commit (0: null); -1: none */
    int32_t scale, transform;
    uint32_t viewport, buffer;
    struct sf_region sdamage, bdamage;
    uint32_t nhist;
    struct sf_missed *hist;    /* SF_HIST entries, made at the first commit with a buffer */
};

/* object id -> pointer, open addressing (ids come from the client) */
struct map {
    uint32_t cap, used, tomb;
    uint32_t *keys;            /* 0: empty; 0xffffffff: removed */
    void **vals;
    void (*destroy)(void *);   /* frees a value (NULL: nothing) */
};

struct sf_state {
    struct map surfaces, buffers;
    uint32_t diff, gen;
    uint16_t iface, op_attach, op_damage, op_damage_buffer, op_commit;
};

/* scratch shared by every state: the guest half is one thread */
static struct shm_span rows[ROWS_CAP + 1], out[OUT_CAP], scratch[OUT_CAP];

/* -- the map ------------------------------------------------------------- */
#define TOMB 0xffffffffu

static uint32_t slot_of(const struct map *m, uint32_t key)
{
    uint32_t i = (key * 2654435761u) & (m->cap - 1);
    while (m->keys[i] != key && m->keys[i] != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static void *map_get(const struct map *m, uint32_t key)
{
    if (!m->cap || key == 0 || key == TOMB)
        return NULL;
    uint32_t i = slot_of(m, key);
    return m->keys[i] == key ? m->vals[i] : NULL;
}

static int map_grow(struct map *m)
{
    uint32_t cap = m->cap ? m->cap * 2 : 16;
    if (m->used * 4 < m->cap)
        cap = m->cap; /* mostly tombstones: rehash at the same size */
    struct map n = {cap, 0, 0, calloc(cap, sizeof(uint32_t)), calloc(cap, sizeof(void *)), m->destroy};
    if (!n.keys || !n.vals) {
        free(n.keys);
        free(n.vals);
        return -1;
    }
    for (uint32_t i = 0; i < m->cap; i++)
        if (m->keys[i] != 0 && m->keys[i] != TOMB) {
            uint32_t j = slot_of(&n, m->keys[i]);
            n.keys[j] = m->keys[i];
            n.vals[j] = m->vals[i];
            n.used++;
        }
    free(m->keys);
    free(m->vals);
    *m = n;
    return 0;
}

static int map_put(struct map *m, uint32_t key, void *val)
{
    if (key == 0 || key == TOMB) { /* never an object the client made: nothing to keep */
        m->destroy(val);
        return 0;
    }
    if ((m->used + m->tomb + 1) * 2 > m->cap && map_grow(m) < 0)
        return -1;
    uint32_t i = (key * 2654435761u) & (m->cap - 1);
    uint32_t free_at = UINT32_MAX;
    while (m->keys[i] != 0 && m->keys[i] != key) {
        if (m->keys[i] == TOMB && free_at == UINT32_MAX)
            free_at = i;
        i = (i + 1) & (m->cap - 1);
    }
    if (m->keys[i] == key) {
        m->vals[i] = val;
        return 0;
    }
    if (free_at != UINT32_MAX) {
        i = free_at;
        m->tomb--;
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->used++;
    return 0;
}

static void *map_pop(struct map *m, uint32_t key)
{
    if (!m->cap || key == 0 || key == TOMB)
        return NULL;
    uint32_t i = slot_of(m, key);
    if (m->keys[i] != key)
        return NULL;
    void *v = m->vals[i];
    m->keys[i] = TOMB;
    m->vals[i] = NULL;
    m->used--;
    m->tomb++;
    return v;
}

/* `val` under `key`, in place of (and freeing) what was there; -1: no memory (val freed). */
static int map_replace(struct map *m, uint32_t key, void *val)
{
    m->destroy(map_pop(m, key));
    if (map_put(m, key, val) < 0) {
        free(val);
        return -1;
    }
    return 0;
}

static void map_free(struct map *m)
{
    for (uint32_t i = 0; i < m->cap; i++)
        if (m->keys[i] != 0 && m->keys[i] != TOMB)
            m->destroy(m->vals[i]);
    free(m->keys);
    free(m->vals);
    m->cap = m->used = m->tomb = 0;
    m->keys = NULL;
    m->vals = NULL;
}

/* -- regions ------------------------------------------------------------- */
static void region_clear(struct sf_region *g)
{
    g->n = g->full = 0;
}

static int region_empty(const struct sf_region *g)
{
    return !g->full && g->n == 0;
}

/* Collapse to the bounding box (a superset of the union). */
static void region_bbox(struct sf_region *g)
{
    int64_t x0 = INT64_MAX, y0 = INT64_MAX, x1 = INT64_MIN, y1 = INT64_MIN;
    for (uint32_t i = 0; i < g->n; i++) {
        const int32_t *r = g->r + 4 * i;
        if (r[0] < x0) x0 = r[0];
        if (r[1] < y0) y0 = r[1];
        if ((int64_t)r[0] + r[2] > x1) x1 = (int64_t)r[0] + r[2];
        if ((int64_t)r[1] + r[3] > y1) y1 = (int64_t)r[1] + r[3];
    }
    int64_t w = x1 - x0, h = y1 - y0;
    g->n = 1;
    g->r[0] = (int32_t)x0, g->r[1] = (int32_t)y0;
    g->r[2] = (int32_t)(w > INT32_MAX ? INT32_MAX : w), g->r[3] = (int32_t)(h > INT32_MAX ? INT32_MAX : h);
}

static void region_add(struct sf_region *g, int32_t x, int32_t y, int32_t w, int32_t h)
{
    if (g->full)
        return;
    if (g->n == SF_RECTS)
        region_bbox(g);
    int32_t *r = g->r + 4 * g->n++;
    r[0] = x, r[1] = y, r[2] = w, r[3] = h;
    if (g->n == SF_RECTS)
        region_bbox(g);
}

static void region_union(struct sf_region *a, const struct sf_region *b)
{
    if (a->full || b->full) {
        a->full = 1;
        a->n = 0;
        return;
    }
    for (uint32_t i = 0; i < b->n; i++)
        region_add(a, b->r[4 * i], b->r[4 * i + 1], b->r[4 * i + 2], b->r[4 * i + 3]);
}

static int32_t clamp32(int64_t v)
{
    return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : (int32_t)v;
}

/* -- state ---------------------------------------------------------------- */
static void surface_free(void *v)
{
    struct sf_surface *s = v;
    if (s)
        free(s->hist);
    free(s);
}

struct sf_state *sf_new(void)
{
    struct sf_state *st = calloc(1, sizeof *st);
    if (st) {
        st->diff = 1;
        st->iface = 0xffff;
        st->surfaces.destroy = surface_free;
        st->buffers.destroy = free;
    }
    return st;
}

void sf_free(struct sf_state *st)
{
    if (!st)
        return;
    map_free(&st->surfaces);
    map_free(&st->buffers);
    free(st);
}

void sf_set_diff(struct sf_state *st, uint32_t enabled)
{
    if (!st)
        return;
    st->diff = enabled;
}

void sf_set_ops(struct sf_state *st, uint16_t surface_iface, uint16_t attach, uint16_t damage,
                uint16_t damage_buffer, uint16_t commit)
{
    st->iface = surface_iface;
    st->op_attach = attach, st->op_damage = damage, st->op_damage_buffer = damage_buffer, st->op_commit = commit;
}

static struct sf_surface *surface_of(struct sf_state *st, uint32_t id)
{
    return st ? map_get(&st->surfaces, id) : NULL;
}

int sf_surface_add(struct sf_state *st, uint32_t id)
{
    if (!st)
        return -1;
    struct sf_surface *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->pending = -1;
    s->scale = 1;
    return map_replace(&st->surfaces, id, s);
}

void sf_surface_remove(struct sf_state *st, uint32_t id)
{
    if (!st)
        return;
    surface_free(map_pop(&st->surfaces, id));
}

void sf_set_scale(struct sf_state *st, uint32_t id, int32_t scale)
{
    struct sf_surface *s = surface_of(st, id);
    if (s)
        s->scale = scale < 1 ? 1 : scale;
}

void sf_set_transform(struct sf_state *st, uint32_t id, int32_t transform)
{
    struct sf_surface *s = surface_of(st, id);
    if (s)
        s->transform = transform;
}

void sf_set_viewport(struct sf_state *st, uint32_t id)
{
    struct sf_surface *s = surface_of(st, id);
    if (s)
        s->viewport = 1; /* surface damage no longer maps simply onto the buffer */
}

int sf_buffer_add(struct sf_state *st, uint32_t id, struct sf_pool *pool, int32_t offset, int32_t width,
                  int32_t height, int32_t stride, uint32_t format, uint32_t bpp)
{
    if (!st)
        return -1;
    struct sf_buffer *b = calloc(1, sizeof *b);
    if (!b)
        return -1;
    *b = (struct sf_buffer){pool, offset, width, height, stride, format, bpp, SF_DIFF, ++st->gen, {0}};
    return map_replace(&st->buffers, id, b);
}

void sf_buffer_remove(struct sf_state *st, uint32_t id)
{
    if (!st)
        return;
    free(map_pop(&st->buffers, id));
}

uint32_t sf_buffer_mode(struct sf_state *st, uint32_t id)
{
    struct sf_buffer *b = st ? map_get(&st->buffers, id) : NULL;
    return b ? b->mode : 2;
}

void sf_attach(struct sf_state *st, uint32_t id, uint32_t buffer)
{
    struct sf_surface *s = surface_of(st, id);
    if (s)
        s->pending = buffer;
}

void sf_damage(struct sf_state *st, uint32_t id, uint32_t in_buffer, int32_t x, int32_t y, int32_t w, int32_t h)
{
    struct sf_surface *s = surface_of(st, id);
    if (s)
        region_add(in_buffer ? &s->bdamage : &s->sdamage, x, y, w, h);
}

const struct shm_span *sf_spans(struct sf_state *st)
{
    (void)st;
    return out;
}

/* -- a commit -------------------------------------------------------------- */
/* The buffer lies inside its pool, whole rows of `stride` bytes but the last,
 * which is width * bpp.  A buffer of unknown layout (bpp 0) never sends. */
static int bounds_ok(const struct sf_buffer *b)
{
    if (!b->bpp || b->width <= 0 || b->height <= 0 || b->offset < 0 || b->stride <= 0 ||
        (uint64_t)b->stride < (uint64_t)b->width * b->bpp)
        return 0;
    uint64_t end = (uint64_t)b->offset + (uint64_t)b->stride * (uint64_t)(b->height - 1) +
                   (uint64_t)b->width * b->bpp;
    return end <= b->pool->size;
}

/* rows[0:n] (ascending, inside the buffer) as at most `cap` spans into out:
 * when there are more, one span from the first row's start to the last row's
 * end, which bounds_ok keeps inside the pool. */
static uint32_t fit(const struct shm_span *rows, uint32_t n, struct shm_span *dst, uint32_t cap)
{
    if (n <= cap) {
        memcpy(dst, rows, n * sizeof *rows);
        return n;
    }
    uint64_t start = rows[0].offset, end = rows[n - 1].offset + rows[n - 1].len;
    dst[0].offset = start;
    dst[0].len = (uint32_t)(end - start);
    return 1;
}

/* Row spans of `g` into rows[]; *covered: the region they cover. */
static uint32_t collect(const struct sf_buffer *b, const struct sf_region *g, struct sf_region *covered)
{
    int32_t rects[4 * SF_RECTS];
    uint32_t nr;
    if (g->full) {
        rects[0] = 0, rects[1] = 0, rects[2] = b->width, rects[3] = b->height;
        nr = 1;
    } else {
        memcpy(rects, g->r, sizeof(int32_t) * 4 * g->n);
        nr = g->n;
    }
    *covered = *g;
    uint32_t n = shm_collect_rows((uint64_t)b->offset, (uint32_t)b->stride, b->bpp, (uint32_t)b->width,
                                  (uint32_t)b->height, rects, nr, rows, ROWS_CAP);
    if (n > ROWS_CAP) { /* too fragmented: whole rows of the bounding box */
        int64_t y0 = INT64_MAX, y1 = INT64_MIN;
        for (uint32_t i = 0; i < nr; i++) {
            if (rects[4 * i + 1] < y0) y0 = rects[4 * i + 1];
            if ((int64_t)rects[4 * i + 1] + rects[4 * i + 3] > y1) y1 = (int64_t)rects[4 * i + 1] + rects[4 * i + 3];
        }
        int32_t box[4] = {0, clamp32(y0), b->width, clamp32(y1 - y0)};
        covered->full = 0, covered->n = 1;
        memcpy(covered->r, box, sizeof box);
        n = shm_collect_rows((uint64_t)b->offset, (uint32_t)b->stride, b->bpp, (uint32_t)b->width,
                             (uint32_t)b->height, box, 1, rows, ROWS_CAP);
        if (n > ROWS_CAP) { /* rows that do not touch: one span from the box's first row to its last */
            int64_t top = y0 < 0 ? 0 : y0, bottom = y1 > b->height ? b->height : y1;
            rows[0].offset = (uint64_t)b->offset + (uint64_t)top * (uint64_t)b->stride;
            rows[0].len = (uint32_t)((uint64_t)(bottom - top - 1) * (uint64_t)b->stride + (uint64_t)b->width * b->bpp);
            n = 1;
        }
    }
    return n;
}

/* What `region` of buffer `b` needs sent, into out[]: diffed against the
 * shadow, or (DIRECT) as it is with a 1/64 sample to tell when diffing pays
 * again, after which one RESYNC commit sends what the DIRECT ones left stale. */
static uint32_t transfer(struct sf_state *st, struct sf_buffer *b, struct sf_region *g)
{
    if (!b->pool->mm || !bounds_ok(b))
        return 0;
    struct sf_region covered;
    uint64_t stats[3] = {0, 0, 0};
    if (!st->diff) {
        uint32_t n = collect(b, g, &covered);
        return fit(rows, n, out, OUT_CAP);
    }
    uint32_t mode;
    if (b->mode == SF_DIRECT)
        mode = SHM_DIRECT;
    else if (!region_empty(&b->stale)) {
        mode = SHM_RESYNC;
        region_union(g, &b->stale);
    } else
        mode = SHM_DIFF;
    uint32_t n = collect(b, g, &covered);
    uint32_t k = shm_commit_par(b->pool->mm, b->pool->shadow, rows, n, mode, MERGE_GAP, out, OUT_CAP, scratch,
                                stats);
    uint64_t examined = stats[0], changed = stats[1], sampled = stats[2];
    if (mode == SHM_DIFF) {
        if (examined >= MIN_DIRECT && changed * 10 > examined * 7) /* most of it changed: stop diffing */
            b->mode = SF_DIRECT;
    } else if (mode == SHM_RESYNC) {
        region_clear(&b->stale);
    } else {
        if (covered.full) {
            covered.full = 0, covered.n = 1;
            covered.r[0] = 0, covered.r[1] = 0, covered.r[2] = b->width, covered.r[3] = b->height;
        }
        region_union(&b->stale, &covered);
        if (sampled >= 2048 && changed * 2 < sampled) /* mostly repeats: diff again, after a resync */
            b->mode = SF_DIFF;
    }
    return k;
}

static struct sf_region *hist_find(struct sf_surface *s, uint32_t id, uint32_t gen)
{
    for (uint32_t i = 0; i < s->nhist; i++)
        if (s->hist[i].id == id && s->hist[i].gen == gen)
            return &s->hist[i].region;
    return NULL;
}

/* A new entry for buffer `id`; a full list forgets the oldest (sent whole when
 * next attached).  NULL without memory (this buffer is then always sent whole). */
static struct sf_region *hist_add(struct sf_surface *s, uint32_t id, uint32_t gen)
{
    if (!s->hist && !(s->hist = calloc(SF_HIST, sizeof *s->hist)))
        return NULL;
    if (s->nhist == SF_HIST)
        memmove(s->hist, s->hist + 1, (--s->nhist) * sizeof *s->hist);
    struct sf_missed *m = &s->hist[s->nhist++];
    m->id = id, m->gen = gen;
    return &m->region;
}

uint32_t sf_commit(struct sf_state *st, uint32_t id, struct sf_pool **pool)
{
    *pool = NULL;
    struct sf_surface *s = surface_of(st, id);
    if (!s)
        return 0;
    int attached = s->pending >= 0;
    if (attached)
        s->buffer = (uint32_t)s->pending;
    /* this commit's damage in buffer pixels, conservatively */
    struct sf_region damage = s->bdamage;
    if (!region_empty(&s->sdamage)) {
        if (s->transform != 0 || s->viewport || s->sdamage.full) {
            damage.full = 1;
        } else {
            int64_t k = s->scale;
            for (uint32_t i = 0; i < s->sdamage.n; i++) {
                const int32_t *r = s->sdamage.r + 4 * i;
                region_add(&damage, clamp32(r[0] * k), clamp32(r[1] * k), clamp32(r[2] * k), clamp32(r[3] * k));
            }
        }
    }
    s->pending = -1;
    region_clear(&s->sdamage);
    region_clear(&s->bdamage);
    struct sf_buffer *b = s->buffer ? map_get(&st->buffers, s->buffer) : NULL;
    if (!b || (!attached && region_empty(&damage)))
        return 0;
    /* what this buffer missed (all of it if never sent), plus this damage */
    struct sf_region region = {0, 1, {0}};
    struct sf_region *mine = hist_find(s, s->buffer, b->gen);
    if (mine)
        region = *mine;
    region_union(&region, &damage);
    for (uint32_t i = 0; i < s->nhist; i++)
        if (&s->hist[i].region != mine)
            region_union(&s->hist[i].region, &damage);
    if (!mine)
        mine = hist_add(s, s->buffer, b->gen);
    if (mine)
        region_clear(mine);
    *pool = b->pool;
    return transfer(st, b, &region);
}

/* -- the read-and-forward path ------------------------------------------------ */
int sf_apply(struct sf_state *st, const uint8_t *buf, const struct wlc_rec *recs, uint32_t n,
             uint32_t *split, uint32_t *nspans, struct sf_pool **pool)
{
    uint32_t commits = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct wlc_rec *r = &recs[i];
        if (r->nfds)
            return 0;
        if (r->kind == WLC_REC_PASS)
            continue;
        if (r->kind != WLC_REC_MSG || r->iface != st->iface)
            return 0;
        if (r->opcode == st->op_commit)
            commits++;
        else if (r->opcode != st->op_attach && r->opcode != st->op_damage && r->opcode != st->op_damage_buffer)
            return 0;
    }
    if (commits > 1)
        return 0;
    *split = 0, *nspans = 0, *pool = NULL;
    for (uint32_t i = 0; i < n; i++) {
        const struct wlc_rec *r = &recs[i];
        if (r->kind == WLC_REC_PASS)
            continue;
        uint32_t k = sf_request(st, buf + r->start, r->len, pool);
        if (r->opcode == st->op_commit)
            *split = r->start, *nspans = k;
    }
    return 1;
}

/* The one place wl_surface's attach, damage, damage_buffer and commit are
 * decoded, for the read-and-forward path (sf_apply) and the Python path alike. */
uint32_t sf_request(struct sf_state *st, const uint8_t *msg, uint32_t len, struct sf_pool **pool)
{
    uint32_t obj, word;
    *pool = NULL;
    if (len < 8)
        return 0;
    memcpy(&obj, msg, 4);
    memcpy(&word, msg + 4, 4);
    uint16_t op = word & 0xffff;
    const uint8_t *a = msg + 8;
    if (op == st->op_commit)
        return sf_commit(st, obj, pool);
    if (op == st->op_attach && len >= 8 + 12) { /* buffer, x, y */
        uint32_t bid;
        memcpy(&bid, a, 4);
        sf_attach(st, obj, bid);
    } else if ((op == st->op_damage || op == st->op_damage_buffer) && len >= 8 + 16) { /* x, y, w, h */
        int32_t v[4];
        memcpy(v, a, sizeof v);
        sf_damage(st, obj, op == st->op_damage_buffer, v[0], v[1], v[2], v[3]);
    }
    return 0;
}
