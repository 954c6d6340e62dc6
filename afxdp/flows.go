package afxdp

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The flow cache (issue 14) lets the XDP program forward the frames of a known flow itself:
// it rewrites the Ethernet addresses as the balancer would and sends the frame back out of the
// interface (XDP_TX), so the frame never crosses to user space. The balancer stays the only
// one that decides: it installs a flow once its connection-table entry exists and its member is
// a usable remote frontend (InstallFlow), stamps the entry with the generation of the
// configuration it decided under, and moves the generation on whenever the configuration
// changes (SetGeneration), which invalidates every entry at once. A sweep (SweepFlows) hands the
// entries' packet and byte counts back to the balancer, which refreshes its table entry and
// counters from them and drops entries that went idle or whose table entry is gone.
//
// Only the simplest frames are cached: untagged IPv4 without options, not a fragment, UDP. TCP
// is left out because its flags move the connection's state and timeouts in the balancer's
// table; everything else (ARP, IPv6, ICMP, fragments, SIP Call-ID ports, which the balancer
// never installs) takes the AF_XDP path as before.

// FlowKey is a flow cache key: the IPv4 source and destination addresses and the UDP ports as
// they are on the wire (bytes 26 to 37 of an untagged frame without IP options), then the IP
// protocol and three zero bytes.
type FlowKey [16]byte

// FlowEntry is a flow cache value. DstMAC and SrcMAC are the Ethernet addresses the program
// writes; Gen is the generation the entry was installed under (the program ignores an entry of
// another generation); Member is the balancer's member id; Packets and Bytes are what the
// program forwarded for it, counted with atomic adds.
type FlowEntry struct {
	DstMAC  [6]byte
	SrcMAC  [6]byte
	Gen     uint32
	Member  uint32
	_       uint32
	Packets uint64
	Bytes   uint64
}

// Offsets in FlowEntry, as the program reads and writes them.
const (
	flowEntryGen     = 12
	flowEntryPackets = 24
	flowEntryBytes   = 32
	flowEntrySize    = 40
)

// Offsets of an untagged IPv4 frame without options (RFC 791).
const (
	ipv4VerIHLOff  = 14
	ipv4FragOff    = 14 + 6
	ipv4SrcOff     = 14 + 12
	ipv4PortsEnd   = 14 + 20 + 4
	ipProtoUDP     = 17
	ipv4VerIHL5    = 0x45
	ipv4FragMaskLE = 0xff3f // the MF flag and the fragment offset (0x3fff), byte-swapped
)

// Errors of the flow cache methods.
var (
	// ErrNoFlowCache is returned by the flow cache methods of a Program loaded without one.
	ErrNoFlowCache = errors.New("afxdp: the program has no flow cache")
	// ErrProgramClosed is returned by the flow cache methods after Close.
	ErrProgramClosed = errors.New("afxdp: program closed")
)

// lockFlows takes the read side of the flow cache's lock and reports why the cache cannot be
// used, if it cannot; on nil the caller must call p.fmu.RUnlock.
func (p *Program) lockFlows() error {
	if p.flows == nil {
		return ErrNoFlowCache
	}
	p.fmu.RLock()
	if p.fclosed {
		p.fmu.RUnlock()
		return ErrProgramClosed
	}
	return nil
}

// flowMaps are the flow cache's maps: the flows (an LRU hash, so a full cache evicts its least
// recently used flow, which then takes the AF_XDP path again) and the current generation (an
// array of one entry).
type flowMaps struct {
	flows, gen *ebpf.Map
}

func newFlowMaps(size int) (*flowMaps, error) {
	flows, err := ebpf.NewMap(&ebpf.MapSpec{Name: "l2lb_flows", Type: ebpf.LRUHash,
		KeySize: uint32(len(FlowKey{})), ValueSize: flowEntrySize, MaxEntries: uint32(size)})
	if err != nil {
		return nil, fmt.Errorf("%w: flow cache: %w", ErrUnavailable, err)
	}
	gen, err := ebpf.NewMap(&ebpf.MapSpec{Name: "l2lb_flowgen", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		flows.Close()
		return nil, fmt.Errorf("%w: flow cache generation: %w", ErrUnavailable, err)
	}
	return &flowMaps{flows: flows, gen: gen}, nil
}

func (m *flowMaps) close() error { return errors.Join(m.flows.Close(), m.gen.Close()) }

// flowInstructions is the flow cache's part of the program, run on a frame to the virtual MAC
// with R6 = ctx, R2 = data, R3 = data_end. A hit ends the program with XDP_TX; a miss reloads
// R2 and R3 (the helper calls clobber them) and falls through to what follows.
func flowInstructions(m *flowMaps) asm.Instructions {
	const miss = "flow_miss"
	return asm.Instructions{
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, ipv4PortsEnd),
		asm.JGT.Reg(asm.R4, asm.R3, miss),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R5, etherTypeIPv4LE, miss),
		asm.LoadMem(asm.R5, asm.R2, ipv4VerIHLOff, asm.Byte),
		asm.JNE.Imm(asm.R5, ipv4VerIHL5, miss),
		asm.LoadMem(asm.R5, asm.R2, ipv4FragOff, asm.Half),
		asm.And.Imm(asm.R5, ipv4FragMaskLE),
		asm.JNE.Imm(asm.R5, 0, miss),
		asm.LoadMem(asm.R5, asm.R2, ipv4ProtoOff, asm.Byte),
		asm.JNE.Imm(asm.R5, ipProtoUDP, miss),
		// The key, on the stack at fp-16: addresses and ports as on the wire, then the protocol.
		asm.LoadMem(asm.R5, asm.R2, ipv4SrcOff, asm.Word),
		asm.StoreMem(asm.RFP, -16, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, ipv4SrcOff+4, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, ipv4SrcOff+8, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R5, asm.Word),
		asm.StoreImm(asm.RFP, -4, ipProtoUDP, asm.Word),
		asm.LoadMapPtr(asm.R1, m.flows.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, miss),
		asm.Mov.Reg(asm.R7, asm.R0),
		// An entry of another generation was installed under a configuration that is gone.
		asm.StoreImm(asm.RFP, -20, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.gen.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -20),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, miss),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R2, asm.R7, flowEntryGen, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, miss),
		asm.LoadMem(asm.R2, asm.R6, xdpMdData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, xdpMdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 12),
		asm.JGT.Reg(asm.R4, asm.R3, miss),
		asm.Mov.Imm(asm.R1, 1),
		xadd64(asm.R7, flowEntryPackets, asm.R1),
		asm.Mov.Reg(asm.R1, asm.R3),
		asm.Sub.Reg(asm.R1, asm.R2),
		xadd64(asm.R7, flowEntryBytes, asm.R1),
		// Destination and source MAC, 12 bytes, as the balancer wrote them when it installed
		// the flow (only the Ethernet addresses change: direct server return).
		asm.LoadMem(asm.R1, asm.R7, 0, asm.Word),
		asm.StoreMem(asm.R2, 0, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 4, asm.Word),
		asm.StoreMem(asm.R2, 4, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 8, asm.Word),
		asm.StoreMem(asm.R2, 8, asm.R1, asm.Word),
		asm.Mov.Imm(asm.R0, XDPTX),
		asm.Return(),
		asm.LoadMem(asm.R2, asm.R6, xdpMdData, asm.Word).WithSymbol(miss),
		asm.LoadMem(asm.R3, asm.R6, xdpMdDataEnd, asm.Word),
	}
}

// xadd64 is an atomic 64-bit add of src to the memory at dst+off.
func xadd64(dst asm.Register, off int16, src asm.Register) asm.Instruction {
	ins := asm.StoreXAdd(dst, src, asm.DWord)
	ins.Offset = off
	return ins
}

// FlowKeyOf returns the flow cache key of frame, an untagged Ethernet frame, and whether the
// program would look it up: IPv4 without options, not a fragment, UDP.
func FlowKeyOf(frame []byte) (FlowKey, bool) {
	var k FlowKey
	if len(frame) < ipv4PortsEnd || frame[12] != 0x08 || frame[13] != 0x00 || frame[ipv4VerIHLOff] != ipv4VerIHL5 ||
		frame[ipv4FragOff]&0x3f != 0 || frame[ipv4FragOff+1] != 0 || frame[ipv4ProtoOff] != ipProtoUDP {
		return k, false
	}
	copy(k[:12], frame[ipv4SrcOff:ipv4PortsEnd])
	k[12] = ipProtoUDP
	return k, true
}

// FlowCache reports whether the program was loaded with a flow cache.
func (p *Program) FlowCache() bool { return p.flows != nil }

// InstallFlow makes the program forward the frames of the flow of frame (an untagged Ethernet
// frame the balancer has just rewritten for member) as the balancer rewrote this one, for as
// long as gen is the current generation. It does nothing for a frame FlowKeyOf does not
// accept, and does not allocate.
func (p *Program) InstallFlow(frame []byte, member, gen uint32) error {
	k, ok := FlowKeyOf(frame)
	if err := p.lockFlows(); err != nil {
		return err
	}
	defer p.fmu.RUnlock()
	if !ok {
		return nil
	}
	e := FlowEntry{Gen: gen, Member: member}
	copy(e.DstMAC[:], frame[0:6])
	copy(e.SrcMAC[:], frame[6:12])
	if err := p.flows.flows.Update(unsafe.Pointer(&k), unsafe.Pointer(&e), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("afxdp: install flow: %w", err)
	}
	return nil
}

// SetGeneration makes gen the current generation: entries installed under another one are
// ignored from now on.
func (p *Program) SetGeneration(gen uint32) error {
	if err := p.lockFlows(); err != nil {
		return err
	}
	defer p.fmu.RUnlock()
	if err := p.flows.gen.Put(uint32(0), gen); err != nil {
		return fmt.Errorf("afxdp: flow cache generation: %w", err)
	}
	return nil
}

// sweepBatch is how many entries SweepFlows reads and deletes with one bpf(2) call.
const sweepBatch = 1024

// SweepFlows calls fn for every entry of the flow cache and deletes the entries for which fn
// returns false. It reads and deletes in batches of sweepBatch entries (BPF_MAP_LOOKUP_BATCH and
// BPF_MAP_DELETE_BATCH, Linux 5.6+), one entry at a time where the kernel has no batches. A
// frame the program forwards between fn's look at an entry and its deletion is not in the
// counts fn saw, and entries installed or evicted during the sweep may be missed or seen twice
// (the kernel's hash map iteration under updates).
func (p *Program) SweepFlows(fn func(k *FlowKey, e *FlowEntry) bool) error {
	if err := p.lockFlows(); err != nil {
		return err
	}
	defer p.fmu.RUnlock()
	var dead []FlowKey
	m := p.flows.flows
	keys, vals := make([]FlowKey, sweepBatch), make([]FlowEntry, sweepBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if !fn(&keys[i], &vals[i]) {
				dead = append(dead, keys[i])
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if errors.Is(err, ebpf.ErrNotSupported) && n == 0 && len(dead) == 0 {
			return p.sweepOneByOne(fn)
		}
		if err != nil {
			return fmt.Errorf("afxdp: sweep flows: %w", err)
		}
	}
	for len(dead) > 0 {
		chunk := dead[:min(len(dead), sweepBatch)]
		if _, err := m.BatchDelete(chunk, nil); err != nil {
			// A key deleted since (the LRU evicted it) ends the batch with ENOENT; the rest
			// of the chunk goes one by one.
			for i := range chunk {
				if err := m.Delete(unsafe.Pointer(&chunk[i])); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("afxdp: sweep flows: %w", err)
				}
			}
		}
		dead = dead[len(chunk):]
	}
	return nil
}

// sweepOneByOne is SweepFlows without batch operations.
func (p *Program) sweepOneByOne(fn func(k *FlowKey, e *FlowEntry) bool) error {
	var (
		k    FlowKey
		e    FlowEntry
		dead []FlowKey
	)
	it := p.flows.flows.Iterate()
	for it.Next(&k, &e) {
		if !fn(&k, &e) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("afxdp: sweep flows: %w", err)
	}
	for i := range dead {
		if err := p.flows.flows.Delete(unsafe.Pointer(&dead[i])); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("afxdp: sweep flows: %w", err)
		}
	}
	return nil
}
