package afpacket

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// synthBlock lays frames out as the kernel does in a V3 block
// (if_packet.h): block descriptor, then tpacket3_hdr + sockaddr_ll + the
// virtio_net_hdr (if vnet) + frame, each at tp_next_offset.
func synthBlock(size int, vnet bool, frames [][]byte, status []uint32) []byte {
	ne := binary.NativeEndian
	b := make([]byte, size)
	ne.PutUint32(b[bdStatusOff:], unix.TP_STATUS_USER)
	ne.PutUint32(b[bdNumPktsOff:], uint32(len(frames)))
	ne.PutUint32(b[bdFirstPktOff:], bdHdrLen)
	off := bdHdrLen
	for i, f := range frames {
		mac := 80 // TPACKET_ALIGN(68 + 16)
		if vnet {
			mac += VnetHdrLen
		}
		h := b[off:]
		ne.PutUint32(h[thSnaplenOff:], uint32(len(f)))
		ne.PutUint32(h[thLenOff:], uint32(len(f)))
		ne.PutUint32(h[thStatusOff:], status[i])
		ne.PutUint16(h[thMacOff:], uint16(mac))
		ne.PutUint32(h[thVlanTCIOff:], 100+uint32(i))
		h[sllPktTypeOff] = byte(i)
		if vnet {
			h[mac-VnetHdrLen] = 0xa0 + byte(i)
		}
		copy(h[mac:], f)
		next := (mac + len(f) + 15) &^ 15
		if i < len(frames)-1 {
			ne.PutUint32(h[thNextOff:], uint32(next))
		}
		off += next
	}
	return b
}

func TestWalkBlock(t *testing.T) {
	frames := [][]byte{bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 1514), bytes.Repeat([]byte{3}, 14)}
	status := []uint32{unix.TP_STATUS_USER, unix.TP_STATUS_CSUMNOTREADY, unix.TP_STATUS_VLAN_VALID}
	for _, vnet := range []bool{false, true} {
		b := synthBlock(8192, vnet, frames, status)
		var f Frame
		i := 0
		n := walkBlock(b, vnet, &f, func(f *Frame) {
			if !bytes.Equal(f.Data, frames[i]) || f.PktType != byte(i) {
				t.Errorf("vnet=%v frame %d: data/pkttype mismatch", vnet, i)
			}
			if f.CsumNotReady != (i == 1) || f.VLANValid != (i == 2) || f.Truncated {
				t.Errorf("vnet=%v frame %d: flags %+v", vnet, i, f)
			}
			if f.VLANValid && f.VLANTCI != 102 {
				t.Errorf("VLAN TCI %d", f.VLANTCI)
			}
			if vnet && (len(f.VnetHdr) != VnetHdrLen || f.VnetHdr[0] != 0xa0+byte(i) || len(f.SendBuf()) != len(f.Data)+VnetHdrLen) {
				t.Errorf("frame %d: VnetHdr %x", i, f.VnetHdr)
			}
			if !vnet && (f.VnetHdr != nil || len(f.SendBuf()) != len(f.Data)) {
				t.Errorf("frame %d: VnetHdr present without vnet", i)
			}
			// Appending to Data must not overwrite the next frame.
			if cap(f.Data) != len(f.Data) {
				t.Errorf("frame %d: cap %d > len %d", i, cap(f.Data), len(f.Data))
			}
			i++
		})
		if n != len(frames) || i != len(frames) {
			t.Errorf("vnet=%v: walked %d frames, want %d", vnet, n, len(frames))
		}
	}
	// A frame that claims to run past the block ends the walk.
	b := synthBlock(4096, false, frames[:1], status)
	binary.NativeEndian.PutUint32(b[bdHdrLen+thSnaplenOff:], 1<<20)
	var f Frame
	if n := walkBlock(b, false, &f, func(*Frame) { t.Error("callback for a frame outside the block") }); n != 0 {
		t.Errorf("walked %d", n)
	}
}

// FuzzWalkBlock: whatever the block holds, the walk neither panics nor
// hands out bytes outside the block's frame area.
func FuzzWalkBlock(f *testing.F) {
	f.Add(synthBlock(4096, true, [][]byte{make([]byte, 60), make([]byte, 100)}, []uint32{0, 0}), true)
	f.Add(synthBlock(4096, false, [][]byte{make([]byte, 1500)}, []uint32{0}), false)
	f.Fuzz(func(t *testing.T, b []byte, vnet bool) {
		var fr Frame
		walkBlock(b, vnet, &fr, func(fr *Frame) {
			if len(fr.Data) > len(b) || len(fr.SendBuf()) < len(fr.Data) {
				t.Fatalf("bad frame slices: data %d wire %d block %d", len(fr.Data), len(fr.SendBuf()), len(b))
			}
			if vnet && len(fr.VnetHdr) != VnetHdrLen {
				t.Fatalf("VnetHdr length %d", len(fr.VnetHdr))
			}
		})
	})
}
