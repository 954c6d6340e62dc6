package election

import (
	"errors"
	"fmt"
	"os"
	"slices"
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

// Overlaps reports every pair of live members whose announced source-port
// ranges overlap, names in each pair and the pairs themselves sorted. Members
// with no range (both bounds zero) are skipped. An overlap means replies to
// outgoing connections cannot be attributed to one frontend (seed step 7),
// so the operator must be told.
func Overlaps(v View) [][2]string {
	var ms []Member
	for _, m := range v.Members {
		if m.Alive && (m.PortLo != 0 || m.PortHi != 0) {
			ms = append(ms, m)
		}
	}
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	var out [][2]string
	for i := range ms {
		for j := i + 1; j < len(ms); j++ {
			a, b := ms[i], ms[j]
			if a.PortLo <= b.PortHi && b.PortLo <= a.PortHi {
				out = append(out, [2]string{a.Name, b.Name})
			}
		}
	}
	return out
}
