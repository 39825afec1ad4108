// Package recovery returns the work of dead nodes to the queue. Its Rescuer
// offers the claim protocol a scan for stale leases and lease-less claims
// about once a lease ttl; the protocol decides whether this node's turn has
// come and does the takeovers.
package recovery

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/protocol"
)

// Protocol is the recovery part of the claim protocol; *protocol.Protocol
// implements it.
type Protocol interface {
	// RecoverIfDue scans unless another agent of the fleet scanned recently,
	// reporting whether it scanned.
	RecoverIfDue(ctx context.Context, quit <-chan struct{}) (bool, error)
}

var _ Protocol = (*protocol.Protocol)(nil)

// Rescuer runs recovery scans now and then.
type Rescuer struct {
	proto Protocol
	drain *drain.Drainer
	ttl   time.Duration
	log   *slog.Logger
	rng   *rand.Rand
}

// New returns a Rescuer offering a scan about once every ttl (positive). A
// scan is work of the drainer's: it starts only before the drain, and
// gives up at the drainer's Abort.
// rng draws when to offer (nil: a source of its own, seeded at random; a
// simulation passes a seeded one so that a seed replays).
func New(proto Protocol, d *drain.Drainer, ttl time.Duration, log *slog.Logger, rng *rand.Rand) *Rescuer {
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Rescuer{proto: proto, drain: d, ttl: ttl, log: log, rng: rng}
}

// Run offers scans until ctx ends (in fleetd: the drainer's Intake) or the
// drain begins. The first comes anywhere in the first ttl, the others a ttl
// (±10%) apart, so agents started together spread out; the protocol lets one
// fleet scan about once a ttl, whatever its size.
func (r *Rescuer) Run(ctx context.Context) {
	wait := time.Duration(r.rng.Int64N(int64(r.ttl)))
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = r.ttl*9/10 + time.Duration(r.rng.Int64N(int64(r.ttl)/5+1))
		if !r.drain.Begin() {
			return
		}
		_, err := r.proto.RecoverIfDue(r.drain.Abort(), ctx.Done())
		r.drain.End()
		if err != nil && ctx.Err() == nil {
			r.log.Warn("recovery scan failed; will retry", "event", "recovery.scan_failed", "err", err)
		}
	}
}
