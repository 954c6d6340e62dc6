package static

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/vipset"
)

// maxMembersLine bounds a line of a members file, so a binary file given by mistake fails fast.
const maxMembersLine = 1024

// ParseMembersFile reads a members file: one frontend a line, `ADDR[=WEIGHT] [LO-HI]` (the
// address and weight of --member, then optionally the source-port range of --port-range), with
// `#` comments and blank lines. Errors name the file and line. The rules are those of
// ParseMembers.
func ParseMembersFile(r io.Reader, name string, selfWeight uint32, local map[netip.Addr]bool, vips *vipset.Set) ([]balancer.Member, error) {
	var ms []balancer.Member
	seen := map[netip.Addr]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), maxMembersLine)
	line := 0
	for sc.Scan() {
		line++
		text, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		if len(f) > 2 {
			return nil, fmt.Errorf("%w: %s:%d: want ADDR[=WEIGHT] [LO-HI], got %q", ErrMember, name, line, strings.TrimSpace(text))
		}
		var ranges []string
		if len(f) == 2 {
			addr, _, _ := strings.Cut(f[0], "=")
			ranges = []string{addr + "=" + f[1]}
		}
		one, err := ParseMembers(f[:1], ranges, selfWeight, local, vips)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if prev, dup := seen[one[0].Addr]; dup {
			return nil, fmt.Errorf("%w: %s:%d: %s is listed on line %d too", ErrMember, name, line, one[0].Addr, prev)
		}
		seen[one[0].Addr] = line
		ms = append(ms, one[0])
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: %s:%d: line longer than %d bytes", ErrMember, name, line+1, maxMembersLine)
		}
		return nil, fmt.Errorf("static: reading %s: %w", name, err)
	}
	return ms, nil
}

// LoadMembersFile is ParseMembersFile on the file at path.
func LoadMembersFile(path string, selfWeight uint32, local map[netip.Addr]bool, vips *vipset.Set) ([]balancer.Member, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMember, err)
	}
	defer f.Close()
	return ParseMembersFile(f, path, selfWeight, local, vips)
}

// ReloadFrom makes b's Reload re-read the members file at path with load (LoadMembersFile with
// this node's settings) and give the plane's balancer the new list: members that stay keep their
// flows, added ones get new flows, and removed ones leave gracefully. A bad file refuses the
// whole reload.
func (p *Plane) ReloadFrom(b *balancer.Balancer, load func() ([]balancer.Member, error)) {
	b.OnReload(func() (func() error, error) {
		ms, err := load()
		if err != nil {
			return nil, err
		}
		return func() error { return p.b.SetMembers(ms) }, nil
	})
}
