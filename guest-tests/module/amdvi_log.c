// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: the event log decoder and the PPR log front end (entries in
 * the AMD formats of docs/amd-iommu.md §5 and §6).
 */
#include <linux/device.h>
#include <linux/mm.h>
#include <linux/pci.h>

#include "amdvi.h"

/* ---- §5 event log ---- */

static const char * const amdvi_event_names[16] = {
	[EVENT_ILL_DEV]		= "ILLEGAL_DEV_TABLE_ENTRY",
	[EVENT_IO_FAULT]	= "IO_PAGE_FAULT",
	[EVENT_DEV_TAB_ERR]	= "DEV_TAB_HARDWARE_ERROR",
	[EVENT_PAGE_TAB_ERR]	= "PAGE_TAB_HARDWARE_ERROR",
	[EVENT_ILL_CMD]		= "ILLEGAL_COMMAND_ERROR",
	[EVENT_CMD_HARD_ERR]	= "COMMAND_HARDWARE_ERROR",
	[EVENT_IOTLB_INV_TO]	= "IOTLB_INV_TIMEOUT",
	[EVENT_INV_DEV_REQ]	= "INVALID_DEVICE_REQUEST",
	[EVENT_INV_PPR_REQ]	= "INVALID_PPR_REQUEST",
	[0xa]			= "EVENT_COUNTER_ZERO",
	[0xd]			= "RMP_PAGE_FAULT",
	[0xe]			= "RMP_HW_ERROR",
};

static void amdvi_entry_words(const u8 *entry, u32 dw[4])
{
	const __le32 *le = (const __le32 *)entry;
	int i;

	for (i = 0; i < 4; i++)
		dw[i] = le32_to_cpu(le[i]);
}

void amdvi_handle_event(struct amdvi_dev *ad, const u8 *entry, u32 dropped)
{
	struct device *dev = ad->dev;
	u32 dw[4], type, devid, pasid, flags;
	u8 bus, slot, fn;
	u64 addr;

	amdvi_entry_words(entry, dw);
	type = EVENT_TYPE(dw[1]);
	devid = EVENT_DEVID(dw[0]);
	pasid = (dw[0] & 0xf0000) | (dw[1] & 0xffff);
	flags = EVENT_FLAGS(dw[1]);
	addr = ((u64)dw[3] << 32) | dw[2];
	bus = PCI_BUS_NUM(devid);
	slot = PCI_SLOT(devid & 0xff);
	fn = PCI_FUNC(devid & 0xff);

	spin_lock(&ad->ev_last_lock);
	memcpy(ad->ev_last[type], dw, sizeof(ad->ev_last[type]));
	amdvi_count(ad, AMDVI_MC_EVENTS);
	amdvi_count(ad, AMDVI_MC_EVENT_TYPE0 + type);
	if (dropped)
		amdvi_count_add(ad, AMDVI_MC_EVENTS_DROPPED, dropped);
	spin_unlock(&ad->ev_last_lock);
	if (dropped) {
		dev_warn_ratelimited(dev, "Event log overflow: %u event(s) dropped\n",
				     dropped);
	}

	switch (type) {
	case EVENT_IO_FAULT:
		if (flags & EVENT_FLAG_GN)
			dev_warn_ratelimited(dev,
					     "Event logged [IO_PAGE_FAULT device=%02x:%02x.%x pasid=0x%05x address=0x%llx flags=0x%04x]\n",
					     bus, slot, fn, pasid, addr, flags);
		else
			dev_warn_ratelimited(dev,
					     "Event logged [IO_PAGE_FAULT device=%02x:%02x.%x domain=0x%04x address=0x%llx flags=0x%04x]\n",
					     bus, slot, fn, pasid & 0xffff, addr,
					     flags);
		break;
	case EVENT_ILL_DEV:
	case EVENT_PAGE_TAB_ERR:
	case EVENT_INV_DEV_REQ:
		dev_warn_ratelimited(dev,
				     "Event logged [%s device=%02x:%02x.%x pasid=0x%05x address=0x%llx flags=0x%04x]\n",
				     amdvi_event_names[type], bus, slot, fn,
				     pasid, addr, flags);
		break;
	case EVENT_DEV_TAB_ERR:
	case EVENT_CMD_HARD_ERR:
		dev_warn_ratelimited(dev,
				     "Event logged [%s device=%02x:%02x.%x address=0x%llx flags=0x%04x]\n",
				     amdvi_event_names[type], bus, slot, fn,
				     addr, flags);
		break;
	case EVENT_ILL_CMD:
		dev_warn_ratelimited(dev,
				     "Event logged [ILLEGAL_COMMAND_ERROR address=0x%llx]\n",
				     addr);
		break;
	case EVENT_IOTLB_INV_TO:
		dev_warn_ratelimited(dev,
				     "Event logged [IOTLB_INV_TIMEOUT device=%02x:%02x.%x address=0x%llx]\n",
				     bus, slot, fn, addr);
		break;
	case EVENT_INV_PPR_REQ:
		/* laid out like a PPR log entry (§6.1) */
		pasid = (dw[0] >> 16) | (((dw[1] >> 10) & 0xf) << 16);
		dev_warn_ratelimited(dev,
				     "Event logged [INVALID_PPR_REQUEST device=%02x:%02x.%x pasid=0x%05x address=0x%llx flags=0x%04x tag=0x%03x]\n",
				     bus, slot, fn, pasid, addr, flags,
				     dw[1] & 0x3ff);
		break;
	default:
		dev_warn_ratelimited(dev,
				     "Event logged [%s event[0]=0x%08x event[1]=0x%08x event[2]=0x%08x event[3]=0x%08x]\n",
				     amdvi_event_names[type] ?: "UNKNOWN",
				     dw[0], dw[1], dw[2], dw[3]);
	}
}

void amdvi_events_read(struct amdvi_dev *ad, struct amdvi_ioc_events *u)
{
	unsigned int i;

	BUILD_BUG_ON(AMDVI_MC_EVENT_TYPE0 + AMDVI_EVENT_CODES > AMDVI_MC_NR);
	spin_lock(&ad->ev_last_lock);
	for (i = 0; i < AMDVI_EVENT_CODES; i++)
		u->count[i] = atomic64_read(&ad->ctr[AMDVI_MC_EVENT_TYPE0 + i]);
	memcpy(u->last, ad->ev_last, sizeof(u->last));
	u->dropped = atomic64_read(&ad->ctr[AMDVI_MC_EVENTS_DROPPED]);
	spin_unlock(&ad->ev_last_lock);
}

/* ---- §6 PPR log ---- */

void amdvi_handle_ppr(struct amdvi_dev *ad, const u8 *entry, u32 dropped)
{
	u32 dw[4], type, pasid;
	u16 devid, tag, flags;
	u64 addr;

	amdvi_entry_words(entry, dw);
	devid = dw[0] & 0xffff;
	pasid = (dw[0] >> 16) | (((dw[1] >> 10) & 0xf) << 16);
	tag = dw[1] & 0x3ff;
	flags = (dw[1] >> 16) & 0xfff;
	type = dw[1] >> 28;
	addr = (((u64)dw[3] << 32) | dw[2]) & PAGE_MASK;

	amdvi_count(ad, AMDVI_MC_PPR_ENTRIES);
	if (dropped) {
		amdvi_count_add(ad, AMDVI_MC_PPR_DROPPED, dropped);
		dev_warn_ratelimited(ad->dev,
				     "PPR log overflow: %u page request(s) dropped\n",
				     dropped);
	}
	if (type != PPR_TYPE_PAGE_REQ) {
		dev_warn_ratelimited(ad->dev,
				     "PPR log entry of unknown type %u: %08x %08x %08x %08x\n",
				     type, dw[0], dw[1], dw[2], dw[3]);
		return;
	}
	dev_dbg(ad->dev, "PPR devid %04x pasid 0x%05x tag 0x%03x flags 0x%03x address 0x%llx\n",
		devid, pasid, tag, flags, addr);
	amdvi_ppr_request(ad, devid, pasid, tag, flags, addr);
}
