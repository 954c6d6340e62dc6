package afpacket

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethHdrLen is the Ethernet II header length (IEEE 802.3 clause 3.1.1):
// destination, source, ethertype.
const ethHdrLen = 14

func (s *Socket) minFrame() int {
	if s.vnet {
		return VnetHdrLen + ethHdrLen
	}
	return ethHdrLen
}

// Send transmits one frame on the bound interface. With VnetHdr on, b must
// start with the 10-byte virtio_net_hdr (Frame.SendBuf, or ZeroVnetHdr in
// front of an ordinary frame). It does not allocate.
func (s *Socket) Send(b []byte) error {
	if len(b) < s.minFrame() {
		return ErrShortFrame
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	s.txBuf = b
	err := s.rc.Write(s.writeFn)
	s.txBuf = nil
	if err != nil {
		return s.mapErr(err)
	}
	if err := s.txErr; err != nil {
		s.txErr = nil
		return fmt.Errorf("afpacket: send: %w", err)
	}
	return nil
}

// writeOne is the RawConn.Write callback of Send: false (wait for the
// poll(2)) only while the socket's send buffer is full.
func (s *Socket) writeOne(fd uintptr) bool {
	_, err := unix.Write(int(fd), s.txBuf)
	if err == unix.EAGAIN {
		return false
	}
	s.txErr = err
	return true
}

// SendBatch transmits frames with as few sendmmsg(2) calls as possible
// (one per 64 frames) and returns how many were sent. Each frame follows the
// rules of Send. It does not allocate; the caller should reuse its slice.
func (s *Socket) SendBatch(frames [][]byte) (int, error) {
	minLen := s.minFrame()
	for _, f := range frames {
		if len(f) < minLen {
			return 0, ErrShortFrame
		}
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	if s.closed.Load() {
		return 0, ErrClosed
	}
	sent := 0
	var err error
	for sent < len(frames) {
		n := len(frames) - sent
		if n > maxBatch {
			n = maxBatch
		}
		for i, f := range frames[sent : sent+n] {
			s.iovs[i].Base = &f[0]
			s.iovs[i].SetLen(len(f))
		}
		s.txN = n
		if werr := s.rc.Write(s.writeMFn); werr != nil {
			err = s.mapErr(werr)
			break
		}
		if s.txErr != nil {
			err = fmt.Errorf("afpacket: sendmmsg: %w", s.txErr)
			s.txErr = nil
			break
		}
		sent += s.txSent
	}
	// Drop the references to the caller's buffers.
	for i := range s.iovs {
		s.iovs[i].Base = nil
	}
	return sent, err
}

// writeMany is the RawConn.Write callback of SendBatch.
func (s *Socket) writeMany(fd uintptr) bool {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.msgs[0])), uintptr(s.txN), 0, 0, 0)
	switch e {
	case 0:
		s.txSent = int(r)
	case unix.EAGAIN:
		return false
	default:
		s.txSent, s.txErr = 0, e
	}
	return true
}
