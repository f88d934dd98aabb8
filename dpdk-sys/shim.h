/*
 * Exported versions of DPDK's static-inline fast-path functions, which have
 * no symbol in the shared libraries. Each is meant to be called once per
 * burst, never once per packet.
 */
#ifndef SLUICE_SHIM_H
#define SLUICE_SHIM_H
#include <stdint.h>

struct rte_mbuf;

uint16_t sluice_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t sluice_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
void sluice_pktmbuf_free(struct rte_mbuf *m);
uint64_t sluice_rdtsc(void);
int sluice_errno(void);
/* Control-path helpers (not per packet): allocate an mbuf from `pool` holding
 * a copy of `len` bytes of `data` (NULL if the pool is empty or the bytes do
 * not fit one segment), and copy a whole packet into a new mbuf. */
struct rte_mempool;
struct rte_mbuf *sluice_pktmbuf_from_bytes(struct rte_mempool *pool, const void *data, uint16_t len);
struct rte_mbuf *sluice_pktmbuf_clone_bytes(const struct rte_mbuf *m, struct rte_mempool *pool);
#endif
