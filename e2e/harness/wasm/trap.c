/*
 * trap.c - a proxy-wasm HTTP filter that traps on request when told to.
 *
 * The plugin configuration (PluginConfig.configuration, a StringValue; from a
 * WasmPlugin, the compact JSON of pluginConfig) is read in proxy_on_configure:
 * if it contains "trap" anywhere (e.g. {"trap":true}), every
 * proxy_on_request_headers executes `unreachable` (__builtin_trap), the failure
 * a buggy module has in a real proxy; anything else lets every request through.
 * One module thus serves as the bad and the good version of a plugin in health
 * tests.
 *
 * Freestanding C against the proxy-wasm v0.2.1 ABI (no libc, no WASI), built at
 * test time by e2e/harness/wasm/__init__.py with clang and wasm-ld.
 */

#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint32_t u32;

#define HOST(name) __attribute__((import_module("env"), import_name(#name)))

HOST(proxy_get_buffer_bytes)
u32 proxy_get_buffer_bytes(u32 buffer, size_t start, size_t max_size, u8 **data, size_t *size);

enum { BUFFER_PLUGIN_CONFIGURATION = 7 };
enum { ACTION_CONTINUE = 0 };

/* A bump allocator: the host allocates only the configuration copy, once per
 * configure, so a few pages are plenty. */
extern u8 __heap_base;
static u8 *heap_top;

void *malloc(size_t size) {
    if (!heap_top) heap_top = &__heap_base;
    size = (size + 15) & ~(size_t)15;
    size_t limit = __builtin_wasm_memory_size(0) * 65536u;
    if ((size_t)(uintptr_t)heap_top + size > limit) {
        if (__builtin_wasm_memory_grow(0, (size + 65535u) / 65536u) == (size_t)-1) return NULL;
    }
    u8 *block = heap_top;
    heap_top += size;
    return block;
}

void *proxy_on_memory_allocate(size_t size) { return malloc(size); }

void proxy_abi_version_0_2_1(void) {}

static int trap_on_request;

void proxy_on_context_create(u32 context_id, u32 parent_id) {
    (void)context_id;
    (void)parent_id;
}

u32 proxy_on_vm_start(u32 root_id, u32 size) {
    (void)root_id;
    (void)size;
    return 1;
}

u32 proxy_on_configure(u32 root_id, u32 size) {
    (void)root_id;
    u8 *data = NULL;
    size_t got = 0;
    trap_on_request = 0;
    if (size >= 4 &&
        proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, &data, &got) == 0) {
        for (size_t i = 0; i + 4 <= got; i++)
            if (data[i] == 't' && data[i + 1] == 'r' && data[i + 2] == 'a' && data[i + 3] == 'p')
                trap_on_request = 1;
    }
    return 1;
}

u32 proxy_on_request_headers(u32 context_id, u32 headers, u32 end_of_stream) {
    (void)context_id;
    (void)headers;
    (void)end_of_stream;
    if (trap_on_request) __builtin_trap();
    return ACTION_CONTINUE;
}

u32 proxy_on_done(u32 context_id) {
    (void)context_id;
    return 1;
}

void proxy_on_delete(u32 context_id) { (void)context_id; }
