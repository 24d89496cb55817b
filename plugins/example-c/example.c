/*
 * example.c: a minimal Orchard backend written in plain C against orchard_plugin.h.
 *
 * It proves that the ABI is language-neutral: no Rust, no JSON library, just the header, libc
 * and pthreads. Two machines live in memory; power actions change their status at once and
 * report the change through the host's emit_event callback, in the order the guide requires.
 * The optional entries (properties, disks, connections, create, delete, metadata, console)
 * are NULL, which the host reads as ORCH_ERR_UNSUPPORTED.
 *
 * Build (see README.md next to this file):
 *   gcc -std=c11 -Wall -Wextra -Werror -shared -fPIC -I plugin-api/include \
 *       plugins/example-c/example.c -o libexample_c.so -lpthread
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orchard_plugin.h"

#define MACHINE_COUNT 2

typedef struct machine {
    const char *uuid;
    const char *title;
    uint32_t vcpu;
    uint64_t ram_mib;
    const char *disk_name;
    uint64_t disk_bytes;
    const char *status; /* "running", "stopped" or "suspended" */
    time_t booted_at;   /* when running: the (virtual) boot time */
    time_t frozen_up;   /* when suspended: seconds of uptime at suspension */
} machine;

typedef struct instance {
    orch_host_v1 host; /* a copy of the host's table; valid until destroy returns */
    pthread_mutex_t lock; /* guards machines: calls arrive concurrently */
    machine machines[MACHINE_COUNT];
} instance;

/* ---- output buffers: malloc'd here, handed back through free_buf ---- */

/* A growable string; on allocation failure it remembers and stops growing. */
typedef struct text {
    char *ptr;
    size_t len;
    size_t cap;
    int failed;
} text;

static void text_add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_add(text *t, const char *fmt, ...) {
    if (t->failed) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        t->failed = 1;
        va_end(again);
        return;
    }
    size_t need = t->len + (size_t)n + 1;
    if (need > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < need) {
            cap *= 2;
        }
        char *grown = realloc(t->ptr, cap);
        if (grown == NULL) {
            t->failed = 1;
            va_end(again);
            return;
        }
        t->ptr = grown;
        t->cap = cap;
    }
    vsnprintf(t->ptr + t->len, t->cap - t->len, fmt, again);
    va_end(again);
    t->len += (size_t)n;
}

/* Moves the text into *out (without its NUL terminator). */
static int32_t text_finish(text *t, orch_buf *out, int32_t status) {
    if (t->failed) {
        free(t->ptr);
        if (out != NULL) {
            *out = (orch_buf){NULL, 0, 0};
        }
        return ORCH_ERR_FAILED;
    }
    if (out == NULL) {
        free(t->ptr);
        return status;
    }
    *out = (orch_buf){(uint8_t *)t->ptr, t->len, t->cap};
    return status;
}

/* Returns `status` with a copy of `message` in *out. */
static int32_t reply(orch_buf *out, int32_t status, const char *message) {
    text t = {0};
    text_add(&t, "%s", message);
    (void)text_finish(&t, out, status); /* out of memory: the status stands, without a message */
    return status;
}

static void free_buf(orch_buf buf) {
    free(buf.ptr);
}

/* ---- helpers ---- */

static int slice_equals(orch_slice s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && (n == 0 || (s.ptr != NULL && memcmp(s.ptr, z, n) == 0));
}

/* Whether `needle` occurs in the slice, surrounded by double quotes. */
static int slice_has_quoted(orch_slice s, const char *needle) {
    size_t n = strlen(needle);
    if (s.ptr == NULL || s.len < n + 2) {
        return 0;
    }
    for (size_t i = 0; i + n + 2 <= s.len; i++) {
        if (s.ptr[i] == '"' && memcmp(s.ptr + i + 1, needle, n) == 0 && s.ptr[i + n + 1] == '"') {
            return 1;
        }
    }
    return 0;
}

/* First non-blank byte of the slice, or -1. */
static int slice_first(orch_slice s, size_t *at) {
    for (size_t i = 0; s.ptr != NULL && i < s.len; i++) {
        uint8_t c = s.ptr[i];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            *at = i;
            return c;
        }
    }
    return -1;
}

static machine *find(instance *inst, orch_slice uuid) {
    for (size_t i = 0; i < MACHINE_COUNT; i++) {
        if (slice_equals(uuid, inst->machines[i].uuid)) {
            return &inst->machines[i];
        }
    }
    return NULL;
}

static uint64_t uptime(const machine *m, time_t now) {
    if (strcmp(m->status, "running") == 0) {
        return now > m->booted_at ? (uint64_t)(now - m->booted_at) : 0;
    }
    if (strcmp(m->status, "suspended") == 0) {
        return (uint64_t)m->frozen_up;
    }
    return 0;
}

/* Emits one event; the host copies it and never blocks, so this is safe under the lock. */
static void emit(instance *inst, const char *type, const char *uuid, const char *status) {
    char json[192];
    int n;
    if (status != NULL) {
        n = snprintf(json, sizeof json, "{\"type\":\"%s\",\"uuid\":\"%s\",\"status\":\"%s\"}", type,
                     uuid, status);
    } else {
        n = snprintf(json, sizeof json, "{\"type\":\"%s\",\"uuid\":\"%s\"}", type, uuid);
    }
    if (n < 0 || (size_t)n >= sizeof json) {
        return;
    }
    orch_slice s = {(const uint8_t *)json, (size_t)n};
    inst->host.emit_event(inst->host.ctx, s);
}

static void set_status(instance *inst, machine *m, const char *status) {
    m->status = status;
    emit(inst, "state_changed", m->uuid, status);
}

static void do_start(instance *inst, machine *m) {
    emit(inst, "boot_start", m->uuid, NULL);
    set_status(inst, m, "booting");
    m->booted_at = time(NULL);
    set_status(inst, m, "running");
    emit(inst, "boot_success", m->uuid, NULL);
}

static void do_stop(instance *inst, machine *m) {
    emit(inst, "shutdown_start", m->uuid, NULL);
    set_status(inst, m, "shutting_down");
    set_status(inst, m, "stopped");
    emit(inst, "shutdown_success", m->uuid, NULL);
}

/* ---- the table ---- */

static int32_t describe(orch_buf *out) {
    return reply(out, ORCH_OK,
                 "{\"name\":\"example-c\",\"version\":\"0.1.0\",\"protocol_version\":1,"
                 "\"capabilities\":[\"events\"]}");
}

static int32_t init(orch_slice config, const orch_host_v1 *host, orch_instance *out_instance,
                    orch_buf *out) {
    (void)config; /* {"data_dir":…,"settings":…}: this example needs neither */
    if (host == NULL || out_instance == NULL) {
        return reply(out, ORCH_ERR_INVALID_ARGUMENT, "null host or instance pointer");
    }
    instance *inst = calloc(1, sizeof *inst);
    if (inst == NULL) {
        return reply(out, ORCH_ERR_FAILED, "out of memory");
    }
    if (pthread_mutex_init(&inst->lock, NULL) != 0) {
        free(inst);
        return reply(out, ORCH_ERR_FAILED, "pthread_mutex_init failed");
    }
    inst->host = *host;
    time_t now = time(NULL);
    inst->machines[0] = (machine){
        .uuid = "00000000-0000-4000-8000-0000000000c1",
        .title = "c-example-1",
        .vcpu = 1,
        .ram_mib = 256,
        .disk_name = "vda",
        .disk_bytes = UINT64_C(2) << 30,
        .status = "stopped",
    };
    inst->machines[1] = (machine){
        .uuid = "00000000-0000-4000-8000-0000000000c2",
        .title = "c-example-2",
        .vcpu = 2,
        .ram_mib = 512,
        .disk_name = "vda",
        .disk_bytes = UINT64_C(4) << 30,
        .status = "running",
        .booted_at = now - 300,
    };
    *out_instance = inst;

    const char *hello = "example-c: 2 machines in memory";
    orch_slice msg = {(const uint8_t *)hello, strlen(hello)};
    inst->host.log(inst->host.ctx, ORCH_LOG_INFO, msg);
    return ORCH_OK;
}

static void destroy(orch_instance handle) {
    instance *inst = handle;
    if (inst == NULL) {
        return;
    }
    pthread_mutex_destroy(&inst->lock);
    free(inst);
}

static int32_t list_machines(orch_instance handle, orch_buf *out) {
    instance *inst = handle;
    if (inst == NULL) {
        return reply(out, ORCH_ERR_INVALID_ARGUMENT, "null instance");
    }
    text t = {0};
    pthread_mutex_lock(&inst->lock);
    text_add(&t, "[");
    for (size_t i = 0; i < MACHINE_COUNT; i++) {
        const machine *m = &inst->machines[i];
        text_add(&t,
                 "%s{\"uuid\":\"%s\",\"title\":\"%s\",\"description\":\"\",\"tags\":[],"
                 "\"kind\":\"vm\",\"vcpu\":%" PRIu32 ",\"ram_max_mib\":%" PRIu64
                 ",\"connections\":{},\"disks\":[{\"system\":true,\"name\":\"%s\","
                 "\"size_bytes\":%" PRIu64 ",\"type\":\"raw\"}]}",
                 i ? "," : "", m->uuid, m->title, m->vcpu, m->ram_mib, m->disk_name,
                 m->disk_bytes);
    }
    text_add(&t, "]");
    pthread_mutex_unlock(&inst->lock);
    return text_finish(&t, out, ORCH_OK);
}

static int32_t bulk_state(orch_instance handle, orch_slice uuids_json, orch_buf *out) {
    instance *inst = handle;
    if (inst == NULL) {
        return reply(out, ORCH_ERR_INVALID_ARGUMENT, "null instance");
    }
    /* No JSON parser here: an array whose first non-blank byte after '[' is ']' selects every
     * machine; otherwise a machine is selected when its uuid appears quoted in the input.
     * Unknown uuids are skipped. */
    size_t at = 0;
    if (slice_first(uuids_json, &at) != '[') {
        return reply(out, ORCH_ERR_INVALID_ARGUMENT, "expected a JSON array of uuids");
    }
    orch_slice rest = {uuids_json.ptr + at + 1, uuids_json.len - at - 1};
    int all = slice_first(rest, &at) == ']';

    text t = {0};
    time_t now = time(NULL);
    int first = 1;
    pthread_mutex_lock(&inst->lock);
    text_add(&t, "[");
    for (size_t i = 0; i < MACHINE_COUNT; i++) {
        const machine *m = &inst->machines[i];
        if (!all && !slice_has_quoted(uuids_json, m->uuid)) {
            continue;
        }
        uint64_t up = uptime(m, now);
        int running = strcmp(m->status, "running") == 0;
        int stopped = strcmp(m->status, "stopped") == 0;
        /* Plausible figures: a little CPU that wobbles, half the memory in use, and counters
         * that grow with uptime. The CPU share is printed from integer tenths so that the
         * process locale can never turn the decimal point into a comma. */
        unsigned cpu_tenths = running ? 25u + (unsigned)(up % 7) * 15u : 0u;
        uint64_t ram_used = stopped ? 0 : m->ram_mib / 2;
        char boot[40] = "null";
        if (!stopped) {
            time_t booted = now - (time_t)up;
            struct tm tm;
            if (gmtime_r(&booted, &tm) != NULL) {
                strftime(boot, sizeof boot, "\"%Y-%m-%dT%H:%M:%SZ\"", &tm);
            }
        }
        text_add(&t,
                 "%s{\"uuid\":\"%s\",\"status\":\"%s\",\"vcpu\":%" PRIu32
                 ",\"cpu_percent\":%u.%u,\"ram_max_mib\":%" PRIu64 ",\"ram_used_mib\":%" PRIu64
                 ",\"boot_timestamp\":%s,\"net_rx_bytes\":%" PRIu64 ",\"net_tx_bytes\":%" PRIu64
                 ",\"disk_read_bytes\":%" PRIu64 ",\"disk_write_bytes\":%" PRIu64 "}",
                 first ? "" : ",", m->uuid, m->status, m->vcpu, cpu_tenths / 10, cpu_tenths % 10,
                 m->ram_mib, ram_used, boot, up * 1500, up * 700, up * 40960, up * 8192);
        first = 0;
    }
    text_add(&t, "]");
    pthread_mutex_unlock(&inst->lock);
    return text_finish(&t, out, ORCH_OK);
}

static int32_t power(orch_instance handle, orch_slice uuid, uint32_t action, orch_buf *out) {
    instance *inst = handle;
    if (inst == NULL) {
        return reply(out, ORCH_ERR_INVALID_ARGUMENT, "null instance");
    }
    if (action > ORCH_POWER_FORCE_OFF) {
        return reply(out, ORCH_ERR_INVALID_ARGUMENT, "unknown power action");
    }
    pthread_mutex_lock(&inst->lock);
    machine *m = find(inst, uuid);
    if (m == NULL) {
        pthread_mutex_unlock(&inst->lock);
        return reply(out, ORCH_ERR_NOT_FOUND, "no such machine");
    }
    int running = strcmp(m->status, "running") == 0;
    int suspended = strcmp(m->status, "suspended") == 0;
    const char *refused = NULL;
    switch (action) {
    case ORCH_POWER_START:
        if (running || suspended) {
            refused = "the machine is not stopped";
        } else {
            do_start(inst, m);
        }
        break;
    case ORCH_POWER_STOP:
        if (!running) {
            refused = "the machine is not running";
        } else {
            do_stop(inst, m);
        }
        break;
    case ORCH_POWER_RESTART:
        if (!running) {
            refused = "the machine is not running";
        } else {
            do_stop(inst, m);
            do_start(inst, m);
        }
        break;
    case ORCH_POWER_SUSPEND:
        if (!running) {
            refused = "the machine is not running";
        } else {
            m->frozen_up = (time_t)uptime(m, time(NULL));
            set_status(inst, m, "suspended");
        }
        break;
    case ORCH_POWER_RESUME:
        if (!suspended) {
            refused = "the machine is not suspended";
        } else {
            m->booted_at = time(NULL) - m->frozen_up;
            set_status(inst, m, "running");
        }
        break;
    default: /* ORCH_POWER_FORCE_OFF */
        if (!running && !suspended) {
            refused = "the machine is already stopped";
        } else {
            set_status(inst, m, "stopped");
        }
        break;
    }
    pthread_mutex_unlock(&inst->lock);
    if (refused != NULL) {
        return reply(out, ORCH_ERR_INVALID_STATE, refused);
    }
    if (out != NULL) {
        *out = (orch_buf){NULL, 0, 0}; /* success carries no bytes */
    }
    return ORCH_OK;
}

static const orch_plugin_v1 TABLE = {
    .abi_version = ORCH_ABI_VERSION,
    .reserved = 0,
    .describe = describe,
    .init = init,
    .destroy = destroy,
    .free_buf = free_buf,
    .list_machines = list_machines,
    .get_properties = NULL,
    .bulk_state = bulk_state,
    .disks = NULL,
    .connections = NULL,
    .power = power,
    .create = NULL,
    .delete_machine = NULL,
    .update_metadata = NULL,
    .console_open = NULL,
    .console_write = NULL,
    .console_resize = NULL,
    .console_close = NULL,
};

const orch_plugin_v1 *orchard_plugin_v1(void) {
    return &TABLE;
}
