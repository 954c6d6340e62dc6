package afpacket

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// plainBuf holds the largest frame the stack hands a packet socket: an IPv4
// or IPv6 GSO/GRO packet of up to 64 KiB plus link headers and the
// virtio_net_hdr, rounded up.
const plainBuf = 1 << 17

// sizeofTpacketAuxdata is sizeof(struct tpacket_auxdata), if_packet.h.
const sizeofTpacketAuxdata = 20

// plainBatch bounds how many frames one ring-less Receive call reads.
const plainBatch = 64

// plainState is the ring-less receive path: one recvmsg(2) per frame with
// PACKET_AUXDATA for the status bits a ring header would carry.
type plainState struct {
	buf    []byte
	oob    [8]uint64 // uint64 for the alignment struct cmsghdr needs
	sa     unix.RawSockaddrLinklayer
	iov    unix.Iovec
	msg    unix.Msghdr
	n      int
	err    error
	noWait bool
	readFn func(uintptr) bool
}

func (p *plainState) init() {
	p.buf = make([]byte, plainBuf)
	p.iov.Base = &p.buf[0]
	p.iov.SetLen(len(p.buf))
	p.msg.Name = (*byte)(unsafe.Pointer(&p.sa))
	p.msg.Iov = &p.iov
	p.msg.SetIovlen(1)
	p.msg.Control = (*byte)(unsafe.Pointer(&p.oob[0]))
	p.readFn = p.read
}

// read is the RawConn.Read callback: it waits for the first frame only.
func (p *plainState) read(fd uintptr) bool {
	p.msg.Namelen = unix.SizeofSockaddrLinklayer
	p.msg.SetControllen(int(unsafe.Sizeof(p.oob)))
	// MSG_TRUNC makes the kernel return the frame's full length, so a
	// frame larger than the buffer is reported as truncated.
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&p.msg)), unix.MSG_TRUNC)
	switch {
	case e == unix.EAGAIN && !p.noWait:
		return false
	case e != 0:
		p.err = e
	default:
		p.n, p.err = int(r), nil
	}
	return true
}

// receive reads up to plainBatch frames. Every frame lands in the same
// buffer, so done runs after each one: a caller that queued the frame in fn
// must send it before the next recvmsg overwrites it.
func (p *plainState) receive(s *Socket, fn func(*Frame), done func()) (int, error) {
	n := 0
	for p.noWait = false; n < plainBatch; p.noWait = true {
		if err := s.rc.Read(p.readFn); err != nil {
			return n, s.mapErr(err)
		}
		if p.err == unix.EAGAIN {
			break
		}
		if p.err != nil {
			return n, fmt.Errorf("afpacket: recvmsg: %w", p.err)
		}
		if p.deliver(s.vnet, &s.frame) {
			fn(&s.frame)
			if done != nil {
				done()
			}
			s.frame = Frame{}
			n++
		}
	}
	return n, nil
}

// deliver fills f from the last recvmsg; false means nothing usable.
func (p *plainState) deliver(vnet bool, f *Frame) bool {
	stored := p.n
	if stored > len(p.buf) {
		stored = len(p.buf)
	}
	first := 0
	if vnet {
		first = VnetHdrLen
	}
	if stored < first {
		return false
	}
	*f = Frame{
		Data:      p.buf[first:stored:stored],
		PktType:   p.sa.Pkttype,
		Truncated: p.n > len(p.buf),
		wire:      p.buf[:stored:stored],
	}
	if vnet {
		f.VnetHdr = p.buf[:first:stored]
	}
	// struct tpacket_auxdata in a SOL_PACKET/PACKET_AUXDATA control message.
	ne := binary.NativeEndian
	hl := unix.CmsgLen(0)
	if int(p.msg.Controllen) >= hl+sizeofTpacketAuxdata {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&p.oob[0]))
		if h.Level == unix.SOL_PACKET && h.Type == unix.PACKET_AUXDATA {
			a := unsafe.Slice((*byte)(unsafe.Pointer(&p.oob[0])), unsafe.Sizeof(p.oob))[hl:]
			status := ne.Uint32(a[0:])
			f.CsumNotReady = status&unix.TP_STATUS_CSUMNOTREADY != 0
			f.VLANValid = status&unix.TP_STATUS_VLAN_VALID != 0
			if f.VLANValid {
				f.VLANTCI = ne.Uint16(a[16:])
			}
			if ne.Uint32(a[8:]) < ne.Uint32(a[4:]) {
				f.Truncated = true
			}
		}
	}
	return true
}
