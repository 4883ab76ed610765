// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: shared virtual addressing.  A bond ties an mm to a PASID:
 * GCR3[pasid] = __pa(mm->pgd) on the bound endpoints, an mmu_notifier
 * flushes the IOMMU and the endpoints' ATCs when the CPU page tables change,
 * and page requests (PPR log) are served with handle_mm_fault() on a
 * workqueue, as the old drivers/iommu/amd/iommu_v2.c did.
 *
 * Which notifier callbacks flush is chosen by the notifier_mode parameter
 * (amdvi_notifier_mask).  All callbacks are counted in any mode.  Since 6.6
 * a subscription may carry either arch_invalidate_secondary_tlbs or
 * invalidate_range_start/end, so a bond registers two subscriptions there.
 */
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "amdvi.h"

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
#define AMDVI_SPLIT_NOTIFIERS	1
#endif

enum {
	AMDVI_BOND_RELEASED,	/* PASID torn down (release or unbind) */
};

struct amdvi_bond {
	struct amdvi_dev *ad;
	struct mm_struct *mm;
	u32 pasid;
	u32 ep_mask;
	refcount_t ref;
	unsigned long flags;
	struct mmu_notifier mn;		/* secondary-TLB hook (+ start/end < 6.6) */
#ifdef AMDVI_SPLIT_NOTIFIERS
	struct mmu_notifier mn_range;	/* invalidate_range_start/end */
#endif
};

u32 amdvi_bond_pasid(struct amdvi_bond *bond)
{
	return bond->pasid;
}

static void amdvi_bond_put(struct amdvi_bond *bond)
{
	struct amdvi_dev *ad = bond->ad;

	if (!refcount_dec_and_test(&bond->ref))
		return;
	ida_free(&ad->pasid_ida, bond->pasid);
	atomic64_dec(&ad->ctr[AMDVI_MC_BONDS_ACTIVE]);
	mmdrop(bond->mm);
	kfree(bond);
}

static struct amdvi_bond *amdvi_bond_lookup(struct amdvi_dev *ad, u32 pasid)
{
	struct amdvi_bond *bond;

	xa_lock(&ad->bonds);
	bond = xa_load(&ad->bonds, pasid);
	if (bond && !refcount_inc_not_zero(&bond->ref))
		bond = NULL;
	xa_unlock(&ad->bonds);
	return bond;
}

/* ---- invalidation ---- */

static void amdvi_bond_flush(struct amdvi_bond *bond, unsigned long start,
			     unsigned long end)
{
	struct amdvi_dev *ad = bond->ad;
	int ret;

	if (test_bit(AMDVI_BOND_RELEASED, &bond->flags))
		return;
	/* may run under the page-table lock: never sleep here */
	ret = amdvi_flush_pasid(ad, bond->ep_mask, bond->pasid, start, end,
				true);
	amdvi_count(ad, AMDVI_MC_FLUSH_RANGE);
	if (ret)
		dev_err_ratelimited(ad->dev,
				    "flush of pasid %u [%#lx, %#lx) failed: %d\n",
				    bond->pasid, start, end, ret);
}

/* Drop the partial page-request groups of @pasid, wait for the workers. */
static void amdvi_ppr_drain(struct amdvi_dev *ad, u32 pasid);

/*
 * Tear the PASID down before the mm's page tables go: clear GCR3, flush
 * everything cached for the PASID, stop the device's streams on it, drain
 * page requests.  Runs once, from ->release or from unbind.
 */
static void amdvi_bond_teardown(struct amdvi_bond *bond)
{
	struct amdvi_dev *ad = bond->ad;
	unsigned int i;

	if (test_and_set_bit(AMDVI_BOND_RELEASED, &bond->flags))
		return;
	mutex_lock(&ad->cfg_lock);
	for (i = 0; i < ad->num_ep; i++)
		if (bond->ep_mask & BIT(i))
			amdvi_gcr3_set(ad, i, bond->pasid, 0);
	mutex_unlock(&ad->cfg_lock);
	amdvi_flush_pasid(ad, bond->ep_mask, bond->pasid, 0, ULONG_MAX, false);
	amdvi_count(ad, AMDVI_MC_FLUSH_ALL);
	amdvi_stream_stop_pasid(ad, bond->pasid);
	amdvi_ppr_drain(ad, bond->pasid);
}

/* ---- mmu_notifier ---- */

static void amdvi_secondary(struct amdvi_bond *bond, unsigned long start,
			    unsigned long end)
{
	amdvi_count(bond->ad, AMDVI_MC_NOTIF_SECONDARY);
	if (!test_bit(AMDVI_BOND_RELEASED, &bond->flags))
		amdvi_freed_scan(bond->ad, bond->pasid, start, end);
	if (amdvi_notifier_mask & AMDVI_NOTIFIER_SECONDARY)
		amdvi_bond_flush(bond, start, end);
}

#ifdef AMDVI_SPLIT_NOTIFIERS
static void amdvi_mn_arch_invalidate_secondary_tlbs(struct mmu_notifier *mn,
						    struct mm_struct *mm,
						    unsigned long start,
						    unsigned long end)
{
	amdvi_secondary(container_of(mn, struct amdvi_bond, mn), start, end);
}

static struct amdvi_bond *amdvi_range_bond(struct mmu_notifier *mn)
{
	return container_of(mn, struct amdvi_bond, mn_range);
}
#else
static void amdvi_mn_invalidate_range(struct mmu_notifier *mn,
				      struct mm_struct *mm,
				      unsigned long start, unsigned long end)
{
	amdvi_secondary(container_of(mn, struct amdvi_bond, mn), start, end);
}

static struct amdvi_bond *amdvi_range_bond(struct mmu_notifier *mn)
{
	return container_of(mn, struct amdvi_bond, mn);
}
#endif

static int amdvi_mn_invalidate_range_start(struct mmu_notifier *mn,
					   const struct mmu_notifier_range *range)
{
	struct amdvi_bond *bond = amdvi_range_bond(mn);

	amdvi_count(bond->ad, AMDVI_MC_NOTIF_START);
	if (amdvi_notifier_mask & AMDVI_NOTIFIER_START)
		amdvi_bond_flush(bond, range->start, range->end);
	return 0;
}

static void amdvi_mn_invalidate_range_end(struct mmu_notifier *mn,
					  const struct mmu_notifier_range *range)
{
	struct amdvi_bond *bond = amdvi_range_bond(mn);

	amdvi_count(bond->ad, AMDVI_MC_NOTIF_END);
	if (amdvi_notifier_mask & AMDVI_NOTIFIER_END)
		amdvi_bond_flush(bond, range->start, range->end);
}

static void amdvi_mn_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	struct amdvi_bond *bond = container_of(mn, struct amdvi_bond, mn);

	amdvi_count(bond->ad, AMDVI_MC_NOTIF_RELEASE);
	amdvi_bond_teardown(bond);
}

#ifdef AMDVI_SPLIT_NOTIFIERS
static void amdvi_mn_range_release(struct mmu_notifier *mn,
				   struct mm_struct *mm)
{
	struct amdvi_bond *bond = amdvi_range_bond(mn);

	amdvi_count(bond->ad, AMDVI_MC_NOTIF_RELEASE);
	amdvi_bond_teardown(bond);
}

static const struct mmu_notifier_ops amdvi_mn_ops = {
	.release			= amdvi_mn_release,
	.arch_invalidate_secondary_tlbs	= amdvi_mn_arch_invalidate_secondary_tlbs,
};

static const struct mmu_notifier_ops amdvi_mn_range_ops = {
	.release			= amdvi_mn_range_release,
	.invalidate_range_start		= amdvi_mn_invalidate_range_start,
	.invalidate_range_end		= amdvi_mn_invalidate_range_end,
};
#else
static const struct mmu_notifier_ops amdvi_mn_ops = {
	.release			= amdvi_mn_release,
	.invalidate_range		= amdvi_mn_invalidate_range,
	.invalidate_range_start		= amdvi_mn_invalidate_range_start,
	.invalidate_range_end		= amdvi_mn_invalidate_range_end,
};
#endif

/* ---- bind / unbind ---- */

struct amdvi_bond *amdvi_bind(struct amdvi_dev *ad, struct mm_struct *mm,
			      u32 ep_mask)
{
	struct amdvi_bond *bond;
	unsigned int i;
	int ret;

	if (!ad->sva_ok)
		return ERR_PTR(-EOPNOTSUPP);
	if (!mm)
		return ERR_PTR(-EINVAL);
	ep_mask &= GENMASK(ad->num_ep - 1, 0);
	if (!ep_mask)
		ep_mask = GENMASK(ad->num_ep - 1, 0);

	bond = kzalloc(sizeof(*bond), GFP_KERNEL);
	if (!bond)
		return ERR_PTR(-ENOMEM);
	ret = ida_alloc_range(&ad->pasid_ida, 1, ad->max_pasid, GFP_KERNEL);
	if (ret < 0) {
		kfree(bond);
		return ERR_PTR(ret);
	}
	bond->pasid = ret;
	bond->ad = ad;
	/*
	 * mm_count, not mm_users: the struct stays valid for unbind and the
	 * PPR workers until the last bond reference, while exit and exec still
	 * tear the address space down (->release).  The mm may be another
	 * process's (BIND_PID).
	 */
	mmgrab(mm);
	bond->mm = mm;
	bond->ep_mask = ep_mask;
	refcount_set(&bond->ref, 1);
	atomic64_inc(&ad->ctr[AMDVI_MC_BONDS_ACTIVE]);

	/* notifiers first, so no invalidation after the GCR3 write is missed */
	bond->mn.ops = &amdvi_mn_ops;
	ret = mmu_notifier_register(&bond->mn, mm);
	if (ret)
		goto err_put;
#ifdef AMDVI_SPLIT_NOTIFIERS
	bond->mn_range.ops = &amdvi_mn_range_ops;
	ret = mmu_notifier_register(&bond->mn_range, mm);
	if (ret) {
		set_bit(AMDVI_BOND_RELEASED, &bond->flags);
		mmu_notifier_unregister(&bond->mn, mm);
		goto err_put;
	}
#endif

	mutex_lock(&ad->cfg_lock);
	for (i = 0; i < ad->num_ep && !ret; i++)
		if (ep_mask & BIT(i))
			ret = amdvi_gcr3_set(ad, i, bond->pasid,
					     virt_to_phys(mm->pgd));
	mutex_unlock(&ad->cfg_lock);
	if (!ret)
		ret = xa_err(xa_store(&ad->bonds, bond->pasid, bond,
				      GFP_KERNEL));
	if (!ret) {
		ret = amdvi_flush_pasid(ad, ep_mask, bond->pasid, 0, ULONG_MAX,
					false);
		amdvi_count(ad, AMDVI_MC_FLUSH_ALL);
	}
	if (ret) {
		amdvi_unbind(bond);
		return ERR_PTR(ret);
	}
	amdvi_count(ad, AMDVI_MC_BINDS);
	return bond;

err_put:
	amdvi_bond_put(bond);
	return ERR_PTR(ret);
}

void amdvi_unbind(struct amdvi_bond *bond)
{
	struct amdvi_dev *ad = bond->ad;

	xa_erase(&ad->bonds, bond->pasid);
	/* calls ->release (teardown) unless the mm already went away */
	mmu_notifier_unregister(&bond->mn, bond->mm);
#ifdef AMDVI_SPLIT_NOTIFIERS
	mmu_notifier_unregister(&bond->mn_range, bond->mm);
#endif
	amdvi_bond_teardown(bond);
	amdvi_count(ad, AMDVI_MC_UNBINDS);
	amdvi_bond_put(bond);
}

/* ---- page requests (PPR log, §6) ---- */

#define AMDVI_PRG_MAX_PAGES	16

struct amdvi_prg {
	struct list_head node;
	struct work_struct work;
	struct amdvi_dev *ad;
	u16 devid;
	u16 prgi;
	u32 pasid;
	bool bad;
	unsigned int npages;
	u64 addr[AMDVI_PRG_MAX_PAGES];
	u16 flags[AMDVI_PRG_MAX_PAGES];
};

/*
 * Make one page present for the device, as the CPU would fault it in.
 * Retry semantics follow fixup_user_fault(): on VM_FAULT_RETRY the lock was
 * dropped; take it again and retry with FAULT_FLAG_TRIED.
 */
static int amdvi_fault_page(struct mm_struct *mm, u64 addr, u16 flags)
{
	unsigned int fflags = FAULT_FLAG_REMOTE | FAULT_FLAG_ALLOW_RETRY |
			      FAULT_FLAG_KILLABLE;
	unsigned long need = 0;
	struct vm_area_struct *vma;
	unsigned int tries = 0;
	vm_fault_t ret;

	if (flags & PPR_FLAG_WRITE) {
		fflags |= FAULT_FLAG_WRITE;
		need |= VM_WRITE;
	}
	if (flags & PPR_FLAG_READ)
		need |= VM_READ;
	if (flags & PPR_FLAG_EXEC) {
		fflags |= FAULT_FLAG_INSTRUCTION;
		need |= VM_EXEC;
	}
retry:
	mmap_read_lock(mm);
	vma = vma_lookup(mm, addr);
	if (!vma || (vma->vm_flags & need) != need ||
	    (vma->vm_flags & (VM_IO | VM_PFNMAP))) {
		mmap_read_unlock(mm);
		return -EFAULT;
	}
	ret = handle_mm_fault(vma, addr, fflags, NULL);
	if (ret & VM_FAULT_COMPLETED)
		return 0;		/* lock already released */
	if (ret & VM_FAULT_RETRY) {	/* lock already released */
		if (++tries > 8) {
			pr_warn_ratelimited("amdvi: page request at %#llx flags %#x: still VM_FAULT_RETRY after %u tries\n",
					    addr, flags, tries);
			return -EAGAIN;
		}
		fflags |= FAULT_FLAG_TRIED;
		goto retry;
	}
	mmap_read_unlock(mm);
	if (ret & VM_FAULT_ERROR) {
		pr_warn_ratelimited("amdvi: page request at %#llx flags %#x: handle_mm_fault returned %#x\n",
				    addr, flags, (unsigned int)ret);
		return -EFAULT;
	}
	return 0;
}

static void amdvi_prg_work(struct work_struct *work)
{
	struct amdvi_prg *grp = container_of(work, struct amdvi_prg, work);
	struct amdvi_dev *ad = grp->ad;
	u32 code = PPR_RESP_INVALID;
	struct amdvi_bond *bond;
	int ep = amdvi_ep_index(ad, grp->devid);
	unsigned int i;

	bond = amdvi_bond_lookup(ad, grp->pasid);
	if (bond && !grp->bad && ep >= 0 && (bond->ep_mask & BIT(ep)) &&
	    !test_bit(AMDVI_BOND_RELEASED, &bond->flags) &&
	    mmget_not_zero(bond->mm)) {
		code = PPR_RESP_SUCCESS;
		for (i = 0; i < grp->npages; i++) {
			if (amdvi_fault_page(bond->mm, grp->addr[i],
					     grp->flags[i])) {
				code = PPR_RESP_INVALID;
				break;
			}
		}
		/* never run exit_mmap (and our ->release) from this worker */
		mmput_async(bond->mm);
	}
	amdvi_complete_ppr(ad, grp->devid, grp->pasid, grp->prgi, code);
	amdvi_count(ad, AMDVI_MC_PPR_GROUPS);
	amdvi_count(ad, code == PPR_RESP_SUCCESS ? AMDVI_MC_PPR_SUCCESS :
						   AMDVI_MC_PPR_INVALID);
	if (bond)
		amdvi_bond_put(bond);
	kfree(grp);
}

/*
 * One PPR log entry.  Entries of a page request group are collected until
 * the one with the "last" tag bit (0x200); the group is then served on the
 * workqueue and answered with a single COMPLETE_PPR_REQUEST.  A stop marker
 * (last, neither read nor write) gets no answer.
 */
void amdvi_ppr_request(struct amdvi_dev *ad, u16 devid, u32 pasid, u16 tag,
		       u16 flags, u64 addr)
{
	bool last = tag & PPR_TAG_LAST;
	u16 prgi = tag & PPR_TAG_PRGI_MASK;
	struct amdvi_prg *grp = NULL, *g, *fresh;

	if (last && !(flags & (PPR_FLAG_READ | PPR_FLAG_WRITE))) {
		amdvi_count(ad, AMDVI_MC_PPR_STOP_MARKERS);
		return;
	}
	fresh = kzalloc(sizeof(*fresh), GFP_KERNEL);

	spin_lock(&ad->ppr_lock);
	list_for_each_entry(g, &ad->ppr_partial, node) {
		if (g->devid == devid && g->pasid == pasid && g->prgi == prgi) {
			grp = g;
			break;
		}
	}
	if (grp) {
		if (last)
			list_del(&grp->node);
	} else if (fresh) {
		grp = fresh;
		fresh = NULL;
		grp->ad = ad;
		grp->devid = devid;
		grp->pasid = pasid;
		grp->prgi = prgi;
		INIT_WORK(&grp->work, amdvi_prg_work);
		if (!last)
			list_add_tail(&grp->node, &ad->ppr_partial);
	}
	if (grp) {
		if (!(flags & PPR_FLAG_GN) || (flags & PPR_FLAG_RZ) || !pasid)
			grp->bad = true;
		if (grp->npages < AMDVI_PRG_MAX_PAGES) {
			grp->addr[grp->npages] = addr;
			grp->flags[grp->npages] = flags;
			grp->npages++;
		} else {
			grp->bad = true;
		}
	}
	spin_unlock(&ad->ppr_lock);
	kfree(fresh);

	if (!grp) {		/* out of memory */
		if (last)
			amdvi_complete_ppr(ad, devid, pasid, prgi,
					   PPR_RESP_INVALID);
		return;
	}
	if (last)
		queue_work(ad->ppr_wq, &grp->work);
}

static void amdvi_ppr_drain(struct amdvi_dev *ad, u32 pasid)
{
	struct amdvi_prg *g, *tmp;
	LIST_HEAD(dead);

	spin_lock(&ad->ppr_lock);
	list_for_each_entry_safe(g, tmp, &ad->ppr_partial, node)
		if (g->pasid == pasid)
			list_move(&g->node, &dead);
	spin_unlock(&ad->ppr_lock);
	list_for_each_entry_safe(g, tmp, &dead, node)
		kfree(g);
	flush_workqueue(ad->ppr_wq);
}
