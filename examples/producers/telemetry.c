/* Publishes JSON telemetry to a Switchboard router.
 * Build: cc telemetry.c -lzmq -o telemetry
 * Run:   ./telemetry [endpoint] [topic] [count]   (defaults: tcp://127.0.0.1:7750 /robot/telemetry 100) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

int main(int argc, char **argv)
{
    const char *endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:7750";
    const char *topic = argc > 2 ? argv[2] : "/robot/telemetry";
    int count = argc > 3 ? atoi(argv[3]) : 100;
    void *ctx = zmq_ctx_new();
    void *push = zmq_socket(ctx, ZMQ_PUSH);
    int linger_ms = 1000;
    zmq_setsockopt(push, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if (zmq_connect(push, endpoint) != 0) {
        fprintf(stderr, "connect %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }
    struct timespec pause = {0, 50 * 1000 * 1000};
    for (int seq = 0; seq < count; seq++) {
        char payload[128];
        int n = snprintf(payload, sizeof payload, "{\"seq\":%d,\"lang\":\"c\",\"speed\":%.2f}", seq, seq * 0.5);
        zmq_send(push, topic, strlen(topic), ZMQ_SNDMORE);
        zmq_send(push, payload, (size_t)n, 0);
        nanosleep(&pause, NULL);
    }
    zmq_close(push);
    zmq_ctx_term(ctx);
    return 0;
}
