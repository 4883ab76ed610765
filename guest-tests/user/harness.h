/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A small KTAP test harness for amdvi-tests (in the spirit of
 * tools/testing/selftests/kselftest_harness.h, written from scratch).
 *
 * Every scenario gets a fresh fixture (an open /dev/amdvi with the process
 * bound to a PASID) and reports through the check macros below.  A failing
 * check prints a "# " diagnostic with what was expected and what was seen,
 * marks the scenario failed and lets it continue; REQUIRE() ends it.
 */
#ifndef AMDVI_HARNESS_H
#define AMDVI_HARNESS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "amdvi_uapi.h"

#define SC_RACE		(1U << 0)	/* honours -r: repeats as KTAP subtests */
#define SC_ALLOW_R1	(1U << 1)	/* user space races an unmap: R1 only reported */
#define SC_NO_BIND	(1U << 2)	/* the fixture does not bind a PASID */

struct ctx;

struct scenario {
	const char *name;
	void (*fn)(struct ctx *c);
	unsigned int flags;
	unsigned int min_repeats;	/* repeats when -r is not given */
	const char *what;
};

struct ctx {
	const struct scenario *sc;
	int fd;
	struct amdvi_ioc_info info;
	uint32_t pasid;			/* fixture PASID */
	unsigned int ep_data;		/* endpoint index for data checks */
	unsigned int ep_stream;		/* endpoint index for streams */
	int repeat;			/* 1-based, 0 when not repeating */
	int nrepeats;
	const char *indent;		/* "" or "  " inside subtests */
	bool failed;
	bool skipped;
	char skip_reason[160];
	uint64_t accesses;
	uint64_t stale;
	uint64_t freed;			/* freed frames still cached at a flush */
	uint64_t r[4];
	uint64_t rate;			/* default stream rate (-R) */
};

void diag(struct ctx *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void fail(struct ctx *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void skip(struct ctx *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* CHECK(c, cond, "expected ..., saw ...", args): continue on failure */
#define CHECK(c, cond, fmt, ...)					\
	do {								\
		if (!(cond))						\
			fail(c, "%s:%d: %s: " fmt, __func__, __LINE__,	\
			     #cond, ##__VA_ARGS__);			\
	} while (0)

/* REQUIRE: as CHECK, but leave the scenario function */
#define REQUIRE(c, cond, fmt, ...)					\
	do {								\
		if (!(cond)) {						\
			fail(c, "%s:%d: %s: " fmt, __func__, __LINE__,	\
			     #cond, ##__VA_ARGS__);			\
			return;						\
		}							\
	} while (0)

#define SKIP_IF(c, cond, fmt, ...)					\
	do {								\
		if (cond) {						\
			skip(c, fmt, ##__VA_ARGS__);			\
			return;						\
		}							\
	} while (0)

extern const struct scenario scenarios[];
extern const unsigned int nr_scenarios;

int harness_main(int argc, char **argv);

#endif /* AMDVI_HARNESS_H */
