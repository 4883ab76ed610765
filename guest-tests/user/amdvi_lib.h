/* SPDX-License-Identifier: GPL-2.0 */
/* amdvi-tests: /dev/amdvi wrappers and helpers shared by the scenarios. */
#ifndef AMDVI_LIB_H
#define AMDVI_LIB_H

#include <stddef.h>
#include <stdint.h>

#include "amdvi_uapi.h"
#include "harness.h"

#define PAGE_SZ		4096UL
#define HPAGE_SZ	(2UL << 20)

/* device status codes (docs/protocol.md §2.1) */
#define ST_OK			0
#define ST_TRANSLATION_FAULT	5
#define ST_OUT_OF_RANGE		4
#define ST_ILLEGAL_COMMAND	6
#define ST_DEVICE_ERROR		9

const char *status_name(uint32_t st);

int dev_open(void);
int dev_info(int fd, struct amdvi_ioc_info *info);
int dev_bind(int fd, uint32_t mask, uint32_t *pasid);
int dev_unbind(int fd, uint32_t pasid);
int dev_stats(int fd, struct amdvi_ioc_stats *st);
int dev_epoch(int fd, uint32_t op, uint64_t value, uint64_t *now);
int dev_events(int fd, struct amdvi_ioc_events *ev);
/* RAW_CMDS: @n commands of 4 dwords at @cmds; 0 with out->status, or -errno */
int dev_raw_cmds(int fd, const uint32_t *cmds, uint32_t n,
		 struct amdvi_ioc_raw_cmds *out);
int dev_dte_ats(int fd, unsigned int ep, int ats);

/* One ENDPOINT access; returns the device status (>= 0) or -errno. */
int dev_access(int fd, unsigned int ep, uint32_t pasid, uint8_t op,
	       uint8_t flags, uint64_t va, void *buf, uint32_t len,
	       struct amdvi_ioc_access *out);

struct stream_cfg {
	unsigned int ep;
	uint32_t pasid;
	void *va;
	size_t len;
	uint32_t stride;
	uint8_t rd, wr, tr;
	uint8_t flags;
	uint32_t rate;
	uint32_t duration_ms;
	uint64_t write_value;
};

int dev_stream_start(int fd, const struct stream_cfg *cfg, uint32_t *id);
int dev_stream_ctl(int fd, uint32_t id, int stop,
		   struct amdvi_ioc_stream_counts *counts);
int dev_oracle(int fd, int audit, uint32_t pasid, uint64_t va, uint64_t len,
	       uint32_t flags, struct amdvi_ioc_finding *recs, uint32_t max,
	       struct amdvi_ioc_oracle *out);

/* ---- helpers that account into a ctx and report failures (common.c) ---- */

/* start a stream from the fixture; fails the scenario on error (returns 0) */
uint32_t stream_begin(struct ctx *c, struct stream_cfg *cfg);
/* stop (release) it, add its accesses to the ctx */
void stream_end(struct ctx *c, uint32_t id,
		struct amdvi_ioc_stream_counts *counts);
/* ORACLE_AUDIT of [va, va+len): any STALE entry fails the scenario */
void audit(struct ctx *c, uint32_t pasid, const void *va, size_t len,
	   const char *after);
/* ENDPOINT access on the data endpoint, counted */
int dacc(struct ctx *c, uint32_t pasid, uint8_t op, const void *va, void *buf,
	 uint32_t len, struct amdvi_ioc_access *out);
void epoch_bump(struct ctx *c);
void print_findings(struct ctx *c, const struct amdvi_ioc_finding *f,
		    unsigned int n, unsigned int max_print);

/* memory */
void *map_anon(size_t len);
void *map_aligned(size_t len, size_t align, void **base, size_t *maplen);
void fill_words(void *p, size_t len, uint64_t seed);
/* first mismatch offset, or -1 */
long cmp_words(const void *p, size_t len, uint64_t seed);
uint64_t word_at(uint64_t seed, size_t off);
void msleep(unsigned int ms);
uint64_t now_ms(void);
int read_sysfs_u64(const char *path, uint64_t *val);
int write_sysfs(const char *path, const char *val);

#endif /* AMDVI_LIB_H */
