/* fastpath: validate-and-forward in one call, for bytes that need no Python. */

int64_t fp_feed_send(struct wlc_conn *c, int dir, const uint8_t *buf, uint32_t len, int fd,
                     struct wlc_rec *out, uint32_t out_cap, uint32_t *nrecs, uint32_t *consumed);
#define FP_NOT_SENT -1000000
