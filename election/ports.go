package election

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// LocalPortRangePath is the sysctl file with the node's ephemeral source-port
// range (net.ipv4.ip_local_port_range, Documentation/networking/ip-sysctl.rst).
const LocalPortRangePath = "/proc/sys/net/ipv4/ip_local_port_range"

// ErrPortRange reports a malformed ip_local_port_range value.
var ErrPortRange = errors.New("election: malformed ip_local_port_range")

// LocalPortRange reads this node's ip_local_port_range (seed setup step 7:
// every frontend has its own range so replies reaching the VIP can be handed
// to the frontend that opened the connection). It only reads the sysctl.
func LocalPortRange() (lo, hi uint16, err error) {
	b, err := os.ReadFile(LocalPortRangePath)
	if err != nil {
		return 0, 0, err
	}
	return ParsePortRange(string(b))
}

// ParsePortRange parses the two whitespace-separated numbers of
// ip_local_port_range, first not above second.
func ParsePortRange(s string) (lo, hi uint16, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("%w: %q", ErrPortRange, s)
	}
	a, err1 := strconv.ParseUint(f[0], 10, 16)
	b, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || a > b || a == 0 {
		return 0, 0, fmt.Errorf("%w: %q", ErrPortRange, s)
	}
	return uint16(a), uint16(b), nil
}
