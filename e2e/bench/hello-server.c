/* The container-based twin of the hello wasm component, for comparing pod memory: a static
 * HTTP/1.x server on :8080 answering every request with 200 "hello from a container".
 * One process, one connection at a time, as small as a server gets. */
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char reply[] =
    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 23\r\n"
    "connection: close\r\n\r\nhello from a container\n";

static void stop(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, stop);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(8080)};
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 128) < 0)
        return 1;
    char buf[4096];
    struct timeval limit = {.tv_sec = 2};
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0)
            continue;
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
        /* The whole request head first: closing with unread bytes would reset the
         * connection (RST) and the client could lose the answer. */
        size_t got = 0;
        ssize_t n;
        while (got < sizeof buf - 1 && (n = read(c, buf + got, sizeof buf - 1 - got)) > 0) {
            got += (size_t)n;
            buf[got] = 0;
            if (strstr(buf, "\r\n\r\n"))
                break;
        }
        if (got > 0) {
            write(c, reply, sizeof reply - 1);
            shutdown(c, SHUT_WR);
            while (read(c, buf, sizeof buf) > 0) {
            }
        }
        close(c);
    }
}
