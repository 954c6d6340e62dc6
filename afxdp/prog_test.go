package afxdp

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/l2lb/l2lb/internal/e2e"
)

var (
	testVMAC  = net.HardwareAddr{0x02, 0x4c, 0x32, 0x4c, 0x42, 0x01}
	otherMAC  = net.HardwareAddr{0x02, 0x4c, 0x32, 0x4c, 0x42, 0x02}
	clientMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99}
)

// ethFrame returns a 60-byte IPv4 Ethernet frame from src to dst (no valid IP inside: the
// program looks only at the destination MAC).
func ethFrame(dst, src net.HardwareAddr, ethertype uint16, seq byte) []byte {
	f := make([]byte, 60)
	copy(f, dst)
	copy(f[6:], src)
	f[12], f[13] = byte(ethertype>>8), byte(ethertype)
	for i := 14; i < len(f); i++ {
		f[i] = seq
	}
	return f
}

// newTestProgram loads the program, or fails (CI=true) / skips when BPF is unavailable.
func newTestProgram(t *testing.T, queues int) *Program {
	t.Helper()
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "loading XDP programs needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	p, err := NewProgram(testVMAC, queues, ProgramOptions{})
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			e2e.Prereq(t, "BPF unavailable: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestInstructionsRejectBadMAC(t *testing.T) {
	for _, mac := range []net.HardwareAddr{nil, {1, 2, 3}, {0x01, 0, 0x5e, 0, 0, 1}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}} {
		if _, err := Instructions(mac, nil, ProgramOptions{}); !errors.Is(err, ErrBadMAC) {
			t.Errorf("Instructions(%v) = %v, want ErrBadMAC", mac, err)
		}
	}
}

// TestProgramPassesWithoutSocket runs the program on crafted frames: without a socket in the
// XSKMAP every frame passes, the virtual MAC's included (the redirect's fallback action), and
// frames that differ from the virtual MAC in any byte pass without a lookup. The redirect case
// needs a bound socket and is tested in TestSocketOnVeth.
func TestProgramPassesWithoutSocket(t *testing.T) {
	p := newTestProgram(t, 1)
	frames := map[string][]byte{
		"virtual MAC, empty map": ethFrame(testVMAC, clientMAC, 0x0800, 1),
		"other unicast":          ethFrame(otherMAC, clientMAC, 0x0800, 2),
		"broadcast ARP":          ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, clientMAC, 0x0806, 3),
	}
	for i := 0; i < 6; i++ { // one byte off in each position
		mac := append(net.HardwareAddr(nil), testVMAC...)
		mac[i] ^= 0x10
		frames["MAC byte "+string(rune('0'+i))+" differs"] = ethFrame(mac, clientMAC, 0x0800, 4)
	}
	for name, f := range frames {
		got, err := p.Run(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != XDPPass {
			t.Errorf("%s: action %d, want XDP_PASS (%d)", name, got, XDPPass)
		}
	}
}

func TestProgramVerifies(t *testing.T) {
	p := newTestProgram(t, 4)
	info, err := p.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != ebpf.XDP {
		t.Fatalf("program type %v", info.Type)
	}
}

func TestModeString(t *testing.T) {
	for m, want := range map[Mode]string{ModeAuto: "auto", ModeNative: "native", ModeGeneric: "generic", Mode(9): "Mode(9)"} {
		if m.String() != want {
			t.Errorf("%d: %q", int(m), m.String())
		}
	}
}

// xdpTX is XDP_TX (enum xdp_action), used as the "matched" fallback of the fuzz program: with
// an empty XSKMAP, a frame to the virtual MAC then returns it and every other frame XDP_PASS.
const xdpTX = 3

// FuzzProgramMatchesOracle checks the program's MAC comparison against Go's on arbitrary
// frames (BPF_PROG_TEST_RUN needs at least an Ethernet header's 14 bytes).
func FuzzProgramMatchesOracle(f *testing.F) {
	if os.Geteuid() != 0 {
		e2e.Prereq(f, "loading XDP programs needs root")
	}
	p, err := newProgram(testVMAC, 1, ProgramOptions{}, xdpTX)
	if err != nil {
		e2e.Prereq(f, "BPF unavailable: %v", err)
	}
	f.Cleanup(func() { p.Close() })
	f.Add(ethFrame(testVMAC, clientMAC, 0x0800, 1))
	f.Add(ethFrame(otherMAC, clientMAC, 0x0806, 2))
	f.Add(append(append([]byte(nil), testVMAC...), make([]byte, 8)...))
	pt, err := newProgram(testVMAC, 1, ProgramOptions{PassTCP: true}, xdpTX)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { pt.Close() })
	f.Add(ipFrame(0x0800, ipProtoTCP, 60))
	f.Add(ipFrame(0x86dd, ipProtoTCP, 60))
	f.Add(ipFrame(0x86dd, 0, 60))
	f.Add(ipFrame(0x0800, ipProtoTCP, 23))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 4000 {
			return
		}
		for _, tc := range []struct {
			p       *Program
			passTCP bool
		}{{p, false}, {pt, true}} {
			got, err := tc.p.Run(frame)
			if err != nil {
				t.Fatal(err)
			}
			if want := steerOracle(frame, tc.passTCP); got != want {
				t.Fatalf("PassTCP %v, frame %x: action %d, want %d", tc.passTCP, frame[:min(len(frame), 24)], got, want)
			}
		}
	})
}

// steerOracle is the program's decision written in Go: XDP_PASS for frames to another MAC and,
// with passTCP, for TCP over IPv4 or over IPv6 without extension headers; xdpTX (the fuzz
// program's stand-in for a redirect) for the rest.
func steerOracle(frame []byte, passTCP bool) uint32 {
	if !bytes.Equal(frame[:6], testVMAC) {
		return XDPPass
	}
	if passTCP && len(frame) >= ipv4ProtoOff+1 {
		switch {
		case frame[12] == 0x08 && frame[13] == 0x00 && frame[ipv4ProtoOff] == ipProtoTCP,
			frame[12] == 0x86 && frame[13] == 0xdd && frame[ipv6NextOff] == ipProtoTCP:
			return XDPPass
		}
	}
	return xdpTX
}

// ipFrame returns an n-byte frame to the virtual MAC with the ethertype and, where the frame
// is long enough, proto as the IPv4 protocol or IPv6 next header.
func ipFrame(ethertype uint16, proto byte, n int) []byte {
	f := ethFrame(testVMAC, clientMAC, ethertype, 0)
	f = append(f, make([]byte, max(0, n-len(f)))...)[:n]
	off := ipv4ProtoOff
	if ethertype == 0x86dd {
		off = ipv6NextOff
	}
	if off < n {
		f[off] = proto
	}
	return f
}

// TestProgramPassesTCP checks the steering of ProgramOptions.PassTCP on crafted frames: TCP
// over IPv4 and over IPv6 goes to the kernel; UDP, ICMP, IPv6 with an extension header first,
// VLAN-tagged and too-short frames are redirected (the fallback code stands in for the
// redirect, as the XSKMAP is empty); frames to other MACs pass as without the option.
func TestProgramPassesTCP(t *testing.T) {
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "loading XDP programs needs root")
	}
	p, err := newProgram(testVMAC, 1, ProgramOptions{PassTCP: true}, xdpTX)
	if err != nil {
		e2e.Prereq(t, "BPF unavailable: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	other := ipFrame(0x0800, ipProtoTCP, 60)
	copy(other, otherMAC)
	for name, tc := range map[string]struct {
		frame []byte
		want  uint32
	}{
		"IPv4 TCP":             {ipFrame(0x0800, ipProtoTCP, 60), XDPPass},
		"IPv6 TCP":             {ipFrame(0x86dd, ipProtoTCP, 74), XDPPass},
		"IPv4 UDP":             {ipFrame(0x0800, 17, 60), xdpTX},
		"IPv4 ICMP":            {ipFrame(0x0800, 1, 60), xdpTX},
		"IPv6 UDP":             {ipFrame(0x86dd, 17, 74), xdpTX},
		"IPv6 hop-by-hop":      {ipFrame(0x86dd, 0, 74), xdpTX},
		"VLAN":                 {ipFrame(0x8100, ipProtoTCP, 64), xdpTX},
		"ARP to the VIP's MAC": {ipFrame(0x0806, ipProtoTCP, 60), xdpTX},
		"IPv4 TCP, 23 bytes":   {ipFrame(0x0800, ipProtoTCP, 23), xdpTX},
		"IPv4 TCP, 24 bytes":   {ipFrame(0x0800, ipProtoTCP, 24), XDPPass},
		"TCP to another MAC":   {other, XDPPass},
	} {
		got, err := p.Run(tc.frame)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != tc.want {
			t.Errorf("%s: action %d, want %d", name, got, tc.want)
		}
	}
}
