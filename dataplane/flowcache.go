package dataplane

import (
	"github.com/l2lb/l2lb/conntrack"
)

// The XDP flow cache (afxdp, issue 14) forwards the datagrams of known UDP flows, and the
// ACK-only segments of known TCP flows, in the kernel, as the engine forwarded the flow's frame
// that installed it (Result.Cacheable). Two things keep it the engine's decision:
//
//   - Every cache entry carries the flow generation it was installed under, and the generation
//     moves on with every configuration change and every change of the active flag, after the
//     change is visible to Process. A worker reads the generation before it processes a frame
//     (so its decision was made under that generation or a later one), and the cache ignores
//     entries of an older generation: a removed, failed, leaving or re-addressed member, a new
//     VIP set or a passive node is never served from the cache once the generation is published.
//   - The engine's table, counters and connection sync never see the datagrams the cache
//     forwards, so the cache's owner hands their counts back (ForwardedByCache) at least every
//     sweep; that refreshes the flow's table entry as the datagrams would have, and an entry
//     whose table flow is gone or has moved is dropped from the cache.

// FlowGeneration returns the current flow generation.
func (e *Engine) FlowGeneration() uint32 { return e.flowGen.Load() }

// FlowGenerationChanged returns a channel that receives after the flow generation moved on
// (coalesced: one receive may stand for several changes). The engine has one such channel; it is
// meant for the one owner of the fast path's flow cache.
func (e *Engine) FlowGenerationChanged() <-chan struct{} { return e.flowGenCh }

func (e *Engine) newFlowGeneration() {
	e.flowGen.Add(1)
	select {
	case e.flowGenCh <- struct{}{}:
	default:
	}
}

// ForwardedByCache accounts for packets datagrams of bytes bytes in all that the flow cache
// forwarded for flow k on member since it last did: it refreshes the flow's table entry as
// Process would have (once, at the engine's current time) and counts the datagrams on the flow's
// VIP and, as forwarded to member, on c. It reports false, counting nothing, when the flow is no
// longer in the table or belongs to another member now, and the cache entry must go.
func (e *Engine) ForwardedByCache(k conntrack.Key, member uint32, packets, bytes uint64, c *Counters) bool {
	st := e.state.Load()
	id, ok := e.ct.Touch(k, 0, e.clock.Load())
	if !ok || id != member {
		return false
	}
	if vi := st.vips.IndexU32(k.Dst); vi >= 0 {
		st.vipCounters[vi].add(packets, bytes)
	}
	c.addForwarded(member, packets, bytes)
	return true
}

// cacheableTCP reports whether a TCP segment with flags, of a known flow on a member that keeps
// it, may install its flow in the cache: an ACK without SYN, FIN or RST. The cache then takes
// only the flow's ACK-only segments (afxdp.FlowKeyOf), which change nothing in the flow's table
// entry but its idle timer: the ACK moved it to ESTABLISHED if it was not already (or it stays
// closing), and an ACK in either state leaves it there (conntrack's nextState). SYN, FIN and RST
// keep coming here and move the state as before; the sweep's refresh (ForwardedByCache) touches
// the entry without flags, as an ACK would.
func cacheableTCP(flags uint8) bool {
	return flags&(conntrack.FlagSYN|conntrack.FlagFIN|conntrack.FlagRST) == 0 && flags&conntrack.FlagACK != 0
}
