// Command coredns is the cluster DNS of the e2e cluster: CoreDNS with only
// the plugins a cluster-local resolver needs. It deliberately has no
// "forward" plugin, so no pod's query can ever leave the machine.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins register themselves with the server in their init functions.
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order in which a query passes the plugins: the subset of upstream
	// CoreDNS's own order (plugin.cfg) that we compile in. A Corefile naming
	// any other plugin is rejected at start-up.
	dnsserver.Directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
