/* The event loop's turns that need nothing from Python; see fastloop.h. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "wlcodec.h"
#include "shm.h"
#include "surface.h"
#include "fastpath.h"
#include "fastloop.h"

#define FL_READ_BUDGET (1u << 20) /* link bytes read per readiness, at most (as Python's reader) */
#define FL_EPOLL_MAX 64

enum { HANDLED, PLAIN, PYTHON }; /* what became of one readiness event */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Count the client's requests and objects since the last call: a token
 * bucket of `rate` per second up to `burst` pays for requests, and the VM's
 * object total follows this client's.  The same arithmetic as before the
 * loop moved here, for every caller. */
int fl_account(struct fl_acct *a, struct wlc_conn *c)
{
    double now = now_s();
    uint64_t n = wlc_message_count(c, 0);
    double t = a->tokens + (now - a->t_last) * a->rate;
    a->tokens = (t < a->burst ? t : a->burst) - (double)(n - a->msgs_seen);
    a->t_last = now;
    a->msgs_seen = n;
    int64_t objs = wlc_object_count(c);
    *a->vm_objects += objs - a->objects;
    a->objects = objs;
    if (a->tokens < 0)
        return FL_ACCT_RATE;
    return *a->vm_objects > a->vm_limit ? FL_ACCT_OBJECTS : FL_ACCT_OK;
}

int fl_watch(struct fl_loop *F, int fd, uint32_t kind, struct fl_link *link, uint32_t slot)
{
    if (fd < 0)
        return -1;
    if ((uint32_t)fd >= F->nents) {
        uint32_t n = F->nents ? F->nents : 64;
        while (n <= (uint32_t)fd)
            n *= 2;
        struct fl_ent *e = realloc(F->ents, n * sizeof *e);
        if (!e)
            return -1;
        memset(e + F->nents, 0, (n - F->nents) * sizeof *e);
        F->ents = e;
        F->nents = n;
    }
    F->ents[fd] = (struct fl_ent){link, slot, kind};
    return 0;
}

void fl_unwatch(struct fl_loop *F, int fd)
{
    if (fd >= 0 && (uint32_t)fd < F->nents)
        F->ents[fd].kind = FL_ENT_NONE;
}

void fl_free(struct fl_loop *F)
{
    free(F->ents);
    F->ents = NULL;
    F->nents = 0;
}

static void put(struct fl_ev *out, uint32_t *nout, int fd, uint32_t events, uint32_t kind, uint32_t arg)
{
    out[(*nout)++] = (struct fl_ev){fd, events, kind, arg};
}

/* Apply a whole scan's results (credits granted, DATA delivered) as
 * Python would: credits shrink what is unacknowledged, delivered DATA is
 * credited back with a CREDIT frame held for the next write, and on the
 * host the client's requests are accounted.  0, with nothing changed, when
 * one of the channels needs Python for it. */
static int apply_scan(struct fl_link *L, struct fl_ev *out, uint32_t *nout, uint32_t cap)
{
    struct fp_scan *s = L->scan;
    uint32_t need = 0;
    for (uint32_t i = 0; i < s->ntouched; i++) {
        struct fp_chan *c = &L->slots[s->touched[i]];
        if (c->credit && (c->credit > c->unacked || !c->lfast))
            return 0; /* a violation to report, or queued output to release */
        if (c->data)
            need += 16;
    }
    if (L->held_len + need > FL_HELD || *nout + s->ntouched + 2 > cap)
        return 0;
    for (uint32_t i = 0; i < s->ntouched; i++) {
        struct fp_chan *c = &L->slots[s->touched[i]];
        c->unacked -= c->credit;
        if (c->data) {
            uint8_t *h = L->held + L->held_len;
            fp_frame_header(h, 4, FP_LINK_CREDIT, c->ch);
            memcpy(h + 12, &c->data, 4);
            L->held_len += 16;
            L->lazy += c->data;
            int rc = c->acct ? fl_account(c->acct, c->codec) : FL_ACCT_OK;
            if (rc != FL_ACCT_OK)
                put(out, nout, c->fd, 0, FL_EV_ACCOUNT, (uint32_t)rc);
        }
        c->credit = c->data = c->touched = 0;
    }
    if (L->lazy >= L->lazy_max)
        put(out, nout, L->fd, 0, FL_EV_KICK, 0);
    return 1;
}

/* One read of the link: straight into a pool for the rest of an SHM_DATA
 * payload the scan began to stream (with what follows it into buf), else
 * into buf.  Returns the bytes read, of which *rest landed in buf. */
static ssize_t link_read(struct fl_link *L, uint32_t *rest, uint64_t *asked)
{
    struct fp_scan *s = L->scan;
    ssize_t n;
    if (!s->shm_left) {
        *asked = L->cap;
        do
            n = read(L->fd, L->buf, L->cap);
        while (n < 0 && errno == EINTR);
        *rest = n > 0 ? (uint32_t)n : 0;
        return n;
    }
    struct fp_pool *pl = s->shm_pool;
    int into_pool = pl && pl->base && s->shm_off <= pl->size && s->shm_left <= pl->size - s->shm_off;
    struct iovec iov[2] = {{into_pool ? pl->base + s->shm_off : L->buf, s->shm_left}, {L->buf, L->cap}};
    int cnt = 2;
    if (!into_pool) { /* the pool went away meanwhile: drop the bytes */
        if (iov[0].iov_len > L->cap)
            iov[0].iov_len = L->cap;
        cnt = iov[0].iov_len < s->shm_left ? 1 : 2;
    }
    *asked = iov[0].iov_len + (cnt == 2 ? L->cap : 0);
    do
        n = readv(L->fd, iov, cnt);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            s->shm_left = 0, s->shm_pool = NULL; /* the link is over: Python's reader meets the end itself */
        *rest = 0;
        return n;
    }
    uint64_t k = (uint64_t)n < iov[0].iov_len ? (uint64_t)n : iov[0].iov_len;
    s->shm_off += k;
    s->shm_left -= k;
    if (!s->shm_left)
        s->shm_pool = NULL;
    *rest = (uint32_t)((uint64_t)n - k); /* at buf[0]: dropped bytes went there first, then these */
    return n;
}

static int link_readable(struct fl_link *L, struct fl_ev *out, uint32_t *nout, uint32_t cap)
{
    struct fp_scan *s = L->scan;
    if (!L->reader_idle && !s->shm_left)
        return PLAIN;
    for (uint64_t got = 0; got < FL_READ_BUDGET;) {
        uint32_t rest;
        uint64_t asked;
        ssize_t n = link_read(L, &rest, &asked);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return HANDLED;
        if (n <= 0)
            return PLAIN; /* Python's reader meets the end or the error itself */
        got += (uint64_t)n;
        if (rest) {
            uint32_t before = *nout;
            s->stream_ok = 1;
            uint32_t k = fp_link_scan(L->slots, L->nslots, L->buf, rest, s, L->recs, L->rcap);
            s->stream_ok = 0;
            if (k != rest || s->stop != FP_STOP_NONE || !apply_scan(L, out, nout, cap)) {
                L->nread = rest;
                L->scanned = k;
                put(out, nout, L->fd, EPOLLIN, FL_EV_LINK, 0);
                return PYTHON;
            }
            if (*nout != before)
                return PYTHON;
        }
        if ((uint64_t)n < asked)
            return HANDLED; /* ran dry */
    }
    return HANDLED; /* level-triggered: the rest comes on the next turn */
}

static int local_readable(struct fl_link *L, struct fp_chan *c, int fd, struct fl_ev *out, uint32_t *nout)
{
    struct fp_read *r = c->rd;
    uint32_t room = c->peer_window > c->unacked ? c->peer_window - c->unacked : 0;
    if (room > L->scan->max_data)
        room = L->scan->max_data;
    r->link_fd = L->fd;
    r->channel = c->ch;
    r->room = room;
    r->prefix = L->held;
    r->prefix_len = L->held_len;
    *c->lfilled = 0;
    fp_read_forward(c->codec, c->dir ^ 1, fd, c->lbuf, c->lcap, c->lfilled, c->lfds, FL_FDS_PER_READ, r,
                    c->lrecs, c->lrcap);
    if (r->nread == -EAGAIN || r->nread == -EWOULDBLOCK)
        return HANDLED;
    if (r->nread > 0 && r->forwarded && !r->nfds && !r->truncated && r->written >= 0 &&
        (uint64_t)r->written == r->total && *c->lfilled == r->forwarded) {
        c->unacked += r->forwarded;
        L->held_len = 0;
        L->lazy = 0;
        return HANDLED;
    }
    put(out, nout, fd, EPOLLIN, FL_EV_LOCAL, 0);
    return PYTHON;
}

/* Wait for the loop's fds like epoll_wait and handle what needs nothing from
 * Python; returns the events left for Python in out[] (at most cap, which
 * must be at least 2 * 64 + 2), 0 when the time ran out or a signal came,
 * or -errno.  Once one event went to Python, the rest of that batch do too,
 * so that Python sees them in order. */
int fl_poll(struct fl_loop *F, int timeout_ms, struct fl_ev *out, uint32_t cap)
{
    struct epoll_event ev[FL_EPOLL_MAX];
    double deadline = timeout_ms > 0 ? now_s() + timeout_ms / 1000.0 : 0;
    for (;;) {
        int n = epoll_wait(F->epfd, ev, FL_EPOLL_MAX, timeout_ms);
        if (n < 0)
            return errno == EINTR ? 0 : -errno;
        uint32_t nout = 0;
        int python = 0;
        for (int i = 0; i < n; i++) {
            int fd = ev[i].data.fd;
            uint32_t e = ev[i].events;
            struct fl_ent *en = fd >= 0 && (uint32_t)fd < F->nents ? &F->ents[fd] : NULL;
            int st = PLAIN;
            if (en && en->kind == FL_ENT_LINK && en->link->scan->shm_left) {
                /* in the middle of a payload only C reads the link (if Python has this turn,
                 * the level-triggered readiness comes back); the rest of the event is Python's */
                st = python ? HANDLED : link_readable(en->link, out, &nout, cap);
                if (st != PLAIN && (e & ~(uint32_t)EPOLLIN)) {
                    put(out, &nout, fd, e & ~(uint32_t)EPOLLIN, FL_EV_PLAIN, 0);
                    python = 1;
                }
            } else if (!python && en && e == EPOLLIN) {
                struct fl_link *L = en->link;
                if (en->kind == FL_ENT_LINK) {
                    st = link_readable(L, out, &nout, cap);
                } else if (en->kind == FL_ENT_LOCAL) {
                    struct fp_chan *c = &L->slots[en->slot];
                    if (c->ch && c->fd == fd && c->lfast && c->rd && L->writer_idle)
                        st = local_readable(L, c, fd, out, &nout);
                }
            }
            if (st == PYTHON)
                python = 1;
            else if (st == PLAIN)
                put(out, &nout, fd, e, FL_EV_PLAIN, 0);
        }
        if (nout || timeout_ms == 0)
            return (int)nout;
        if (timeout_ms > 0) {
            double left = deadline - now_s();
            if (left <= 0)
                return 0;
            timeout_ms = (int)(left * 1000.0) + 1;
        }
    }
}

struct sched_attr_v1 {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
};

int fl_sched_slice(uint32_t usec)
{
#ifdef SYS_sched_setattr
    struct sched_attr_v1 a = {0};
    a.size = sizeof a;
    a.policy = 0; /* SCHED_OTHER, nice unchanged */
    a.nice = getpriority(PRIO_PROCESS, 0);
    a.runtime = (uint64_t)usec * 1000;
    return syscall(SYS_sched_setattr, 0, &a, 0) == 0 ? 0 : -errno;
#else
    (void)usec;
    return -ENOSYS;
#endif
}
