/* surface: the guest half's model of a client's wl_surfaces and wl_shm
 * buffers, and what a commit must send (the damage, adaptive shadow diff). */

#define SF_RECTS 32   /* rects a region keeps; more collapse to their bounding box */
#define SF_HIST 8     /* buffers per surface whose missed damage is remembered */
#define SF_DIFF 0
#define SF_DIRECT 1

struct sf_pool {         /* one client pool as mapped by the guest half (owned by Python) */
    const uint8_t *mm;   /* NULL once released */
    uint8_t *shadow;     /* what the host was sent */
    uint64_t size;
    uint32_t key;
    uint32_t pad;
};

struct sf_state;

struct sf_state *sf_new(void);
void sf_free(struct sf_state *st);
void sf_set_diff(struct sf_state *st, uint32_t enabled);
/* which records of wl_surface the read-and-forward path handles itself */
void sf_set_ops(struct sf_state *st, uint16_t surface_iface, uint16_t attach, uint16_t damage,
                uint16_t damage_buffer, uint16_t commit);

int sf_surface_add(struct sf_state *st, uint32_t id);
void sf_surface_remove(struct sf_state *st, uint32_t id);
void sf_set_scale(struct sf_state *st, uint32_t id, int32_t scale);
void sf_set_transform(struct sf_state *st, uint32_t id, int32_t transform);
void sf_set_viewport(struct sf_state *st, uint32_t id);
int sf_buffer_add(struct sf_state *st, uint32_t id, struct sf_pool *pool, int32_t offset, int32_t width,
                  int32_t height, int32_t stride, uint32_t format, uint32_t bpp);
void sf_buffer_remove(struct sf_state *st, uint32_t id);
uint32_t sf_buffer_mode(struct sf_state *st, uint32_t id); /* SF_DIFF / SF_DIRECT; 2: no such buffer */

void sf_attach(struct sf_state *st, uint32_t id, uint32_t buffer);
void sf_damage(struct sf_state *st, uint32_t id, uint32_t in_buffer, int32_t x, int32_t y, int32_t w, int32_t h);
/* The commit of surface `id`: the spans of its buffer's pool to send, in
 * sf_spans(); returns their count.  *pool is the pool they are in. */
uint32_t sf_commit(struct sf_state *st, uint32_t id, struct sf_pool **pool);
const struct shm_span *sf_spans(struct sf_state *st);

/* The read-and-forward path's part: the records of one read (wlc_feed's)
 * when they are plain ranges and the wl_surface requests above only, with at
 * most one commit.  Applies them; returns 1 (else 0: nothing applied).
 * *split: where the commit starts in the buffer (the pixels go before it),
 * *nspans and *pool: what sf_commit gave. */
int sf_apply(struct sf_state *st, const uint8_t *buf, const struct wlc_rec *recs, uint32_t n,
             uint32_t *split, uint32_t *nspans, struct sf_pool **pool);
/* One wl_surface request (attach, damage, damage_buffer or commit; others are
 * ignored) of `len` bytes at msg, header included, applied to the model;
 * returns what sf_commit gives for a commit (0 otherwise), *pool as there. */
uint32_t sf_request(struct sf_state *st, const uint8_t *msg, uint32_t len, struct sf_pool **pool);
