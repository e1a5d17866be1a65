/* fastloop: the event loop's turns that need nothing from Python.
 *
 * The Python loop waits in fl_poll on its own epoll fd.  Readiness of a link
 * or of a channel's local socket that the loop was told about (fl_watch) is
 * handled here when flags that Python keeps current say nothing of that
 * link or channel waits in Python; everything else goes back to Python, as
 * events to dispatch. */

struct fl_acct {            /* host: one client's request rate and object count */
    double tokens, t_last;  /* token bucket (CLOCK_MONOTONIC seconds) */
    uint64_t msgs_seen;     /* requests counted so far */
    int64_t objects;        /* live objects, as last added to *vm_objects */
    int64_t *vm_objects;    /* the VM's total */
    double rate, burst;
    int64_t vm_limit;
};
#define FL_ACCT_OK 0
#define FL_ACCT_RATE 1
#define FL_ACCT_OBJECTS 2
int fl_account(struct fl_acct *a, struct wlc_conn *c);

#define FL_HELD 4096
#define FL_FDS_PER_READ 253
struct fl_link {            /* one link (a LinkSession) */
    int32_t fd;
    uint8_t writer_idle;    /* Python: its writer has nothing queued, in flight or waited for */
    uint8_t reader_idle;    /* Python: its decoder holds nothing, the next byte starts a frame */
    uint16_t pad;
    uint8_t *buf;           /* the reader's buffer */
    uint32_t cap;
    uint32_t nread;         /* FL_EV_LINK: bytes read into buf, */
    uint32_t scanned;       /* of which fp_link_scan took these (its results in scan, not yet applied) */
    uint32_t nslots;
    struct fp_chan *slots;
    struct fp_scan *scan;
    struct wlc_rec *recs;
    uint32_t rcap;
    uint32_t lazy_max;      /* held credit worth this much goes out at once (Python's writer) */
    uint32_t held_len;
    uint32_t lazy;          /* the credit held */
    uint8_t held[FL_HELD];  /* CREDIT frames that wait for the next write to the link */
};

struct fl_ent {
    struct fl_link *link;
    uint32_t slot;
    uint32_t kind;
};
#define FL_ENT_NONE 0
#define FL_ENT_LINK 1
#define FL_ENT_LOCAL 2
struct fl_loop {
    int32_t epfd;
    uint32_t nents;
    struct fl_ent *ents;    /* by fd */
};
int fl_watch(struct fl_loop *F, int fd, uint32_t kind, struct fl_link *link, uint32_t slot);
void fl_unwatch(struct fl_loop *F, int fd);
void fl_free(struct fl_loop *F);

struct fl_ev {
    int32_t fd;
    uint32_t events;
    uint32_t kind;
    uint32_t arg;
};
#define FL_EV_PLAIN 0    /* Python's callbacks for these epoll events */
#define FL_EV_LOCAL 1    /* the local socket was read here: the slot's fp_read has the result */
#define FL_EV_LINK 2     /* the link was read here: link->nread bytes, link->scanned of them scanned */
#define FL_EV_ACCOUNT 3  /* the client on this local socket went over a limit (arg: FL_ACCT_*) */
#define FL_EV_KICK 4     /* the held credit must go out: Python's writer sends it */
int fl_poll(struct fl_loop *F, int timeout_ms, struct fl_ev *out, uint32_t cap);

/* Ask the scheduler for a short slice (Linux 6.12's EEVDF custom slice for
 * SCHED_OTHER; the kernel clamps it to 0.1-100 ms): a proxy woken amid busy
 * clients then runs sooner.  0, or -errno where the kernel has no such thing. */
int fl_sched_slice(uint32_t usec);
