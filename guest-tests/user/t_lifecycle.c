// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, lifecycle: a bound process exits or is killed, and a PASID is
 * unbound, with accesses in flight.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests.h"

/* ---- process exit and unbind with accesses in flight ---- */

static void *hammer_fn(void *arg)
{
	struct { int fd; uint32_t pasid; uint8_t *buf; volatile int *stop; } *h = arg;
	uint64_t v = 0;

	while (!*h->stop) {
		dev_access(h->fd, 0, h->pasid, AMDVI_OP_WRITE, 0,
			   (uintptr_t)h->buf + (v % 32) * PAGE_SZ, &v, 8, NULL);
		v++;
	}
	return NULL;
}

void t_exit_inflight(struct ctx *c)
{
	uint64_t bonds0 = mod_counter(c, AMDVI_MC_BONDS_ACTIVE);
	uint64_t streams0 = mod_counter(c, AMDVI_MC_STREAMS_ACTIVE);
	uint64_t bonds = 0, streams = 0, t0;
	struct amdvi_ioc_stream_counts k;
	int p[2], status, kill9 = (c->repeat & 1) == 0;
	uint32_t msg[2] = { 0, 0 };
	pid_t pid;

	REQUIRE(c, !pipe(p), "expected a pipe, saw %s", strerror(errno));
	fflush(stdout);
	pid = fork();
	REQUIRE(c, pid >= 0, "expected fork, saw %s", strerror(errno));
	if (!pid) {
		static volatile int stop;
		struct { int fd; uint32_t pasid; uint8_t *buf; volatile int *stop; } h;
		struct stream_cfg cfg = { 0 };
		size_t len = 32 * PAGE_SZ;
		pthread_t th;
		int fd = dev_open();

		close(p[0]);
		if (fd < 0 || dev_bind(fd, 0, &msg[0]))
			_exit(2);
		h.fd = fd;
		h.pasid = msg[0];
		h.buf = map_anon(len);
		h.stop = &stop;
		if (!h.buf)
			_exit(3);
		fill_words(h.buf, len, 15);
		cfg = (struct stream_cfg){ .ep = c->ep_stream, .pasid = msg[0],
			.va = h.buf, .len = len, .stride = 512, .rd = 1,
			.wr = 1, .write_value = WV_BASE };
		if (dev_stream_start(fd, &cfg, &msg[1]) != ST_OK)
			_exit(4);
		pthread_create(&th, NULL, hammer_fn, &h);
		if (write(p[1], msg, sizeof(msg)) != sizeof(msg))
			_exit(5);
		msleep(30);
		_exit(0);	/* accesses in flight, nothing closed */
	}
	close(p[1]);
	if (read(p[0], msg, sizeof(msg)) != sizeof(msg))
		msg[1] = 0;
	close(p[0]);
	if (kill9 && msg[1]) {
		msleep(15);
		kill(pid, SIGKILL);
	}
	waitpid(pid, &status, 0);
	CHECK(c, msg[1] && ((WIFEXITED(status) && !WEXITSTATUS(status)) ||
			    (kill9 && WIFSIGNALED(status))),
	      "child: expected bind + stream then exit, saw wait status %#x",
	      status);
	if (!msg[1])
		return;
	diag(c, "child pasid %u stream %u %s", msg[0], msg[1],
	     kill9 ? "killed with SIGKILL" : "exited");

	/* everything the child had must go away without its help */
	t0 = now_ms();
	do {
		bonds = mod_counter(c, AMDVI_MC_BONDS_ACTIVE);
		streams = mod_counter(c, AMDVI_MC_STREAMS_ACTIVE);
		if (bonds == bonds0 && streams == streams0)
			break;
		msleep(20);
	} while (now_ms() - t0 < 5000);
	CHECK(c, bonds == bonds0,
	      "module bonds after child exit: expected %llu, saw %llu",
	      (unsigned long long)bonds0, (unsigned long long)bonds);
	CHECK(c, streams == streams0,
	      "module streams after child exit: expected %llu, saw %llu",
	      (unsigned long long)streams0, (unsigned long long)streams);
	memset(&k, 0, sizeof(k));
	status = dev_stream_ctl(c->fd, msg[1], 0, &k);
	CHECK(c, status != ST_OK || !k.running,
	      "child's stream %u after exit: expected stopped or released, saw running (%llu accesses)",
	      msg[1], (unsigned long long)(k.reads + k.writes));
	audit(c, msg[0], NULL, ~0ULL >> 8, "child exit (its PASID)");

	/* the device still works for us */
	uint8_t *buf = map_anon(PAGE_SZ);

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	roundtrip(c, (uint64_t *)buf, 0x65786974ULL, "after child exit");
	munmap(buf, PAGE_SZ);
}

void t_unbind_inflight(struct ctx *c)
{
	const unsigned int n = 32;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len);
	uint64_t streams0 = mod_counter(c, AMDVI_MC_STREAMS_ACTIVE), got;
	struct { int fd; uint32_t pasid; uint8_t *buf; volatile int *stop; } h;
	struct amdvi_ioc_stream_counts k;
	volatile int stop = 0;
	uint32_t p2 = 0, p3 = 0, sid;
	pthread_t th;
	int ret;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, len, 16);
	ret = dev_bind(c->fd, 0, &p2);
	REQUIRE(c, !ret, "second BIND: expected a PASID, saw %s", strerror(-ret));
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.pasid = p2, .va = buf, .len = len, .rd = 1, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	h.fd = c->fd;
	h.pasid = p2;
	h.buf = buf;
	h.stop = &stop;
	REQUIRE(c, !pthread_create(&th, NULL, hammer_fn, &h),
		"expected an access thread, saw pthread_create failure");
	msleep(30);
	ret = dev_unbind(c->fd, p2);
	CHECK(c, !ret, "UNBIND %u: expected success, saw %s", p2,
	      strerror(-ret));
	epoch_bump(c);
	stop = 1;
	pthread_join(th, NULL);

	audit(c, p2, buf, len, "unbind with accesses in flight");
	CHECK(c, mod_counter(c, AMDVI_MC_STREAMS_ACTIVE) == streams0,
	      "module streams after unbind: expected %llu (stream stopped by the teardown), saw %llu",
	      (unsigned long long)streams0,
	      (unsigned long long)mod_counter(c, AMDVI_MC_STREAMS_ACTIVE));
	memset(&k, 0, sizeof(k));
	ret = dev_stream_ctl(c->fd, sid, 0, &k);
	CHECK(c, ret != ST_OK || !k.running,
	      "stream %u after unbind: expected stopped or released, saw running",
	      sid);
	if (ret == ST_OK)
		c->accesses += k.reads + k.writes + k.translations;
	ret = dev_access(c->fd, c->ep_data, p2, AMDVI_OP_READ, 0,
			 (uintptr_t)buf, &got, 8, NULL);
	c->accesses++;
	CHECK(c, ret != ST_OK,
	      "device read on the unbound PASID %u: expected a failure, saw OK", p2);

	ret = dev_bind(c->fd, 0, &p3);
	CHECK(c, !ret, "re-BIND: expected a PASID, saw %s", strerror(-ret));
	if (!ret) {
		ret = dev_access(c->fd, c->ep_data, p3, AMDVI_OP_READ, 0,
				 (uintptr_t)buf, &got, 8, NULL);
		c->accesses++;
		CHECK(c, ret == ST_OK && got == *(uint64_t *)buf,
		      "device read after re-bind (pasid %u): expected OK %#llx, saw %s %#llx",
		      p3, (unsigned long long)*(uint64_t *)buf, st_str(ret),
		      (unsigned long long)got);
		dev_unbind(c->fd, p3);
	}
	munmap(buf, len);
}
