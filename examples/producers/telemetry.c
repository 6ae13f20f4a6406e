/* Publishes JSON telemetry to a Switchboard router.
 * Build: cc telemetry.c -lzmq -o telemetry
 * Run:   ./telemetry [endpoint] [topic] [count]   (defaults: tcp://127.0.0.1:7750 /robot/telemetry 100)
 * Curve: set SWITCHBOARD_CURVE_ROUTER_KEY, SWITCHBOARD_CURVE_PUBLIC_KEY and SWITCHBOARD_CURVE_SECRET_KEY
 *        to the router's public key and this producer's key pair, in Z85 (docs/security.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

/* Makes the socket a Curve client when the three variables are set; -1 if only some are. */
static int use_curve(void *sock)
{
    const char *router_key = getenv("SWITCHBOARD_CURVE_ROUTER_KEY");
    const char *public_key = getenv("SWITCHBOARD_CURVE_PUBLIC_KEY");
    const char *secret_key = getenv("SWITCHBOARD_CURVE_SECRET_KEY");
    if (!router_key && !public_key && !secret_key)
        return 0;
    if (!router_key || !public_key || !secret_key)
        return -1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, router_key, strlen(router_key)) != 0
        || zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, public_key, strlen(public_key)) != 0
        || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret_key, strlen(secret_key)) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:7750";
    const char *topic = argc > 2 ? argv[2] : "/robot/telemetry";
    int count = argc > 3 ? atoi(argv[3]) : 100;
    void *ctx = zmq_ctx_new();
    void *push = zmq_socket(ctx, ZMQ_PUSH);
    int linger_ms = 1000;
    zmq_setsockopt(push, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if (use_curve(push) != 0) {
        fprintf(stderr, "Curve: set all three SWITCHBOARD_CURVE_* variables to 40-character Z85 keys\n");
        return 1;
    }
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
