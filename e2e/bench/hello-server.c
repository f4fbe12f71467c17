/* The container-based twin of the hello wasm component, for comparing pod memory: a static
 * HTTP/1.x server on :8080 answering every request with 200 "hello from a container".
 * One process, one connection at a time, as small as a server gets. */
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
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
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0)
            continue;
        /* One read holds a small GET; the answer does not depend on it. */
        if (read(c, buf, sizeof buf) > 0)
            write(c, reply, sizeof reply - 1);
        close(c);
    }
}
