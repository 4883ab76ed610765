/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The KTAP test harness of amdvi-tests, in the conventions of the kernel's
 * tools/testing/selftests/kselftest_harness.h (written for this suite, not
 * copied): EXPECT_*() and ASSERT_*() print both values, every scenario runs
 * in a forked child with its own timeout, the run ends with "# Totals:".
 *
 * A scenario's child opens /dev/amdvi and binds its own mm to a PASID (the
 * bind follows current->mm, so the fixture cannot be inherited), runs, and
 * reports its counters through memory shared with the parent.  A check that
 * fails prints a "# " diagnostic with what was expected and what was seen,
 * marks the scenario failed and lets it continue; ASSERT_*() and REQUIRE()
 * end it.  A child that dies on a signal or overruns its timeout is that
 * scenario's failure; the parent prints its result line and goes on.
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
#define SC_HIDDEN	(1U << 3)	/* a control of the harness itself: runs only with -x NAME */

#define DEFAULT_TIMEOUT_S	120	/* per scenario run (per repeat for SC_RACE) */

struct ctx;

struct scenario {
	const char *name;
	void (*fn)(struct ctx *c);
	unsigned int flags;
	unsigned int min_repeats;	/* repeats when -r is not given */
	const char *what;
	unsigned int timeout_s;		/* 0: DEFAULT_TIMEOUT_S or -t */
};

struct ctx {
	const struct scenario *sc;
	int fd;
	struct amdvi_ioc_info info;
	uint32_t pasid;			/* fixture PASID */
	unsigned int ep_data;		/* endpoint index for data checks */
	unsigned int ep_stream;		/* endpoint index for streams */
	int repeat;			/* 1-based, 0 when not repeating; in the
					 * scenario's ctx: repeats reported */
	int nrepeats;
	const char *indent;		/* "" or "  " inside subtests */
	bool failed;
	bool skipped;
	bool finished;			/* the child reported to the end */
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

void cmp_fail(struct ctx *c, const char *func, int line, const char *a,
	      const char *op, const char *b, bool is_signed,
	      unsigned long long va, unsigned long long vb);

#define __is_signed(v)	(!!(((__typeof__(v))(-1)) < (__typeof__(v))1))

/*
 * EXPECT_EQ(c, seen, expected) and friends compare two integer expressions
 * and print both values on failure; ASSERT_*() also leave the scenario.
 * The comparison is exact for any mix of 64-bit signed and unsigned types.
 */
#define __CMP(c, a, op, b, leave)					\
	do {								\
		__typeof__(a) __a = (a);				\
		__typeof__(b) __b = (b);				\
		if (!((__int128)__a op (__int128)__b)) {			\
			cmp_fail(c, __func__, __LINE__, #a, #op, #b,	\
				 __is_signed(__a) || __is_signed(__b),	\
				 (unsigned long long)__a,		\
				 (unsigned long long)__b);		\
			if (leave)					\
				return;					\
		}							\
	} while (0)

#define EXPECT_EQ(c, a, b)	__CMP(c, a, ==, b, 0)
#define EXPECT_NE(c, a, b)	__CMP(c, a, !=, b, 0)
#define EXPECT_LT(c, a, b)	__CMP(c, a, <, b, 0)
#define EXPECT_LE(c, a, b)	__CMP(c, a, <=, b, 0)
#define EXPECT_GT(c, a, b)	__CMP(c, a, >, b, 0)
#define EXPECT_GE(c, a, b)	__CMP(c, a, >=, b, 0)
#define ASSERT_EQ(c, a, b)	__CMP(c, a, ==, b, 1)
#define ASSERT_NE(c, a, b)	__CMP(c, a, !=, b, 1)
#define ASSERT_LT(c, a, b)	__CMP(c, a, <, b, 1)
#define ASSERT_LE(c, a, b)	__CMP(c, a, <=, b, 1)
#define ASSERT_GT(c, a, b)	__CMP(c, a, >, b, 1)
#define ASSERT_GE(c, a, b)	__CMP(c, a, >=, b, 1)

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
