package main

import (
	"os"
	"runtime"

	"github.com/l2lb/l2lb/balancer"
)

// reserveProcs raises GOMAXPROCS so that the fast path's waiting goroutines never hold every P.
//
// Each fast-path socket has a goroutine that waits for frames in poll(2) (afpacket's pollConn,
// afxdp's Socket.wait), a system call during which the goroutine keeps its P until sysmon takes
// it. The runtime's retake (runtime/proc.go) leaves a P in a system call alone for up to 10 ms
// while some other P is idle; when none is, it hands the P off after one sysmon tick (20 µs),
// starting a thread that looks for work, finds none and parks again, and sysmon keeps polling
// every 20 µs because it keeps finding a P to take. With --workers 2 on 2 CPUs (GOMAXPROCS 2),
// or one worker pinned to one CPU (the runtime follows the affinity mask since Go 1.25), that
// happens on nearly every wait. The worker's periodic yield (dataplane/node's yieldEvery) is the
// other half of the fix: it keeps sysmon from treating a worker as long-running.
//
// Issue 14, 1-worker AF_XDP balancer at 50 000 frames/s on the 2-CPU VM (`perf record -g`,
// `perf stat -e syscalls:sys_enter_nanosleep` on the process): before, runtime.sysmon 27 % of the
// process's CPU, handoffp/startm and parked threads' futex waits 10 %, 2 200 nanosleeps a second
// and 4.2-4.7 µs of balancer CPU per frame; with both fixes 100 nanosleeps a second and
// 3.2-3.4 µs.
//
// The goroutines waiting in poll use no CPU, so one P per fast-path socket on top of the Ps the
// runtime would use costs nothing while they wait and lets the rest of the program run when they
// do not. The count is an upper bound: the AF_XDP backend with TCP left to the kernel opens up
// to two sockets per worker. A GOMAXPROCS in the environment is left as the operator set it.
func reserveProcs(f balancer.Flags) {
	sockets := f.Workers
	if f.Backend == "afxdp" {
		sockets *= 2 // an AF_XDP socket per queue (at most one per worker) and a ring per worker
	}
	if os.Getenv("GOMAXPROCS") != "" || sockets <= 0 {
		return
	}
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + sockets)
}
