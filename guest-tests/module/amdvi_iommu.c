// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: the device table and GCR3 tables of the driver, shaped like
 * drivers/iommu/amd/: DTE writes, the GCR3 levels, the initial
 * invalidation and teardown.  Bit layouts follow docs/amd-iommu.md
 * (§ numbers below point there).
 */
#include <linux/bitops.h>
#include <linux/delay.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <asm/pgtable.h>

#include "amdvi.h"

int amdvi_ep_index(struct amdvi_dev *ad, u16 devid)
{
	unsigned int i;

	for (i = 0; i < ad->num_ep; i++)
		if (ad->ep[i].devid == devid)
			return i;
	return -ENOENT;
}

/* ---- §2 GCR3 tables ---- */

/*
 * Set (cr3 != 0) or clear GCR3[@pasid] of endpoint @ep.  With GLX=1 the
 * root indexes PASID[15:9] and points to level-0 tables indexed by
 * PASID[8:0], allocated on demand.  Caller holds cfg_lock and flushes.
 */
int amdvi_gcr3_set(struct amdvi_dev *ad, unsigned int ep, u32 pasid, u64 cr3)
{
	struct amdvi_endpoint_state *es = &ad->ep[ep];
	u64 *table = es->gcr3_root;
	u64 val = cr3 ? ((cr3 & GCR3_ADDR_MASK) | GCR3_VALID) : 0;

	lockdep_assert_held(&ad->cfg_lock);
	if (pasid > ad->max_pasid)
		return -EINVAL;
	if (ad->glx == 1) {
		unsigned int hi = (pasid >> 9) & (GCR3_L1_ENTRIES - 1);

		if (!es->gcr3_l0[hi]) {
			if (!cr3)
				return 0;
			es->gcr3_l0[hi] = (u64 *)get_zeroed_page(GFP_KERNEL);
			if (!es->gcr3_l0[hi])
				return -ENOMEM;
			/* the table is zero before the walker can see it */
			smp_wmb();
			WRITE_ONCE(table[hi],
				   virt_to_phys(es->gcr3_l0[hi]) | GCR3_VALID);
		}
		table = es->gcr3_l0[hi];
	}
	WRITE_ONCE(table[pasid & (GCR3_ENTRIES - 1)], val);
	return 0;
}

/* ---- §1 device table ---- */

static void amdvi_write_dte(struct amdvi_dev *ad, unsigned int ep)
{
	struct amdvi_endpoint_state *es = &ad->ep[ep];
	u64 *dte = ad->dev_table + (size_t)es->devid * (DTE_ENTRY_SIZE / 8);
	u64 root = virt_to_phys(es->gcr3_root);
	u64 q0, q1, q2 = 0;

	q0 = DTE_Q0_V | DTE_Q0_TV | DTE_Q0_IR | DTE_Q0_IW;
	q1 = es->domid & DTE_Q1_DOMID_MASK;
	q1 |= DTE_Q1_I;				/* ATS allowed */
	if (ad->sva_ok) {
		/* Mode = 0: no host translation, output = GPA = SPA */
		q0 |= DTE_Q0_GV | ((u64)ad->glx << DTE_Q0_GLX_SHIFT);
		q0 |= ((root >> 12) & 0x7ULL) << DTE_Q0_GCR3_14_12_SHIFT;
		q1 |= ((root >> 15) & 0xffffULL) << DTE_Q1_GCR3_30_15_SHIFT;
		q1 |= ((root >> 31) & 0x1fffffULL) << DTE_Q1_GCR3_51_31_SHIFT;
		if (ad->five_level)
			q2 |= DTE_GPM_5LEVEL << DTE_Q2_GPM_SHIFT;
	}
	if (ad->eph)
		q0 |= DTE_Q0_PPR;

	WRITE_ONCE(dte[3], 0);
	WRITE_ONCE(dte[2], q2);
	WRITE_ONCE(dte[1], q1);
	/* the walker must not see V=1 with the old upper quadwords */
	smp_wmb();
	WRITE_ONCE(dte[0], q0);
	dev_dbg(ad->dev, "DTE[%04x] = %016llx %016llx %016llx %016llx\n",
		es->devid, q0, q1, q2, 0ULL);
}

/*
 * Test hook (AMDVI_IOC_DTE_ATS): clear or set DTE.I (ATS allowed) of
 * endpoint @ep, then INVALIDATE_DEVTAB_ENTRY + COMPLETION_WAIT.  Only the
 * I bit of quadword 1 changes, in one store: the DTE stays valid throughout.
 */
int amdvi_dte_set_ats(struct amdvi_dev *ad, unsigned int ep, bool ats)
{
	struct amdvi_cmd cmd;
	u64 *dte, q1;
	int ret;

	if (ep >= ad->num_ep)
		return -EINVAL;
	mutex_lock(&ad->cfg_lock);
	dte = ad->dev_table + (size_t)ad->ep[ep].devid * (DTE_ENTRY_SIZE / 8);
	q1 = READ_ONCE(dte[1]);
	q1 = ats ? q1 | DTE_Q1_I : q1 & ~DTE_Q1_I;
	WRITE_ONCE(dte[1], q1);
	amdvi_build_inv_dte(&cmd, ad->ep[ep].devid);
	ret = amdvi_cmds_sync(ad, &cmd, 1, false);
	mutex_unlock(&ad->cfg_lock);
	dev_dbg(ad->dev, "DTE[%04x].I = %d: %d\n", ad->ep[ep].devid, ats, ret);
	return ret;
}

static int amdvi_set_devtab(struct amdvi_dev *ad)
{
	struct amdvi_set_devtab *sd;
	struct amdvi_req *req;
	u64 pages = ad->dev_table_size >> PAGE_SHIFT;
	int status;

	req = amdvi_req_alloc(AMDVI_REQ_SET_DEVTAB, sizeof(*sd), 0, 0, false,
			      GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	sd = req->body;
	sd->dev_table_base = cpu_to_le64(virt_to_phys(ad->dev_table) |
					 (pages - 1));
	sd->control = cpu_to_le64(ad->control);
	status = amdvi_request(ad, req, false);
	amdvi_req_put(req);
	if (status) {
		dev_err(ad->dev, "SET_DEVTAB (control 0x%llx) failed: %d\n",
			ad->control, status);
		return status > 0 ? -EIO : status;
	}
	return 0;
}

int amdvi_send_epoch(struct amdvi_dev *ad)
{
	struct amdvi_oracle_epoch *oe;
	struct amdvi_req *req;
	int status;

	req = amdvi_req_alloc(AMDVI_REQ_ORACLE_EPOCH, sizeof(*oe), 0, 0, false,
			      GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	oe = req->body;
	oe->gpa = cpu_to_le64(virt_to_phys(ad->epoch));
	status = amdvi_request(ad, req, false);
	amdvi_req_put(req);
	if (status)
		dev_warn(ad->dev, "ORACLE_EPOCH failed: %d\n", status);
	return status > 0 ? -EIO : status;
}

/* §4 of docs/protocol.md: INFO is in ad->info; set up the IOMMU. */
int amdvi_iommu_init(struct amdvi_dev *ad)
{
	struct amdvi_cmd cmds[AMDVI_MAX_ENDPOINTS + 1];
	unsigned int i, n = 0, pasmax, gats;
	u32 max_devid = 0, flags;
	int ret;

	ad->efr = le64_to_cpu(ad->info.efr);
	flags = le32_to_cpu(ad->info.flags);
	ad->num_ep = min_t(u32, le32_to_cpu(ad->info.num_endpoints),
			   AMDVI_MAX_ENDPOINTS);
	for (i = 0; i < ad->num_ep; i++) {
		u16 devid = le16_to_cpu(ad->info.endpoint_devid[i]);

		if (devid == AMDVI_DEVID_NONE) {
			ad->num_ep = i;
			break;
		}
		ad->ep[i].devid = devid;
		ad->ep[i].domid = i + 1;
		max_devid = max_t(u32, max_devid, devid);
	}
	if (!ad->num_ep) {
		dev_err(ad->dev, "INFO reports no endpoints\n");
		return -ENODEV;
	}

	pasmax = (ad->efr >> EFR_PASMAX_SHIFT) & EFR_PASMAX_MASK;
	gats = (ad->efr >> EFR_GATS_SHIFT) & EFR_GATS_MASK;
	ad->glx = ((ad->efr >> EFR_GLX_SHIFT) & EFR_GLX_MASK) >= 1 ? 1 : 0;
	ad->max_pasid = min_t(u32, (1U << min(pasmax + 1, 16U)) - 1, 0xffff);
	if (!ad->glx)
		ad->max_pasid = min_t(u32, ad->max_pasid, GCR3_ENTRIES - 1);
	ad->five_level = pgtable_l5_enabled();
	ad->sva_ok = (ad->efr & EFR_GT_SUP) && ad->max_pasid > 0;
	if (ad->sva_ok && ad->five_level && gats < 1) {
		dev_err(ad->dev,
			"guest uses 5-level paging but EFR.GATS=%u (4-level walker): SVA disabled\n",
			gats);
		ad->sva_ok = false;
	}
	ad->ppr_ok = !!(ad->efr & EFR_PPR_SUP);
	ad->eph = ad->ppr_ok && (ad->efr & EFR_EPH_SUP);

	ad->control = CTRL_IOMMU_EN | CTRL_EVT_LOG_EN;
	if (ad->efr & EFR_GT_SUP)
		ad->control |= CTRL_GT_EN;
	if (ad->ppr_ok)
		ad->control |= CTRL_PPR_LOG_EN | CTRL_PPR_EN;
	if (ad->eph)
		ad->control |= CTRL_EPH_EN;

	/* COMPLETION_WAIT store slots and the oracle epoch word */
	ad->sem_page = (u64 *)get_zeroed_page(GFP_KERNEL);
	ad->epoch = (u64 *)get_zeroed_page(GFP_KERNEL);
	if (!ad->sem_page || !ad->epoch)
		return -ENOMEM;

	/* device table: 32 bytes per devid up to the highest endpoint */
	ad->dev_table_size = PAGE_ALIGN((size_t)(max_devid + 1) *
					DTE_ENTRY_SIZE);
	ad->dev_table = alloc_pages_exact(ad->dev_table_size,
					  GFP_KERNEL | __GFP_ZERO);
	if (!ad->dev_table)
		return -ENOMEM;
	for (i = 0; i < ad->num_ep; i++) {
		ad->ep[i].gcr3_root = (u64 *)get_zeroed_page(GFP_KERNEL);
		if (!ad->ep[i].gcr3_root)
			return -ENOMEM;
		amdvi_write_dte(ad, i);
	}

	ret = amdvi_set_devtab(ad);
	if (ret)
		return ret;

	for (i = 0; i < ad->num_ep; i++)
		amdvi_build_inv_dte(&cmds[n++], ad->ep[i].devid);
	if (ad->efr & EFR_IA_SUP)
		amdvi_build_inv_all(&cmds[n++]);
	ret = amdvi_cmds_sync(ad, cmds, n, false);
	if (ret) {
		dev_err(ad->dev, "initial invalidation failed: %d\n", ret);
		return ret;
	}

	amdvi_send_epoch(ad);

	dev_info(ad->dev,
		 "amdvi: %u endpoint(s), EFR 0x%016llx, max PASID %u, GLX %u, %u-level guest tables, SVA %s, PPR %s%s, oracle %s\n",
		 ad->num_ep, ad->efr, ad->max_pasid, ad->glx,
		 ad->five_level ? 5 : 4, ad->sva_ok ? "on" : "off",
		 ad->ppr_ok ? "on" : "off", ad->eph ? " (EPH)" : "",
		 (flags & AMDVI_INFO_F_ORACLE) ? "on" : "off");
	return 0;
}

void amdvi_iommu_free(struct amdvi_dev *ad)
{
	unsigned int i, j;

	for (i = 0; i < AMDVI_MAX_ENDPOINTS; i++) {
		for (j = 0; j < GCR3_L1_ENTRIES; j++)
			free_page((unsigned long)ad->ep[i].gcr3_l0[j]);
		free_page((unsigned long)ad->ep[i].gcr3_root);
	}
	if (ad->dev_table)
		free_pages_exact(ad->dev_table, ad->dev_table_size);
	free_page((unsigned long)ad->sem_page);
	free_page((unsigned long)ad->epoch);
}
