/* The common case of a proxied connection in one C call; see fastpath.h. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "wlcodec.h"
#include "shm.h"
#include "surface.h"
#include "fastpath.h"

void fp_frame_header(uint8_t *h, uint32_t len, uint16_t type, uint32_t channel)
{
    uint16_t flags = 0;
    memcpy(h, &len, 4); /* little-endian hosts only, as the rest of the link code */
    memcpy(h + 4, &type, 2);
    memcpy(h + 6, &flags, 2);
    memcpy(h + 8, &channel, 4);
}

/* One recvmsg into buf[filled, cap), its fds into fds[] (r->nfds); fds past
 * fds_cap are closed and r->truncated set.  Returns the bytes read or -errno. */
static ssize_t read_once(int fd, uint8_t *buf, uint32_t cap, uint32_t filled, int32_t *fds,
                         uint32_t fds_cap, struct fp_read *r)
{
    union {
        struct cmsghdr h;
        uint8_t space[CMSG_SPACE(253 * sizeof(int32_t))];
    } ctl;
    struct iovec iov = {buf + filled, cap - filled};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.space;
    m.msg_controllen = sizeof ctl.space;
    ssize_t n;
    do
        n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        uint32_t k = (uint32_t)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int32_t));
        const uint8_t *d = CMSG_DATA(h);
        for (uint32_t i = 0; i < k; i++) {
            int32_t v;
            memcpy(&v, d + i * sizeof v, sizeof v);
            if (r->nfds < fds_cap)
                fds[r->nfds++] = v;
            else {
                close(v);
                r->truncated = 1;
            }
        }
    }
    if (m.msg_flags & MSG_CTRUNC)
        r->truncated = 1;
    return n;
}

/* Room for the headers of one forwarded read's frames. */
struct fp_heads {
    uint8_t data[2][12];
    uint8_t shm[FP_SMALL_SPANS][28];
};

/* The one description of how the first `used` bytes of buf go to the link:
 * r->prefix, DATA (the messages before the commit), SHM_DATA per span of
 * r->pool, DATA (the rest).  Fills w (4 + 2 * FP_SMALL_SPANS + 2 entries),
 * headers in h; returns the count. */
static uint32_t frames_iov(const uint8_t *buf, uint32_t used, const struct shm_span *spans,
                           const struct fp_read *r, struct iovec *w, struct fp_heads *h)
{
    uint32_t nw = 0, before = r->nspans ? r->split : used;
    if (r->prefix_len)
        w[nw++] = (struct iovec){(void *)r->prefix, r->prefix_len};
    if (before) {
        fp_frame_header(h->data[0], before, FP_LINK_DATA, r->channel);
        w[nw++] = (struct iovec){h->data[0], 12};
        w[nw++] = (struct iovec){(void *)buf, before};
    }
    for (uint32_t i = 0; i < r->nspans; i++) {
        uint32_t zero = 0;
        fp_frame_header(h->shm[i], 16 + spans[i].len, FP_LINK_SHM_DATA, r->channel);
        memcpy(h->shm[i] + 12, &r->pool->key, 4);
        memcpy(h->shm[i] + 16, &zero, 4);
        memcpy(h->shm[i] + 20, &spans[i].offset, 8);
        w[nw++] = (struct iovec){h->shm[i], 28};
        w[nw++] = (struct iovec){(void *)(r->pool->mm + spans[i].offset), spans[i].len};
    }
    if (used > before) {
        fp_frame_header(h->data[1], used - before, FP_LINK_DATA, r->channel);
        w[nw++] = (struct iovec){h->data[1], 12};
        w[nw++] = (struct iovec){(void *)(buf + before), used - before};
    }
    return nw;
}

static void write_frames(const uint8_t *buf, uint32_t used, const struct shm_span *spans,
                         struct fp_read *r)
{
    struct iovec w[4 + 2 * FP_SMALL_SPANS + 2];
    struct fp_heads h;
    uint32_t nw = frames_iov(buf, used, spans, r, w, &h);
    r->total = 0;
    for (uint32_t i = 0; i < nw; i++)
        r->total += w[i].iov_len;
    ssize_t s;
    do
        s = writev(r->link_fd, w, (int)nw);
    while (s < 0 && errno == EINTR);
    r->written = s < 0 ? -(int64_t)errno : (int64_t)s;
    r->forwarded = used; /* the caller queues what writev did not take, then drops them from buf */
    r->nrecs = 0;
}

void fp_unsent(const uint8_t *buf, const struct fp_read *r, uint8_t *out)
{
    struct iovec w[4 + 2 * FP_SMALL_SPANS + 2];
    struct fp_heads h;
    const struct shm_span *spans = r->nspans ? sf_spans(r->sf) : NULL;
    uint32_t nw = frames_iov(buf, r->forwarded, spans, r, w, &h);
    uint64_t skip = r->written > 0 ? (uint64_t)r->written : 0;
    for (uint32_t i = 0; i < nw; i++) {
        if (skip >= w[i].iov_len) {
            skip -= w[i].iov_len;
            continue;
        }
        size_t n = w[i].iov_len - skip;
        memcpy(out, (const uint8_t *)w[i].iov_base + skip, n);
        out += n;
        skip = 0;
    }
}

/* Read once from `fd` into buf[*filled, cap) (fds into `fds`), validate
 * everything buffered with the codec, and when that is one run of messages
 * that pass, without fds, within r->room and r->link_fd >= 0: write
 * r->prefix, a DATA frame header and the messages to the link with one
 * writev (r->forwarded, r->written; the caller drops them from the buffer).
 * With r->sf, records that are a frame's wl_surface requests are applied to
 * that model (r->applied, see sf_apply) and go the same way, the commit's
 * pixels as SHM_DATA frames before it when they are small; else the caller
 * queues them.  Otherwise the records are left in `out` for the caller
 * (r->nrecs, r->consumed) and the buffer is untouched but for the new bytes. */
void fp_read_forward(struct wlc_conn *c, int dir, int fd, uint8_t *buf, uint32_t cap, uint32_t *filled,
                     int32_t *fds, uint32_t fds_cap, struct fp_read *r, struct wlc_rec *out, uint32_t out_cap)
{
    r->nfds = r->truncated = r->nrecs = r->consumed = r->forwarded = 0;
    r->applied = r->split = r->nspans = 0;
    r->pool = NULL;
    r->written = 0;
    ssize_t n = read_once(fd, buf, cap, *filled, fds, fds_cap, r);
    r->nread = (int32_t)n;
    if (n < 0 || r->truncated || (n == 0 && r->nfds == 0))
        return;
    *filled += (uint32_t)n;
    uint32_t used = 0;
    uint32_t k = wlc_feed(c, dir, buf, *filled, r->nfds, out, out_cap, &used);
    r->nrecs = k;
    r->consumed = used;
    if (r->nfds)
        return;
    int plain = k == 1 && out[0].kind == WLC_REC_PASS && !out[0].nfds;
    if (!plain) {
        /* a frame's wl_surface requests: applied here, with nothing else intercepted among them */
        if (!r->sf || k == 0 || k >= out_cap - 1 ||
            !sf_apply(r->sf, buf, out, k, &r->split, &r->nspans, &r->pool))
            return;
        r->applied = 1;
        r->nrecs = 0;
    }
    if (r->link_fd < 0 || used > r->room || r->nspans > FP_SMALL_SPANS)
        return;
    const struct shm_span *spans = r->nspans ? sf_spans(r->sf) : NULL;
    uint64_t pixels = 0;
    for (uint32_t i = 0; i < r->nspans; i++)
        pixels += spans[i].len;
    if (pixels <= FP_SMALL_PIXELS)
        write_frames(buf, used, spans, r);
}

static struct fp_chan *touch(struct fp_chan *slots, uint32_t k, struct fp_scan *s)
{
    struct fp_chan *c = &slots[k];
    if (!c->touched) {
        c->touched = 1;
        s->touched[s->ntouched++] = k;
    }
    return c;
}

/* Send the run of DATA payloads; 0 when all went, else FP_STOP_SHORT (the
 * channel is no longer fast: the caller queues the rest). */
static uint32_t send_run(struct fp_chan *slots, const uint8_t *buf, struct fp_scan *s)
{
    struct iovec iov[FP_RUN_MAX];
    uint64_t total = 0;
    for (uint32_t i = 0; i < s->run_n; i++) {
        iov[i].iov_base = (void *)(buf + s->run_off[i]);
        iov[i].iov_len = s->run_len[i];
        total += s->run_len[i];
    }
    struct msghdr m = {0};
    m.msg_iov = iov;
    m.msg_iovlen = s->run_n;
    struct fp_chan *c = &slots[s->run_slot];
    ssize_t w;
    do
        w = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w > 0)
        c->sends++;
    if (w >= 0 && (uint64_t)w == total) {
        s->run_n = 0;
        return 0;
    }
    c->fast = 0;
    s->slot = s->run_slot;
    s->sent = w < 0 ? -(int64_t)errno : (int64_t)w;
    return FP_STOP_SHORT;
}

/* What a frame handler tells fp_link_scan: go on to the next frame, wait
 * for more input (the frame is not all here), or stop before this frame
 * (s->stop set: the Python decoder takes it from there). */
enum { STEP_NEXT, STEP_WAIT, STEP_STOP };

static int stop_frame(struct fp_scan *s)
{
    s->stop = FP_STOP_FRAME;
    return STEP_STOP;
}

static struct fp_pool *find_pool(const struct fp_scan *s, uint32_t ch, uint32_t key)
{
    for (uint32_t i = 0; i < s->npools; i++)
        if (s->pools[i]->ch == ch && s->pools[i]->key == key)
            return s->pools[i];
    return NULL;
}

/* SHM_DATA at buf+*pos: pixels for a pool this table knows, copied in.  All
 * of them must be in this buffer, unless s->stream_ok: then the rest comes
 * straight into the pool (s->shm_pool, shm_off, shm_left). */
static int shm_frame(const uint8_t *buf, uint32_t len, uint32_t *pos, uint32_t flen, uint32_t ch,
                     struct fp_scan *s)
{
    const uint8_t *f = buf + *pos;
    uint32_t key, pad;
    uint64_t off;
    if (flen < 16 || flen - 16 > s->max_shm)
        return stop_frame(s);
    if (len - *pos < 28 || (len - *pos - 12 < flen && !s->stream_ok))
        return STEP_WAIT;
    memcpy(&key, f + 12, 4);
    memcpy(&pad, f + 16, 4);
    memcpy(&off, f + 20, 8);
    struct fp_pool *pl = find_pool(s, ch, key);
    uint64_t plen = flen - 16;
    if (pad || !pl || !pl->base || off > pl->size || plen > pl->size - off)
        return stop_frame(s);
    uint32_t have = len - *pos - 28;
    if (have < plen) {
        memcpy(pl->base + off, f + 28, have);
        s->shm_pool = pl;
        s->shm_off = off + have;
        s->shm_left = plen - have;
        *pos = len;
        return STEP_WAIT;
    }
    memcpy(pl->base + off, f + 28, plen);
    *pos += 12 + flen;
    return STEP_NEXT;
}

/* CREDIT at buf+*pos for slot k: added up in the slot. */
static int credit_frame(struct fp_chan *slots, uint32_t k, const uint8_t *buf, uint32_t len, uint32_t *pos,
                        uint32_t flen, struct fp_scan *s)
{
    uint32_t v;
    if (flen != 4)
        return stop_frame(s);
    if (len - *pos < 16)
        return STEP_WAIT;
    memcpy(&v, buf + *pos + 12, 4);
    if ((uint64_t)slots[k].credit + v > UINT32_MAX)
        return stop_frame(s);
    touch(slots, k, s)->credit += v;
    *pos += 16;
    return STEP_NEXT;
}

/* Walk the complete frames at the start of buf[0:len] (link input, with
 * HELLO done and nothing buffered before it).  CREDIT frames and DATA frames
 * of channels in `slots` (at ch % nslots) are handled here: credits add up;
 * SHM_DATA for a pool in s->pools is copied into it (host side); DATA of a
 * `fast` channel is validated by its codec and, when it passes whole, joins a run of that channel's payloads that goes to its local
 * socket in one sendmsg (when the input ends, or another channel's DATA
 * follows).  The walk stops before any other frame (or anything not quite
 * right, which the Python decoder then reports), or after a DATA frame that
 * Python must act on; a run not yet sent is then left to Python (run_n), to
 * go out with what Python adds.  Returns the bytes consumed. */
uint32_t fp_link_scan(struct fp_chan *slots, uint32_t nslots, const uint8_t *buf, uint32_t len,
                      struct fp_scan *s, struct wlc_rec *recs, uint32_t rcap)
{
    uint32_t pos = 0;
    s->ntouched = 0;
    s->stop = FP_STOP_NONE;
    s->run_n = 0;
    while (len - pos >= 12 && s->ntouched < FP_SCAN_TOUCHED) {
        uint32_t flen, ch;
        uint16_t type, flags;
        memcpy(&flen, buf + pos, 4);
        memcpy(&type, buf + pos + 4, 2);
        memcpy(&flags, buf + pos + 6, 2);
        memcpy(&ch, buf + pos + 8, 4);
        if (type == FP_LINK_SHM_DATA && !flags && ch && s->max_shm) {
            int step = shm_frame(buf, len, &pos, flen, ch, s);
            if (step == STEP_STOP)
                return pos;
            if (step == STEP_WAIT)
                break;
            continue;
        }
        uint32_t k = ch % nslots;
        struct fp_chan *c = &slots[k];
        if (flags || ch == 0 || (type != FP_LINK_DATA && type != FP_LINK_CREDIT) || c->ch != ch) {
            s->stop = FP_STOP_FRAME;
            return pos;
        }
        if (type == FP_LINK_CREDIT) {
            int step = credit_frame(slots, k, buf, len, &pos, flen, s);
            if (step == STEP_STOP)
                return pos;
            if (step == STEP_WAIT)
                break;
            continue;
        }
        if (flen > s->max_data || !c->fast || (uint64_t)c->data + flen > c->room) {
            s->stop = FP_STOP_FRAME;
            return pos;
        }
        if (len - pos - 12 < flen)
            break;
        if (s->run_n && (s->run_slot != k || s->run_n == FP_RUN_MAX)) {
            if ((s->stop = send_run(slots, buf, s)))
                return pos;
        }
        const uint8_t *p = buf + pos + 12;
        touch(slots, k, s)->data += flen;
        pos += 12 + flen;
        if (flen == 0)
            continue;
        uint32_t used = 0;
        uint32_t n = wlc_feed(c->codec, c->dir, p, flen, 0, recs, rcap, &used);
        if (n != 1 || recs[0].kind != WLC_REC_PASS || recs[0].nfds || recs[0].len != flen) {
            c->fast = 0;
            s->stop = FP_STOP_RECORDS;
            s->slot = k;
            s->off = pos - flen;
            s->len = flen;
            s->nrecs = n;
            s->consumed = used;
            return pos;
        }
        if (!s->run_n)
            s->run_slot = k;
        s->run_off[s->run_n] = pos - flen;
        s->run_len[s->run_n++] = flen;
    }
    if (s->run_n)
        s->stop = send_run(slots, buf, s);
    return pos;
}
