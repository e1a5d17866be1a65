/* wlcodec: a validating Wayland wire codec driven by tables compiled from
 * protocol XML.  One call per received buffer; it returns only the messages
 * the caller asked to see, and everything else as contiguous byte ranges. */

#define WLC_ARG_INT 1
#define WLC_ARG_UINT 2
#define WLC_ARG_FIXED 3
#define WLC_ARG_STRING 4
#define WLC_ARG_OBJECT 5
#define WLC_ARG_NEW_ID 6
#define WLC_ARG_ARRAY 7
#define WLC_ARG_FD 8

#define WLC_ARG_NULLABLE 1

#define WLC_MSG_DESTRUCTOR 1

#define WLC_NO_IFACE 0xffff

#define WLC_REQUEST 0
#define WLC_EVENT 1

#define WLC_REC_PASS 0
#define WLC_REC_MSG 1
#define WLC_REC_ERROR 2

/* wl_display error codes */
#define WLC_ERR_INVALID_OBJECT 0
#define WLC_ERR_INVALID_METHOD 1
#define WLC_ERR_NO_MEMORY 2
#define WLC_ERR_IMPLEMENTATION 3

#define WLC_SERVER_ID_START 0xff000000u

#define WLC_OBJ_FREE 0
#define WLC_OBJ_ALIVE 1
#define WLC_OBJ_ZOMBIE 2

struct wlc_arg {
    uint8_t type;
    uint8_t flags;
    uint16_t iface; /* WLC_NO_IFACE when the XML names none */
};

struct wlc_msg {
    uint32_t first_arg;
    uint16_t nargs;
    uint16_t since;
    uint8_t flags;
    uint8_t nfds;
    uint16_t pad;
};

struct wlc_iface {
    const char *name;
    uint32_t version;
    uint32_t first_msg[2]; /* index into msgs for requests, events */
    uint16_t nmsgs[2];
};

struct wlc_tables {
    uint32_t n_ifaces;
    const struct wlc_iface *ifaces;
    const struct wlc_msg *msgs;
    const struct wlc_arg *args;
    const uint16_t *by_name; /* iface indices sorted by name */
    uint32_t n_msgs;
    uint16_t display_iface; /* index of wl_display */
};

struct wlc_obj {
    uint16_t iface;
    uint8_t state;
    uint8_t pad;
    uint32_t version;
};

struct wlc_rec {
    uint32_t kind;
    uint32_t start;
    uint32_t len;
    uint32_t obj;
    uint16_t iface;
    uint16_t opcode;
    uint16_t nfds;
    uint16_t code;
};

struct wlc_conn;

struct wlc_conn *wlc_new(const struct wlc_tables *t, uint32_t max_msg_size, uint32_t max_objects);
void wlc_free(struct wlc_conn *c);
uint8_t *wlc_mask(struct wlc_conn *c);
uint32_t wlc_feed(struct wlc_conn *c, int dir, const uint8_t *buf, uint32_t len,
                  uint32_t new_fds, struct wlc_rec *out, uint32_t out_cap, uint32_t *consumed);
const char *wlc_error(struct wlc_conn *c);
uint32_t wlc_pending_fds(struct wlc_conn *c, int dir);
int wlc_lookup(struct wlc_conn *c, uint32_t id, struct wlc_obj *out);
int wlc_insert(struct wlc_conn *c, uint32_t id, uint16_t iface, uint32_t version);
int wlc_remove(struct wlc_conn *c, uint32_t id);
uint32_t wlc_object_count(struct wlc_conn *c);
uint64_t wlc_message_count(struct wlc_conn *c, int dir);
void wlc_set_max_objects(struct wlc_conn *c, uint32_t max_objects);
int wlc_iface_by_name(const struct wlc_tables *t, const char *name, uint32_t len);
