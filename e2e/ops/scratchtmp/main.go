package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/metrics"
)

func main() {
	var n atomic.Uint64
	ln, _ := net.Listen("tcp", "127.0.0.1:9799")
	fmt.Println("listening")
	go func() { time.Sleep(60 * time.Second); os.Exit(0) }()
	metrics.Serve(context.Background(), ln, func() control.Status {
		v := n.Add(1)
		if v == 2 { time.Sleep(700 * time.Millisecond) }
		fmt.Println(time.Now().Format("15:04:05.000"), "render", v)
		return control.Status{Mode: "run", Role: "active", Transitions: v, Since: time.Now()}
	})
}
