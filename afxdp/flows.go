package afxdp

import (
	"encoding/binary"
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
// Only the simplest frames are cached: untagged IPv4 without options, not a fragment, and either
// UDP or a TCP segment that only acknowledges (pureACK). Other TCP segments stay with the
// balancer: SYN, FIN and RST move the connection's state and timeouts in its table, and a
// segment with data may be a GRO super-frame larger than the link's MTU. An ACK-only segment
// moves nothing but the flow's idle timer, which the sweep refreshes, and the ACKs of a download
// are most of the frames a balancer in front of a mail or web cluster forwards. Everything else
// (ARP, IPv6, ICMP, fragments, SIP Call-ID ports, which the balancer never installs) takes the
// AF_XDP or AF_PACKET path as before.
//
// A cached flow's ACK-only segments may overtake its data segments, which take the longer way
// through user space. TCP takes that without harm: a segment without data occupies no sequence
// space and is acceptable anywhere in the receive window (RFC 9293, 3.10.7.4), a data segment
// that arrives after a later ACK carries an older acknowledgment and window, which the receiver
// ignores (RFC 9293, 3.10.7.4, "If the ACK is a duplicate ... it can be ignored"; the window
// update rule of SND.WL1 and SND.WL2), and a duplicate-ACK count needs ACKs without data that do
// not move the acknowledgment, which reordering does not create.

// FlowKey is a flow cache key: the IPv4 source and destination addresses and the UDP or TCP
// ports as they are on the wire (bytes 26 to 37 of an untagged frame without IP options), then
// the IP protocol and three zero bytes.
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
	ipv4TotLenOff  = 14 + 2
	ipv4HdrLen     = 20
)

// TCP header fields of a frame without IP options (RFC 9293, 3.1), as pureACK reads them.
const (
	tcpOff       = 14 + ipv4HdrLen
	tcpDataOff   = tcpOff + 12 // data offset in the upper 4 bits, in 32-bit words
	tcpFlagsOff  = tcpOff + 13
	tcpFlagsEnd  = tcpFlagsOff + 1
	tcpMinHdrLen = 20
	// tcpFlagsMask and tcpFlagsACK select ACK-only segments: of FIN, SYN, RST, ACK and URG only
	// ACK set. PSH, ECE and CWR do not matter to the balancer and may be set.
	tcpFlagsMask = 0x37
	tcpFlagsACK  = 0x10
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
	const miss, key = "flow_miss", "flow_key"
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
		asm.LoadMem(asm.R9, asm.R2, ipv4ProtoOff, asm.Byte),
		asm.JEq.Imm(asm.R9, ipProtoUDP, key),
		asm.JNE.Imm(asm.R9, ipProtoTCP, miss),
		// TCP: an ACK-only segment (pureACK), whose total length is exactly its headers.
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, tcpFlagsEnd),
		asm.JGT.Reg(asm.R4, asm.R3, miss),
		asm.LoadMem(asm.R5, asm.R2, tcpFlagsOff, asm.Byte),
		asm.And.Imm(asm.R5, tcpFlagsMask),
		asm.JNE.Imm(asm.R5, tcpFlagsACK, miss),
		asm.LoadMem(asm.R5, asm.R2, tcpDataOff, asm.Byte),
		asm.RSh.Imm(asm.R5, 2),
		asm.And.Imm(asm.R5, 0x3c), // the header length in bytes: data offset × 4
		asm.JLT.Imm(asm.R5, tcpMinHdrLen, miss),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Reg(asm.R4, asm.R5),
		asm.Add.Imm(asm.R4, tcpOff),
		asm.JGT.Reg(asm.R4, asm.R3, miss),
		asm.Add.Imm(asm.R5, ipv4HdrLen),
		asm.LoadMem(asm.R4, asm.R2, ipv4TotLenOff, asm.Half),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.JNE.Reg(asm.R4, asm.R5, miss),
		// The key, on the stack at fp-16: addresses and ports as on the wire, then the protocol.
		asm.LoadMem(asm.R5, asm.R2, ipv4SrcOff, asm.Word).WithSymbol(key),
		asm.StoreMem(asm.RFP, -16, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, ipv4SrcOff+4, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, ipv4SrcOff+8, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R5, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R9, asm.Word),
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
// program would look it up: IPv4 without options, not a fragment, and UDP or an ACK-only TCP
// segment.
func FlowKeyOf(frame []byte) (FlowKey, bool) {
	var k FlowKey
	if len(frame) < ipv4PortsEnd || frame[12] != 0x08 || frame[13] != 0x00 || frame[ipv4VerIHLOff] != ipv4VerIHL5 ||
		frame[ipv4FragOff]&0x3f != 0 || frame[ipv4FragOff+1] != 0 {
		return k, false
	}
	switch proto := frame[ipv4ProtoOff]; {
	case proto == ipProtoUDP, proto == ipProtoTCP && pureACK(frame):
		copy(k[:12], frame[ipv4SrcOff:ipv4PortsEnd])
		k[12] = proto
		return k, true
	}
	return k, false
}

// pureACK reports whether frame, an IPv4 TCP frame without IP options, is an ACK-only segment:
// ACK set, none of FIN, SYN, RST and URG, a valid header length and no data (the IPv4 total
// length is the two headers'; Ethernet padding after it is allowed).
func pureACK(frame []byte) bool {
	if len(frame) < tcpFlagsEnd || frame[tcpFlagsOff]&tcpFlagsMask != tcpFlagsACK {
		return false
	}
	hl := int(frame[tcpDataOff]>>4) * 4
	return hl >= tcpMinHdrLen && len(frame) >= tcpOff+hl && int(binary.BigEndian.Uint16(frame[ipv4TotLenOff:])) == ipv4HdrLen+hl
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
