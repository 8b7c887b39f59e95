/* Embeds Volley through the C ABI: runs volley_serve in a thread, drives it through
 * volley_api_request, stops it with volley_stop. Exit 0 on success; prints what failed otherwise. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "volley.h"

static const char *config_path;
static int serve_result = -2;

static void *serve(void *arg) {
    (void)arg;
    serve_result = volley_serve(config_path);
    return NULL;
}

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } } while (0)

int main(int argc, char **argv) {
    CHECK(argc == 3, "usage: embed CONFIG API_BASE");
    config_path = argv[1];
    const char *api = argv[2];
    char buf[4096];

    CHECK(strlen(volley_version()) > 0, "empty version");
    CHECK(volley_config_check("[server]\ncores = \"x\"\n", buf, sizeof buf) == 1, "bad config accepted");
    CHECK(strstr(buf, "line 2") != NULL, "error without its line: %s", buf);

    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, serve, NULL) == 0, "pthread_create");
    int status = -1;
    for (int i = 0; i < 100 && status != 200; i++) {
        usleep(100000);
        status = volley_api_request(api, NULL, "GET", "/v1/health", NULL, buf, sizeof buf);
    }
    CHECK(status == 200, "health never became 200 (last %d: %s)", status, buf);
    CHECK(strstr(buf, "\"serving\"") != NULL, "health body: %s", buf);

    status = volley_api_request(api, "", "POST", "/v1/inject",
        "{\"sender\":\"a@embed.test\",\"recipients\":[\"b@nowhere.invalid\"],"
        "\"content\":\"Subject: embedded\\n\\nhello\\n\"}", buf, sizeof buf);
    CHECK(status == 202, "inject: %d %s", status, buf);
    CHECK(strstr(buf, "\"id\"") != NULL, "inject body: %s", buf);

    /* The control-plane calls. */
    status = volley_suppression_add(api, NULL, "acme", "gone+tag@embed.test", buf, sizeof buf);
    CHECK(status == 200, "suppression add: %d %s", status, buf);
    status = volley_api_request(api, NULL, "GET", "/v1/suppressions/acme/gone%2Btag@embed.test", NULL,
                                buf, sizeof buf);
    CHECK(status == 200, "the added suppression is not there: %d %s", status, buf);
    status = volley_suppression_remove(api, NULL, "acme", "gone+tag@embed.test", buf, sizeof buf);
    CHECK(status == 200, "suppression remove: %d %s", status, buf);
    status = volley_api_request(api, NULL, "GET", "/v1/suppressions/acme/gone%2Btag@embed.test", NULL,
                                buf, sizeof buf);
    CHECK(status == 404, "the removed suppression is still there: %d %s", status, buf);
    CHECK(volley_suppression_add(api, NULL, "acme", "not an address", buf, sizeof buf) == 400,
          "a suppression that is not an address: %s", buf);
    CHECK(volley_suppression_add(api, NULL, "a/b", "x@embed.test", buf, sizeof buf) == -1,
          "a customer name that is not a path segment");

    status = volley_credits_add(api, NULL, "acme", 25, buf, sizeof buf);
    CHECK(status == 200, "credits: %d %s", status, buf);
    CHECK(strstr(buf, "\"credits_added\":25") != NULL, "credits body: %s", buf);

    status = volley_queue_retry(api, NULL, "nowhere.invalid", NULL, buf, sizeof buf);
    CHECK(status == 202, "queue retry: %d %s", status, buf);

    /* The reception and credits events, polled from the start and then after the last id. */
    int found = 0;
    for (int i = 0; i < 50 && !found; i++) {
        status = volley_events_poll(api, NULL, 0, 100, buf, sizeof buf);
        CHECK(status == 200, "events: %d %s", status, buf);
        found = strstr(buf, "\"type\":\"reception\"") != NULL && strstr(buf, "\"type\":\"credits\"") != NULL;
        if (!found) usleep(100000);
    }
    CHECK(found, "no reception and credits events: %s", buf);
    status = volley_events_poll(api, NULL, 1000000, 100, buf, sizeof buf);
    CHECK(status == 200 && strstr(buf, "\"events\":[]") != NULL, "events after the last: %d %s", status, buf);
    CHECK(volley_events_poll(api, NULL, 0, 0, buf, sizeof buf) == -1, "limit 0 accepted");

    CHECK(volley_stop() == 0, "volley_stop found nothing running");
    pthread_join(thread, NULL);
    CHECK(serve_result == 0, "volley_serve returned %d", serve_result);
    printf("embed: ok\n");
    return 0;
}
