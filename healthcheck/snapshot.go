package healthcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/l2lb/l2lb/services"
)

// Snapshot encoding, version 1 (all integers big-endian):
//
//	version  u8  = 1
//	targets  u16 (at most MaxSnapshotTargets)
//	per target:
//	  family u8  (4 or 6), then 4 or 16 address bytes
//	  flags  u8  (bit 0: healthy)
//	  count  u16 (at most services.MaxServices)
//	  per service: port u16 (not 0), flags u8 (bit 0: healthy, bit 1: udp)
//
// A check is three bytes, so a 32-frontend cluster with ten checks gossips
// about 1.2 KB, well inside one memberlist UDP message.
const snapshotVersion = 1

// MaxSnapshotTargets bounds the targets of an encoded snapshot.
const MaxSnapshotTargets = 4096

const (
	flagHealthy = 1 << 0
	flagUDP     = 1 << 1
)

// ErrSnapshot reports a snapshot that cannot be encoded or decoded.
var ErrSnapshot = errors.New("healthcheck: malformed snapshot")

// Snapshot is the health view of a monitor: per target the overall flag and
// the flag of each check.
type Snapshot struct {
	Targets []TargetHealth
}

// TargetHealth is one target of a Snapshot.
type TargetHealth struct {
	Addr     netip.Addr
	Healthy  bool
	Services []ServiceHealth
}

// ServiceHealth is one check of a TargetHealth, identified by port and
// protocol (unique in a services file).
type ServiceHealth struct {
	Port    uint16
	Proto   string
	Healthy bool
}

// MarshalBinary encodes s in the version 1 format.
func (s Snapshot) MarshalBinary() ([]byte, error) {
	return s.AppendBinary(nil)
}

// AppendBinary appends the encoding of s to b; with a large enough b it
// does not allocate.
func (s Snapshot) AppendBinary(b []byte) ([]byte, error) {
	if len(s.Targets) > MaxSnapshotTargets {
		return b, fmt.Errorf("%w: %d targets, at most %d", ErrSnapshot, len(s.Targets), MaxSnapshotTargets)
	}
	b = append(b, snapshotVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.Targets)))
	for _, t := range s.Targets {
		switch {
		case t.Addr.Is4():
			a := t.Addr.As4()
			b = append(b, 4)
			b = append(b, a[:]...)
		case t.Addr.Is6() && t.Addr.Zone() == "":
			a := t.Addr.As16()
			b = append(b, 6)
			b = append(b, a[:]...)
		default:
			return b, fmt.Errorf("%w: target address %v", ErrSnapshot, t.Addr)
		}
		b = append(b, flag(t.Healthy, flagHealthy))
		if len(t.Services) > services.MaxServices {
			return b, fmt.Errorf("%w: %d services, at most %d", ErrSnapshot, len(t.Services), services.MaxServices)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(t.Services)))
		for _, sv := range t.Services {
			if sv.Port == 0 || (sv.Proto != services.ProtoTCP && sv.Proto != services.ProtoUDP) {
				return b, fmt.Errorf("%w: service %d/%s", ErrSnapshot, sv.Port, sv.Proto)
			}
			b = binary.BigEndian.AppendUint16(b, sv.Port)
			b = append(b, flag(sv.Healthy, flagHealthy)|flag(sv.Proto == services.ProtoUDP, flagUDP))
		}
	}
	return b, nil
}

func flag(on bool, f byte) byte {
	if on {
		return f
	}
	return 0
}

// UnmarshalBinary decodes data into s. Malformed input (unknown version,
// counts over the bounds, unknown flag bits, port 0, duplicate targets or
// services, truncated or trailing bytes) returns an error wrapping
// ErrSnapshot and leaves s unchanged.
func (s *Snapshot) UnmarshalBinary(data []byte) error {
	d := decoder{b: data}
	if v := d.u8(); d.err == nil && v != snapshotVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrSnapshot, v, snapshotVersion)
	}
	n := int(d.u16())
	if n > MaxSnapshotTargets {
		return fmt.Errorf("%w: %d targets, at most %d", ErrSnapshot, n, MaxSnapshotTargets)
	}
	// Every target takes at least 8 bytes; reject impossible counts before
	// allocating for them.
	if d.err == nil && n*8 > len(d.b) {
		return fmt.Errorf("%w: %d targets in %d bytes", ErrSnapshot, n, len(data))
	}
	var out Snapshot
	if n > 0 {
		out.Targets = make([]TargetHealth, 0, n)
	}
	seen := make(map[netip.Addr]bool, n)
	for range n {
		var t TargetHealth
		switch fam := d.u8(); fam {
		case 4:
			t.Addr = netip.AddrFrom4([4]byte(d.bytes(4)))
		case 6:
			t.Addr = netip.AddrFrom16([16]byte(d.bytes(16)))
		default:
			d.fail("address family %d", fam)
		}
		f := d.u8()
		if f&^flagHealthy != 0 {
			d.fail("target flags %#x", f)
		}
		t.Healthy = f&flagHealthy != 0
		if d.err == nil && seen[t.Addr] {
			d.fail("target %s twice", t.Addr)
		}
		seen[t.Addr] = true
		m := int(d.u16())
		if m > services.MaxServices {
			d.fail("%d services, at most %d", m, services.MaxServices)
		}
		if d.err == nil && m*3 > len(d.b) {
			d.fail("%d services in %d bytes", m, len(d.b))
		}
		if d.err != nil {
			return d.err
		}
		t.Services = make([]ServiceHealth, 0, m)
		for range m {
			sv := ServiceHealth{Port: d.u16(), Proto: services.ProtoTCP}
			f := d.u8()
			if f&^(flagHealthy|flagUDP) != 0 {
				d.fail("service flags %#x", f)
			}
			if sv.Port == 0 {
				d.fail("service port 0")
			}
			if f&flagUDP != 0 {
				sv.Proto = services.ProtoUDP
			}
			sv.Healthy = f&flagHealthy != 0
			for _, o := range t.Services {
				if o.Port == sv.Port && o.Proto == sv.Proto {
					d.fail("service %d/%s twice", sv.Port, sv.Proto)
				}
			}
			if d.err != nil {
				return d.err
			}
			t.Services = append(t.Services, sv)
		}
		out.Targets = append(out.Targets, t)
	}
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrSnapshot, len(d.b))
	}
	*s = out
	return nil
}

// decoder reads big-endian fields and remembers the first error; reads
// after an error return zeros.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrSnapshot, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.fail("truncated")
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() byte    { return d.bytes(1)[0] }
func (d *decoder) u16() uint16 { return binary.BigEndian.Uint16(d.bytes(2)) }
