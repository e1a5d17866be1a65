/* The common case of a proxied connection in one C call; see fastpath.h. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

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

/* Read once from `fd` into buf[*filled, cap) (fds into `fds`), validate
 * everything buffered with the codec, and when that is one run of messages
 * that pass, without fds, within r->room and r->link_fd >= 0: write
 * r->prefix, a DATA frame header and the messages to the link with one
 * writev (r->forwarded, r->written; the caller drops them from the buffer).
 * Otherwise the records are left in `out` for the caller (r->nrecs,
 * r->consumed) and the buffer is untouched but for the new bytes. */
void fp_read_forward(struct wlc_conn *c, int dir, int fd, uint8_t *buf, uint32_t cap, uint32_t *filled,
                     int32_t *fds, uint32_t fds_cap, struct fp_read *r, struct wlc_rec *out, uint32_t out_cap)
{
    union {
        struct cmsghdr h;
        uint8_t space[CMSG_SPACE(253 * sizeof(int32_t))];
    } ctl;
    struct iovec iov = {buf + *filled, cap - *filled};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.space;
    m.msg_controllen = sizeof ctl.space;
    r->nfds = r->truncated = r->nrecs = r->consumed = r->forwarded = 0;
    r->written = 0;
    ssize_t n;
    do
        n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        r->nread = -errno;
        return;
    }
    r->nread = (int32_t)n;
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
    if (r->truncated || (n == 0 && r->nfds == 0))
        return;
    *filled += (uint32_t)n;
    uint32_t used = 0;
    uint32_t k = wlc_feed(c, dir, buf, *filled, r->nfds, out, out_cap, &used);
    r->nrecs = k;
    r->consumed = used;
    if (r->link_fd < 0 || r->nfds || k != 1 || out[0].kind != WLC_REC_PASS || out[0].nfds || used > r->room)
        return;
    uint8_t hdr[12];
    uint32_t len = used;
    uint16_t type = FP_LINK_DATA, flags = 0;
    memcpy(hdr, &len, 4); /* little-endian hosts only, as the rest of the link code */
    memcpy(hdr + 4, &type, 2);
    memcpy(hdr + 6, &flags, 2);
    memcpy(hdr + 8, &r->channel, 4);
    struct iovec w[3] = {{(void *)r->prefix, r->prefix_len}, {hdr, sizeof hdr}, {buf, used}};
    ssize_t s;
    do
        s = writev(r->link_fd, r->prefix_len ? w : w + 1, r->prefix_len ? 3 : 2);
    while (s < 0 && errno == EINTR);
    r->written = s < 0 ? -(int64_t)errno : (int64_t)s;
    r->forwarded = used; /* the caller queues what writev did not take, then drops them from buf */
    r->nrecs = 0;
}
