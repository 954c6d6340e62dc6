package afxdp

import (
	"errors"
	"fmt"

	"github.com/l2lb/l2lb/internal/ethtool"
)

// ErrQueueCount is returned by RxQueues when the interface's receive-queue count cannot be
// read (wrapped with the reason).
var ErrQueueCount = errors.New("afxdp: cannot read the receive-queue count")

// RxQueues returns the number of receive queues the interface uses now (its rx and combined
// ethtool channels), in the calling thread's network namespace. That is the count that
// matters for AF_XDP, one socket per queue in use, and it is not the count netlink reports
// (IFLA_NUM_RX_QUEUES, the most the device was created with): a veth is created with a queue
// per possible CPU but uses one unless told otherwise (drivers/net/veth.c, veth_init_queues),
// and `ethtool -L` changes the count in use on NICs. fallback is returned for a driver without
// channel operations, which uses all the queues it was created with.
func RxQueues(ifname string, fallback int) (int, error) {
	c, err := ethtool.Get(ifname)
	if errors.Is(err, ethtool.ErrNotSupported) || err == nil && c.RxQueues() == 0 {
		return max(fallback, 1), nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrQueueCount, err)
	}
	return c.RxQueues(), nil
}
