// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, the event log: error paths of the device reach the module's
 * event decoder.
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

/* ---- the event log (docs/protocol.md §3) ---- */

/* AMD event-log entry (§5.1): codes, flags, fields */
#define EV_ILLEGAL_COMMAND	0x5
#define EV_IOTLB_INV_TIMEOUT	0x7
#define EV_INVALID_DEV_REQ	0x8
#define EV_FLAG_GN		(1U << 0)
#define EV_FLAG_TR		(1U << 8)
#define EV_WAIT_MS		1000

#define CMD_OP_INV_DEVTAB	0x2U
#define CMD_OP_INV_IOTLB	0x4U

static uint32_t ev_code(const uint32_t *e)
{
	return e[1] >> 28;
}

static uint32_t ev_devid(const uint32_t *e)
{
	return e[0] & 0xffff;
}

static uint32_t ev_flags(const uint32_t *e)
{
	return (e[1] >> 16) & 0xfff;
}

static uint32_t ev_pasid(const uint32_t *e)
{
	return (e[0] & 0xf0000) | (e[1] & 0xffff);
}

static uint64_t ev_addr(const uint32_t *e)
{
	return (uint64_t)e[3] << 32 | e[2];
}

static bool is_endpoint(struct ctx *c, uint32_t devid)
{
	for (unsigned int i = 0; i < c->info.num_endpoints; i++)
		if (c->info.endpoint_devid[i] == devid)
			return true;
	return false;
}

/*
 * Poll the module's decoder (EVENTS) until it has received more events of
 * @code than @before says, at most EV_WAIT_MS; the last such entry goes to
 * @last.  Returns how many arrived (0 after the deadline).
 */
static uint64_t ev_wait(struct ctx *c, const struct amdvi_ioc_events *before,
			unsigned int code, uint32_t last[4])
{
	struct amdvi_ioc_events now;
	uint64_t t0 = now_ms();
	int ret;

	for (;;) {
		ret = dev_events(c->fd, &now);
		if (ret) {
			fail(c, "EVENTS ioctl: %s", strerror(-ret));
			return 0;
		}
		if (now.count[code] > before->count[code]) {
			memcpy(last, now.last[code], sizeof(now.last[code]));
			return now.count[code] - before->count[code];
		}
		if (now_ms() - t0 > EV_WAIT_MS)
			return 0;
		msleep(20);
	}
}

/*
 * The device -> eventq -> module decoder path, which correct runs never
 * take.  (1) One COMMANDS request: INVALIDATE_IOTLB_PAGES to a device id no
 * endpoint has (nobody answers: IOTLB_INV_TIMEOUT at that command's GPA),
 * then INVALIDATE_DEVTAB_ENTRY with reserved bits 31:16 set (ILLEGAL_COMMAND,
 * executed 1, ILLEGAL_COMMAND_ERROR at the GPA the response names).  (2) An
 * endpoint whose DTE has I=0 asks for a translation: DEVICE_ERROR and
 * INVALID_DEVICE_REQUEST (TR=1, GN=1, our PASID and VA); with I=1 again the
 * same TRANSLATE succeeds.
 */
void t_events(struct ctx *c)
{
	unsigned int ep = c->info.num_endpoints - 1;
	uint32_t ep_devid = c->info.endpoint_devid[ep];
	uint32_t nodev = 0x0100, pasid = c->pasid, cmds[2][4], e[4];
	const uint64_t all = 0x7ffffffffffff000ULL;
	struct amdvi_ioc_events before;
	struct amdvi_ioc_raw_cmds rc;
	struct amdvi_ioc_access a;
	uint64_t *buf, n, got = 0;
	int ret, ret2;

	while (is_endpoint(c, nodev))
		nodev++;
	ret = dev_events(c->fd, &before);
	REQUIRE(c, !ret, "EVENTS ioctl: expected 0, saw %s", strerror(-ret));

	/* (1) IOTLB_INV_TIMEOUT, then ILLEGAL_COMMAND_ERROR */
	cmds[0][0] = nodev | ((pasid >> 8) & 0xff) << 16;
	cmds[0][1] = nodev | (pasid & 0xff) << 16 | ((pasid >> 16) & 0xf) << 24 |
		     CMD_OP_INV_IOTLB << 28;
	cmds[0][2] = (uint32_t)all | 0x4 | 0x1;		/* GN, S: everything */
	cmds[0][3] = all >> 32;
	cmds[1][0] = ep_devid | 0xffff0000U;		/* reserved 31:16 */
	cmds[1][1] = CMD_OP_INV_DEVTAB << 28;
	cmds[1][2] = 0;
	cmds[1][3] = 0;
	ret = dev_raw_cmds(c->fd, &cmds[0][0], 2, &rc);
	REQUIRE(c, !ret, "RAW_CMDS ioctl: expected 0, saw %s", strerror(-ret));
	CHECK(c, rc.status == ST_ILLEGAL_COMMAND,
	      "COMMANDS with a reserved bit set: expected ILLEGAL_COMMAND, saw %s",
	      status_name(rc.status));
	CHECK(c, rc.executed == 1,
	      "COMMANDS: expected executed 1 (the INVALIDATE_IOTLB_PAGES), saw %u",
	      rc.executed);
	REQUIRE(c, rc.illegal_gpa != 0,
		"COMMANDS: expected the illegal command's GPA, saw 0");

	n = ev_wait(c, &before, EV_ILLEGAL_COMMAND, e);
	CHECK(c, n == 1,
	      "expected 1 ILLEGAL_COMMAND_ERROR event within %u ms, saw %llu",
	      EV_WAIT_MS, (unsigned long long)n);
	if (n) {
		CHECK(c, ev_code(e) == EV_ILLEGAL_COMMAND &&
		      ev_addr(e) == rc.illegal_gpa,
		      "ILLEGAL_COMMAND_ERROR: expected address %#llx, saw code %u address %#llx",
		      (unsigned long long)rc.illegal_gpa, ev_code(e),
		      (unsigned long long)ev_addr(e));
		diag(c, "decoded ILLEGAL_COMMAND_ERROR address=%#llx (COMMANDS illegal_gpa %#llx)",
		     (unsigned long long)ev_addr(e),
		     (unsigned long long)rc.illegal_gpa);
	}

	n = ev_wait(c, &before, EV_IOTLB_INV_TIMEOUT, e);
	CHECK(c, n == 1,
	      "expected 1 IOTLB_INV_TIMEOUT event within %u ms, saw %llu",
	      EV_WAIT_MS, (unsigned long long)n);
	if (n) {
		CHECK(c, ev_code(e) == EV_IOTLB_INV_TIMEOUT &&
		      ev_devid(e) == nodev &&
		      ev_addr(e) == rc.illegal_gpa - 16,
		      "IOTLB_INV_TIMEOUT: expected device %#x address %#llx, saw code %u device %#x address %#llx",
		      nodev, (unsigned long long)(rc.illegal_gpa - 16),
		      ev_code(e), ev_devid(e), (unsigned long long)ev_addr(e));
		diag(c, "decoded IOTLB_INV_TIMEOUT device=%#06x address=%#llx",
		     ev_devid(e), (unsigned long long)ev_addr(e));
	}

	/* (2) INVALID_DEVICE_REQUEST: ATS through a DTE with I=0 */
	buf = map_anon(PAGE_SZ);
	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, PAGE_SZ, 40);
	ret = dev_dte_ats(c->fd, ep, 0);
	CHECK(c, !ret, "DTE_ATS clear on endpoint %u: expected 0, saw %s", ep,
	      strerror(-ret));
	if (!ret) {
		ret = dev_access(c->fd, ep, pasid, AMDVI_OP_TRANSLATE, 0,
				 (uintptr_t)buf, NULL, 0, &a);
		c->accesses++;
	}
	ret2 = dev_dte_ats(c->fd, ep, 1);	/* whatever happened */
	REQUIRE(c, !ret2, "DTE_ATS set on endpoint %u: expected 0, saw %s", ep,
		strerror(-ret2));
	CHECK(c, ret == ST_DEVICE_ERROR,
	      "TRANSLATE with DTE.I=0: expected DEVICE_ERROR, saw %s",
	      st_str(ret));
	n = ev_wait(c, &before, EV_INVALID_DEV_REQ, e);
	CHECK(c, n == 1,
	      "expected 1 INVALID_DEVICE_REQUEST event within %u ms, saw %llu",
	      EV_WAIT_MS, (unsigned long long)n);
	if (n) {
		CHECK(c, ev_code(e) == EV_INVALID_DEV_REQ &&
		      ev_devid(e) == ep_devid &&
		      (ev_flags(e) & (EV_FLAG_TR | EV_FLAG_GN)) ==
		      (EV_FLAG_TR | EV_FLAG_GN) &&
		      ev_pasid(e) == pasid && ev_addr(e) == (uintptr_t)buf,
		      "INVALID_DEVICE_REQUEST: expected device %#x pasid %#x address %p TR=1 GN=1, saw code %u device %#x pasid %#x address %#llx flags %#x",
		      ep_devid, pasid, (void *)buf, ev_code(e), ev_devid(e),
		      ev_pasid(e), (unsigned long long)ev_addr(e),
		      ev_flags(e));
		diag(c,
		     "decoded INVALID_DEVICE_REQUEST device=%#06x pasid=%#x address=%#llx flags=%#05x",
		     ev_devid(e), ev_pasid(e), (unsigned long long)ev_addr(e),
		     ev_flags(e));
	}

	/* I=1 again: the endpoint translates and reads */
	ret = dev_access(c->fd, ep, pasid, AMDVI_OP_TRANSLATE, 0,
			 (uintptr_t)buf, NULL, 0, &a);
	c->accesses++;
	CHECK(c, ret == ST_OK && (a.ats & 3) == 3,
	      "TRANSLATE with DTE.I=1 again: expected OK with R=W=1, saw %s ats %#llx",
	      st_str(ret), (unsigned long long)a.ats);
	ret = dev_access(c->fd, ep, pasid, AMDVI_OP_READ, 0, (uintptr_t)buf,
			 &got, 8, NULL);
	c->accesses++;
	CHECK(c, ret == ST_OK && got == buf[0],
	      "READ with DTE.I=1 again: expected OK %#llx, saw %s %#llx",
	      (unsigned long long)buf[0], st_str(ret),
	      (unsigned long long)got);
	audit(c, pasid, buf, PAGE_SZ, "DTE.I restored");
	munmap(buf, PAGE_SZ);
}
