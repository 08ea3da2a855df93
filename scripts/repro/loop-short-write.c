/* The loop driver reports a short write of its backing file as success.
 * Usage: loop-short-write /dev/loopN IMAGE FILLER (scripts/repro/loop-short-write.sh runs it)
 * IMAGE (on a small tmpfs) backs /dev/loopN. Writes page 0 of the device (allocating the
 * image's page 0) and fsyncs; fills the tmpfs; writes pages 0..1 (8 KiB, O_DIRECT: one
 * request) — page 1 is a hole the full tmpfs cannot allocate — and fsyncs; then reads the
 * image's page 1 back. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int dev = open(argv[1], O_RDWR | O_DIRECT);
    char *buf;
    if (dev < 0 || posix_memalign((void **)&buf, 4096, 8192)) { perror("open"); return 2; }
    memset(buf, 'a', 8192);
    ssize_t w = pwrite(dev, buf, 4096, 0);
    int s = fsync(dev);
    printf("healthy: pwrite 4096 at 0 -> %zd, fsync -> %d\n", w, s);
    int f = open(argv[3], O_CREAT | O_WRONLY | O_TRUNC, 0644);
    static char chunk[65536];
    while (write(f, chunk, sizeof chunk) > 0) {}
    close(f);
    memset(buf, 'b', 8192);
    w = pwrite(dev, buf, 8192, 0);
    int e = errno;
    s = fsync(dev);
    printf("tmpfs full: pwrite 8192 at 0 (one request: an allocated page, a hole) -> %zd (%s), fsync -> %d\n",
           w, w < 0 ? strerror(e) : "reported written", s);
    ssize_t both = w;
    int both_synced = s;
    w = pwrite(dev, buf, 4096, 8192);
    e = errno;
    printf("tmpfs full: pwrite 4096 at 8192 (a hole only) -> %zd (%s)\n", w, w < 0 ? strerror(e) : "reported written");
    int img = open(argv[2], O_RDONLY);
    char back[8192];
    ssize_t r = pread(img, back, 8192, 0);
    int page1 = back[4096] == 'b', lied = both == 8192 && both_synced == 0 && !page1;
    printf("image read back (%zd bytes): page 0 %s, page 1 %s\n", r, back[0] == 'b' ? "written" : "not written",
           page1 ? "written" : "zeros (a hole)");
    printf(lied ? "LOST: the write and fsync reported success for a page never stored\n"
                : "consistent: what was reported written is stored\n");
    unlink(argv[3]);
    return lied;
}
