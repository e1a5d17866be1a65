/* The common case of a proxied connection in one C call; see fastpath.h. */
#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "wlcodec.h"
#include "fastpath.h"

/* Validate buf[0:len] (whole messages for a connection whose input buffer
 * is empty) like wlc_feed.  When that gives a single PASS record over all of
 * it, without fds, the bytes are sent to `fd` right away (non-blocking) and
 * the count sent is returned (possibly short; -errno if send failed).
 * Otherwise nothing is sent, FP_NOT_SENT is returned and `out`, *nrecs and
 * *consumed hold wlc_feed's result for the caller to act on. */
int64_t fp_feed_send(struct wlc_conn *c, int dir, const uint8_t *buf, uint32_t len, int fd,
                     struct wlc_rec *out, uint32_t out_cap, uint32_t *nrecs, uint32_t *consumed)
{
    uint32_t n = wlc_feed(c, dir, buf, len, 0, out, out_cap, consumed);
    *nrecs = n;
    if (n != 1 || out[0].kind != WLC_REC_PASS || out[0].nfds || out[0].start || out[0].len != len)
        return FP_NOT_SENT;
    ssize_t s;
    do
        s = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (s < 0 && errno == EINTR);
    return s < 0 ? -(int64_t)errno : (int64_t)s;
}
