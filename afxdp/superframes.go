package afxdp

import (
	"errors"
	"fmt"
	"strings"

	"github.com/safchain/ethtool"
)

// ErrSuperFrames is returned by SuperFrames when frames larger than a UMEM frame can reach a
// generic-mode program on the interface (wrapped with the reasons). Such a frame is redirected
// to a socket it does not fit, and the kernel drops it (Stats.RxDropped): with TCP on AF_XDP
// (ProgramOptions.PassTCP false) every bulk TCP transfer through the balancer stalls.
var ErrSuperFrames = errors.New("afxdp: frames larger than a UMEM frame reach generic XDP here")

// superFrameFeatures are the ethtool features (ETH_SS_FEATURES names, net/ethtool/common.c)
// that merge received frames before generic XDP sees them: generic XDP runs in
// __netif_receive_skb_core, after GRO (net/core/dev.c), and this package's program is not
// frags-aware, so the kernel linearizes the merged frame and __xsk_rcv refuses it (ENOSPC,
// net/xdp/xsk.c). Native XDP runs in the driver before any of them.
var superFrameFeatures = []string{
	"rx-gro",                // software GRO
	"rx-gro-hw",             // hardware GRO
	"large-receive-offload", // LRO
	"rx-gro-list",           // fraglist GRO
	"rx-udp-gro-forwarding", // UDP GRO on the forwarding path
}

// SuperFrames reports, as an error wrapping ErrSuperFrames, why frames larger than a UMEM frame
// can reach a generic-mode program on ifname, in the calling thread's network namespace: a
// veth, whose peer hands it its senders' GSO frames whole (drivers/net/veth.c keeps the peer's
// GSO while no native program is attached, and that cannot be checked from this side), or a
// feature of superFrameFeatures turned on. It returns nil when none applies, and another error
// when the interface's driver or features cannot be read.
func SuperFrames(ifname string) error {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return fmt.Errorf("afxdp: %s: ethtool: %w", ifname, err)
	}
	defer e.Close()
	driver, err := e.DriverName(ifname)
	if err != nil {
		return fmt.Errorf("afxdp: %s: driver: %w", ifname, err)
	}
	if driver == "veth" {
		return fmt.Errorf("%w: %s is a veth, whose peer passes its senders' TCP segmentation (TSO/GSO) through", ErrSuperFrames, ifname)
	}
	features, err := e.Features(ifname)
	if err != nil {
		return fmt.Errorf("afxdp: %s: features: %w", ifname, err)
	}
	var on []string
	for _, f := range superFrameFeatures {
		if features[f] {
			on = append(on, f)
		}
	}
	if len(on) > 0 {
		return fmt.Errorf("%w: %s has %s on (turn off with ethtool -K %s %s)", ErrSuperFrames, ifname, strings.Join(on, ", "), ifname, offArgs(on))
	}
	return nil
}

// offArgs are the ethtool -K arguments that turn the features off, with ethtool's short names
// where it has them.
func offArgs(features []string) string {
	short := map[string]string{"rx-gro": "gro", "large-receive-offload": "lro"}
	args := make([]string, 0, len(features))
	for _, f := range features {
		if n, ok := short[f]; ok {
			f = n
		}
		args = append(args, f+" off")
	}
	return strings.Join(args, " ")
}
