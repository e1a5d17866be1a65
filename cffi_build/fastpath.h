/* fastpath: validate-and-forward in one call, for bytes that need no Python. */

int64_t fp_feed_send(struct wlc_conn *c, int dir, const uint8_t *buf, uint32_t len, int fd,
                     struct wlc_rec *out, uint32_t out_cap, uint32_t *nrecs, uint32_t *consumed);
#define FP_NOT_SENT -1000000

/* One read from a local Wayland connection, forwarded to the link when it
 * needs nothing from Python; see fp_read_forward. */
struct fp_read {
    /* in */
    int32_t link_fd;        /* -1: do not forward, only read and validate */
    uint32_t channel;
    uint32_t room;          /* DATA bytes the link may carry for this channel now */
    uint32_t prefix_len;
    const uint8_t *prefix;  /* link frames that go first (credits held back) */
    /* out */
    int32_t nread;          /* bytes read; 0 at end of stream; -errno */
    uint32_t nfds;          /* fds received, in fds[] */
    uint32_t truncated;     /* more fds came than fit: the connection must end */
    uint32_t nrecs;         /* records (when not forwarded) */
    uint32_t consumed;      /* bytes the records cover */
    uint32_t forwarded;     /* message bytes forwarded (0: not forwarded) */
    int64_t written;        /* what writev took of prefix + header + messages, or -errno */
};
void fp_read_forward(struct wlc_conn *c, int dir, int fd, uint8_t *buf, uint32_t cap, uint32_t *filled,
                     int32_t *fds, uint32_t fds_cap, struct fp_read *r, struct wlc_rec *out, uint32_t out_cap);
#define FP_LINK_DATA 5
