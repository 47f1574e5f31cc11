/*
 * A small test double of Intel QATzip's libqatzip.so.3 (deflate / gzip-ext subset).
 *
 * Built at test time (never committed compiled):
 *     cc -shared -fPIC -O2 -Wl,-soname,libqatzip.so.3 -o libqatzip.so.3 qatzip_double.c -lz
 * It exports the same ABI as QATzip 1.3.x for the calls the binding uses (struct layouts of
 * spec qatzip.md section 3, checked below with _Static_assert) and produces real gzip-ext:
 *   - "software" mode (no device, the default): one gzip-ext member per call, zlib deflate
 *     with memLevel 9 and a Z_FULL_FLUSH every hw_buff_sz bytes, XFL as zlib writes it -
 *     the parameters the real library's software path uses, so its output can be compared
 *     with the golden vectors;
 *   - "hardware" mode (QZDOUBLE_HW=1): one independent member per hw_buff_sz chunk, XFL 0 -
 *     the framing the real hardware path produces (its deflate bytes differ, of course).
 * Faults are injected with qzdouble_set(name, value) or env QZDOUBLE_<NAME> (read once):
 *   hw                   1 = pretend a device is present (hw_session_stat QZ_OK)
 *   init_rc, setup_rc    override the return code of qzInit / qzSetupSession* (-999 = off)
 *   fail_after, fail_rc  qzCompress returns fail_rc from its fail_after-th call on (0-based)
 *   short_consume_after  QZ_OK but only half of the input consumed, from that call on
 *   short_output_after   QZ_OK but the produced length cut in half, from that call on
 *   drop_hw_after        the session falls back to software (hw_session_stat QZ_NO_HW)
 *   decompress_rc        override qzDecompress's return code (-999 = off)
 *   pinned_fail          qzMalloc(..., PINNED_MEM) returns NULL
 *   key_limit            pthread keys the process has (default 1020, as observed): see below
 * Faithful to two stateful bugs of the real library (1.3.1, software path):
 *   - a qzDecompress that fails (QZ_DATA_ERROR) or stops inside a member leaves the session's
 *     inflate stream as it is: the next call continues it (every later call on a failed
 *     session returns QZ_DATA_ERROR, even for valid input) until qzTeardownSession;
 *   - without a device every qzInit / qzCompress / qzDecompress creates a pthread key it never
 *     deletes (counter keys_leaked); past key_limit the real process crashes at its next
 *     OpenSSL initialisation - the double aborts at once (SIGABRT) so a test sees it.
 * Counters (qzdouble_get): keys_leaked, init_calls, setup_calls, compress_calls, decompress_calls,
 * last0_calls, teardown_calls, close_calls, malloc_pinned, malloc_common, free_calls,
 * live_sessions, max_compress_len (largest input of one qzCompress call).
 */
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define QZ_OK 0
#define QZ_DUPLICATE 1
#define QZ_PARAMS (-1)
#define QZ_FAIL (-2)
#define QZ_BUF_ERROR (-3)
#define QZ_DATA_ERROR (-4)
#define QZ_NO_HW 11
#define QZ_NOSW_NO_HW (-101)
#define QZ_NOT_SUPPORTED (-200)
#define QZ_DEFLATE_GZIP_EXT 2
#define OFF (-999)

typedef struct {
    long hw_session_stat;
    int thd_sess_stat;
    void *internal;
    unsigned long total_in;
    unsigned long total_out;
} QzSession_T;

typedef struct {
    int direction;
    unsigned int comp_lvl;
    unsigned char comp_algorithm;
    unsigned int max_forks;
    unsigned char sw_backup;
    unsigned int hw_buff_sz;
    unsigned int strm_buff_sz;
    unsigned int input_sz_thrshold;
    unsigned int req_cnt_thrshold;
    unsigned int wait_cnt_thrshold;
    int polling_mode;
    unsigned int is_sensitive_mode;
} QzSessionParamsCommon_T;

typedef struct {
    QzSessionParamsCommon_T common_params;
    int huffman_hdr;
    int data_fmt;
} QzSessionParamsDeflate_T;

typedef struct {
    QzSessionParamsDeflate_T deflate_params;
    unsigned char stop_decompression_stream_end;
    unsigned char zlib_format;
} QzSessionParamsDeflateExt_T;

_Static_assert(sizeof(QzSession_T) == 40, "QzSession_T must be 40 bytes");
_Static_assert(offsetof(QzSession_T, internal) == 16, "QzSession_T.internal at 16");
_Static_assert(sizeof(QzSessionParamsCommon_T) == 48, "QzSessionParamsCommon_T 48 bytes");
_Static_assert(offsetof(QzSessionParamsCommon_T, hw_buff_sz) == 20, "hw_buff_sz at 20");
_Static_assert(offsetof(QzSessionParamsCommon_T, is_sensitive_mode) == 44, "at 44");
_Static_assert(sizeof(QzSessionParamsDeflate_T) == 56, "QzSessionParamsDeflate_T 56 bytes");
_Static_assert(offsetof(QzSessionParamsDeflate_T, data_fmt) == 52, "data_fmt at 52");
_Static_assert(sizeof(QzSessionParamsDeflateExt_T) == 60, "QzSessionParamsDeflateExt_T 60");

/* ------------------------------------------------------------------ controls */
struct control { const char *name; long value; long dflt; };
static struct control controls[] = {
    {"hw", 0, 0}, {"init_rc", OFF, OFF}, {"setup_rc", OFF, OFF},
    {"fail_after", -1, -1}, {"fail_rc", QZ_FAIL, QZ_FAIL},
    {"short_consume_after", -1, -1}, {"short_output_after", -1, -1},
    {"drop_hw_after", -1, -1}, {"decompress_rc", OFF, OFF}, {"pinned_fail", 0, 0},
    {"key_limit", 1020, 1020},
    /* counters */
    {"keys_leaked", 0, 0}, {"init_calls", 0, 0}, {"setup_calls", 0, 0}, {"compress_calls", 0, 0},
    {"decompress_calls", 0, 0}, {"last0_calls", 0, 0}, {"teardown_calls", 0, 0},
    {"close_calls", 0, 0}, {"malloc_pinned", 0, 0}, {"malloc_common", 0, 0},
    {"free_calls", 0, 0}, {"live_sessions", 0, 0}, {"max_compress_len", 0, 0},
    {NULL, 0, 0},
};
static int env_read;

static struct control *find(const char *name) {
    for (struct control *c = controls; c->name; c++)
        if (strcmp(c->name, name) == 0) return c;
    return NULL;
}

static void read_env(void) {
    if (__atomic_exchange_n(&env_read, 1, __ATOMIC_SEQ_CST)) return;
    for (struct control *c = controls; c->name; c++) {
        char key[64] = "QZDOUBLE_";
        size_t k = strlen(key);
        for (const char *p = c->name; *p && k < sizeof(key) - 1; p++, k++)
            key[k] = (*p >= 'a' && *p <= 'z') ? (char)(*p - 32) : *p;
        key[k] = 0;
        const char *v = getenv(key);
        if (v && *v) c->value = strtol(v, NULL, 0);
    }
}

static long ctl(const char *name) { read_env(); return __atomic_load_n(&find(name)->value, __ATOMIC_SEQ_CST); }
static long bump(const char *name) { return __atomic_fetch_add(&find(name)->value, 1, __ATOMIC_SEQ_CST); }

/** Set a control; returns 0, or -1 for an unknown name. */
int qzdouble_set(const char *name, long value) {
    read_env();
    struct control *c = find(name);
    if (!c) return -1;
    __atomic_store_n(&c->value, value, __ATOMIC_SEQ_CST);
    return 0;
}

/** Read a control or counter; LONG_MIN for an unknown name. */
long qzdouble_get(const char *name) {
    read_env();
    struct control *c = find(name);
    return c ? __atomic_load_n(&c->value, __ATOMIC_SEQ_CST) : LONG_MIN;
}

/** All controls and counters back to their defaults (env is not re-read). */
void qzdouble_reset(void) {
    read_env();
    for (struct control *c = controls; c->name; c++) c->value = c->dflt;
}

/* ------------------------------------------------------------------ API */
/* sess->internal: the session's parameters and its inflate stream (kept across calls). */
enum { INFLATE_NULL = 0, INFLATE_ACTIVE, INFLATE_ERROR };
struct session {
    QzSessionParamsDeflate_T p;
    z_stream inflate;
    int inflate_stat;
};
/* The library's software path runs qzInit on every call and leaks a pthread key each time. */
static void leak_key(const QzSession_T *sess) {
    if (sess && sess->hw_session_stat == QZ_OK) return;
    if (bump("keys_leaked") >= ctl("key_limit")) abort();
}
static unsigned char g_initialised;
static int g_log_level = 3;

static void defaults(QzSessionParamsDeflate_T *p) {
    memset(p, 0, sizeof(*p));
    p->common_params.direction = 2;
    p->common_params.comp_lvl = 1;
    p->common_params.comp_algorithm = 8;
    p->common_params.max_forks = 3;
    p->common_params.sw_backup = 1;
    p->common_params.hw_buff_sz = 65536;
    p->common_params.strm_buff_sz = 65536;
    p->common_params.input_sz_thrshold = 1024;
    p->common_params.req_cnt_thrshold = 32;
    p->common_params.wait_cnt_thrshold = 8;
    p->common_params.polling_mode = 0;
    p->common_params.is_sensitive_mode = 0;
    p->huffman_hdr = 0;
    p->data_fmt = QZ_DEFLATE_GZIP_EXT;
}

int qzGetDefaultsDeflate(QzSessionParamsDeflate_T *p) {
    if (!p) return QZ_PARAMS;
    defaults(p);
    return QZ_OK;
}

int qzSetLogLevel(int level) {
    int old = g_log_level;
    if (level >= 0 && level <= 7) g_log_level = level;
    return old;
}

int qzInit(QzSession_T *sess, unsigned char sw_backup) {
    bump("init_calls");
    if (!sess || sw_backup > 1) return QZ_PARAMS;
    long o = ctl("init_rc");
    if (o != OFF) return (int)o;
    if (!ctl("hw")) leak_key(NULL);
    if (ctl("hw")) {
        if (g_initialised) return QZ_DUPLICATE;
        g_initialised = 1;
        return QZ_OK;
    }
    return sw_backup ? QZ_OK : QZ_NOSW_NO_HW;
}

static int valid(const QzSessionParamsDeflate_T *p) {
    const QzSessionParamsCommon_T *c = &p->common_params;
    unsigned int b = c->hw_buff_sz;
    if (c->comp_lvl < 1 || c->comp_lvl > 12) return 0;
    if (b < 1024 || b > 512 * 1024 || (b & (b - 1))) return 0;
    if (p->data_fmt < 0 || p->data_fmt > 3) return 0;
    if (c->sw_backup > 1 || c->direction < 0 || c->direction > 2) return 0;
    return 1;
}

int qzSetupSessionDeflate(QzSession_T *sess, QzSessionParamsDeflate_T *params) {
    bump("setup_calls");
    if (!sess) return QZ_PARAMS;
    if (sess->internal) return QZ_DUPLICATE;
    QzSessionParamsDeflate_T p;
    if (params) p = *params; else defaults(&p);
    if (!valid(&p)) return QZ_PARAMS;
    long o = ctl("setup_rc");
    if (o != OFF) {
        sess->hw_session_stat = o;
        return (int)o;
    }
    if (ctl("hw")) {
        sess->hw_session_stat = QZ_OK;
    } else if (p.common_params.sw_backup) {
        sess->hw_session_stat = QZ_NO_HW;
    } else {
        sess->hw_session_stat = QZ_NOSW_NO_HW;
        return QZ_NOSW_NO_HW;
    }
    struct session *keep = calloc(1, sizeof(*keep));
    if (!keep) return QZ_FAIL;
    keep->p = p;
    sess->internal = keep;
    sess->thd_sess_stat = QZ_OK;
    sess->total_in = sess->total_out = 0;
    bump("live_sessions");
    return QZ_OK;
}

int qzSetupSessionDeflateExt(QzSession_T *sess, QzSessionParamsDeflateExt_T *params) {
    if (params && params->zlib_format) return QZ_NOT_SUPPORTED;
    return qzSetupSessionDeflate(sess, params ? &params->deflate_params : NULL);
}

int qzTeardownSession(QzSession_T *sess) {
    bump("teardown_calls");
    if (!sess) return QZ_PARAMS;
    if (sess->internal) {
        struct session *st = sess->internal;
        if (st->inflate_stat != INFLATE_NULL) inflateEnd(&st->inflate);
        free(sess->internal);
        sess->internal = NULL;
        __atomic_fetch_sub(&find("live_sessions")->value, 1, __ATOMIC_SEQ_CST);
    }
    return QZ_OK;
}

int qzClose(QzSession_T *sess) {
    (void)sess;
    bump("close_calls");
    return QZ_OK;
}

unsigned int qzMaxCompressedLength(unsigned int src_sz, QzSession_T *sess) {
    (void)sess;
    if (src_sz == 0) return 34;
    uint64_t n = ((uint64_t)src_sz * 9 + 7) / 8 + 48 + 32;
    return n > UINT_MAX ? 0 : (unsigned int)n;
}

void *qzMalloc(size_t sz, int numa, int force_pinned) {
    (void)numa;
    if (force_pinned) {
        if (ctl("pinned_fail")) return NULL;
        bump("malloc_pinned");
    } else {
        bump("malloc_common");
    }
    return malloc(sz ? sz : 1);
}

void qzFree(void *m) {
    bump("free_calls");
    free(m);
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

/* One gzip-ext member of src[0..n) at dest; returns its size or -1 when it does not fit. */
static long member(const unsigned char *src, unsigned int n, unsigned char *dest, size_t cap,
                   int level, unsigned int flush_every, int xfl, int zero_qz) {
    if (cap < 32) return -1;
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, level, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) != Z_OK) return -2;
    z.next_out = dest + 24;
    z.avail_out = (uInt)(cap - 32);
    unsigned int off = 0;
    int rc = Z_OK;
    do {
        unsigned int piece = n - off;
        int flush = Z_FINISH;
        if (flush_every && piece > flush_every) { piece = flush_every; flush = Z_FULL_FLUSH; }
        z.next_in = (Bytef *)(src + off);
        z.avail_in = piece;
        rc = deflate(&z, flush);
        off += piece - z.avail_in;
        if (z.avail_in != 0 || (flush == Z_FINISH && rc != Z_STREAM_END)) {
            deflateEnd(&z);
            return -1;
        }
    } while (rc != Z_STREAM_END);
    size_t dsz = z.total_out;
    deflateEnd(&z);
    unsigned char *h = dest;
    h[0] = 0x1f; h[1] = 0x8b; h[2] = 8; h[3] = 4;
    put32(h + 4, 0);
    h[8] = (unsigned char)xfl; h[9] = 0xff;
    h[10] = 12; h[11] = 0; h[12] = 'Q'; h[13] = 'Z'; h[14] = 8; h[15] = 0;
    put32(h + 16, zero_qz ? 0 : n);
    put32(h + 20, zero_qz ? 0 : (uint32_t)dsz);
    put32(dest + 24 + dsz, (uint32_t)crc32(crc32(0L, Z_NULL, 0), src, n));
    put32(dest + 28 + dsz, n);
    return (long)(dsz + 32);
}

int qzCompress(QzSession_T *sess, const unsigned char *src, unsigned int *src_len,
               unsigned char *dest, unsigned int *dest_len, unsigned int last) {
    long call = bump("compress_calls");
    if (!sess || !src_len || !dest_len || last > 1 || (!src && *src_len)) return QZ_PARAMS;
    if (!sess->internal) {
        int rc = qzSetupSessionDeflate(sess, NULL);
        if (rc != QZ_OK && rc != QZ_DUPLICATE) return rc;
    }
    if (!last) bump("last0_calls");
    leak_key(sess);
    unsigned int n = *src_len;
    long mx = ctl("max_compress_len");
    while ((long)n > mx && !__atomic_compare_exchange_n(&find("max_compress_len")->value, &mx,
                                                       (long)n, 0, __ATOMIC_SEQ_CST,
                                                       __ATOMIC_SEQ_CST)) {
    }
    const QzSessionParamsDeflate_T *p = &((struct session *)sess->internal)->p;
    long fa = ctl("fail_after");
    if (fa >= 0 && call >= fa) {
        *src_len = 0;
        *dest_len = 0;
        return (int)ctl("fail_rc");
    }
    long dh = ctl("drop_hw_after");
    if (dh >= 0 && call >= dh) sess->hw_session_stat = QZ_NO_HW;
    if (p->data_fmt != QZ_DEFLATE_GZIP_EXT) return QZ_NOT_SUPPORTED;
    int hw = sess->hw_session_stat == QZ_OK;
    int level = (int)p->common_params.comp_lvl;
    unsigned int chunk = p->common_params.hw_buff_sz;
    size_t cap = *dest_len;
    long produced = 0;
    if (hw) {
        /* hardware framing: one member per hw_buff_sz chunk; levels map to 1/6/9 */
        int hl = level <= 5 ? 1 : (level <= 8 ? 6 : 9);
        unsigned int off = 0;
        do {
            unsigned int piece = n - off > chunk ? chunk : n - off;
            long m = member(src + off, piece, dest + produced, cap - (size_t)produced, hl, 0, 0,
                            !last);
            if (m < 0) { *src_len = 0; *dest_len = 0; return m == -1 ? QZ_BUF_ERROR : QZ_FAIL; }
            produced += m;
            off += piece;
        } while (off < n);
    } else {
        if (level > 9) { *src_len = 0; *dest_len = 0; return QZ_FAIL; }
        int xfl = level == 9 ? 2 : (level < 2 ? 4 : 0);
        long m = member(src, n, dest, cap, level, chunk, xfl, !last);
        if (m < 0) return QZ_FAIL; /* real software path: -2, lengths left as they were */
        produced = m;
    }
    unsigned int consumed = n;
    long sc = ctl("short_consume_after");
    if (sc >= 0 && call >= sc) consumed = n / 2;
    long so = ctl("short_output_after");
    if (so >= 0 && call >= so) produced /= 2;
    *src_len = consumed;
    *dest_len = (unsigned int)produced;
    sess->total_in += consumed;
    sess->total_out += (unsigned long)produced;
    return QZ_OK;
}

int qzDecompress(QzSession_T *sess, const unsigned char *src, unsigned int *src_len,
                 unsigned char *dest, unsigned int *dest_len) {
    bump("decompress_calls");
    if (!sess || !src_len || !dest_len) return QZ_PARAMS;
    long o = ctl("decompress_rc");
    if (o != OFF) { *src_len = 0; *dest_len = 0; return (int)o; }
    if (*src_len == 0) { *dest_len = 0; return QZ_OK; }
    if (!sess->internal) {
        int rc = qzSetupSessionDeflate(sess, NULL);
        if (rc != QZ_OK && rc != QZ_DUPLICATE) return rc;
    }
    leak_key(sess);
    struct session *st = sess->internal;
    z_stream *z = &st->inflate;
    /* qzSWDecompressMultiGzip + qzDeflateSWDecompress: the stream lives in the session; it is
       initialised only when no member is in progress and ended only at a member's end. */
    unsigned int in_len = *src_len, out_len = *dest_len, tin = 0, tout = 0;
    int ret = QZ_OK;
    *src_len = 0;
    *dest_len = 0;
    while (tin < in_len && tout < out_len) {
        if (st->inflate_stat == INFLATE_NULL) {
            memset(z, 0, sizeof(*z));
            if (inflateInit2(z, 31) != Z_OK) return QZ_FAIL;
            st->inflate_stat = INFLATE_ACTIVE;
        }
        z->next_in = (Bytef *)(src + tin);
        z->avail_in = in_len - tin;
        z->next_out = dest + tout;
        z->avail_out = out_len - tout;
        uLong i0 = z->total_in, o0 = z->total_out;
        int zr = inflate(z, Z_SYNC_FLUSH);
        if (zr == Z_DATA_ERROR || zr == Z_NEED_DICT || zr == Z_STREAM_ERROR || zr == Z_MEM_ERROR) {
            st->inflate_stat = INFLATE_ERROR; /* not ended: the bug */
            ret = zr == Z_DATA_ERROR ? QZ_DATA_ERROR : QZ_FAIL;
            break;
        }
        tin += (unsigned int)(z->total_in - i0);
        tout += (unsigned int)(z->total_out - o0);
        *src_len = tin;
        *dest_len = tout;
        if (zr == Z_STREAM_END) {
            inflateEnd(z);
            st->inflate_stat = INFLATE_NULL;
        } else if (zr == Z_BUF_ERROR || (z->total_in == i0 && z->total_out == o0)) {
            break; /* no progress: input ends inside a member (truncated is QZ_OK) */
        }
    }
    return ret;
}
