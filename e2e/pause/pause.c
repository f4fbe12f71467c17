/* The pod sandbox's "pause" process for the local cluster's runc pods: holds the pod's
 * namespaces, reaps orphans, exits on SIGTERM/SIGINT. Built static by e2e's node harness. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction term = {.sa_handler = stop}, chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGTERM, &term, 0);
  sigaction(SIGINT, &term, 0);
  sigaction(SIGCHLD, &chld, 0);
  for (;;) pause();
}
