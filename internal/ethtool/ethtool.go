// Package ethtool reads and sets a network interface's channel (queue) counts with the
// SIOCETHTOOL ioctl (ETHTOOL_GCHANNELS, ETHTOOL_SCHANNELS; include/uapi/linux/ethtool.h), in
// the calling thread's network namespace. It is what `ethtool -l` and `ethtool -L` do, without
// the ethtool binary: the AF_XDP backend needs the count of receive queues in use, and the
// bench sets a veth's count to its worker count.
package ethtool

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNotSupported is returned when the interface's driver has no channel operations
// (EOPNOTSUPP).
var ErrNotSupported = errors.New("ethtool: the driver does not report channels")

// Channels are an interface's channel counts: the most it supports and the counts in use.
// Rx and Tx channels have one queue each; a combined channel has a receive and a transmit
// queue.
type Channels struct {
	MaxRx, MaxTx, MaxOther, MaxCombined uint32
	Rx, Tx, Other, Combined             uint32
}

// RxQueues returns the number of receive queues in use: the rx and combined channels.
func (c Channels) RxQueues() int { return int(c.Rx + c.Combined) }

// ethtoolChannels is struct ethtool_channels.
type ethtoolChannels struct {
	cmd uint32
	Channels
}

// ifreqData is struct ifreq with ifr_data, as SIOCETHTOOL takes it: the name, then a pointer
// in the union, padded to the union's 24 bytes.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// Get returns the channel counts of the interface.
func Get(ifname string) (Channels, error) {
	ch := ethtoolChannels{cmd: unix.ETHTOOL_GCHANNELS}
	if err := ioctl(ifname, &ch); err != nil {
		return Channels{}, fmt.Errorf("ethtool: %s: get channels: %w", ifname, err)
	}
	return ch.Channels, nil
}

// Set sets the channel counts in use to c's Rx, Tx, Other and Combined (the Max fields are
// ignored). The driver may refuse counts beyond its maxima or, on a veth, a count its peer
// cannot match.
func Set(ifname string, c Channels) error {
	ch := ethtoolChannels{cmd: unix.ETHTOOL_SCHANNELS, Channels: Channels{Rx: c.Rx, Tx: c.Tx, Other: c.Other, Combined: c.Combined}}
	if err := ioctl(ifname, &ch); err != nil {
		return fmt.Errorf("ethtool: %s: set channels rx %d tx %d combined %d: %w", ifname, c.Rx, c.Tx, c.Combined, err)
	}
	return nil
}

func ioctl(ifname string, ch *ethtoolChannels) error {
	if len(ifname) >= unix.IFNAMSIZ {
		return errors.New("interface name too long")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	var ifr ifreqData
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(ch)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	switch errno {
	case 0:
		return nil
	case unix.EOPNOTSUPP:
		return ErrNotSupported
	default:
		return errno
	}
}
