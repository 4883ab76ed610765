// SPDX-License-Identifier: GPL-2.0
/* amdvi-tests: /dev/amdvi wrappers and helpers. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "amdvi_lib.h"

const char *status_name(uint32_t st)
{
	static const char * const names[] = {
		"OK", "BAD_REQUEST", "UNSUPPORTED", "NOT_READY",
		"OUT_OF_RANGE", "TRANSLATION_FAULT", "ILLEGAL_COMMAND",
		"TIMEOUT", "NO_RESOURCE", "DEVICE_ERROR",
	};

	return st < sizeof(names) / sizeof(names[0]) ? names[st] : "UNKNOWN";
}

static int xioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? -errno : 0;
}

int dev_open(void)
{
	int fd = open("/dev/" AMDVI_DEV_NAME, O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int dev_info(int fd, struct amdvi_ioc_info *info)
{
	memset(info, 0, sizeof(*info));
	return xioctl(fd, AMDVI_IOC_INFO, info);
}

int dev_bind(int fd, uint32_t mask, uint32_t *pasid)
{
	struct amdvi_ioc_bind b = { .endpoint_mask = mask };
	int ret = xioctl(fd, AMDVI_IOC_BIND, &b);

	if (!ret)
		*pasid = b.pasid;
	return ret;
}

int dev_unbind(int fd, uint32_t pasid)
{
	struct amdvi_ioc_unbind u = { .pasid = pasid };

	return xioctl(fd, AMDVI_IOC_UNBIND, &u);
}

int dev_stats(int fd, struct amdvi_ioc_stats *st)
{
	memset(st, 0, sizeof(*st));
	return xioctl(fd, AMDVI_IOC_STATS, st);
}

int dev_epoch(int fd, uint32_t op, uint64_t value, uint64_t *now)
{
	struct amdvi_ioc_epoch e = { .op = op, .value = value };
	int ret = xioctl(fd, AMDVI_IOC_EPOCH, &e);

	if (!ret && now)
		*now = e.value;
	return ret;
}

int dev_events(int fd, struct amdvi_ioc_events *ev)
{
	memset(ev, 0, sizeof(*ev));
	return xioctl(fd, AMDVI_IOC_EVENTS, ev);
}

int dev_raw_cmds(int fd, const uint32_t *cmds, uint32_t n,
		 struct amdvi_ioc_raw_cmds *out)
{
	memset(out, 0, sizeof(*out));
	out->cmds = (uintptr_t)cmds;
	out->count = n;
	return xioctl(fd, AMDVI_IOC_RAW_CMDS, out);
}

int dev_dte_ats(int fd, unsigned int ep, int ats)
{
	struct amdvi_ioc_dte_ats d = { .endpoint = ep, .ats = !!ats };

	return xioctl(fd, AMDVI_IOC_DTE_ATS, &d);
}

int dev_access(int fd, unsigned int ep, uint32_t pasid, uint8_t op,
	       uint8_t flags, uint64_t va, void *buf, uint32_t len,
	       struct amdvi_ioc_access *out)
{
	struct amdvi_ioc_access a = {
		.endpoint = ep, .pasid = pasid, .va = va,
		.buf = (uintptr_t)buf, .len = len, .op = op, .flags = flags,
	};
	int ret = xioctl(fd, AMDVI_IOC_ACCESS, &a);

	if (out)
		*out = a;
	return ret ? ret : (int)a.status;
}

int dev_stream_start(int fd, const struct stream_cfg *cfg, uint32_t *id)
{
	struct amdvi_ioc_stream_start s = {
		.endpoint = cfg->ep, .pasid = cfg->pasid,
		.va = (uintptr_t)cfg->va, .len = cfg->len,
		.stride = cfg->stride, .read_weight = cfg->rd,
		.write_weight = cfg->wr, .translate_weight = cfg->tr,
		.flags = cfg->flags, .rate = cfg->rate,
		.duration_ms = cfg->duration_ms,
		.write_value = cfg->write_value,
	};
	int ret = xioctl(fd, AMDVI_IOC_STREAM_START, &s);

	if (ret)
		return ret;
	*id = s.stream_id;
	return s.status;
}

int dev_stream_ctl(int fd, uint32_t id, int stop,
		   struct amdvi_ioc_stream_counts *counts)
{
	struct amdvi_ioc_stream s = { .stream_id = id };
	int ret = xioctl(fd, stop ? AMDVI_IOC_STREAM_STOP :
				    AMDVI_IOC_STREAM_STATUS, &s);

	if (ret)
		return ret;
	if (counts)
		*counts = s.counts;
	return s.status;
}

int dev_oracle(int fd, int audit, uint32_t pasid, uint64_t va, uint64_t len,
	       uint32_t flags, struct amdvi_ioc_finding *recs, uint32_t max,
	       struct amdvi_ioc_oracle *out)
{
	memset(out, 0, sizeof(*out));
	out->pasid = pasid;
	out->va = va;
	out->len = len;
	out->flags = flags;
	out->records = (uintptr_t)recs;
	out->max_records = recs ? max : 0;
	return xioctl(fd, audit ? AMDVI_IOC_ORACLE_AUDIT :
				  AMDVI_IOC_ORACLE_READ, out);
}

/* ---- memory ---- */

void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

void *map_aligned(size_t len, size_t align, void **base, size_t *maplen)
{
	uint8_t *p;
	uintptr_t a;

	*maplen = len + align;
	p = mmap(NULL, *maplen, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	*base = p;
	a = ((uintptr_t)p + align - 1) & ~(align - 1);
	return (void *)a;
}

uint64_t word_at(uint64_t seed, size_t off)
{
	return (seed << 32) ^ (off / 8) ^ 0x5a5a000000000000ULL;
}

void fill_words(void *p, size_t len, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = word_at(seed, i * 8);
}

long cmp_words(const void *p, size_t len, uint64_t seed)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != word_at(seed, i * 8))
			return (long)(i * 8);
	return -1;
}

void msleep(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

int read_sysfs_u64(const char *path, uint64_t *val)
{
	FILE *f = fopen(path, "r");
	unsigned long long v;
	int ok;

	if (!f)
		return -errno;
	ok = fscanf(f, "%llu", &v) == 1;
	fclose(f);
	if (!ok)
		return -EINVAL;
	*val = v;
	return 0;
}

int write_sysfs(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}
