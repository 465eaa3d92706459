/*
 * proxy-injector's CNI plugin as the node runs it: /opt/cni/bin/proxy-injector.
 *
 * A static program (no interpreter, no shared library of the node's) that relays each
 * ADD, DEL, CHECK, STATUS and GC to the proxy-injector CNI agent over a root-only Unix
 * socket, and prints what the agent answers. It depends on no PID and on no PATH.
 *
 * When the agent cannot be reached (not listening, not root, not acknowledging within
 * ACK_MS) it fails open: ADD passes prevResult through unchanged, the other commands
 * succeed, and one line goes to the log file. A meshed pod so started fails in
 * proxy-validate, and the agent's repair loop recreates it once it is back.
 *
 * It answers VERSION and every malformed input itself, with a CNI error result.
 *
 * Wire format to the agent: "PIR1", then a big-endian u32 length and the CNI_* variables
 * as NUL-terminated KEY=VALUE strings, then a u32 length and the network configuration.
 * The agent writes one byte 'A' when it accepts the connection, and after its answer one
 * byte (the exit code) followed by what to print, then closes.
 *
 * Built with musl (`musl-gcc -static`, scripts/build-relay) in the image's build stage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_INPUT (1 << 20)
#define MAX_DEPTH 64
#define MAX_ANSWER (4 << 20)
#define ACK_MS 2000
#define MARGIN_MS 2000
#define LOG_MAX_BYTES (1 << 20)
#define DEFAULT_SOCKET "/var/run/proxy-injector/cni.sock"
#define DEFAULT_LOG "/var/log/proxy-injector-cni.log"
#define DEFAULT_TIMEOUT_MS 10000

/* CNI's error codes (SPEC.md "Error"). */
enum { INCOMPATIBLE_VERSION = 1, INVALID_ENVIRONMENT = 4, IO_FAILURE = 5, DECODING_FAILURE = 6,
       INVALID_CONFIG = 7, TRY_AGAIN_LATER = 11 };

static const char *const SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define N_SUPPORTED (sizeof SUPPORTED / sizeof *SUPPORTED)
static const char *const FORWARDED[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",
                                        "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"};
#define N_FORWARDED (sizeof FORWARDED / sizeof *FORWARDED)

struct span { const char *at; size_t len; };

/* What the relay reads of the network configuration: top-level keys only. */
struct config {
    struct span version, prev_result, args, socket, log_file, timeout;
};

struct parser {
    const char *at, *end;
    const char *error;
    struct config *config;
};

static char version_out[16] = "1.1.0";

/* JSON ---------------------------------------------------------------------------------- */

static void skip_space(struct parser *p) {
    while (p->at < p->end && (*p->at == ' ' || *p->at == '\t' || *p->at == '\n' || *p->at == '\r'))
        p->at++;
}

static int fail(struct parser *p, const char *why) {
    if (!p->error) p->error = why;
    return -1;
}

static int is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int parse_string(struct parser *p, struct span *inside) {
    if (p->at >= p->end || *p->at != '"') return fail(p, "a string was expected");
    const char *start = ++p->at;
    while (p->at < p->end) {
        unsigned char c = (unsigned char)*p->at;
        if (c == '"') {
            if (inside) { inside->at = start; inside->len = (size_t)(p->at - start); }
            p->at++;
            return 0;
        }
        if (c < 0x20) return fail(p, "a control character inside a string");
        if (c == '\\') {
            if (++p->at >= p->end) break;
            char e = *p->at;
            if (e == 'u') {
                if (p->end - p->at < 5) break;
                for (int i = 1; i <= 4; i++)
                    if (!is_hex(p->at[i])) return fail(p, "a bad \\u escape");
                p->at += 4;
            } else if (!strchr("\"\\/bfnrt", e)) {
                return fail(p, "a bad escape in a string");
            }
        }
        p->at++;
    }
    return fail(p, "an unterminated string");
}

static int digits(struct parser *p) {
    const char *start = p->at;
    while (p->at < p->end && *p->at >= '0' && *p->at <= '9') p->at++;
    return p->at > start ? 0 : fail(p, "a bad number");
}

static int parse_number(struct parser *p) {
    if (p->at < p->end && *p->at == '-') p->at++;
    if (p->at < p->end && *p->at == '0') p->at++;
    else if (digits(p)) return -1;
    if (p->at < p->end && *p->at == '.') { p->at++; if (digits(p)) return -1; }
    if (p->at < p->end && (*p->at == 'e' || *p->at == 'E')) {
        p->at++;
        if (p->at < p->end && (*p->at == '+' || *p->at == '-')) p->at++;
        if (digits(p)) return -1;
    }
    return 0;
}

static int parse_value(struct parser *p, int depth);

static int parse_literal(struct parser *p, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(p->end - p->at) < n || memcmp(p->at, word, n) != 0)
        return fail(p, "an unexpected character");
    p->at += n;
    return 0;
}

static struct span *wanted(struct config *c, struct span key) {
#define KEY(name, field) \
    if (key.len == sizeof name - 1 && memcmp(key.at, name, key.len) == 0) return &c->field
    KEY("cniVersion", version);
    KEY("prevResult", prev_result);
    KEY("args", args);
    KEY("agentSocket", socket);
    KEY("logFile", log_file);
    KEY("timeoutSeconds", timeout);
#undef KEY
    return NULL;
}

static int parse_object(struct parser *p, int depth) {
    p->at++;
    skip_space(p);
    if (p->at < p->end && *p->at == '}') { p->at++; return 0; }
    for (;;) {
        struct span key;
        skip_space(p);
        if (parse_string(p, &key)) return -1;
        skip_space(p);
        if (p->at >= p->end || *p->at != ':') return fail(p, "a ':' was expected");
        p->at++;
        skip_space(p);
        const char *start = p->at;
        if (parse_value(p, depth + 1)) return -1;
        struct span *slot = depth == 1 ? wanted(p->config, key) : NULL;
        if (slot) { slot->at = start; slot->len = (size_t)(p->at - start); }
        skip_space(p);
        if (p->at < p->end && *p->at == ',') { p->at++; continue; }
        if (p->at < p->end && *p->at == '}') { p->at++; return 0; }
        return fail(p, "a ',' or '}' was expected");
    }
}

static int parse_array(struct parser *p, int depth) {
    p->at++;
    skip_space(p);
    if (p->at < p->end && *p->at == ']') { p->at++; return 0; }
    for (;;) {
        skip_space(p);
        if (parse_value(p, depth + 1)) return -1;
        skip_space(p);
        if (p->at < p->end && *p->at == ',') { p->at++; continue; }
        if (p->at < p->end && *p->at == ']') { p->at++; return 0; }
        return fail(p, "a ',' or ']' was expected");
    }
}

static int parse_value(struct parser *p, int depth) {
    if (depth > MAX_DEPTH) return fail(p, "nested deeper than 64 levels");
    skip_space(p);
    if (p->at >= p->end) return fail(p, "it ends too early");
    switch (*p->at) {
    case '{': return parse_object(p, depth);
    case '[': return parse_array(p, depth);
    case '"': return parse_string(p, NULL);
    case 't': return parse_literal(p, "true");
    case 'f': return parse_literal(p, "false");
    case 'n': return parse_literal(p, "null");
    default:
        if (*p->at == '-' || (*p->at >= '0' && *p->at <= '9')) return parse_number(p);
        return fail(p, "an unexpected character");
    }
}

/* Output -------------------------------------------------------------------------------- */

static void print_error(int code, const char *fmt, ...) {
    char msg[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(msg, sizeof msg, fmt, args);
    va_end(args);
    /* Messages are ours: escape only what JSON forbids in them. */
    printf("{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":\"", version_out, code);
    for (const char *c = msg; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if ((unsigned char)*c < 0x20) printf("\\u%04x", (unsigned char)*c);
        else putchar(*c);
    }
    printf("\"}\n");
    fflush(stdout);
}

static int copy_span(struct span s, char *out, size_t size) {
    if (!s.at || s.len < 2 || s.len - 2 >= size || s.at[0] != '"') return -1;
    memcpy(out, s.at + 1, s.len - 2);
    out[s.len - 2] = '\0';
    return strchr(out, '\\') ? -1 : 0;
}

/* The log file ------------------------------------------------------------------------- */

static void cni_arg(const char *args, const char *key, char *out, size_t size) {
    out[0] = '\0';
    size_t n = strlen(key);
    for (const char *at = args; at && *at; ) {
        const char *end = strchr(at, ';');
        size_t len = end ? (size_t)(end - at) : strlen(at);
        if (len > n && strncmp(at, key, n) == 0 && at[n] == '=') {
            size_t v = len - n - 1 < size - 1 ? len - n - 1 : size - 1;
            memcpy(out, at + n + 1, v);
            out[v] = '\0';
        }
        at = end ? end + 1 : NULL;
    }
}

static void log_line(const char *path, const char *fmt, ...) {
    char rotated[4200];
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > LOG_MAX_BYTES) {
        snprintf(rotated, sizeof rotated, "%s.1", path);
        close(fd);
        rename(path, rotated);
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) return;
    }
    char line[1024], when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    const char *args = getenv("CNI_ARGS");
    char ns[256], name[256];
    cni_arg(args, "K8S_POD_NAMESPACE", ns, sizeof ns);
    cni_arg(args, "K8S_POD_NAME", name, sizeof name);
    int n = snprintf(line, sizeof line, "%s proxy-injector-cni %s pod=%s/%s container=%s: ", when,
                     getenv("CNI_COMMAND"), ns, name,
                     getenv("CNI_CONTAINERID") ? getenv("CNI_CONTAINERID") : "");
    va_list va;
    va_start(va, fmt);
    if (n > 0 && (size_t)n < sizeof line) n += vsnprintf(line + n, sizeof line - n, fmt, va);
    va_end(va);
    if (n >= (int)sizeof line) n = sizeof line - 1;
    line[n] = '\n';
    ssize_t ignored = write(fd, line, (size_t)n + 1);
    (void)ignored;
    close(fd);
}

/* The agent ---------------------------------------------------------------------------- */

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* 0 when fd is ready for `events` before `deadline`; -1 when the time is up. */
static int wait_for(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, (int)left);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -1;
    }
}

static int send_all(int fd, const void *data, size_t len, long long deadline) {
    const char *at = data;
    while (len) {
        if (wait_for(fd, POLLOUT, deadline)) return -1;
        ssize_t n = send(fd, at, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) return -1;
        at += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_u32(int fd, uint32_t v, long long deadline) {
    unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
    return send_all(fd, b, 4, deadline);
}

/* Why the agent cannot be reached (NULL: connected, and fd is set). */
static const char *connect_agent(const char *path, int *fd) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) return "the agent socket's path is too long";
    strcpy(addr.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) return "cannot make a socket";
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(s);
        return errno == EAGAIN ? "the agent's socket is full" : strerror(errno);
    }
    struct ucred peer;
    socklen_t len = sizeof peer;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.uid != 0) {
        close(s);
        return "the process on the agent's socket is not root";
    }
    char ack;
    if (wait_for(s, POLLIN, now_ms() + ACK_MS) || recv(s, &ack, 1, 0) != 1 || ack != 'A') {
        close(s);
        return "the agent did not acknowledge within 2 s";
    }
    *fd = s;
    return NULL;
}

static int relay(int fd, const char *input, size_t input_len, long long deadline) {
    char env[65536];
    size_t used = 0;
    for (size_t i = 0; i < N_FORWARDED; i++) {
        const char *value = getenv(FORWARDED[i]);
        if (!value) continue;
        int n = snprintf(env + used, sizeof env - used, "%s=%s", FORWARDED[i], value);
        if (n < 0 || (size_t)n + 1 > sizeof env - used) {
            print_error(INVALID_ENVIRONMENT, "%s is too long", FORWARDED[i]);
            return 1;
        }
        used += (size_t)n + 1;
    }
    if (send_all(fd, "PIR1", 4, deadline) || send_u32(fd, (uint32_t)used, deadline) ||
        send_all(fd, env, used, deadline) || send_u32(fd, (uint32_t)input_len, deadline) ||
        send_all(fd, input, input_len, deadline)) {
        print_error(TRY_AGAIN_LATER, "the proxy-injector CNI agent stopped reading the request");
        return 1;
    }
    char *answer = malloc(MAX_ANSWER);
    size_t got = 0;
    if (!answer) { print_error(IO_FAILURE, "out of memory"); return 1; }
    for (;;) {
        if (wait_for(fd, POLLIN, deadline)) {
            print_error(TRY_AGAIN_LATER, "the proxy-injector CNI agent did not answer in time");
            return 1;
        }
        ssize_t n = recv(fd, answer + got, MAX_ANSWER - got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) break;
        got += (size_t)n;
        if (got == MAX_ANSWER) break;
    }
    if (got == 0) {
        print_error(TRY_AGAIN_LATER, "the proxy-injector CNI agent closed without answering");
        return 1;
    }
    fwrite(answer + 1, 1, got - 1, stdout);
    fflush(stdout);
    return (unsigned char)answer[0];
}

/* Main --------------------------------------------------------------------------------- */

static int known_command(const char *c) {
    return !strcmp(c, "ADD") || !strcmp(c, "DEL") || !strcmp(c, "CHECK") ||
           !strcmp(c, "STATUS") || !strcmp(c, "GC");
}

static int fail_open(const char *command, struct span prev, const char *version) {
    if (strcmp(command, "ADD") != 0) return 0;
    if (prev.at) fwrite(prev.at, 1, prev.len, stdout);
    else printf("{\"cniVersion\":\"%s\"}", version);
    putchar('\n');
    fflush(stdout);
    return 0;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (command && !strcmp(command, "VERSION")) {
        printf("{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[");
        for (size_t i = 0; i < N_SUPPORTED; i++) printf("%s\"%s\"", i ? "," : "", SUPPORTED[i]);
        printf("]}\n");
        return 0;
    }
    if (!command || !*command) {
        print_error(INVALID_ENVIRONMENT, "CNI_COMMAND is not set");
        return 1;
    }
    if (!known_command(command)) {
        print_error(INVALID_ENVIRONMENT, "CNI_COMMAND %.40s is not one this plugin knows", command);
        return 1;
    }
    char *input = malloc(MAX_INPUT + 1);
    size_t len = 0;
    ssize_t n;
    if (!input) { print_error(IO_FAILURE, "out of memory"); return 1; }
    while (len <= MAX_INPUT && (n = read(0, input + len, MAX_INPUT + 1 - len)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { print_error(IO_FAILURE, "cannot read stdin: %s", strerror(errno)); return 1; }
        len += (size_t)n;
    }
    if (len > MAX_INPUT) {
        print_error(INVALID_CONFIG, "the network configuration is larger than 1 MiB");
        return 1;
    }
    struct config config = {0};
    struct parser p = {input, input + len, NULL, &config};
    skip_space(&p);
    if (p.at >= p.end || *p.at != '{') {
        print_error(DECODING_FAILURE, "the network configuration is not a JSON object");
        return 1;
    }
    if (parse_value(&p, 1) == 0) {
        skip_space(&p);
        if (p.at != p.end) fail(&p, "something follows the object");
    }
    if (p.error) {
        print_error(DECODING_FAILURE, "the network configuration is not valid JSON: %s at byte %ld",
                    p.error, (long)(p.at - input));
        return 1;
    }
    char version[16];
    if (copy_span(config.version, version, sizeof version)) {
        print_error(INCOMPATIBLE_VERSION, "cniVersion is missing or not a string");
        return 1;
    }
    size_t v = 0;
    while (v < N_SUPPORTED && strcmp(version, SUPPORTED[v])) v++;
    if (v == N_SUPPORTED) {
        print_error(INCOMPATIBLE_VERSION,
                    "cniVersion %s is not supported (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)", version);
        return 1;
    }
    strcpy(version_out, version);
    if (config.prev_result.at && config.prev_result.at[0] != '{') {
        print_error(INVALID_CONFIG, "prevResult is not a JSON object");
        return 1;
    }
    if (config.args.at && config.args.at[0] != '{') {
        print_error(INVALID_CONFIG, "args is not a JSON object");
        return 1;
    }
    char socket_path[256] = DEFAULT_SOCKET, log_path[4096] = DEFAULT_LOG;
    if (config.socket.at && copy_span(config.socket, socket_path, sizeof socket_path)) {
        print_error(INVALID_CONFIG, "agentSocket is not a plain string path");
        return 1;
    }
    if (config.log_file.at && copy_span(config.log_file, log_path, sizeof log_path)) {
        print_error(INVALID_CONFIG, "logFile is not a plain string path");
        return 1;
    }
    long long timeout_ms = DEFAULT_TIMEOUT_MS;
    if (config.timeout.at) {
        double seconds = strtod(config.timeout.at, NULL);
        if (!(seconds > 0 && seconds <= 300)) {
            print_error(INVALID_CONFIG, "timeoutSeconds is not a number from 0 to 300");
            return 1;
        }
        timeout_ms = (long long)(seconds * 1000);
    }
    int fd = -1;
    const char *unreachable = connect_agent(socket_path, &fd);
    if (unreachable) {
        log_line(log_path, "agent at %s not reached (%s): passed through without interception",
                 socket_path, unreachable);
        return fail_open(command, config.prev_result, version);
    }
    return relay(fd, input, len, now_ms() + timeout_ms + MARGIN_MS);
}
