/* Test driver for libdetingest, run by tests/python/test_shm.py as a separate process.
 *
 *   ring_producer push <ring> <first> <count> <width> <height> [hang]
 *       commits frames first..first+count-1 (u16, pixel i of frame n = n*7 + i); with
 *       "hang", then acquires one more slot, half-fills it, prints READY and sleeps (to be
 *       killed mid-frame).
 *   ring_producer until-gone <ring> <width> <height>
 *       commits a frame every 5 ms until a call fails; prints "gone <code> <ms>" where ms is
 *       how long the failing call took.
 *   ring_producer errors <ring> <width> <height> <bad-magic-file> <bad-version-file>
 *       checks each misuse against its code; prints one line per check.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include <detingest.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static detingest_frame describe(uint64_t n, uint32_t w, uint32_t h) {
    detingest_frame f;
    memset(&f, 0, sizeof f);
    f.frame_number = n;
    f.timestamp_ns = 1000000000u * n;
    f.byte_length = (uint64_t)w * h * 2;
    f.pixel_type = DETINGEST_PIXEL_U16;
    f.width = w;
    f.height = h;
    return f;
}

static void fill(void *slot, uint64_t n, size_t pixels) {
    uint16_t *px = slot;
    for (size_t i = 0; i < pixels; i++) px[i] = (uint16_t)(n * 7 + i);
}

static detingest_producer *open_or_die(const char *ring) {
    detingest_producer *p = NULL;
    int rc = detingest_producer_open(ring, &p);
    if (rc != DETINGEST_OK) {
        fprintf(stderr, "open: %s (%s)\n", detingest_strerror(rc), detingest_last_error());
        exit(1);
    }
    return p;
}

static int push(detingest_producer *p, uint64_t n, uint32_t w, uint32_t h, int timeout_ms) {
    void *slot = NULL;
    int rc = detingest_acquire(p, (size_t)w * h * 2, timeout_ms, &slot);
    if (rc != DETINGEST_OK) return rc;
    fill(slot, n, (size_t)w * h);
    detingest_frame f = describe(n, w, h);
    return detingest_commit(p, &f);
}

static int failures = 0;

static void expect(const char *what, int got, int want) {
    printf("%s: %d (%s) %s\n", what, got, detingest_strerror(got), got == want ? "ok" : "WRONG");
    if (got != want) failures++;
}

static void check(const char *what, int ok) {
    printf("%s: %s\n", what, ok ? "ok" : "WRONG");
    if (!ok) failures++;
}

static int errors(const char *ring, uint32_t w, uint32_t h, const char *bad_magic,
                  const char *bad_version) {
    detingest_producer *p = NULL, *q = NULL;
    void *slot = NULL;
    expect("open missing ring", detingest_producer_open("/nonexistent/ring", &q), DETINGEST_E_NO_RING);
    expect("open bad magic", detingest_producer_open(bad_magic, &q), DETINGEST_E_BAD_MAGIC);
    expect("open bad version", detingest_producer_open(bad_version, &q), DETINGEST_E_BAD_VERSION);
    expect("open NULL", detingest_producer_open(NULL, &q), DETINGEST_E_BAD_ARGUMENT);
    check("nothing written on failure", q == NULL);
    expect("open", detingest_producer_open(ring, &p), DETINGEST_OK);
    expect("second producer", detingest_producer_open(ring, &q), DETINGEST_E_BUSY);
    size_t slot_bytes = detingest_slot_bytes(p);
    check("slot holds a frame", slot_bytes >= (size_t)w * h * 2);
    expect("acquire too large", detingest_acquire(p, slot_bytes + 1, 0, &slot), DETINGEST_E_TOO_LARGE);
    detingest_frame f = describe(1, w, h);
    expect("commit before acquire", detingest_commit(p, &f), DETINGEST_E_STATE);
    expect("abort before acquire", detingest_abort(p), DETINGEST_E_STATE);
    expect("acquire", detingest_acquire(p, (size_t)w * h * 2, 1000, &slot), DETINGEST_OK);
    expect("acquire twice", detingest_acquire(p, 16, 0, &slot), DETINGEST_E_STATE);
    f.byte_length = slot_bytes + 4096;
    expect("length beyond the slot", detingest_commit(p, &f), DETINGEST_E_TOO_LARGE);
    f = describe(1, w / 2, h);
    expect("wrong shape", detingest_commit(p, &f), DETINGEST_E_BAD_ARGUMENT);
    printf("detail: %s\n", detingest_last_error());
    f = describe(1, w, h);
    f.pixel_type = 42;
    expect("unknown pixel type", detingest_commit(p, &f), DETINGEST_E_BAD_ARGUMENT);
    expect("abort", detingest_abort(p), DETINGEST_OK);
    expect("negative timeout", detingest_acquire(p, 16, -5, &slot), DETINGEST_E_BAD_ARGUMENT);
    detingest_producer_close(p);
    printf("version %s, layout %u\n", detingest_version(), detingest_ring_layout_version());
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 7 && strcmp(argv[1], "push") == 0) {
        uint64_t first = strtoull(argv[3], NULL, 10), count = strtoull(argv[4], NULL, 10);
        uint32_t w = (uint32_t)atoi(argv[5]), h = (uint32_t)atoi(argv[6]);
        detingest_producer *p = open_or_die(argv[2]);
        for (uint64_t n = first; n < first + count; n++) {
            int rc = push(p, n, w, h, DETINGEST_WAIT_FOREVER);
            if (rc != DETINGEST_OK) {
                fprintf(stderr, "frame %llu: %s\n", (unsigned long long)n, detingest_strerror(rc));
                return 1;
            }
        }
        if (argc > 7 && strcmp(argv[7], "hang") == 0) {
            void *slot = NULL;
            if (detingest_acquire(p, (size_t)w * h * 2, 5000, &slot) != DETINGEST_OK) return 1;
            memset(slot, 0xee, (size_t)w * h);
            printf("READY\n");
            fflush(stdout);
            sleep(60);
        }
        detingest_producer_close(p);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "until-gone") == 0) {
        uint32_t w = (uint32_t)atoi(argv[3]), h = (uint32_t)atoi(argv[4]);
        detingest_producer *p = open_or_die(argv[2]);
        printf("READY\n");
        fflush(stdout);
        for (uint64_t n = 1;; n++) {
            double t = now_ms();
            int rc = push(p, n, w, h, 3000);
            if (rc != DETINGEST_OK) {
                printf("gone %d %.1f\n", rc, now_ms() - t);
                detingest_producer_close(p);
                return 0;
            }
            struct timespec pause = {0, 5000000};
            nanosleep(&pause, NULL);
        }
    }
    if (argc == 7 && strcmp(argv[1], "errors") == 0)
        return errors(argv[2], (uint32_t)atoi(argv[3]), (uint32_t)atoi(argv[4]), argv[5], argv[6]);
    fprintf(stderr, "usage: see the comment at the top of ring_producer.c\n");
    return 2;
}
