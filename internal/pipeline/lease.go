package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/cellos/fleetd/internal/queue"
)

// Lease states. A recoverer reads them to know what the holder was doing.
const (
	leaseRunning    = "running"
	leaseFinishing  = "finishing"  // the holder is writing the result
	leaseReleasing  = "releasing"  // the holder is returning the spec to pending/
	leaseRecovering = "recovering" // a recoverer took the lease over
)

// lease is the body of leases/<id>.json. The holder rewrites it every ttl/3
// with If-Match on its last ETag; the fresh nonce makes every write's ETag new.
type lease struct {
	Node      string `json:"node"`
	Token     string `json:"token"`
	Nonce     string `json:"nonce"`
	Epoch     int    `json:"epoch"`
	TTLMillis int64  `json:"ttl_ms"`
	Attempts  int    `json:"attempts"`
	State     string `json:"state"`
	Written   string `json:"written"` // holder's clock; informational only
}

func (l *lease) encode() []byte {
	l.Nonce = newToken()
	l.Written = time.Now().UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(l) // a struct of strings and ints always encodes
	return b
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// keepLease renews the cell's lease every ttl/3 until ctx ends. When a renewal
// finds the lease taken over, it stops the cell with errLeaseLost.
func (p *Pipeline) keepLease(ctx context.Context, c *cell, stopCell context.CancelCauseFunc) {
	t := time.NewTicker(p.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Not under ctx: a renewal cut off mid-flight may still land, and then
		// we would not know our own lease's ETag.
		tag, err := p.store.Put(context.Background(), p.leaseKey(c.id), c.lease.encode(), queue.PutOptions{IfMatch: c.leaseTag})
		switch {
		case err == nil:
			c.leaseTag = tag
			p.m.LeaseRenewed()
		case errors.Is(err, queue.ErrPrecondition):
			c.log.Warn("lease renewal refused: taken over; stopping the cell")
			stopCell(errLeaseLost)
			return
		default:
			// Keep trying: if the store stays away past the ttl, a recoverer
			// takes over and the next renewal says so.
			c.log.Warn("lease renewal failed; will retry", "err", err)
		}
	}
}

// fence rewrites our lease in a new state, proving we still hold it. False
// means another node took the spec over and this node must leave it alone.
func (p *Pipeline) fence(c *cell, state string) bool {
	c.lease.State = state
	tag, err := p.store.Put(context.Background(), p.leaseKey(c.id), c.lease.encode(), queue.PutOptions{IfMatch: c.leaseTag})
	if errors.Is(err, queue.ErrPrecondition) {
		c.log.Warn("lease taken over by another node; leaving the spec to it", "lease_state", state)
		return false
	}
	if err != nil {
		// The last renewal was under ttl/3 ago, so the lease is very likely
		// still ours; finishing beats rerunning the cell.
		c.log.Warn("lease fence write failed; finishing anyway", "err", err)
		return true
	}
	c.leaseTag = tag
	return true
}
