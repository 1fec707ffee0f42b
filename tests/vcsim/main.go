// qci-vcsim: the govmomi vCenter simulator on a free loopback port, for
// qci's VMware backend tests. It prints the SDK URL (with the simulator's
// user and password) on one line once it listens, and serves until SIGTERM.
// Built offline from Debian's golang-github-vmware-govmomi-dev by
// scripts/setup-hypervisors.
package main

import (
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "qci-vcsim:", err)
		os.Exit(1)
	}
	defer model.Remove()
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0"}
	server := model.Service.NewServer()
	defer server.Close()
	fmt.Println(server.URL.String())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
