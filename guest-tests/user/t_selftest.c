// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, controls of the harness itself (hidden: they run only with
 * -x NAME).  crash_selftest dies on SIGSEGV and hang_selftest never returns,
 * each with a device stream running on its fixture; the harness must report
 * that scenario as failed, tear the fixture down with the child, and go on
 * with the next scenario.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "tests.h"

static uint32_t selftest_stream(struct ctx *c, uint8_t **buf)
{
	size_t len = 8 * PAGE_SZ;

	*buf = map_anon(len);
	if (!*buf)
		return 0;
	fill_words(*buf, len, 99);
	return stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = *buf, .len = len, .rd = 1, .wr = 1, .rate = c->rate,
		.write_value = WV_BASE });
}

void t_crash_selftest(struct ctx *c)
{
	volatile uint64_t *null = NULL;
	uint8_t *buf;
	uint32_t sid = selftest_stream(c, &buf);

	ASSERT_NE(c, sid, 0);
	diag(c, "stream %u running; now dereferencing NULL on purpose", sid);
	msleep(20);
	*null = 1;
	diag(c, "still alive after a NULL store: the control did not crash");
}

void t_hang_selftest(struct ctx *c)
{
	uint8_t *buf;
	uint32_t sid = selftest_stream(c, &buf);

	ASSERT_NE(c, sid, 0);
	diag(c, "stream %u running; now sleeping past the timeout on purpose",
	     sid);
	for (;;)
		pause();
}
