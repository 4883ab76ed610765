// SPDX-License-Identifier: GPL-2.0
/*
 * Freed-frame check at the kernel's secondary-TLB flush.
 *
 * The kernel may free a page only after every TLB that could still map it
 * has been flushed: mmu_gather flushes, then frees; COW, KSM and migration
 * drop the old page after ptep_clear_flush().  The secondary-TLB hook runs
 * inside that flush, so at that moment every page a device may still have
 * cached for the range must be alive.  Before the driver invalidates, this
 * asks the device (ORACLE_AUDIT) which of its cached translations for the
 * range no longer match the page tables and looks at the frames they give:
 * a frame whose folio has no reference left went back to the allocator
 * while the device could still read or write it (a DMA use-after-free).
 *
 * The check needs no knowledge of the operation and no exemption: it holds
 * for every kernel.  It costs one request round trip per flush; the
 * freed_check parameter turns it off.
 */

#include <linux/delay.h>
#include <linux/mm.h>
#include <linux/module.h>

#include "amdvi.h"

static bool freed_check = true;
module_param(freed_check, bool, 0644);
MODULE_PARM_DESC(freed_check,
		 "At each secondary-TLB flush, check that no frame the device still caches has been freed (default on)");

#define AMDVI_FREED_POLL_LOOPS	2000000		/* udelay(1) steps */

static void amdvi_freed_frame(struct amdvi_dev *ad,
			      const struct amdvi_finding *f)
{
	unsigned long pfn = le64_to_cpu(f->cached_pa) >> PAGE_SHIFT;
	struct page *page;

	if (!pfn_valid(pfn))
		return;
	page = pfn_to_page(pfn);
	if (PageReserved(page) || folio_ref_count(page_folio(page)))
		return;
	amdvi_count(ad, AMDVI_MC_FREED_CACHED);
	dev_err_ratelimited(ad->dev,
			    "pasid %u va %#llx: %s caches frame %#lx, which the kernel freed before its secondary-TLB flush\n",
			    le32_to_cpu(f->pasid), le64_to_cpu(f->va),
			    le16_to_cpu(f->source) == 1 ? "an ATC" : "the IOTLB",
			    pfn);
}

/*
 * May run under the page-table lock: allocate atomically and poll for the
 * answer instead of sleeping.
 */
void amdvi_freed_scan(struct amdvi_dev *ad, u32 pasid, unsigned long start,
		      unsigned long end)
{
	const size_t rlen = sizeof(struct amdvi_oracle_resp) +
		AMDVI_ORACLE_MAX_RECORDS * sizeof(struct amdvi_finding);
	struct amdvi_oracle_audit *oa;
	struct amdvi_oracle_resp *resp;
	struct amdvi_finding *f;
	struct amdvi_req *req;
	u32 i, n;

	if (!READ_ONCE(freed_check) || end <= start)
		return;
	req = amdvi_req_alloc(AMDVI_REQ_ORACLE_AUDIT, sizeof(*oa), rlen, 0,
			      false, GFP_ATOMIC);
	if (!req)
		return;
	oa = req->body;
	oa->pasid = cpu_to_le32(pasid);
	oa->max_records = cpu_to_le32(AMDVI_ORACLE_MAX_RECORDS);
	oa->va = cpu_to_le64(start);
	oa->len = cpu_to_le64(end - start);
	amdvi_count(ad, AMDVI_MC_FREED_CHECKS);
	if (amdvi_req_submit(ad, req, GFP_ATOMIC))
		goto out;
	if (amdvi_req_poll(ad, req, AMDVI_FREED_POLL_LOOPS) ||
	    amdvi_req_status(req, sizeof(*resp)) != AMDVI_S_OK)
		goto out;
	resp = req->rbody;
	n = min_t(u32, le32_to_cpu(resp->nrecords),
		  (req->used - sizeof(req->resp) - sizeof(*resp)) / sizeof(*f));
	n = min_t(u32, n, AMDVI_ORACLE_MAX_RECORDS);
	f = (struct amdvi_finding *)(resp + 1);
	for (i = 0; i < n; i++) {
		u16 source = le16_to_cpu(f[i].source);

		/* walk-cache records hold table addresses, not data frames */
		if (le32_to_cpu(f[i].rule) == 5 && (source == 1 || source == 2))
			amdvi_freed_frame(ad, &f[i]);
	}
out:
	amdvi_req_put(req);
}
