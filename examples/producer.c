/* A vendor-style producer: attach to a detingestd ring, write frames straight into its
 * slots, commit them, close. Build: cc producer.c $(pkg-config --cflags --libs detingest)
 * Run:   ./producer <ring> [frames] [width] [height]   (u16 pixels, frame numbers 1..frames)
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include <detingest.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <ring> [frames] [width] [height]\n", argv[0]);
        return 2;
    }
    uint64_t frames = argc > 2 ? strtoull(argv[2], NULL, 10) : 100;
    uint32_t width = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 1024;
    uint32_t height = argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 10) : 512;
    size_t bytes = (size_t)width * height * sizeof(uint16_t);

    detingest_producer *p = NULL;
    int rc = detingest_producer_open(argv[1], &p);
    if (rc != DETINGEST_OK) {
        fprintf(stderr, "open %s: %s (%s)\n", argv[1], detingest_strerror(rc), detingest_last_error());
        return 1;
    }
    for (uint64_t n = 1; n <= frames; n++) {
        void *slot = NULL;
        rc = detingest_acquire(p, bytes, 1000, &slot);
        if (rc == DETINGEST_TIMEOUT) { /* the daemon is behind: wait again */
            n--;
            continue;
        }
        if (rc != DETINGEST_OK) break; /* daemon gone, or a bug in our sizes */

        uint16_t *pixels = slot; /* the DAQ writes (or DMAs) the frame here */
        for (size_t i = 0; i < (size_t)width * height; i++) pixels[i] = (uint16_t)(n * 7 + i);

        detingest_frame frame = {0};
        frame.frame_number = n;
        frame.timestamp_ns = now_ns();
        frame.byte_length = bytes;
        frame.pixel_type = DETINGEST_PIXEL_U16;
        frame.width = width;
        frame.height = height;
        rc = detingest_commit(p, &frame);
        if (rc != DETINGEST_OK) break;
    }
    if (rc != DETINGEST_OK)
        fprintf(stderr, "producer stopped: %s (%s)\n", detingest_strerror(rc), detingest_last_error());
    detingest_producer_close(p);
    return rc == DETINGEST_OK ? 0 : 1;
}
