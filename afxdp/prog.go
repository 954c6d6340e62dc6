package afxdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Mode is how the XDP program is attached (Documentation/networking/xdp-rx-metadata.rst and
// the XDP_FLAGS_* of include/uapi/linux/if_link.h).
type Mode int

// Attach modes.
const (
	// ModeAuto tries native (driver) mode first and falls back to generic (SKB) mode.
	ModeAuto Mode = iota
	// ModeNative is XDP_FLAGS_DRV_MODE: the program runs in the driver before an skb exists.
	// veth supports it (drivers/net/veth.c) for frames its peer sends.
	ModeNative
	// ModeGeneric is XDP_FLAGS_SKB_MODE: the program runs on the skb in the core receive path,
	// on any interface; frames are copied into the UMEM.
	ModeGeneric
)

// String returns "auto", "native" or "generic".
func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ErrMode is returned by ParseMode for a name that is not a Mode.
var ErrMode = errors.New("afxdp: XDP mode is not auto, native or generic")

// ParseMode returns the Mode whose String is s.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{ModeAuto, ModeNative, ModeGeneric} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrMode, s)
}

// Errors of the program and its attachment.
var (
	// ErrBadMAC is returned for a virtual MAC that is not a 6-byte unicast address.
	ErrBadMAC = errors.New("afxdp: virtual MAC must be a 6-byte unicast address")
	// ErrUnavailable wraps a kernel refusal to load the program, create its map or attach it
	// (no BPF, no CAP_BPF/CAP_NET_ADMIN, no XDP on the interface).
	ErrUnavailable = errors.New("afxdp: XDP unavailable")
)

// XDP context offsets (struct xdp_md in include/uapi/linux/bpf.h).
const (
	xdpMdData         = 0
	xdpMdDataEnd      = 4
	xdpMdRxQueueIndex = 16
)

// Return codes of an XDP program (enum xdp_action in include/uapi/linux/bpf.h).
const (
	// XDPPass lets the frame go on to the kernel's stack.
	XDPPass = 2
	// XDPTX sends the frame back out of the interface it arrived on (the flow cache, flows.go).
	XDPTX = 3
	// XDPRedirect sends the frame to the socket in the XSKMAP.
	XDPRedirect = 4
)

// Instructions builds the redirect program: a frame whose destination MAC is vmac goes to the
// AF_XDP socket registered for the receive queue it arrived on; every other frame, and a frame
// of a queue without a socket, goes to the kernel (XDP_PASS). The flags argument of
// bpf_redirect_map carries the action taken when the lookup fails (XDP_PASS here; the lower
// bits of flags, include/uapi/linux/bpf.h, since Linux 5.3), so no separate lookup is needed.
//
// ARP requests (broadcast) and neighbour solicitations (solicited-node multicast) are not
// redirected: XDP cannot clone a frame, and the host answers ARP and NDP for its own addresses
// from the same groups, so they stay with the kernel; the balancer reads them from a packet
// socket (see Socket). A unicast ARP or NDP probe to vmac (an ARP cache refresh, RFC 1122
// §2.3.2.1) is redirected like any frame to vmac. With o.PassTCP, TCP frames to vmac go to the
// kernel too (ProgramOptions).
func Instructions(vmac net.HardwareAddr, xsks *ebpf.Map, o ProgramOptions) (asm.Instructions, error) {
	return instructions(vmac, xsks, nil, o, XDPPass)
}

// ProgramOptions choose which frames to the virtual MAC the program leaves to the kernel.
type ProgramOptions struct {
	// PassTCP leaves TCP over untagged IPv4, and over IPv6 without extension headers, to the
	// kernel (XDP_PASS): there GRO merges a flow's segments back into one super-frame that an
	// AF_PACKET ring reads and forwards whole, with its GSO metadata (PACKET_VNET_HDR), while
	// AF_XDP would carry every wire-size segment across to user space and transmit it without
	// GSO. Measured with l2lb bench tcp on veth (issue 14): uploads through the VIP were 0.14
	// of direct with every TCP frame on AF_XDP against 0.6 on AF_PACKET. The choice is per
	// protocol, so a flow's frames never take two paths and are never reordered, except for
	// IPv6 TCP whose frames switch between carrying extension headers and not, and for the
	// ACK-only segments of a flow in the flow cache, which it runs first (flows.go says why
	// that reordering is harmless).
	PassTCP bool
	// FlowCache, when above zero, is the size of the program's flow cache (flows.go): the
	// datagrams of UDP flows and the ACK-only segments of TCP flows over IPv4 that the balancer
	// installed are rewritten and sent back out by the program itself (XDP_TX), without a trip
	// through user space. Zero: no cache.
	FlowCache int
}

// Ethertypes and protocol numbers as the program compares them: BPF loads in host byte order,
// so the big-endian ethertype reads byte-swapped on the little-endian machines l2lb targets.
const (
	etherTypeIPv4LE = 0x0008 // 0x0800
	etherTypeIPv6LE = 0xdd86 // 0x86dd
	ipProtoTCP      = 6
	// ipv4ProtoOff and ipv6NextOff are the offsets, from the Ethernet header, of the IPv4
	// protocol and the IPv6 next header (RFC 791, RFC 8200).
	ipv4ProtoOff = 14 + 9
	ipv6NextOff  = 14 + 6
)

// instructions is Instructions with the action taken for a frame to vmac whose queue has no
// socket: XDPPass in production, another code in tests, so that the MAC comparison can be
// checked without a socket.
func instructions(vmac net.HardwareAddr, xsks *ebpf.Map, fc *flowMaps, o ProgramOptions, fallback int32) (asm.Instructions, error) {
	if len(vmac) != 6 || vmac[0]&1 != 0 {
		return nil, ErrBadMAC
	}
	// The MAC is compared as a little-endian u32 (bytes 0-3) and u16 (bytes 4-5): BPF loads
	// in host byte order, and the VMs and machines l2lb targets are little-endian.
	lo := int32(binary.LittleEndian.Uint32(vmac[0:4]))
	hi := int32(binary.LittleEndian.Uint16(vmac[4:6]))
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, xdpMdData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, xdpMdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 6),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"), // shorter than a destination MAC
		asm.LoadMem(asm.R5, asm.R2, 0, asm.Word),
		asm.JNE.Imm32(asm.R5, lo, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 4, asm.Half),
		asm.JNE.Imm32(asm.R5, hi, "pass"),
	}
	if fc != nil {
		insns = append(insns, flowInstructions(fc)...)
	}
	if o.PassTCP {
		insns = append(insns,
			// A frame too short to hold the IPv4 protocol byte is redirected: the balancer
			// counts it as malformed.
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, ipv4ProtoOff+1),
			asm.JGT.Reg(asm.R4, asm.R3, "redirect"),
			asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
			asm.JEq.Imm(asm.R5, etherTypeIPv4LE, "ipv4"),
			asm.JNE.Imm(asm.R5, etherTypeIPv6LE, "redirect"),
			asm.LoadMem(asm.R5, asm.R2, ipv6NextOff, asm.Byte),
			asm.JEq.Imm(asm.R5, ipProtoTCP, "pass"),
			asm.Ja.Label("redirect"),
			asm.LoadMem(asm.R5, asm.R2, ipv4ProtoOff, asm.Byte).WithSymbol("ipv4"),
			asm.JEq.Imm(asm.R5, ipProtoTCP, "pass"),
		)
	}
	return append(insns,
		asm.LoadMem(asm.R2, asm.R6, xdpMdRxQueueIndex, asm.Word).WithSymbol("redirect"),
		asm.LoadMapPtr(asm.R1, xsks.FD()),
		asm.Mov.Imm(asm.R3, fallback),
		asm.FnRedirectMap.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, XDPPass).WithSymbol("pass"),
		asm.Return(),
	), nil
}

// Program is the loaded redirect program, its XSKMAP and, once Attach succeeded, its link.
type Program struct {
	prog  *ebpf.Program
	xsks  *ebpf.Map
	flows *flowMaps // nil without a flow cache
	link  link.Link
	mode  Mode

	// fmu orders the flow cache's methods, which workers and the sweep call from their own
	// goroutines, before Close; fclosed is set by Close.
	fmu     sync.RWMutex
	fclosed bool
}

// NewProgram creates an XSKMAP of queues entries and loads the redirect program for vmac.
func NewProgram(vmac net.HardwareAddr, queues int, o ProgramOptions) (*Program, error) {
	return newProgram(vmac, queues, o, XDPPass)
}

func newProgram(vmac net.HardwareAddr, queues int, o ProgramOptions, fallback int32) (*Program, error) {
	if queues <= 0 {
		queues = 1
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "l2lb_xsks", Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4,
		MaxEntries: uint32(queues)})
	if err != nil {
		return nil, fmt.Errorf("%w: XSKMAP: %w", ErrUnavailable, err)
	}
	var fc *flowMaps
	if o.FlowCache > 0 {
		if fc, err = newFlowMaps(o.FlowCache); err != nil {
			m.Close()
			return nil, err
		}
	}
	closeMaps := func() {
		m.Close()
		if fc != nil {
			fc.close()
		}
	}
	insns, err := instructions(vmac, m, fc, o, fallback)
	if err != nil {
		closeMaps()
		return nil, err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "l2lb_redirect", Type: ebpf.XDP,
		Instructions: insns, License: "Apache-2.0"})
	if err != nil {
		closeMaps()
		return nil, fmt.Errorf("%w: load: %w", ErrUnavailable, err)
	}
	return &Program{prog: prog, xsks: m, flows: fc}, nil
}

// Attach attaches the program to the interface ifindex as a BPF link, so it is detached when
// the link is closed or the process dies (fail-closed: no kernel object outlives the balancer).
// ModeAuto tries native mode, then generic mode; the mode that worked is returned. Generic XDP
// runs after GRO and sees whole super-frames, which do not fit a UMEM frame and are dropped:
// without ProgramOptions.PassTCP, check SuperFrames before relying on generic mode.
func (p *Program) Attach(ifindex int, mode Mode, log *slog.Logger) (Mode, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	try := func(m Mode) error {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: ifindex, Flags: flags})
		if err != nil {
			return err
		}
		p.link, p.mode = l, m
		return nil
	}
	switch mode {
	case ModeNative, ModeGeneric:
		if err := try(mode); err != nil {
			return 0, fmt.Errorf("%w: attach %s: %w", ErrUnavailable, mode, err)
		}
	default:
		err := try(ModeNative)
		if err == nil {
			break
		}
		log.Info("native XDP unavailable, falling back to generic mode", "ifindex", ifindex, "err", err)
		if err2 := try(ModeGeneric); err2 != nil {
			return 0, fmt.Errorf("%w: attach: native: %w; generic: %w", ErrUnavailable, err, err2)
		}
	}
	return p.mode, nil
}

// Register makes frames of receive queue queue go to the AF_XDP socket fd.
func (p *Program) Register(queue int, fd int) error {
	if err := p.xsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("afxdp: register queue %d: %w", queue, err)
	}
	return nil
}

// Run runs the program once on frame (BPF_PROG_TEST_RUN) and returns its action (XDPPass,
// XDPRedirect, ...). The frame is treated as received on queue 0.
func (p *Program) Run(frame []byte) (uint32, error) {
	ret, _, err := p.RunOut(frame)
	return ret, err
}

// RunOut is Run that also returns the frame as the program left it.
func (p *Program) RunOut(frame []byte) (uint32, []byte, error) {
	out := make([]byte, len(frame)+256)
	ret, err := p.prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		return 0, nil, fmt.Errorf("afxdp: test run: %w", err)
	}
	return ret, out[:len(frame)], nil
}

// Close detaches the program and releases the program and the map.
func (p *Program) Close() error {
	var errs []error
	if p.link != nil {
		errs = append(errs, p.link.Close())
		p.link = nil
	}
	errs = append(errs, p.prog.Close(), p.xsks.Close())
	if p.flows != nil {
		p.fmu.Lock()
		if !p.fclosed {
			p.fclosed = true
			errs = append(errs, p.flows.close())
		}
		p.fmu.Unlock()
	}
	return errors.Join(errs...)
}

// ethPAll is ETH_P_ALL in network byte order, as socket(2) and bind(2) of a packet socket
// want it.
var ethPAll = htons(unix.ETH_P_ALL)

func htons(v uint16) uint16 { return v<<8 | v>>8 }
