// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: guest driver for the emulated AMD IOMMUv2-like unit of
 * amdvi-bench (docs/protocol.md).  This file is the virtio side: binding,
 * the request queue and the event queue.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "amdvi.h"

static char *notifier_mode = "auto";
module_param(notifier_mode, charp, 0444);
MODULE_PARM_DESC(notifier_mode,
		 "callbacks that invalidate: auto|secondary|start|end_only|start_end|all");

int amdvi_notifier_mask = AMDVI_NOTIFIER_SECONDARY;

static atomic_t amdvi_instances = ATOMIC_INIT(0);

/* ---- requests ---- */

struct amdvi_req *amdvi_req_alloc(u32 type, size_t body_len, size_t rbody_len,
				  size_t data_len, bool data_in, gfp_t gfp)
{
	struct amdvi_req *req;

	req = kzalloc(sizeof(*req) + body_len + rbody_len, gfp);
	if (!req)
		return NULL;
	refcount_set(&req->ref, 1);
	init_completion(&req->done);
	req->sem_slot = -1;
	req->hdr.type = cpu_to_le32(type);
	req->body_len = body_len;
	req->body = body_len ? (u8 *)(req + 1) : NULL;
	req->rbody_len = rbody_len;
	req->rbody = rbody_len ? (u8 *)(req + 1) + body_len : NULL;
	if (data_len) {
		req->data = kvzalloc(data_len, gfp);
		if (!req->data) {
			kfree(req);
			return NULL;
		}
		req->data_len = data_len;
		req->data_in = data_in;
	}
	return req;
}

static void amdvi_req_free(struct amdvi_req *req)
{
	struct amdvi_dev *ad = req->ad;

	if (req->log_status && ad && req->used >= sizeof(req->resp) &&
	    req->resp.status != cpu_to_le32(AMDVI_S_OK))
		dev_err_ratelimited(ad->dev,
				    "request type %u failed with status %u\n",
				    le32_to_cpu(req->hdr.type),
				    le32_to_cpu(req->resp.status));
	if (ad && req->sem_slot >= 0)
		clear_bit(req->sem_slot, ad->sem_busy);
	kvfree(req->data);
	kfree(req);
}

void amdvi_req_put(struct amdvi_req *req)
{
	if (refcount_dec_and_test(&req->ref))
		amdvi_req_free(req);
}

/* Describe @buf (kmalloc or vmalloc memory) with single-entry sg lists. */
static int amdvi_sg_add(struct amdvi_req *req, int n, void *buf, size_t len)
{
	while (len) {
		size_t off = offset_in_page(buf);
		size_t chunk = is_vmalloc_addr(buf) ?
			       min_t(size_t, len, PAGE_SIZE - off) : len;
		struct scatterlist *sg = &req->sg[n];

		if (n >= AMDVI_REQ_MAX_SG)
			return -E2BIG;
		sg_init_table(sg, 1);
		if (is_vmalloc_addr(buf))
			sg_set_page(sg, vmalloc_to_page(buf), chunk, off);
		else
			sg_set_buf(sg, buf, chunk);
		req->sgs[n++] = sg;
		buf += chunk;
		len -= chunk;
	}
	return n;
}

/*
 * Queue @req: readable header + body (+ data), writable response header +
 * body (+ data).  The device holds a reference until the buffer comes back.
 * Callable in atomic context with GFP_ATOMIC.
 */
int amdvi_req_submit(struct amdvi_dev *ad, struct amdvi_req *req, gfp_t gfp)
{
	unsigned int out, n;
	unsigned long flags, deadline;
	bool notify;
	int ret;

	req->ad = ad;
	ret = amdvi_sg_add(req, 0, &req->hdr, sizeof(req->hdr));
	if (ret >= 0 && req->body_len)
		ret = amdvi_sg_add(req, ret, req->body, req->body_len);
	if (ret >= 0 && req->data_len && !req->data_in)
		ret = amdvi_sg_add(req, ret, req->data, req->data_len);
	if (ret < 0)
		return ret;
	out = ret;
	ret = amdvi_sg_add(req, out, &req->resp, sizeof(req->resp));
	if (ret >= 0 && req->rbody_len)
		ret = amdvi_sg_add(req, ret, req->rbody, req->rbody_len);
	if (ret >= 0 && req->data_len && req->data_in)
		ret = amdvi_sg_add(req, ret, req->data, req->data_len);
	if (ret < 0)
		return ret;
	n = ret;

	refcount_inc(&req->ref);
	deadline = jiffies + 10 * HZ;
	for (;;) {
		spin_lock_irqsave(&ad->req_lock, flags);
		if (ad->dead) {
			ret = -ENODEV;
		} else {
			ret = virtqueue_add_sgs(ad->reqq, req->sgs, out, n - out,
						req, GFP_ATOMIC);
		}
		notify = !ret && virtqueue_kick_prepare(ad->reqq);
		spin_unlock_irqrestore(&ad->req_lock, flags);
		if (ret != -ENOSPC || time_after(jiffies, deadline))
			break;
		/* ring full: wait for used buffers */
		if (gfpflags_allow_blocking(gfp))
			wait_event_timeout(ad->req_wait,
					   ad->reqq->num_free > 0 || ad->dead,
					   HZ / 10);
		else
			udelay(5);
	}
	if (ret) {
		refcount_dec(&req->ref);
		return ret;
	}
	if (notify)
		virtqueue_notify(ad->reqq);
	return 0;
}

/* Wait for the device to return @req.  On failure the device keeps its ref. */
int amdvi_req_wait(struct amdvi_req *req, unsigned long timeout, bool killable)
{
	long ret;

	if (killable)
		ret = wait_for_completion_killable_timeout(&req->done, timeout);
	else
		ret = wait_for_completion_timeout(&req->done, timeout);
	if (ret > 0)
		return 0;
	req->log_status = true;
	if (req->ad)
		amdvi_count(req->ad, AMDVI_MC_REQ_TIMEOUTS);
	return ret ? (int)ret : -ETIMEDOUT;
}

/*
 * Transport check of a returned request: the used length must cover the
 * response header and @min_rlen bytes of response body.  Returns the device
 * status (>= 0) or -EIO.
 */
int amdvi_req_status(struct amdvi_req *req, size_t min_rlen)
{
	u32 status;

	if (req->used < sizeof(req->resp))
		return -EIO;
	status = le32_to_cpu(req->resp.status);
	if (status == AMDVI_S_OK && req->used < sizeof(req->resp) + min_rlen)
		return -EIO;
	return status;
}

/* Submit, wait, return the device status (>= 0) or a negative errno. */
int amdvi_request(struct amdvi_dev *ad, struct amdvi_req *req, bool killable)
{
	unsigned long timeout;
	int ret;

	/* ENDPOINT requests may wait for a page request answer */
	timeout = msecs_to_jiffies(10000 + le32_to_cpu(ad->info.pri_timeout_ms));
	ret = amdvi_req_submit(ad, req, GFP_KERNEL);
	if (ret)
		return ret;
	ret = amdvi_req_wait(req, timeout, killable);
	if (ret)
		return ret;
	return amdvi_req_status(req, 0);
}

static void amdvi_reqq_done(struct virtqueue *vq);

/*
 * Wait for @req without sleeping, for callers that may hold spinlocks: poll
 * the request queue as its interrupt handler would, at most @loops times.
 */
int amdvi_req_poll(struct amdvi_dev *ad, struct amdvi_req *req,
		   unsigned long loops)
{
	while (!completion_done(&req->done)) {
		if (!loops--) {
			req->log_status = true;
			amdvi_count(ad, AMDVI_MC_REQ_TIMEOUTS);
			return -ETIMEDOUT;
		}
		amdvi_reqq_done(ad->reqq);
		udelay(1);
	}
	return 0;
}

static void amdvi_reqq_done(struct virtqueue *vq)
{
	struct amdvi_dev *ad = vq->vdev->priv;
	struct amdvi_req *req;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&ad->req_lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len))) {
			req->used = len;
			complete(&req->done);
			amdvi_req_put(req);
		}
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&ad->req_lock, flags);
	wake_up(&ad->req_wait);
}

/* ---- event queue ---- */

static int amdvi_evq_post(struct amdvi_dev *ad, void *buf)
{
	struct scatterlist sg;

	sg_init_one(&sg, buf, AMDVI_EV_RECS_PER_BUF *
		    sizeof(struct amdvi_event_rec));
	return virtqueue_add_inbuf(ad->evq, &sg, 1, buf, GFP_ATOMIC);
}

static void amdvi_evq_done(struct virtqueue *vq)
{
	struct amdvi_dev *ad = vq->vdev->priv;

	queue_work(ad->ev_wq, &ad->ev_work);
}

static void amdvi_ev_process(struct amdvi_dev *ad, const void *buf,
			     unsigned int len)
{
	const struct amdvi_event_rec *rec = buf;
	unsigned int i;

	if (len % sizeof(*rec))
		dev_warn_ratelimited(ad->dev,
				     "event buffer length %u not a multiple of %zu\n",
				     len, sizeof(*rec));
	for (i = 0; i < len / sizeof(*rec); i++, rec++) {
		switch (le16_to_cpu(rec->kind)) {
		case AMDVI_EVREC_EVENT:
			amdvi_handle_event(ad, rec->entry,
					   le32_to_cpu(rec->dropped));
			break;
		case AMDVI_EVREC_PPR:
			amdvi_handle_ppr(ad, rec->entry,
					 le32_to_cpu(rec->dropped));
			break;
		default:
			dev_warn_ratelimited(ad->dev,
					     "unknown event record kind %u\n",
					     le16_to_cpu(rec->kind));
		}
	}
}

static void amdvi_ev_work(struct work_struct *work)
{
	struct amdvi_dev *ad = container_of(work, struct amdvi_dev, ev_work);
	unsigned long flags;
	unsigned int len;
	bool kick = false;
	void *buf;

	for (;;) {
		spin_lock_irqsave(&ad->ev_lock, flags);
		buf = ad->dead ? NULL : virtqueue_get_buf(ad->evq, &len);
		spin_unlock_irqrestore(&ad->ev_lock, flags);
		if (!buf)
			break;
		amdvi_ev_process(ad, buf, len);
		spin_lock_irqsave(&ad->ev_lock, flags);
		if (!ad->dead && !amdvi_evq_post(ad, buf))
			kick = true;
		spin_unlock_irqrestore(&ad->ev_lock, flags);
	}
	if (kick) {
		spin_lock_irqsave(&ad->ev_lock, flags);
		if (!ad->dead)
			virtqueue_kick(ad->evq);
		spin_unlock_irqrestore(&ad->ev_lock, flags);
	}
}

static int amdvi_evq_fill(struct amdvi_dev *ad)
{
	size_t sz = AMDVI_EV_RECS_PER_BUF * sizeof(struct amdvi_event_rec);
	unsigned long flags;
	int i, ret = 0;

	for (i = 0; i < AMDVI_EV_BUFS; i++) {
		ad->ev_buf[i] = kzalloc(sz, GFP_KERNEL);
		if (!ad->ev_buf[i])
			return -ENOMEM;
	}
	spin_lock_irqsave(&ad->ev_lock, flags);
	for (i = 0; i < AMDVI_EV_BUFS && !ret; i++)
		ret = amdvi_evq_post(ad, ad->ev_buf[i]);
	virtqueue_kick(ad->evq);
	spin_unlock_irqrestore(&ad->ev_lock, flags);
	return ret;
}

/* ---- probe / remove ---- */

static int amdvi_find_vqs(struct amdvi_dev *ad)
{
	struct virtqueue *vqs[AMDVI_NUM_VQS];
	int ret;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
	struct virtqueue_info info[AMDVI_NUM_VQS] = {
		{ .name = "requestq", .callback = amdvi_reqq_done },
		{ .name = "eventq", .callback = amdvi_evq_done },
	};

	ret = virtio_find_vqs(ad->vdev, AMDVI_NUM_VQS, vqs, info, NULL);
#else
	vq_callback_t *cbs[AMDVI_NUM_VQS] = { amdvi_reqq_done, amdvi_evq_done };
	static const char * const names[AMDVI_NUM_VQS] = { "requestq", "eventq" };

	ret = virtio_find_vqs(ad->vdev, AMDVI_NUM_VQS, vqs, cbs, names, NULL);
#endif
	if (ret)
		return ret;
	ad->reqq = vqs[AMDVI_VQ_REQUEST];
	ad->evq = vqs[AMDVI_VQ_EVENT];
	return 0;
}

static int amdvi_get_info(struct amdvi_dev *ad)
{
	struct amdvi_req *req;
	int ret;

	req = amdvi_req_alloc(AMDVI_REQ_INFO, 0, sizeof(ad->info), 0, false,
			      GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	ret = amdvi_request(ad, req, false);
	if (ret == AMDVI_S_OK)
		ret = amdvi_req_status(req, sizeof(ad->info));
	if (ret == AMDVI_S_OK)
		memcpy(&ad->info, req->rbody, sizeof(ad->info));
	else if (ret > 0)
		dev_err(ad->dev, "INFO failed with status %d\n", ret);
	amdvi_req_put(req);
	return ret > 0 ? -EIO : ret;
}

static void amdvi_dev_release(struct kref *kref)
{
	struct amdvi_dev *ad = container_of(kref, struct amdvi_dev, kref);

	amdvi_iommu_free(ad);
	ida_destroy(&ad->pasid_ida);
	xa_destroy(&ad->bonds);
	if (ad->ppr_wq)
		destroy_workqueue(ad->ppr_wq);
	if (ad->ev_wq)
		destroy_workqueue(ad->ev_wq);
	kfree(ad);
}

void amdvi_dev_get(struct amdvi_dev *ad)
{
	kref_get(&ad->kref);
}

void amdvi_dev_put(struct amdvi_dev *ad)
{
	kref_put(&ad->kref, amdvi_dev_release);
}

static void amdvi_shutdown_queues(struct amdvi_dev *ad)
{
	struct amdvi_req *req;
	unsigned long flags;
	int i;

	spin_lock_irqsave(&ad->req_lock, flags);
	spin_lock(&ad->ev_lock);
	ad->dead = true;
	spin_unlock(&ad->ev_lock);
	spin_unlock_irqrestore(&ad->req_lock, flags);
	wake_up_all(&ad->req_wait);

	virtio_reset_device(ad->vdev);
	if (ad->ev_wq)
		cancel_work_sync(&ad->ev_work);
	while ((req = virtqueue_detach_unused_buf(ad->reqq))) {
		req->used = 0;
		complete(&req->done);
		amdvi_req_put(req);
	}
	ad->vdev->config->del_vqs(ad->vdev);
	for (i = 0; i < AMDVI_EV_BUFS; i++)
		kfree(ad->ev_buf[i]);
}

static int amdvi_probe(struct virtio_device *vdev)
{
	struct amdvi_dev *ad;
	u32 magic, version;
	int ret;

	/* Two 32-bit reads: each config access is a round trip. */
	magic = virtio_cread32(vdev, AMDVI_CFG_OFF_MAGIC);
	version = virtio_cread32(vdev, AMDVI_CFG_OFF_VERSION);
	if (magic != AMDVI_CFG_MAGIC || version != AMDVI_CFG_VERSION) {
		dev_err(&vdev->dev,
			"not an amdvi device (virtio id %u): config magic 0x%08x version %u, want 0x%08x version %u\n",
			vdev->id.device, magic, version, AMDVI_CFG_MAGIC,
			AMDVI_CFG_VERSION);
		return -ENODEV;
	}
	if (atomic_inc_return(&amdvi_instances) > 1) {
		dev_err(&vdev->dev, "only one amdvi device is supported\n");
		atomic_dec(&amdvi_instances);
		return -EBUSY;
	}

	ad = kzalloc(sizeof(*ad), GFP_KERNEL);
	if (!ad) {
		ret = -ENOMEM;
		goto err_count;
	}
	kref_init(&ad->kref);
	ad->vdev = vdev;
	ad->dev = &vdev->dev;
	vdev->priv = ad;
	spin_lock_init(&ad->req_lock);
	init_waitqueue_head(&ad->req_wait);
	spin_lock_init(&ad->ev_lock);
	spin_lock_init(&ad->ev_last_lock);
	INIT_WORK(&ad->ev_work, amdvi_ev_work);
	mutex_init(&ad->cfg_lock);
	mutex_init(&ad->stream_lock);
	INIT_LIST_HEAD(&ad->streams);
	ida_init(&ad->pasid_ida);
	xa_init(&ad->bonds);
	spin_lock_init(&ad->ppr_lock);
	INIT_LIST_HEAD(&ad->ppr_partial);
	atomic64_set(&ad->sem_seq, 1);

	ad->ev_wq = alloc_ordered_workqueue("amdvi_ev", 0);
	ad->ppr_wq = alloc_workqueue("amdvi_ppr", WQ_UNBOUND, 0);
	if (!ad->ev_wq || !ad->ppr_wq) {
		ret = -ENOMEM;
		goto err_free;
	}

	ret = amdvi_find_vqs(ad);
	if (ret) {
		dev_err(ad->dev, "cannot find virtqueues: %d\n", ret);
		goto err_free;
	}
	virtio_device_ready(vdev);

	ret = amdvi_evq_fill(ad) ?: amdvi_get_info(ad) ?:
	      amdvi_iommu_init(ad) ?: amdvi_chrdev_register(ad);
	if (ret)
		goto err_queues;
	return 0;

err_queues:
	amdvi_shutdown_queues(ad);
err_free:
	vdev->priv = NULL;
	amdvi_dev_put(ad);
err_count:
	atomic_dec(&amdvi_instances);
	return ret;
}

static void amdvi_remove(struct virtio_device *vdev)
{
	struct amdvi_dev *ad = vdev->priv;

	amdvi_chrdev_unregister(ad);
	amdvi_shutdown_queues(ad);
	if (ad->ppr_wq)
		flush_workqueue(ad->ppr_wq);
	vdev->priv = NULL;
	amdvi_dev_put(ad);
	atomic_dec(&amdvi_instances);
}

static const struct virtio_device_id amdvi_id_table[] = {
	{ AMDVI_VIRTIO_ID_GPIO, VIRTIO_DEV_ANY_ID },
	{ AMDVI_VIRTIO_ID_OWN, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, amdvi_id_table);

static struct virtio_driver amdvi_driver = {
	.driver.name	= KBUILD_MODNAME,
#ifndef register_virtio_driver	/* before 6.9 the driver sets its owner */
	.driver.owner	= THIS_MODULE,
#endif
	.id_table	= amdvi_id_table,
	.probe		= amdvi_probe,
	.remove		= amdvi_remove,
};

static int amdvi_parse_mode(const char *s)
{
	static const struct {
		const char *name;
		int mask;
	} modes[] = {
		{ "auto", AMDVI_NOTIFIER_SECONDARY },
		{ "secondary", AMDVI_NOTIFIER_SECONDARY },
		{ "start", AMDVI_NOTIFIER_START },
		{ "end_only", AMDVI_NOTIFIER_END },
		{ "start_end", AMDVI_NOTIFIER_START | AMDVI_NOTIFIER_END },
		{ "all", AMDVI_NOTIFIER_SECONDARY | AMDVI_NOTIFIER_START |
			 AMDVI_NOTIFIER_END },
	};
	int i;

	for (i = 0; i < ARRAY_SIZE(modes); i++)
		if (sysfs_streq(s, modes[i].name))
			return modes[i].mask;
	return -EINVAL;
}

static int __init amdvi_init(void)
{
	int mask = amdvi_parse_mode(notifier_mode ? notifier_mode : "auto");

	if (mask < 0) {
		pr_err("invalid notifier_mode '%s'\n", notifier_mode);
		return mask;
	}
	amdvi_notifier_mask = mask;
	if (amdvi_parse_inv_bug())
		return -EINVAL;
	pr_info("notifier_mode=%s (secondary=%d start=%d end=%d)\n",
		notifier_mode, !!(mask & AMDVI_NOTIFIER_SECONDARY),
		!!(mask & AMDVI_NOTIFIER_START), !!(mask & AMDVI_NOTIFIER_END));
	return register_virtio_driver(&amdvi_driver);
}

static void __exit amdvi_exit(void)
{
	unregister_virtio_driver(&amdvi_driver);
}

module_init(amdvi_init);
module_exit(amdvi_exit);

MODULE_DESCRIPTION("amdvi-bench guest driver: emulated AMD IOMMUv2 with ATS/PRI, SVA and mmu_notifier tests");
MODULE_LICENSE("GPL");
