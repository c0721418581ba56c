/*
 * header_filter.c - wasmxds's example proxy-wasm filter, usable both as an HTTP
 * filter (envoy.filters.http.wasm) and as a network (L4) filter
 * (envoy.filters.network.wasm) from the same module and configuration.
 *
 * Configuration: the plugin configuration buffer (in Envoy,
 * PluginConfig.configuration as a google.protobuf.StringValue) holds a JSON
 * object, or nothing at all (an empty configuration is valid and does nothing):
 *
 *   {
 *     "request_headers":  {"x-a": "1", "x-b": 2},  appended to the request
 *     "response_headers": {"x-c": true},           appended to the response
 *     "config_header": "x-config",                 response header carrying the
 *                                                  configuration verbatim
 *     "tcp_prefix": "HELLO ",                      network: bytes inserted once
 *                                                  at the start of the
 *                                                  downstream->upstream stream
 *     "tcp_deny": true,                            network: close every new
 *                                                  connection
 *     "first-header": "some-value"                 any other key with a string,
 *   }                                              number or boolean value is a
 *                                                  response header too
 *
 * Numbers and booleans become their JSON text as written ("2", "true"). Other
 * keys whose value is null, an object or an array are ignored, so the flat
 * configuration of Maistra's "header-append" filter works unchanged. Top-level
 * keys starting with "tcp_" (in any case) are reserved for network options and
 * never become headers; an unknown one is an error. HTTP streams ignore the
 * network options and connections ignore the header options, so one
 * configuration can serve both filter types. Anything else (broken JSON, a
 * non-object document, a non-object header section, a header value that is
 * null/object/array, an invalid header name or value, a mistyped network
 * option, exceeded limits) makes proxy_on_configure return false, which is how
 * the host learns to reject the configuration; the reason is logged at error
 * level.
 *
 * ABI choices (proxy-wasm v0.2.1, written directly against the host imports,
 * no SDK and no libc, so the module is small and has no WASI imports):
 *
 * - Every proxy_on_* callback is optional per the spec, so only the ones this
 *   filter needs are exported (see WASM_EXPORTS in the Makefile). proxy_on_log
 *   is deliberately absent: the host skips callbacks a module does not export,
 *   which saves a VM crossing per request. For network filters only
 *   proxy_on_new_connection (tcp_deny) and proxy_on_downstream_data
 *   (tcp_prefix) are exported; the upstream-data and connection-close
 *   callbacks are not needed (Envoy still runs proxy_on_done/proxy_on_delete
 *   when the downstream connection closes). An HTTP filter never calls the
 *   network callbacks and a network filter never calls the header ones.
 * - Both proxy_on_memory_allocate (the spec's name) and malloc (the deprecated
 *   name that proxy-wasm-cpp-host, and so Envoy, looks up first) are exported
 *   and share one allocator.
 * - One VM can host several root contexts: Envoy keys root contexts by plugin
 *   configuration, so two filters loading this module with different
 *   configurations share a VM. Configuration therefore lives per root context
 *   and each HTTP stream or TCP connection context remembers its parent root
 *   context id.
 * - The host copies the configuration into memory obtained from our allocator;
 *   it is parsed into one module-owned block per root context and then freed.
 *   The allocator reuses freed blocks of the same size class, so reloading a
 *   configuration again and again does not grow memory.
 * - The VM is single threaded and callbacks do not nest, so parser scratch
 *   state is static rather than on the (small, fixed) shadow stack.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint32_t u32;

/* ---- host imports (module "env", proxy-wasm v0.2.1) --------------------- */

#define HOST(name) __attribute__((import_module("env"), import_name(#name)))

HOST(proxy_log) u32 proxy_log(u32 level, const char *msg, size_t size);
HOST(proxy_get_buffer_bytes)
u32 proxy_get_buffer_bytes(u32 buffer, size_t start, size_t max_size, u8 **data, size_t *size);
HOST(proxy_set_buffer_bytes)
u32 proxy_set_buffer_bytes(u32 buffer, size_t start, size_t length, const u8 *data, size_t size);
HOST(proxy_add_header_map_value)
u32 proxy_add_header_map_value(u32 map, const u8 *key, size_t key_size, const u8 *value,
                               size_t value_size);
HOST(proxy_close_stream) u32 proxy_close_stream(u32 stream);

enum { LOG_INFO = 2, LOG_WARN = 3, LOG_ERROR = 4 };
enum { BUFFER_DOWNSTREAM_DATA = 2, BUFFER_PLUGIN_CONFIGURATION = 7 };
enum { MAP_REQUEST_HEADERS = 0, MAP_RESPONSE_HEADERS = 2 };
enum { STREAM_DOWNSTREAM = 2 };
enum { ACTION_CONTINUE = 0, ACTION_PAUSE = 1 };

/* ---- limits: configure fails cleanly instead of overflowing ------------- */

#define MAX_CONFIG_SIZE 65536u /* bytes of configuration JSON */
#define MAX_HEADERS 64u        /* per direction */
#define MAX_NAME_LEN 256u      /* decoded header name */
#define MAX_VALUE_LEN 8192u    /* decoded header value, also caps config_header */
#define MAX_TCP_PREFIX 4096u   /* decoded tcp_prefix bytes */
#define MAX_DEPTH 32u          /* JSON nesting; the validator recurses */

/* ---- freestanding helpers ---------------------------------------------- */

static void copy_bytes(u8 *dst, const u8 *src, size_t n) {
    while (n--) *dst++ = *src++;
}

static bool bytes_equal(const u8 *a, size_t alen, const char *b) {
    size_t i = 0;
    for (; i < alen; i++)
        if (b[i] == '\0' || (u8)b[i] != a[i]) return false;
    return b[i] == '\0';
}

/* ---- allocator ----------------------------------------------------------
 * Power-of-two size classes (16 B .. 512 MiB) with one free list each, carved
 * from the end of linear memory. Simple, O(1), and reuse is exact for the
 * repeated same-size allocations a configuration reload produces. */

extern u8 __heap_base;

#define PAGE_SIZE 65536u
#define BLOCK_HEADER 8u
#define BLOCK_MAGIC 0x68667761u
#define NUM_CLASSES 26u

struct block {
    u32 magic;
    u32 size_class;
};

static u8 *heap_top;
static void *free_lists[NUM_CLASSES];

static void *mem_alloc(size_t size) {
    if (size > ((size_t)16 << (NUM_CLASSES - 1)) - BLOCK_HEADER) return NULL;
    u32 cls = 0;
    size_t block_size = 16;
    while (block_size < size + BLOCK_HEADER) {
        block_size <<= 1;
        cls++;
    }
    u8 *block = free_lists[cls];
    if (block) {
        free_lists[cls] = *(void **)(block + BLOCK_HEADER);
    } else {
        if (!heap_top) heap_top = (u8 *)(((uintptr_t)&__heap_base + 15) & ~(uintptr_t)15);
        uint64_t end = (uint64_t)(uintptr_t)heap_top + block_size;
        uint64_t limit = (uint64_t)__builtin_wasm_memory_size(0) * PAGE_SIZE;
        if (end > limit) {
            size_t pages = (size_t)((end - limit + PAGE_SIZE - 1) / PAGE_SIZE);
            if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return NULL;
        }
        block = heap_top;
        heap_top += block_size;
    }
    struct block *header = (struct block *)block;
    header->magic = BLOCK_MAGIC;
    header->size_class = cls;
    return block + BLOCK_HEADER;
}

static void mem_free(void *ptr) {
    if (!ptr) return;
    u8 *block = (u8 *)ptr - BLOCK_HEADER;
    struct block *header = (struct block *)block;
    /* A foreign or double-freed pointer is leaked rather than corrupting a list. */
    if (header->magic != BLOCK_MAGIC || header->size_class >= NUM_CLASSES) return;
    header->magic = 0;
    *(void **)ptr = free_lists[header->size_class];
    free_lists[header->size_class] = block;
}

void *proxy_on_memory_allocate(size_t size) { return mem_alloc(size); }
void *malloc(size_t size) { return mem_alloc(size); }

/* ---- logging ------------------------------------------------------------ */

static char log_buf[384];
static size_t log_len;

static void log_char(char ch) {
    if (log_len < sizeof log_buf) log_buf[log_len++] = ch;
}

static void log_str(const char *s) {
    while (*s) log_char(*s++);
}

static void log_begin(void) {
    log_len = 0;
    log_str("header-filter: ");
}

static void log_u32(u32 v) {
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) log_char(digits[--n]);
}

/* Untrusted bytes (header names) are logged printable-only and truncated. */
static void log_quoted(const u8 *p, size_t n) {
    log_char('"');
    for (size_t i = 0; i < n && i < 64; i++) log_char(p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?');
    if (n > 64) log_str("...");
    log_char('"');
}

static void log_emit(u32 level) { proxy_log(level, log_buf, log_len); }

/* ---- JSON ----------------------------------------------------------------
 * A validating recursive-descent parser over the raw buffer. Strings are
 * scanned once to validate and measure them (a "span"), and decoded later
 * straight into the configuration block, so no intermediate copies exist. */

struct cursor {
    const u8 *begin, *p, *end;
    const char *error;
    const u8 *error_at;
};

struct span {
    const u8 *raw; /* string contents without quotes, or literal text */
    u32 raw_len;
    u32 len;       /* decoded length */
    bool is_string;
};

enum kind { K_ERROR, K_STRING, K_LITERAL, K_NULL, K_COMPOUND };

static bool fail_at(struct cursor *c, const u8 *at, const char *msg) {
    if (!c->error) {
        c->error = msg;
        c->error_at = at;
    }
    return false;
}

static bool fail(struct cursor *c, const char *msg) { return fail_at(c, c->p, msg); }

static int peek(const struct cursor *c) { return c->p < c->end ? *c->p : -1; }

static void skip_ws(struct cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static bool read_hex4(struct cursor *c, u32 *out) {
    u32 v = 0;
    for (int i = 0; i < 4; i++) {
        int ch = peek(c);
        if (ch >= '0' && ch <= '9') v = v * 16 + (u32)(ch - '0');
        else if (ch >= 'a' && ch <= 'f') v = v * 16 + (u32)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F') v = v * 16 + (u32)(ch - 'A' + 10);
        else return fail(c, "invalid \\u escape");
        c->p++;
    }
    *out = v;
    return true;
}

static size_t put_utf8(u8 *dst, u32 cp) {
    if (cp < 0x80) {
        if (dst) dst[0] = (u8)cp;
        return 1;
    }
    if (cp < 0x800) {
        if (dst) {
            dst[0] = (u8)(0xc0 | (cp >> 6));
            dst[1] = (u8)(0x80 | (cp & 0x3f));
        }
        return 2;
    }
    if (cp < 0x10000) {
        if (dst) {
            dst[0] = (u8)(0xe0 | (cp >> 12));
            dst[1] = (u8)(0x80 | ((cp >> 6) & 0x3f));
            dst[2] = (u8)(0x80 | (cp & 0x3f));
        }
        return 3;
    }
    if (dst) {
        dst[0] = (u8)(0xf0 | (cp >> 18));
        dst[1] = (u8)(0x80 | ((cp >> 12) & 0x3f));
        dst[2] = (u8)(0x80 | ((cp >> 6) & 0x3f));
        dst[3] = (u8)(0x80 | (cp & 0x3f));
    }
    return 4;
}

/* Scans string contents up to and including the closing quote (the cursor is
 * just past the opening one). With dst it also decodes; without, it only
 * validates and counts, which is how spans are measured. */
static bool string_body(struct cursor *c, u8 *dst, size_t *len) {
    size_t n = 0;
    for (;;) {
        if (c->p >= c->end) return fail(c, "unterminated string");
        u8 ch = *c->p;
        if (ch == '"') break;
        if (ch < 0x20) return fail(c, "raw control character in string");
        c->p++;
        if (ch != '\\') {
            if (dst) dst[n] = ch;
            n++;
            continue;
        }
        int esc = peek(c);
        c->p++;
        u32 cp;
        switch (esc) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (!read_hex4(c, &cp)) return false;
            if (cp >= 0xdc00 && cp <= 0xdfff) return fail(c, "unpaired surrogate in \\u escape");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                u32 low;
                if (peek(c) != '\\' || c->p + 1 >= c->end || c->p[1] != 'u')
                    return fail(c, "unpaired surrogate in \\u escape");
                c->p += 2;
                if (!read_hex4(c, &low)) return false;
                if (low < 0xdc00 || low > 0xdfff)
                    return fail(c, "unpaired surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            }
            break;
        default:
            c->p--;
            return fail(c, "invalid escape in string");
        }
        n += put_utf8(dst ? dst + n : NULL, cp);
    }
    c->p++;
    *len = n;
    return true;
}

static bool parse_string(struct cursor *c, struct span *out) {
    c->p++; /* opening quote */
    const u8 *start = c->p;
    size_t len;
    if (!string_body(c, NULL, &len)) return false;
    out->raw = start;
    out->raw_len = (u32)(c->p - 1 - start);
    out->len = (u32)len;
    out->is_string = true;
    return true;
}

static void decode_span(const struct span *s, u8 *dst) {
    if (!s->is_string) {
        copy_bytes(dst, s->raw, s->raw_len);
        return;
    }
    /* Already validated, so this cannot fail. */
    struct cursor c = {s->raw, s->raw, s->raw + s->raw_len + 1, NULL, NULL};
    size_t len;
    string_body(&c, dst, &len);
}

static bool digits(struct cursor *c) {
    const u8 *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    return c->p > start || fail(c, "malformed number");
}

static bool parse_number(struct cursor *c) {
    if (peek(c) == '-') c->p++;
    if (peek(c) == '0') {
        c->p++;
    } else if (!digits(c)) {
        return false;
    }
    if (peek(c) == '.') {
        c->p++;
        if (!digits(c)) return false;
    }
    if (peek(c) == 'e' || peek(c) == 'E') {
        c->p++;
        if (peek(c) == '+' || peek(c) == '-') c->p++;
        if (!digits(c)) return false;
    }
    return true;
}

static bool parse_word(struct cursor *c, const char *word) {
    for (const char *w = word; *w; w++, c->p++)
        if (peek(c) != *w) return fail(c, "invalid literal");
    return true;
}

typedef bool (*member_fn)(struct cursor *c, u32 depth, const struct span *key, void *ctx);

static enum kind parse_value(struct cursor *c, u32 depth, struct span *out);

static bool parse_object(struct cursor *c, u32 depth, member_fn on_member, void *ctx) {
    if (depth > MAX_DEPTH) return fail(c, "JSON nested too deeply");
    c->p++; /* '{' */
    skip_ws(c);
    if (peek(c) == '}') {
        c->p++;
        return true;
    }
    for (;;) {
        skip_ws(c);
        if (peek(c) != '"') return fail(c, "expected a string key");
        struct span key;
        if (!parse_string(c, &key)) return false;
        skip_ws(c);
        if (peek(c) != ':') return fail(c, "expected ':' after key");
        c->p++;
        skip_ws(c);
        if (!on_member(c, depth, &key, ctx)) return false;
        skip_ws(c);
        if (peek(c) == ',') {
            c->p++;
        } else if (peek(c) == '}') {
            c->p++;
            return true;
        } else {
            return fail(c, "expected ',' or '}' in object");
        }
    }
}

static bool parse_array(struct cursor *c, u32 depth) {
    if (depth > MAX_DEPTH) return fail(c, "JSON nested too deeply");
    c->p++; /* '[' */
    skip_ws(c);
    if (peek(c) == ']') {
        c->p++;
        return true;
    }
    for (;;) {
        skip_ws(c);
        struct span ignored;
        if (parse_value(c, depth + 1, &ignored) == K_ERROR) return false;
        skip_ws(c);
        if (peek(c) == ',') {
            c->p++;
        } else if (peek(c) == ']') {
            c->p++;
            return true;
        } else {
            return fail(c, "expected ',' or ']' in array");
        }
    }
}

static bool skip_member(struct cursor *c, u32 depth, const struct span *key, void *ctx) {
    (void)key;
    (void)ctx;
    struct span ignored;
    return parse_value(c, depth + 1, &ignored) != K_ERROR;
}

static enum kind parse_value(struct cursor *c, u32 depth, struct span *out) {
    const u8 *start = c->p;
    switch (peek(c)) {
    case '"':
        return parse_string(c, out) ? K_STRING : K_ERROR;
    case '{':
        return parse_object(c, depth, skip_member, NULL) ? K_COMPOUND : K_ERROR;
    case '[':
        return parse_array(c, depth) ? K_COMPOUND : K_ERROR;
    case 'n':
        return parse_word(c, "null") ? K_NULL : K_ERROR;
    case 't':
        if (!parse_word(c, "true")) return K_ERROR;
        break;
    case 'f':
        if (!parse_word(c, "false")) return K_ERROR;
        break;
    case -1:
        fail(c, "unexpected end of JSON");
        return K_ERROR;
    default:
        if (peek(c) != '-' && (peek(c) < '0' || peek(c) > '9')) {
            fail(c, "unexpected character");
            return K_ERROR;
        }
        if (!parse_number(c)) return K_ERROR;
        break;
    }
    out->raw = start;
    out->raw_len = out->len = (u32)(c->p - start);
    out->is_string = false;
    return K_LITERAL;
}

/* ---- configuration ------------------------------------------------------ */

struct entry {
    struct span name, value;
};

struct entry_list {
    struct entry items[MAX_HEADERS];
    u32 count;
    const char *too_many; /* error message when full */
};

/* Pass-one result: spans into the host's buffer. */
static struct {
    struct entry_list request, response;
    bool has_config_header, has_tcp_prefix, tcp_deny;
    struct span config_header, tcp_prefix;
} parsed;

struct header {
    const u8 *name, *value;
    u32 name_len, value_len;
};

/* Module-owned, one allocation per root context: the struct, the header
 * array (request headers first) and the decoded bytes they (and tcp_prefix)
 * point into. */
struct config {
    u32 request_count, response_count;
    const u8 *tcp_prefix;
    u32 tcp_prefix_len;
    bool tcp_deny;
    struct header headers[];
};

static bool add_entry(struct cursor *c, struct entry_list *list, const struct span *name,
                      const struct span *value, const u8 *at) {
    if (list->count == MAX_HEADERS) return fail_at(c, at, list->too_many);
    if (name->len > MAX_NAME_LEN) return fail_at(c, at, "header name longer than 256 bytes");
    if (value->len > MAX_VALUE_LEN) return fail_at(c, at, "header value longer than 8192 bytes");
    list->items[list->count].name = *name;
    list->items[list->count].value = *value;
    list->count++;
    return true;
}

static bool header_member(struct cursor *c, u32 depth, const struct span *key, void *ctx) {
    const u8 *start = c->p;
    struct span value;
    enum kind kind = parse_value(c, depth + 1, &value);
    if (kind == K_ERROR) return false;
    if (kind != K_STRING && kind != K_LITERAL)
        return fail_at(c, start, "header values must be strings, numbers or booleans");
    return add_entry(c, ctx, key, &value, start);
}

static bool key_is(const struct span *key, const char *name) {
    u8 buf[24];
    if (key->len >= sizeof buf) return false;
    decode_span(key, buf);
    return bytes_equal(buf, key->len, name);
}

/* Whether a key starts with "tcp_", ASCII letters in any case, escapes
 * decoded: such keys are network options, never response headers. Returns
 * false with the cursor failed when out of memory. */
static bool key_is_network(struct cursor *c, const struct span *key, bool *network) {
    *network = false;
    if (key->len < 4) return true;
    u8 *buf = mem_alloc(key->len);
    if (!buf) return fail(c, "out of memory");
    decode_span(key, buf);
    *network = (buf[0] | 0x20) == 't' && (buf[1] | 0x20) == 'c' && (buf[2] | 0x20) == 'p' &&
               buf[3] == '_';
    mem_free(buf);
    return true;
}

static bool network_member(struct cursor *c, const struct span *key, const struct span *value,
                           enum kind kind, const u8 *start) {
    if (key_is(key, "tcp_prefix")) {
        if (kind != K_STRING) return fail_at(c, start, "\"tcp_prefix\" must be a string");
        if (value->len > MAX_TCP_PREFIX)
            return fail_at(c, start, "\"tcp_prefix\" longer than 4096 bytes");
        parsed.tcp_prefix = *value;
        parsed.has_tcp_prefix = true;
        return true;
    }
    if (key_is(key, "tcp_deny")) {
        /* A literal starting with 't' or 'f' is true or false, never a number. */
        if (kind != K_LITERAL || (value->raw[0] != 't' && value->raw[0] != 'f'))
            return fail_at(c, start, "\"tcp_deny\" must be true or false");
        parsed.tcp_deny = value->raw[0] == 't';
        return true;
    }
    return fail_at(c, start, "unknown network option (keys starting with \"tcp_\" are reserved)");
}

static bool top_member(struct cursor *c, u32 depth, const struct span *key, void *ctx) {
    (void)ctx;
    const u8 *start = c->p;
    bool is_request = key_is(key, "request_headers");
    if (is_request || key_is(key, "response_headers")) {
        if (peek(c) != '{')
            return fail(c, is_request ? "\"request_headers\" must be a JSON object"
                                      : "\"response_headers\" must be a JSON object");
        return parse_object(c, depth + 1, header_member,
                            is_request ? &parsed.request : &parsed.response);
    }
    struct span value;
    enum kind kind = parse_value(c, depth + 1, &value);
    if (kind == K_ERROR) return false;
    bool network;
    if (!key_is_network(c, key, &network)) return false;
    if (network) return network_member(c, key, &value, kind, start);
    if (key_is(key, "config_header")) {
        if (kind != K_STRING) return fail_at(c, start, "\"config_header\" must be a string");
        if (value.len > MAX_NAME_LEN) return fail_at(c, start, "header name longer than 256 bytes");
        parsed.config_header = value;
        parsed.has_config_header = true;
        return true;
    }
    /* header-append compatibility: unknown scalar keys are response headers. */
    if (kind == K_STRING || kind == K_LITERAL)
        return add_entry(c, &parsed.response, key, &value, start);
    return true;
}

static bool parse_config(struct cursor *c) {
    parsed.request.count = 0;
    parsed.request.too_many = "more than 64 request headers";
    parsed.response.count = 0;
    parsed.response.too_many = "more than 64 response headers";
    parsed.has_config_header = false;
    parsed.has_tcp_prefix = false;
    parsed.tcp_deny = false;
    skip_ws(c);
    if (peek(c) != '{') return fail(c, "configuration must be a JSON object");
    if (!parse_object(c, 0, top_member, NULL)) return false;
    skip_ws(c);
    return c->p == c->end || fail(c, "unexpected data after the JSON object");
}

/* RFC 9110 token characters; Envoy lower-cases names itself. */
static bool valid_name(const u8 *p, u32 n) {
    if (n == 0) return false;
    for (u32 i = 0; i < n; i++) {
        u8 ch = p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        for (const char *t = "!#$%&'*+-.^_`|~"; !ok && *t; t++) ok = ch == (u8)*t;
        if (!ok) return false;
    }
    return true;
}

/* Field values may carry SP, HTAB, visible ASCII and any byte >= 0x80. */
static bool valid_value(const u8 *p, u32 n) {
    for (u32 i = 0; i < n; i++)
        if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f) return false;
    return true;
}

static void log_config_error(const char *what, const u8 *name, u32 name_len) {
    log_begin();
    log_str("invalid configuration: ");
    log_str(what);
    log_char(' ');
    log_quoted(name, name_len);
    log_emit(LOG_ERROR);
}

static struct config *build_config(const u8 *json, size_t size) {
    struct cursor c = {json, json, json + size, NULL, NULL};
    if (!parse_config(&c)) {
        log_begin();
        log_str("invalid configuration: ");
        log_str(c.error);
        log_str(" at byte ");
        log_u32((u32)(c.error_at - json));
        log_emit(LOG_ERROR);
        return NULL;
    }
    if (parsed.has_config_header && (size > MAX_VALUE_LEN || !valid_value(json, (u32)size))) {
        log_begin();
        log_str("invalid configuration: \"config_header\" needs a configuration of at most 8192 "
                "bytes without control characters (such as newlines), as it is sent verbatim");
        log_emit(LOG_ERROR);
        return NULL;
    }

    u32 req = parsed.request.count, resp = parsed.response.count;
    u32 total = req + resp + (parsed.has_config_header ? 1 : 0);
    size_t bytes = sizeof(struct config) + total * sizeof(struct header);
    for (u32 i = 0; i < req; i++)
        bytes += parsed.request.items[i].name.len + parsed.request.items[i].value.len;
    for (u32 i = 0; i < resp; i++)
        bytes += parsed.response.items[i].name.len + parsed.response.items[i].value.len;
    if (parsed.has_config_header) bytes += parsed.config_header.len + size;
    if (parsed.has_tcp_prefix) bytes += parsed.tcp_prefix.len;

    struct config *cfg = mem_alloc(bytes);
    if (!cfg) {
        log_begin();
        log_str("out of memory storing the configuration");
        log_emit(LOG_ERROR);
        return NULL;
    }
    cfg->request_count = req;
    cfg->response_count = total - req;
    cfg->tcp_deny = parsed.tcp_deny;
    u8 *out = (u8 *)&cfg->headers[total];
    cfg->tcp_prefix = out;
    cfg->tcp_prefix_len = parsed.has_tcp_prefix ? parsed.tcp_prefix.len : 0;
    if (parsed.has_tcp_prefix) decode_span(&parsed.tcp_prefix, out);
    out += cfg->tcp_prefix_len;
    for (u32 i = 0; i < req + resp; i++) {
        const struct entry *e =
            i < req ? &parsed.request.items[i] : &parsed.response.items[i - req];
        struct header *h = &cfg->headers[i];
        h->name = out;
        h->name_len = e->name.len;
        decode_span(&e->name, out);
        out += h->name_len;
        h->value = out;
        h->value_len = e->value.len;
        decode_span(&e->value, out);
        out += h->value_len;
        if (!valid_name(h->name, h->name_len)) {
            log_config_error("invalid header name", h->name, h->name_len);
            mem_free(cfg);
            return NULL;
        }
        if (!valid_value(h->value, h->value_len)) {
            log_config_error("control character in the value of header", h->name, h->name_len);
            mem_free(cfg);
            return NULL;
        }
    }
    if (parsed.has_config_header) {
        struct header *h = &cfg->headers[total - 1];
        h->name = out;
        h->name_len = parsed.config_header.len;
        decode_span(&parsed.config_header, out);
        out += h->name_len;
        h->value = out;
        h->value_len = (u32)size;
        copy_bytes(out, json, size);
        if (!valid_name(h->name, h->name_len)) {
            log_config_error("invalid \"config_header\" name", h->name, h->name_len);
            mem_free(cfg);
            return NULL;
        }
    }
    return cfg;
}

/* ---- contexts ----------------------------------------------------------- */

struct root {
    u32 id;
    struct config *config; /* NULL: nothing to add */
    struct root *next;
};

struct stream {
    u32 id, root_id;
    struct stream *next;
    bool data_seen; /* network: downstream data has arrived (tcp_prefix sent) */
};

#define STREAM_BUCKETS 256u

static struct root *roots;
static struct stream *streams[STREAM_BUCKETS];

static struct root *find_root(u32 id) {
    for (struct root *r = roots; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

static struct root *get_root(u32 id) {
    struct root *r = find_root(id);
    if (r) return r;
    r = mem_alloc(sizeof *r);
    if (!r) return NULL;
    r->id = id;
    r->config = NULL;
    r->next = roots;
    roots = r;
    return r;
}

static struct stream **stream_slot(u32 id) {
    struct stream **slot = &streams[id % STREAM_BUCKETS];
    while (*slot && (*slot)->id != id) slot = &(*slot)->next;
    return slot;
}

void proxy_abi_version_0_2_1(void) {}

void proxy_on_context_create(u32 context_id, u32 parent_context_id) {
    if (parent_context_id == 0) {
        get_root(context_id);
        return;
    }
    struct stream **slot = stream_slot(context_id);
    if (*slot) return;
    struct stream *s = mem_alloc(sizeof *s);
    if (!s) return; /* the stream just passes through unmodified */
    s->id = context_id;
    s->root_id = parent_context_id;
    s->next = NULL;
    s->data_seen = false;
    *slot = s;
}

u32 proxy_on_vm_start(u32 root_context_id, size_t vm_configuration_size) {
    (void)root_context_id;
    (void)vm_configuration_size;
    return true;
}

u32 proxy_on_configure(u32 root_context_id, size_t configuration_size) {
    struct root *r = get_root(root_context_id);
    if (!r) {
        log_begin();
        log_str("out of memory creating the root context");
        log_emit(LOG_ERROR);
        return false;
    }
    struct config *cfg = NULL;
    if (configuration_size > MAX_CONFIG_SIZE) {
        log_begin();
        log_str("invalid configuration: ");
        log_u32((u32)configuration_size);
        log_str(" bytes is over the 65536-byte limit");
        log_emit(LOG_ERROR);
        return false;
    }
    if (configuration_size > 0) {
        u8 *json = NULL;
        size_t size = 0;
        u32 status = proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, configuration_size,
                                            &json, &size);
        if (status != 0) {
            log_begin();
            log_str("cannot read the plugin configuration, status ");
            log_u32(status);
            log_emit(LOG_ERROR);
            return false;
        }
        cfg = build_config(json, size);
        mem_free(json);
        if (!cfg) return false;
    }
    /* Replace only on success: a rejected update leaves the old one working. */
    mem_free(r->config);
    r->config = cfg;
    log_begin();
    log_str("configured ");
    log_u32(cfg ? cfg->request_count : 0);
    log_str(" request header(s) and ");
    log_u32(cfg ? cfg->response_count : 0);
    log_str(" response header(s)");
    if (cfg && cfg->tcp_prefix_len) {
        log_str(", a ");
        log_u32(cfg->tcp_prefix_len);
        log_str("-byte tcp_prefix");
    }
    if (cfg && cfg->tcp_deny) log_str(", tcp_deny");
    log_emit(LOG_INFO);
    return true;
}

static const struct config *stream_config(u32 context_id) {
    struct stream *s = *stream_slot(context_id);
    struct root *r = s ? find_root(s->root_id) : NULL;
    return r ? r->config : NULL;
}

static void add_headers(u32 map, const struct header *h, u32 count) {
    for (u32 i = 0; i < count; i++, h++) {
        u32 status = proxy_add_header_map_value(map, h->name, h->name_len, h->value, h->value_len);
        if (status != 0) {
            log_begin();
            log_str("cannot add header ");
            log_quoted(h->name, h->name_len);
            log_str(", status ");
            log_u32(status);
            log_emit(LOG_WARN);
        }
    }
}

u32 proxy_on_request_headers(u32 context_id, size_t num_headers, u32 end_of_stream) {
    (void)num_headers;
    (void)end_of_stream;
    const struct config *cfg = stream_config(context_id);
    if (cfg) add_headers(MAP_REQUEST_HEADERS, cfg->headers, cfg->request_count);
    return ACTION_CONTINUE;
}

u32 proxy_on_response_headers(u32 context_id, size_t num_headers, u32 end_of_stream) {
    (void)num_headers;
    (void)end_of_stream;
    const struct config *cfg = stream_config(context_id);
    if (cfg)
        add_headers(MAP_RESPONSE_HEADERS, cfg->headers + cfg->request_count, cfg->response_count);
    return ACTION_CONTINUE;
}

/* ---- network (L4) filter -------------------------------------------------
 * Envoy creates the connection's context (proxy_on_context_create) right
 * before proxy_on_new_connection, and runs proxy_on_done/proxy_on_delete
 * when the downstream connection closes. */

static void log_status(const char *what, u32 status) {
    log_begin();
    log_str(what);
    log_str(", status ");
    log_u32(status);
    log_emit(LOG_WARN);
}

u32 proxy_on_new_connection(u32 context_id) {
    const struct config *cfg = stream_config(context_id);
    if (!cfg || !cfg->tcp_deny) return ACTION_CONTINUE;
    /* Envoy defers the close until this callback returns; pausing keeps the
     * rest of the chain (tcp_proxy) from ever connecting upstream, so even if
     * the close failed nothing would be forwarded. */
    u32 status = proxy_close_stream(STREAM_DOWNSTREAM);
    if (status != 0) log_status("cannot close the denied connection", status);
    return ACTION_PAUSE;
}

u32 proxy_on_downstream_data(u32 context_id, size_t data_size, u32 end_of_stream) {
    (void)data_size;
    (void)end_of_stream;
    struct stream *s = *stream_slot(context_id);
    if (!s || s->data_seen) return ACTION_CONTINUE;
    s->data_seen = true;
    const struct config *cfg = stream_config(context_id);
    if (cfg && cfg->tcp_prefix_len) {
        /* start 0, length 0: prepend to the data about to go upstream. */
        u32 status = proxy_set_buffer_bytes(BUFFER_DOWNSTREAM_DATA, 0, 0, cfg->tcp_prefix,
                                            cfg->tcp_prefix_len);
        if (status != 0) log_status("cannot insert tcp_prefix", status);
    }
    return ACTION_CONTINUE;
}

u32 proxy_on_done(u32 context_id) {
    (void)context_id;
    return true;
}

void proxy_on_delete(u32 context_id) {
    struct stream **slot = stream_slot(context_id);
    if (*slot) {
        struct stream *s = *slot;
        *slot = s->next;
        mem_free(s);
        return;
    }
    for (struct root **rp = &roots; *rp; rp = &(*rp)->next) {
        if ((*rp)->id == context_id) {
            struct root *r = *rp;
            *rp = r->next;
            mem_free(r->config);
            mem_free(r);
            return;
        }
    }
}
