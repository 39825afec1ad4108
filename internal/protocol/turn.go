// The recovery turn: docs/PROTOCOL.md, "Recovery" (about once a ttl for the
// whole fleet).

package protocol

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// scanTurn is what this node knows of the fleet's recovery marker.
type scanTurn struct {
	mu   sync.Mutex
	etag string    // of recovery/scan.json as this node last wrote it ("" if another wrote since)
	at   time.Time // when this node last wrote it, by its own clock
}

// scanEvery is how often the fleet scans: about once a ttl, whatever its
// size. Each agent offers about once a ttl too (±10%), so a lone agent scans
// on every offer and a fleet scans no more often than a lone agent.
func scanEvery(ttl time.Duration) time.Duration { return ttl * 8 / 10 }

// claimsDue says whether a scan at now, the one after a scan at prev (zero:
// none known), lists claimed/ too: the first scan in each period of three
// ttls does, so the fleet lists claimed/ once a period whatever its size
// (where only late writes and 0.5.1 agents leave lease-less claims). prev and
// now are read on one clock; a skew between two nodes' clocks can add one such
// listing (a LIST more) or skip one (a lease-less claim waits a period more).
func claimsDue(prev, now time.Time, ttl time.Duration) bool {
	period := int64(3 * ttl)
	return prev.IsZero() || prev.UnixNano()/period != now.UnixNano()/period
}

// RecoverIfDue runs a recovery scan if it is this node's turn, and reports
// whether it ran one. The turn is taken through S3: the node that moves
// recovery/scan.json forward (a compare-and-swap on its ETag) once it is
// older than scanEvery scans. An agent that wrote the marker last tries the
// swap at once (one PUT: a lone agent's whole cost); any other first reads the
// marker's age (one HEAD) and writes only when a scan is due. The winner's
// LISTs follow (see claimsDue).
func (p *Protocol) RecoverIfDue(ctx context.Context, quit <-chan struct{}) (bool, error) {
	ran, err := p.recoverIfDue(ctx, quit)
	if p.session == nil {
		p.reach.note(err == nil, p.clock.Now())
	}
	return ran, err
}

// reachability is a session-less agent's patience (Session.patient is an
// agent's): once a recovery offer of its failed, it judges nobody stale until
// its offers have reached the store for a ttl, so that after a fleet-wide
// outage it too leaves every holder a ttl to renew first.
type reachability struct {
	mu     sync.Mutex
	failed bool      // an offer failed since the agent started
	steady time.Time // when offers began to succeed again; zero while failing
}

func (r *reachability) note(ok bool, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case !ok:
		r.failed, r.steady = true, time.Time{}
	case r.steady.IsZero():
		r.steady = now
	}
}

func (r *reachability) patient(now time.Time, ttl time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.failed || !r.steady.IsZero() && now.Sub(r.steady) >= ttl
}

func (p *Protocol) recoverIfDue(ctx context.Context, quit <-chan struct{}) (bool, error) {
	p.recoverOwn(ctx, quit)
	key := p.cfg.Layout.Key("recovery", "scan")
	if !p.patient() {
		// Just back from an outage (or cut off now): this node would judge
		// nobody stale, so it leaves the turn to one that would. Without a
		// session, the marker's HEAD tells it whether it reaches the store.
		if p.session == nil {
			if _, err := p.store.Head(ctx, key); err != nil && !errors.Is(err, store.ErrNotFound) {
				return false, err
			}
		}
		return false, nil
	}
	p.turn.mu.Lock()
	defer p.turn.mu.Unlock()
	body := []byte(`{"node":"` + p.cfg.Node + `","nonce":"` + newToken() + `"}`)
	if p.turn.etag != "" {
		// The last scan was ours: its time is on our clock.
		now := p.clock.Now()
		claims := claimsDue(p.turn.at, now, p.cfg.TTL)
		etag, err := p.store.Put(ctx, key, body, store.PutOptions{IfMatch: p.turn.etag})
		if err == nil {
			return p.scanNow(ctx, quit, etag, now, claims)
		}
		p.turn.etag = ""
		if errors.Is(err, store.ErrUnknown) {
			return p.scanNow(ctx, quit, "", now, claims) // a scan too many is harmless: every takeover is a compare-and-swap
		}
		if !errors.Is(err, store.ErrPrecondition) {
			return false, err
		}
		// Another node scanned since ours: look at the marker like everyone else.
	}
	opt := store.PutOptions{IfAbsent: true}
	claims := true
	o, err := p.store.Head(ctx, key)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return false, err
	case o.ServerTime.Sub(o.LastModified) < scanEvery(p.cfg.TTL):
		return false, nil // scanned lately by someone
	default:
		opt = store.PutOptions{IfMatch: o.ETag}
		claims = claimsDue(o.LastModified, o.ServerTime, p.cfg.TTL) // both on the server's clock
	}
	etag, err := p.store.Put(ctx, key, body, opt)
	switch {
	case errors.Is(err, store.ErrUnknown):
		return p.scanNow(ctx, quit, "", p.clock.Now(), claims)
	case errors.Is(err, store.ErrPrecondition):
		return false, nil // another node took this turn
	case err != nil:
		return false, err
	}
	return p.scanNow(ctx, quit, etag, p.clock.Now(), claims)
}

// recoverOwn settles the leases this node let go while they name its live
// session (a claim dropped, or a create whose answer was lost): nobody else
// judges them stale, so it does, whether or not it is its turn to scan.
func (p *Protocol) recoverOwn(ctx context.Context, quit <-chan struct{}) {
	if p.session == nil {
		return
	}
	j := &judge{p: p}
	for _, id := range p.session.leftIDs() {
		if stopped(ctx, quit) {
			return
		}
		p.takeOverLease(ctx, quit, id, j)
	}
}

func (p *Protocol) scanNow(ctx context.Context, quit <-chan struct{}, etag string, at time.Time, claims bool) (bool, error) {
	p.turn.etag, p.turn.at = etag, at
	return true, p.recoverScan(ctx, quit, claims)
}
