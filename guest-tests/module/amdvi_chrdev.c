// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: /dev/amdvi, the ioctl interface of amdvi_uapi.h.
 *
 * Each open file owns the bonds (PASIDs) it created, the streams it started
 * and its private page table (amdvi_pt.c); closing the file unbinds, stops
 * and frees them.
 */
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/miscdevice.h>
#include <linux/pid.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "amdvi.h"

struct amdvi_file {
	struct amdvi_dev *ad;
	struct mutex lock;		/* bonds, pt */
	struct list_head bonds;
	struct amdvi_pt *pt;		/* private page table, or NULL */
	u32 ats_off;			/* endpoints whose DTE.I this file cleared */
};

struct amdvi_file_bond {
	struct list_head node;
	struct amdvi_bond *bond;
};

struct amdvi_stream {
	struct list_head node;
	u32 id;
	u32 pasid;
	struct amdvi_file *owner;
};

static struct amdvi_dev *amdvi_misc_dev(struct file *filp)
{
	struct miscdevice *misc = filp->private_data;

	return container_of(misc, struct amdvi_dev, misc);
}

static int amdvi_open(struct inode *inode, struct file *filp)
{
	struct amdvi_dev *ad = amdvi_misc_dev(filp);
	struct amdvi_file *af;

	af = kzalloc(sizeof(*af), GFP_KERNEL);
	if (!af)
		return -ENOMEM;
	amdvi_dev_get(ad);
	af->ad = ad;
	mutex_init(&af->lock);
	INIT_LIST_HEAD(&af->bonds);
	filp->private_data = af;
	return 0;
}

/* ---- streams ---- */

static int amdvi_stream_stop_req(struct amdvi_dev *ad, u32 id, bool report,
				 struct amdvi_ioc_stream_counts *counts,
				 u32 *status)
{
	struct amdvi_stream_counts *sc;
	struct amdvi_stream_stop *ss;
	struct amdvi_req *req;
	int ret;

	req = amdvi_req_alloc(AMDVI_REQ_STREAM_STOP, sizeof(*ss), sizeof(*sc),
			      0, false, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	ss = req->body;
	ss->stream_id = cpu_to_le32(id);
	ss->flags = cpu_to_le32(report ? AMDVI_STREAM_STOP_F_REPORT : 0);
	ret = amdvi_request(ad, req, false);
	if (ret == AMDVI_S_OK)
		ret = amdvi_req_status(req, sizeof(*sc));
	if (ret >= 0) {
		if (status)
			*status = ret;
		if (ret == AMDVI_S_OK && counts) {
			sc = req->rbody;
			counts->reads = le64_to_cpu(sc->reads);
			counts->writes = le64_to_cpu(sc->writes);
			counts->translations = le64_to_cpu(sc->translations);
			counts->faults = le64_to_cpu(sc->faults);
			counts->page_requests = le64_to_cpu(sc->page_requests);
			counts->atc_hits = le64_to_cpu(sc->atc_hits);
			counts->atc_misses = le64_to_cpu(sc->atc_misses);
			counts->errors = le64_to_cpu(sc->errors);
			counts->elapsed_us = le64_to_cpu(sc->elapsed_us);
			counts->running = le32_to_cpu(sc->running);
		}
		ret = 0;
	}
	amdvi_req_put(req);
	return ret;
}

static void amdvi_stream_forget(struct amdvi_dev *ad, struct amdvi_stream *st)
{
	list_del(&st->node);
	atomic64_dec(&ad->ctr[AMDVI_MC_STREAMS_ACTIVE]);
}

/* Stop (release) every stream for which @match(@st, @arg) holds. */
static void amdvi_stream_stop_if(struct amdvi_dev *ad,
				 bool (*match)(struct amdvi_stream *st,
					       const void *arg),
				 const void *arg)
{
	struct amdvi_stream *st, *tmp;
	LIST_HEAD(stop);

	mutex_lock(&ad->stream_lock);
	list_for_each_entry_safe(st, tmp, &ad->streams, node) {
		if (match(st, arg)) {
			amdvi_stream_forget(ad, st);
			list_add(&st->node, &stop);
		}
	}
	mutex_unlock(&ad->stream_lock);
	list_for_each_entry_safe(st, tmp, &stop, node) {
		amdvi_stream_stop_req(ad, st->id, false, NULL, NULL);
		kfree(st);
	}
}

static bool amdvi_stream_on_pasid(struct amdvi_stream *st, const void *arg)
{
	return st->pasid == *(const u32 *)arg;
}

static bool amdvi_stream_of_file(struct amdvi_stream *st, const void *arg)
{
	return st->owner == arg;
}

/* Stop (release) every stream on @pasid; used by the PASID teardown. */
void amdvi_stream_stop_pasid(struct amdvi_dev *ad, u32 pasid)
{
	amdvi_stream_stop_if(ad, amdvi_stream_on_pasid, &pasid);
}

static int amdvi_ioc_stream_start(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_dev *ad = af->ad;
	struct amdvi_ioc_stream_start u;
	struct amdvi_stream_start *ss;
	struct amdvi_stream *st;
	struct amdvi_req *req;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.endpoint >= ad->num_ep ||
	    u.flags & ~(AMDVI_EP_F_MASK | AMDVI_STREAM_FOLLOW))
		return -EINVAL;
	st = kzalloc(sizeof(*st), GFP_KERNEL);
	req = amdvi_req_alloc(AMDVI_REQ_STREAM_START, sizeof(*ss),
			      sizeof(struct amdvi_stream_start_resp), 0, false,
			      GFP_KERNEL);
	if (!st || !req) {
		kfree(st);
		if (req)
			amdvi_req_put(req);
		return -ENOMEM;
	}
	ss = req->body;
	ss->devid = cpu_to_le16(ad->ep[u.endpoint].devid);
	ss->flags = u.flags & AMDVI_EP_F_MASK;
	ss->mode = (u.flags & AMDVI_STREAM_FOLLOW) ? AMDVI_STREAM_MODE_FOLLOW :
						     AMDVI_STREAM_MODE_RANGE;
	ss->pasid = cpu_to_le32(u.pasid);
	ss->va = cpu_to_le64(u.va);
	ss->len = cpu_to_le64(u.len);
	ss->stride = cpu_to_le32(u.stride);
	ss->read_weight = u.read_weight;
	ss->write_weight = u.write_weight;
	ss->translate_weight = u.translate_weight;
	ss->rate = cpu_to_le32(u.rate);
	ss->duration_ms = cpu_to_le32(u.duration_ms);
	ss->write_value = cpu_to_le64(u.write_value);

	ret = amdvi_request(ad, req, true);
	if (ret == AMDVI_S_OK)
		ret = amdvi_req_status(req,
				       sizeof(struct amdvi_stream_start_resp));
	if (ret < 0)
		goto out;
	u.status = ret;
	u.stream_id = 0;
	if (ret == AMDVI_S_OK) {
		struct amdvi_stream_start_resp *r = req->rbody;

		u.stream_id = le32_to_cpu(r->stream_id);
		st->id = u.stream_id;
		st->pasid = u.pasid;
		st->owner = af;
		mutex_lock(&ad->stream_lock);
		list_add_tail(&st->node, &ad->streams);
		mutex_unlock(&ad->stream_lock);
		atomic64_inc(&ad->ctr[AMDVI_MC_STREAMS_ACTIVE]);
		st = NULL;
	}
	ret = copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
out:
	kfree(st);
	amdvi_req_put(req);
	return ret;
}

static int amdvi_ioc_stream(struct amdvi_file *af, void __user *arg,
			    bool stop)
{
	struct amdvi_dev *ad = af->ad;
	struct amdvi_stream *st, *found = NULL;
	struct amdvi_ioc_stream u;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	memset(&u.counts, 0, sizeof(u.counts));
	if (stop) {
		mutex_lock(&ad->stream_lock);
		list_for_each_entry(st, &ad->streams, node) {
			if (st->id == u.stream_id) {
				amdvi_stream_forget(ad, st);
				found = st;
				break;
			}
		}
		mutex_unlock(&ad->stream_lock);
		kfree(found);
	}
	ret = amdvi_stream_stop_req(ad, u.stream_id, !stop, &u.counts,
				    &u.status);
	if (ret)
		return ret;
	return copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
}

/* ---- endpoint accesses ---- */

static int amdvi_ioc_access(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_dev *ad = af->ad;
	struct amdvi_endpoint_resp *er;
	struct amdvi_ioc_access u;
	struct amdvi_endpoint *ep;
	struct amdvi_req *req;
	void __user *ubuf;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.endpoint >= ad->num_ep || u.flags & ~AMDVI_EP_F_MASK)
		return -EINVAL;
	switch (u.op) {
	case AMDVI_OP_TRANSLATE:
		if (u.len)
			return -EINVAL;
		break;
	case AMDVI_OP_READ:
	case AMDVI_OP_WRITE:
		if (!u.len || u.len > AMDVI_ACCESS_MAX)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	ubuf = u64_to_user_ptr(u.buf);
	req = amdvi_req_alloc(AMDVI_REQ_ENDPOINT, sizeof(*ep), sizeof(*er),
			      u.len, u.op == AMDVI_OP_READ, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	if (u.op == AMDVI_OP_WRITE && copy_from_user(req->data, ubuf, u.len)) {
		ret = -EFAULT;
		goto out;
	}
	ep = req->body;
	ep->devid = cpu_to_le16(ad->ep[u.endpoint].devid);
	ep->op = u.op;
	ep->flags = u.flags;
	ep->pasid = cpu_to_le32(u.pasid);
	ep->va = cpu_to_le64(u.va);
	ep->len = cpu_to_le32(u.len);

	ret = amdvi_request(ad, req, true);
	if (ret == AMDVI_S_OK)
		ret = amdvi_req_status(req, sizeof(*er) +
				       (u.op == AMDVI_OP_READ ? u.len : 0));
	if (ret < 0)
		goto out;
	u.status = ret;
	er = req->rbody;
	u.ats = le64_to_cpu(er->ats);
	u.page_requests = le32_to_cpu(er->page_requests);
	ret = 0;
	if (u.status == AMDVI_S_OK && u.op == AMDVI_OP_READ &&
	    copy_to_user(ubuf, req->data, u.len))
		ret = -EFAULT;
	if (!ret && copy_to_user(arg, &u, sizeof(u)))
		ret = -EFAULT;
out:
	amdvi_req_put(req);
	return ret;
}

/* ---- oracle ---- */

static int amdvi_ioc_oracle(struct amdvi_file *af, void __user *arg,
			    bool audit)
{
	struct amdvi_dev *ad = af->ad;
	struct amdvi_oracle_resp *resp;
	struct amdvi_ioc_oracle u;
	struct amdvi_req *req;
	struct amdvi_finding *f;
	size_t rlen;
	u32 i, n;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.max_records > AMDVI_ORACLE_MAX_RECORDS)
		return -EINVAL;
	if (!u.records)
		u.max_records = 0;
	rlen = sizeof(*resp) + (size_t)u.max_records * sizeof(*f);
	if (audit) {
		struct amdvi_oracle_audit *oa;

		req = amdvi_req_alloc(AMDVI_REQ_ORACLE_AUDIT, sizeof(*oa), rlen,
				      0, false, GFP_KERNEL);
		if (!req)
			return -ENOMEM;
		oa = req->body;
		oa->pasid = cpu_to_le32(u.pasid);
		oa->max_records = cpu_to_le32(u.max_records);
		oa->va = cpu_to_le64(u.va);
		oa->len = cpu_to_le64(u.len);
	} else {
		struct amdvi_oracle_read *orr;

		if (u.flags & ~AMDVI_ORACLE_CLEAR)
			return -EINVAL;
		req = amdvi_req_alloc(AMDVI_REQ_ORACLE_READ, sizeof(*orr), rlen,
				      0, false, GFP_KERNEL);
		if (!req)
			return -ENOMEM;
		orr = req->body;
		orr->max_records = cpu_to_le32(u.max_records);
		orr->flags = cpu_to_le32(u.flags & AMDVI_ORACLE_CLEAR);
	}
	ret = amdvi_request(ad, req, true);
	if (ret == AMDVI_S_OK)
		ret = amdvi_req_status(req, sizeof(*resp));
	if (ret < 0)
		goto out;
	u.status = ret;
	u.nrecords = 0;
	memset(u.count, 0, sizeof(u.count));
	if (u.status == AMDVI_S_OK) {
		resp = req->rbody;
		for (i = 0; i < AMDVI_ORC_NR; i++)
			u.count[i] = le64_to_cpu(resp->count[i]);
		n = min(le32_to_cpu(resp->nrecords), u.max_records);
		/* only whole records the device actually wrote */
		n = min_t(u32, n, (req->used - sizeof(req->resp) -
				   sizeof(*resp)) / sizeof(*f));
		f = (struct amdvi_finding *)(resp + 1);
		for (i = 0; i < n; i++, f++) {
			struct amdvi_ioc_finding uf = {
				.rule = le32_to_cpu(f->rule),
				.devid = le16_to_cpu(f->devid),
				.source = le16_to_cpu(f->source),
				.pasid = le32_to_cpu(f->pasid),
				.write = le32_to_cpu(f->write),
				.va = le64_to_cpu(f->va),
				.cached_pa = le64_to_cpu(f->cached_pa),
				.current_pte = le64_to_cpu(f->current_pte),
				.seq = le64_to_cpu(f->seq),
				.epoch = le64_to_cpu(f->epoch),
			};

			if (copy_to_user(u64_to_user_ptr(u.records) +
					 i * sizeof(uf), &uf, sizeof(uf))) {
				ret = -EFAULT;
				goto out;
			}
		}
		u.nrecords = n;
	}
	ret = copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
out:
	amdvi_req_put(req);
	return ret;
}

static int amdvi_ioc_epoch(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_dev *ad = af->ad;
	struct amdvi_ioc_epoch u;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	switch (u.op) {
	case AMDVI_EPOCH_GET:
		break;
	case AMDVI_EPOCH_SET:
		WRITE_ONCE(*ad->epoch, u.value);
		break;
	case AMDVI_EPOCH_ADD:
		/* single writer convention; atomic for safety */
		atomic64_add(u.value, (atomic64_t *)ad->epoch);
		break;
	default:
		return -EINVAL;
	}
	u.value = READ_ONCE(*ad->epoch);
	return copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
}

static int amdvi_ioc_stats(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_dev *ad = af->ad;
	struct amdvi_ioc_stats *u;
	struct amdvi_stats *st;
	struct amdvi_req *req;
	__le64 *ctr;
	u32 i, n;
	int ret;

	u = kzalloc(sizeof(*u), GFP_KERNEL);
	req = amdvi_req_alloc(AMDVI_REQ_STATS, 0,
			      sizeof(*st) + AMDVI_STATS_MAX * sizeof(u64), 0,
			      false, GFP_KERNEL);
	if (!u || !req) {
		ret = -ENOMEM;
		goto out;
	}
	ret = amdvi_request(ad, req, true);
	if (ret == AMDVI_S_OK)
		ret = amdvi_req_status(req, sizeof(*st));
	if (ret < 0)
		goto out;
	u->status = ret;
	if (ret == AMDVI_S_OK) {
		st = req->rbody;
		n = min_t(u32, le32_to_cpu(st->count), AMDVI_STATS_MAX);
		n = min_t(u32, n, (req->used - sizeof(req->resp) -
				   sizeof(*st)) / sizeof(u64));
		ctr = (__le64 *)(st + 1);
		for (i = 0; i < n; i++)
			u->dev[i] = le64_to_cpu(ctr[i]);
		u->ndev = n;
	}
	for (i = 0; i < AMDVI_MC_NR; i++)
		u->mod[i] = atomic64_read(&ad->ctr[i]);
	u->nmod = AMDVI_MC_NR;
	ret = copy_to_user(arg, u, sizeof(*u)) ? -EFAULT : 0;
out:
	if (req)
		amdvi_req_put(req);
	kfree(u);
	return ret;
}

static int amdvi_ioc_info(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_dev *ad = af->ad;
	struct amdvi_ioc_info *u;
	unsigned int i;
	int ret;

	u = kzalloc(sizeof(*u), GFP_KERNEL);
	if (!u)
		return -ENOMEM;
	u->efr = ad->efr;
	u->num_endpoints = ad->num_ep;
	u->dev_flags = le32_to_cpu(ad->info.flags);
	u->iotlb_entries = le32_to_cpu(ad->info.iotlb_entries);
	u->pwc_entries = le32_to_cpu(ad->info.pwc_entries);
	u->dte_cache_entries = le32_to_cpu(ad->info.dte_cache_entries);
	u->atc_entries = le32_to_cpu(ad->info.atc_entries);
	u->max_streams = le32_to_cpu(ad->info.max_streams);
	u->pri_timeout_ms = le32_to_cpu(ad->info.pri_timeout_ms);
	for (i = 0; i < AMDVI_UAPI_MAX_EP; i++)
		u->endpoint_devid[i] = i < ad->num_ep ? ad->ep[i].devid :
							AMDVI_DEVID_NONE;
	u->max_pasid = ad->max_pasid;
	u->guest_levels = ad->five_level ? 5 : 4;
	u->features = (ad->sva_ok ? AMDVI_FEAT_SVA : 0) |
		      (ad->ppr_ok ? AMDVI_FEAT_PPR : 0) |
		      (ad->eph ? AMDVI_FEAT_EPH : 0) |
		      ((ad->efr & EFR_IA_SUP) ? AMDVI_FEAT_INV_ALL : 0) |
		      ((u->dev_flags & AMDVI_INFO_F_ORACLE) ?
		       AMDVI_FEAT_ORACLE : 0);
	u->notifier_mode = amdvi_notifier_mask;
	u->epoch_gpa = virt_to_phys(ad->epoch);
	memcpy(u->fault_rules, ad->info.fault_rules, sizeof(u->fault_rules));
	u->fault_rules[sizeof(u->fault_rules) - 1] = '\0';
	ret = copy_to_user(arg, u, sizeof(*u)) ? -EFAULT : 0;
	kfree(u);
	return ret;
}

/* ---- event log and test-only error paths ---- */

static int amdvi_ioc_events(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_ioc_events *u;
	int ret;

	u = kzalloc(sizeof(*u), GFP_KERNEL);
	if (!u)
		return -ENOMEM;
	amdvi_events_read(af->ad, u);
	ret = copy_to_user(arg, u, sizeof(*u)) ? -EFAULT : 0;
	kfree(u);
	return ret;
}

static int amdvi_ioc_raw_cmds(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_cmd cmds[AMDVI_RAW_CMDS_MAX];
	struct amdvi_ioc_raw_cmds u;
	unsigned int i;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (!u.count || u.count > AMDVI_RAW_CMDS_MAX || u.reserved)
		return -EINVAL;
	if (copy_from_user(cmds, u64_to_user_ptr(u.cmds),
			   u.count * sizeof(cmds[0])))
		return -EFAULT;
	for (i = 0; i < u.count; i++)
		if ((cmds[i].data[1] >> 28) == CMD_COMPL_WAIT)
			return -EINVAL;
	ret = amdvi_cmds_raw(af->ad, cmds, u.count, &u.executed,
			     &u.illegal_gpa);
	if (ret < 0)
		return ret;
	u.status = ret;
	return copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
}

static int amdvi_ioc_dte_ats(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_ioc_dte_ats u;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.endpoint >= af->ad->num_ep || u.ats > 1)
		return -EINVAL;
	mutex_lock(&af->lock);
	ret = amdvi_dte_set_ats(af->ad, u.endpoint, u.ats);
	if (u.ats && !ret)
		af->ats_off &= ~BIT(u.endpoint);
	else if (!u.ats)
		af->ats_off |= BIT(u.endpoint);	/* restored at close */
	mutex_unlock(&af->lock);
	return ret;
}

/* ---- bind / unbind ---- */

/* Bind @mm for this file; the bond is put at unbind or close. */
static int amdvi_file_bind(struct amdvi_file *af, struct mm_struct *mm,
			   u32 endpoint_mask, u32 *pasid)
{
	struct amdvi_file_bond *fb;
	struct amdvi_bond *bond;

	fb = kzalloc(sizeof(*fb), GFP_KERNEL);
	if (!fb)
		return -ENOMEM;
	bond = amdvi_bind(af->ad, mm, endpoint_mask);
	if (IS_ERR(bond)) {
		kfree(fb);
		return PTR_ERR(bond);
	}
	fb->bond = bond;
	mutex_lock(&af->lock);
	list_add_tail(&fb->node, &af->bonds);
	mutex_unlock(&af->lock);
	*pasid = amdvi_bond_pasid(bond);
	return 0;
}

static int amdvi_ioc_bind(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_ioc_bind u;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.flags)
		return -EINVAL;
	ret = amdvi_file_bind(af, current->mm, u.endpoint_mask, &u.pasid);
	if (ret)
		return ret;
	if (copy_to_user(arg, &u, sizeof(u)))
		return -EFAULT;		/* stays bound until close */
	return 0;
}

/*
 * The struct pid of a pidfd.  pidfd_pid() is not exported; a pidfd is a
 * pidfs file since 6.9 (the pid in i_private) and an anonymous-inode file
 * named "[pidfd]" before (the pid in private_data).
 */
static struct pid *amdvi_pidfd_pid(struct file *file)
{
	struct inode *inode = file_inode(file);

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	if (inode->i_sb->s_magic == PID_FS_MAGIC)
		return inode->i_private;
#else
	if (inode->i_sb->s_magic == ANON_INODE_FS_MAGIC &&
	    !strcmp(file->f_path.dentry->d_name.name, "[pidfd]"))
		return file->private_data;
#endif
	return ERR_PTR(-EBADF);
}

/*
 * The task of a pidfd, if the caller traces it.  ptrace_may_access() is not
 * exported; being the tracer means the kernel already made that check
 * (PTRACE_MODE_ATTACH_REALCREDS at PTRACE_ATTACH/SEIZE, the parent's
 * relation and the LSM hook at PTRACE_TRACEME).
 */
static struct task_struct *amdvi_traced_task(int pidfd)
{
	struct task_struct *task, *tracer;
	struct file *file;
	struct pid *pid;
	bool ok;

	file = fget(pidfd);
	if (!file)
		return ERR_PTR(-EBADF);
	pid = amdvi_pidfd_pid(file);
	task = IS_ERR(pid) ? ERR_CAST(pid) : get_pid_task(pid, PIDTYPE_PID);
	fput(file);
	if (IS_ERR(task))
		return task;
	if (!task)
		return ERR_PTR(-ESRCH);
	rcu_read_lock();
	tracer = ptrace_parent(task);
	ok = tracer == current;
	rcu_read_unlock();
	if (!ok) {
		put_task_struct(task);
		return ERR_PTR(-EPERM);
	}
	return task;
}

static int amdvi_ioc_bind_pid(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_ioc_bind_pid u;
	struct task_struct *task;
	struct mm_struct *mm;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.flags)
		return -EINVAL;
	task = amdvi_traced_task(u.pidfd);
	if (IS_ERR(task))
		return PTR_ERR(task);
	mm = get_task_mm(task);		/* NULL for kernel threads, exited tasks */
	put_task_struct(task);
	if (!mm)
		return -ESRCH;
	ret = amdvi_file_bind(af, mm, u.endpoint_mask, &u.pasid);
	/* the bond holds mm_count only: exit and exec still release the mm */
	mmput(mm);
	if (ret)
		return ret;
	if (copy_to_user(arg, &u, sizeof(u)))
		return -EFAULT;		/* stays bound until close */
	return 0;
}

static int amdvi_ioc_unbind(struct amdvi_file *af, void __user *arg)
{
	struct amdvi_file_bond *fb, *found = NULL;
	struct amdvi_ioc_unbind u;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	mutex_lock(&af->lock);
	list_for_each_entry(fb, &af->bonds, node) {
		if (amdvi_bond_pasid(fb->bond) == u.pasid) {
			list_del(&fb->node);
			found = fb;
			break;
		}
	}
	mutex_unlock(&af->lock);
	if (!found)
		return -ENOENT;
	amdvi_unbind(found->bond);
	kfree(found);
	return 0;
}

static long amdvi_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct amdvi_file *af = filp->private_data;
	void __user *uarg = (void __user *)arg;

	if (READ_ONCE(af->ad->dead))
		return -ENODEV;
	switch (cmd) {
	case AMDVI_IOC_INFO:
		return amdvi_ioc_info(af, uarg);
	case AMDVI_IOC_BIND:
		return amdvi_ioc_bind(af, uarg);
	case AMDVI_IOC_BIND_PID:
		return amdvi_ioc_bind_pid(af, uarg);
	case AMDVI_IOC_UNBIND:
		return amdvi_ioc_unbind(af, uarg);
	case AMDVI_IOC_ACCESS:
		return amdvi_ioc_access(af, uarg);
	case AMDVI_IOC_STREAM_START:
		return amdvi_ioc_stream_start(af, uarg);
	case AMDVI_IOC_STREAM_STOP:
		return amdvi_ioc_stream(af, uarg, true);
	case AMDVI_IOC_STREAM_STATUS:
		return amdvi_ioc_stream(af, uarg, false);
	case AMDVI_IOC_ORACLE_READ:
		return amdvi_ioc_oracle(af, uarg, false);
	case AMDVI_IOC_ORACLE_AUDIT:
		return amdvi_ioc_oracle(af, uarg, true);
	case AMDVI_IOC_EPOCH:
		return amdvi_ioc_epoch(af, uarg);
	case AMDVI_IOC_STATS:
		return amdvi_ioc_stats(af, uarg);
	case AMDVI_IOC_EVENTS:
		return amdvi_ioc_events(af, uarg);
	case AMDVI_IOC_RAW_CMDS:
		return amdvi_ioc_raw_cmds(af, uarg);
	case AMDVI_IOC_DTE_ATS:
		return amdvi_ioc_dte_ats(af, uarg);
	case AMDVI_IOC_PT_CREATE:
	case AMDVI_IOC_PT_PAGE:
	case AMDVI_IOC_PT_PTE:
	case AMDVI_IOC_PT_INV: {
		long ret;

		mutex_lock(&af->lock);
		ret = amdvi_pt_ioctl(af->ad, &af->pt, cmd, uarg);
		mutex_unlock(&af->lock);
		return ret;
	}
	default:
		return -ENOTTY;
	}
}

static int amdvi_release(struct inode *inode, struct file *filp)
{
	struct amdvi_file *af = filp->private_data;
	struct amdvi_dev *ad = af->ad;
	struct amdvi_file_bond *fb, *tmp;
	unsigned int i;

	amdvi_stream_stop_if(ad, amdvi_stream_of_file, af);
	amdvi_pt_destroy(af->pt);
	for (i = 0; i < ad->num_ep; i++)
		if ((af->ats_off & BIT(i)) && !READ_ONCE(ad->dead) &&
		    amdvi_dte_set_ats(ad, i, true))
			dev_err(ad->dev, "cannot set DTE.I of endpoint %u again\n",
				i);
	list_for_each_entry_safe(fb, tmp, &af->bonds, node) {
		list_del(&fb->node);
		amdvi_unbind(fb->bond);
		kfree(fb);
	}
	kfree(af);
	amdvi_dev_put(ad);
	return 0;
}

static const struct file_operations amdvi_fops = {
	.owner		= THIS_MODULE,
	.open		= amdvi_open,
	.release	= amdvi_release,
	.unlocked_ioctl	= amdvi_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

int amdvi_chrdev_register(struct amdvi_dev *ad)
{
	ad->misc.minor = MISC_DYNAMIC_MINOR;
	ad->misc.name = AMDVI_DEV_NAME;
	ad->misc.fops = &amdvi_fops;
	ad->misc.mode = 0600;
	return misc_register(&ad->misc);
}

void amdvi_chrdev_unregister(struct amdvi_dev *ad)
{
	misc_deregister(&ad->misc);
}
