#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_mbuf.h>
#include <rte_memcpy.h>
#include "shim.h"

uint16_t sluice_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t sluice_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

void sluice_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

uint64_t sluice_rdtsc(void)
{
	return rte_rdtsc();
}

int sluice_errno(void)
{
	return rte_errno;
}


struct rte_mbuf *sluice_pktmbuf_from_bytes(struct rte_mempool *pool, const void *data, uint16_t len)
{
	struct rte_mbuf *m = rte_pktmbuf_alloc(pool);
	if (m == NULL)
		return NULL;
	char *dst = rte_pktmbuf_append(m, len);
	if (dst == NULL) {
		rte_pktmbuf_free(m);
		return NULL;
	}
	rte_memcpy(dst, data, len);
	return m;
}

struct rte_mbuf *sluice_pktmbuf_clone_bytes(const struct rte_mbuf *m, struct rte_mempool *pool)
{
	return rte_pktmbuf_copy(m, pool, 0, UINT32_MAX);
}
