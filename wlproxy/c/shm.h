/* Damage-rect copying and shadow diffing for mirrored wl_shm pools. */

struct shm_span {
    uint64_t offset; /* byte offset in the pool */
    uint32_t len;
};

uint32_t shm_collect_rows(uint64_t buf_offset, uint32_t stride, uint32_t bpp, uint32_t width, uint32_t height,
                          const int32_t *rects, uint32_t nrects, struct shm_span *out, uint32_t out_cap);
#define SHM_DIFF 0
#define SHM_DIRECT 1
#define SHM_RESYNC 2
uint32_t shm_commit(const uint8_t *pool, uint8_t *shadow, const struct shm_span *rows, uint32_t nrows,
                    uint32_t mode, uint32_t merge_gap, struct shm_span *out, uint32_t out_cap, uint64_t *stats);
uint32_t shm_commit_par(const uint8_t *pool, uint8_t *shadow, const struct shm_span *rows, uint32_t nrows,
                        uint32_t mode, uint32_t merge_gap, struct shm_span *out, uint32_t out_cap,
                        struct shm_span *scratch, uint64_t *stats);
