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
	p, err := NewProgram(testVMAC, queues)
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
		if _, err := Instructions(mac, nil); !errors.Is(err, ErrBadMAC) {
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
	p, err := newProgram(testVMAC, 1, xdpTX)
	if err != nil {
		e2e.Prereq(f, "BPF unavailable: %v", err)
	}
	f.Cleanup(func() { p.Close() })
	f.Add(ethFrame(testVMAC, clientMAC, 0x0800, 1))
	f.Add(ethFrame(otherMAC, clientMAC, 0x0806, 2))
	f.Add(append(append([]byte(nil), testVMAC...), make([]byte, 8)...))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 4000 {
			return
		}
		got, err := p.Run(frame)
		if err != nil {
			t.Fatal(err)
		}
		want := uint32(XDPPass)
		if bytes.Equal(frame[:6], testVMAC) {
			want = xdpTX
		}
		if got != want {
			t.Fatalf("frame %x: action %d, want %d", frame[:14], got, want)
		}
	})
}
