package afxdp

import (
	"errors"
	"fmt"

	"github.com/safchain/ethtool"
	"golang.org/x/sys/unix"
)

// ErrQueueCount is returned by RxQueues when the interface's receive-queue count cannot be
// read (wrapped with the reason).
var ErrQueueCount = errors.New("afxdp: cannot read the receive-queue count")

// RxQueues returns the number of receive queues the interface uses now (its rx and combined
// ethtool channels, ETHTOOL_GCHANNELS), in the calling thread's network namespace. That is
// the count that matters for AF_XDP, one socket per queue in use, and it is not the count
// netlink reports (IFLA_NUM_RX_QUEUES, the most the device was created with): a veth is
// created with a queue per possible CPU but uses one unless told otherwise
// (drivers/net/veth.c, veth_init_queues), and `ethtool -L` changes the count in use on NICs.
// fallback is returned for a driver without channel operations (EOPNOTSUPP), which uses all
// the queues it was created with.
func RxQueues(ifname string, fallback int) (int, error) {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %w", ErrQueueCount, ifname, err)
	}
	defer e.Close()
	c, err := e.GetChannels(ifname)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return max(fallback, 1), nil
	case err != nil:
		return 0, fmt.Errorf("%w: %s: %w", ErrQueueCount, ifname, err)
	case c.RxCount+c.CombinedCount == 0:
		return max(fallback, 1), nil
	}
	return int(c.RxCount + c.CombinedCount), nil
}
