package balancer

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/services"
)

// portTimeouts turns the services' idle-timeout settings into the connection table's: the flows
// of the service's protocol and port, and with Call-ID affinity also the service's SIP dialog
// entries (dataplane.DialogProto on the same port), whose lifetime is the dialog's.
func portTimeouts(f *services.File) []conntrack.PortTimeout {
	if f == nil {
		return nil
	}
	var out []conntrack.PortTimeout
	for _, s := range f.Services {
		if s.IdleTimeout <= 0 {
			continue
		}
		proto := uint8(conntrack.ProtoTCP)
		if s.Proto == services.ProtoUDP {
			proto = conntrack.ProtoUDP
		}
		out = append(out, conntrack.PortTimeout{Proto: proto, Port: s.Port, Timeout: s.IdleTimeout})
		if s.Affinity == services.AffinityCallID {
			out = append(out, conntrack.PortTimeout{Proto: dataplane.DialogProto, Port: s.Port, Timeout: s.IdleTimeout})
		}
	}
	return out
}

// callIDPorts returns the UDP ports with SIP Call-ID affinity.
func callIDPorts(f *services.File) []uint16 {
	if f == nil {
		return nil
	}
	var out []uint16
	for _, s := range f.Services {
		if s.Affinity == services.AffinityCallID {
			out = append(out, s.Port)
		}
	}
	return out
}

// probeSources returns the health probes' source addresses, which the fast path ignores.
func probeSources(f *services.File) []netip.Addr {
	if f == nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range []netip.Addr{f.ProbeSource4, f.ProbeSource6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// readServices reads the services file for Reload; nil without one.
func (b *Balancer) readServices() (*services.File, error) {
	if b.cfg.ServicesFile == "" {
		return nil, nil
	}
	return services.Load(b.cfg.ServicesFile)
}

// applyServices applies a services file read by Reload: Call-ID ports and probe sources to the
// engine, idle timeouts to the table, and new health checks (the view of the checks that stay
// carries over, so a reload moves no traffic).
func (b *Balancer) applyServices(f *services.File) error {
	if b.cfg.ServicesFile == "" {
		return nil
	}
	path := b.cfg.ServicesFile
	b.mu.Lock()
	vips := b.vips
	old := b.health
	b.mu.Unlock()
	var h *health
	if f != nil {
		var err error
		if h, err = newHealth(b, f, vips.Addrs()); err != nil {
			return err
		}
	}
	b.mu.Lock()
	cfg := b.eng.Config() // read-modify-write under b.mu, as every change of the engine's configuration
	cfg.CallIDPorts, cfg.ProbeSources = callIDPorts(f), probeSources(f)
	err := b.eng.Configure(cfg)
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !slices.Equal(portTimeouts(f), portTimeouts(b.svcStart)) {
		// The connection table resolves a flow's timeout class once, at insert, and reads the
		// classes without a lock on every frame: changing them under running flows is not
		// supported. The new idle timeouts apply from the next start.
		b.log.Warn("reload: idle-timeout changes in the services file take effect when l2lb restarts", "file", b.cfg.ServicesFile)
	}
	if old != nil {
		old.close()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.svc, b.svcErr, b.health = f, nil, h
	if h != nil {
		targets, local := b.healthTargetsLocked()
		h.mon.SetTargets(h.dialersLocked(targets, local))
		if old != nil {
			h.mon.Restore(old.mon.Snapshot())
		}
	} else {
		b.unhealthy = map[netip.Addr]bool{}
	}
	b.log.Info("services reloaded", "file", path, "services", len(f.Services), "checks", h != nil)
	return b.applyMembersLocked()
}
