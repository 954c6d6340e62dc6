package hostcfg

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrManualFix reports failed findings that Apply cannot fix by itself.
var ErrManualFix = errors.New("needs a manual fix")

// ErrBadPortRange reports a port range that does not parse or has Lo > Hi or
// Lo = 0.
var ErrBadPortRange = errors.New("bad port range")

// Names of the checks, as found in Finding.Check.
const (
	CheckARPIgnore   = "arp_ignore"
	CheckARPAnnounce = "arp_announce"
	CheckRPFilter    = "rp_filter"
	CheckVIPOnLo     = "vip_on_lo"
	CheckPortRange   = "port_range"
	// CheckDisableIPv6 and CheckProxyNDP are made only when the VIPs
	// include IPv6 ones.
	CheckDisableIPv6 = "disable_ipv6"
	CheckProxyNDP    = "proxy_ndp"
)

// portRangeKey is the sysctl that bounds the source ports of outgoing
// connections; every frontend needs its own slice of it (seed, setup step 7).
const portRangeKey = "net.ipv4.ip_local_port_range"

// DefaultLocalPortRange is the kernel's default ip_local_port_range
// (Documentation/networking/ip-sysctl.rst: "32768 60999").
var DefaultLocalPortRange = PortRange{Lo: 32768, Hi: 60999}

// Finding is the result of one check of Doctor.
type Finding struct {
	Check string // one of the Check* names
	OK    bool
	Have  string // what is configured, e.g. "net.ipv4.conf.eth0.arp_ignore=0"
	Want  string // what is required, e.g. "net.ipv4.conf.eth0.arp_ignore>=1"
	// Fix is the exact command an operator would run, e.g.
	// "sysctl -w net.ipv4.conf.eth0.arp_ignore=1"; empty when OK or when the
	// state could not be read.
	Fix   string
	apply func() error // performs Fix; nil when it must be done by hand
}

// String renders the finding on one line for a report.
func (f Finding) String() string {
	if f.OK {
		return fmt.Sprintf("ok   %s: %s", f.Check, f.Have)
	}
	s := fmt.Sprintf("FAIL %s: have %s, want %s", f.Check, f.Have, f.Want)
	if f.Fix != "" {
		s += "; fix: " + f.Fix
	}
	return s
}

// PortRange is an inclusive range of TCP/UDP ports.
type PortRange struct{ Lo, Hi uint16 }

// String renders the range as "50000-54000".
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// Valid reports whether the range is non-empty and does not include port 0.
func (r PortRange) Valid() bool { return r.Lo != 0 && r.Lo <= r.Hi }

// Overlaps reports whether r and o share a port.
func (r PortRange) Overlaps(o PortRange) bool { return r.Lo <= o.Hi && o.Lo <= r.Hi }

// ParsePortRange parses "LO-HI" (as written in the seed: "50000-54000") or
// "LO HI" (as the kernel prints ip_local_port_range).
func ParsePortRange(s string) (PortRange, error) {
	var f []string
	if a, b, ok := strings.Cut(s, "-"); ok {
		f = []string{strings.TrimSpace(a), strings.TrimSpace(b)}
	} else {
		f = strings.Fields(s)
	}
	if len(f) != 2 {
		return PortRange{}, fmt.Errorf("%w: %q", ErrBadPortRange, s)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	r := PortRange{Lo: uint16(lo), Hi: uint16(hi)}
	if err1 != nil || err2 != nil || !r.Valid() {
		return PortRange{}, fmt.Errorf("%w: %q", ErrBadPortRange, s)
	}
	return r, nil
}

// LocalPortRange reads net.ipv4.ip_local_port_range.
func LocalPortRange(sys Sysctl) (PortRange, error) {
	v, err := sys.Get(portRangeKey)
	if err != nil {
		return PortRange{}, err
	}
	return ParsePortRange(v)
}

// DoctorInput says what Doctor checks.
type DoctorInput struct {
	Iface string       // interface that receives VIP traffic (the helper's -i)
	VIPs  []netip.Addr // every VIP of the list file, expanded
	// OtherPortRanges are the other frontends' ip_local_port_range values;
	// optional, checked for overlap (seed, setup step 7).
	OtherPortRanges []PortRange
}

// Doctor checks the host settings l2lb depends on and says how to fix each
// failed one:
//
//   - arp_ignore >= 1 on all and Iface, so no frontend answers ARP for a VIP it
//     holds on lo (seed, setup step 3; kernel ip-sysctl.rst: the maximum of
//     conf/all and conf/IFACE applies);
//   - arp_announce = 2 on all and Iface, so ARP requests never carry a VIP as
//     source address (seed, setup step 3);
//   - rp_filter of all, lo and Iface in {0, 2}: strict reverse-path filtering
//     (1) drops the frames the balancer re-injects on lo (design notes); the
//     kernel applies the maximum of conf/all and conf/DEV, so all matters for
//     every device;
//   - with IPv6 VIPs only: disable_ipv6 = 0 on lo and Iface, and proxy_ndp = 0
//     on all and Iface (see below);
//   - every VIP present on lo, IPv4 as /32 (seed, setup steps 2 and 5), IPv6 as
//     /128 (the fix adds it with nodad, as VIPsUp does);
//   - ip_local_port_range overlapping none of OtherPortRanges, and not left at
//     the kernel default when other ranges are given (seed, setup step 7).
//
// What IPv6 VIPs rely on, measured by this package's namespace tests
// (TestFrontendIgnoresNSForLoVIP and the tests next to it) on Linux 6.18:
//
//   - No frontend answers neighbour solicitations for a VIP it holds on lo,
//     the IPv6 counterpart of arp_ignore=1, and no sysctl is needed for it:
//     ndisc_recv_ns looks the target up among the addresses of the receiving
//     device only (ipv6_get_ifaddr with strict=1), so a /128 on lo is not
//     answered on Iface, whether the solicitation is sent to the
//     solicited-node group, to all nodes or unicast to the frontend's MAC. The
//     kernel answers for an address it does not hold on Iface only as a proxy:
//     forwarding = 1 on Iface, proxy_ndp = 1 on all or Iface, and a proxy
//     entry for the VIP (`ip -6 neigh add proxy VIP dev IFACE`); proxy_ndp or
//     forwarding alone, or an entry without forwarding, answered nothing.
//     Doctor requires proxy_ndp = 0 on all and Iface: the one setting under
//     l2lb's control that rules proxying out, whatever entries other software
//     adds and whether the host forwards. (Read in the source, not measured:
//     an anycast address of Iface would be answered too, but the kernel
//     derives none from a /128 on lo.)
//   - The counterpart of arp_announce=2 needs no setting either: a frontend
//     resolving a client's MAC for a reply sent from the VIP solicits with its
//     link-local source (ndisc_solicit takes the packet's source only if it
//     is an address of the outgoing device), never with the VIP.
//   - lo does no duplicate address detection (addrconf_dad_begin skips
//     loopback devices): an address added there is usable at once whatever
//     accept_dad says, so accept_dad is not checked; VIPsUp adds IFA_F_NODAD
//     all the same.
//   - disable_ipv6 = 1 on lo removes its IPv6 addresses and refuses new ones,
//     so no IPv6 VIP can be held; on Iface it stops IPv6 traffic for them.
//   - IPv6 has no rp_filter, so nothing drops re-injected IPv6 frames.
//
// Doctor only reads; Apply performs the fixes.
func Doctor(sys Sysctl, addrs AddrManager, in DoctorInput) []Finding {
	var out []Finding
	devs := []string{"all", in.Iface}
	out = append(out, sysctlChecks(sys, KeyFor, CheckARPIgnore, devs, atLeast(1), "1")...)
	out = append(out, sysctlChecks(sys, KeyFor, CheckARPAnnounce, devs, oneOf(2), "2")...)
	out = append(out, sysctlChecks(sys, KeyFor, CheckRPFilter, []string{"all", LoopbackIface, in.Iface}, oneOf(0, 2), "2")...)
	if hasIPv6(in.VIPs) {
		// Before vip_on_lo: Apply must enable IPv6 on lo before it adds
		// the VIPs there.
		out = append(out, sysctlChecks(sys, KeyFor6, CheckDisableIPv6, []string{LoopbackIface, in.Iface}, oneOf(0), "0")...)
		out = append(out, sysctlChecks(sys, KeyFor6, CheckProxyNDP, devs, oneOf(0), "0")...)
	}
	out = append(out, vipChecks(addrs, in.VIPs)...)
	out = append(out, portRangeCheck(sys, in.OtherPortRanges))
	return out
}

func hasIPv6(vips []netip.Addr) bool {
	for _, v := range vips {
		if v.Is6() && !v.Is4In6() {
			return true
		}
	}
	return false
}

// valueRule is an acceptable-value test with its description for Want.
type valueRule struct {
	ok   func(int) bool
	want string // rendered after the key: ">=1", "=2", " in {0, 2}"
}

func atLeast(n int) valueRule {
	return valueRule{ok: func(v int) bool { return v >= n }, want: fmt.Sprintf(">=%d", n)}
}

func oneOf(vals ...int) valueRule {
	if len(vals) == 1 {
		return valueRule{ok: func(v int) bool { return v == vals[0] }, want: fmt.Sprintf("=%d", vals[0])}
	}
	s := make([]string, len(vals))
	for i, v := range vals {
		s[i] = strconv.Itoa(v)
	}
	return valueRule{
		ok:   func(v int) bool { return slices.Contains(vals, v) },
		want: " in {" + strings.Join(s, ", ") + "}",
	}
}

// sysctlChecks checks keyFor(DEV, check) (net.ipv4.conf.DEV.check or
// net.ipv6.conf.DEV.check) for each distinct device and offers to set fixTo
// where the value is not acceptable.
func sysctlChecks(sys Sysctl, keyFor func(dev, name string) string, check string, devs []string, rule valueRule, fixTo string) []Finding {
	var out []Finding
	seen := map[string]bool{}
	for _, dev := range devs {
		if seen[dev] {
			continue
		}
		seen[dev] = true
		if dev == "" {
			out = append(out, Finding{
				Check: check,
				Have:  "no interface given",
				Want:  "the interface that receives VIP traffic (helper option -i)",
			})
			continue
		}
		key := keyFor(dev, check)
		f := Finding{Check: check, Want: key + rule.want}
		raw, err := sys.Get(key)
		if err != nil {
			f.Have = "unreadable: " + err.Error()
			out = append(out, f)
			continue
		}
		f.Have = key + "=" + raw
		if v, err := strconv.Atoi(raw); err == nil && rule.ok(v) {
			f.OK = true
		} else {
			f.Fix = sysctlCommand(key, fixTo)
			f.apply = func() error { return sys.Set(key, fixTo) }
		}
		out = append(out, f)
	}
	return out
}

// vipChecks reports one finding per VIP.
func vipChecks(addrs AddrManager, vips []netip.Addr) []Finding {
	if len(vips) == 0 {
		return nil
	}
	vips, err := checkVIPs(vips)
	if err != nil {
		return []Finding{{Check: CheckVIPOnLo, Have: err.Error(), Want: "IPv4 or IPv6 VIPs"}}
	}
	have, err := loHosts(addrs)
	if err != nil {
		return []Finding{{Check: CheckVIPOnLo, Have: "unreadable: " + err.Error(), Want: "every VIP on lo, IPv4 as /32, IPv6 as /128"}}
	}
	out := make([]Finding, 0, len(vips))
	for _, v := range vips {
		p := hostPrefix(v)
		f := Finding{Check: CheckVIPOnLo, Want: p.String() + " on " + LoopbackIface}
		if have[v] {
			f.OK = true
			f.Have = f.Want
		} else {
			f.Have = p.String() + " missing from " + LoopbackIface
			f.Fix = fmt.Sprintf("ip address add %s dev %s", p, LoopbackIface)
			if addFlags(p)&unix.IFA_F_NODAD != 0 {
				f.Fix += " nodad"
			}
			f.apply = func() error { return addrs.Add(LoopbackIface, p) }
		}
		out = append(out, f)
	}
	return out
}

// portRangeCheck compares the local port range with the other frontends'.
// Its fix is never applied automatically: CGP's "Port Allocation TCP" must be
// changed to the same range at the same time (seed, setup step 7).
func portRangeCheck(sys Sysctl, others []PortRange) Finding {
	f := Finding{Check: CheckPortRange}
	have, err := LocalPortRange(sys)
	if err != nil {
		f.Have = "unreadable: " + err.Error()
		f.Want = "a readable " + portRangeKey
		return f
	}
	f.Have = portRangeKey + "=" + have.String()
	if len(others) == 0 {
		f.OK = true
		f.Want = "any range (no other frontends' ranges given)"
		return f
	}
	list := make([]string, len(others))
	var clash []string
	for i, o := range others {
		list[i] = o.String()
		if have.Overlaps(o) {
			clash = append(clash, o.String())
		}
	}
	f.Want = "a dedicated range overlapping none of " + strings.Join(list, ", ")
	switch {
	case len(clash) > 0:
		f.Have += " (overlaps " + strings.Join(clash, ", ") + ")"
	case have == DefaultLocalPortRange:
		f.Have += " (the kernel default; give each frontend its own range)"
	default:
		f.OK = true
		return f
	}
	if r, ok := FreePortRange(others, suggestedWidth(others)); ok {
		f.Fix = sysctlCommand(portRangeKey, fmt.Sprintf("%d %d", r.Lo, r.Hi))
	}
	return f
}

// suggestedWidth sizes a proposed range like the widest of the others, since
// the seed gives every frontend an equal slice (50000-54000, 55000-59000),
// rounded down to an even count so the bounds get different parity (see
// FreePortRange).
func suggestedWidth(others []PortRange) int {
	w := 2
	for _, o := range others {
		w = max(w, int(o.Hi)-int(o.Lo)+1)
	}
	return w &^ 1
}

// FreePortRange returns a range of width ports that overlaps none of taken,
// preferring the kernel's default ephemeral area (32768-65535) and falling back
// to 1024-32767 (ports below 1024 are privileged,
// net.ipv4.ip_unprivileged_port_start). The range starts on an even port and,
// for an even width, ends on an odd one: ip-sysctl.rst recommends the two
// bounds have different parity, as connect() and bind() split the range by it.
func FreePortRange(taken []PortRange, width int) (PortRange, bool) {
	if width < 1 || width > 65535-1024+1 {
		return PortRange{}, false
	}
	sorted := slices.Clone(taken)
	slices.SortFunc(sorted, func(a, b PortRange) int { return cmp.Compare(a.Lo, b.Lo) })
	for _, area := range [][2]int{{32768, 65535}, {1024, 32767}} {
		cur := area[0]
		for _, t := range sorted {
			if int(t.Hi) < cur {
				continue
			}
			if int(t.Lo) > area[1] {
				break
			}
			if r, ok := fitIn(cur, min(int(t.Lo)-1, area[1]), width); ok {
				return r, true
			}
			cur = int(t.Hi) + 1
		}
		if r, ok := fitIn(cur, area[1], width); ok {
			return r, true
		}
	}
	return PortRange{}, false
}

// fitIn places width ports at the first even port of [lo, hi] if they fit.
func fitIn(lo, hi, width int) (PortRange, bool) {
	lo += lo & 1
	if hi-lo+1 < width {
		return PortRange{}, false
	}
	return PortRange{Lo: uint16(lo), Hi: uint16(lo + width - 1)}, true
}

// Apply performs the fixes of the failed findings (doctor --fix). It carries
// on past errors, then returns them joined; findings that cannot be fixed
// automatically (unreadable state, port ranges) are reported with
// ErrManualFix.
func Apply(findings []Finding) error {
	var errs []error
	for _, f := range findings {
		if f.OK {
			continue
		}
		if f.apply == nil {
			msg := fmt.Sprintf("%s: have %s, want %s", f.Check, f.Have, f.Want)
			if f.Check == CheckPortRange && f.Fix != "" {
				msg += "; run " + f.Fix + ` and set CGP's "Port Allocation TCP" to the same range`
			}
			errs = append(errs, fmt.Errorf("%w: %s", ErrManualFix, msg))
			continue
		}
		if err := f.apply(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", f.Check, f.Fix, err))
		}
	}
	return errors.Join(errs...)
}
