/*
 * orchard_plugin.h — the Orchard backend plugin ABI, version 1.
 *
 * A plugin is a shared library exporting one function:
 *
 *     const orch_plugin_v1 *orchard_plugin_v1(void);
 *
 * returning a pointer to a table that lives as long as the library (a static). The host reads
 * abi_version first and refuses the plugin unless it equals ORCH_ABI_VERSION. An incompatible
 * future ABI gets a new symbol (orchard_plugin_v2), so one library can offer both.
 *
 * Data crosses the boundary as JSON documents (UTF-8) described in plugin-api/README.md,
 * except console data, which is raw bytes.
 *
 * OWNERSHIP (the side that allocates frees it):
 *   orch_slice   borrowed: valid only during the call it is passed to; copy what you keep.
 *   orch_buf     output of a call, allocated by the plugin; the host copies it and hands it
 *                back exactly once to the same plugin's free_buf. A buf with ptr == NULL means
 *                "no bytes" and is not freed.
 *   instance     created by init, owned by the plugin, passed back to every call and finally
 *                to destroy.
 *   orch_host_v1 owned by the host, valid until destroy returns; the plugin may keep the
 *                pointer or copy the struct.
 *
 * THREADING: calls may arrive concurrently from several host threads; a plugin must be
 * thread-safe. Each call has a host-side timeout (seconds): return promptly and carry long
 * work (booting a machine) on your own threads, reporting through emit_event. The host
 * callbacks may be called from any thread, never block, and copy their arguments.
 */
#ifndef ORCHARD_PLUGIN_H
#define ORCHARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ORCH_ABI_VERSION 1u

/* Status codes returned by every call. On ORCH_OK *out holds JSON; otherwise a UTF-8
 * message (possibly empty). */
#define ORCH_OK 0
#define ORCH_ERR_FAILED 1           /* the call failed */
#define ORCH_ERR_UNSUPPORTED 2      /* the plugin does not implement it */
#define ORCH_ERR_NOT_FOUND 3        /* no such machine or console session */
#define ORCH_ERR_INVALID_STATE 4    /* e.g. starting a running machine */
#define ORCH_ERR_INVALID_ARGUMENT 5 /* malformed request or refused value */
#define ORCH_ERR_POISONED 6         /* an earlier panic/crash guard tripped; every call fails */

/* Power actions. */
#define ORCH_POWER_START 0u
#define ORCH_POWER_STOP 1u
#define ORCH_POWER_RESTART 2u
#define ORCH_POWER_SUSPEND 3u
#define ORCH_POWER_RESUME 4u
#define ORCH_POWER_FORCE_OFF 5u

/* Log levels. */
#define ORCH_LOG_ERROR 0u
#define ORCH_LOG_WARN 1u
#define ORCH_LOG_INFO 2u
#define ORCH_LOG_DEBUG 3u

/* Borrowed bytes. OWNERSHIP: the caller's, for the duration of the call. */
typedef struct orch_slice {
    const uint8_t *ptr;
    size_t len;
} orch_slice;

/* Plugin-allocated output. OWNERSHIP: the plugin's; returned through free_buf.
 * cap is for the plugin's allocator (a C plugin using malloc may ignore it). */
typedef struct orch_buf {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} orch_buf;

/* Callbacks of the host. OWNERSHIP: host's; valid until destroy returns. */
typedef struct orch_host_v1 {
    void *ctx; /* opaque; pass it back as the first argument */
    /* One event as JSON, e.g. {"type":"boot_success","uuid":"…"}. */
    void (*emit_event)(void *ctx, orch_slice event_json);
    /* Raw output bytes of an open console session. */
    void (*console_output)(void *ctx, orch_slice session, orch_slice data);
    /* A UTF-8 log line at one of the ORCH_LOG_* levels. */
    void (*log)(void *ctx, uint32_t level, orch_slice message);
} orch_host_v1;

typedef void *orch_instance;

/* The plugin's table. Entries marked optional may be NULL (read as ORCH_ERR_UNSUPPORTED). */
typedef struct orch_plugin_v1 {
    uint32_t abi_version; /* ORCH_ABI_VERSION */
    uint32_t reserved;    /* 0 */

    /* {"name","version","protocol_version":1,"capabilities":[…]}; needs no instance. */
    int32_t (*describe)(orch_buf *out);
    /* config: {"data_dir": "…", "settings": {…}}. On ORCH_OK, *instance is set. */
    int32_t (*init)(orch_slice config, const orch_host_v1 *host, orch_instance *instance,
                    orch_buf *out);
    /* Stops the instance; no call or callback follows. */
    void (*destroy)(orch_instance instance);
    /* Frees a buffer this plugin produced. */
    void (*free_buf)(orch_buf buf);

    /* [MachineInfo] */
    int32_t (*list_machines)(orch_instance instance, orch_buf *out);
    /* MachineInfo of one machine; uuid is UTF-8. Optional. */
    int32_t (*get_properties)(orch_instance instance, orch_slice uuid, orch_buf *out);
    /* [MachineState] for a JSON array of uuids; [] means every machine. */
    int32_t (*bulk_state)(orch_instance instance, orch_slice uuids_json, orch_buf *out);
    /* [MachineDisks], same selection. Optional. */
    int32_t (*disks)(orch_instance instance, orch_slice uuids_json, orch_buf *out);
    /* [MachineConnections], same selection. Optional. */
    int32_t (*connections)(orch_instance instance, orch_slice uuids_json, orch_buf *out);
    /* Starts an ORCH_POWER_* action and returns; progress follows as events. */
    int32_t (*power)(orch_instance instance, orch_slice uuid, uint32_t action, orch_buf *out);
    /* CreateSpec → MachineInfo (stopped). Optional. */
    int32_t (*create)(orch_instance instance, orch_slice spec_json, orch_buf *out);
    /* Deletes a machine. Optional. */
    int32_t (*delete_machine)(orch_instance instance, orch_slice uuid, orch_buf *out);
    /* MetadataUpdate → MachineInfo. Optional. */
    int32_t (*update_metadata)(orch_instance instance, orch_slice uuid, orch_slice update_json,
                               orch_buf *out);
    /* → {"session":"…"}; output arrives through console_output. Optional. */
    int32_t (*console_open)(orch_instance instance, orch_slice uuid, orch_buf *out);
    /* Raw input bytes. Optional. */
    int32_t (*console_write)(orch_instance instance, orch_slice session, orch_slice data,
                             orch_buf *out);
    /* Optional. */
    int32_t (*console_resize)(orch_instance instance, orch_slice session, uint16_t cols,
                              uint16_t rows, orch_buf *out);
    /* Optional. */
    int32_t (*console_close)(orch_instance instance, orch_slice session, orch_buf *out);
} orch_plugin_v1;

/* The one exported symbol. */
const orch_plugin_v1 *orchard_plugin_v1(void);

#ifdef __cplusplus
}
#endif

#endif /* ORCHARD_PLUGIN_H */
