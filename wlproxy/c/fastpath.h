/* fastpath: validate-and-forward in one call, for bytes that need no Python. */

/* A link frame's 12-byte header at h. */
void fp_frame_header(uint8_t *h, uint32_t len, uint16_t type, uint32_t channel);

/* One read from a local Wayland connection, forwarded to the link when it
 * needs nothing from Python; see fp_read_forward. */
struct fp_read {
    /* in */
    int32_t link_fd;        /* -1: do not forward, only read and validate */
    uint32_t channel;
    uint32_t room;          /* DATA bytes the link may carry for this channel now */
    uint32_t prefix_len;
    const uint8_t *prefix;  /* link frames that go first (credits held back) */
    struct sf_state *sf;    /* guest: apply wl_surface requests here (sf_apply); NULL: none */
    /* out */
    int32_t nread;          /* bytes read; 0 at end of stream; -errno */
    uint32_t nfds;          /* fds received, in fds[] */
    uint32_t truncated;     /* more fds came than fit: the connection must end */
    uint32_t nrecs;         /* records (when not forwarded) */
    uint32_t consumed;      /* bytes the records cover */
    uint32_t forwarded;     /* message bytes forwarded (0: not forwarded) */
    int64_t written;        /* what writev took of prefix + header + messages, or -errno */
    uint64_t total;         /* what it was given */
    uint32_t applied;       /* sf_apply took the records: the commit starts at `split`, its pixels */
    uint32_t split;         /* are sf_spans()[0:nspans] of `pool` (forwarded: they went in the */
    uint32_t nspans;        /* writev, as SHM_DATA frames between a DATA frame of the messages */
    struct sf_pool *pool;   /* before the commit and one from the commit on) */
};
#define FP_SMALL_PIXELS 1048576 /* pixels up to this size go in that writev (FLUSH_SLICE) */
#define FP_SMALL_SPANS 128
void fp_read_forward(struct wlc_conn *c, int dir, int fd, uint8_t *buf, uint32_t cap, uint32_t *filled,
                     int32_t *fds, uint32_t fds_cap, struct fp_read *r, struct wlc_rec *out, uint32_t out_cap);
/* After a forwarded read whose writev came up short: the bytes it did not
 * take (r->total - r->written of them) into out, from the same description
 * of the frames as the writev (buf: the local buffer, not yet consumed). */
void fp_unsent(const uint8_t *buf, const struct fp_read *r, uint8_t *out);
#define FP_LINK_DATA 5
#define FP_LINK_CREDIT 6
#define FP_LINK_SHM_DATA 8

struct fl_acct;

/* Link input: DATA and CREDIT frames for channels that need nothing from
 * Python, handled in one call per read; see fp_link_scan. */
struct fp_chan {
    struct wlc_conn *codec;
    int32_t fd;       /* the channel's local socket */
    uint32_t ch;      /* channel id; 0: slot free */
    uint8_t dir;      /* direction of the messages the link brings */
    uint8_t fast;     /* 1: nothing of this channel is buffered or queued in Python */
    uint8_t lfast;    /* 1: nothing of its local input is buffered, queued or paused in Python */
    uint8_t pad;
    uint32_t room;    /* DATA bytes the peer may send before it runs out of credit */
    uint32_t data;    /* out: DATA bytes taken */
    uint32_t credit;  /* out: CREDIT granted */
    uint32_t touched; /* out: listed in fp_scan.touched */
    uint32_t sends;   /* out: sends of link input to the local socket, ever (wlproxy.sched) */
    /* the channel's side of the credit window (the fast loop keeps them, fastloop.c) */
    uint32_t unacked;      /* DATA bytes sent the peer has not credited back */
    uint32_t peer_window;
    /* what the fast loop reads the local socket with: the codec's buffers for fp_read_forward */
    struct fp_read *rd;
    uint8_t *lbuf;
    uint32_t lcap;
    uint32_t *lfilled;
    int32_t *lfds;         /* FL_FDS_PER_READ of them */
    struct wlc_rec *lrecs;
    uint32_t lrcap;
    struct fl_acct *acct;  /* host: the client's request rate and object count; NULL: none */
};
#define FP_SCAN_TOUCHED 64
#define FP_RUN_MAX 64
#define FP_STOP_NONE 0
#define FP_STOP_FRAME 1   /* before a frame for Python; the run (if any) is not sent */
#define FP_STOP_SHORT 2   /* the run was sent short (sent < its bytes, or -errno) */
#define FP_STOP_RECORDS 3 /* a DATA frame Python must act on (records); the run before it is not sent */
struct fp_scan {
    uint32_t max_data;
    uint32_t max_shm;   /* SHM_DATA payload limit; 0: SHM_DATA is not taken here */
    uint32_t npools;
    struct fp_pool **pools;
    uint32_t ntouched;
    uint32_t touched[FP_SCAN_TOUCHED]; /* slots with results */
    uint32_t stop;      /* FP_STOP_*: why the scan ended early */
    uint32_t slot;      /* SHORT / RECORDS: the channel's slot */
    uint32_t off, len;  /* RECORDS: that frame's payload in buf */
    uint32_t nrecs, consumed; /* RECORDS: wlc_feed's result for the payload */
    int64_t sent;       /* SHORT: bytes of the run sent, or -errno */
    /* consecutive DATA payloads of one channel, sent with one sendmsg */
    uint32_t run_slot, run_n;
    uint32_t run_off[FP_RUN_MAX], run_len[FP_RUN_MAX];
    /* SHM_DATA whose payload runs past the buffer: with stream_ok (the fast
     * loop), what is there is copied and the rest is left to read straight
     * into the pool: shm_left bytes at shm_off of shm_pool (NULL: dropped,
     * the pool went away meanwhile) */
    uint32_t stream_ok;
    struct fp_pool *shm_pool;
    uint64_t shm_off, shm_left;
};
struct fp_pool {      /* a host-side pool that SHM_DATA may write to */
    uint8_t *base;    /* NULL once closed */
    uint64_t size;
    uint32_t ch, key;
};
uint32_t fp_link_scan(struct fp_chan *slots, uint32_t nslots, const uint8_t *buf, uint32_t len,
                      struct fp_scan *s, struct wlc_rec *recs, uint32_t rcap);
