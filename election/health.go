package election

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/l2lb/l2lb/healthcheck"
)

// ErrBadThreshold reports a rise or fall count below 1; it is
// healthcheck.ErrBadThreshold, so errors.Is matches either name.
var ErrBadThreshold = healthcheck.ErrBadThreshold

// Health turns a service probe into a healthy flag with rise/fall
// hysteresis. It is healthcheck.Health, which the service health monitor
// shares; the alias keeps election's API.
type Health = healthcheck.Health

// NewHealth returns a Health driven by probe. It returns ErrBadThreshold if
// rise or fall is below 1.
func NewHealth(probe func() bool, rise, fall int) (*Health, error) {
	return healthcheck.NewHealth(probe, rise, fall)
}

// TCPProbe returns a probe that succeeds when a TCP connection to every one
// of addrs is accepted within timeout; the connections are closed at once.
// The addresses are tried in parallel so a probe lasts at most timeout. With
// no addresses the probe always succeeds (nothing to check).
func TCPProbe(addrs []netip.AddrPort, timeout time.Duration) func() bool {
	addrs = append([]netip.AddrPort(nil), addrs...)
	return func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := true
		for _, a := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", a.String())
				if err != nil {
					mu.Lock()
					ok = false
					mu.Unlock()
					return
				}
				_ = c.Close()
			}()
		}
		wg.Wait()
		return ok
	}
}
