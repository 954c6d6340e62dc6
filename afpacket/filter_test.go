package afpacket

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/bpf"
)

func TestDestinationMACFilterBadMAC(t *testing.T) {
	for _, mac := range []net.HardwareAddr{nil, {}, {1, 2, 3, 4, 5}, {1, 2, 3, 4, 5, 6, 7, 8}, make(net.HardwareAddr, 20)} {
		if prog, err := DestinationMACFilter(mac); !errors.Is(err, ErrInvalidConfig) || prog != nil {
			t.Errorf("DestinationMACFilter(%v) = %v, %v; want nil, ErrInvalidConfig", mac, prog, err)
		}
	}
}

// Open rejects a filter on a transmit-only socket and one longer than the
// kernel accepts, before it creates a socket (so this needs no privilege).
func TestFilterConfigValidation(t *testing.T) {
	prog, err := DestinationMACFilter(virtualMAC)
	if err != nil {
		t.Fatal(err)
	}
	long := make([]bpf.RawInstruction, maxFilterLen+1)
	for name, cfg := range map[string]Config{
		"tx-only filter":  {Ifindex: 1, Filter: prog},
		"filter too long": {Ifindex: 1, Protocol: EthPAll, Ring: testRing(), Filter: long},
	} {
		if _, err := Open(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Open = %v, want ErrInvalidConfig", name, err)
		}
	}
}

// The assembled program, run in x/net/bpf's VM, keeps whole the frames to
// the MAC and drops the others, including near misses in either load.
func TestDestinationMACFilterVM(t *testing.T) {
	raw, err := DestinationMACFilter(virtualMAC)
	if err != nil {
		t.Fatal(err)
	}
	insns, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatalf("program does not disassemble: %v", insns)
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	src := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	for _, c := range []struct {
		name  string
		frame []byte
		want  uint32
	}{
		{"to the MAC", testFrame(virtualMAC, src, 1, 64), acceptWhole},
		{"6 bytes, the MAC", []byte(virtualMAC), acceptWhole},
		{"last byte differs", testFrame(net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x00, 0x02}, src, 2, 64), 0},
		{"byte 4 differs", testFrame(net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x01, 0x01}, src, 3, 64), 0},
		{"byte 3 differs", testFrame(net.HardwareAddr{0x02, 0x00, 0x5e, 0x11, 0x00, 0x01}, src, 4, 64), 0},
		{"first byte differs", testFrame(net.HardwareAddr{0x03, 0x00, 0x5e, 0x10, 0x00, 0x01}, src, 5, 64), 0},
		{"broadcast", testFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src, 6, 64), 0},
		{"MAC as source", testFrame(src, virtualMAC, 7, 64), 0},
		{"5 bytes of the MAC", []byte(virtualMAC[:5]), 0},
		{"empty", nil, 0},
	} {
		got, err := vm.Run(c.frame)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		// uint32: on a 32-bit platform Run returns acceptWhole as -1.
		if uint32(got) != c.want {
			t.Errorf("%s: filter returned %#x, want %#x", c.name, got, c.want)
		}
	}
}

// On a veth pair, a PACKET_VNET_HDR ring with DestinationMACFilter receives
// exactly the frames sent to its MAC, intact, and the kernel queues nothing
// else (Stats.Packets); an unfiltered ring on the same interface receives
// every frame, which shows the others did arrive. The filter matching at
// all shows it sees the Ethernet header, not the virtio_net_hdr, at offset 0.
func TestFilterDestinationMAC(t *testing.T) {
	const perDst = 5
	env := newVethEnv(t)
	prog, err := DestinationMACFilter(virtualMAC)
	if err != nil {
		t.Fatal(err)
	}
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, Ring: testRing(), Filter: prog})
	all := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, Ring: testRing()})
	tx := env.open(t, Config{Ifindex: env.a.Index, VnetHdr: true})

	dsts := []net.HardwareAddr{
		virtualMAC,
		env.b.HardwareAddr, // another unicast MAC, vb's own
		{0x02, 0x00, 0x5e, 0x10, 0x00, 0x02},
		{0x02, 0x00, 0x5e, 0x11, 0x00, 0x01},
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	want := map[uint64][]byte{} // the frames to virtualMAC, by sequence
	var batch [][]byte
	for i := 0; i < perDst; i++ {
		for _, dst := range dsts {
			seq := uint64(len(batch))
			f := testFrame(dst, env.a.HardwareAddr, seq, 100)
			if bytes.Equal(dst, virtualMAC) {
				want[seq] = f
			}
			batch = append(batch, withVnet(f))
		}
	}
	if sent, err := tx.SendBatch(batch); err != nil || sent != len(batch) {
		t.Fatalf("SendBatch: %d of %d, %v", sent, len(batch), err)
	}

	seenAll := map[uint64]bool{}
	receiveUntil(t, all, 5*time.Second, func(f *Frame) bool {
		if seq, ok := parseTestFrame(f.Data); ok {
			seenAll[seq] = true
		}
		return len(seenAll) == len(batch)
	})
	seen := map[uint64]bool{}
	receiveUntil(t, rx, 5*time.Second, func(f *Frame) bool {
		seq, ok := parseTestFrame(f.Data)
		if w := want[seq]; !ok || w == nil {
			t.Errorf("filtered ring received a frame that starts %x", f.Data[:min(ethHdrLen, len(f.Data))])
			return false
		} else if !bytes.Equal(f.Data, w) || len(f.VnetHdr) != VnetHdrLen || f.Truncated {
			t.Errorf("frame %d: data %x vnet %x truncated %v; want %x, a %d-byte vnet header, whole", seq, f.Data, f.VnetHdr, f.Truncated, w, VnetHdrLen)
		}
		seen[seq] = true
		return len(seen) == len(want)
	})
	// Give a stray frame time to be queued, then count what the kernel
	// queued: exactly the frames to virtualMAC.
	time.Sleep(50 * time.Millisecond)
	st, err := rx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != perDst || st.Drops != 0 {
		t.Errorf("filtered ring Stats %+v, want %d packets and no drops", st, perDst)
	}
}
