// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-churn: small single-threaded workloads for amdvi-shadow
 * (docs/shadow.md).  Each changes its own page tables in one way, over and
 * over, and checks its own data, so that a device following the address
 * space meets the kernel path many times.
 *
 *   amdvi-churn MODE [ITERATIONS] [PAGES]
 *
 *   cow       fork; the child exits; the parent writes every page (COW)
 *   dontneed  write the pages, MADV_DONTNEED them, check they read zero
 *   munmap    mmap, write, check, munmap
 *   mprotect  write, mprotect read-only, read, mprotect read-write
 *
 * Exit status 0 when every check held, 1 on a data mismatch, 2 on usage or
 * a failed system call.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG	4096UL

static int check(const uint64_t *p, size_t words, uint64_t seed)
{
	size_t i;

	for (i = 0; i < words; i += 512 / 8)
		if (p[i] != seed + i) {
			fprintf(stderr, "amdvi-churn: word %zu is %#llx, want %#llx\n",
				i, (unsigned long long)p[i],
				(unsigned long long)(seed + i));
			return 1;
		}
	return 0;
}

static void fill(uint64_t *p, size_t words, uint64_t seed)
{
	size_t i;

	for (i = 0; i < words; i += 512 / 8)
		p[i] = seed + i;
}

int main(int argc, char **argv)
{
	unsigned long iters = argc > 2 ? strtoul(argv[2], NULL, 0) : 200;
	unsigned long pages = argc > 3 ? strtoul(argv[3], NULL, 0) : 64;
	size_t len = pages * PG, words = len / 8;
	const char *mode = argc > 1 ? argv[1] : "";
	uint64_t *p, prev = 1;
	unsigned long it;
	int bad = 0;

	if (!pages || (strcmp(mode, "cow") && strcmp(mode, "dontneed") &&
		       strcmp(mode, "munmap") && strcmp(mode, "mprotect"))) {
		fprintf(stderr, "usage: %s cow|dontneed|munmap|mprotect [ITERATIONS] [PAGES]\n",
			argv[0]);
		return 2;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 2;
	fill(p, words, 1);
	for (it = 0; it < iters && !bad; it++) {
		uint64_t seed = (it + 2) << 20;
		pid_t pid;
		int st;

		if (!strcmp(mode, "cow")) {
			pid = fork();
			if (pid < 0)
				return 2;
			if (!pid)
				_exit(check(p, words, prev) ? 1 : 0);
			fill(p, words, seed);	/* breaks COW on every page */
			if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
			    WEXITSTATUS(st))
				bad = 1;
			bad |= check(p, words, seed);
			prev = seed;
		} else if (!strcmp(mode, "dontneed")) {
			size_t i;

			fill(p, words, seed);
			if (madvise(p, len, MADV_DONTNEED))
				return 2;
			for (i = 0; i < words; i += 512 / 8)
				bad |= p[i] != 0;
		} else if (!strcmp(mode, "munmap")) {
			uint64_t *q = mmap(NULL, len, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (q == MAP_FAILED)
				return 2;
			fill(q, words, seed);
			bad |= check(q, words, seed);
			munmap(q, len);
		} else {
			fill(p, words, seed);
			if (mprotect(p, len, PROT_READ))
				return 2;
			bad |= check(p, words, seed);
			if (mprotect(p, len, PROT_READ | PROT_WRITE))
				return 2;
		}
	}
	printf("amdvi-churn %s: %lu iterations of %lu pages: %s\n", mode, it,
	       pages, bad ? "MISMATCH" : "ok");
	return bad;
}
