package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/metrics"
)

// opsFlags are the operator-interface flags shared by run and helper.
type opsFlags struct {
	control string
	metrics string
}

func (o *opsFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&o.control, "control", control.DefaultSocket, "control socket for l2lb status/conns/weight/drain/reload (root-only); \"off\" disables it")
	fs.StringVar(&o.metrics, "metrics", metrics.DefaultListen, "listen address of the Prometheus metrics and the status page; \"off\" disables it")
}

// serve runs b driven by plane until SIGINT or SIGTERM, with the control socket and the metrics
// listener of o; SIGHUP reloads the VIP file. The operator's interfaces are up before the plane
// starts and stay until the balancer has stopped.
func serve(b *balancer.Balancer, plane balancer.Plane, o opsFlags, warn func(string, ...any)) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opsCtx, stopOps := context.WithCancel(context.Background())
	defer stopOps()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-opsCtx.Done():
				return
			case <-hup:
				b.Reload() // the balancer logs the outcome
			}
		}
	}()
	startOps(opsCtx, o, b, warn)
	return b.RunWith(ctx, plane)
}

// startOps serves the control socket and the metrics listener for b until ctx ends. Failing to
// serve them is reported through warn and does not stop the balancer.
func startOps(ctx context.Context, o opsFlags, b *balancer.Balancer, warn func(string, ...any)) {
	if o.control != "" && o.control != "off" {
		go func() {
			if err := control.Serve(ctx, o.control, b); err != nil && ctx.Err() == nil {
				warn("control socket unavailable", "path", o.control, "err", err)
			}
		}()
	}
	if o.metrics != "" && o.metrics != "off" {
		go func() {
			if err := metrics.ListenAndServe(ctx, o.metrics, b.Status); err != nil && ctx.Err() == nil {
				warn("metrics listener unavailable", "listen", o.metrics, "err", err)
			}
		}()
	}
}
