// Command pause is the sandbox process of every pod in the e2e cluster: no
// pause image can be pulled on CI machines, so we build our own.
//
// It does nothing but wait. As PID 1 of the pod's namespaces it also reaps
// any orphaned child processes (otherwise they would stay zombies), and it
// exits promptly on SIGTERM or SIGINT so pod teardown is not delayed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func reapAll() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			// One SIGCHLD may stand for several exited children: reap them all.
			reapAll()
			continue
		}
		os.Exit(0)
	}
}
