// SPDX-License-Identifier: GPL-2.0
/*
 * KTAP harness of amdvi-tests; output format: docs/guest-conventions.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdvi_lib.h"
#include "harness.h"

static void vline(struct ctx *c, const char *fmt, va_list ap)
{
	char buf[1024];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	/* one diagnostic per line, even for multi-line messages */
	for (char *s = buf, *nl; s && *s; s = nl) {
		nl = strchr(s, '\n');
		if (nl)
			*nl++ = '\0';
		printf("%s# %s\n", c ? c->indent : "", s);
	}
	fflush(stdout);
}

void diag(struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vline(c, fmt, ap);
	va_end(ap);
}

void fail(struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vline(c, fmt, ap);
	va_end(ap);
	c->failed = true;
}

static void cmp_value(char *buf, size_t len, bool is_signed,
		      unsigned long long v)
{
	long long sv = (long long)v;

	if (is_signed && sv < 0 && sv > -65536)
		snprintf(buf, len, "%lld", sv);
	else if (is_signed && sv < 0)
		snprintf(buf, len, "%lld (%#llx)", sv, v);
	else if (v < 65536)
		snprintf(buf, len, "%llu", v);
	else
		snprintf(buf, len, "%llu (%#llx)", v, v);
}

void cmp_fail(struct ctx *c, const char *func, int line, const char *a,
	      const char *op, const char *b, bool is_signed,
	      unsigned long long va, unsigned long long vb)
{
	char sa[64], sb[64];

	cmp_value(sa, sizeof(sa), is_signed, va);
	cmp_value(sb, sizeof(sb), is_signed, vb);
	fail(c, "%s:%d: Expected %s (%s) %s %s (%s)", func, line, a, sa, op,
	     b, sb);
}

void skip(struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->skip_reason, sizeof(c->skip_reason), fmt, ap);
	va_end(ap);
	c->skipped = true;
}

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [-l] [-f GLOB] [-x NAME] [-r N] [-R RATE] [-t SECS]\n"
		"  -l, --list          list scenarios\n"
		"  -f, --filter GLOB   run only scenarios matching GLOB (may repeat)\n"
		"  -r, --repeat N      repeats of race scenarios (KTAP subtests)\n"
		"  -R, --rate RATE     device stream rate in accesses/s (0 = unthrottled)\n"
		"  -t, --timeout SECS  per-scenario timeout (per repeat; default %d)\n"
		"  -x, --extra NAME    also run the hidden harness control NAME\n"
		"                      (crash_selftest, hang_selftest)\n",
		prog, DEFAULT_TIMEOUT_S);
}

/* Open the device and bind; false (with a failure) when impossible. */
static bool fixture_setup(struct ctx *c)
{
	struct amdvi_ioc_oracle o;
	int ret;

	c->fd = dev_open();
	if (c->fd < 0) {
		fail(c, "cannot open /dev/%s: %s (is amdvi_test.ko loaded and bound?)",
		     AMDVI_DEV_NAME, strerror(-c->fd));
		return false;
	}
	ret = dev_info(c->fd, &c->info);
	if (ret) {
		fail(c, "INFO ioctl failed: %s", strerror(-ret));
		return false;
	}
	if (!(c->info.features & AMDVI_FEAT_SVA)) {
		skip(c, "device has no guest translation (EFR 0x%llx): SVA unavailable",
		     (unsigned long long)c->info.efr);
		return false;
	}
	c->ep_data = 0;
	c->ep_stream = c->info.num_endpoints > 1 ? 1 : 0;
	if (!(c->sc->flags & SC_NO_BIND)) {
		ret = dev_bind(c->fd, 0, &c->pasid);
		if (ret) {
			fail(c, "BIND: expected a PASID, saw error %s",
			     strerror(-ret));
			return false;
		}
	}
	/* start from clean oracle counters */
	ret = dev_oracle(c->fd, 0, 0, 0, 0, AMDVI_ORACLE_CLEAR, NULL, 0, &o);
	if (ret < 0) {
		fail(c, "ORACLE_READ failed: %s", strerror(-ret));
		return false;
	}
	return true;
}

/* Collect the per-access findings since the last read; clears them. */
static void collect_findings(struct ctx *c, uint64_t r[4])
{
	struct amdvi_ioc_finding rec[16];
	struct amdvi_ioc_oracle o;
	int ret;

	memset(r, 0, 4 * sizeof(r[0]));
	ret = dev_oracle(c->fd, 0, 0, 0, 0, AMDVI_ORACLE_CLEAR, rec, 16, &o);
	if (ret < 0 || o.status != ST_OK) {
		fail(c, "ORACLE_READ: expected status OK, saw %s",
		     ret < 0 ? strerror(-ret) : status_name(o.status));
		return;
	}
	for (int i = 0; i < 4; i++)
		r[i] = o.count[i];
	if (r[0] && !(c->sc->flags & SC_ALLOW_R1)) {
		fail(c, "oracle: expected no R1 (stale page) findings, saw %llu (notifier_mode mask 0x%x)",
		     (unsigned long long)r[0], c->info.notifier_mode);
		print_findings(c, rec, o.nrecords, 8);
	} else if (r[0] || r[1] || r[2] || r[3]) {
		diag(c, "oracle (flush-window findings, reported only): R1=%llu R2=%llu R3=%llu R4=%llu",
		     (unsigned long long)r[0], (unsigned long long)r[1],
		     (unsigned long long)r[2], (unsigned long long)r[3]);
	}
	if (o.count[AMDVI_CNT_DROPPED])
		diag(c, "oracle dropped %llu records",
		     (unsigned long long)o.count[AMDVI_CNT_DROPPED]);
}

/* The module's freed-frame counter, or 0 when it has none. */
static uint64_t freed_cached(struct ctx *c)
{
	struct amdvi_ioc_stats st;

	if (c->fd < 0 || dev_stats(c->fd, &st) ||
	    st.nmod <= AMDVI_MC_FREED_CACHED)
		return 0;
	return st.mod[AMDVI_MC_FREED_CACHED];
}

/*
 * The scenario function, then the findings it left.  Besides the oracle's
 * per-access rules, the module's freed-frame check (amdvi_freed.c) counts
 * cached translations whose frame the kernel freed before its secondary-TLB
 * flush: always a kernel bug, whatever the scenario.
 */
static void run_fn(struct ctx *c, uint64_t r[4])
{
	uint64_t freed0 = freed_cached(c);

	c->sc->fn(c);
	collect_findings(c, r);
	c->freed += freed_cached(c) - freed0;
	if (c->freed)
		fail(c, "freed-frame check: expected no cached translation to a freed frame at a secondary-TLB flush, saw %llu (console has the frames)",
		     (unsigned long long)c->freed);
}

static const char *result_of(struct ctx *c)
{
	return c->failed ? "fail" : c->skipped ? "skip" : "pass";
}

static void print_result(struct ctx *c, const char *indent, unsigned int n,
			 const char *name, uint64_t ms)
{
	printf("%s# amdvi-result: name=%s result=%s accesses=%llu r1=%llu r2=%llu r3=%llu r4=%llu stale=%llu freed=%llu ms=%llu\n",
	       indent, name, result_of(c), (unsigned long long)c->accesses,
	       (unsigned long long)c->r[0], (unsigned long long)c->r[1],
	       (unsigned long long)c->r[2], (unsigned long long)c->r[3],
	       (unsigned long long)c->stale, (unsigned long long)c->freed,
	       (unsigned long long)ms);
	if (c->failed)
		printf("%snot ok %u %s\n", indent, n, name);
	else if (c->skipped)
		printf("%sok %u %s # SKIP %s\n", indent, n, name,
		       c->skip_reason);
	else
		printf("%sok %u %s\n", indent, n, name);
	fflush(stdout);
}

/* One run of the scenario function, then the findings it left. */
static void run_once(struct ctx *c)
{
	uint64_t r[4];

	run_fn(c, r);
	for (int k = 0; k < 4; k++)
		c->r[k] += r[k];
}

/* Fold the counters of repeat @s into the scenario's @c. */
static void add_repeat(struct ctx *c, const struct ctx *s)
{
	c->failed |= s->failed;
	if (s->skipped) {
		c->skipped = true;
		memcpy(c->skip_reason, s->skip_reason, sizeof(c->skip_reason));
	}
	c->accesses += s->accesses;
	c->stale += s->stale;
	c->freed += s->freed;
	for (int k = 0; k < 4; k++)
		c->r[k] += s->r[k];
}

/*
 * The scenario's child: its own fixture (open + BIND of this mm), the
 * scenario once or as KTAP subtests, the fixture closed (unbinds).  @c lives
 * in memory shared with the parent, which reads it however the child ends.
 */
static void __attribute__((noreturn)) scenario_child(struct ctx *c, int nrep)
{
	const struct scenario *sc = c->sc;

	setpgid(0, 0);		/* a timeout kills our helpers with us */
	if (fixture_setup(c)) {
		if (nrep == 1) {
			run_once(c);
		} else {
			printf("  KTAP version 1\n  # Subtest: %s\n  1..%d\n",
			       sc->name, nrep);
			c->nrepeats = nrep;
			for (int i = 1; i <= nrep && !c->skipped; i++) {
				struct ctx s = *c;
				char name[96];
				uint64_t t1 = now_ms();

				s.indent = "  ";
				s.repeat = i;
				s.failed = false;
				s.accesses = s.stale = s.freed = 0;
				memset(s.r, 0, sizeof(s.r));
				run_once(&s);
				snprintf(name, sizeof(name), "%s.%d", sc->name,
					 i);
				print_result(&s, "  ", i, name, now_ms() - t1);
				add_repeat(c, &s);
				c->repeat = i;	/* subtests reported */
			}
		}
	}
	if (c->fd >= 0)
		close(c->fd);		/* unbinds the fixture PASID */
	c->finished = true;
	fflush(stdout);
	_exit(0);
}

/* Wait for @pid at most @ms; SIGKILL its process group after that. */
static bool wait_child(pid_t pid, uint64_t ms, int *status)
{
	uint64_t t0 = now_ms();

	for (;;) {
		pid_t w = waitpid(pid, status, WNOHANG);

		if (w == pid || (w < 0 && errno != EINTR))
			return true;
		if (now_ms() - t0 >= ms)
			break;
		msleep(10);
	}
	kill(-pid, SIGKILL);
	kill(pid, SIGKILL);
	waitpid(pid, status, 0);
	return false;
}

/*
 * A child that did not finish: say how it ended, and close its subtest
 * block with the interrupted repeat failed and the rest skipped.
 */
static void child_lost(struct ctx *c, bool in_time, int status,
		       unsigned int timeout_s)
{
	char why[96];

	if (!in_time)
		snprintf(why, sizeof(why), "timed out after %u s and was killed",
			 timeout_s);
	else if (WIFSIGNALED(status))
		snprintf(why, sizeof(why), "killed by signal %d (%s)",
			 WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(why, sizeof(why), "exited with status %d before reporting",
			 WIFEXITED(status) ? WEXITSTATUS(status) : status);
	if (c->nrepeats > 1) {
		for (int i = c->repeat + 1; i <= c->nrepeats; i++) {
			struct ctx s = { .sc = c->sc, .failed = i == c->repeat + 1,
					 .skipped = true };
			char name[96];

			snprintf(name, sizeof(name), "%s.%d", c->sc->name, i);
			if (s.failed)
				printf("  # %s: the scenario's child %s\n",
				       name, why);
			snprintf(s.skip_reason, sizeof(s.skip_reason),
				 "the scenario's child ended in repeat %d",
				 c->repeat + 1);
			print_result(&s, "  ", i, name, 0);
		}
	}
	c->indent = "";
	fail(c, "%s: the scenario's child %s", c->sc->name, why);
}

/* Returns 0 pass, 1 fail, 4 skip. */
static int run_scenario(const struct scenario *sc, unsigned int n,
			int repeats, uint64_t rate, unsigned int timeout_s)
{
	struct ctx *c;
	uint64_t t0 = now_ms();
	int nrep = 1, status = 0, ret;
	bool in_time;
	pid_t pid;

	if (sc->flags & SC_RACE)
		nrep = repeats > 0 ? repeats :
		       (sc->min_repeats ? (int)sc->min_repeats : 1);
	if (sc->timeout_s)
		timeout_s = sc->timeout_s;
	timeout_s *= nrep;

	c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (c == MAP_FAILED) {
		perror("mmap of the scenario's shared state");
		exit(2);
	}
	*c = (struct ctx){ .sc = sc, .fd = -1, .indent = "", .rate = rate };
	fflush(stdout);
	pid = fork();
	if (!pid)
		scenario_child(c, nrep);
	if (pid < 0) {
		fail(c, "%s: fork of the scenario's child: %s", sc->name,
		     strerror(errno));
	} else {
		in_time = wait_child(pid, timeout_s * 1000ULL, &status);
		if (!in_time || !c->finished)
			child_lost(c, in_time, status, timeout_s);
	}
	print_result(c, "", n, sc->name, now_ms() - t0);
	ret = c->failed ? 1 : c->skipped ? 4 : 0;
	munmap(c, sizeof(*c));
	return ret;
}

/* Module and device counters after the suite, as one diagnostic line. */
static void print_stats(void)
{
	struct amdvi_ioc_stats st;
	int fd = dev_open();

	if (fd < 0)
		return;
	if (!dev_stats(fd, &st) && st.nmod >= AMDVI_MC_EVENT_TYPE0) {
		printf("# module: notifier start=%llu end=%llu secondary=%llu release=%llu; flushes range=%llu pasid=%llu; commands=%llu completion_waits=%llu timeouts=%llu errors=%llu; ppr entries=%llu groups=%llu ok=%llu invalid=%llu; events=%llu; binds=%llu; freed-frame checks=%llu found=%llu\n",
		       (unsigned long long)st.mod[AMDVI_MC_NOTIF_START],
		       (unsigned long long)st.mod[AMDVI_MC_NOTIF_END],
		       (unsigned long long)st.mod[AMDVI_MC_NOTIF_SECONDARY],
		       (unsigned long long)st.mod[AMDVI_MC_NOTIF_RELEASE],
		       (unsigned long long)st.mod[AMDVI_MC_FLUSH_RANGE],
		       (unsigned long long)st.mod[AMDVI_MC_FLUSH_ALL],
		       (unsigned long long)st.mod[AMDVI_MC_CMDS],
		       (unsigned long long)st.mod[AMDVI_MC_COMP_WAITS],
		       (unsigned long long)st.mod[AMDVI_MC_COMP_WAIT_TIMEOUTS],
		       (unsigned long long)st.mod[AMDVI_MC_CMD_ERRORS],
		       (unsigned long long)st.mod[AMDVI_MC_PPR_ENTRIES],
		       (unsigned long long)st.mod[AMDVI_MC_PPR_GROUPS],
		       (unsigned long long)st.mod[AMDVI_MC_PPR_SUCCESS],
		       (unsigned long long)st.mod[AMDVI_MC_PPR_INVALID],
		       (unsigned long long)st.mod[AMDVI_MC_EVENTS],
		       (unsigned long long)st.mod[AMDVI_MC_BINDS],
		       (unsigned long long)st.mod[AMDVI_MC_FREED_CHECKS],
		       (unsigned long long)st.mod[AMDVI_MC_FREED_CACHED]);
		if (st.ndev > 21)
			printf("# device: requests=%llu commands=%llu walks=%llu page_requests=%llu prg_responses=%llu iommu_invalidations=%llu atc_invalidations=%llu oracle_findings=%llu illegal_commands=%llu\n",
			       (unsigned long long)st.dev[0],
			       (unsigned long long)st.dev[2],
			       (unsigned long long)st.dev[4],
			       (unsigned long long)st.dev[12],
			       (unsigned long long)st.dev[13],
			       (unsigned long long)st.dev[18],
			       (unsigned long long)st.dev[19],
			       (unsigned long long)st.dev[20],
			       (unsigned long long)st.dev[21]);
	}
	close(fd);
}

int harness_main(int argc, char **argv)
{
	const char *filters[16], *extras[16];
	unsigned int nfilters = 0, nextras = 0, planned = 0, i, n = 0;
	unsigned int timeout_s = DEFAULT_TIMEOUT_S, total[5] = { 0 };
	bool list = false;
	uint64_t rate = 20000;
	int repeats = 0, opt;

	static const struct option longopts[] = {
		{ "list", no_argument, NULL, 'l' },
		{ "filter", required_argument, NULL, 'f' },
		{ "repeat", required_argument, NULL, 'r' },
		{ "rate", required_argument, NULL, 'R' },
		{ "timeout", required_argument, NULL, 't' },
		{ "extra", required_argument, NULL, 'x' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};

	while ((opt = getopt_long(argc, argv, "lf:r:R:t:x:h", longopts,
				  NULL)) != -1) {
		switch (opt) {
		case 'l':
			list = true;
			break;
		case 'f':
			if (nfilters < 16)
				filters[nfilters++] = optarg;
			break;
		case 'r':
			repeats = atoi(optarg);
			break;
		case 'R':
			rate = strtoull(optarg, NULL, 0);
			break;
		case 't':
			timeout_s = strtoul(optarg, NULL, 0);
			if (!timeout_s)
				timeout_s = DEFAULT_TIMEOUT_S;
			break;
		case 'x':
			if (nextras < 16)
				extras[nextras++] = optarg;
			break;
		default:
			usage(argv[0]);
			return opt == 'h' ? 0 : 2;
		}
	}

	bool selected[nr_scenarios];

	for (i = 0; i < nr_scenarios; i++) {
		selected[i] = !nfilters;
		for (unsigned int f = 0; f < nfilters; f++)
			if (!fnmatch(filters[f], scenarios[i].name, 0))
				selected[i] = true;
		/* harness controls: only by name with -x, never by a glob */
		if (scenarios[i].flags & SC_HIDDEN) {
			selected[i] = false;
			for (unsigned int x = 0; x < nextras; x++)
				if (!strcmp(extras[x], scenarios[i].name))
					selected[i] = true;
		}
		planned += selected[i];
	}
	if (list) {
		for (i = 0; i < nr_scenarios; i++)
			if (selected[i])
				printf("%-20s %s\n", scenarios[i].name,
				       scenarios[i].what);
		return 0;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("KTAP version 1\n1..%u\n", planned);
	for (i = 0; i < nr_scenarios; i++) {
		int ret;

		if (!selected[i])
			continue;
		ret = run_scenario(&scenarios[i], ++n, repeats, rate,
				   timeout_s);
		total[ret]++;
	}
	print_stats();
	printf("# Totals: pass:%u fail:%u xfail:0 xpass:0 skip:%u error:0\n",
	       total[0], total[1], total[4]);
	if (total[1])
		return 1;
	return (total[0] || !planned) ? 0 : 4;
}
