// Package election keeps the membership of a load balancer group (gossiped
// with hashicorp/memberlist) and elects, from that membership, the node that
// actively balances each VIP when l2lb runs standalone (`l2lb run --peers`).
//
// The package is split so that failover logic can be tested without timers or
// sockets, in the style of Seesaw's ha package:
//
//   - NodeMeta is what every node announces about itself; it travels as the
//     memberlist node metadata in a compact, versioned binary form.
//   - Decide is the pure election: given a View it names the owner of every VIP.
//   - Elector is the steppable state machine around Decide: it remembers which
//     VIPs this node serves and turns each new View into acquire/release
//     actions, applying the no-preemption, hand-over and split-brain rules.
//   - Cluster is the thin memberlist glue that produces Views; it satisfies the
//     narrow Membership interface so that a fake can stand in for it.
//   - Health turns a service probe into a healthy flag with rise/fall hysteresis.
package election

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// MetaMaxSize is the largest encoded NodeMeta. It equals memberlist's
// MetaMaxSize (net.go): memberlist panics if a delegate returns more.
const MetaMaxSize = 512

// MaxActiveVIPs bounds how many VIPs one node may announce as owned. The
// encoding stores runs of consecutive addresses, so a /24 costs a few bytes on
// the wire, but a decoder must not expand a hostile run into billions of
// addresses; 65536 is a /16, far more than one balancer group serves.
const MaxActiveVIPs = 1 << 16

// metaVersion is the major version of the encoding. A decoder refuses other
// major versions; fields added later are appended and ignored by older
// decoders, which is why trailing bytes are accepted.
const metaVersion = 1

// maxMACLen allows Ethernet (6), EUI-64 (8) and IP-over-InfiniBand (20)
// hardware addresses, the lengths net.ParseMAC accepts.
const maxMACLen = 20

// Flag bits of the encoded metadata.
const (
	flagHealthy = 1 << iota
	flagCapable
	flagTableReady
	flagDraining
)

// tagIPv6VIPs starts the IPv6 VIP field of NodeMeta.Active in the encoded metadata.
const tagIPv6VIPs = 6

// ErrMetaTooLarge reports metadata that does not fit in MetaMaxSize bytes.
var ErrMetaTooLarge = errors.New("election: node metadata larger than 512 bytes")

// ErrMetaVersion reports metadata written by an incompatible major version.
var ErrMetaVersion = errors.New("election: unsupported node metadata version")

// ErrMetaTruncated reports metadata that ends in the middle of a field.
var ErrMetaTruncated = errors.New("election: truncated node metadata")

// ErrMetaInvalid reports metadata whose fields are out of range (bad address
// or MAC length, reversed port range, VIP run past 255.255.255.255, too many
// VIPs).
var ErrMetaInvalid = errors.New("election: invalid node metadata")

// ErrNotIPv4 reports a VIP in NodeMeta.Active that is neither IPv4 nor native IPv6 (an
// IPv4-mapped IPv6 address, or the zero Addr).
var ErrNotIPv4 = errors.New("election: VIP is not an IPv4 or IPv6 address")

// NodeMeta is what each node announces about itself to the group.
type NodeMeta struct {
	// Name is the node's memberlist name. It is not part of the encoding:
	// memberlist already carries it, and Cluster fills it in on decode.
	Name string
	// Addr is the node's real (non-VIP) address, where the balancer sends
	// the frames of flows it assigns to this node.
	Addr netip.Addr
	// MAC is the hardware address of the node's interface that receives
	// balanced frames.
	MAC net.HardwareAddr
	// PortLo and PortHi are the node's net.ipv4.ip_local_port_range (seed
	// setup step 7): replies to its outgoing connections arrive at the VIP
	// and must be handed to it. Zero values mean "unknown".
	PortLo, PortHi uint16
	// Weight is the node's relative weight as a backend (seed helper
	// option -r; 100 is the default of every other member).
	Weight uint32
	// Priority orders balancer candidates: the highest priority wins.
	Priority uint8
	// Healthy is the result of the node's own service probes.
	Healthy bool
	// Capable is true if the node may act as balancer.
	Capable bool
	// Active lists the VIPs the node currently serves as balancer.
	Active []netip.Addr
	// TableReady is true once the node holds the synced connection table;
	// with preemption a returning node waits for it before taking over.
	TableReady bool
	// Draining is true while the node hands its VIPs over before stopping.
	Draining bool
}

// EncodeMeta encodes m (without Name) in the versioned binary form carried as
// memberlist node metadata. Active is stored sorted, without duplicates, as
// runs of consecutive addresses.
func EncodeMeta(m NodeMeta) ([]byte, error) {
	if m.PortLo > m.PortHi {
		return nil, fmt.Errorf("%w: port range %d-%d is reversed", ErrMetaInvalid, m.PortLo, m.PortHi)
	}
	if len(m.MAC) > maxMACLen {
		return nil, fmt.Errorf("%w: MAC of %d bytes", ErrMetaInvalid, len(m.MAC))
	}
	v4, v6, err := splitVIPs(m.Active)
	if err != nil {
		return nil, err
	}
	runs := vipRuns(v4)
	var flags byte
	if m.Healthy {
		flags |= flagHealthy
	}
	if m.Capable {
		flags |= flagCapable
	}
	if m.TableReady {
		flags |= flagTableReady
	}
	if m.Draining {
		flags |= flagDraining
	}
	b := make([]byte, 0, 64)
	b = append(b, metaVersion, flags, m.Priority)
	b = binary.BigEndian.AppendUint16(b, m.PortLo)
	b = binary.BigEndian.AppendUint16(b, m.PortHi)
	b = binary.AppendUvarint(b, uint64(m.Weight))
	// The zero Addr has no bytes; Unmap keeps an IPv4 address at 4 bytes.
	var ab []byte
	if m.Addr.IsValid() {
		ab = m.Addr.Unmap().AsSlice()
	}
	b = append(b, byte(len(ab)))
	b = append(b, ab...)
	b = append(b, byte(len(m.MAC)))
	b = append(b, m.MAC...)
	b = binary.AppendUvarint(b, uint64(len(runs)))
	for _, r := range runs {
		b = binary.BigEndian.AppendUint32(b, r.start)
		b = binary.AppendUvarint(b, uint64(r.count-1))
	}
	// IPv6 VIPs follow as a tagged field: its tag, a count and the 16-byte addresses. They come
	// after every field of the first revision, which a decoder ignores trailing bytes after, so a
	// node that knows only IPv4 VIPs still reads this metadata (without the IPv6 ones) during a
	// rolling upgrade; a later field gets a tag of its own.
	if len(v6) > 0 {
		b = append(b, tagIPv6VIPs)
		b = binary.AppendUvarint(b, uint64(len(v6)))
		for _, v := range v6 {
			a := v.As16()
			b = append(b, a[:]...)
		}
	}
	if len(b) > MetaMaxSize {
		return nil, ErrMetaTooLarge
	}
	return b, nil
}

// run is a block of count consecutive IPv4 addresses starting at start.
type run struct {
	start uint32
	count uint64
}

// splitVIPs checks vips and returns the IPv4 ones (unmapped) and the IPv6 ones, sorted and
// without duplicates.
func splitVIPs(vips []netip.Addr) (v4, v6 []netip.Addr, err error) {
	if len(vips) > MaxActiveVIPs {
		return nil, nil, fmt.Errorf("%w: %d active VIPs", ErrMetaInvalid, len(vips))
	}
	for _, v := range vips {
		switch v = v.Unmap(); {
		case v.Is4():
			v4 = append(v4, v)
		case v.Is6() && v.Zone() == "":
			v6 = append(v6, v)
		default:
			return nil, nil, fmt.Errorf("%w: %s", ErrNotIPv4, v)
		}
	}
	slices.SortFunc(v6, netip.Addr.Compare)
	return v4, slices.Compact(v6), nil
}

// vipRuns sorts and deduplicates IPv4 vips and merges them into runs.
func vipRuns(vips []netip.Addr) []run {
	us := make([]uint32, 0, len(vips))
	for _, v := range vips {
		a := v.As4()
		us = append(us, binary.BigEndian.Uint32(a[:]))
	}
	slices.Sort(us)
	us = slices.Compact(us)
	var runs []run
	for _, u := range us {
		if n := len(runs); n > 0 && uint64(runs[n-1].start)+runs[n-1].count == uint64(u) {
			runs[n-1].count++
			continue
		}
		runs = append(runs, run{start: u, count: 1})
	}
	return runs
}

// DecodeMeta decodes metadata written by EncodeMeta. Name is left empty.
// Bytes after the last known field are ignored so that later minor revisions
// can append fields.
func DecodeMeta(b []byte) (NodeMeta, error) {
	var m NodeMeta
	if len(b) > MetaMaxSize {
		return m, ErrMetaTooLarge
	}
	d := decoder{b: b}
	ver := d.byte()
	if d.err == nil && ver != metaVersion {
		return m, fmt.Errorf("%w: %d", ErrMetaVersion, ver)
	}
	flags := d.byte()
	m.Healthy = flags&flagHealthy != 0
	m.Capable = flags&flagCapable != 0
	m.TableReady = flags&flagTableReady != 0
	m.Draining = flags&flagDraining != 0
	m.Priority = d.byte()
	m.PortLo = d.uint16()
	m.PortHi = d.uint16()
	w := d.uvarint()
	if w > 1<<32-1 {
		d.fail(fmt.Errorf("%w: weight %d", ErrMetaInvalid, w))
	}
	m.Weight = uint32(w)
	switch ab := d.bytes(int(d.byte())); len(ab) {
	case 0:
	case 4, 16:
		m.Addr, _ = netip.AddrFromSlice(ab)
		m.Addr = m.Addr.Unmap()
	default:
		d.fail(fmt.Errorf("%w: address of %d bytes", ErrMetaInvalid, len(ab)))
	}
	if mac := d.bytes(int(d.byte())); len(mac) > maxMACLen {
		d.fail(fmt.Errorf("%w: MAC of %d bytes", ErrMetaInvalid, len(mac)))
	} else if len(mac) > 0 {
		m.MAC = slices.Clone(mac)
	}
	nruns := d.uvarint()
	// Each run takes at least 5 bytes, which bounds a sane count before
	// anything is allocated.
	if nruns > uint64(len(b))/5 {
		d.fail(fmt.Errorf("%w: %d VIP runs", ErrMetaInvalid, nruns))
	}
	var runs []run
	var total uint64
	for i := uint64(0); i < nruns && d.err == nil; i++ {
		start := d.uint32()
		cnt := d.uvarint()
		if d.err != nil {
			break
		}
		if cnt >= MaxActiveVIPs || uint64(start)+cnt > 1<<32-1 {
			d.fail(fmt.Errorf("%w: VIP run of %d at %d", ErrMetaInvalid, cnt+1, start))
			break
		}
		total += cnt + 1
		if total > MaxActiveVIPs {
			d.fail(fmt.Errorf("%w: more than %d active VIPs", ErrMetaInvalid, MaxActiveVIPs))
			break
		}
		runs = append(runs, run{start: start, count: cnt + 1})
	}
	var v6 []netip.Addr
	if d.err == nil && len(d.b) > 0 && d.b[0] == tagIPv6VIPs {
		// The IPv6 VIPs (EncodeMeta); 16 bytes each bounds a sane count. Bytes with another tag
		// are a later revision's fields: ignored.
		d.byte()
		n6 := d.uvarint()
		if n6 > uint64(len(d.b))/16 || total+n6 > MaxActiveVIPs {
			d.fail(fmt.Errorf("%w: %d IPv6 VIPs", ErrMetaInvalid, n6))
		}
		for i := uint64(0); i < n6 && d.err == nil; i++ {
			ab := d.bytes(16)
			if d.err != nil {
				break
			}
			a := netip.AddrFrom16([16]byte(ab))
			if a.Is4In6() {
				d.fail(fmt.Errorf("%w: IPv4-mapped VIP %s", ErrMetaInvalid, a))
			}
			v6 = append(v6, a)
		}
	}
	if d.err != nil {
		return NodeMeta{}, d.err
	}
	if m.PortLo > m.PortHi {
		return NodeMeta{}, fmt.Errorf("%w: port range %d-%d is reversed", ErrMetaInvalid, m.PortLo, m.PortHi)
	}
	if total > 0 {
		vips := make([]netip.Addr, 0, total)
		for _, r := range runs {
			for j := uint64(0); j < r.count; j++ {
				var a [4]byte
				binary.BigEndian.PutUint32(a[:], r.start+uint32(j))
				vips = append(vips, netip.AddrFrom4(a))
			}
		}
		m.Active = vips
	}
	if len(v6) > 0 {
		m.Active = append(m.Active, v6...)
	}
	if len(m.Active) > 0 {
		// A sender's runs may overlap or be out of order; the canonical form is sorted and
		// unique, as EncodeMeta produces.
		slices.SortFunc(m.Active, netip.Addr.Compare)
		m.Active = slices.Compact(m.Active)
	}
	return m, nil
}

// decoder reads fields from b and remembers the first error, so DecodeMeta
// reads straight through and checks once.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail(ErrMetaTruncated)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if v := d.bytes(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) uint16() uint16 {
	if v := d.bytes(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) uint32() uint32 {
	if v := d.bytes(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(ErrMetaTruncated)
		return 0
	}
	d.b = d.b[n:]
	return v
}
