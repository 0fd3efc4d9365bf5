/*
 * blkbench: the disk bench's guest side (scripts/nested/disk-bench), run by
 * the guest's init on the virtio disk of kvmini or QEMU alike.
 *
 * Usage: blkbench DEVICE MIB READS
 * Writes MIB MiB to DEVICE sequentially in 1 MiB requests (O_DIRECT, then
 * fdatasync), reads them back the same way, then reads READS random 4 KiB
 * blocks within them (O_DIRECT, a fixed xorshift sequence, so both VMMs
 * read the same blocks). Prints one line:
 *   KVMINI-NESTED-BLKBENCH mib=M reads=N write_mib_s=W read_mib_s=R randread_iops=I
 * and exits 0; exits 1 with a line on stderr on any error. Data read back
 * is checked against what was written.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define BLOCK 4096

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int die(const char *what)
{
    perror(what);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: blkbench DEVICE MIB READS\n");
        return 2;
    }
    long mib = atol(argv[2]), reads = atol(argv[3]);
    if (mib <= 0 || reads <= 0) {
        fprintf(stderr, "blkbench: MIB and READS must be positive\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0)
        return die(argv[1]);
    unsigned char *buf;
    if (posix_memalign((void **)&buf, BLOCK, CHUNK))
        return die("posix_memalign");

    double t0 = now();
    for (long i = 0; i < mib; i++) {
        memset(buf, (int)(i & 0xff), CHUNK);
        if (pwrite(fd, buf, CHUNK, (off_t)i * CHUNK) != CHUNK)
            return die("pwrite");
    }
    if (fdatasync(fd))
        return die("fdatasync");
    double t1 = now();
    for (long i = 0; i < mib; i++) {
        if (pread(fd, buf, CHUNK, (off_t)i * CHUNK) != CHUNK)
            return die("pread");
        if (buf[0] != (unsigned char)(i & 0xff) || buf[CHUNK - 1] != (unsigned char)(i & 0xff)) {
            fprintf(stderr, "blkbench: MiB %ld reads back wrong\n", i);
            return 1;
        }
    }
    double t2 = now();
    uint64_t x = 0x9e3779b97f4a7c15ull, blocks = (uint64_t)mib * (CHUNK / BLOCK);
    for (long i = 0; i < reads; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t b = x % blocks;
        if (pread(fd, buf, BLOCK, (off_t)(b * BLOCK)) != BLOCK)
            return die("pread (random)");
        if (buf[0] != (unsigned char)((b * BLOCK / CHUNK) & 0xff)) {
            fprintf(stderr, "blkbench: block %llu reads back wrong\n", (unsigned long long)b);
            return 1;
        }
    }
    double t3 = now();
    printf("KVMINI-NESTED-BLKBENCH mib=%ld reads=%ld write_mib_s=%.1f read_mib_s=%.1f "
           "randread_iops=%.0f\n",
           mib, reads, mib / (t1 - t0), mib / (t2 - t1), reads / (t3 - t2));
    return 0;
}
