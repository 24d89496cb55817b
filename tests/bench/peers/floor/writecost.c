/*
 * What one write costs the sending core on this machine, as a function of the frames it
 * carries: N loopback TCP connections (TCP_NODELAY on the sending side), a reader process on
 * another core draining every socket with epoll, and rounds of one writev per socket of k
 * pre-framed 200-byte WebSocket text frames. For each k it reports the sender's CPU time
 * (utime + stime from getrusage: on loopback the receive path runs in softirq on the sending
 * core and is charged to the sender) per write and per frame, and the deliveries per
 * CPU-second that follow; at the end the least-squares fit cpu(k) = fixed + k * per_frame.
 *
 *   writecost [-n CONNS] [-s FRAME_BYTES] [-r ROUNDS] [-i] [-w CPU] [-c CPU] K...
 *
 * -i writes two iovecs per frame (header, shared payload: Orchard's layout) instead of one
 * pre-framed buffer per write (the floor's). Each round is followed by an idle pause as long
 * as the round took, so that the reader keeps up and no write meets a full socket buffer
 * (writes that do are retried after poll and counted).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) perror("sched_setaffinity");
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void reader(int *fds, int n) {
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    static char buf[65536];
    struct epoll_event evs[256];
    for (;;) {
        int m = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < m; i++) {
            ssize_t r = read(evs[i].data.fd, buf, sizeof buf);
            if (r == 0) _exit(0);
        }
    }
}

int main(int argc, char **argv) {
    int n = 1000, size = 200, rounds = 200, iov_per_frame = 0, wcpu = 0, rcpu = 1, opt;
    while ((opt = getopt(argc, argv, "n:s:r:iw:c:")) != -1) {
        switch (opt) {
        case 'n': n = atoi(optarg); break;
        case 's': size = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'i': iov_per_frame = 1; break;
        case 'w': wcpu = atoi(optarg); break;
        case 'c': rcpu = atoi(optarg); break;
        default: goto usage;
        }
    }
    if (optind >= argc || size < 2 || size > 65535) goto usage;
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 4096) ||
        getsockname(ls, (struct sockaddr *)&addr, &alen)) {
        perror("listen");
        return 1;
    }
    int *wfd = malloc(sizeof(int) * (size_t)n), *rfd = malloc(sizeof(int) * (size_t)n);
    int one = 1;
    for (int i = 0; i < n; i++) {
        rfd[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(rfd[i], (struct sockaddr *)&addr, sizeof addr)) { perror("connect"); return 1; }
        wfd[i] = accept(ls, NULL, NULL);
        if (wfd[i] < 0) { perror("accept"); return 1; }
        setsockopt(wfd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    pid_t child = fork();
    if (child == 0) {
        pin(rcpu);
        for (int i = 0; i < n; i++) close(wfd[i]);
        reader(rfd, n);
    }
    for (int i = 0; i < n; i++) close(rfd[i]);
    pin(wcpu);

    /* One frame of `size` bytes: its header (2 bytes, or 4 from 126 payload bytes on) and
     * the payload. */
    int hlen = size - 2 < 126 ? 2 : 4;
    int plen = size - hlen;
    unsigned char head[4] = {0x81, (unsigned char)plen, 0, 0};
    if (hlen == 4) { head[1] = 126; head[2] = (unsigned char)(plen >> 8); head[3] = (unsigned char)plen; }
    char *payload = malloc((size_t)plen);
    memset(payload, 'a', (size_t)plen);
    int maxk = 0;
    for (int a = optind; a < argc; a++) if (atoi(argv[a]) > maxk) maxk = atoi(argv[a]);
    if (maxk < 1 || maxk > 512) goto usage;
    unsigned char *framed = malloc((size_t)size * (size_t)maxk);
    for (int f = 0; f < maxk; f++) {
        memcpy(framed + f * size, head, (size_t)hlen);
        memcpy(framed + f * size + hlen, payload, (size_t)plen);
    }
    struct iovec *iov = malloc(sizeof *iov * (size_t)(2 * maxk));

    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int points = 0;
    printf("%6s %10s %12s %12s %14s %8s\n", "k", "writes", "us/write", "ns/frame", "frames/cpu-s", "eagain");
    for (int a = optind; a < argc; a++) {
        int k = atoi(argv[a]);
        if (k < 1) continue;
        int niov;
        if (iov_per_frame) {
            for (int f = 0; f < k; f++) {
                iov[2 * f] = (struct iovec){head, (size_t)hlen};
                iov[2 * f + 1] = (struct iovec){payload, (size_t)plen};
            }
            niov = 2 * k;
        } else {
            iov[0] = (struct iovec){framed, (size_t)size * (size_t)k};
            niov = 1;
        }
        size_t total = (size_t)size * (size_t)k;
        long eagain = 0, writes = 0;
        double cpu = 0;
        for (int r = 0; r < rounds; r++) {
            double c0 = cpu_s(), t0 = mono();
            for (int i = 0; i < n; i++) {
                ssize_t w = writev(wfd[i], iov, niov);
                if (w != (ssize_t)total) {
                    /* A full buffer (or a short write): finish this one blocking. */
                    eagain++;
                    size_t done = w > 0 ? (size_t)w : 0;
                    while (done < total) {
                        ssize_t x = write(wfd[i], framed + done % (size_t)size, 1);
                        if (x > 0) done += (size_t)x;
                        else if (errno != EINTR && errno != EAGAIN) { perror("write"); return 1; }
                    }
                }
                writes++;
            }
            cpu += cpu_s() - c0;
            double took = mono() - t0;
            struct timespec pause = {0, (long)(took * 1e9)};
            nanosleep(&pause, NULL);
        }
        double us = cpu / (double)writes * 1e6;
        printf("%6d %10ld %12.2f %12.1f %14.0f %8ld\n", k, writes, us, us * 1000 / k,
               (double)writes * k / cpu, eagain);
        fflush(stdout);
        sx += k; sy += us; sxx += (double)k * k; sxy += k * us;
        points++;
    }
    if (points >= 2) {
        double slope = (points * sxy - sx * sy) / (points * sxx - sx * sx);
        double icpt = (sy - slope * sx) / points;
        printf("fit: cpu per write = %.2f us + k * %.1f ns (%d points, %d connections, %d-byte frames, %s)\n",
               icpt, slope * 1000, points, n, size, iov_per_frame ? "2 iovecs per frame" : "one buffer per write");
    }
    for (int i = 0; i < n; i++) close(wfd[i]);
    kill(child, SIGTERM);
    waitpid(child, NULL, 0);
    return 0;
usage:
    fprintf(stderr, "usage: writecost [-n CONNS] [-s FRAME_BYTES] [-r ROUNDS] [-i] [-w CPU] [-c CPU] K...\n");
    return 2;
}
