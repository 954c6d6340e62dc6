package dataplane

import "net/netip"

// FlowCounts returns, for every member address the engine has known, configured or not, the
// number of flows it holds. Flows imported by connection sync for a frontend this node never had
// in its own list count too: a standby that becomes active with a list that leaves that frontend
// out must still know it has flows (issue 13, graceful leave).
func (e *Engine) FlowCounts() map[netip.Addr]int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[netip.Addr]int64, len(e.ids))
	for addr, id := range e.ids {
		if n := e.ct.Active(id); n > 0 {
			out[addr] = n
		}
	}
	return out
}

// Unreachable reports whether resolving addr's MAC failed repeatedly (SetMAC with nil): the
// frontend is presumed down.
func (e *Engine) Unreachable(addr netip.Addr) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.failed[addr]
}
