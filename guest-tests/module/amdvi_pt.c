// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: private page tables for ordering scripts.  A table here is an
 * x86-64 page table that no CPU uses, bound to a PASID on the endpoints
 * (GCR3[pasid] = its root).  User space (amdvi-script) writes its leaf
 * entries, the contents of its data pages and sends invalidations one at a
 * time, in the order a script gives, then asks the daemon's oracle.
 *
 * Nothing here is clever on purpose: every operation is one store or one
 * COMMANDS request.  A present leaf may only point to a data page of the
 * same table, and data pages are freed only with the table (after the PASID
 * is unbound and flushed), so the device never reaches other memory.
 */
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "amdvi.h"

#define PT_P		BIT_ULL(0)
#define PT_RW		BIT_ULL(1)
#define PT_US		BIT_ULL(2)
#define PT_ADDR_MASK	0x000ffffffffff000ULL

struct amdvi_pt {
	struct amdvi_dev *ad;
	u32 pasid;
	u32 ep_mask;
	unsigned int levels;
	u64 *root;
	unsigned int ntables;
	unsigned long tables[AMDVI_PT_MAX_TABLES];
	unsigned int npages;
	unsigned long pages[AMDVI_PT_MAX_PAGES];
};

static void amdvi_pt_free(struct amdvi_pt *pt)
{
	unsigned int i;

	for (i = 0; i < pt->npages; i++)
		free_page(pt->pages[i]);
	for (i = 0; i < pt->ntables; i++)
		free_page(pt->tables[i]);
	free_page((unsigned long)pt->root);
	kfree(pt);
}

/* Unbind the PASID, flush everything cached for it, free the memory. */
void amdvi_pt_destroy(struct amdvi_pt *pt)
{
	struct amdvi_dev *ad;
	unsigned int i;

	if (!pt)
		return;
	ad = pt->ad;
	mutex_lock(&ad->cfg_lock);
	for (i = 0; i < ad->num_ep; i++)
		if (pt->ep_mask & BIT(i))
			amdvi_gcr3_set(ad, i, pt->pasid, 0);
	mutex_unlock(&ad->cfg_lock);
	if (amdvi_flush_pasid(ad, pt->ep_mask, pt->pasid, 0, ULONG_MAX, false))
		dev_err(ad->dev,
			"flush of private table pasid %u failed: its pages are leaked\n",
			pt->pasid);
	else
		amdvi_pt_free(pt);
	amdvi_count(ad, AMDVI_MC_FLUSH_ALL);
	ida_free(&ad->pasid_ida, pt->pasid);
}

static int amdvi_pt_create(struct amdvi_dev *ad, struct amdvi_pt **ptp,
			   void __user *arg)
{
	struct amdvi_ioc_pt_create u;
	struct amdvi_pt *pt;
	unsigned int i;
	int ret;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.reserved || !u.pasid || u.pasid > ad->max_pasid)
		return -EINVAL;
	if (!ad->sva_ok)
		return -EOPNOTSUPP;
	if (*ptp)
		return -EBUSY;
	u.endpoint_mask &= GENMASK(ad->num_ep - 1, 0);
	if (!u.endpoint_mask)
		u.endpoint_mask = GENMASK(ad->num_ep - 1, 0);

	pt = kzalloc(sizeof(*pt), GFP_KERNEL);
	if (!pt)
		return -ENOMEM;
	pt->root = (u64 *)get_zeroed_page(GFP_KERNEL);
	if (!pt->root) {
		kfree(pt);
		return -ENOMEM;
	}
	ret = ida_alloc_range(&ad->pasid_ida, u.pasid, u.pasid, GFP_KERNEL);
	if (ret < 0) {
		amdvi_pt_free(pt);
		return ret == -ENOSPC ? -EBUSY : ret;
	}
	pt->ad = ad;
	pt->pasid = u.pasid;
	pt->ep_mask = u.endpoint_mask;
	pt->levels = ad->five_level ? 5 : 4;

	mutex_lock(&ad->cfg_lock);
	for (i = 0, ret = 0; i < ad->num_ep && !ret; i++)
		if (pt->ep_mask & BIT(i))
			ret = amdvi_gcr3_set(ad, i, pt->pasid,
					     virt_to_phys(pt->root));
	mutex_unlock(&ad->cfg_lock);
	/* nothing may be cached for the PASID from an earlier user */
	if (!ret)
		ret = amdvi_flush_pasid(ad, pt->ep_mask, pt->pasid, 0,
					ULONG_MAX, false);
	if (ret) {
		amdvi_pt_destroy(pt);
		return ret;
	}
	*ptp = pt;
	u.levels = pt->levels;
	u.endpoint_mask = pt->ep_mask;
	u.root_pa = virt_to_phys(pt->root);
	return copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
}

static int amdvi_pt_page(struct amdvi_pt *pt, void __user *arg)
{
	struct amdvi_ioc_pt_page u;
	void __user *ubuf;
	void *kaddr;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	ubuf = u64_to_user_ptr(u.buf);
	switch (u.op) {
	case AMDVI_PT_PAGE_ALLOC:
		if (pt->npages >= AMDVI_PT_MAX_PAGES)
			return -ENOSPC;
		pt->pages[pt->npages] = get_zeroed_page(GFP_KERNEL);
		if (!pt->pages[pt->npages])
			return -ENOMEM;
		u.index = pt->npages++;
		break;
	case AMDVI_PT_PAGE_READ:
	case AMDVI_PT_PAGE_WRITE:
		if (u.index >= pt->npages || u.offset > PAGE_SIZE ||
		    u.len > PAGE_SIZE - u.offset)
			return -EINVAL;
		kaddr = (void *)pt->pages[u.index] + u.offset;
		if (u.op == AMDVI_PT_PAGE_READ ?
		    copy_to_user(ubuf, kaddr, u.len) :
		    copy_from_user(kaddr, ubuf, u.len))
			return -EFAULT;
		break;
	default:
		return -EINVAL;
	}
	u.pa = virt_to_phys((void *)pt->pages[u.index]);
	return copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
}

/* The leaf entry of @va; tables are allocated when @create. */
static u64 *amdvi_pt_leaf(struct amdvi_pt *pt, u64 va, bool create)
{
	u64 *table = pt->root;
	unsigned int level, idx;
	unsigned long t;
	u64 e;

	for (level = pt->levels; level > 1; level--) {
		idx = (va >> (PAGE_SHIFT + 9 * (level - 1))) & 511;
		e = READ_ONCE(table[idx]);
		if (e & PT_P) {
			table = phys_to_virt(e & PT_ADDR_MASK);
			continue;
		}
		if (!create)
			return NULL;
		if (pt->ntables >= AMDVI_PT_MAX_TABLES)
			return ERR_PTR(-ENOSPC);
		t = get_zeroed_page(GFP_KERNEL);
		if (!t)
			return ERR_PTR(-ENOMEM);
		pt->tables[pt->ntables++] = t;
		/* the table is zero before the walker can see it */
		smp_wmb();
		WRITE_ONCE(table[idx], virt_to_phys((void *)t) | PT_P | PT_RW |
				       PT_US);
		table = (u64 *)t;
	}
	return &table[(va >> PAGE_SHIFT) & 511];
}

static bool amdvi_pt_owns(struct amdvi_pt *pt, u64 pa)
{
	unsigned int i;

	for (i = 0; i < pt->npages; i++)
		if (virt_to_phys((void *)pt->pages[i]) == pa)
			return true;
	return false;
}

static int amdvi_pt_pte(struct amdvi_pt *pt, void __user *arg)
{
	struct amdvi_ioc_pt_pte u;
	u64 *leaf;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.reserved || u.va & ~PAGE_MASK || u.va >= AMDVI_PT_VA_LIMIT)
		return -EINVAL;
	switch (u.op) {
	case AMDVI_PT_PTE_GET:
		leaf = amdvi_pt_leaf(pt, u.va, false);
		u.value = leaf ? READ_ONCE(*leaf) : 0;
		u.old = u.value;
		break;
	case AMDVI_PT_PTE_SET:
		if ((u.value & PT_P) &&
		    !amdvi_pt_owns(pt, u.value & PT_ADDR_MASK))
			return -EPERM;
		leaf = amdvi_pt_leaf(pt, u.va, true);
		if (IS_ERR(leaf))
			return PTR_ERR(leaf);
		/* one store: the walker sees the old entry or the new one */
		u.old = xchg(leaf, u.value);
		break;
	default:
		return -EINVAL;
	}
	return copy_to_user(arg, &u, sizeof(u)) ? -EFAULT : 0;
}

static int amdvi_pt_inv(struct amdvi_pt *pt, void __user *arg)
{
	struct amdvi_dev *ad = pt->ad;
	struct amdvi_ioc_pt_inv u;

	if (copy_from_user(&u, arg, sizeof(u)))
		return -EFAULT;
	if (u.flags & ~(AMDVI_INV_IOMMU | AMDVI_INV_IOTLB | AMDVI_INV_WAIT) ||
	    !u.flags || u.s > 1 || u.addr & ~PAGE_MASK ||
	    u.pasid > ad->max_pasid)
		return -EINVAL;
	u.endpoint_mask &= pt->ep_mask;
	if (!u.endpoint_mask)
		u.endpoint_mask = pt->ep_mask;
	return amdvi_inv_pages(ad, u.endpoint_mask, u.pasid, u.addr, u.s,
			       u.flags);
}

/* The PT_* ioctls of one open file; the caller serialises them. */
long amdvi_pt_ioctl(struct amdvi_dev *ad, struct amdvi_pt **ptp,
		    unsigned int cmd, void __user *arg)
{
	if (cmd == AMDVI_IOC_PT_CREATE)
		return amdvi_pt_create(ad, ptp, arg);
	if (!*ptp)
		return -ENOENT;
	switch (cmd) {
	case AMDVI_IOC_PT_PAGE:
		return amdvi_pt_page(*ptp, arg);
	case AMDVI_IOC_PT_PTE:
		return amdvi_pt_pte(*ptp, arg);
	case AMDVI_IOC_PT_INV:
		return amdvi_pt_inv(*ptp, arg);
	default:
		return -ENOTTY;
	}
}
