package node

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/afxdp"
	"github.com/mdlayher/arp"
	"github.com/vishvananda/netlink"
)

// ErrSuperFrames is afxdp.ErrSuperFrames: OpenXDPWith returns it, wrapped, when the program
// attached in generic mode with TCP on AF_XDP on an interface where frames larger than a UMEM
// frame arrive (afxdp.SuperFrames), which the kernel would drop.
var ErrSuperFrames = afxdp.ErrSuperFrames

// ErrFlowCacheVeth is returned, wrapped, by OpenXDPWith for a flow cache with the program
// attached natively to a veth: a native veth program's XDP_TX hands the frame to the peer's
// NAPI, which the peer only has with GRO on or an XDP program of its own (drivers/net/veth.c,
// veth_xdp_xmit); otherwise every datagram the cache forwards is dropped. l2lb bench pps with
// --xdp-tcp xsk --xdp-flows measured exactly that: 1.000 of the frames lost (issue 14).
var ErrFlowCacheVeth = errors.New("node: the XDP flow cache on a veth needs generic XDP")

// ErrQueues is returned by OpenXDP when the interface has more receive queues than workers: an
// AF_XDP socket serves one queue, and frames of a queue without one would be lost (the kernel
// drops frames to the virtual MAC as PACKET_OTHERHOST).
var ErrQueues = errors.New("node: AF_XDP needs a worker per receive queue")

// XDPConfig are the AF_XDP backend's own settings.
type XDPConfig struct {
	// Mode is how the XDP program is attached (default afxdp.ModeAuto: native, else generic;
	// generic on a veth with TCPToKernel).
	Mode afxdp.Mode
	// KeepPartialChecksums turns off the completion of the partial TCP/UDP checksums of
	// same-host senders (afxdp.Config.FixPartialChecksums), for links where every frame comes
	// from the wire with its checksum complete.
	KeepPartialChecksums bool
	// TCPToKernel leaves TCP frames to the kernel (afxdp.ProgramOptions.PassTCP), where GRO
	// merges them, and opens c.Workers AF_PACKET rings, limited to frames to the virtual MAC,
	// that forward them whole; UDP and the rest stay on AF_XDP.
	TCPToKernel bool
	// FlowCache is the size, in flows, of the XDP program's flow cache (afxdp, flows.go), which
	// forwards the datagrams of known UDP flows and the ACK-only segments of known TCP flows,
	// over IPv4, in the kernel; 0 turns it off.
	FlowCache int
	// Log receives the backend's events (nil: discarded).
	Log *slog.Logger
}

// OpenXDP is OpenXDPWith with the default XDPConfig.
func OpenXDP(cfg OpenConfig) (Sockets, error) { return OpenXDPWith(cfg, XDPConfig{}) }

// OpenXDPWith opens the sockets of one fast-path life on the AF_XDP backend: an XDP program on
// the interface that redirects frames to the virtual MAC, one AF_XDP socket per receive queue
// (the first one also reads ARP and NDP and holds the virtual MAC's membership), and, as Open
// makes them, a transmit-only AF_PACKET socket on lo and an ARP client. It uses one worker per
// receive queue and fails with ErrQueues if there are more queues than c.Workers
// (BusyPoll, Coalesce and FanoutGroup apply only to the AF_PACKET rings of x.TCPToKernel).
// On error nothing stays open or attached.
func OpenXDPWith(c OpenConfig, x XDPConfig) (_ Sockets, err error) {
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if x.Log == nil {
		x.Log = slog.New(slog.DiscardHandler)
	}
	ifi, err := fastPathInterface(c.Interface)
	if err != nil {
		return Sockets{}, err
	}
	queues, err := rxQueues(ifi.Name)
	if err != nil {
		return Sockets{}, err
	}
	if queues > c.Workers {
		return Sockets{}, fmt.Errorf("%w: %s has %d receive queues for %d workers (raise the workers or lower the queues with ethtool -L)",
			ErrQueues, ifi.Name, queues, c.Workers)
	}
	lo, err := loopback()
	if err != nil {
		return Sockets{}, err
	}
	prog, err := afxdp.NewProgram(c.VirtualMAC, queues, afxdp.ProgramOptions{PassTCP: x.TCPToKernel, FlowCache: x.FlowCache})
	if err != nil {
		return Sockets{}, fmt.Errorf("node: XDP program: %w", err)
	}
	s := Sockets{MAC: ifi.HardwareAddr}
	defer func() {
		if err != nil {
			s.Close()
			if len(s.Workers) == 0 {
				prog.Close()
			}
		}
	}()
	for q := 0; q < queues; q++ {
		xc := afxdp.Config{Ifindex: ifi.Index, Queue: q, Program: prog, Log: x.Log,
			FixPartialChecksums: !x.KeepPartialChecksums}
		if q == 0 {
			xc.Control, xc.VirtualMAC = true, c.VirtualMAC
		}
		sock, err := afxdp.Open(xc)
		if err != nil {
			return s, fmt.Errorf("node: AF_XDP on %s queue %d: %w", ifi.Name, q, err)
		}
		if q == 0 {
			// The first worker owns the program: Sockets.Close detaches it.
			s.Workers = append(s.Workers, &xdpOwner{Socket: sock, prog: prog})
		} else {
			s.Workers = append(s.Workers, sock)
		}
	}
	if x.TCPToKernel {
		// The rings see only frames to the virtual MAC: the TCP the program passes (and, in
		// the moment before it is attached, whatever reaches the kernel), never the ARP and
		// NDP the first AF_XDP socket's control socket already reads.
		filter, err := afpacket.DestinationMACFilter(c.VirtualMAC)
		if err != nil {
			return s, fmt.Errorf("node: ring filter: %w", err)
		}
		rings, err := openRings(ifi, c, filter)
		if err != nil {
			return s, err
		}
		s.Workers = append(s.Workers, rings...)
	}
	want := x.Mode
	if want == afxdp.ModeAuto && x.TCPToKernel && isVeth(ifi.Name) {
		// A native program on a veth makes the veth turn its peer's GSO off
		// (drivers/net/veth.c, veth_xdp_set), so same-host senders' TCP is cut into
		// wire-size segments before it reaches the balancer: l2lb bench tcp (issue 14) measured
		// uploads through the VIP at 0.09-0.15 of direct, against 0.56-0.90 in generic mode,
		// where the peer keeps GSO and the TCP super-frames pass to the rings whole. Generic
		// mode forwarded UDP at least as fast there. With TCP on AF_XDP generic mode would
		// drop the super-frames (they do not fit a UMEM frame), so native stays.
		want = afxdp.ModeGeneric
		x.Log.Info("AF_XDP on a veth with TCP left to the kernel: generic XDP, which keeps the peer's GSO", "interface", ifi.Name)
	}
	mode, err := prog.Attach(ifi.Index, want, x.Log)
	if err != nil {
		return s, fmt.Errorf("node: attach XDP to %s: %w", ifi.Name, err)
	}
	if mode == afxdp.ModeGeneric && !x.TCPToKernel {
		// Generic XDP sees GRO/LRO and veth GSO super-frames whole, and with TCP on AF_XDP
		// every one of them is dropped: bulk TCP through the VIP stalls while everything else
		// works (l2lb bench tcp with --xdp-tcp xsk --xdp-mode generic, issue 14: uploads
		// almost nothing). Refused rather than warned about; an interface whose driver or
		// features cannot be read is allowed with a warning.
		switch err := afxdp.SuperFrames(ifi.Name); {
		case errors.Is(err, afxdp.ErrSuperFrames):
			return s, fmt.Errorf("node: generic XDP with TCP on AF_XDP: %w; use --xdp-tcp kernel, or native XDP (--xdp-mode native) where the driver has it", err)
		case err != nil:
			x.Log.Warn("generic XDP with TCP on AF_XDP: cannot check for super-frames, which would be dropped", "interface", ifi.Name, "err", err)
		}
	}
	if prog.FlowCache() && mode == afxdp.ModeNative && isVeth(ifi.Name) {
		return s, fmt.Errorf("%w: %s is a veth with native XDP, whose XDP_TX its peer drops without GRO or an XDP program of its own; use --xdp-mode generic (with --xdp-tcp kernel on a veth), or --xdp-flows 0", ErrFlowCacheVeth, ifi.Name)
	}
	s.Info = SocketsInfo{Backend: "afxdp", Queues: queues, XDPMode: mode.String(), TCP: "xsk",
		ZeroCopy: s.Workers[0].(*xdpOwner).ZeroCopy()}
	if x.TCPToKernel {
		s.Info.TCP = "kernel"
	}
	if prog.FlowCache() {
		s.Flows, s.Info.FlowCache = prog, x.FlowCache
	}
	x.Log.Info("AF_XDP backend", "interface", ifi.Name, "queues", queues, "mode", s.Info.XDPMode,
		"zerocopy", s.Info.ZeroCopy, "tcp", s.Info.TCP, "flow_cache", s.Info.FlowCache, "sockets", len(s.Workers))
	loSock, err := afpacket.Open(afpacket.Config{Ifindex: lo.Index, Protocol: 0, VnetHdr: true})
	if err != nil {
		return s, fmt.Errorf("node: open %s: %w", lo.Name, err)
	}
	s.Lo = loSock
	client, err := arp.Dial(ifi)
	if err != nil {
		return s, fmt.Errorf("node: ARP client on %s: %w", ifi.Name, err)
	}
	s.ARP = &resolver{ifi: ifi, arp: client, timeout: ResolveTimeout}
	return s, nil
}

// isVeth reports whether the interface is a veth.
func isVeth(name string) bool {
	l, err := netlink.LinkByName(name)
	return err == nil && l.Type() == "veth"
}

// xdpOwner is the first worker's socket; closing it also detaches and frees the XDP program.
type xdpOwner struct {
	*afxdp.Socket
	prog *afxdp.Program
}

// Close closes the socket, then the program.
func (o *xdpOwner) Close() error { return errors.Join(o.Socket.Close(), o.prog.Close()) }

// rxQueues returns the number of receive queues the interface uses now (afxdp.RxQueues), with
// the count netlink reports (IFLA_NUM_RX_QUEUES, read over netlink because /sys/class/net shows
// the namespace sysfs was mounted in, not the caller's) for drivers without ethtool channels.
func rxQueues(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %w", ErrNoInterface, name, err)
	}
	n, err := afxdp.RxQueues(name, l.Attrs().NumRxQueues)
	if err != nil {
		return 0, fmt.Errorf("node: %w", err)
	}
	return n, nil
}
