package dataplane

import (
	"sync/atomic"
)

// Counters is the fast path's tiny typed recorder: plain atomic counters that workers add to and
// that exporters (stats file, status, Prometheus collectors) read. The wire code never touches an
// exporter's types. Each worker has its own Counters so that workers do not share cache lines.
type Counters struct {
	verdicts    [numVerdicts]atomic.Uint64
	drops       [numReasons]atomic.Uint64
	memberPkts  [MaxMembers]atomic.Uint64
	memberBytes [MaxMembers]atomic.Uint64
	newFlows    atomic.Uint64
	tableFull   atomic.Uint64
	conflicts   atomic.Uint64
	announced   atomic.Uint64
	noCallID    atomic.Uint64
	newDialogs  atomic.Uint64
	_           [64]byte
}

// Record counts the result of one frame of length n, and the frame on its VIP's counter when r
// came from Engine.ProcessHint.
func (c *Counters) Record(r *Result, n int) {
	c.verdicts[r.Verdict].Add(1)
	switch r.Verdict {
	case VerdictDrop:
		if r.Reason < numReasons {
			c.drops[r.Reason].Add(1)
		}
	case VerdictForward, VerdictLocal:
		if r.Member < MaxMembers {
			c.memberPkts[r.Member].Add(1)
			c.memberBytes[r.Member].Add(uint64(n))
		}
		if r.vip != nil {
			r.vip.add(1, uint64(n))
		}
		if r.NewFlow {
			c.newFlows.Add(1)
		}
		if r.TableFull {
			c.tableFull.Add(1)
		}
		if r.NewDialog {
			c.newDialogs.Add(1)
		}
	}
	if r.Conflict {
		c.conflicts.Add(1)
	}
	if r.NoCallID {
		c.noCallID.Add(1)
	}
}

// batchMembers is how many distinct members RecordBatch sums locally per batch; frames of
// further members are counted one by one. A balancer has a handful of frontends, and a small
// list searched linearly costs a short batch (one frame at low rates) less than zeroing an array
// indexed by member would.
const batchMembers = 8

// RecordBatch counts the results of a batch of frames, rs[i] of length lens[i] (the two slices
// have the same length), as Record would one by one, but with one atomic add per verdict, member
// and VIP the batch touched instead of three to five per frame: a worker's sendmmsg batch is up
// to 64 frames, and a locked add costs ~20 cycles even on a line no other CPU holds, and a cache
// miss on one another CPU wrote (the VIP counters all workers share). Readers see a batch's
// counts once the batch was sent.
func (c *Counters) RecordBatch(rs []Result, lens []int) {
	var fwd, local uint64
	var ids [batchMembers]uint32
	var pkts, bytes [batchMembers]uint64
	nids := 0
	var vip *vipCounter
	var vipPkts, vipBytes uint64
	for i := range rs {
		r := &rs[i]
		if i >= len(lens) {
			break
		}
		if (r.Verdict != VerdictForward && r.Verdict != VerdictLocal) || r.Member >= MaxMembers ||
			r.NewFlow || r.TableFull || r.NewDialog || r.Conflict || r.NoCallID {
			c.Record(r, lens[i])
			continue
		}
		j := 0
		for j < nids && ids[j] != r.Member {
			j++
		}
		if j == nids {
			if nids == batchMembers {
				c.Record(r, lens[i])
				continue
			}
			ids[j], pkts[j], bytes[j] = r.Member, 0, 0
			nids++
		}
		n := uint64(lens[i])
		pkts[j]++
		bytes[j] += n
		if r.Verdict == VerdictForward {
			fwd++
		} else {
			local++
		}
		if r.vip != vip {
			if vip != nil {
				vip.add(vipPkts, vipBytes)
			}
			vip, vipPkts, vipBytes = r.vip, 0, 0
		}
		vipPkts++
		vipBytes += n
	}
	if fwd > 0 {
		c.verdicts[VerdictForward].Add(fwd)
	}
	if local > 0 {
		c.verdicts[VerdictLocal].Add(local)
	}
	for j := range nids {
		c.memberPkts[ids[j]].Add(pkts[j])
		c.memberBytes[ids[j]].Add(bytes[j])
	}
	if vip != nil {
		vip.add(vipPkts, vipBytes)
	}
}

// addForwarded counts packets frames of bytes bytes in all as forwarded to member.
func (c *Counters) addForwarded(member uint32, packets, bytes uint64) {
	c.verdicts[VerdictForward].Add(packets)
	if member < MaxMembers {
		c.memberPkts[member].Add(packets)
		c.memberBytes[member].Add(bytes)
	}
}

// Drop counts one dropped frame with reason r (for drops decided outside Process, such as a
// failed send).
func (c *Counters) Drop(r Reason) {
	c.verdicts[VerdictDrop].Add(1)
	c.drops[r].Add(1)
}

// Announced counts gratuitous ARP frames sent.
func (c *Counters) Announced(n int) { c.announced.Add(uint64(n)) }

// Stats is a point-in-time sum of counters.
type Stats struct {
	Verdicts  map[string]uint64 `json:"verdicts"`
	Drops     map[string]uint64 `json:"drops"`
	NewFlows  uint64            `json:"new_flows"`
	TableFull uint64            `json:"table_full"`
	// ARPConflicts counts ARP frames from other MACs claiming our VIPs while active.
	ARPConflicts uint64 `json:"arp_conflicts"`
	// ARPAnnounced counts gratuitous ARP frames sent.
	ARPAnnounced uint64 `json:"arp_announced"`
	// SIPNoCallID counts UDP datagrams to a Call-ID port that carried no SIP Call-ID and were
	// balanced by their 5-tuple (keep-alives, non-SIP traffic, first fragments cut short),
	// whatever their verdict.
	SIPNoCallID uint64 `json:"sip_no_call_id"`
	// SIPNewDialogs counts SIP dialogs scheduled by their Call-ID.
	SIPNewDialogs uint64 `json:"sip_new_dialogs"`
	// MemberPackets and MemberBytes are indexed by member ID.
	MemberPackets map[uint32]uint64 `json:"-"`
	MemberBytes   map[uint32]uint64 `json:"-"`
}

// Sum adds up a set of counters.
func Sum(cs ...*Counters) Stats {
	s := Stats{Verdicts: map[string]uint64{}, Drops: map[string]uint64{},
		MemberPackets: map[uint32]uint64{}, MemberBytes: map[uint32]uint64{}}
	for _, c := range cs {
		for v := Verdict(0); v < numVerdicts; v++ {
			s.Verdicts[v.String()] += c.verdicts[v].Load()
		}
		for r := ReasonNone + 1; r < numReasons; r++ {
			if n := c.drops[r].Load(); n > 0 {
				s.Drops[r.String()] += n
			}
		}
		for i := range c.memberPkts {
			if n := c.memberPkts[i].Load(); n > 0 {
				s.MemberPackets[uint32(i)] += n
				s.MemberBytes[uint32(i)] += c.memberBytes[i].Load()
			}
		}
		s.NewFlows += c.newFlows.Load()
		s.TableFull += c.tableFull.Load()
		s.ARPConflicts += c.conflicts.Load()
		s.ARPAnnounced += c.announced.Load()
		s.SIPNoCallID += c.noCallID.Load()
		s.SIPNewDialogs += c.newDialogs.Load()
	}
	return s
}
