// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-shadow: run a program with the emulated device following its
 * address space (docs/shadow.md).
 *
 *   amdvi-shadow [--rate R] [--streams N] [--translate W] [--name NAME]
 *                [--allow-r1] -- CMD ARGS
 *
 * The child asks to be traced (PTRACE_TRACEME) and execs CMD; the kernel
 * stops it with SIGTRAP once the new image is in place, before its first
 * instruction.  There the parent binds the child's mm (BIND_PID, by pidfd:
 * the module accepts only the tracer), starts N follow-mode streams on the
 * PASID (ATS translations and reads through the ATC at addresses the PASID
 * maps, read-only, no PRI) and detaches.  The bond goes away with the mm
 * when CMD exits or execs again.  When CMD has exited the oracle's findings
 * are read and one KTAP result is printed, judged as docs/shadow.md says:
 * R1, R2, R4 and freed fail, R3 (not present now) is the kernel's own flush
 * window and is reported but tolerated, stale is not measured (no sync
 * points).  CMD failing (non-zero exit, signal) fails the result too.
 *
 * The oracle and the counters are the device's, not the PASID's: run one
 * amdvi-shadow at a time and nothing else on the device.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "amdvi_lib.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define SHADOW_MAX_STREAMS	16
#define POLL_MS			10

/* daemon STATS counters (docs/protocol.md) */
#define DEV_ATS_REQUESTS	10
#define DEV_ATC_INVALIDATIONS	19

#define ST_OK	0

static int xioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? -errno : 0;
}

struct opts {
	unsigned int rate;
	unsigned int streams;
	unsigned int translate;
	int allow_r1;
	const char *name;
	char **argv;
};

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [--rate R] [--streams N] [--translate W] [--name NAME] [--allow-r1] -- CMD [ARGS]\n"
		"  --rate R       accesses per second per stream (default 0: unthrottled)\n"
		"  --streams N    follow-mode streams, 1..%d (default 1)\n"
		"  --translate W  weight of ATS translations against reads (weight 1; default 1)\n"
		"  --name NAME    KTAP test name (default shadow_<basename of CMD>)\n"
		"  --allow-r1     tolerate R1 (CMD races unmaps against its own threads)\n",
		prog, SHADOW_MAX_STREAMS);
	exit(2);
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "rate", required_argument, NULL, 'r' },
		{ "streams", required_argument, NULL, 's' },
		{ "translate", required_argument, NULL, 't' },
		{ "name", required_argument, NULL, 'n' },
		{ "allow-r1", no_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	*o = (struct opts){ .rate = 0, .streams = 1, .translate = 1 };
	while ((ch = getopt_long(argc, argv, "+r:s:t:n:ah", lo, NULL)) != -1) {
		switch (ch) {
		case 'r':
			o->rate = strtoul(optarg, NULL, 0);
			break;
		case 's':
			o->streams = strtoul(optarg, NULL, 0);
			break;
		case 't':
			o->translate = strtoul(optarg, NULL, 0);
			break;
		case 'n':
			o->name = optarg;
			break;
		case 'a':
			o->allow_r1 = 1;
			break;
		default:
			usage(argv[0]);
		}
	}
	if (optind >= argc || !o->streams || o->streams > SHADOW_MAX_STREAMS ||
	    o->translate > 255)
		usage(argv[0]);
	o->argv = argv + optind;
	return 0;
}

/* KTAP name: no spaces or '#' */
static void test_name(const struct opts *o, char *buf, size_t len)
{
	const char *base = strrchr(o->argv[0], '/');
	char *p;

	if (o->name)
		snprintf(buf, len, "%s", o->name);
	else
		snprintf(buf, len, "shadow_%s", base ? base + 1 : o->argv[0]);
	for (p = buf; *p; p++)
		if (*p == ' ' || *p == '#' || *p == '\t')
			*p = '_';
}

struct run {
	uint32_t pasid;
	uint32_t ids[SHADOW_MAX_STREAMS];
	struct amdvi_ioc_stream_counts last[SHADOW_MAX_STREAMS];
	unsigned int nstreams;
	int status;
	const char *error;
};

/*
 * BIND_PID must refuse what is not a pidfd (EBADF) and a process the caller
 * does not trace (EPERM): a sleeping child of ours.  NULL when both hold.
 */
static const char *check_refusals(int fd)
{
	struct amdvi_ioc_bind_pid b = { 0 };
	const char *bad = NULL;
	int pidfd, st;
	pid_t pid;

	b.pidfd = fd;		/* /dev/amdvi itself */
	if (!ioctl(fd, AMDVI_IOC_BIND_PID, &b) || errno != EBADF)
		bad = "BIND_PID accepted a file that is not a pidfd";
	pid = fork();
	if (pid < 0)
		return "fork failed";
	if (!pid) {
		pause();
		_exit(0);
	}
	pidfd = syscall(SYS_pidfd_open, pid, 0);
	b.pidfd = pidfd;
	if (pidfd < 0)
		bad = "pidfd_open failed";
	else if (!ioctl(fd, AMDVI_IOC_BIND_PID, &b) || errno != EPERM)
		bad = "BIND_PID bound a process the caller does not trace";
	if (pidfd >= 0)
		close(pidfd);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return bad;
}

/* Start CMD stopped after exec, bind it, start the streams, let it run. */
static pid_t launch(int fd, const struct opts *o,
		    const struct amdvi_ioc_info *info, struct run *r)
{
	struct amdvi_ioc_bind_pid b = { 0 };
	pid_t pid;
	int st, pidfd;
	unsigned int i;

	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		r->error = "fork failed";
		return -1;
	}
	if (!pid) {
		close(fd);
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL)) {
			perror("amdvi-shadow: PTRACE_TRACEME");
			_exit(126);
		}
		execvp(o->argv[0], o->argv);
		fprintf(stderr, "amdvi-shadow: exec %s: %s\n", o->argv[0],
			strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &st, 0) != pid || !WIFSTOPPED(st) ||
	    WSTOPSIG(st) != SIGTRAP) {
		r->status = st;
		r->error = "CMD did not stop after exec (exec failed?)";
		return pid;	/* exited: nothing to bind */
	}
	pidfd = syscall(SYS_pidfd_open, pid, 0);
	b.pidfd = pidfd;
	if (pidfd < 0 || ioctl(fd, AMDVI_IOC_BIND_PID, &b)) {
		r->error = pidfd < 0 ? "pidfd_open failed" : "BIND_PID failed";
		fprintf(stdout, "# amdvi-shadow: %s: %s\n", r->error,
			strerror(errno));
		kill(pid, SIGKILL);
		ptrace(PTRACE_DETACH, pid, NULL, NULL);
		return pid;
	}
	close(pidfd);
	r->pasid = b.pasid;
	for (i = 0; i < o->streams; i++) {
		struct amdvi_ioc_stream_start ss = {
			.endpoint = i % info->num_endpoints,
			.pasid = r->pasid,
			.read_weight = 1, .translate_weight = o->translate,
			.flags = AMDVI_ACC_NO_PRI | AMDVI_STREAM_FOLLOW,
			.rate = o->rate,
		};
		int ret = xioctl(fd, AMDVI_IOC_STREAM_START, &ss);

		if (ret || ss.status != ST_OK) {
			fprintf(stdout, "# amdvi-shadow: stream %u: %s %u\n", i,
				ret ? strerror(-ret) : "device status",
				ss.status);
			r->error = "STREAM_START failed";
			break;
		}
		r->ids[i] = ss.stream_id;
		r->nstreams++;
	}
	/* data 0: the exec SIGTRAP is not delivered */
	if (ptrace(PTRACE_DETACH, pid, NULL, NULL)) {
		r->error = "PTRACE_DETACH failed";
		kill(pid, SIGKILL);
	}
	return pid;
}

/* Wait for CMD, keeping the streams' counts (they end with the mm). */
static void wait_cmd(int fd, pid_t pid, struct run *r)
{
	unsigned int i;
	pid_t w;

	for (;;) {
		for (i = 0; i < r->nstreams; i++) {
			struct amdvi_ioc_stream_counts c;

			if (dev_stream_ctl(fd, r->ids[i], 0, &c) == ST_OK)
				r->last[i] = c;
		}
		w = waitpid(pid, &r->status, WNOHANG);
		if (w == pid || (w < 0 && errno != EINTR))
			break;
		msleep(POLL_MS);
	}
	for (i = 0; i < r->nstreams; i++) {
		struct amdvi_ioc_stream_counts c;

		/* still there if the mm outlived CMD (shared with a child) */
		if (dev_stream_ctl(fd, r->ids[i], 1, &c) == ST_OK)
			r->last[i] = c;
	}
}

int main(int argc, char **argv)
{
	struct amdvi_ioc_finding recs[AMDVI_ORACLE_RECORDS];
	struct amdvi_ioc_stats s0, s1, sx;
	struct amdvi_ioc_info info;
	struct amdvi_ioc_oracle orc;
	struct amdvi_ioc_stream_counts sum = { 0 };
	struct run r = { 0 };
	struct opts o;
	char name[64];
	uint64_t t0, ms, releases = 0, inval, atc_inv, trans, freed, checks;
	uint64_t r_[4];
	unsigned int i, n;
	int fd, failed = 0, cmd_ok;
	const char *refusal;
	pid_t pid;

	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_opts(argc, argv, &o);
	test_name(&o, name, sizeof(name));
	printf("KTAP version 1\n1..1\n");

	fd = dev_open();
	if (fd < 0 || dev_info(fd, &info) || !(info.features & AMDVI_FEAT_SVA) ||
	    !info.num_endpoints) {
		printf("# amdvi-shadow: /dev/amdvi unusable (no module, no SVA or no endpoint)\n");
		printf("not ok 1 %s\n", name);
		return 1;
	}
	refusal = check_refusals(fd);
	/* start from an empty oracle and a counter snapshot */
	dev_oracle(fd, 0, 0, 0, 0, AMDVI_ORACLE_CLEAR, NULL, 0, &orc);
	if (dev_stats(fd, &s0))
		memset(&s0, 0, sizeof(s0));
	t0 = now_ms();

	pid = launch(fd, &o, &info, &r);
	if (pid > 0 && r.pasid)
		wait_cmd(fd, pid, &r);
	else if (pid > 0 && waitpid(pid, &r.status, WNOHANG) == 0)
		waitpid(pid, &r.status, 0);
	ms = now_ms() - t0;

	/* the mm went with CMD: ->release ran before our UNBIND */
	if (!dev_stats(fd, &sx))
		releases = sx.mod[AMDVI_MC_NOTIF_RELEASE] -
			   s0.mod[AMDVI_MC_NOTIF_RELEASE];
	if (r.pasid)
		dev_unbind(fd, r.pasid);
	dev_oracle(fd, 0, 0, 0, 0, AMDVI_ORACLE_CLEAR, recs, AMDVI_ORACLE_RECORDS,
			&orc);
	if (dev_stats(fd, &s1))
		memset(&s1, 0, sizeof(s1));

	for (i = 0; i < r.nstreams; i++) {
		sum.reads += r.last[i].reads;
		sum.translations += r.last[i].translations;
		sum.faults += r.last[i].faults;
		sum.atc_hits += r.last[i].atc_hits;
		sum.atc_misses += r.last[i].atc_misses;
		sum.errors += r.last[i].errors;
	}
	trans = s1.dev[DEV_ATS_REQUESTS] - s0.dev[DEV_ATS_REQUESTS];
	atc_inv = s1.dev[DEV_ATC_INVALIDATIONS] - s0.dev[DEV_ATC_INVALIDATIONS];
	inval = s1.mod[AMDVI_MC_FLUSH_RANGE] - s0.mod[AMDVI_MC_FLUSH_RANGE] +
		s1.mod[AMDVI_MC_FLUSH_ALL] - s0.mod[AMDVI_MC_FLUSH_ALL];
	freed = s1.mod[AMDVI_MC_FREED_CACHED] - s0.mod[AMDVI_MC_FREED_CACHED];
	checks = s1.mod[AMDVI_MC_FREED_CHECKS] - s0.mod[AMDVI_MC_FREED_CHECKS];
	for (i = 0; i < 4; i++)
		r_[i] = orc.count[AMDVI_CNT_R1 + i];

	cmd_ok = WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0;
	printf("# amdvi-shadow: cmd=%s pasid=%u streams=%u rate=%u exit=%s%d\n",
	       o.argv[0], r.pasid, r.nstreams, o.rate,
	       WIFSIGNALED(r.status) ? "signal " : "",
	       WIFSIGNALED(r.status) ? WTERMSIG(r.status) :
				       WEXITSTATUS(r.status));
	printf("# amdvi-shadow: reads=%llu translations=%llu faults=%llu atc_hits=%llu atc_misses=%llu errors=%llu\n",
	       (unsigned long long)sum.reads,
	       (unsigned long long)sum.translations,
	       (unsigned long long)sum.faults,
	       (unsigned long long)sum.atc_hits,
	       (unsigned long long)sum.atc_misses,
	       (unsigned long long)sum.errors);
	printf("# amdvi-shadow: invalidations: driver flushes=%llu device atc_invalidations=%llu; freed checks=%llu\n",
	       (unsigned long long)inval, (unsigned long long)atc_inv,
	       (unsigned long long)checks);
	n = orc.nrecords < 8 ? orc.nrecords : 8;
	for (i = 0; i < n; i++)
		printf("# amdvi-shadow: finding R%u %s pasid=%u va=%#llx cached_pa=%#llx pte=%#llx\n",
		       recs[i].rule, recs[i].write ? "write" : "read",
		       recs[i].pasid, (unsigned long long)recs[i].va,
		       (unsigned long long)recs[i].cached_pa,
		       (unsigned long long)recs[i].current_pte);
	printf("# amdvi-shadow: mm release callbacks at exit=%llu\n",
	       (unsigned long long)releases);
	if (r.error) {
		printf("# amdvi-shadow: %s\n", r.error);
		failed = 1;
	}
	if (refusal) {
		printf("# amdvi-shadow: %s\n", refusal);
		failed = 1;
	}
	if (r.pasid && !releases) {
		printf("# amdvi-shadow: CMD exited but its bond saw no mm release\n");
		failed = 1;
	}
	if (!cmd_ok) {
		printf("# amdvi-shadow: CMD failed\n");
		failed = 1;
	}
	if ((r_[0] && !o.allow_r1) || r_[1] || r_[3] || freed ||
	    orc.count[AMDVI_CNT_STALE]) {
		printf("# amdvi-shadow: failing findings: r1=%llu%s r2=%llu r4=%llu freed=%llu\n",
		       (unsigned long long)r_[0],
		       o.allow_r1 ? " (allowed)" : "",
		       (unsigned long long)r_[1], (unsigned long long)r_[3],
		       (unsigned long long)freed);
		failed = 1;
	}
	if (r_[2])
		printf("# amdvi-shadow: r3=%llu tolerated (flush window, docs/shadow.md)\n",
		       (unsigned long long)r_[2]);
	printf("# amdvi-result: name=%s result=%s accesses=%llu r1=%llu r2=%llu r3=%llu r4=%llu stale=%llu freed=%llu ms=%llu translations=%llu invalidations=%llu atc_invalidations=%llu\n",
	       name, failed ? "fail" : "pass",
	       (unsigned long long)(sum.reads + sum.translations + sum.faults),
	       (unsigned long long)r_[0], (unsigned long long)r_[1],
	       (unsigned long long)r_[2], (unsigned long long)r_[3],
	       (unsigned long long)orc.count[AMDVI_CNT_STALE],
	       (unsigned long long)freed, (unsigned long long)ms,
	       (unsigned long long)trans, (unsigned long long)inval,
	       (unsigned long long)atc_inv);
	printf("%s 1 %s\n", failed ? "not ok" : "ok", name);
	close(fd);
	return failed;
}
