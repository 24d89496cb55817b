/*
 * The physical floor of the fan-out benchmarks: what this machine allows when a server does
 * nothing but the unavoidable. epoll; accept; the minimal WebSocket handshake (SHA-1 and
 * base64 written out here for it, no WebSocket library); then, for each tick or batch,
 * one writev per socket of one shared pre-framed buffer: the frame header and envelope
 * head, the payload body (the same bytes for every socket and every tick: never copied),
 * and the tail carrying the timestamp. A socket that cannot take everything keeps its place
 * and continues on EPOLLOUT.
 *
 *   floor PORT tick SIZE        one SIZE-byte DATA_DYNAMIC-shaped message per second
 *   floor PORT flood RATE SIZE [wait]
 *                               RATE event messages per second, framed in one buffer per
 *                               10 ms batch (one writev per socket per batch; FLOOR_BATCH_MS
 *                               sets another window); with `wait`, from the first SIGUSR2 on
 *   floor PORT idle             nothing: for memory per idle connection
 *
 * Ticks are latest-wins per socket (a socket still writing an older tick gets only the
 * newest one next); in flood mode a socket more than 4,096 batches behind is closed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- SHA-1 (RFC 3174) and base64, for Sec-WebSocket-Accept only ---- */

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    if (!m) abort();
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

static void base64(const unsigned char *in, size_t len, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len) v |= in[i + 2];
        out[o++] = t[(v >> 18) & 63];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < len ? t[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- messages ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static void uuid4(char out[37]) {
    uint64_t a = next_rand(), b = next_rand();
    snprintf(out, 37, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32),
             (unsigned)((a >> 16) & 0xffff), (unsigned)(a & 0xfff),
             (unsigned)(0x8000 | ((b >> 48) & 0x3fff)), (unsigned long long)(b & 0xffffffffffffULL));
}

/* RFC 3339 UTC with nanoseconds: 30 characters. */
static void timestamp(char out[48]) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, 48, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec);
}

/* Writes a server text frame header for a payload of len bytes; returns its length. */
static size_t frame_header(unsigned char *h, size_t len) {
    h[0] = 0x81;
    if (len < 126) { h[1] = (unsigned char)len; return 2; }
    if (len < 65536) { h[1] = 126; h[2] = (unsigned char)(len >> 8); h[3] = (unsigned char)len; return 4; }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

/* One shared, reference-counted message: up to three iovecs, written as they are to every
 * socket. `owned` parts are freed with it; the tick body is shared by every tick. */
struct buf {
    int refs;
    size_t len;
    int niov;
    struct iovec iov[3];
    void *owned[2];
};

static void unref(struct buf *b) {
    if (--b->refs > 0) return;
    free(b->owned[0]);
    free(b->owned[1]);
    free(b);
}

/* ---- connections ---- */

enum { HANDSHAKE, OPEN, CLOSED };

struct conn {
    int fd;
    int state;
    int index; /* in conns[] */
    int writing; /* EPOLLOUT armed */
    size_t off;  /* bytes of q[head] already written */
    int head, len, cap;
    struct buf **q;
    int rlen;
    char *rbuf; /* only during the handshake */
};

static struct conn **conns;
static int nconns, capconns;
static int ep;
static int latest_wins;
static const int MAX_BEHIND = 4096;

/* Closed connections are freed only after the current batch of epoll events, which may
 * still name them. */
static struct conn **graveyard;
static int ngrave, capgrave;

static void conn_close(struct conn *c) {
    if (c->state == CLOSED) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    for (int i = 0; i < c->len; i++) unref(c->q[(c->head + i) % c->cap]);
    c->len = 0;
    if (c->state == OPEN) {
        struct conn *last = conns[--nconns];
        conns[c->index] = last;
        last->index = c->index;
    }
    c->state = CLOSED;
    if (ngrave == capgrave) {
        capgrave = capgrave ? capgrave * 2 : 64;
        graveyard = realloc(graveyard, sizeof *graveyard * (size_t)capgrave);
        if (!graveyard) abort();
    }
    graveyard[ngrave++] = c;
}

static void bury(void) {
    for (int i = 0; i < ngrave; i++) {
        free(graveyard[i]->q);
        free(graveyard[i]->rbuf);
        free(graveyard[i]);
    }
    ngrave = 0;
}

static void arm(struct conn *c, int out) {
    if (c->writing == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->writing = out;
}

/* Writes as much of the queue as the socket takes; 0 when the socket failed. */
static int flush_conn(struct conn *c) {
    while (c->len > 0) {
        struct iovec iov[64];
        int n = 0;
        size_t skip = c->off;
        for (int i = 0; i < c->len && n < 61; i++) {
            struct buf *b = c->q[(c->head + i) % c->cap];
            for (int j = 0; j < b->niov; j++) {
                struct iovec v = b->iov[j];
                if (skip >= v.iov_len) { skip -= v.iov_len; continue; }
                v.iov_base = (char *)v.iov_base + skip;
                v.iov_len -= skip;
                skip = 0;
                iov[n++] = v;
            }
        }
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { arm(c, 1); return 1; }
            if (errno == EINTR) continue;
            return 0;
        }
        size_t done = c->off + (size_t)w;
        while (c->len > 0 && done >= c->q[c->head]->len) {
            done -= c->q[c->head]->len;
            unref(c->q[c->head]);
            c->head = (c->head + 1) % c->cap;
            c->len--;
        }
        c->off = done;
    }
    arm(c, 0);
    return 1;
}

static int enqueue(struct conn *c, struct buf *b) {
    if (latest_wins) {
        /* Replace a queued tick that has not started; keep the one being written. */
        int keep = c->off > 0 ? 1 : 0;
        while (c->len > keep) {
            int last = (c->head + c->len - 1) % c->cap;
            unref(c->q[last]);
            c->len--;
        }
    } else if (c->len >= MAX_BEHIND) {
        return 0;
    }
    if (c->len == c->cap) {
        int cap = c->cap ? c->cap * 2 : 4;
        struct buf **q = malloc(sizeof *q * (size_t)cap);
        if (!q) abort();
        for (int i = 0; i < c->len; i++) q[i] = c->q[(c->head + i) % c->cap];
        free(c->q);
        c->q = q;
        c->cap = cap;
        c->head = 0;
    }
    c->q[(c->head + c->len) % c->cap] = b;
    c->len++;
    b->refs++;
    return 1;
}

static void broadcast(struct buf *b) {
    b->refs++; /* held while looping */
    for (int i = 0; i < nconns;) {
        struct conn *c = conns[i];
        int was_idle = c->len == 0;
        if (!enqueue(c, b) || (was_idle && !flush_conn(c))) {
            conn_close(c); /* the last connection moved into slot i */
            continue;
        }
        i++;
    }
    unref(b);
}

static const char *find_header(const char *req, const char *name) {
    size_t n = strlen(name);
    for (const char *p = strstr(req, "\r\n"); p; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, n) == 0 && p[2 + n] == ':') {
            const char *v = p + 3 + n;
            while (*v == ' ' || *v == '\t') v++;
            return v;
        }
    }
    return NULL;
}

/* Reads the upgrade request; answers 101 once it is complete. 0: close the socket. */
static int handshake(struct conn *c) {
    for (;;) {
        if (c->rlen >= 4095) return 0;
        ssize_t r = read(c->fd, c->rbuf + c->rlen, (size_t)(4095 - c->rlen));
        if (r == 0) return 0;
        if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
        c->rlen += (int)r;
        c->rbuf[c->rlen] = 0;
        if (!strstr(c->rbuf, "\r\n\r\n")) continue;
        const char *key = find_header(c->rbuf, "Sec-WebSocket-Key");
        if (!key) return 0;
        char joined[128];
        size_t klen = strcspn(key, "\r\n ");
        if (klen > 60) return 0;
        snprintf(joined, sizeof joined, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", (int)klen, key);
        unsigned char digest[20];
        char accept[32];
        sha1((const unsigned char *)joined, strlen(joined), digest);
        base64(digest, 20, accept);
        char resp[256];
        int n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
        if (write(c->fd, resp, (size_t)n) != n) return 0;
        free(c->rbuf);
        c->rbuf = NULL;
        c->state = OPEN;
        if (nconns == capconns) {
            capconns = capconns ? capconns * 2 : 1024;
            conns = realloc(conns, sizeof *conns * (size_t)capconns);
            if (!conns) abort();
        }
        c->index = nconns;
        conns[nconns++] = c;
        return 1;
    }
}

/* Client frames (pongs, close) are read and dropped; end of stream closes. */
static int drain(struct conn *c) {
    static char scratch[65536];
    for (;;) {
        ssize_t r = read(c->fd, scratch, sizeof scratch);
        if (r == 0) return 0;
        if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    }
}

/* ---- producers ---- */

static const char *EVENTS[4] = {"SHUTDOWN_START", "SHUTDOWN_SUCCESS", "BOOTUP_START", "BOOTUP_SUCCESS"};

/* The tick: head (frame header + `{"uuid":…,"type":…,"body":`), the shared body, the tail
 * (`,"timestamp":"…"}`). */
static struct buf *make_tick(const char *body, size_t body_len) {
    char id[37], ts[48];
    uuid4(id);
    timestamp(ts);
    char head_json[128], tail[64];
    int hl = snprintf(head_json, sizeof head_json, "{\"uuid\":\"%s\",\"type\":\"DATA_DYNAMIC\",\"body\":", id);
    int tl = snprintf(tail, sizeof tail, ",\"timestamp\":\"%s\"}", ts);
    size_t payload = (size_t)hl + body_len + (size_t)tl;
    struct buf *b = calloc(1, sizeof *b);
    unsigned char *head = malloc(10 + (size_t)hl);
    char *t = malloc((size_t)tl);
    if (!b || !head || !t) abort();
    size_t h = frame_header(head, payload);
    memcpy(head + h, head_json, (size_t)hl);
    memcpy(t, tail, (size_t)tl);
    b->iov[0] = (struct iovec){head, h + (size_t)hl};
    b->iov[1] = (struct iovec){(void *)body, body_len};
    b->iov[2] = (struct iovec){t, (size_t)tl};
    b->niov = 3;
    b->len = h + payload;
    b->owned[0] = head;
    b->owned[1] = t;
    return b;
}

/* One batch of `count` event frames in one buffer. */
static struct buf *make_batch(long count, size_t size, char machines[][37], long *seq) {
    size_t cap = (size_t)count * (size + 64) + 64;
    unsigned char *p = malloc(cap);
    struct buf *b = calloc(1, sizeof *b);
    if (!p || !b) abort();
    size_t len = 0;
    for (long i = 0; i < count; i++, (*seq)++) {
        const char *kind = EVENTS[*seq % 4];
        const char *machine = machines[(*seq / 4) % 64];
        char id[37], ts[48], msg[4096];
        uuid4(id);
        timestamp(ts);
        size_t base = 110 + strlen(kind) + 47;
        int pad = size > base + 9 ? (int)(size - base - 9) : -1;
        if (pad > 3000) pad = 3000;
        int n;
        if (pad >= 0) {
            char padding[3001];
            memset(padding, 'a', (size_t)pad);
            padding[pad] = 0;
            n = snprintf(msg, sizeof msg,
                         "{\"uuid\":\"%s\",\"type\":\"%s\",\"body\":{\"uuid\":\"%s\",\"pad\":\"%s\"},\"timestamp\":\"%s\"}",
                         id, kind, machine, padding, ts);
        } else {
            n = snprintf(msg, sizeof msg, "{\"uuid\":\"%s\",\"type\":\"%s\",\"body\":{\"uuid\":\"%s\"},\"timestamp\":\"%s\"}",
                         id, kind, machine, ts);
        }
        len += frame_header(p + len, (size_t)n);
        memcpy(p + len, msg, (size_t)n);
        len += (size_t)n;
    }
    b->iov[0] = (struct iovec){p, len};
    b->niov = 1;
    b->len = len;
    b->owned[0] = p;
    return b;
}

static volatile sig_atomic_t flooding = 1;
static void start_flood(int sig) { (void)sig; flooding = 1; }

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) goto usage;
    int port = atoi(argv[1]);
    const char *mode = argv[2];
    size_t size = 0;
    double rate = 0;
    long period_ms = 0;
    if (!strcmp(mode, "tick") && argc == 4) { size = (size_t)atol(argv[3]); period_ms = 1000; latest_wins = 1; }
    else if (!strcmp(mode, "flood") && (argc == 5 || (argc == 6 && !strcmp(argv[5], "wait")))) {
        rate = atof(argv[3]);
        size = (size_t)atol(argv[4]);
        period_ms = 10;
        /* The batch window, for sweeps of frames per write (tests/bench/flood.sh). */
        const char *batch = getenv("FLOOR_BATCH_MS");
        if (batch && atol(batch) > 0) period_ms = atol(batch);
        if (argc == 6) { flooding = 0; signal(SIGUSR2, start_flood); }
    }
    else if (!strcmp(mode, "idle") && argc == 3) { period_ms = 0; }
    else goto usage;
    signal(SIGPIPE, SIG_IGN);
    rng ^= (uint64_t)time(NULL) * 0x2545F4914F6CDD1DULL;

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 4096)) {
        perror("floor: listen");
        return 1;
    }
    ep = epoll_create1(0);
    static int listen_tag, timer_tag;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    int tfd = -1;
    if (period_ms) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        struct itimerspec its = {.it_interval = {period_ms / 1000, (period_ms % 1000) * 1000000L},
                                 .it_value = {period_ms / 1000, (period_ms % 1000) * 1000000L}};
        timerfd_settime(tfd, 0, &its, NULL);
        ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &timer_tag};
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    }

    /* The tick body: {"pad":"aaa…"} sized so that the whole message is `size` bytes. */
    char *body = NULL;
    size_t body_len = 0;
    if (!strcmp(mode, "tick")) {
        size_t pad = size > 132 ? size - 132 : 0;
        body_len = pad + 10;
        body = malloc(body_len);
        if (!body) abort();
        memcpy(body, "{\"pad\":\"", 8);
        memset(body + 8, 'a', pad);
        memcpy(body + 8 + pad, "\"}", 2);
    }
    char machines[64][37];
    for (int i = 0; i < 64; i++) uuid4(machines[i]);
    long seq = 0;
    double owed = 0, last = mono();

    fprintf(stderr, "listening on 127.0.0.1:%d\n", port);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            void *tag = events[i].data.ptr;
            if (tag == &listen_tag) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    if (!c) abort();
                    c->fd = fd;
                    c->rbuf = malloc(4096);
                    if (!c->rbuf) abort();
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
            } else if (tag == &timer_tag) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0) continue;
                if (latest_wins) {
                    broadcast(make_tick(body, body_len));
                } else if (!flooding) {
                    last = mono();
                } else {
                    double now = mono();
                    owed += rate * (now - last);
                    last = now;
                    long k = (long)owed;
                    if (k > 0) {
                        owed -= (double)k;
                        broadcast(make_batch(k, size, machines, &seq));
                    }
                }
            } else {
                struct conn *c = tag;
                if (c->state == CLOSED) continue;
                int ok = 1;
                if (events[i].events & (EPOLLERR | EPOLLHUP)) ok = 0;
                else {
                    if (events[i].events & EPOLLIN)
                        ok = c->state == HANDSHAKE ? handshake(c) : drain(c);
                    if (ok && (events[i].events & EPOLLOUT) && c->state == OPEN) ok = flush_conn(c);
                }
                if (!ok) conn_close(c);
            }
        }
        bury();
    }
usage:
    fprintf(stderr, "usage: floor PORT (tick SIZE | flood RATE SIZE [wait] | idle)\n");
    return 2;
}
