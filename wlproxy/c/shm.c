/* Damage-rect copying and shadow diffing for mirrored wl_shm pools; see shm.h. */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#include "shm.h"

#define MAX_RECTS 256

static void emit(struct shm_span *out, uint32_t *n, uint32_t cap, uint64_t off, uint32_t len)
{
    if (len == 0)
        return;
    if (*n > 0 && out[*n - 1].offset + out[*n - 1].len == off &&
        (uint64_t)out[*n - 1].len + len < 0x80000000u) {
        out[*n - 1].len += len;
        return;
    }
    if (*n < cap) {
        out[*n].offset = off;
        out[*n].len = len;
        (*n)++;
    }
}

/* Turn damage rects (x, y, w, h in buffer pixels, 4 ints each) into byte
 * spans of the pool covering their union, row by row, clipped to the buffer.
 * Rows that touch in memory merge into one span.  Returns the span count, or
 * out_cap + 1 if `out` was too small. */
uint32_t shm_collect_rows(uint64_t buf_offset, uint32_t stride, uint32_t bpp, uint32_t width,
                          uint32_t height, const int32_t *rects, uint32_t nrects,
                          struct shm_span *out, uint32_t out_cap)
{
    int32_t x0[MAX_RECTS], x1[MAX_RECTS], y0[MAX_RECTS], y1[MAX_RECTS];
    uint32_t k = 0, n = 0;
    int32_t ymin = INT32_MAX, ymax = 0;
    if (nrects > MAX_RECTS) {
        /* too many to track: damage the whole buffer */
        nrects = 0;
        x0[0] = 0, x1[0] = (int32_t)width, y0[0] = 0, y1[0] = (int32_t)height;
        k = 1;
    }
    for (uint32_t i = 0; i < nrects; i++) {
        int64_t a = rects[4 * i], b = rects[4 * i + 1];
        int64_t c = a + (int64_t)rects[4 * i + 2], d = b + (int64_t)rects[4 * i + 3];
        if (a < 0) a = 0;
        if (b < 0) b = 0;
        if (c > width) c = width;
        if (d > height) d = height;
        if (a >= c || b >= d)
            continue;
        x0[k] = (int32_t)a, x1[k] = (int32_t)c, y0[k] = (int32_t)b, y1[k] = (int32_t)d;
        k++;
    }
    for (uint32_t i = 0; i < k; i++) {
        if (y0[i] < ymin) ymin = y0[i];
        if (y1[i] > ymax) ymax = y1[i];
    }
    int32_t ix0[MAX_RECTS], ix1[MAX_RECTS];
    for (int32_t y = ymin; y < ymax; y++) {
        uint32_t m = 0;
        for (uint32_t i = 0; i < k; i++) {
            if (y < y0[i] || y >= y1[i])
                continue;
            /* insertion sort by start */
            uint32_t j = m++;
            while (j > 0 && ix0[j - 1] > x0[i]) {
                ix0[j] = ix0[j - 1], ix1[j] = ix1[j - 1];
                j--;
            }
            ix0[j] = x0[i], ix1[j] = x1[i];
        }
        uint64_t row = buf_offset + (uint64_t)y * stride;
        int32_t cs = -1, ce = -1;
        for (uint32_t i = 0; i < m; i++) {
            if (cs >= 0 && ix0[i] <= ce) {
                if (ix1[i] > ce) ce = ix1[i];
                continue;
            }
            if (cs >= 0)
                emit(out, &n, out_cap + 1, row + (uint64_t)cs * bpp, (uint32_t)(ce - cs) * bpp);
            cs = ix0[i], ce = ix1[i];
        }
        if (cs >= 0)
            emit(out, &n, out_cap + 1, row + (uint64_t)cs * bpp, (uint32_t)(ce - cs) * bpp);
        if (n > out_cap)
            return out_cap + 1;
    }
    return n;
}

#define BLOCK 64

#define CHUNK 4096
#define SAMPLE_EVERY 16384 /* one sample per 16 KiB of damage ... */
#define SAMPLE_LEN 256     /* ... of 256 bytes: 1/64 of the memory */

/* Diff one span [p, end) against the shadow: 4 KiB memcmp first, 64-byte
 * blocks only inside the 4 KiB pieces that differ; differing blocks go to the
 * shadow, runs of them (gaps up to merge_gap bridged, within this span only)
 * to `out`.  Keeps one slot of `out` free: returns 1, with *from set, when
 * it would need it (the caller then sends everything from *from on whole). */
static int diff_span(const uint8_t *pool, uint8_t *shadow, uint64_t p, uint64_t end, uint32_t merge_gap,
                     struct shm_span *out, uint32_t *n, uint32_t out_cap, uint64_t *changed, uint64_t *from)
{
    uint64_t run_start = 0, run_end = 0;
    int in_run = 0;
    while (p < end) {
        uint64_t q = (p + CHUNK) & ~(uint64_t)(CHUNK - 1);
        if (q > end)
            q = end;
        if (memcmp(pool + p, shadow + p, q - p) != 0) {
            for (uint64_t b = p; b < q;) {
                uint64_t bq = (b + BLOCK) & ~(uint64_t)(BLOCK - 1);
                if (bq > q)
                    bq = q;
                if (memcmp(pool + b, shadow + b, bq - b) != 0) {
                    if (in_run && b - run_end <= merge_gap) {
                        run_end = bq;
                    } else {
                        if (in_run) {
                            if (*n + 2 > out_cap) {
                                *from = run_start;
                                return 1;
                            }
                            emit(out, n, out_cap, run_start, (uint32_t)(run_end - run_start));
                        }
                        run_start = b, run_end = bq, in_run = 1;
                    }
                    memcpy(shadow + b, pool + b, bq - b);
                    *changed += bq - b;
                }
                b = bq;
            }
        }
        p = q;
    }
    if (in_run) {
        if (*n + 2 > out_cap) {
            *from = run_start;
            return 1;
        }
        emit(out, n, out_cap, run_start, (uint32_t)(run_end - run_start));
    }
    return 0;
}

/* One commit of one buffer, given its damaged row spans (shm_collect_rows):
 *  SHM_DIFF:   the sub-spans that differ from the shadow go to `out`; the
 *              shadow is brought up to date.  stats[1] = changed bytes.
 *  SHM_DIRECT: the row spans go to `out` as they are; 1/64 of them (256
 *              bytes every 16 KiB of damage) is compared with the shadow and
 *              copied into it: stats[1] = changed of stats[2] sampled bytes,
 *              to tell when diffing would pay again.
 *  SHM_RESYNC: the row spans go to `out` and are copied into the shadow.
 * stats[0] = bytes examined.  When `out` fills up, the last span covers
 * everything from there to the end of the last row and is copied into the
 * shadow too, so the shadow never differs from what the host was sent.
 * Returns the number of spans in `out` (out_cap >= 2). */
uint32_t shm_commit(const uint8_t *pool, uint8_t *shadow, const struct shm_span *rows, uint32_t nrows,
                    uint32_t mode, uint32_t merge_gap, struct shm_span *out, uint32_t out_cap, uint64_t *stats)
{
    uint32_t n = 0;
    uint64_t examined = 0, changed = 0, sampled = 0, acc = 0;
    stats[0] = stats[1] = stats[2] = 0;
    if (nrows == 0 || out_cap < 2)
        return 0;
    uint64_t last_end = rows[nrows - 1].offset + rows[nrows - 1].len;
    for (uint32_t i = 0; i < nrows; i++) {
        uint64_t off = rows[i].offset, end = off + rows[i].len, from = off;
        int full = n + 2 > out_cap;
        if (!full && mode == SHM_DIFF)
            full = diff_span(pool, shadow, off, end, merge_gap, out, &n, out_cap, &changed, &from);
        if (full) {
            /* out of room: one last span to the end, into the shadow too */
            memcpy(shadow + from, pool + from, last_end - from);
            changed += last_end - from;
            for (uint32_t j = i; j < nrows; j++)
                examined += rows[j].len;
            emit(out, &n, out_cap, from, (uint32_t)(last_end - from));
            break;
        }
        examined += rows[i].len;
        if (mode == SHM_DIFF)
            continue;
        emit(out, &n, out_cap, off, rows[i].len);
        if (mode == SHM_RESYNC) {
            memcpy(shadow + off, pool + off, rows[i].len);
            changed += rows[i].len;
            continue;
        }
        /* SHM_DIRECT: a sample at every SAMPLE_EVERY bytes of damage */
        uint64_t next = (acc + SAMPLE_EVERY - 1) / SAMPLE_EVERY * SAMPLE_EVERY;
        while (next < acc + rows[i].len) {
            uint64_t b = off + (next - acc), e = b + SAMPLE_LEN;
            if (e > end)
                e = end;
            sampled += e - b;
            if (memcmp(pool + b, shadow + b, e - b) != 0) {
                changed += e - b;
                memcpy(shadow + b, pool + b, e - b);
            }
            next += SAMPLE_EVERY;
        }
        acc += rows[i].len;
    }
    stats[0] = examined;
    stats[1] = changed;
    stats[2] = sampled;
    return n;
}

/* -- the same on two cores -------------------------------------------------
 * A DIFF or RESYNC pass over a large buffer is bound by memory bandwidth,
 * and the second core is idle meanwhile (the client waits for the commit,
 * the host for the bytes): one worker thread takes the second half of the
 * damage (split at a 4 KiB boundary, so the halves never share a block).
 * Below PAR_MIN bytes the hand-over costs more than it saves. */

#define PAR_MIN (2u << 20)
#define PAR_ROWS 8193

struct par_job {
    const uint8_t *pool;
    uint8_t *shadow;
    const struct shm_span *rows;
    uint32_t nrows, mode, merge_gap, out_cap, n;
    struct shm_span *out;
    uint64_t stats[3];
};

static pthread_mutex_t par_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t par_go = PTHREAD_COND_INITIALIZER;
static pthread_cond_t par_done = PTHREAD_COND_INITIALIZER;
static struct par_job *par_pending;
static int par_finished, par_state; /* 0: no worker yet, 1: running, -1: cannot start */
static struct shm_span par_rows_a[PAR_ROWS], par_rows_b[PAR_ROWS];

static void *par_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&par_mu);
    for (;;) {
        while (!par_pending)
            pthread_cond_wait(&par_go, &par_mu);
        struct par_job *j = par_pending;
        par_pending = NULL;
        pthread_mutex_unlock(&par_mu);
        j->n = shm_commit(j->pool, j->shadow, j->rows, j->nrows, j->mode, j->merge_gap, j->out, j->out_cap,
                          j->stats);
        pthread_mutex_lock(&par_mu);
        par_finished = 1;
        pthread_cond_signal(&par_done);
    }
    return NULL;
}

/* May this thread run on more than one CPU?  (Pinned to one, the worker would
 * only take turns with it.)  Asked per large pass: the affinity can change. */
static int two_cpus(void)
{
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) > 1;
}

static int par_ready(void)
{
    if (par_state == 0) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        par_state = pthread_create(&t, &a, par_main, NULL) == 0 ? 1 : -1;
        pthread_attr_destroy(&a);
    }
    return par_state == 1;
}

/* shm_commit, with the second half of a large DIFF or RESYNC on the worker
 * thread; `scratch` holds out_cap spans for it.  Not reentrant (one caller
 * thread). */
uint32_t shm_commit_par(const uint8_t *pool, uint8_t *shadow, const struct shm_span *rows, uint32_t nrows,
                        uint32_t mode, uint32_t merge_gap, struct shm_span *out, uint32_t out_cap,
                        struct shm_span *scratch, uint64_t *stats)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < nrows; i++)
        total += rows[i].len;
    if (mode == SHM_DIRECT || total < PAR_MIN || nrows >= PAR_ROWS || out_cap < 8 || !two_cpus() || !par_ready())
        return shm_commit(pool, shadow, rows, nrows, mode, merge_gap, out, out_cap, stats);
    /* the split: the first 4 KiB boundary past half the bytes */
    uint64_t half = total / 2, acc = 0;
    uint32_t i = 0;
    while (acc + rows[i].len <= half)
        acc += rows[i++].len;
    uint64_t cut = (rows[i].offset + (half - acc) + CHUNK - 1) & ~(uint64_t)(CHUNK - 1);
    uint64_t end_i = rows[i].offset + rows[i].len;
    uint32_t na = 0, nb = 0;
    for (uint32_t k = 0; k < i; k++)
        par_rows_a[na++] = rows[k];
    if (cut > rows[i].offset) {
        par_rows_a[na].offset = rows[i].offset;
        par_rows_a[na++].len = (uint32_t)((cut < end_i ? cut : end_i) - rows[i].offset);
    }
    if (cut < end_i) {
        par_rows_b[nb].offset = cut > rows[i].offset ? cut : rows[i].offset;
        par_rows_b[nb].len = (uint32_t)(end_i - par_rows_b[nb].offset);
        nb++;
    }
    for (uint32_t k = i + 1; k < nrows; k++)
        par_rows_b[nb++] = rows[k];
    struct par_job job = {pool, shadow, par_rows_b, nb, mode, merge_gap, out_cap / 2, 0, scratch, {0, 0, 0}};
    pthread_mutex_lock(&par_mu);
    par_finished = 0;
    par_pending = &job;
    pthread_cond_signal(&par_go);
    pthread_mutex_unlock(&par_mu);
    uint64_t st[3];
    uint32_t n = shm_commit(pool, shadow, par_rows_a, na, mode, merge_gap, out, out_cap / 2, st);
    pthread_mutex_lock(&par_mu);
    while (!par_finished)
        pthread_cond_wait(&par_done, &par_mu);
    pthread_mutex_unlock(&par_mu);
    for (uint32_t k = 0; k < job.n; k++)
        emit(out, &n, out_cap, scratch[k].offset, scratch[k].len);
    for (int k = 0; k < 3; k++)
        stats[k] = st[k] + job.stats[k];
    return n;
}
