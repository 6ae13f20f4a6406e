/* Publishes one topic only as fast as its watchers want.
 * The router's demand socket ([router] demand, docs/protocol.md 1.10) sends [topic, rate] each time
 * the most messages per second any watcher of the topic wants changes: "0" when nobody watches,
 * "inf" when a watcher takes every message, else a decimal number.
 * Build: cc on_demand.c -lzmq -o on_demand
 * Run:   ./on_demand [pull endpoint] [demand endpoint] [topic] [seconds] [most per second]
 *        (defaults: tcp://127.0.0.1:7750 tcp://127.0.0.1:7755 /camera/front 30 30)
 * Prints "demand RATE" at each change and "sent N" at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static double seconds_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* Reads one demand message; returns 1 and sets *rate when it is about exactly `topic`
 * (a SUB subscription is a prefix: "/camera/front" also matches "/camera/front2"). */
static int read_demand(void *sub, const char *topic, double *rate)
{
    char name[256], value[32];
    int n = zmq_recv(sub, name, sizeof name - 1, 0);
    int more = 0;
    size_t size = sizeof more;
    zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &size);
    if (n < 0 || !more)
        return 0;
    int v = zmq_recv(sub, value, sizeof value - 1, 0);
    if (v < 0 || n >= (int)sizeof name || v >= (int)sizeof value)
        return 0;
    name[n] = '\0';
    value[v] = '\0';
    if (strcmp(name, topic) != 0)
        return 0;
    *rate = strtod(value, NULL); /* strtod reads "inf" as infinity */
    printf("demand %s\n", value);
    fflush(stdout);
    return 1;
}

int main(int argc, char **argv)
{
    const char *pull = argc > 1 ? argv[1] : "tcp://127.0.0.1:7750";
    const char *demand_endpoint = argc > 2 ? argv[2] : "tcp://127.0.0.1:7755";
    const char *topic = argc > 3 ? argv[3] : "/camera/front";
    double duration = argc > 4 ? atof(argv[4]) : 30;
    double most = argc > 5 ? atof(argv[5]) : 30;
    void *ctx = zmq_ctx_new();
    void *push = zmq_socket(ctx, ZMQ_PUSH);
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    int linger_ms = 0;
    zmq_setsockopt(push, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    zmq_setsockopt(sub, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, topic, strlen(topic));
    if (zmq_connect(push, pull) != 0 || zmq_connect(sub, demand_endpoint) != 0) {
        fprintf(stderr, "connect: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    double rate = 0, start = seconds_now(), next_send = start;
    long sent = 0;
    while (seconds_now() - start < duration) {
        double wait = rate > 0 ? next_send - seconds_now() : 0.1;
        zmq_pollitem_t item = {sub, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait > 0 ? (long)(wait * 1000) : 0) > 0) {
            read_demand(sub, topic, &rate);
            continue;
        }
        if (rate <= 0 || seconds_now() < next_send)
            continue;
        char payload[64];
        int n = snprintf(payload, sizeof payload, "{\"frame\":%ld}", sent);
        zmq_send(push, topic, strlen(topic), ZMQ_SNDMORE);
        zmq_send(push, payload, (size_t)n, 0);
        sent++;
        next_send += 1.0 / (rate < most ? rate : most);
        if (next_send < seconds_now())
            next_send = seconds_now();
    }
    printf("sent %ld\n", sent);
    zmq_close(push);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return 0;
}
